//! What rooms and direct conversations share beyond their history: the caller's read state
//! (a marker per conversation, never moving back; the unread messages and mentions after it)
//! and typing signals. The routes are in `rooms` and `conversations`; see
//! `docs/data-model.md` for how counts stay exact and cheap.

use actix_web::HttpResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::delivery::{Change, TypingEvent, audience_of};
use crate::domain::MessageId;
use crate::error::{ApiError, ErrorCode};
use crate::live::{EventKind, NewEvent};
use crate::state::AppState;
use crate::store::seq_before;

/// How long a typing indicator shows after the last signal, unless another comes: clients
/// send one every few seconds while the user types.
pub const TYPING_SHOWS_MS: u64 = 6000;

/// A conversation the caller reads: a room they are in, or a direct conversation.
pub(crate) struct Conversation {
    /// `r:<room>` or `d:<user>:<user>`.
    pub key: String,
    /// Where the unread count starts while the caller has no marker: when they joined the
    /// room (or registered, for `general`), or the start of a direct conversation.
    pub start: String,
    pub room_id: Option<String>,
}

impl Conversation {
    pub fn room(key: String, room_id: String, joined_ms: i64) -> Self {
        Self {
            key,
            start: seq_before(joined_ms),
            room_id: Some(room_id),
        }
    }

    pub fn direct(key: String) -> Self {
        Self {
            key,
            start: String::new(),
            room_id: None,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// The newest message the caller has seen (a message of this conversation). A marker
    /// never moves back: an older message changes nothing.
    #[schema(example = "665f1d009b1e8a00123456ff", pattern = "^[0-9a-fA-F]{24}$")]
    pub last_read: String,
}

/// The caller's read state in one conversation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"last_read": "665f1d009b1e8a00123456ff", "unread": 3, "unread_mentions": 1}))]
pub struct ReadState {
    /// The newest message read; absent before the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_read: Option<String>,
    /// Messages from others after it, up to 100 (show "99+" at 100).
    pub unread: i64,
    /// Those of them that mention the caller, up to 100.
    pub unread_mentions: i64,
}

/// The answer to a typing signal.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TypingAnswer {
    /// Whether this signal was announced; at most one a second per user and conversation is,
    /// the others are absorbed (nobody needs them: the indicator is showing).
    pub announced: bool,
    /// How long receivers show the indicator after an announced signal.
    #[schema(example = 6000)]
    pub expires_in_ms: u64,
}

/// The caller's read state in each of `conversations`, in order: one read of the markers,
/// then the capped counts after them. Unread messages are counted from the messages
/// themselves; mentions from what finishing their batches wrote, so that a mention posted
/// through another instance counts within a quarter of a second (through this one, at once,
/// once the caller has passed the read barrier of statistics, `before_reading_counts`: each
/// request does, once, before its first count).
pub(crate) async fn read_states(
    state: &AppState,
    user: &AuthUser,
    conversations: &[Conversation],
) -> Result<Vec<ReadState>, ApiError> {
    let keys: Vec<String> = conversations.iter().map(|c| c.key.clone()).collect();
    let markers = state.store.read_markers(user.user_id, &keys).await?;
    let last_read: Vec<Option<String>> = keys.iter().map(|key| markers.get(key).cloned()).collect();
    let after: Vec<(String, String)> = conversations
        .iter()
        .zip(&last_read)
        .map(|(c, read)| {
            (
                c.key.clone(),
                read.clone().unwrap_or_else(|| c.start.clone()),
            )
        })
        .collect();
    let counts = state.store.unread(user.user_id, &after).await?;
    Ok(last_read
        .into_iter()
        .zip(counts)
        .map(|(last_read, (unread, unread_mentions))| ReadState {
            last_read,
            unread,
            unread_mentions,
        })
        .collect())
}

/// Moves the caller's marker in `conversation` forward to a message of it, announcing the move
/// to the caller's other streams; answers the read state after it.
pub(crate) async fn mark_read(
    state: &AppState,
    user: &AuthUser,
    conversation: Conversation,
    request: ReadRequest,
) -> Result<HttpResponse, ApiError> {
    let id = MessageId::parse(&request.last_read).map_err(|_| {
        ApiError::bad_request(
            ErrorCode::InvalidMessageId,
            "`last_read` must be a message id",
        )
    })?;
    let message = state
        .store
        .find_message(id)
        .await?
        .filter(|m| m.conversation == conversation.key)
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::MessageNotFound,
                "no such message in this conversation",
            )
        })?;
    let moved = state
        .store
        .mark_read(user.user_id, &conversation.key, &message.seq)
        .await?;
    if let Some(change) = moved {
        // Stored: if Redis refuses it, it is announced later (see `Delivery::announce`).
        state.delivery.announce(Change::Read(change)).await;
    }
    state.delivery.before_reading_counts().await;
    let mut states = read_states(state, user, std::slice::from_ref(&conversation)).await?;
    let read = states.pop().unwrap_or(ReadState {
        last_read: Some(message.seq),
        unread: 0,
        unread_mentions: 0,
    });
    Ok(HttpResponse::Ok().json(read))
}

/// Announces that the caller is typing in `conversation` (live only, never stored).
pub(crate) async fn typing(
    state: &AppState,
    user: &AuthUser,
    conversation: &Conversation,
) -> Result<HttpResponse, ApiError> {
    let event = TypingEvent {
        room_id: conversation.room_id.clone(),
        user_id: user.user_id.to_string(),
        username: user.username.clone(),
        expires_in_ms: TYPING_SHOWS_MS,
    };
    let event = NewEvent::json(EventKind::Typing, audience_of(&conversation.key), &event);
    let subject = format!("{}|{}", user.user_id, conversation.key);
    let announced = state.live.typing(&subject, &event).await?;
    Ok(HttpResponse::Accepted().json(TypingAnswer {
        announced,
        expires_in_ms: TYPING_SHOWS_MS,
    }))
}
