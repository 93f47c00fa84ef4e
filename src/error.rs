//! The one error type of the HTTP API. Every failure becomes `{"error": code, "message": text}`
//! with the right status; causes of server-side failures go to the log, never into the body.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::DomainError;
pub use crate::domain::ErrorCode;

/// The JSON body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error": "invalid_token", "message": "the access token is invalid or expired"}))]
pub struct ErrorBody {
    /// Stable snake_case code for programs to match on.
    pub error: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// The answer of a write over the caller's budget (`WRITE_RATE_LIMIT_PER_MINUTE`), documented
/// once for every handler that takes a `Writer`.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "Over the caller's budget of writes (WRITE_RATE_LIMIT_PER_MINUTE); retry after `Retry-After` seconds",
    headers(("Retry-After" = u64, description = "Seconds until the budget renews"))
)]
pub struct OverWriteBudget(pub ErrorBody);

/// The answer of a read marker or typing signal over the caller's budget
/// (`SIGNAL_RATE_LIMIT_PER_MINUTE`), for every handler that takes a `Signaller`.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "Over the caller's budget of read markers and typing signals (SIGNAL_RATE_LIMIT_PER_MINUTE); retry after `Retry-After` seconds",
    headers(("Retry-After" = u64, description = "Seconds until the budget renews"))
)]
pub struct OverSignalBudget(pub ErrorBody);

pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after_secs: Option<u64>,
    /// What really went wrong, for the log only.
    cause: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            cause: None,
        }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unprocessable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn too_many_requests(retry_after_secs: u64, message: impl Into<String>) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                message,
            )
        }
    }

    /// A dependency (MongoDB or Redis) cannot be reached: 503, the client may retry.
    pub fn unavailable(code: ErrorCode, cause: impl Into<anyhow::Error>) -> Self {
        Self {
            retry_after_secs: Some(1),
            cause: Some(cause.into()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                "the service is temporarily unavailable; retry shortly",
            )
        }
    }

    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self {
            cause: Some(cause.into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::InternalError,
                "an unexpected error occurred",
            )
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.status.as_u16())
            .field("code", &self.code)
            .field("cause", &self.cause)
            .finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        // A dependency away (503) is an outcome the service expects and answers; only what
        // nobody expected (500) is an error.
        match &self.cause {
            Some(cause) if self.status == StatusCode::SERVICE_UNAVAILABLE => tracing::warn!(
                code = self.code.as_str(),
                error = format!("{cause:#}"),
                "request answered 503"
            ),
            Some(cause) if self.status.is_server_error() => tracing::error!(
                code = self.code.as_str(),
                error = format!("{cause:#}"),
                "request failed"
            ),
            _ => {}
        }
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        response.json(ErrorBody {
            error: self.code,
            message: self.message.clone(),
        })
    }
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        Self::unprocessable(err.code, err.message)
    }
}

impl From<mongodb::error::Error> for ApiError {
    fn from(err: mongodb::error::Error) -> Self {
        if crate::store::is_transient(&err) {
            Self::unavailable(ErrorCode::DatabaseUnavailable, err)
        } else {
            Self::internal(err)
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(err: redis::RedisError) -> Self {
        use redis::RetryMethod;
        // Unreachable, or answering LOADING / MASTERDOWN / TRYAGAIN while it recovers.
        if err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_unrecoverable_error()
            || matches!(
                err.retry_method(),
                RetryMethod::WaitAndRetry
                    | RetryMethod::RefreshSlotsAndRetry
                    | RetryMethod::Reconnect
            )
        {
            Self::unavailable(ErrorCode::CacheUnavailable, err)
        } else {
            Self::internal(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn internal_errors_do_not_leak_their_cause() {
        let err = ApiError::internal(anyhow::anyhow!("secret connection string mongodb://u:p@h"));
        let response = err.error_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = to_bytes(response.into_body()).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains("mongodb://"), "{body}");
        assert!(body.contains("internal_error"), "{body}");
    }
}
