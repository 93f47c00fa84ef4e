//! A page of history, as `GET /rooms/{room_id}/messages` and
//! `GET /conversations/{username}/messages` give it.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::delivery::{MessageResponse, ReactionCount};
use crate::domain::MessageId;
use crate::error::{ApiError, ErrorCode};
use crate::http::limit_param;
use crate::state::AppState;
use crate::store::Reactions;

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

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
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    pub before: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// One page of a conversation, fetching one extra message to know whether there is more, with
/// the reactions to its messages (one more read).
pub(crate) async fn history_page(
    state: &AppState,
    user: &AuthUser,
    conversation: &str,
    query: &HistoryQuery,
) -> Result<MessagePage, ApiError> {
    let limit = limit_param(query.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let before = query
        .before
        .as_deref()
        .map(MessageId::parse)
        .transpose()
        .map_err(|_| {
            ApiError::bad_request(ErrorCode::InvalidCursor, "`before` must be a message id")
        })?;
    let mut records = state.store.history(conversation, before, limit + 1).await?;
    let more = records.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    records.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let reactions = match (records.last(), records.first()) {
        (Some(oldest), Some(newest)) => {
            (state.store)
                .reactions_between(conversation, &oldest.seq, &newest.seq)
                .await?
        }
        _ => Reactions::new(),
    };
    let me = user.user_id.to_string();
    let messages: Vec<MessageResponse> = records
        .iter()
        .map(|record| {
            let mut message = MessageResponse::from(record);
            if let Some(by_emoji) = reactions.get(&record.seq) {
                message.reactions = ReactionCount::of(by_emoji, &me);
            }
            message
        })
        .collect();
    let next_before = more
        .then(|| messages.last().map(|m| m.id.clone()))
        .flatten();
    Ok(MessagePage {
        messages,
        next_before,
    })
}
