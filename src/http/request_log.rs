//! One log line and one metric sample per request: method, path (in the log) or route template
//! (in the metrics), status, latency. The query string is left out on purpose: it may carry an
//! access token (`?access_token=`, for EventSource clients).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use crate::telemetry::metrics;

pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    // Unmatched paths are one series, not one per path a scanner tries.
    let route = if metrics::enabled() {
        req.match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned())
    } else {
        String::new()
    };
    let result = next.call(req).await;
    match &result {
        Ok(res) => logged(
            method.as_str(),
            &path,
            &route,
            res.status().as_u16(),
            started,
        ),
        Err(err) => {
            let status = err.as_response_error().status_code().as_u16();
            metrics::http_request(method.as_str(), &route, status, started.elapsed());
            tracing::warn!(method = %method, path = %path, status, latency_ms = latency(started), "request");
        }
    }
    result
}

/// The line of one answered request; the event stream's lean path logs its requests with it.
pub fn logged(method: &str, path: &str, route: &str, status: u16, started: Instant) {
    metrics::http_request(method, route, status, started.elapsed());
    tracing::info!(
        method,
        path,
        status,
        latency_ms = latency(started),
        "request"
    );
}

fn latency(started: Instant) -> String {
    format!("{:.2}", started.elapsed().as_secs_f64() * 1000.0)
}
