use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_server::config::Settings;
use chat_server::startup::Application;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn test_mongodb_uri() -> String {
    env_or(
        "TEST_MONGODB_URI",
        "mongodb://127.0.0.1:27118/?directConnection=true",
    )
}

pub fn test_redis_url() -> String {
    env_or("TEST_REDIS_URL", "redis://127.0.0.1:16380")
}

/// A name no other test uses, valid as a username (and as a database name).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub client: reqwest::Client,
    /// A client that opens a new connection for every request, as an `EventSource`
    /// (re)connecting does: its streams are served by the front door, not by actix-web.
    pub fresh_client: reqwest::Client,
    pub shutdown: chat_server::startup::Shutdown,
    /// The server task: ends once the instance has stopped (see `run_until_stopped`).
    pub run: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Where `GET /metrics` answers, with `METRICS_ADDR` set.
    pub metrics_port: Option<u16>,
}

pub struct TestUser {
    pub id: String,
    pub username: String,
    pub token: String,
}

/// Variables every test app gets; `overrides` wins.
fn test_vars(overrides: &[(&str, String)]) -> HashMap<String, String> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut vars: HashMap<String, String> = [
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("MONGODB_URI", test_mongodb_uri()),
        ("MONGODB_DATABASE", format!("test_{id}")),
        ("MONGODB_TIMEOUT_MS", "2000".to_owned()),
        ("REDIS_URL", test_redis_url()),
        ("REDIS_KEY_PREFIX", format!("test:{id}:")),
        ("JWT_SECRET", format!("{id}{id}")),
        ("HTTP_WORKERS", "2".to_owned()),
        ("AUTH_RATE_LIMIT_PER_MINUTE", "1000".to_owned()),
        // Tests post in bursts; the limits' own tests set them low.
        ("WRITE_RATE_LIMIT_PER_MINUTE", "1000000".to_owned()),
        ("SIGNAL_RATE_LIMIT_PER_MINUTE", "1000000".to_owned()),
        ("SHUTDOWN_TIMEOUT_SECS", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in overrides {
        vars.insert((*k).to_owned(), v.clone());
    }
    vars
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts an instance with its own database and key prefix, and `overrides` applied.
pub async fn spawn_app_with(overrides: &[(&str, String)]) -> TestApp {
    let vars = test_vars(overrides);
    let settings = Settings::from_lookup(|name| vars.get(name).cloned()).expect("test settings");
    start(settings).await
}

async fn start(settings: Settings) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        chat_server::telemetry::init(settings.log_format);
    }
    let app = Application::build(&settings).await.expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.shutdown_handle();
    let metrics_port = app.metrics_port();
    let run = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        settings,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        fresh_client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        shutdown,
        run,
        metrics_port,
    }
}

impl TestApp {
    /// Another instance of the service sharing this one's MongoDB database, Redis prefix and
    /// JWT secret: what a second replica behind a load balancer is.
    pub async fn spawn_sibling(&self) -> TestApp {
        start(self.settings.clone()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    /// An authenticated GET on a new connection (for `/events`: the front door's path).
    pub fn get_fresh(&self, path: &str, token: &str) -> RequestBuilder {
        self.fresh_client.get(self.url(path)).bearer_auth(token)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(self.url(path))
    }

    pub async fn register(&self, username: &str, password: &str) -> Response {
        self.post("/auth/register")
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.post("/auth/login")
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap()
    }

    /// Logs an existing user in and returns the token.
    pub async fn token_for(&self, username: &str) -> String {
        let res = self.login(username, PASSWORD).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Registers a fresh user and logs them in.
    pub async fn signup(&self, prefix: &str) -> TestUser {
        let username = unique(prefix);
        let res = self.register(&username, PASSWORD).await;
        assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
        let body: Value = res.json().await.unwrap();
        let token = self.token_for(&username).await;
        TestUser {
            id: body["id"].as_str().unwrap().to_owned(),
            username,
            token,
        }
    }

    pub async fn get_authed(&self, path: &str, token: &str) -> Response {
        self.get(path).bearer_auth(token).send().await.unwrap()
    }

    /// The JSON body of `GET path` as `token`'s owner.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        self.get_authed(path, token).await.json().await.unwrap()
    }

    pub async fn logout(&self, token: &str) -> Response {
        self.post("/auth/logout")
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Usernames in `GET /users/online`, as seen by `token`'s owner (which refreshes them).
    pub async fn online_names(&self, token: &str) -> Vec<String> {
        let res = self.get_authed("/users/online", token).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Asserts the API's error shape and returns the code.
pub async fn error_code(res: Response, status: StatusCode) -> String {
    assert_eq!(res.status(), status);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = res.json().await.unwrap();
    assert!(body["message"].is_string(), "{body}");
    body["error"].as_str().unwrap().to_owned()
}

/// Polls `check` until it is true, for at most `bound`. No fixed sleeps: the wait ends as soon
/// as the condition holds.
pub async fn eventually<F, Fut>(bound: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Which of the two local MongoDB wire-protocol servers the suite runs against
/// (`TEST_MONGO_SERVER`, set by `scripts/test.sh`): tests that take the store down start one
/// of the same kind, and a test that only one server can pass says so by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MongoServer {
    /// nx-27017: SQLite underneath, no replica set, in memory.
    Nx,
    /// SecantusDB: WiredTiger underneath, a single-node replica set named `secantus`.
    Secantus,
}

impl MongoServer {
    pub fn of_suite() -> MongoServer {
        match std::env::var("TEST_MONGO_SERVER").as_deref() {
            Ok("secantus") => MongoServer::Secantus,
            _ => MongoServer::Nx,
        }
    }
}

/// Where a scratch SecantusDB keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    Memory,
    /// A directory of its own, kept across [`ScratchMongo::restart`].
    Disk,
}

/// A MongoDB-protocol server of the test's own, for tests that take the database down: the
/// suite's kind ([`MongoServer::of_suite`]), or SecantusDB for the fault tests. Killed on drop.
pub struct ScratchMongo {
    pub uri: String,
    pub server: MongoServer,
    port: u16,
    dir: std::path::PathBuf,
    storage: Storage,
    child: Option<Child>,
}

impl ScratchMongo {
    pub async fn start() -> ScratchMongo {
        Self::start_server(MongoServer::of_suite(), Storage::Memory).await
    }

    /// SecantusDB with its test commands (`configureFailPoint`) enabled.
    pub async fn secantus(storage: Storage) -> ScratchMongo {
        Self::start_server(MongoServer::Secantus, storage).await
    }

    async fn start_server(server: MongoServer, storage: Storage) -> ScratchMongo {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("scratch-mongo-"));
        std::fs::create_dir_all(&dir).unwrap();
        let uri = match server {
            MongoServer::Nx => format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
            MongoServer::Secantus => format!("mongodb://127.0.0.1:{port}/?replicaSet=secantus"),
        };
        let mut mongo = ScratchMongo {
            uri,
            server,
            port,
            dir,
            storage,
            child: None,
        };
        mongo.restart().await;
        mongo
    }

    /// Starts the server (again, after [`ScratchMongo::kill`]) on the same port, with the same
    /// data when it keeps its data on disk.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut command = match self.server {
            MongoServer::Nx => {
                let mut command = Command::new(env_or("TEST_NX_27017", ".work/venv/bin/nx-27017"));
                command
                    .args(["--db", "memory", "--host", "127.0.0.1", "-p", &port])
                    .arg("--log-file")
                    .arg(self.dir.join("log"))
                    .arg("--pid-file")
                    .arg(self.dir.join("pid"));
                command
            }
            MongoServer::Secantus => {
                let mut command =
                    Command::new(env_or("TEST_SECANTUSD", ".work/secantus/bin/secantusd-py"));
                command
                    .args(["--host", "127.0.0.1", "--port", &port])
                    .args(["--log-level", "WARNING", "--enable-test-commands"])
                    .arg("--storage-path");
                match self.storage {
                    Storage::Memory => command.arg(":memory:"),
                    Storage::Disk => command.arg(self.dir.join("data")),
                };
                command
            }
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the MongoDB server starts (run the tests through scripts/test.sh)");
        self.child = Some(child);
        let port = self.port;
        let up = eventually(Duration::from_secs(20), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "{:?} did not come up on port {port}", self.server);
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An app on this server, with a short store timeout (500 ms) so that its failures are
    /// seen quickly.
    pub async fn app(&self) -> TestApp {
        spawn_app_with(&[
            ("MONGODB_URI", self.uri.clone()),
            ("MONGODB_TIMEOUT_MS", "500".to_owned()),
        ])
        .await
    }

    /// Stops the process without closing its sockets (SIGSTOP): a store that hangs instead
    /// of refusing. `resume` continues it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for ScratchMongo {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestApp {
    /// Creates a room as `token`'s owner (who joins it) and returns its id.
    pub async fn create_room(&self, token: &str, name: &str) -> String {
        let res = self
            .post("/rooms")
            .bearer_auth(token)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
        let body: Value = res.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn join_room(&self, token: &str, room: &str) -> Response {
        self.post(&format!("/rooms/{room}/join"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Joins `room`; asserts 200.
    pub async fn joins(&self, token: &str, room: &str) {
        let res = self.join_room(token, room).await;
        assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
    }

    pub async fn leave_room(&self, token: &str, room: &str) -> Response {
        self.post(&format!("/rooms/{room}/leave"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// The id of the default room, everyone's.
    pub async fn general(&self, token: &str) -> String {
        let body: Value = self.get_authed("/rooms", token).await.json().await.unwrap();
        let rooms = body["rooms"].as_array().unwrap();
        let general = rooms.iter().find(|r| r["is_default"] == true).unwrap();
        general["id"].as_str().unwrap().to_owned()
    }

    pub async fn send_message(&self, token: &str, message: &Value) -> Response {
        self.post("/messages")
            .bearer_auth(token)
            .json(message)
            .send()
            .await
            .unwrap()
    }

    /// Posts to a room; asserts 201 and returns the stored message.
    pub async fn post_to_room(&self, token: &str, room: &str, body: &str) -> Value {
        let res = self
            .send_message(token, &json!({ "room_id": room, "body": body }))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
        res.json().await.unwrap()
    }

    /// Sends a direct message; asserts 201 and returns the stored message.
    pub async fn post_to_user(&self, token: &str, to: &str, body: &str) -> Value {
        let res = self
            .send_message(token, &json!({ "to": to, "body": body }))
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);
        res.json().await.unwrap()
    }
}

/// A `redis-server` of the test's own, for tests that restart Redis. Killed on drop.
pub struct ScratchRedis {
    pub port: u16,
    child: Option<Child>,
}

impl ScratchRedis {
    pub async fn start() -> ScratchRedis {
        let mut redis = ScratchRedis {
            port: free_port(),
            child: None,
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection to it; an error while it is down.
    pub async fn try_connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        client.get_multiplexed_async_connection().await
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.try_connection().await.unwrap()
    }

    /// Starts it again, empty (no persistence): what a crash of a cache-only Redis looks like.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (run the tests through scripts/test.sh)");
        self.child = Some(child);
        let port = self.port;
        let up = eventually(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "redis-server did not come up on port {port}");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process without closing its sockets (SIGSTOP): a Redis that hangs.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for ScratchRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (bounded) until the reconciler of `app`'s deployment has walked past `at_ms`: every
/// batch stored before then is finished, and will not be finished again.
pub async fn reconciled_past(app: &TestApp, at_ms: i64) {
    let client = mongodb::Client::with_uri_str(&app.settings.mongodb_uri)
        .await
        .unwrap();
    let reconciler = client
        .database(&app.settings.mongodb_database)
        .collection::<mongodb::bson::Document>("reconciler");
    let past = eventually(Duration::from_secs(30), || async {
        let found = reconciler
            .find_one(mongodb::bson::doc! { "_id": "reconciler" })
            .await
            .unwrap();
        found
            .and_then(|d| d.get_i64("watermark").ok())
            .is_some_and(|watermark| watermark > at_ms)
    })
    .await;
    assert!(past, "the reconciler did not get past {at_ms}");
}

/// An instance of the service in a process of its own (the `chat-server` binary), sharing
/// `app`'s database, Redis prefix and secret: one that can be killed with SIGKILL, or whose
/// ids come from another process. Killed on drop.
pub struct ChildApp {
    pub address: String,
    child: Child,
}

impl ChildApp {
    pub async fn start(app: &TestApp) -> ChildApp {
        let port = free_port();
        let s = &app.settings;
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        command
            .env_clear()
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("MONGODB_URI", &s.mongodb_uri)
            .env("MONGODB_DATABASE", &s.mongodb_database)
            .env(
                "MONGODB_TIMEOUT_MS",
                s.mongodb_timeout.as_millis().to_string(),
            )
            .env("REDIS_URL", &s.redis_url)
            .env("REDIS_KEY_PREFIX", &s.redis_key_prefix)
            .env("JWT_SECRET", s.jwt_secret.expose())
            .env("HTTP_WORKERS", "2")
            .env("AUTH_RATE_LIMIT_PER_MINUTE", "1000")
            .env("WRITE_RATE_LIMIT_PER_MINUTE", "1000000")
            .env("SIGNAL_RATE_LIMIT_PER_MINUTE", "1000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().expect("the chat-server binary starts");
        let address = format!("http://127.0.0.1:{port}");
        let health = format!("{address}/healthz");
        let up = eventually(Duration::from_secs(30), || async {
            reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "the chat-server process did not come up on port {port}");
        ChildApp { address, child }
    }

    /// SIGKILL: the process dies at once, whatever it was doing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildApp {
    fn drop(&mut self) {
        self.kill();
    }
}
