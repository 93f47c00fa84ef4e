//! One log line and one metric sample per request: method, path (in the log) or route template
//! (in the metrics), status, latency. The query string is left out on purpose: it may carry an
//! access token (`?access_token=`, for EventSource clients).
//!
//! Every request gets an id (`tracing-actix-web`'s `TracingLogger`, with [`RequestSpan`]):
//! each log line written while it is served carries it (`request{id=…}`), and the response
//! says it in `x-request-id`, so a user's report can be matched to the log.

use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

use crate::telemetry::metrics;

/// The root span of a request: its id, and nothing else (the request's line says the rest).
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(req: &ServiceRequest) -> Span {
        match req.extensions().get::<RequestId>() {
            Some(id) => request_span(&id.to_string()),
            None => Span::none(),
        }
    }

    fn on_request_end<B: MessageBody>(
        _span: Span,
        _outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
    }
}

/// The span of one request with id `id`; the event stream's front door opens its own. At the
/// error level, so that it is enabled whatever `RUST_LOG` lets through: a warning logged at
/// `RUST_LOG=warn` still carries its request's id.
pub fn request_span(id: &str) -> Span {
    tracing::error_span!("request", id)
}

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
    let id = req.extensions().get::<RequestId>().copied();
    let mut result = next.call(req).await;
    if let (Ok(res), Some(id)) = (&mut result, id)
        && let Ok(value) = HeaderValue::from_str(&id.to_string())
    {
        res.headers_mut().insert(REQUEST_ID, value);
    }
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
