//! `GET /conversations` and `GET /conversations/{username}/messages`: the caller's direct
//! conversations and their history.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::delivery::{MessageResponse, UserRef};
use crate::domain::UserId;
use crate::error::{ApiError, ErrorBody};
use crate::http::history::{HistoryQuery, MessagePage, history_page};
use crate::http::users::find_by_name;
use crate::http::{Query, limit_param};
use crate::startup::AppState;
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
