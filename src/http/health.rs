use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct HealthResponse {
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ReadinessChecks {
    /// `ok`, `no_primary` (reachable, but nothing can be written: a failover is under way) or
    /// `unreachable`.
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

/// MongoDB has a writable primary and Redis answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = ReadinessResponse),
        (status = 503, description = "MongoDB has no writable primary, or a dependency is unreachable", body = ReadinessResponse,
            example = json!({"status": "not_ready", "error": "not_ready", "message": "not ready: mongodb (no_primary)",
                "checks": {"mongodb": "no_primary", "redis": "ok"}})),
    ))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (mongodb, redis) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.store.writable_primary()),
        tokio::time::timeout(CHECK_TIMEOUT, state.live.ping()),
    );
    let checks = ReadinessChecks {
        mongodb: match mongodb {
            Ok(Ok(true)) => "ok",
            Ok(Ok(false)) => "no_primary",
            _ => "unreachable",
        },
        redis: if matches!(redis, Ok(Ok(()))) {
            "ok"
        } else {
            "unreachable"
        },
    };
    let down: Vec<String> = [("mongodb", checks.mongodb), ("redis", checks.redis)]
        .into_iter()
        .filter(|(_, check)| *check != "ok")
        .map(|(name, check)| format!("{name} ({check})"))
        .collect();
    if down.is_empty() {
        return HttpResponse::Ok().json(ReadinessResponse {
            status: "ready",
            checks,
            error: None,
            message: None,
        });
    }
    tracing::warn!(down = ?down, "not ready");
    HttpResponse::ServiceUnavailable().json(ReadinessResponse {
        status: "not_ready",
        checks,
        error: Some("not_ready"),
        message: Some(format!("not ready: {}", down.join(", "))),
    })
}
