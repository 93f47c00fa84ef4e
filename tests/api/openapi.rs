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
fn every_route_is_documented_with_every_status_it_can_answer() {
    let spec: Value = serde_json::from_str(COMMITTED).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    // The router's own table, not a list kept by hand.
    for &(method, path) in chat_server::http::ROUTES {
        let method = if method == "get_or_head" {
            "get"
        } else {
            method
        };
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} is not in the spec");
        let responses = op["responses"].as_object().unwrap();
        let documents = |status: &str| {
            assert!(
                responses.contains_key(status),
                "{method} {path} does not document {status}"
            );
        };
        let authenticated = !path.starts_with("/auth/r")
            && !path.starts_with("/auth/login")
            && !path.ends_with("z");
        assert_eq!(
            op["security"].is_array(),
            authenticated,
            "{method} {path} security"
        );
        if authenticated {
            documents("401");
            documents("503");
        }
        // What the framework answers for a JSON body: malformed, too large, not JSON, invalid.
        if op["requestBody"].is_object() {
            for status in ["400", "413", "415", "422"] {
                documents(status);
            }
        }
        // Every write is rate-limited (logout only ends a session).
        if method != "get" && path != "/auth/logout" {
            documents("429");
        }
        if path.contains('{') && path != "/events" {
            documents("404");
        }
    }
    // And the spec has nothing the router does not serve.
    let documented: usize = paths
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    assert_eq!(documented, chat_server::http::ROUTES.len());
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
