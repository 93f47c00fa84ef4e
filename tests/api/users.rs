use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{error_code, eventually, spawn_app, spawn_app_with};

#[tokio::test]
async fn me_and_lookup_by_name_return_public_profiles() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;

    let me: Value = app.get_json("/users/me", &alice.token).await;
    assert_eq!(me["id"], alice.id.as_str());
    assert_eq!(me["username"], alice.username.as_str());

    let res = app
        .get_authed(
            &format!("/users/{}", bob.username.to_uppercase()),
            &alice.token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let profile: Value = res.json().await.unwrap();
    assert_eq!(profile["username"], bob.username.as_str());
    assert_eq!(profile.as_object().unwrap().len(), 3, "{profile}");

    let res = app.get_authed("/users/nobody-here", &alice.token).await;
    assert_eq!(
        error_code(res, StatusCode::NOT_FOUND).await,
        "user_not_found"
    );
    let res = app
        .get_authed("/users/%7B%22%24ne%22%3Anull%7D", &alice.token)
        .await;
    assert_eq!(
        error_code(res, StatusCode::NOT_FOUND).await,
        "user_not_found"
    );
}

#[tokio::test]
async fn a_user_online_on_one_instance_is_listed_by_another() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = b.signup("bob").await;

    let seen_by_b = b.online_names(&bob.token).await;
    assert!(seen_by_b.contains(&alice.username), "{seen_by_b:?}");
    let seen_by_a = a.online_names(&alice.token).await;
    assert!(seen_by_a.contains(&bob.username), "{seen_by_a:?}");

    let res = a.get_authed("/users/online", &alice.token).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["count"], 2);
    assert_eq!(
        body["users"][0]["username"],
        alice.username.as_str(),
        "most recent first"
    );
    assert!(body["users"][0]["last_seen"].is_string());
}

#[tokio::test]
async fn presence_expires_after_the_ttl_and_comes_back_with_activity() {
    let app = spawn_app_with(&[("PRESENCE_TTL_SECS", "1".to_owned())]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    assert!(app.online_names(&bob.token).await.contains(&alice.username));

    // Bob keeps asking (which keeps him online); Alice says nothing.
    let gone = eventually(Duration::from_secs(5), || async {
        !app.online_names(&bob.token).await.contains(&alice.username)
    })
    .await;
    assert!(gone, "alice stayed online past the 1 s TTL");

    app.get_authed("/users/me", &alice.token).await;
    assert!(app.online_names(&bob.token).await.contains(&alice.username));
}

#[tokio::test]
async fn logout_of_the_last_session_takes_the_user_offline_at_once() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let second_session = a.token_for(&alice.username).await;
    let bob = b.signup("bob").await;

    a.logout(&alice.token).await;
    assert!(
        b.online_names(&bob.token).await.contains(&alice.username),
        "another session of alice is still live"
    );
    a.logout(&second_session).await;
    assert!(!b.online_names(&bob.token).await.contains(&alice.username));
}

#[tokio::test]
async fn the_online_limit_is_bounded() {
    let app = spawn_app().await;
    let user = app.signup("limit").await;
    for (query, status, code) in [
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit"),
        (
            "limit=1001",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        ("limit=ten", StatusCode::BAD_REQUEST, "invalid_query"),
        ("limit=-1", StatusCode::BAD_REQUEST, "invalid_query"),
    ] {
        let res = app
            .get_authed(&format!("/users/online?{query}"), &user.token)
            .await;
        assert_eq!(error_code(res, status).await, code, "{query}");
    }
    let res = app.get_authed("/users/online?limit=1", &user.token).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["count"], 1);
}
