use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::people::{UserResponse, find_by_name};
use crate::http::{Query, limit_param};
use crate::state::AppState;

pub const MAX_ONLINE_LIMIT: usize = 1000;
const DEFAULT_ONLINE_LIMIT: usize = 100;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OnlineUser {
    #[schema(example = "665f1c2e9b1e8a0012345678")]
    pub id: String,
    #[schema(example = "alice")]
    pub username: String,
    /// When the user was last heard from (a request, or an open event stream).
    pub last_seen: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OnlineUsersResponse {
    /// Most recently seen first.
    pub users: Vec<OnlineUser>,
    /// Number of entries in `users`.
    pub count: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct OnlineQuery {
    /// At most this many users (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The caller's own profile.
#[utoipa::path(get, path = "/users/me", tag = "users",
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The caller", body = UserResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "The account no longer exists", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn me(state: web::Data<AppState>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    let record = state
        .store
        .find_user_by_id(user.user_id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(ErrorCode::UserNotFound, "this account no longer exists")
        })?;
    Ok(HttpResponse::Ok().json(UserResponse::from(&record)))
}

/// A user's public profile, by name (case-insensitive).
#[utoipa::path(get, path = "/users/{username}", tag = "users",
    security(("bearer_auth" = [])),
    params(("username" = String, Path, description = "The user's name, any case", example = "alice")),
    responses(
        (status = 200, description = "The user", body = UserResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody,
            example = json!({"error": "user_not_found", "message": "no user named `bob`"})),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn by_username(
    state: web::Data<AppState>,
    _user: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = find_by_name(&state, &path).await?;
    Ok(HttpResponse::Ok().json(UserResponse::from(&record)))
}

/// Users online now: seen within the presence TTL (60 s by default) on any instance.
#[utoipa::path(get, path = "/users/online", tag = "users",
    security(("bearer_auth" = [])),
    params(OnlineQuery),
    responses(
        (status = 200, description = "Online users, most recently seen first", body = OnlineUsersResponse),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 422, description = "Limit out of range", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
pub async fn online(
    state: web::Data<AppState>,
    _user: AuthUser,
    query: Query<OnlineQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = limit_param(query.limit, DEFAULT_ONLINE_LIMIT, MAX_ONLINE_LIMIT)?;
    let entries = state.live.online_users(limit).await?;
    let ids: Vec<_> = entries.iter().map(|e| e.user_id).collect();
    let records: HashMap<_, _> = state
        .store
        .find_users_by_ids(&ids)
        .await?
        .into_iter()
        .map(|r| (r.user_id(), r))
        .collect();
    let users: Vec<OnlineUser> = entries
        .into_iter()
        .filter_map(|entry| {
            let record = records.get(&entry.user_id)?;
            Some(OnlineUser {
                id: entry.user_id.to_string(),
                username: record.username.clone(),
                last_seen: entry.last_seen,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(OnlineUsersResponse {
        count: users.len(),
        users,
    }))
}
