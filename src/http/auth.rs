use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite, time};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{ACCESS_TOKEN_COOKIE, AuthUser};
use crate::domain::{Password, Username};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::people::UserResponse;
use crate::state::AppState;
use crate::store::{InsertUserError, NewUser};

const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Username and password, for registering and for logging in.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// 3 to 32 letters, digits, `_`, `-` or `.`; unique regardless of case.
    #[schema(example = "alice", pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    pub username: String,
    /// 8 to 1024 characters.
    #[schema(
        example = "correct horse battery staple",
        min_length = 8,
        max_length = 1024
    )]
    pub password: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT to send as `Authorization: Bearer <token>`.
    #[schema(example = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI2NjVm...")]
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the token expires.
    #[schema(example = 3600)]
    pub expires_in: u64,
    pub expires_at: DateTime<Utc>,
    pub user: UserResponse,
}

/// Create an account.
#[utoipa::path(post, path = "/auth/register", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 201, description = "Account created", body = UserResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "Username taken (case-insensitively)", body = ErrorBody,
            example = json!({"error": "username_taken", "message": "the username `alice` is already taken"})),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid username or weak password", body = ErrorBody,
            example = json!({"error": "weak_password", "message": "password must be at least 8 characters long"})),
        (status = 429, description = "Too many attempts from this address", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`", body = ErrorBody),
    ))]
pub async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let Credentials { username, password } = body.into_inner();
    limit_attempts(&state, &req, "register", "").await?;
    let username = Username::parse(&username)?;
    let password = Password::parse(password)?;
    let password_hash = state
        .hasher
        .hash(password)
        .await
        .map_err(ApiError::internal)?;
    let record = state
        .store
        .insert_user(NewUser {
            username: &username,
            password_hash,
        })
        .await
        .map_err(|err| match err {
            InsertUserError::UsernameTaken => ApiError::conflict(
                ErrorCode::UsernameTaken,
                format!("the username `{username}` is already taken"),
            ),
            InsertUserError::Database(err) => err.into(),
        })?;
    tracing::info!(user = %record.user_id(), "registered");
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/users/{}", record.username)))
        .json(UserResponse::from(&record)))
}

/// Log in: returns an access token (also set as an `HttpOnly` cookie for browsers).
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Wrong username or password (the same answer for both)", body = ErrorBody,
            example = json!({"error": "invalid_credentials", "message": "wrong username or password"})),
        (status = 422, description = "Body of the wrong shape", body = ErrorBody),
        (status = 429, description = "Too many attempts for this username, or for all usernames, from this address", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
        (status = 413, description = "Body larger than MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json`", body = ErrorBody),
    ))]
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let Credentials { username, password } = body.into_inner();
    let wrong =
        || ApiError::unauthorized(ErrorCode::InvalidCredentials, "wrong username or password");
    let Ok(username) = Username::parse(&username) else {
        return Err(wrong());
    };
    limit_attempts(&state, &req, "login", &username.normalized()).await?;
    // And per address across usernames, against password spraying.
    limit_attempts(&state, &req, "login-any", "").await?;
    let record = state.store.find_user_by_username(&username).await?;
    let stored_hash = record.as_ref().map(|r| r.password_hash.clone());
    let matched = state
        .hasher
        .verify(password, stored_hash)
        .await
        .map_err(ApiError::internal)?;
    let Some(record) = record.filter(|_| matched) else {
        return Err(wrong());
    };

    let issued = state
        .jwt
        .issue(record.user_id(), &record.username)
        .map_err(ApiError::internal)?;
    state
        .live
        .touch(&issued.claims.jti, record.user_id(), &record.username)
        .await?;
    let expires_in = state.jwt.ttl().as_secs();
    let cookie = Cookie::build(ACCESS_TOKEN_COOKIE, issued.token.clone())
        .path("/")
        .http_only(true)
        .secure(state.cookie_secure)
        .same_site(SameSite::Strict)
        .max_age(time::Duration::seconds(
            i64::try_from(expires_in).unwrap_or(i64::MAX),
        ))
        .finish();
    tracing::info!(user = %record.user_id(), "logged in");
    Ok(HttpResponse::Ok()
        .cookie(cookie)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(TokenResponse {
            access_token: issued.token.clone(),
            token_type: "Bearer".to_owned(),
            expires_in,
            expires_at: issued.expires_at(),
            user: UserResponse::from(&record),
        }))
}

/// Revoke the token used for this request, at once and on every instance.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    security(("bearer_auth" = [])),
    responses(
        (status = 204, description = "Token revoked; the user is offline if it was their last session"),
        (status = 401, description = "Missing, invalid or already revoked token", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
pub async fn logout(state: web::Data<AppState>, user: AuthUser) -> Result<HttpResponse, ApiError> {
    // Kept a minute past expiry, so an instance whose clock runs late still refuses it.
    let remaining = u64::try_from(user.expires_at - Utc::now().timestamp()).unwrap_or(0);
    let went_offline = state
        .live
        .revoke(&user.jti, user.user_id, Duration::from_secs(remaining + 60))
        .await?;
    tracing::info!(user = %user.user_id, went_offline, "logged out");
    let mut expired = Cookie::build(ACCESS_TOKEN_COOKIE, "")
        .path("/")
        .http_only(true)
        .secure(state.cookie_secure)
        .same_site(SameSite::Strict)
        .finish();
    expired.make_removal();
    Ok(HttpResponse::NoContent().cookie(expired).finish())
}

/// Counts an attempt per client address (and per username for logins) in Redis.
async fn limit_attempts(
    state: &AppState,
    req: &HttpRequest,
    scope: &str,
    username: &str,
) -> Result<(), ApiError> {
    let address = client_address(req, state.trust_forwarded_for);
    let subject = format!("{address}|{username}");
    match state
        .live
        .rate_limit(
            scope,
            &subject,
            state.auth_rate_limit_per_minute,
            RATE_WINDOW,
        )
        .await?
    {
        Some(retry_after) => Err(ApiError::too_many_requests(
            retry_after,
            "too many attempts; retry later",
        )),
        None => Ok(()),
    }
}

/// The peer address, or behind a trusted proxy the last `X-Forwarded-For` entry: the one the
/// proxy itself appended (earlier entries come from the client and prove nothing).
fn client_address(req: &HttpRequest, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for
        && let Some(last) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    {
        return last.to_owned();
    }
    req.peer_addr()
        .map(|addr| addr.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}
