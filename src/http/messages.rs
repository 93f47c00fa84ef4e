//! `POST /messages`: a post to a room or to a user, through the delivery path.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::delivery::{MessageResponse, PostError, Posted};
use crate::domain::{MessageBody, RoomId};
use crate::error::{ApiError, ErrorBody};
use crate::http::users::find_by_name;
use crate::startup::AppState;
use crate::store::{NewMessage, Target};

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
