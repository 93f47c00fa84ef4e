use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::{Method, header};
use actix_web::{FromRequest, HttpRequest, web};

use crate::domain::UserId;
use crate::error::ApiError;
use crate::live::TouchOutcome;
use crate::startup::AppState;

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
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer_token(req);
        Box::pin(async move {
            let state = state
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState is not registered")))?;
            let token = token?;
            let claims = state.jwt.verify(&token).ok_or_else(|| {
                ApiError::unauthorized("invalid_token", "the access token is invalid or expired")
            })?;
            let user_id = UserId::parse(&claims.sub).map_err(|_| {
                ApiError::unauthorized("invalid_token", "the access token is invalid or expired")
            })?;
            match state.live.touch(&claims.jti, user_id, &claims.name).await? {
                TouchOutcome::Revoked => Err(ApiError::unauthorized(
                    "token_revoked",
                    "the access token has been revoked; log in again",
                )),
                TouchOutcome::Active => Ok(AuthUser {
                    user_id,
                    username: claims.name,
                    jti: claims.jti,
                    expires_at: claims.exp,
                }),
            }
        })
    }
}

/// The token from, in this order: `Authorization: Bearer`, then (GET only) the
/// `access_token` cookie or the `access_token` query parameter.
fn bearer_token(req: &HttpRequest) -> Result<String, ApiError> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default();
        return match value.split_once(' ') {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
            {
                Ok(token.trim().to_owned())
            }
            _ => Err(ApiError::unauthorized(
                "invalid_token",
                "the Authorization header must be `Bearer <token>`",
            )),
        };
    }
    // Cookie and query tokens only for reads: a request that changes something must carry
    // the Authorization header, which another site cannot make a browser send (no CSRF).
    if req.method() == Method::GET || req.method() == Method::HEAD {
        if let Some(cookie) = req.cookie(ACCESS_TOKEN_COOKIE)
            && !cookie.value().is_empty()
        {
            return Ok(cookie.value().to_owned());
        }
        if let Ok(query) = web::Query::<TokenQuery>::from_query(req.query_string())
            && let Some(token) = query.into_inner().access_token.filter(|t| !t.is_empty())
        {
            return Ok(token);
        }
    }
    Err(ApiError::unauthorized(
        "missing_token",
        "this endpoint needs an access token: send `Authorization: Bearer <token>`",
    ))
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}
