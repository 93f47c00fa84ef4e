use std::collections::HashSet;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::domain::{RoomId, RoomName};
use crate::error::{ApiError, ErrorBody};
use crate::http::Query;
use crate::http::history::{HistoryQuery, MessagePage, history_page};
use crate::startup::AppState;
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
}

impl RoomResponse {
    fn new(room: &RoomRecord, joined: bool) -> Self {
        Self {
            id: room.room_id().to_string(),
            name: room.name.clone(),
            is_default: room.is_default,
            joined: joined || room.is_default,
            created_at: room.created_at(),
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
    #[schema(example = "rust-fans")]
    pub name: String,
}

/// The `room_member` event: someone joined or left a room.
async fn find_room(state: &AppState, raw: &str) -> Result<RoomRecord, ApiError> {
    let id = RoomId::parse(raw).map_err(|e| ApiError::bad_request(e.code, e.message))?;
    state
        .store
        .find_room(id)
        .await?
        .ok_or_else(|| ApiError::not_found("room_not_found", "no such room"))
}

/// Announces a stored membership change; the membership itself is already in place, so the
/// answer does not wait on Redis (a change not announced here is announced by the reconciler).
async fn announce(state: &AppState, change: Option<MembershipChange>) {
    if let Some(change) = change {
        state.delivery.announce(&change).await;
    }
}

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
    ))]
pub async fn create_room(
    state: web::Data<AppState>,
    user: AuthUser,
    body: web::Json<CreateRoomRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = RoomName::parse(&body.name)?;
    let (room, joined) = state
        .store
        .create_room(&name, user.user_id, &user.username)
        .await
        .map_err(|err| match err {
            CreateRoomError::NameTaken => {
                ApiError::conflict("room_name_taken", format!("a room named `{name}` exists"))
            }
            CreateRoomError::Database(err) => err.into(),
        })?;
    announce(&state, joined).await;
    Ok(HttpResponse::Created().json(RoomResponse::new(&room, true)))
}

/// All rooms, with whether the caller is a member.
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
    let mine: HashSet<RoomId> = mine.into_iter().collect();
    let rooms = rooms
        .iter()
        .map(|room| RoomResponse::new(room, mine.contains(&room.room_id())))
        .collect();
    Ok(HttpResponse::Ok().json(RoomsResponse { rooms }))
}

/// Join a room (joining twice changes nothing).
#[utoipa::path(post, path = "/rooms/{room_id}/join", tag = "rooms",
    security(("bearer_auth" = [])),
    params(("room_id" = String, Path, description = "The room's id")),
    responses(
        (status = 200, description = "The caller is a member", body = RoomResponse),
        (status = 400, description = "Malformed room id", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn join_room(
    state: web::Data<AppState>,
    user: AuthUser,
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
    params(("room_id" = String, Path, description = "The room's id")),
    responses(
        (status = 204, description = "The caller is not a member any more"),
        (status = 400, description = "Malformed room id", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 409, description = "The default room cannot be left", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn leave_room(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = find_room(&state, &path).await?;
    if room.is_default {
        return Err(ApiError::conflict(
            "cannot_leave_default_room",
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
    params(("room_id" = String, Path, description = "The room's id"), HistoryQuery),
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
    let room = find_room(&state, &path).await?;
    if !state.store.is_member(&room, user.user_id).await? {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "not_a_member",
            "join the room to read it",
        ));
    }
    let page = history_page(&state, &room_conversation(room.room_id()), &query).await?;
    Ok(HttpResponse::Ok().json(page))
}
