//! The web chat page, served by the binary itself: plain HTML, CSS and JavaScript compiled in
//! with `include_str!`, so there is no build step and no CDN.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

/// `(path, content type, body)` of every file of the page.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../static/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/app.js"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_str!("../../static/app.css"),
    ),
];

pub fn routes(cfg: &mut web::ServiceConfig) {
    for (path, content_type, body) in FILES {
        cfg.service(web::resource(*path).route(super::get_or_head().to(move || async move {
            HttpResponse::Ok()
                .insert_header((header::CONTENT_TYPE, *content_type))
                .insert_header((header::CACHE_CONTROL, "no-cache"))
                .insert_header(("X-Content-Type-Options", "nosniff"))
                .insert_header((
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
                ))
                .body(*body)
        })));
    }
}
