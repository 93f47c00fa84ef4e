//! Users as every handler shows and finds them: the public profile, and the lookup of a user
//! a path names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::Username;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store::UserRecord;

/// A user's public profile.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserResponse {
    #[schema(example = "665f1c2e9b1e8a0012345678")]
    pub id: String,
    #[schema(example = "alice")]
    pub username: String,
    pub created_at: DateTime<Utc>,
}

impl From<&UserRecord> for UserResponse {
    fn from(record: &UserRecord) -> Self {
        Self {
            id: record.user_id().to_string(),
            username: record.username.clone(),
            created_at: record.created_at(),
        }
    }
}

/// The user named `raw` (any case), or 404 `user_not_found`: a name that breaks the rules
/// cannot belong to anyone, so it is a 404 too. Used by every path that names a user.
pub async fn find_by_name(state: &AppState, raw: &str) -> Result<UserRecord, ApiError> {
    let not_found =
        || ApiError::not_found(ErrorCode::UserNotFound, format!("no user named `{raw}`"));
    let username = Username::parse(raw).map_err(|_| not_found())?;
    state
        .store
        .find_user_by_username(&username)
        .await?
        .ok_or_else(not_found)
}
