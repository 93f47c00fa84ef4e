//! `/messages`: a post to a room or to a user, through the delivery path; edits, deletions
//! and reactions of a stored message.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{AuthUser, Writer};
use crate::delivery::{Change, MessageResponse, PostError, Posted};
use crate::domain::{Emoji, MessageBody, MessageId, RoomId};
use crate::error::{ApiError, ErrorBody, ErrorCode, OverWriteBudget};
use crate::http::people::find_by_name;
use crate::state::AppState;
use crate::store::{MessageRecord, NewMessage, Target};

const MAX_IDEMPOTENCY_KEY: usize = 128;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"room_id": "665f1c2e9b1e8a00123456aa", "body": "hello, room"}))]
pub struct CreateMessageRequest {
    /// Send to this room (the sender must be a member). Exactly one of `room_id` and `to`.
    #[schema(pattern = "^[0-9a-fA-F]{24}$")]
    pub room_id: Option<String>,
    /// Send to this user (by name), in the one-to-one conversation with them.
    #[schema(example = "bob", pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    pub to: Option<String>,
    /// 1 to 4000 characters, not all white space.
    #[schema(example = "hello", min_length = 1, max_length = 4000)]
    pub body: String,
}

/// Send a message to a room or to a user. Honors an `Idempotency-Key` header: the same key
/// from the same user within a day returns the message stored the first time (200), and
/// announces it live if no earlier attempt did (a message is announced once), even if the
/// sender has left the room since.
#[utoipa::path(post, path = "/messages", tag = "messages",
    security(("bearer_auth" = [])),
    request_body = CreateMessageRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$",
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
        (status = 415, description = "The body is not sent as `application/json`", body = ErrorBody),
        OverWriteBudget,
    ))]
pub async fn create_message(
    state: web::Data<AppState>,
    user: Writer,
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
                .ok_or_else(|| ApiError::not_found(ErrorCode::RoomNotFound, "no such room"))?;
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
                        ErrorCode::NotAMember,
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
                    ErrorCode::CannotMessageSelf,
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
                ErrorCode::InvalidTarget,
                "give exactly one of `room_id` and `to`",
            ));
        }
    };
    let mentions = state.store.mentions(&body, user.user_id, &target).await?;
    let new = NewMessage {
        sender: user.user_id,
        sender_name: user.username.clone(),
        target,
        body,
        idempotency_key,
        mentions,
    };
    match state.delivery.post(new).await {
        Ok(Posted::Created(message)) => Ok(HttpResponse::Created().json(message)),
        Ok(Posted::Replayed(message)) => Ok(HttpResponse::Ok().json(message)),
        Err(PostError::KeyReused) => Err(ApiError::unprocessable(
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used for a different message",
        )),
        Err(PostError::Store(err)) => Err(err.into()),
    }
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
            ErrorCode::InvalidIdempotencyKey,
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
            ),
        )),
    }
}

/// The message `raw` names, if the caller may see it: a message of a room they are in, or of
/// one of their own direct conversations. 404 otherwise, as for a message that does not exist.
async fn visible_message(
    state: &AppState,
    user: &AuthUser,
    raw: &str,
) -> Result<MessageRecord, ApiError> {
    let id = MessageId::parse(raw)
        .map_err(|_| ApiError::bad_request(ErrorCode::InvalidMessageId, "not a message id"))?;
    let not_found = || ApiError::not_found(ErrorCode::MessageNotFound, "no such message");
    let message = state.store.find_message(id).await?.ok_or_else(not_found)?;
    let me = user.user_id.to_string();
    let visible = match &message.room_id {
        Some(room) => match state.store.find_room(RoomId::parse(room)?).await? {
            Some(room) => state.store.is_member(&room, user.user_id).await?,
            None => false,
        },
        None => message.sender_id == me || message.recipient_id.as_deref() == Some(me.as_str()),
    };
    if visible {
        Ok(message)
    } else {
        Err(not_found())
    }
}

/// A message the caller sent and may still see (deleted or not): what an edit or a deletion
/// needs; 403 for anyone else's.
async fn own_message(
    state: &AppState,
    user: &AuthUser,
    raw: &str,
) -> Result<MessageRecord, ApiError> {
    let message = visible_message(state, user, raw).await?;
    if message.sender_id != user.user_id.to_string() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotTheSender,
            "only its sender may change a message",
        ));
    }
    Ok(message)
}

fn deleted() -> ApiError {
    ApiError::conflict(ErrorCode::MessageDeleted, "the message was deleted")
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessageRequest {
    /// The new text: 1 to 4000 characters, not all white space.
    #[schema(example = "hello, room (edited)", min_length = 1, max_length = 4000)]
    pub body: String,
}

/// Edit one's own message. Its mentions are found again; every stream of its audience gets a
/// `message_edited` event with the message as it is now.
#[utoipa::path(patch, path = "/messages/{message_id}", tag = "messages",
    security(("bearer_auth" = [])),
    params(("message_id" = String, Path, description = "The message's id", pattern = "^[0-9a-fA-F]{24}$")),
    request_body = EditMessageRequest,
    responses(
        (status = 200, description = "The message as edited", body = MessageResponse),
        (status = 400, description = "Malformed message id or JSON", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Not the sender", body = ErrorBody),
        (status = 404, description = "No such message, or not one the caller may see", body = ErrorBody),
        (status = 409, description = "The message was deleted", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Empty or too long body", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`", body = ErrorBody),
        OverWriteBudget,
    ))]
pub async fn edit_message(
    state: web::Data<AppState>,
    user: Writer,
    path: web::Path<String>,
    body: web::Json<EditMessageRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = MessageBody::parse(&body.body)?;
    let message = own_message(&state, &user, &path).await?;
    if message.deleted_at_ms.is_some() {
        return Err(deleted());
    }
    let target = message.target().ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("message {} names no audience", message.seq))
    })?;
    let mentions = state.store.mentions(&body, user.user_id, &target).await?;
    let edited = state
        .store
        .edit_message(message.message_id(), body, mentions)
        .await?
        .ok_or_else(deleted)?;
    let response = MessageResponse::from(&edited);
    state
        .delivery
        .announce(Change::Message(Box::new(edited)))
        .await;
    Ok(HttpResponse::Ok().json(response))
}

/// Delete one's own message: its body is removed from the store and a tombstone stays in the
/// history (who deleted it, and when); every stream of its audience gets a `message_deleted`
/// event. Deleting it again changes nothing.
#[utoipa::path(delete, path = "/messages/{message_id}", tag = "messages",
    security(("bearer_auth" = [])),
    params(("message_id" = String, Path, description = "The message's id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The tombstone", body = MessageResponse),
        (status = 400, description = "Malformed message id", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Not the sender", body = ErrorBody),
        (status = 404, description = "No such message, or not one the caller may see", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        OverWriteBudget,
    ))]
pub async fn delete_message(
    state: web::Data<AppState>,
    user: Writer,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let message = own_message(&state, &user, &path).await?;
    if message.deleted_at_ms.is_some() {
        return Ok(HttpResponse::Ok().json(MessageResponse::from(&message)));
    }
    let deleted = state
        .store
        .delete_message(message.message_id(), user.user_id)
        .await?;
    let tombstone = match deleted {
        Some(tombstone) => {
            let response = MessageResponse::from(&tombstone);
            state
                .delivery
                .announce(Change::Message(Box::new(tombstone)))
                .await;
            response
        }
        // Deleted at the same moment by another request of the sender: its tombstone.
        None => {
            let tombstone = state.store.find_message(message.message_id()).await?;
            MessageResponse::from(&tombstone.unwrap_or(message))
        }
    };
    Ok(HttpResponse::Ok().json(tombstone))
}

/// Add a reaction to a message the caller can see (once per user, message and emoji: adding it
/// again changes nothing). Every stream of the message's audience gets a `reaction` event.
#[utoipa::path(put, path = "/messages/{message_id}/reactions/{emoji}", tag = "messages",
    security(("bearer_auth" = [])),
    params(
        ("message_id" = String, Path, description = "The message's id", pattern = "^[0-9a-fA-F]{24}$"),
        ("emoji" = String, Path, description = "Exactly one emoji, percent-encoded (`%F0%9F%91%8D` for 👍)"),
    ),
    responses(
        (status = 204, description = "The caller reacts with this emoji"),
        (status = 400, description = "Malformed message id", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such message, or not one the caller may see", body = ErrorBody),
        (status = 409, description = "The message was deleted", body = ErrorBody),
        (status = 422, description = "Not exactly one emoji", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        OverWriteBudget,
    ))]
pub async fn add_reaction(
    state: web::Data<AppState>,
    user: Writer,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    react(&state, &user, &path, true).await
}

/// Remove the caller's reaction (removing one that is not there changes nothing).
#[utoipa::path(delete, path = "/messages/{message_id}/reactions/{emoji}", tag = "messages",
    security(("bearer_auth" = [])),
    params(
        ("message_id" = String, Path, description = "The message's id", pattern = "^[0-9a-fA-F]{24}$"),
        ("emoji" = String, Path, description = "Exactly one emoji, percent-encoded"),
    ),
    responses(
        (status = 204, description = "The caller does not react with this emoji"),
        (status = 400, description = "Malformed message id", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such message, or not one the caller may see", body = ErrorBody),
        (status = 409, description = "The message was deleted", body = ErrorBody),
        (status = 422, description = "Not exactly one emoji", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        OverWriteBudget,
    ))]
pub async fn remove_reaction(
    state: web::Data<AppState>,
    user: Writer,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    react(&state, &user, &path, false).await
}

async fn react(
    state: &AppState,
    user: &AuthUser,
    (message_id, emoji): &(String, String),
    active: bool,
) -> Result<HttpResponse, ApiError> {
    let emoji = Emoji::parse(emoji)?;
    let message = visible_message(state, user, message_id).await?;
    if message.deleted_at_ms.is_some() {
        return Err(deleted());
    }
    let change = state
        .store
        .set_reaction(
            &message,
            user.user_id,
            &user.username,
            emoji.as_str(),
            active,
        )
        .await?;
    if let Some(change) = change {
        state.delivery.announce(Change::Reaction(change)).await;
    }
    Ok(HttpResponse::NoContent().finish())
}
