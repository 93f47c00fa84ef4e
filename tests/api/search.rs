//! `GET /search`: the caller's conversations only, newest first, paged.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, error_code, spawn_app, unique};

impl TestApp {
    pub async fn search(&self, token: &str, query: &str) -> reqwest::Response {
        self.client
            .get(self.url("/search"))
            .query(&[("q", query)])
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// The bodies of the hits for `query`, newest first.
    pub async fn found(&self, token: &str, query: &str) -> Vec<String> {
        let res = self.search(token, query).await;
        assert_eq!(res.status(), StatusCode::OK);
        let page: Value = res.json().await.unwrap();
        page["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["message"]["body"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A word known to no other test (the suite shares a server, not a database; still).
fn word() -> String {
    unique("w")
}

#[tokio::test]
async fn search_finds_only_what_the_caller_may_read() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = a.signup("bob").await;
    let carol = a.signup("carol").await;
    let room = a.create_room(&alice.token, &unique("r")).await;
    a.joins(&bob.token, &room).await;
    let secret = a.create_room(&carol.token, &unique("s")).await;
    let general = a.general(&alice.token).await;
    let (w, other) = (word(), word());

    a.post_to_room(&alice.token, &general, &format!("{w} in general"))
        .await;
    a.post_to_room(&alice.token, &room, &format!("{w} in the room"))
        .await;
    b.post_to_room(&carol.token, &secret, &format!("{w} in carol's room"))
        .await;
    b.post_to_user(
        &alice.token,
        &bob.username,
        &format!("{w} {other} between alice and bob"),
    )
    .await;
    b.post_to_user(
        &carol.token,
        &alice.username,
        &format!("{w} from carol to alice"),
    )
    .await;

    // Newest first; each caller only what they may read.
    assert_eq!(
        a.found(&alice.token, &w).await,
        [
            format!("{w} from carol to alice"),
            format!("{w} {other} between alice and bob"),
            format!("{w} in the room"),
            format!("{w} in general"),
        ]
    );
    assert_eq!(
        b.found(&bob.token, &w).await,
        [
            format!("{w} {other} between alice and bob"),
            format!("{w} in the room"),
            format!("{w} in general"),
        ]
    );
    assert_eq!(
        a.found(&carol.token, &w).await,
        [
            format!("{w} from carol to alice"),
            format!("{w} in carol's room"),
            format!("{w} in general"),
        ]
    );
    // Every word must be there, in any case.
    assert_eq!(
        a.found(&bob.token, &format!("{} {}", other.to_uppercase(), w))
            .await,
        [format!("{w} {other} between alice and bob")]
    );

    // Each hit says where it was said.
    let page: Value = a.search(&alice.token, &w).await.json().await.unwrap();
    let hits = page["hits"].as_array().unwrap();
    assert_eq!(
        hits[0]["conversation"]["with"]["username"],
        carol.username.as_str()
    );
    assert_eq!(
        hits[1]["conversation"]["with"]["username"],
        bob.username.as_str()
    );
    assert_eq!(hits[2]["conversation"]["room_id"], room.as_str());
    assert!(hits[2]["conversation"]["room_name"].is_string());
    assert_eq!(hits[3]["conversation"]["room_name"], "general");

    // A room left is not searched any more.
    a.leave_room(&bob.token, &room).await;
    assert_eq!(b.found(&bob.token, &w).await.len(), 2);
}

#[tokio::test]
async fn search_pages_follow_edits_and_skip_deletions() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let (w, old, new) = (word(), word(), word());
    let mut posted = Vec::new();
    for n in 0..5 {
        posted.push(
            app.post_to_room(&alice.token, &general, &format!("{w} number {n}"))
                .await,
        );
    }
    let res = app
        .client
        .get(app.url("/search"))
        .query(&[("q", w.as_str()), ("limit", "2")])
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["hits"].as_array().unwrap().len(), 2);
    let before = first["next_before"].as_str().unwrap();
    assert_eq!(before, posted[3]["id"].as_str().unwrap());
    let res = app
        .client
        .get(app.url("/search"))
        .query(&[("q", w.as_str()), ("limit", "10"), ("before", before)])
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    let rest: Value = res.json().await.unwrap();
    let bodies: Vec<&str> = rest["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["message"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            format!("{w} number 2"),
            format!("{w} number 1"),
            format!("{w} number 0")
        ]
    );
    assert!(rest.get("next_before").is_none());

    let message = app
        .post_to_room(&alice.token, &general, &format!("{old} text"))
        .await;
    let id = message["id"].as_str().unwrap();
    assert_eq!(app.found(&alice.token, &old).await.len(), 1);
    app.edit(&alice.token, id, &format!("{new} text")).await;
    assert!(app.found(&alice.token, &old).await.is_empty());
    assert_eq!(app.found(&alice.token, &new).await, [format!("{new} text")]);
    app.delete(&alice.token, id).await;
    assert!(app.found(&alice.token, &new).await.is_empty());
}

#[tokio::test]
async fn bad_queries_are_a_4xx() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let long = "x".repeat(201);
    // 201 characters as sent, 200 once trimmed: the spec's maxLength counts what is sent.
    let padded = format!(" {}", "x".repeat(200));
    let many = "w ".repeat(11);
    for (query, status, code) in [
        ("", StatusCode::UNPROCESSABLE_ENTITY, "invalid_search"),
        ("   ", StatusCode::UNPROCESSABLE_ENTITY, "invalid_search"),
        ("\"\"", StatusCode::UNPROCESSABLE_ENTITY, "invalid_search"),
        // A NUL made nx-27017's text search fail (a 500, found by scripts/schemathesis.sh).
        (
            "K\u{0}x",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_search",
        ),
        (
            "a\u{1f}b",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_search",
        ),
        (
            long.as_str(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_search",
        ),
        (
            padded.as_str(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_search",
        ),
        // Checked before trimming: a trailing tab is refused too.
        ("x\t", StatusCode::UNPROCESSABLE_ENTITY, "invalid_search"),
        (
            many.as_str(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_search",
        ),
    ] {
        let res = app.search(&alice.token, query).await;
        assert_eq!(error_code(res, status).await, code, "{query:?}");
    }
    // Characters a regex or a text query would read specially are plain text.
    assert!(app.found(&alice.token, ".* ( [ \\ $").await.is_empty());
    for (query, status, code) in [
        ("", StatusCode::BAD_REQUEST, "invalid_query"),
        (
            "q=x&limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        (
            "q=x&limit=51",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        ("q=x&before=nope", StatusCode::BAD_REQUEST, "invalid_cursor"),
    ] {
        let res = app
            .get_authed(&format!("/search?{query}"), &alice.token)
            .await;
        assert_eq!(error_code(res, status).await, code, "{query:?}");
    }
    let res = app.get("/search?q=x").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}
