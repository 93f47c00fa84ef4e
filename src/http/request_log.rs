//! One log line per request: method, path, status, latency. The query string is left out on
//! purpose: it may carry an access token (`?access_token=`, for EventSource clients).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let result = next.call(req).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match &result {
        Ok(res) => tracing::info!(
            method = %method,
            path = %path,
            status = res.status().as_u16(),
            latency_ms = format!("{latency_ms:.2}"),
            "request"
        ),
        Err(err) => tracing::warn!(
            method = %method,
            path = %path,
            status = err.as_response_error().status_code().as_u16(),
            latency_ms = format!("{latency_ms:.2}"),
            "request"
        ),
    }
    result
}
