//! `GET /conversations` and `GET /conversations/{username}/messages`: the caller's direct
//! conversations and their history.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryFutureExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{AuthUser, Signaller};
use crate::delivery::{MessageResponse, UserRef};
use crate::domain::UserId;
use crate::error::{ApiError, ErrorBody, ErrorCode, OverSignalBudget};
use crate::http::history::{HistoryQuery, MessagePage, history_page};
use crate::http::people::find_by_name;
use crate::http::reading::{
    Conversation, ReadRequest, ReadState, TypingAnswer, mark_read, read_states, typing,
};
use crate::http::{Query, limit_param};
use crate::state::AppState;
use crate::store::stats::Tally;
use crate::store::{MessageRecord, direct_conversation};

/// The conversation between the caller and another user, newest first.
#[utoipa::path(get, path = "/conversations/{username}/messages", tag = "messages",
    security(("bearer_auth" = [])),
    params(("username" = String, Path, description = "The other user"), HistoryQuery),
    responses(
        (status = 200, description = "A page of messages, newest first", body = MessagePage),
        (status = 400, description = "Malformed cursor", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "Limit out of range, or the caller themselves", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn conversation_messages(
    state: web::Data<AppState>,
    user: AuthUser,
    path: web::Path<String>,
    query: Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let conversation = with_user(&state, &user, &path).await?;
    let page = history_page(&state, &user, &conversation.key, &query).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// The conversation of the caller with another user; 404 when there is no such user, 422 for
/// the caller themselves.
async fn with_user(
    state: &AppState,
    user: &AuthUser,
    username: &str,
) -> Result<Conversation, ApiError> {
    let other = find_by_name(state, username).await?;
    if other.user_id() == user.user_id {
        return Err(ApiError::unprocessable(
            ErrorCode::CannotMessageSelf,
            "a conversation is with someone else",
        ));
    }
    Ok(Conversation::direct(direct_conversation(
        user.user_id,
        other.user_id(),
    )))
}

/// Mark a direct conversation read up to a message; the caller's other streams get a `read`
/// event.
#[utoipa::path(post, path = "/conversations/{username}/read", tag = "messages",
    security(("bearer_auth" = [])),
    params(("username" = String, Path, description = "The other user")),
    request_body = ReadRequest,
    responses(
        (status = 200, description = "The caller's read state after the move (a marker never moves back)", body = ReadState),
        (status = 400, description = "Malformed message id, or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such user, or no such message in the conversation", body = ErrorBody),
        (status = 422, description = "The caller themselves, or a body without `last_read`", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        (status = 413, description = "Body larger than MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`", body = ErrorBody),
        OverSignalBudget,
    ))]
pub async fn read_conversation(
    state: web::Data<AppState>,
    user: Signaller,
    path: web::Path<String>,
    body: web::Json<ReadRequest>,
) -> Result<HttpResponse, ApiError> {
    let conversation = with_user(&state, &user, &path).await?;
    mark_read(&state, &user, conversation, body.into_inner()).await
}

/// Say that the caller is typing to another user: both get a `typing` event (at most one a
/// second; send one every few seconds while typing).
#[utoipa::path(post, path = "/conversations/{username}/typing", tag = "messages",
    security(("bearer_auth" = [])),
    params(("username" = String, Path, description = "The other user")),
    responses(
        (status = 202, description = "Announced, or absorbed by the one-a-second limit", body = TypingAnswer),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "The caller themselves", body = ErrorBody),
        (status = 503, description = "Redis or storage unavailable", body = ErrorBody),
        OverSignalBudget,
    ))]
pub async fn conversation_typing(
    state: web::Data<AppState>,
    user: Signaller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversation = with_user(&state, &user, &path).await?;
    typing(&state, &user, &conversation).await
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
    /// The caller's read state.
    pub read_state: ReadState,
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
    let partners: Vec<(UserId, Tally)> = state
        .store
        .partners_of(&user.user_id.to_string(), limit)
        .await?
        .into_iter()
        .filter_map(|(partner, tally)| Some((UserId::parse(&partner).ok()?, tally)))
        .collect();
    let keys: Vec<Conversation> = partners
        .iter()
        .map(|(partner, _)| Conversation::direct(direct_conversation(user.user_id, *partner)))
        .collect();
    // A few reads at a time, so that a long list does not take every pooled connection.
    let latest = stream::iter(keys.iter().map(|c| state.store.history(&c.key, None, 1)))
        .buffered(PREVIEW_READS)
        .try_collect::<Vec<Vec<MessageRecord>>>()
        .map_err(ApiError::from);
    let (latest, states) = tokio::try_join!(latest, read_states(&state, &user, &keys))?;
    let conversations = partners
        .into_iter()
        .zip(latest)
        .zip(states)
        .map(|(((partner, tally), latest), read_state)| {
            let last_message = latest.first().map(MessageResponse::from);
            // The history may already hold a message the counters have not counted yet.
            let last_activity = tally
                .last
                .into_iter()
                .chain(last_message.as_ref().map(|m| m.created_at))
                .max();
            ConversationSummary {
                with: UserRef {
                    id: partner.to_string(),
                    username: tally.name,
                },
                messages: tally.n,
                last_activity,
                last_message,
                read_state,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(ConversationList { conversations }))
}
