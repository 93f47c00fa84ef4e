//! Wiring: builds the shared state, binds the listener and runs the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::{App, HttpResponse, web};
use anyhow::Context;
use tokio::sync::watch;
use tracing_actix_web::TracingLogger;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{JwtKeys, PasswordHasher};
use crate::config::Settings;
use crate::delivery::Delivery;
use crate::http::front_door::{self, ServeOptions};
use crate::http::{self, openapi::ApiDoc};
use crate::live::{Hub, Live};
use crate::state::{AppState, SseSettings};
use crate::store::Store;

/// How long start-up waits for MongoDB to accept the index creation.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

pub struct Application {
    port: u16,
    server: Server,
    /// `GET /metrics` on `METRICS_ADDR`, and its port.
    metrics: Option<(Server, u16)>,
    shutdown: Shutdown,
    /// Kept to record, once the server has stopped, the batches this instance appended.
    state: web::Data<AppState>,
    shutdown_timeout: Duration,
}

/// Stops an instance the way SIGTERM does: open event streams end, in-flight requests
/// finish, then the server exits.
#[derive(Clone)]
pub struct Shutdown {
    signal: Arc<watch::Sender<bool>>,
    server: ServerHandle,
}

impl Shutdown {
    pub async fn trigger(&self) {
        let _ = self.signal.send(true);
        self.server.stop(true).await;
    }
}

impl Application {
    /// Connects to MongoDB (creating indexes and the default room) and Redis, starts the
    /// event log tailer, binds `LISTEN_ADDR` and prepares the server. Nothing is served until
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let store = Store::connect(settings).await?;
        store.ensure_indexes_within(STARTUP_DEADLINE).await?;
        let default_room = store
            .ensure_default_room()
            .await
            .context("cannot create the default room")?;
        let live = Live::connect(settings)?;
        if let Err(err) = live.ping().await {
            tracing::warn!(error = %err, "Redis is unreachable at start-up; authenticated requests will get 503 until it is back");
        }
        let (signal, shutdown) = watch::channel(false);
        let hub = Hub::start(live.clone(), settings.sse_buffer_events, shutdown.clone());
        live.spawn_presence_sweeper(shutdown.clone());
        let delivery = Delivery::start(store.clone(), live.clone(), shutdown.clone());
        let state = web::Data::new(AppState {
            store,
            live,
            hub,
            delivery,
            jwt: JwtKeys::new(&settings.jwt_secret, settings.jwt_ttl),
            hasher: PasswordHasher::new()?,
            default_room,
            sse: SseSettings {
                heartbeat: settings.sse_heartbeat,
                retry_ms: settings.sse_retry_ms,
            },
            shutdown,
            cookie_secure: settings.cookie_secure,
            trust_forwarded_for: settings.trust_forwarded_for,
            auth_rate_limit_per_minute: settings.auth_rate_limit_per_minute,
            write_rate_limit_per_minute: settings.write_rate_limit_per_minute,
            signal_rate_limit_per_minute: settings.signal_rate_limit_per_minute,
        });

        let listener = TcpListener::bind(&settings.listen_addr)
            .with_context(|| format!("cannot listen on LISTEN_ADDR={}", settings.listen_addr))?;
        let port = listener.local_addr()?.port();
        let max_body = settings.max_body_bytes;
        let openapi = ApiDoc::openapi();
        let app_state = state.clone();
        let app = move || {
            App::new()
                .wrap(ErrorHandlers::new().default_handler(http::jsonify_error))
                .wrap(from_fn(http::request_log::log_request))
                .wrap(TracingLogger::<http::request_log::RequestSpan>::new())
                .app_data(app_state.clone())
                .app_data(http::json_config(max_body))
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
        };
        let options = ServeOptions {
            workers: settings.http_workers,
            shutdown_timeout: settings.shutdown_timeout,
        };
        let server = front_door::serve(listener, state.clone(), app, options)?;
        tracing::info!(addr = %settings.listen_addr, port, "listening");
        let metrics = match &settings.metrics_addr {
            Some(addr) => Some(serve_metrics(addr)?),
            None => None,
        };
        Ok(Self {
            port,
            metrics,
            shutdown: Shutdown {
                signal: Arc::new(signal),
                server: server.handle(),
            },
            server,
            state,
            shutdown_timeout: settings.shutdown_timeout,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `GET /metrics`, when `METRICS_ADDR` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(_, port)| *port)
    }

    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves until SIGINT/SIGTERM (or [`Shutdown::trigger`]), then ends the event streams,
    /// drains in-flight requests for up to `SHUTDOWN_TIMEOUT_SECS`, and records what it
    /// appended as finished within as long again. Nothing else is pending: a batch left
    /// unfinished is finished by the reconciler of an instance still running (or of the next).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown.trigger().await;
        });
        let metrics = self.metrics.map(|(server, _)| {
            let handle = server.handle();
            tokio::spawn(server);
            handle
        });
        let served = self.server.await;
        if let Some(metrics) = metrics {
            metrics.stop(false).await;
        }
        let flushed = tokio::time::timeout(self.shutdown_timeout, self.state.delivery.flush())
            .await
            .unwrap_or_else(|_| Err(crate::store::timed_out("finishing batches")));
        if let Err(err) = flushed {
            tracing::warn!(error = %err, "batches not recorded finished at shutdown; the reconciler will");
        }
        served
    }
}

/// Serves the process's metrics on their own listener, one worker, apart from the API.
fn serve_metrics(addr: &str) -> anyhow::Result<(Server, u16)> {
    let handle =
        crate::telemetry::metrics::install().context("cannot install the metrics recorder")?;
    let listener =
        TcpListener::bind(addr).with_context(|| format!("cannot listen on METRICS_ADDR={addr}"))?;
    let port = listener.local_addr()?.port();
    // Histograms are drained into their buckets by the upkeep (and by each scrape).
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let server = actix_web::HttpServer::new(move || {
        let handle = handle.clone();
        App::new().route(
            "/metrics",
            web::get().to(move || {
                let body = handle.render();
                async move {
                    HttpResponse::Ok()
                        .content_type("text/plain; version=0.0.4; charset=utf-8")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    tracing::info!(addr, port, "metrics at /metrics");
    Ok((server, port))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
