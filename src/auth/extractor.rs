use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::time::Duration;

use actix_web::cookie::Cookie;
use actix_web::dev::Payload;
use actix_web::http::{Method, header};
use actix_web::{FromRequest, HttpRequest, web};

use crate::domain::UserId;
use crate::error::{ApiError, ErrorCode};
use crate::live::{Spend, TouchOutcome};
use crate::state::AppState;

/// Name of the cookie (and of the query parameter) that may carry the access token, for
/// clients such as a browser `EventSource` that cannot send an `Authorization` header.
pub const ACCESS_TOKEN_COOKIE: &str = "access_token";

/// The authenticated caller. Taking it as a handler argument is what makes an endpoint
/// authenticated: the token is verified, checked against the revocation list, and the
/// caller's presence is refreshed, in one Redis round trip.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: UserId,
    pub username: String,
    /// The id of the token used, the handle to revoke it.
    pub jti: String,
    /// When the token expires (seconds since the epoch).
    pub expires_at: i64,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(caller(req, |_| None))
    }
}

/// The caller of `req`, authenticated, spending one unit of the budget `spend` names (if
/// any) in the same Redis round trip: what every authenticating extractor does.
fn caller(
    req: &HttpRequest,
    spend: fn(&AppState) -> Option<Spend>,
) -> impl Future<Output = Result<AuthUser, ApiError>> + use<> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let token = request_token(req);
    let spend = state.as_ref().and_then(|state| spend(state.get_ref()));
    async move {
        let state = state
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState is not registered")))?;
        authenticate_spending(&state, &token?, spend).await
    }
}

/// One of a user's write budgets, counted in Redis so that it holds across instances.
pub trait Budget {
    /// The counter's name in Redis.
    const SCOPE: &'static str;
    /// How many requests a user may make per minute.
    fn per_minute(state: &AppState) -> u32;
}

/// Posts, edits, deletions, reactions, and creating, joining and leaving rooms
/// (`WRITE_RATE_LIMIT_PER_MINUTE`).
pub struct Writes;

/// Read markers and typing signals, which a page sends as the conversation moves
/// (`SIGNAL_RATE_LIMIT_PER_MINUTE`).
pub struct Signals;

impl Budget for Writes {
    const SCOPE: &'static str = "writes";
    fn per_minute(state: &AppState) -> u32 {
        state.write_rate_limit_per_minute
    }
}

impl Budget for Signals {
    const SCOPE: &'static str = "signals";
    fn per_minute(state: &AppState) -> u32 {
        state.signal_rate_limit_per_minute
    }
}

/// The authenticated caller of a write, counted against their budget `B` in the same Redis
/// round trip that authenticates them: taking it as a handler argument is what makes a write
/// rate-limited (429 with `Retry-After` once the minute's budget is spent).
pub struct Limited<B> {
    user: AuthUser,
    budget: PhantomData<B>,
}

/// The caller of a write that changes what others see.
pub type Writer = Limited<Writes>;
/// The caller of a read marker or a typing signal.
pub type Signaller = Limited<Signals>;

impl<B> Deref for Limited<B> {
    type Target = AuthUser;
    fn deref(&self) -> &AuthUser {
        &self.user
    }
}

impl<B: Budget + 'static> FromRequest for Limited<B> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let user = caller(req, |state| {
            Some(Spend {
                scope: B::SCOPE,
                limit: B::per_minute(state),
                window: MINUTE,
            })
        });
        Box::pin(async move {
            Ok(Self {
                user: user.await?,
                budget: PhantomData,
            })
        })
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// Verifies `token`, checks it against the revocation list and refreshes the caller's
/// presence (one Redis round trip).
pub async fn authenticate(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    authenticate_spending(state, token, None).await
}

/// [`authenticate`], spending one unit of a write budget in the same round trip.
async fn authenticate_spending(
    state: &AppState,
    token: &str,
    spend: Option<Spend>,
) -> Result<AuthUser, ApiError> {
    let invalid = || {
        ApiError::unauthorized(
            ErrorCode::InvalidToken,
            "the access token is invalid or expired",
        )
    };
    let claims = state.jwt.verify(token).ok_or_else(invalid)?;
    let user_id = UserId::parse(&claims.sub).map_err(|_| invalid())?;
    let touched = state
        .live
        .touch_spending(&claims.jti, user_id, &claims.name, spend)
        .await?;
    match touched {
        TouchOutcome::Revoked => Err(ApiError::unauthorized(
            ErrorCode::TokenRevoked,
            "the access token has been revoked; log in again",
        )),
        TouchOutcome::Limited(retry_after) => {
            let scope = spend.map_or("requests", |spend| spend.scope);
            crate::telemetry::metrics::rate_limited(scope);
            Err(ApiError::too_many_requests(
                retry_after,
                format!("over this minute's budget of {scope}; retry after `Retry-After` seconds"),
            ))
        }
        TouchOutcome::Active => Ok(AuthUser {
            user_id,
            username: claims.name,
            jti: claims.jti,
            expires_at: claims.exp,
        }),
    }
}

fn request_token(req: &HttpRequest) -> Result<String, ApiError> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default());
    let cookies = req
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|value| value.to_str().ok());
    let read_only = req.method() == Method::GET || req.method() == Method::HEAD;
    token_from(authorization, read_only, cookies, req.query_string())
}

/// The token from, in this order: `Authorization: Bearer`, then (reads only) the
/// `access_token` cookie or the `access_token` query parameter. `authorization` is the
/// header's value (empty when it is not visible ASCII), `cookies` the `Cookie` headers.
pub fn token_from<'a>(
    authorization: Option<&str>,
    read_only: bool,
    cookies: impl Iterator<Item = &'a str>,
    query: &str,
) -> Result<String, ApiError> {
    if let Some(value) = authorization {
        return match value.split_once(' ') {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
            {
                Ok(token.trim().to_owned())
            }
            _ => Err(ApiError::unauthorized(
                ErrorCode::InvalidToken,
                "the Authorization header must be `Bearer <token>`",
            )),
        };
    }
    // Cookie and query tokens only for reads: a request that changes something must carry
    // the Authorization header, which another site cannot make a browser send (no CSRF).
    if read_only {
        if let Some(token) = cookie_value(cookies, ACCESS_TOKEN_COOKIE) {
            return Ok(token);
        }
        if let Ok(query) = web::Query::<TokenQuery>::from_query(query)
            && let Some(token) = query.into_inner().access_token.filter(|t| !t.is_empty())
        {
            return Ok(token);
        }
    }
    Err(ApiError::unauthorized(
        ErrorCode::MissingToken,
        "this endpoint needs an access token: send `Authorization: Bearer <token>`",
    ))
}

/// The first non-empty value of cookie `name` in `Cookie` headers (`a=1; b=2`); cookies that
/// do not parse are skipped.
fn cookie_value<'a>(headers: impl Iterator<Item = &'a str>, name: &str) -> Option<String> {
    headers
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| Cookie::parse_encoded(pair.trim()).ok())
        .find(|cookie| cookie.name() == name && !cookie.value().is_empty())
        .map(|cookie| cookie.value().to_owned())
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_wins_and_cookies_and_queries_count_only_for_reads() {
        let cookies = || ["theme=dark; access_token=from-cookie"].into_iter();
        let token = |auth, read_only, query| {
            token_from(auth, read_only, cookies(), query).map_err(|e| e.code())
        };
        assert_eq!(token(Some("Bearer  abc "), false, ""), Ok("abc".to_owned()));
        assert_eq!(
            token(Some("Basic abc"), true, ""),
            Err(ErrorCode::InvalidToken)
        );
        assert_eq!(token(Some(""), true, ""), Err(ErrorCode::InvalidToken));
        assert_eq!(
            token(None, true, "access_token=q"),
            Ok("from-cookie".to_owned())
        );
        assert_eq!(
            token(None, false, "access_token=q"),
            Err(ErrorCode::MissingToken)
        );
        let no_cookie = token_from(
            None,
            true,
            ["a=1", "access_token="].into_iter(),
            "x=1&access_token=q%2B",
        );
        assert_eq!(no_cookie.map_err(|e| e.code()), Ok("q+".to_owned()));
        let nothing = token_from(None, true, std::iter::empty(), "access_token=");
        assert_eq!(nothing.map_err(|e| e.code()), Err(ErrorCode::MissingToken));
    }
}
