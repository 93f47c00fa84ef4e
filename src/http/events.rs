//! `GET /events`: the Server-Sent Events stream of everything the caller may see.
//!
//! Protocol: a `retry:` hint; on resume (`Last-Event-ID` header or `last_event_id` query
//! parameter) the missed events from the log, or one `resync` event when they are no longer
//! there; then `ready`, carrying the stream position as its id; then live events. Comment
//! heartbeats keep idle connections open. The stream ends on logout of its token and on
//! shutdown; a client reconnecting with the last id it saw gets everything it missed, exactly
//! once and in order, on any instance.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::domain::RoomId;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::Query;
use crate::live::{
    Admission, EventId, HubItem, HubReceiver, Lagged, ResyncCause, Subscription, TouchOutcome,
    sse_frame,
};
use crate::state::AppState;
use crate::telemetry::metrics;

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Resume after this event id (for clients that cannot send the `Last-Event-ID` header).
    pub last_event_id: Option<String>,
}

/// Data of the `ready` event, sent once the stream is live.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyEvent {
    pub user_id: String,
    pub username: String,
    /// Whether this connection resumed from a `Last-Event-ID`.
    pub resumed: bool,
}

/// Data of the `resync` event: events were lost; reload history, then carry on.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResyncEvent {
    #[schema(example = "the event log no longer holds everything after your last event id")]
    pub reason: String,
}

/// Data of the `presence` event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceEvent {
    pub user_id: String,
    pub username: String,
    pub online: bool,
    pub at: DateTime<Utc>,
}

/// Data of the `logout` event, the last one of a stream whose token was revoked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogoutEvent {
    #[schema(example = "token revoked")]
    pub reason: String,
}

/// The live event stream (`text/event-stream`).
///
/// Events, each with an `id:` to resume from: `message` (data: a `MessageResponse`),
/// `presence` (`PresenceEvent`), `room_member` (`RoomMemberEvent`), `ready`
/// (`ReadyEvent`), `resync` (`ResyncEvent`: reload history), `logout` (`LogoutEvent`, then the
/// stream ends). Lines starting with `:` are heartbeats. Browsers' `EventSource` cannot set
/// headers: use the login cookie or `?access_token=`.
#[utoipa::path(get, path = "/events", tag = "events",
    security(("bearer_auth" = [])),
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received; sent by EventSource on reconnect"),
        ("access_token" = Option<String>, Query, description = "The access token, for clients that can set neither header nor cookie"),
    ),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String,
            example = json!("retry: 2000\n\nid: 3f2a9c1b-1764000000000-0\nevent: ready\ndata: {\"user_id\":\"665f...\",\"username\":\"alice\",\"resumed\":false}\n\nid: 3f2a9c1b-1764000000123-0\nevent: message\ndata: {\"id\":\"665f...\",\"sender\":{\"id\":\"665f...\",\"username\":\"bob\"},\"room_id\":\"665f...\",\"body\":\"hi\",\"created_at\":\"2026-11-24T10:00:00Z\"}\n\n: keep-alive\n\n")),
        (status = 400, description = "Malformed Last-Event-ID", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 503, description = "Redis or MongoDB unavailable", body = ErrorBody),
    ))]
pub async fn events(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    query: Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let from_header = req
        .headers()
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or("\u{0}"));
    let last = parse_last_event_id(from_header.or(query.last_event_id.as_deref()))?;
    let pump = Pump::open(state.into_inner(), user, last).await?;
    // The response body pulls frames straight from the fan-out: no task or queue per client,
    // and every frame already waiting is written in one go.
    let body = stream::unfold(pump, |mut pump| async move {
        let frame = pump.next_frame().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), pump))
    });
    let mut response = HttpResponse::Ok();
    for header in STREAM_HEADERS {
        response.insert_header(header);
    }
    Ok(response.streaming(body))
}

/// The headers of a stream, on either path: no cache or proxy may keep, transform or buffer it.
pub const STREAM_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache, no-transform"),
    ("x-accel-buffering", "no"),
];

/// An interval whose first tick is one period from now; ticks missed while the client was
/// not reading are not made up in a burst.
fn interval_after(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// One client's stream: the opening frames, then live events it may see, heartbeats, and
/// presence refreshes, until the client goes (the body is dropped), its token is revoked, or
/// shutdown.
pub struct Pump {
    state: Arc<AppState>,
    user: AuthUser,
    subscription: Subscription,
    receiver: HubReceiver,
    opening: VecDeque<Bytes>,
    /// Events up to this one the client says it has (it came from an instance that had read
    /// further, or made the id up): their frames are not sent; what they change for the
    /// stream (memberships, a revocation) still applies.
    floor: Option<EventId>,
    /// The log epoch the client is in: events of another epoch (an instance's tailer still
    /// reading a log Redis lost) are not sent, nor a resync into this one.
    epoch: String,
    shutdown: tokio::sync::watch::Receiver<bool>,
    heartbeat: tokio::time::Interval,
    refresh: tokio::time::Interval,
    ended: bool,
    /// Counts this stream among the open ones while it lives.
    _open: metrics::OpenStream,
}

impl Pump {
    /// Subscribes `user` to the fan-out and prepares the opening frames: `retry`, what the
    /// client missed since `last` (or `resync`), then `ready`.
    pub async fn open(
        state: Arc<AppState>,
        user: AuthUser,
        last: Option<EventId>,
    ) -> Result<Self, ApiError> {
        // Subscribe first, then read the rooms: see `live::subscription` for why that order.
        let (receiver, position) = state.hub.subscribe();
        let position = position.ok_or_else(|| {
            ApiError::unavailable(
                ErrorCode::EventsUnavailable,
                anyhow::anyhow!("the event log has not been reached yet"),
            )
        })?;
        let mut rooms: Vec<RoomId> = (state.store.rooms_of_user(user.user_id).await?)
            .into_iter()
            .map(|joined| joined.room)
            .collect();
        rooms.push(state.default_room.room_id());
        let mut subscription = Subscription::new(user.user_id, user.jti.clone(), rooms);

        let mut opening = vec![Bytes::from(format!("retry: {}\n\n", state.sse.retry_ms))];
        let mut floor = None;
        let mut ready_id = position.clone();
        if let Some(last) = &last {
            // Judged against the log as Redis has it now, not as far as this instance has read
            // it: Redis may have lost the log a moment ago, before the tailer noticed.
            let epoch = state.live.epoch().await?;
            if last.epoch != epoch {
                // From where this instance is, when it has read into the new log already.
                if position.epoch != epoch {
                    ready_id = EventId::start_of(&epoch);
                }
                opening.push(resync_frame(
                    &ready_id,
                    "the event log was reset since your last event id",
                ));
            } else if position.epoch != epoch || !position.is_after(last) {
                // This instance has not read as far as the one the client came from: the
                // frames of what the client has are not sent again (see `floor`).
                floor = Some(last.clone());
                ready_id = last.clone();
            } else {
                match state.live.replay(last, &position).await? {
                    Some(missed) => {
                        // The rooms read are today's: replayed with the rooms of then.
                        subscription.rewind(&missed);
                        for event in &missed {
                            if subscription.admit(event) == Admission::Send {
                                metrics::event_sent(event.kind.as_str(), None);
                                opening.push(event.frame.clone());
                            }
                        }
                    }
                    None => opening.push(resync_frame(
                        &position,
                        "the event log no longer holds everything after your last event id",
                    )),
                }
            }
        }
        let ready = json!(ReadyEvent {
            user_id: user.user_id.to_string(),
            username: user.username.clone(),
            resumed: last.is_some(),
        });
        opening.push(sse_frame(Some(&ready_id), "ready", &ready.to_string()));

        let refresh_every = (state.live.presence_ttl() / 3).max(Duration::from_millis(100));
        Ok(Pump {
            shutdown: state.shutdown.clone(),
            heartbeat: interval_after(state.sse.heartbeat),
            refresh: interval_after(refresh_every),
            state,
            user,
            subscription,
            receiver,
            opening: opening.into(),
            floor,
            epoch: ready_id.epoch.clone(),
            ended: false,
            _open: metrics::OpenStream::opened(),
        })
    }

    /// The next frame already waiting, without waiting: for writing several frames at once.
    /// Heartbeats and presence refreshes are left to [`Pump::next_frame`].
    pub fn ready_frame(&mut self) -> Option<Bytes> {
        if let Some(frame) = self.opening.pop_front() {
            return Some(frame);
        }
        while !self.ended {
            let item = self.receiver.try_recv().transpose()?;
            match self.step(item) {
                Step::Frame(frame) => return Some(frame),
                Step::Skip => {}
                Step::End => self.ended = true,
            }
        }
        None
    }

    /// The next frame to write; `None` ends the stream.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        if let Some(frame) = self.opening.pop_front() {
            return Some(frame);
        }
        if self.ended {
            return None;
        }
        loop {
            tokio::select! {
                item = self.receiver.recv() => {
                    match self.step(item) {
                        Step::Frame(frame) => return Some(frame),
                        Step::Skip => continue,
                        Step::End => return None,
                    }
                }
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
                _ = self.refresh.tick() => {
                    // An open stream keeps its user online; a revoked token ends it.
                    let user = &self.user;
                    match self.state.live.touch(&user.jti, user.user_id, &user.username).await {
                        Ok(TouchOutcome::Revoked) => return None,
                        Ok(TouchOutcome::Active | TouchOutcome::Limited(_)) => {}
                        Err(err) => tracing::debug!(error = %err, "presence refresh failed"),
                    }
                }
                _ = self.shutdown.changed() => return None,
            }
        }
    }
}

/// What one item of the fan-out means for one stream.
enum Step {
    Frame(Bytes),
    Skip,
    End,
}

impl Pump {
    /// What the next item of the fan-out means for this stream. A stream too slow to keep up
    /// ends; the client resumes from the log.
    fn step(&mut self, item: Result<Arc<HubItem>, Lagged>) -> Step {
        let item = match item {
            Ok(item) => item,
            Err(Lagged(skipped)) => {
                tracing::info!(user = %self.user.user_id, skipped, "slow event stream closed");
                return Step::End;
            }
        };
        match &*item {
            HubItem::Event(event) => {
                if event.id.epoch != self.epoch {
                    return Step::Skip;
                }
                // Under the floor the client has the event already; what it changes for this
                // stream (a membership, a revocation) applies all the same, whatever id the
                // client claimed.
                let had = self
                    .floor
                    .as_ref()
                    .is_some_and(|floor| !event.id.is_after(floor));
                if !had {
                    self.floor = None;
                }
                match self.subscription.admit(event) {
                    Admission::Send if had => Step::Skip,
                    Admission::Send => {
                        metrics::event_sent(event.kind.as_str(), Some(event.id.ms));
                        Step::Frame(event.frame.clone())
                    }
                    Admission::Skip => Step::Skip,
                    Admission::Close => {
                        self.ended = true;
                        Step::Frame(sse_frame(None, "logout", r#"{"reason":"token revoked"}"#))
                    }
                }
            }
            HubItem::Resync(position, ResyncCause::LogLost) if position.epoch == self.epoch => {
                Step::Skip
            }
            HubItem::Resync(position, cause) => {
                self.floor = None;
                self.epoch.clone_from(&position.epoch);
                Step::Frame(resync_frame(position, cause.reason()))
            }
        }
    }
}

fn resync_frame(position: &EventId, reason: &str) -> Bytes {
    let data = json!(ResyncEvent {
        reason: reason.to_owned()
    });
    sse_frame(Some(position), "resync", &data.to_string())
}

/// The resume point: the `Last-Event-ID` header's value (a value that is not visible ASCII
/// given as `"\u{0}"`), else the `last_event_id` query parameter.
pub fn parse_last_event_id(raw: Option<&str>) -> Result<Option<EventId>, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(raw) => EventId::parse(raw).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidLastEventId,
                "Last-Event-ID must be an event id received from this stream",
            )
        }),
    }
}
