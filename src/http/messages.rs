use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
pub use crate::delivery::{MessageResponse, UserRef};
use crate::delivery::{PostError, Posted};
use crate::domain::{MessageBody, MessageId, RoomId, UserId};
use crate::error::{ApiError, ErrorBody};
use crate::http::users::find_by_name;
use crate::http::{Query, limit_param};
use crate::startup::AppState;
use crate::store::{MessageRecord, NewMessage, Target, direct_conversation};

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
    let target = match (room_id, to) {
        (Some(room_id), None) => {
            let id = RoomId::parse(&room_id)?;
            let room = state
                .store
                .find_room(id)
                .await?
                .ok_or_else(|| ApiError::not_found("room_not_found", "no such room"))?;
            if !state.store.is_member(&room, user.user_id).await? {
                // A retry of a post stored before its sender left the room still gets its
                // answer (and its announcement, should no one have made it); nothing new is
                // stored for a non-member.
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
                return Ok(HttpResponse::Ok().json(state.delivery.replay(&stored).await));
            }
            Target::Room(id)
        }
        (None, Some(to)) => {
            let recipient = find_by_name(&state, &to).await?;
            if recipient.user_id() == user.user_id {
                return Err(ApiError::unprocessable(
                    "cannot_message_self",
                    "pick someone else to talk to",
                ));
            }
            Target::Direct {
                user: recipient.user_id(),
                username: recipient.username,
            }
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
    match state.delivery.post(new).await {
        Ok(Posted::Created(message)) => Ok(HttpResponse::Created().json(message)),
        Ok(Posted::Replayed(message)) => Ok(HttpResponse::Ok().json(message)),
        Err(PostError::KeyReused) => Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different message",
        )),
        Err(PostError::Store(err)) => Err(err.into()),
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
    state.delivery.before_reading_counts().await;
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
