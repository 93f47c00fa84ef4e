use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, ScratchMongo, error_code, spawn_app, spawn_app_with, unique};

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let res = app
        .post("/auth/register")
        .header("content-type", "application/json")
        .body("{\"username\": \"abc\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::BAD_REQUEST).await,
        "invalid_json"
    );
}

#[tokio::test]
async fn wrong_types_missing_and_unknown_fields_are_422() {
    let app = spawn_app().await;
    for body in [
        json!({"username": 42, "password": PASSWORD}),
        json!({"username": "someone"}),
        json!({"username": "someone", "password": PASSWORD, "admin": true}),
    ] {
        let res = app.post("/auth/register").json(&body).send().await.unwrap();
        assert_eq!(
            error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
            "invalid_body",
            "{body}"
        );
    }
}

#[tokio::test]
async fn values_that_look_like_mongodb_operators_never_reach_a_query() {
    let app = spawn_app().await;
    let victim = app.signup("victim").await;
    for body in [
        json!({"username": {"$ne": null}, "password": PASSWORD}),
        json!({"username": victim.username, "password": {"$gt": ""}}),
        json!({"username": {"$regex": ".*"}, "password": {"$ne": "x"}}),
    ] {
        let res = app.post("/auth/login").json(&body).send().await.unwrap();
        assert_eq!(
            error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
            "invalid_body",
            "{body}"
        );
        let res = app.post("/auth/register").json(&body).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let res = app.register("$where", PASSWORD).await;
    assert_eq!(
        error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_username"
    );
    let res = app.login("$ne", PASSWORD).await;
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
}

#[tokio::test]
async fn an_oversized_body_is_413_and_stores_nothing() {
    let app = spawn_app().await;
    let name = unique("big");
    let res = app
        .post("/auth/register")
        .json(&json!({"username": name, "password": "p".repeat(100 * 1024)}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::PAYLOAD_TOO_LARGE).await,
        "payload_too_large"
    );
    assert_eq!(
        app.login(&name, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    let res = app
        .post("/auth/login")
        .header("content-type", "text/plain")
        .body("username=a&password=b")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::UNSUPPORTED_MEDIA_TYPE).await,
        "unsupported_media_type"
    );
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_the_json_error_shape() {
    let app = spawn_app().await;
    let res = app.get("/no/such/thing").send().await.unwrap();
    assert_eq!(error_code(res, StatusCode::NOT_FOUND).await, "not_found");
    let res = app.get("/auth/login").send().await.unwrap();
    assert_eq!(
        res.headers()["allow"],
        "POST",
        "a 405 says what the path allows"
    );
    assert_eq!(
        error_code(res, StatusCode::METHOD_NOT_ALLOWED).await,
        "method_not_allowed"
    );
    let res = app.post("/healthz").send().await.unwrap();
    let allow = res.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
    assert_eq!(
        error_code(res, StatusCode::METHOD_NOT_ALLOWED).await,
        "method_not_allowed"
    );
    let res = app.get("/docs/no-such-asset.js").send().await.unwrap();
    assert_eq!(error_code(res, StatusCode::NOT_FOUND).await, "not_found");
}

#[tokio::test]
async fn redis_down_means_503_for_authenticated_requests_never_a_pass() {
    let app = spawn_app().await;
    let user = app.signup("redis").await;
    // Same database and secret, but a Redis that is not there.
    let dead_redis = format!("redis://127.0.0.1:{}", crate::helpers::free_port());
    let broken = spawn_app_with(&[
        ("MONGODB_DATABASE", app.settings.mongodb_database.clone()),
        ("JWT_SECRET", app.settings.jwt_secret.expose().to_owned()),
        ("REDIS_URL", dead_redis),
    ])
    .await;
    let res = broken.get_authed("/users/me", &user.token).await;
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(
        error_code(res, StatusCode::SERVICE_UNAVAILABLE).await,
        "cache_unavailable"
    );
}

#[tokio::test]
async fn mongodb_down_means_503_with_the_error_body() {
    let mut mongo = ScratchMongo::start().await;
    let app = mongo.app().await;
    let user = app.signup("mongo").await;
    mongo.kill();

    let res = app.register(&unique("later"), PASSWORD).await;
    assert_eq!(
        error_code(res, StatusCode::SERVICE_UNAVAILABLE).await,
        "database_unavailable"
    );
    let res = app.get_authed("/users/me", &user.token).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "database_unavailable");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "no internals in the body: {body}"
    );
    // A stream on a connection of its own (the lean path) gets the same answer, once.
    let res = app.get_fresh("/events", &user.token).send().await.unwrap();
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(res, StatusCode::SERVICE_UNAVAILABLE).await,
        "database_unavailable"
    );
}
