//! The HTTP edge: one module per resource, named like its path, plus the OpenAPI document,
//! request logging, and the glue that turns every framework-level failure into the API's
//! JSON error shape.

pub mod auth;
pub mod conversations;
pub mod events;
pub mod front_door;
pub mod health;
pub mod history;
pub mod messages;
pub mod openapi;
pub mod page;
pub mod people;
pub mod reading;
pub mod request_log;
pub mod rooms;
pub mod search;
pub mod stats;
pub mod users;

use actix_web::body::MessageBody;
use actix_web::dev::Payload;
use actix_web::dev::ServiceResponse;
use actix_web::error::{JsonPayloadError, PathError};
use actix_web::http::header;
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// A route for GET and HEAD (actix-web sends the head of the GET response, without its body).
pub fn get_or_head() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

/// Declares every API route once: [`routes`] registers them, and [`ROUTES`] lists them for
/// the test that holds them and the OpenAPI document ([`openapi::ApiDoc`]) to each other.
macro_rules! api_routes {
    ($( $path:literal { $( $method:ident => $handler:path ),+ $(,)? } )*) => {
        /// Registers every API route, then the page.
        pub fn routes(cfg: &mut web::ServiceConfig) {
            $( cfg.service(web::resource($path)$(.route(route(stringify!($method)).to($handler)))+); )*
            cfg.configure(page::routes);
        }

        /// `(method, path)` of every API route (`get_or_head`: GET, and HEAD with it).
        pub const ROUTES: &[(&str, &str)] = &[ $( $( (stringify!($method), $path) ),+ ),* ];
    };
}

fn route(method: &str) -> actix_web::Route {
    match method {
        "get" => web::get(),
        "post" => web::post(),
        "put" => web::put(),
        "patch" => web::patch(),
        "delete" => web::delete(),
        // Probes answer HEAD too (monitors and `curl -I` send it).
        _ => get_or_head(),
    }
}

api_routes! {
    "/healthz" { get_or_head => health::healthz }
    "/readyz" { get_or_head => health::readyz }
    "/auth/register" { post => auth::register }
    "/auth/login" { post => auth::login }
    "/auth/logout" { post => auth::logout }
    "/users/me" { get => users::me }
    "/users/online" { get => users::online }
    "/users/{username}" { get => users::by_username }
    "/rooms" { get => rooms::list_rooms, post => rooms::create_room }
    "/rooms/{room_id}/join" { post => rooms::join_room }
    "/rooms/{room_id}/leave" { post => rooms::leave_room }
    "/rooms/{room_id}/messages" { get => rooms::room_messages }
    "/rooms/{room_id}/read" { post => rooms::read_room }
    "/rooms/{room_id}/typing" { post => rooms::room_typing }
    "/messages" { post => messages::create_message }
    "/messages/{message_id}" { patch => messages::edit_message, delete => messages::delete_message }
    "/messages/{message_id}/reactions/{emoji}" {
        put => messages::add_reaction,
        delete => messages::remove_reaction,
    }
    "/search" { get => search::search }
    "/conversations" { get => conversations::list_conversations }
    "/conversations/{username}/messages" { get => conversations::conversation_messages }
    "/conversations/{username}/read" { post => conversations::read_conversation }
    "/conversations/{username}/typing" { post => conversations::conversation_typing }
    "/events" { get => events::events }
    "/stats/most-active" { get => stats::most_active }
    "/stats/most-solicited" { get => stats::most_solicited }
    "/stats/rooms" { get => stats::rooms }
    "/stats/activity" { get => stats::activity }
    "/stats/summary" { get => stats::summary }
    "/stats/users/{username}" { get => stats::user_stats }
}

/// JSON bodies: size limit, and a clear 4xx for each way a body can be wrong.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _req| json_error(&err).into())
}

fn json_error(err: &JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body must be at most {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the request body must be JSON with `Content-Type: application/json`",
        ),
        JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::unprocessable(
            ErrorCode::InvalidBody,
            format!("the request body is not valid: {e}"),
        ),
        JsonPayloadError::Deserialize(e) => ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("the request body is not valid JSON: {e}"),
        ),
        _ => ApiError::bad_request(ErrorCode::InvalidBody, "the request body could not be read"),
    }
}

/// The current time to the millisecond, like every time the API shows (the store keeps
/// milliseconds).
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// The `limit` of a list request: `default` when absent, otherwise 1 to `max`, or 422
/// `invalid_limit`.
pub(crate) fn limit_param<T>(raw: Option<T>, default: T, max: T) -> Result<T, ApiError>
where
    T: Copy + PartialOrd + From<u8> + std::fmt::Display,
{
    let limit = raw.unwrap_or(default);
    if limit < T::from(1) || limit > max {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidLimit,
            format!("limit must be between 1 and {max}"),
        ));
    }
    Ok(limit)
}

/// A query string deserialized into `T`, as `web::Query` does, except that a query string that
/// does not parse is a 400 `invalid_query` naming the parameter at fault.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Query<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(parse_query(req.query_string()).map(Query))
    }
}

/// Deserializes a raw query string; see [`Query`].
pub fn parse_query<T: DeserializeOwned>(raw: &str) -> Result<T, ApiError> {
    let pairs = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(pairs).map_err(|err| {
        let parameter = err.path().to_string();
        let message = if parameter == "." {
            // Not about one parameter's value: a missing one, or one given twice.
            format!("invalid query string: {}", err.into_inner())
        } else {
            format!(
                "invalid query parameter `{parameter}`: {}",
                err.into_inner()
            )
        };
        ApiError::bad_request(ErrorCode::InvalidQuery, message)
    })
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err: PathError, _req| {
        ApiError::bad_request(ErrorCode::InvalidPath, format!("invalid path: {err}")).into()
    })
}

/// The default service: a JSON 404 for any path the API does not have.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::not_found(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}

/// Gives error responses produced outside our handlers (a 405 from the router, a 404 from
/// Swagger UI's file server) the same JSON shape as ours.
pub fn jsonify_error<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/json") || v.starts_with("application/problem+json")
        });
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let code = match status.as_u16() {
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        s if s >= 500 => ErrorCode::InternalError,
        _ => ErrorCode::BadRequest,
    };
    let message = status.canonical_reason().unwrap_or("error").to_lowercase();
    let mut body = ApiError::new(status, code, message).error_response();
    // A 405 says which methods the path has.
    if let Some(allow) = res.headers().get(header::ALLOW) {
        body.headers_mut().insert(header::ALLOW, allow.clone());
    }
    let (req, _) = res.into_parts();
    let res = ServiceResponse::new(req, body.map_into_boxed_body()).map_into_right_body::<B>();
    Ok(ErrorHandlerResponse::Response(res))
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde::Deserialize;

    use super::parse_query;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Window {
        bucket: String,
        from: Option<DateTime<Utc>>,
        limit: Option<u32>,
    }

    fn error_of(raw: &str) -> String {
        parse_query::<Window>(raw)
            .map(|window| panic!("{raw} parsed: {window:?}"))
            .unwrap_or_else(|err| err.to_string())
    }

    #[test]
    fn a_query_that_does_not_parse_names_the_parameter_at_fault() {
        assert!(parse_query::<Window>("bucket=day&limit=5&from=2026-11-24T00:00:00Z").is_ok());
        assert_eq!(
            error_of("bucket=day&limit=-1"),
            "invalid_query: invalid query parameter `limit`: invalid digit found in string"
        );
        assert_eq!(
            error_of("bucket=day&from=yesterday"),
            "invalid_query: invalid query parameter `from`: input contains invalid characters"
        );
        assert_eq!(
            error_of("limit=5"),
            "invalid_query: invalid query string: missing field `bucket`"
        );
    }
}
