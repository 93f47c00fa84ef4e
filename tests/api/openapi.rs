use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

const COMMITTED: &str = include_str!("../../openapi/openapi.json");

#[test]
fn the_committed_spec_is_what_the_code_generates() {
    let generated = chat_server::http::openapi::openapi_json().unwrap();
    assert!(
        generated == COMMITTED,
        "openapi/openapi.json is stale: run `cargo run --bin export-openapi` and commit the result"
    );
}

#[tokio::test]
async fn the_served_spec_is_the_committed_one() {
    let app = spawn_app().await;
    let res = app.get("/api-docs/openapi.json").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let served: Value = res.json().await.unwrap();
    let committed: Value = serde_json::from_str(COMMITTED).unwrap();
    assert_eq!(served, committed);
}

#[test]
fn every_endpoint_is_documented_with_its_errors() {
    let spec: Value = serde_json::from_str(COMMITTED).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    for (path, method) in [
        ("/auth/register", "post"),
        ("/auth/login", "post"),
        ("/auth/logout", "post"),
        ("/users/me", "get"),
        ("/users/online", "get"),
        ("/users/{username}", "get"),
        ("/rooms", "get"),
        ("/rooms", "post"),
        ("/rooms/{room_id}/join", "post"),
        ("/rooms/{room_id}/leave", "post"),
        ("/rooms/{room_id}/messages", "get"),
        ("/messages", "post"),
        ("/conversations/{username}/messages", "get"),
        ("/events", "get"),
        ("/stats/most-active", "get"),
        ("/stats/most-solicited", "get"),
        ("/stats/rooms", "get"),
        ("/stats/activity", "get"),
        ("/stats/summary", "get"),
        ("/stats/users/{username}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} is not in the spec");
        let responses = op["responses"].as_object().unwrap();
        if path != "/healthz" {
            assert!(
                responses
                    .keys()
                    .any(|code| code.starts_with('4') || code.starts_with('5')),
                "{path}"
            );
        }
        let authenticated = !path.starts_with("/auth/r")
            && !path.starts_with("/auth/login")
            && !path.ends_with("z");
        assert_eq!(
            op["security"].is_array(),
            authenticated,
            "{method} {path} security"
        );
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer_auth"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn swagger_ui_is_served_at_docs() {
    let app = spawn_app().await;
    let res = app.get("/docs").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(res.headers()["location"], "/docs/");
    let res = app.get("/docs/").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("swagger-ui"));
    let init = app
        .get("/docs/swagger-initializer.js")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/api-docs/openapi.json"), "{init}");
}
