use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ScratchMongo, free_port, spawn_app, spawn_app_with};

#[tokio::test]
async fn healthz_and_readyz_are_ok_when_everything_is_up() {
    let app = spawn_app().await;
    let res = app.get("/healthz").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    let res = app.get("/readyz").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"mongodb": "ok", "redis": "ok"}})
    );
}

/// Monitors and `curl -I` ask with HEAD: the probes and the page answer it like GET, without
/// a body; other routes still refuse it.
#[tokio::test]
async fn probes_and_the_page_answer_head() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    for (path, content_type) in [
        ("/healthz", "application/json"),
        ("/readyz", "application/json"),
        ("/", "text/html"),
    ] {
        let res = client.head(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let declared = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(declared.starts_with(content_type), "{path}: {declared}");
        assert!(res.bytes().await.unwrap().is_empty(), "{path}");
    }
    let res = client.head(app.url("/users/me")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn readyz_names_redis_when_it_is_down() {
    let app = spawn_app_with(&[("REDIS_URL", format!("redis://127.0.0.1:{}", free_port()))]).await;
    let res = app.get("/readyz").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "not_ready");
    assert_eq!(
        body["checks"],
        json!({"mongodb": "ok", "redis": "unreachable"})
    );
    assert_eq!(body["message"], "not ready: redis (unreachable)");
    // Liveness does not depend on the dependencies.
    assert_eq!(
        app.get("/healthz").send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn readyz_names_mongodb_when_it_is_down() {
    let mut mongo = ScratchMongo::start().await;
    let app = mongo.app().await;
    assert_eq!(
        app.get("/readyz").send().await.unwrap().status(),
        StatusCode::OK
    );
    mongo.kill();
    let res = app.get("/readyz").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["checks"],
        json!({"mongodb": "unreachable", "redis": "ok"})
    );
}

/// Every answer names its request id, the one its log lines carry; an error too.
#[tokio::test]
async fn every_answer_names_its_request_id() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let mut ids = Vec::new();
    // The event stream's answers come from its own front door (a new connection's first
    // request), refusing and serving.
    for (path, token, status) in [
        ("/healthz", None, StatusCode::OK),
        ("/healthz", None, StatusCode::OK),
        ("/no-such-path", None, StatusCode::NOT_FOUND),
        ("/events", None, StatusCode::UNAUTHORIZED),
        ("/events", Some(&alice.token), StatusCode::OK),
    ] {
        let request = match token {
            Some(token) => app.get_fresh(path, token),
            None => app.fresh_client.get(app.url(path)),
        };
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{path}: {id}");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "one id per request: {ids:?}");
}
