use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{AuthUser, Signaller, Writer};
use crate::delivery::Change;
use crate::domain::{RoomId, RoomName};
use crate::error::{ApiError, ErrorBody, ErrorCode, OverSignalBudget, OverWriteBudget};
use crate::http::Query;
use crate::http::history::{HistoryQuery, MessagePage, history_page};
use crate::http::reading::{
    Conversation, ReadRequest, ReadState, TypingAnswer, mark_read, read_states, typing,
};
use crate::state::AppState;
use crate::store::{CreateRoomError, MembershipChange, RoomRecord, room_conversation};

const MAX_ROOMS_LISTED: i64 = 1000;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomResponse {
    #[schema(example = "665f1c2e9b1e8a00123456aa")]
    pub id: String,
    #[schema(example = "rust-fans")]
    pub name: String,
    /// The room everyone is in (`general`); it cannot be left.
    pub is_default: bool,
    /// Whether the caller is a member.
    pub joined: bool,
    pub created_at: DateTime<Utc>,
    /// In `GET /rooms`, for a room the caller is in: their read state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_state: Option<ReadState>,
}

impl RoomResponse {
    fn new(room: &RoomRecord, joined: bool) -> Self {
        Self {
            id: room.room_id().to_string(),
            name: room.name.clone(),
            is_default: room.is_default,
            joined: joined || room.is_default,
            created_at: room.created_at(),
            read_state: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomsResponse {
    /// All rooms, by name.
    pub rooms: Vec<RoomResponse>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomRequest {
    /// 2 to 32 letters, digits, `_`, `-` or `.`; unique regardless of case.
    #[schema(example = "rust-fans", pattern = "^[A-Za-z0-9_.-]{2,32}$")]
    pub name: String,
}

/// Parses a room id from a path: malformed is a 400, unknown a 404.
async fn find_room(state: &AppState, raw: &str) -> Result<RoomRecord, ApiError> {
    let id = RoomId::parse(raw).map_err(|e| ApiError::bad_request(e.code, e.message))?;
    state
        .store
        .find_room(id)
        .await?
        .ok_or_else(|| ApiError::not_found(ErrorCode::RoomNotFound, "no such room"))
}

/// Announces a stored membership change (see `Delivery::announce`: a change Redis refuses is
/// announced later, by a retry or the reconciler).
async fn announce(state: &AppState, change: Option<MembershipChange>) {
    if let Some(change) = change {
        state.delivery.announce(Change::Membership(change)).await;
    }
}

/// Create a room; the caller becomes its first member.
#[utoipa::path(post, path = "/rooms", tag = "rooms",
    security(("bearer_auth" = [])),
    request_body = CreateRoomRequest,
    responses(
        (status = 201, description = "Room created", body = RoomResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody,
            example = json!({"error": "room_name_taken", "message": "a room named `rust-fans` exists"})),
        (status = 422, description = "Invalid name", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        (status = 400, description = "Malformed JSON, path or query parameter", body = ErrorBody),
        (status = 413, description = "Body larger than MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`", body = ErrorBody),
        OverWriteBudget,
    ))]
pub async fn create_room(
    state: web::Data<AppState>,
    user: Writer,
    body: web::Json<CreateRoomRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = RoomName::parse(&body.name)?;
    let (room, joined) = state
        .store
        .create_room(&name, user.user_id, &user.username)
        .await
        .map_err(|err| match err {
            CreateRoomError::NameTaken => ApiError::conflict(
                ErrorCode::RoomNameTaken,
                format!("a room named `{name}` exists"),
            ),
            CreateRoomError::Database(err) => err.into(),
        })?;
    announce(&state, joined).await;
    Ok(HttpResponse::Created().json(RoomResponse::new(&room, true)))
}

/// All rooms, with whether the caller is a member, and for the rooms they are in, their read
/// state (unread messages and mentions, capped at 100).
#[utoipa::path(get, path = "/rooms", tag = "rooms",
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The rooms, by name", body = RoomsResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn list_rooms(
    state: web::Data<AppState>,
    user: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let (rooms, mine) = tokio::try_join!(
        state.store.list_rooms(MAX_ROOMS_LISTED),
        state.store.rooms_of_user(user.user_id),
    )?;
    let joined_at: HashMap<RoomId, i64> = mine.into_iter().map(|j| (j.room, j.at_ms)).collect();
    let mut rooms: Vec<RoomResponse> = rooms
        .iter()
        .map(|room| RoomResponse::new(room, joined_at.contains_key(&room.room_id())))
        .collect();
    let conversations: Vec<Conversation> = rooms
        .iter()
        .filter(|r| r.joined)
        .filter_map(|r| {
            let id = RoomId::parse(&r.id).ok()?;
            let joined_ms = joined_at
                .get(&id)
                .copied()
                .unwrap_or_else(|| registered_ms(&user));
            Some(Conversation::room(
                room_conversation(id),
                r.id.clone(),
                joined_ms,
            ))
        })
        .collect();
    state.delivery.before_reading_counts().await;
    let mut states = read_states(&state, &user, &conversations)
        .await?
        .into_iter();
    for room in rooms.iter_mut().filter(|r| r.joined) {
        room.read_state = states.next();
    }
    Ok(HttpResponse::Ok().json(RoomsResponse { rooms }))
}

/// When the caller registered (and so joined `general`): their id's time.
fn registered_ms(user: &AuthUser) -> i64 {
    user.user_id.object_id().timestamp().timestamp_millis()
}

/// A room the caller is in, as a conversation; 403 when they are not.
async fn member_room(
    state: &AppState,
    user: &AuthUser,
    raw: &str,
    to: &str,
) -> Result<Conversation, ApiError> {
    let room = find_room(state, raw).await?;
    let id = room.room_id();
    let joined_ms = if room.is_default {
        registered_ms(user)
    } else {
        let mine = state.store.rooms_of_user(user.user_id).await?;
        let joined = mine.iter().find(|j| j.room == id).ok_or_else(|| {
            ApiError::new(
                actix_web::http::StatusCode::FORBIDDEN,
                ErrorCode::NotAMember,
                format!("join the room to {to} it"),
            )
        })?;
        joined.at_ms
    };
    Ok(Conversation::room(
        room_conversation(id),
        id.to_string(),
        joined_ms,
    ))
}

/// Mark a room read up to a message; the caller's other streams get a `read` event.
#[utoipa::path(post, path = "/rooms/{room_id}/read", tag = "rooms",
    security(("bearer_auth" = [])),
    params(("room_id" = String, Path, description = "The room's id", pattern = "^[0-9a-fA-F]{24}$")),
    request_body = ReadRequest,
    responses(
        (status = 200, description = "The caller's read state after the move (a marker never moves back)", body = ReadState),
        (status = 400, description = "Malformed room or message id, or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Not a member of the room", body = ErrorBody),
        (status = 404, description = "No such room, or no such message in it", body = ErrorBody),
        (status = 422, description = "A body without `last_read`", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        (status = 413, description = "Body larger than MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`", body = ErrorBody),
        OverSignalBudget,
    ))]
pub async fn read_room(
    state: web::Data<AppState>,
    user: Signaller,
    path: web::Path<String>,
    body: web::Json<ReadRequest>,
) -> Result<HttpResponse, ApiError> {
    let conversation = member_room(&state, &user, &path, "read").await?;
    mark_read(&state, &user, conversation, body.into_inner()).await
}

/// Say that the caller is typing in a room: its members get a `typing` event (at most one a
/// second per user and room; send one every few seconds while typing).
#[utoipa::path(post, path = "/rooms/{room_id}/typing", tag = "rooms",
    security(("bearer_auth" = [])),
    params(("room_id" = String, Path, description = "The room's id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 202, description = "Announced, or absorbed by the one-a-second limit", body = TypingAnswer),
        (status = 400, description = "Malformed room id", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Not a member of the room", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 503, description = "Redis or storage unavailable", body = ErrorBody),
        OverSignalBudget,
    ))]
pub async fn room_typing(
    state: web::Data<AppState>,
    user: Signaller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation = member_room(&state, &user, &path, "type in").await?;
    typing(&state, &user, &conversation).await
}

/// Join a room (joining twice changes nothing).
#[utoipa::path(post, path = "/rooms/{room_id}/join", tag = "rooms",
    security(("bearer_auth" = [])),
    params(("room_id" = String, Path, description = "The room's id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The caller is a member", body = RoomResponse),
        (status = 400, description = "Malformed room id", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        OverWriteBudget,
    ))]
pub async fn join_room(
    state: web::Data<AppState>,
    user: Writer,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = find_room(&state, &path).await?;
    if !room.is_default {
        let joined = state
            .store
            .set_member(&room, user.user_id, &user.username, true)
            .await?;
        announce(&state, joined).await;
    }
    Ok(HttpResponse::Ok().json(RoomResponse::new(&room, true)))
}

/// Leave a room (leaving a room one is not in changes nothing).
#[utoipa::path(post, path = "/rooms/{room_id}/leave", tag = "rooms",
    security(("bearer_auth" = [])),
    params(("room_id" = String, Path, description = "The room's id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 204, description = "The caller is not a member any more"),
        (status = 400, description = "Malformed room id", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 409, description = "The default room cannot be left", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        OverWriteBudget,
    ))]
pub async fn leave_room(
    state: web::Data<AppState>,
    user: Writer,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = find_room(&state, &path).await?;
    if room.is_default {
        return Err(ApiError::conflict(
            ErrorCode::CannotLeaveDefaultRoom,
            "everyone is in the default room",
        ));
    }
    let left = state
        .store
        .set_member(&room, user.user_id, &user.username, false)
        .await?;
    announce(&state, left).await;
    Ok(HttpResponse::NoContent().finish())
}

/// The messages of a room, newest first. Members only.
#[utoipa::path(get, path = "/rooms/{room_id}/messages", tag = "messages",
    security(("bearer_auth" = [])),
    params(("room_id" = String, Path, description = "The room's id", pattern = "^[0-9a-fA-F]{24}$"), HistoryQuery),
    responses(
        (status = 200, description = "A page of messages, newest first", body = MessagePage),
        (status = 400, description = "Malformed room id or cursor", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Not a member of the room", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 422, description = "Limit out of range", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn room_messages(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let conversation = member_room(&state, &user, &path, "read").await?;
    let page = history_page(&state, &user, &conversation.key, &query).await?;
    Ok(HttpResponse::Ok().json(page))
}
