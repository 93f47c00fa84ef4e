use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::startup::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct HealthResponse {
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ReadinessChecks {
    /// `ok` or `unreachable`.
    #[schema(example = "ok")]
    pub mongodb: &'static str,
    /// `ok` or `unreachable`.
    #[schema(example = "ok")]
    pub redis: &'static str,
}

/// The readiness report; when not ready it also carries the usual error fields.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "checks": {"mongodb": "ok", "redis": "ok"}}))]
pub struct ReadinessResponse {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub checks: ReadinessChecks,
    /// `not_ready` when a dependency is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// Which dependency is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is up", body = HealthResponse)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthResponse { status: "ok" })
}

/// MongoDB and Redis are both reachable.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = ReadinessResponse),
        (status = 503, description = "A dependency is unreachable", body = ReadinessResponse,
            example = json!({"status": "not_ready", "error": "not_ready", "message": "unreachable: redis",
                "checks": {"mongodb": "ok", "redis": "unreachable"}})),
    ))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (mongodb, redis) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.live.ping()),
    );
    let mongodb_ok = matches!(mongodb, Ok(Ok(())));
    let redis_ok = matches!(redis, Ok(Ok(())));
    let label = |ok: bool| if ok { "ok" } else { "unreachable" };
    let checks = ReadinessChecks {
        mongodb: label(mongodb_ok),
        redis: label(redis_ok),
    };
    if mongodb_ok && redis_ok {
        return HttpResponse::Ok().json(ReadinessResponse {
            status: "ready",
            checks,
            error: None,
            message: None,
        });
    }
    let down: Vec<&str> = [("mongodb", mongodb_ok), ("redis", redis_ok)]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect();
    tracing::warn!(down = ?down, "not ready");
    HttpResponse::ServiceUnavailable().json(ReadinessResponse {
        status: "not_ready",
        checks,
        error: Some("not_ready"),
        message: Some(format!("unreachable: {}", down.join(", "))),
    })
}
