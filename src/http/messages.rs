use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::domain::{MessageBody, MessageId, RoomId, UserId};
use crate::error::{ApiError, ErrorBody};
use crate::http::users::find_by_name;
use crate::http::{Query, limit_param};
use crate::live::{Audience, EventKind};
use crate::startup::AppState;
use crate::store::{
    InsertMessageError, Inserted, MessageRecord, NewMessage, StoredBy, Target, direct_conversation,
};

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;
const MAX_IDEMPOTENCY_KEY: usize = 128;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"room_id": "665f1c2e9b1e8a00123456aa", "body": "hello, room"}))]
pub struct CreateMessageRequest {
    /// Send to this room (the sender must be a member). Exactly one of `room_id` and `to`.
    pub room_id: Option<String>,
    /// Send to this user (by name), in the one-to-one conversation with them.
    #[schema(example = "bob")]
    pub to: Option<String>,
    /// 1 to 4000 characters once surrounding whitespace is trimmed.
    #[schema(example = "hello")]
    pub body: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserRef {
    #[schema(example = "665f1c2e9b1e8a0012345678")]
    pub id: String,
    #[schema(example = "alice")]
    pub username: String,
}

/// A stored message. Also the data of the `message` event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageResponse {
    #[schema(example = "665f1d009b1e8a00123456ff")]
    pub id: String,
    pub sender: UserRef,
    /// Set for a room message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    /// Set for a direct message: the recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<UserRef>,
    pub body: String,
    /// Server time of storage.
    pub created_at: DateTime<Utc>,
    /// Id of the `message` event on the SSE stream, when known (the response to the request
    /// that stored it, or to a retry with its idempotency key), so the sender can recognise
    /// its own message there. Absent when the event is still waiting for Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl From<&MessageRecord> for MessageResponse {
    fn from(m: &MessageRecord) -> Self {
        Self {
            id: m.message_id().to_string(),
            sender: UserRef {
                id: m.sender_id.clone(),
                username: m.sender_name.clone(),
            },
            room_id: m.room_id.clone(),
            to: m.recipient_id.as_ref().map(|id| UserRef {
                id: id.clone(),
                username: m.recipient_name.clone().unwrap_or_default(),
            }),
            body: m.body.clone(),
            created_at: m.created_at(),
            event_id: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessagePage {
    /// Newest first.
    pub messages: Vec<MessageResponse>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// Only messages older than this message id (the `next_before` of the previous page).
    pub before: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
}

/// One page of a conversation, fetching one extra message to know whether there is more.
pub(crate) async fn history_page(
    state: &AppState,
    conversation: &str,
    query: &HistoryQuery,
) -> Result<MessagePage, ApiError> {
    let limit = limit_param(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let before = query
        .before
        .as_deref()
        .map(MessageId::parse)
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid_cursor", "`before` must be a message id"))?;
    let mut records = state.store.history(conversation, before, limit + 1).await?;
    let more = records.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    records.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let messages: Vec<MessageResponse> = records.iter().map(MessageResponse::from).collect();
    let next_before = more
        .then(|| messages.last().map(|m| m.id.clone()))
        .flatten();
    Ok(MessagePage {
        messages,
        next_before,
    })
}

/// Send a message to a room or to a user. Honors an `Idempotency-Key` header: the same key
/// from the same user within a day returns the message stored the first time (200), and
/// announces it live if no earlier attempt did (a message is announced once), even if the
/// sender has left the room since.
#[utoipa::path(post, path = "/messages", tag = "messages",
    security(("bearer_auth" = [])),
    request_body = CreateMessageRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Up to 128 printable characters; retries with the same key store and announce one message")),
    responses(
        (status = 201, description = "Stored and delivered live", body = MessageResponse),
        (status = 200, description = "A retry: the message stored the first time with this key, and the id of the event that announced it when known", body = MessageResponse),
        (status = 400, description = "Malformed JSON or idempotency key", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Not a member of the room", body = ErrorBody),
        (status = 404, description = "No such room or user", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Empty or too long body, both or neither of room_id and to, message to self, key reused for another message", body = ErrorBody,
            example = json!({"error": "message_too_long", "message": "the message body must be at most 4000 characters"})),
        (status = 503, description = "Storage unavailable, or the write timed out with its outcome unknown: retry with the same Idempotency-Key to be safe", body = ErrorBody),
    ))]
pub async fn create_message(
    state: web::Data<AppState>,
    user: AuthUser,
    req: HttpRequest,
    body: web::Json<CreateMessageRequest>,
) -> Result<HttpResponse, ApiError> {
    let CreateMessageRequest { room_id, to, body } = body.into_inner();
    let idempotency_key = idempotency_key(&req)?;
    let body = MessageBody::parse(&body)?;
    let (target, audience) = match (room_id, to) {
        (Some(room_id), None) => {
            let id = RoomId::parse(&room_id)?;
            let room = state
                .store
                .find_room(id)
                .await?
                .ok_or_else(|| ApiError::not_found("room_not_found", "no such room"))?;
            if !state.store.is_member(&room, user.user_id).await? {
                // A retry of a post stored before its sender left the room still gets its
                // answer (and its announcement, should the first attempt not have made it);
                // nothing new is stored for a non-member.
                let stored = match &idempotency_key {
                    Some(key) => {
                        state
                            .store
                            .posted_with_key(user.user_id, key, id, &body)
                            .await?
                    }
                    None => None,
                };
                let Some(stored) = stored else {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "not_a_member",
                        "join the room to post in it",
                    ));
                };
                let state = state.into_inner();
                let task = tokio::spawn(async move {
                    announce(&state, stored, false, true, Audience::Room(id)).await
                });
                return answer(task.await.map_err(ApiError::internal)?);
            }
            (Target::Room(id), Audience::Room(id))
        }
        (None, Some(to)) => {
            let recipient = find_by_name(&state, &to).await?;
            if recipient.user_id() == user.user_id {
                return Err(ApiError::unprocessable(
                    "cannot_message_self",
                    "pick someone else to talk to",
                ));
            }
            let audience = Audience::Users(vec![user.user_id, recipient.user_id()]);
            let target = Target::Direct {
                user: recipient.user_id(),
                username: recipient.username,
            };
            (target, audience)
        }
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_target",
                "give exactly one of `room_id` and `to`",
            ));
        }
    };
    let new = NewMessage {
        sender: user.user_id,
        sender_name: user.username.clone(),
        target,
        body,
        idempotency_key,
    };
    // Stored and announced in a task of its own: a client that hangs up while its message is
    // in a group commit cannot leave it stored but never announced.
    let task = tokio::spawn(store_and_announce(state.into_inner(), new, audience));
    answer(task.await.map_err(ApiError::internal)?)
}

fn answer(outcome: Result<Stored, StoreFailure>) -> Result<HttpResponse, ApiError> {
    match outcome {
        Ok(Stored::Created(response)) => Ok(HttpResponse::Created().json(response)),
        Ok(Stored::Replayed(response)) => Ok(HttpResponse::Ok().json(response)),
        Err(StoreFailure::Insert(InsertMessageError::KeyReused)) => Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different message",
        )),
        Err(StoreFailure::Insert(
            InsertMessageError::Database(err) | InsertMessageError::MaybeStored { source: err, .. },
        )) => Err(err.into()),
        Err(StoreFailure::Encode(err)) => Err(ApiError::internal(err)),
    }
}

enum Stored {
    Created(MessageResponse),
    Replayed(MessageResponse),
}

enum StoreFailure {
    Insert(InsertMessageError),
    Encode(serde_json::Error),
}

async fn store_and_announce(
    state: Arc<AppState>,
    new: NewMessage,
    audience: Audience,
) -> Result<Stored, StoreFailure> {
    // A message posted with an idempotency key may be announced by a retry as well (below):
    // its event names it, so that whichever comes second appends nothing.
    let keyed = new.idempotency_key.is_some();
    let inserted = match state.store.insert_message(new).await {
        Ok(inserted) => inserted,
        Err(InsertMessageError::MaybeStored { record, source }) => {
            let id = record.message_id();
            match state.looks.start(*record, audience) {
                Some(ticket) => {
                    tokio::spawn(announce_if_stored(Arc::clone(&state), ticket));
                }
                None => {
                    tracing::warn!(message = %id,
                        "too many messages of unknown outcome to look for; this one is neither announced nor counted if stored");
                }
            }
            return Err(StoreFailure::Insert(InsertMessageError::Database(source)));
        }
        Err(err) => return Err(StoreFailure::Insert(err)),
    };
    let (record, created) = match inserted {
        Inserted::Created(record) => (record, true),
        // The first attempt may have stored the message without announcing it (its write
        // outlived the request's bound, or its instance stopped in between): announced now,
        // unless it was before.
        Inserted::Replayed(record) => (record, false),
    };
    announce(&state, record, created, keyed, audience).await
}

/// Announces a stored message and gives the answer to its post. `keyed`: its event names it,
/// so that it is appended once however many attempts announce it.
async fn announce(
    state: &AppState,
    record: MessageRecord,
    created: bool,
    keyed: bool,
    audience: Audience,
) -> Result<Stored, StoreFailure> {
    let mut response = MessageResponse::from(&record);
    let data = serde_json::to_string(&response).map_err(StoreFailure::Encode)?;
    let announces = keyed.then(|| record.message_id());
    let event_id = state
        .outbox
        .publish(EventKind::Message, audience, data, announces)
        .await;
    response.event_id = event_id.map(|id| id.to_string());
    Ok(if created {
        Stored::Created(response)
    } else {
        Stored::Replayed(response)
    })
}

/// Waits before each look for a message whose insert failed with its outcome unknown.
const LOOK_AGAIN: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(4),
    Duration::from_secs(15),
    Duration::from_secs(60),
];

/// Messages looked for at once at most: a store that hangs under load fails every post, and
/// each look holds its message (up to 16 KB) for 80 s.
const MAX_LOOKING: usize = 1_000;

/// A message whose insert failed with its outcome unknown, and who would see it.
struct Look {
    record: MessageRecord,
    audience: Audience,
    /// When the look began (the insert's 503).
    since: tokio::time::Instant,
}

/// The messages being looked for (see [`announce_if_stored`]), by ticket: attempts of one
/// idempotency key share a message id, and each attempt's look is its own. A look is handled
/// by whoever takes it out: its task, once it finds the message stored or gives up, or the
/// last look at shutdown ([`look_before_stopping`]), so each is acted on once.
#[derive(Default)]
pub struct Looks {
    pending: Mutex<LooksInner>,
}

#[derive(Default)]
struct LooksInner {
    next: u64,
    looks: HashMap<u64, Arc<Look>>,
}

impl Looks {
    /// Takes on a look and gives its ticket; `None` when [`MAX_LOOKING`] are under way.
    fn start(&self, record: MessageRecord, audience: Audience) -> Option<u64> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.looks.len() >= MAX_LOOKING {
            return None;
        }
        let ticket = pending.next;
        pending.next += 1;
        let look = Look {
            record,
            audience,
            since: tokio::time::Instant::now(),
        };
        pending.looks.insert(ticket, Arc::new(look));
        Some(ticket)
    }

    fn get(&self, ticket: u64) -> Option<Arc<Look>> {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.looks.get(&ticket).cloned()
    }

    fn take(&self, ticket: u64) -> Option<Arc<Look>> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.looks.remove(&ticket)
    }

    fn take_all(&self) -> Vec<Arc<Look>> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.looks.drain().map(|(_, look)| look).collect()
    }
}

/// A post whose insert failed with its outcome unknown (it timed out, or its connection was
/// lost) may have been stored all the same. Its client got a 503; the message would be in
/// history but never announced, so the others in the conversation would not see it until they
/// reload. Looks for it over about 80 s and, if it is there, announces it (once: its event
/// names it, so a keyed retry that announces it too adds nothing) and counts it if this
/// attempt stored it. A keyed post's retry that stores the message counts it itself; which
/// attempt stored it is in the message (`attempt`), so the two never both count it. An
/// instance that stops in between looks once more before it exits.
async fn announce_if_stored(state: Arc<AppState>, ticket: u64) {
    let mut last_look_failed = false;
    for wait in LOOK_AGAIN {
        tokio::time::sleep(wait).await;
        // Gone: taken by the last look at shutdown.
        let Some(look) = state.looks.get(ticket) else {
            return;
        };
        last_look_failed = false;
        match state.store.message_stored(&look.record).await {
            Ok(None) => {}
            Ok(Some(by)) => {
                if let Some(look) = state.looks.take(ticket) {
                    announce_found(&state, &look, by).await;
                }
                return;
            }
            Err(err) => {
                last_look_failed = true;
                tracing::debug!(message = %look.record.message_id(), error = %err,
                    "cannot look a message up yet");
            }
        }
    }
    let Some(look) = state.looks.take(ticket) else {
        return;
    };
    let id = look.record.message_id();
    if last_look_failed {
        tracing::warn!(message = %id, "a message whose insert outcome was unknown could not be looked up; if stored, it is in history only, uncounted");
    } else {
        tracing::info!(message = %id, "a message whose insert outcome was unknown was not stored");
    }
}

/// Acts on a message found stored after its insert failed with its outcome unknown: counts it
/// if this attempt stored it, and announces it as stored.
async fn announce_found(state: &AppState, look: &Look, by: StoredBy) {
    let id = look.record.message_id();
    let stored = match by {
        StoredBy::ThisAttempt => {
            state.store.count_found(&look.record);
            look.record.clone()
        }
        // Another attempt of the same post stored it (and counts it): the event shows what
        // history holds.
        StoredBy::AnotherAttempt(stored) => *stored,
    };
    match announce(state, stored, false, true, look.audience.clone()).await {
        Ok(Stored::Created(answer) | Stored::Replayed(answer)) => {
            tracing::info!(message = %id, event = ?answer.event_id,
                "a message whose insert outcome was unknown is stored; announced");
        }
        Err(_) => {
            tracing::error!(message = %id, "cannot encode a message found stored");
        }
    }
}

/// Looks running at once in the last look: enough to overlap round trips, few enough to
/// leave the store's connection pool to the rest of the shutdown.
const LAST_LOOKS_AT_ONCE: usize = 8;

/// At shutdown, once the server has stopped: looks once more, within `bound`, for every
/// message still looked for (the looks under way end with the HTTP workers that ran them),
/// and announces and counts those found stored. A look is made no sooner than the first of
/// the regular ones (1 s after its 503), so that a write still on its way can land. Called
/// before the counters are written and the outbox settles.
pub async fn look_before_stopping(state: &AppState, bound: Duration) {
    let looks = state.looks.take_all();
    if looks.is_empty() {
        return;
    }
    let unsettled = AtomicUsize::new(looks.len());
    let unsettled = &unsettled;
    let all = stream::iter(looks).for_each_concurrent(LAST_LOOKS_AT_ONCE, |look| async move {
        tokio::time::sleep_until(look.since + LOOK_AGAIN[0]).await;
        let id = look.record.message_id();
        match state.store.message_stored(&look.record).await {
            Ok(None) => {
                tracing::info!(message = %id, "a message whose insert outcome was unknown was not stored by shutdown");
            }
            Ok(Some(by)) => announce_found(state, &look, by).await,
            Err(err) => {
                tracing::warn!(message = %id, error = %err, "a message whose insert outcome was unknown could not be looked up at shutdown; if stored, it is in history only, uncounted");
            }
        }
        unsettled.fetch_sub(1, Ordering::Relaxed);
    });
    if tokio::time::timeout(bound, all).await.is_err() {
        tracing::warn!(
            messages = unsettled.load(Ordering::Relaxed),
            "the last look for messages of unknown outcome ran out of time at shutdown; if stored, they are in history only, uncounted"
        );
    }
}

/// The conversation between the caller and another user, newest first.
#[utoipa::path(get, path = "/conversations/{username}/messages", tag = "messages",
    security(("bearer_auth" = [])),
    params(("username" = String, Path, description = "The other user"), HistoryQuery),
    responses(
        (status = 200, description = "A page of messages, newest first", body = MessagePage),
        (status = 400, description = "Malformed cursor", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "Limit out of range", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn conversation_messages(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let other = find_by_name(&state, &path).await?;
    let conversation = direct_conversation(user.user_id, other.user_id());
    let page = history_page(&state, &conversation, &query).await?;
    Ok(HttpResponse::Ok().json(page))
}

const DEFAULT_CONVERSATIONS: usize = 20;
const MAX_CONVERSATIONS: usize = 100;
/// Latest-message reads of `GET /conversations` in flight at once.
const PREVIEW_READS: usize = 8;

#[derive(Debug, Deserialize, IntoParams)]
pub struct ConversationsQuery {
    /// How many conversations, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

/// One of the caller's direct conversations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationSummary {
    /// The other user.
    pub with: UserRef,
    /// Messages exchanged, both ways.
    #[schema(example = 42)]
    pub messages: i64,
    /// When the latest of them was stored.
    pub last_activity: Option<DateTime<Utc>>,
    /// The latest message, read from the history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessageResponse>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationList {
    /// Most recent first.
    pub conversations: Vec<ConversationSummary>,
}

/// The caller's direct conversations, most recent first, each with its latest message: what a
/// chat client lists beside its rooms. Listed from the per-pair statistics counters, which are
/// written behind: a message stored through this instance counts at once, through another
/// within a quarter of a second (until then its conversation may sit lower in the list, with
/// the new message already as its latest). A counter increment lost to a crash or a failed
/// write leaves that conversation's count low (or, for a first message, the conversation out).
#[utoipa::path(get, path = "/conversations", tag = "messages",
    security(("bearer_auth" = [])),
    params(ConversationsQuery),
    responses(
        (status = 200, description = "The caller's conversations, most recent first", body = ConversationList),
        (status = 400, description = "Malformed limit", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 422, description = "Limit out of range", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn list_conversations(
    state: web::Data<AppState>,
    user: AuthUser,
    query: Query<ConversationsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = limit_param(query.limit, DEFAULT_CONVERSATIONS, MAX_CONVERSATIONS)?;
    let partners = state
        .store
        .partners_of(&user.user_id.to_string(), limit)
        .await?;
    // A few reads at a time, so that a long list does not take every pooled connection.
    let latest: Vec<Vec<MessageRecord>> = stream::iter(partners.iter().map(|(partner, _)| {
        let store = &state.store;
        let conversation = UserId::parse(partner)
            .ok()
            .map(|partner| direct_conversation(user.user_id, partner));
        async move {
            match conversation {
                Some(conversation) => store.history(&conversation, None, 1).await,
                None => Ok(Vec::new()),
            }
        }
    }))
    .buffered(PREVIEW_READS)
    .try_collect()
    .await?;
    let conversations = partners
        .into_iter()
        .zip(latest)
        .map(|((partner, tally), latest)| {
            let last_message = latest.first().map(MessageResponse::from);
            // The history may already hold a message the counters have not counted yet.
            let last_activity = tally
                .last
                .into_iter()
                .chain(last_message.as_ref().map(|m| m.created_at))
                .max();
            ConversationSummary {
                with: UserRef {
                    id: partner,
                    username: tally.name,
                },
                messages: tally.n,
                last_activity,
                last_message,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(ConversationList { conversations }))
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= MAX_IDEMPOTENCY_KEY
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> MessageRecord {
        let id = mongodb::bson::oid::ObjectId::new();
        MessageRecord {
            id,
            seq: id.to_hex(),
            conversation: String::new(),
            sender_id: String::new(),
            sender_name: String::new(),
            room_id: None,
            recipient_id: None,
            recipient_name: None,
            body: "x".repeat(100),
            created_at: mongodb::bson::DateTime::now(),
            at_ms: 0,
            attempt: None,
        }
    }

    #[tokio::test]
    async fn looks_for_messages_of_unknown_outcome_are_bounded() {
        let looks = Looks::default();
        let tickets: Vec<u64> = (0..MAX_LOOKING)
            .map(|_| looks.start(record(), Audience::Everyone).unwrap())
            .collect();
        assert!(looks.start(record(), Audience::Everyone).is_none());
        assert!(looks.take(tickets[0]).is_some());
        assert!(looks.start(record(), Audience::Everyone).is_some());
    }

    #[tokio::test]
    async fn a_look_is_taken_once_and_attempts_of_one_message_each_have_theirs() {
        let looks = Looks::default();
        // Two attempts with one idempotency key: one message id, two tokens.
        let first = MessageRecord {
            attempt: Some("first".to_owned()),
            ..record()
        };
        let retry = MessageRecord {
            attempt: Some("retry".to_owned()),
            ..first.clone()
        };
        let a = looks.start(first, Audience::Everyone).unwrap();
        let b = looks.start(retry, Audience::Everyone).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            looks.get(a).unwrap().record.attempt.as_deref(),
            Some("first")
        );
        assert_eq!(
            looks.take(a).unwrap().record.attempt.as_deref(),
            Some("first")
        );
        assert!(
            looks.take(a).is_none(),
            "its task or the last look, not both"
        );
        assert!(looks.get(a).is_none());
        let rest = looks.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].record.attempt.as_deref(), Some("retry"));
        assert!(looks.take(b).is_none());
    }
}
