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
    match &result {
        Ok(res) => logged(method.as_str(), &path, res.status().as_u16(), started),
        Err(err) => {
            let status = err.as_response_error().status_code().as_u16();
            tracing::warn!(method = %method, path = %path, status, latency_ms = latency(started), "request");
        }
    }
    result
}

/// The line of one answered request; the event stream's lean path logs its requests with it.
pub fn logged(method: &str, path: &str, status: u16, started: Instant) {
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
