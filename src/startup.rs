//! Wiring: builds the shared state, binds the listener and runs the HTTP server.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{JwtKeys, PasswordHasher};
use crate::config::Settings;
use crate::http::{self, openapi::ApiDoc};
use crate::live::Live;
use crate::store::Store;

/// How long start-up waits for MongoDB to accept the index creation.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// Everything a handler may need, shared by all workers of one instance. It holds only
/// handles to MongoDB and Redis: no state another instance would need.
pub struct AppState {
    pub store: Store,
    pub live: Live,
    pub jwt: JwtKeys,
    pub hasher: PasswordHasher,
    pub cookie_secure: bool,
    pub trust_forwarded_for: bool,
    pub auth_rate_limit_per_minute: u32,
}

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Connects to MongoDB (creating indexes) and Redis, binds `LISTEN_ADDR` and prepares
    /// the server. Nothing is served until [`Application::run_until_stopped`].
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let store = Store::connect(settings).await?;
        store.ensure_indexes_within(STARTUP_DEADLINE).await?;
        let live = Live::connect(settings)?;
        if let Err(err) = live.ping().await {
            tracing::warn!(error = %err, "Redis is unreachable at start-up; authenticated requests will get 503 until it is back");
        }
        let state = web::Data::new(AppState {
            store,
            live,
            jwt: JwtKeys::new(&settings.jwt_secret, settings.jwt_ttl),
            hasher: PasswordHasher::new()?,
            cookie_secure: settings.cookie_secure,
            trust_forwarded_for: settings.trust_forwarded_for,
            auth_rate_limit_per_minute: settings.auth_rate_limit_per_minute,
        });

        let listener = TcpListener::bind(&settings.listen_addr)
            .with_context(|| format!("cannot listen on LISTEN_ADDR={}", settings.listen_addr))?;
        let port = listener.local_addr()?.port();
        let max_body = settings.max_body_bytes;
        let openapi = ApiDoc::openapi();

        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(ErrorHandlers::new().default_handler(http::jsonify_error))
                .wrap(from_fn(http::request_log::log_request))
                .app_data(state.clone())
                .app_data(http::json_config(max_body))
                .app_data(http::query_config())
                .app_data(http::path_config())
                .configure(http::routes)
                .service(web::resource("/docs").route(web::get().to(|| async {
                    HttpResponse::PermanentRedirect()
                        .insert_header(("Location", "/docs/"))
                        .finish()
                })))
                .service(
                    SwaggerUi::new("/docs/{_:.*}").url("/api-docs/openapi.json", openapi.clone()),
                )
                .default_service(web::to(http::not_found))
        })
        .listen(listener)?
        .shutdown_timeout(settings.shutdown_timeout.as_secs());
        if settings.http_workers > 0 {
            server = server.workers(settings.http_workers);
        }
        tracing::info!(addr = %settings.listen_addr, port, "listening");
        Ok(Self {
            port,
            server: server.run(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT/SIGTERM (or the server handle stops it), then drains in-flight
    /// requests for up to `SHUTDOWN_TIMEOUT_SECS`.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }

    /// A handle that can stop the server (used by tests that take an instance down).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}
