//! `GET /events`: the Server-Sent Events stream of everything the caller may see.
//!
//! Protocol: a `retry:` hint; on resume (`Last-Event-ID` header or `last_event_id` query
//! parameter) the missed events from the log, or one `resync` event when they are no longer
//! there; then `ready`, carrying the stream position as its id; then live events. Comment
//! heartbeats keep idle connections open. The stream ends on logout of its token and on
//! shutdown; a client reconnecting with the last id it saw gets everything it missed, exactly
//! once and in order, on any instance.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::live::{Admission, EventId, HubItem, Subscription, TouchOutcome, sse_frame};
use crate::startup::AppState;

/// Frames queued for one client before the writer waits for it.
const CLIENT_QUEUE: usize = 256;

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
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let last = last_event_id(&req, &query)?;
    // Subscribe first, then read the rooms: see `live::subscription` for why that order.
    let (receiver, position) = state.hub.subscribe();
    let position = position.ok_or_else(|| {
        ApiError::unavailable(
            "events_unavailable",
            anyhow::anyhow!("the event log has not been reached yet"),
        )
    })?;
    let mut rooms = state.store.rooms_of_user(user.user_id).await?;
    rooms.push(state.default_room.room_id());
    let mut subscription = Subscription::new(user.user_id, user.jti.clone(), rooms);

    let mut opening = vec![Bytes::from(format!("retry: {}\n\n", state.sse.retry_ms))];
    let mut floor = None;
    let mut ready_id = position.clone();
    if let Some(last) = &last {
        if last.epoch != position.epoch {
            opening.push(resync_frame(
                &position,
                "the event log was reset since your last event id",
            ));
        } else if position.is_after(last) {
            match state.live.replay(last, &position).await? {
                Some(missed) => {
                    for event in &missed {
                        if subscription.admit(event) == Admission::Send {
                            opening.push(event.frame.clone());
                        }
                    }
                }
                None => opening.push(resync_frame(
                    &position,
                    "the event log no longer holds everything after your last event id",
                )),
            }
        } else {
            // This instance has not read as far as the one the client came from: skip what
            // the client already has when it arrives.
            floor = Some(last.clone());
            ready_id = last.clone();
        }
    }
    let ready = json!(ReadyEvent {
        user_id: user.user_id.to_string(),
        username: user.username.clone(),
        resumed: last.is_some(),
    });
    opening.push(sse_frame(Some(&ready_id), "ready", &ready.to_string()));

    let (frames, body) = mpsc::channel::<Bytes>(CLIENT_QUEUE);
    tokio::spawn(pump(
        state.into_inner(),
        user,
        subscription,
        receiver,
        opening,
        floor,
        frames,
    ));
    let body = stream::unfold(body, |mut body| async move {
        body.recv()
            .await
            .map(|frame| (Ok::<_, std::convert::Infallible>(frame), body))
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache, no-transform"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// Writes one client's stream: the opening frames, then live events it may see, heartbeats,
/// and presence refreshes, until the client goes, its token is revoked, or shutdown.
async fn pump(
    state: Arc<AppState>,
    user: AuthUser,
    mut subscription: Subscription,
    mut receiver: broadcast::Receiver<Arc<HubItem>>,
    opening: Vec<Bytes>,
    mut floor: Option<EventId>,
    frames: mpsc::Sender<Bytes>,
) {
    for frame in opening {
        if frames.send(frame).await.is_err() {
            return;
        }
    }
    let mut shutdown = state.shutdown.clone();
    let mut heartbeat = tokio::time::interval(state.sse.heartbeat);
    heartbeat.tick().await;
    let refresh_every = (state.live.presence_ttl() / 3).max(Duration::from_millis(100));
    let mut refresh = tokio::time::interval(refresh_every);
    refresh.tick().await;
    loop {
        let frame = tokio::select! {
            item = receiver.recv() => match item {
                Ok(item) => match item.as_ref() {
                    HubItem::Event(event) => {
                        if floor.as_ref().is_some_and(|floor| !event.id.is_after(floor)) {
                            continue;
                        }
                        floor = None;
                        match subscription.admit(event) {
                            Admission::Send => event.frame.clone(),
                            Admission::Skip => continue,
                            Admission::Close => {
                                let _ = frames.send(sse_frame(None, "logout", r#"{"reason":"token revoked"}"#)).await;
                                return;
                            }
                        }
                    }
                    HubItem::Resync(position) => {
                        floor = None;
                        resync_frame(position, "the event log was reset")
                    }
                },
                // Too slow to keep up: end the stream; the client resumes from the log.
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::info!(user = %user.user_id, skipped, "slow event stream closed");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = heartbeat.tick() => Bytes::from_static(b": keep-alive\n\n"),
            _ = refresh.tick() => {
                // An open stream keeps its user online; a revoked token ends it.
                match state.live.touch(&user.jti, user.user_id, &user.username).await {
                    Ok(TouchOutcome::Revoked) => return,
                    Ok(TouchOutcome::Active) => {}
                    Err(err) => tracing::debug!(error = %err, "presence refresh failed"),
                }
                continue;
            }
            _ = shutdown.changed() => return,
            _ = frames.closed() => return,
        };
        if frames.send(frame).await.is_err() {
            return;
        }
    }
}

fn resync_frame(position: &EventId, reason: &str) -> Bytes {
    let data = json!(ResyncEvent {
        reason: reason.to_owned()
    });
    sse_frame(Some(position), "resync", &data.to_string())
}

fn last_event_id(req: &HttpRequest, query: &EventsQuery) -> Result<Option<EventId>, ApiError> {
    let raw = match req.headers().get("last-event-id") {
        Some(value) => Some(value.to_str().unwrap_or("\u{0}").to_owned()),
        None => query.last_event_id.clone(),
    };
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(raw) => EventId::parse(raw).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_last_event_id",
                "Last-Event-ID must be an event id received from this stream",
            )
        }),
    }
}
