//! `GET /search`: full-text search over the messages the caller may read.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::delivery::{MessageResponse, UserRef};
use crate::domain::{MessageId, RoomId};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::{Query, limit_param};
use crate::state::AppState;
use crate::store::{MAX_QUERY_CHARS, terms};

const DEFAULT_HITS: i64 = 20;
const MAX_HITS: i64 = 50;

#[derive(Debug, Deserialize, IntoParams)]
pub struct SearchQuery {
    /// Words to find, 1 to 200 characters (no control characters) and at most 10 words: a
    /// message matches when it has every word.
    #[param(
        example = "deploy friday",
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub q: String,
    /// Only hits older than this message id (the `next_before` of the previous page).
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    pub before: Option<String>,
    /// Page size, 1 to 50 (default 20).
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<i64>,
}

/// Where a hit was said.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HitConversation {
    /// For a room message: the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_name: Option<String>,
    /// For a direct message: the other user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with: Option<UserRef>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub message: MessageResponse,
    pub conversation: HitConversation,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    /// Newest first.
    pub hits: Vec<SearchHit>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
}

/// Search the messages of the rooms the caller is in now and of their direct conversations,
/// newest first. Words match whole words on a server with text indexes (MongoDB, nx-27017;
/// stemmed on MongoDB) and as parts of words where the store scans instead (SecantusDB).
/// Deleted messages are never found.
#[utoipa::path(get, path = "/search", tag = "messages",
    security(("bearer_auth" = [])),
    params(SearchQuery),
    responses(
        (status = 200, description = "A page of hits, newest first", body = SearchResults),
        (status = 400, description = "Malformed query string or cursor", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 422, description = "An empty query, one over 200 characters or 10 words or with control characters, or a limit out of range", body = ErrorBody,
            example = json!({"error": "invalid_search", "message": "the query must have 1 to 200 characters"})),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn search(
    state: web::Data<AppState>,
    user: AuthUser,
    query: Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = limit_param(query.limit, DEFAULT_HITS, MAX_HITS)?;
    // Checked before trimming, as the spec's pattern says: a tab or a newline is refused too.
    if query.q.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidSearch,
            "the query must not contain control characters",
        ));
    }
    // The length of what was sent, as the spec's `maxLength` says.
    let q = query.q.trim();
    if q.is_empty() || query.q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidSearch,
            format!("the query must have 1 to {MAX_QUERY_CHARS} characters"),
        ));
    }
    let words = terms(q).map_err(|e| ApiError::unprocessable(ErrorCode::InvalidSearch, e))?;
    let before = query
        .before
        .as_deref()
        .map(MessageId::parse)
        .transpose()
        .map_err(|_| {
            ApiError::bad_request(ErrorCode::InvalidCursor, "`before` must be a message id")
        })?
        .map(|id| id.to_string());
    let mut rooms: Vec<RoomId> = (state.store.rooms_of_user(user.user_id).await?)
        .into_iter()
        .map(|joined| joined.room)
        .collect();
    rooms.push(state.default_room.room_id());
    let mut found = state
        .store
        .search(&words, user.user_id, &rooms, before.as_deref(), limit + 1)
        .await?;
    let more = found.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let me = user.user_id.to_string();
    let mut hits = Vec::with_capacity(found.len());
    for record in &found {
        let message = MessageResponse::from(record);
        let conversation = match &message.room_id {
            Some(room) => HitConversation {
                room_id: Some(room.clone()),
                room_name: match RoomId::parse(room) {
                    Ok(id) => state.store.find_room(id).await?.map(|r| r.name),
                    Err(_) => None,
                },
                with: None,
            },
            None => HitConversation {
                room_id: None,
                room_name: None,
                with: if message.sender.id == me {
                    message.to.clone()
                } else {
                    Some(message.sender.clone())
                },
            },
        };
        hits.push(SearchHit {
            message,
            conversation,
        });
    }
    let next_before = more
        .then(|| hits.last().map(|h| h.message.id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(SearchResults { hits, next_before }))
}
