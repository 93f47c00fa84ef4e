use std::time::{Duration, Instant};

use chat_server::auth::JwtKeys;
use chat_server::config::Secret;
use chat_server::domain::UserId;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{PASSWORD, error_code, eventually, spawn_app, spawn_app_with, unique};

#[tokio::test]
async fn registering_returns_201_with_the_public_profile_only() {
    let app = spawn_app().await;
    let name = unique("Alice");
    let res = app.register(&name, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["location"], format!("/users/{name}").as_str());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["username"], name.as_str());
    assert_eq!(body["id"].as_str().unwrap().len(), 24);
    assert!(body["created_at"].is_string());
    let text = body.to_string();
    assert!(!text.contains("hash") && !text.contains("argon2") && !text.contains(PASSWORD));
}

#[tokio::test]
async fn a_name_taken_in_another_case_is_409() {
    let app = spawn_app().await;
    let name = unique("bob");
    assert_eq!(
        app.register(&name, PASSWORD).await.status(),
        StatusCode::CREATED
    );
    let res = app.register(&name.to_uppercase(), PASSWORD).await;
    assert_eq!(
        error_code(res, StatusCode::CONFLICT).await,
        "username_taken"
    );
}

#[tokio::test]
async fn concurrent_registrations_of_one_name_create_one_account() {
    let app = spawn_app().await;
    let name = unique("race");
    let attempts = (0..8).map(|i| {
        let name = if i % 2 == 0 {
            name.clone()
        } else {
            name.to_uppercase()
        };
        let app = &app;
        async move { app.register(&name, PASSWORD).await.status() }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT)
    );
}

#[tokio::test]
async fn invalid_usernames_and_weak_passwords_are_422() {
    let app = spawn_app().await;
    for bad in [
        "ab",
        "has space",
        "emoji🙂",
        "a/b",
        "x".repeat(33).as_str(),
        "<script>",
    ] {
        let res = app.register(bad, PASSWORD).await;
        assert_eq!(
            error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
            "invalid_username",
            "{bad}"
        );
    }
    let res = app.register(&unique("carol"), "short").await;
    assert_eq!(
        error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
        "weak_password"
    );
}

#[tokio::test]
async fn login_returns_a_jwt_with_sub_exp_and_a_unique_jti() {
    let app = spawn_app().await;
    let name = unique("dave");
    let created: Value = app.register(&name, PASSWORD).await.json().await.unwrap();

    let res = app.login(&name.to_lowercase(), PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("access_token=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 3600);
    assert_eq!(first["user"]["username"], name.as_str());

    let keys = JwtKeys::new(&app.settings.jwt_secret, app.settings.jwt_ttl);
    let claims = keys
        .verify(first["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims.sub, created["id"].as_str().unwrap());
    assert_eq!(claims.exp - claims.iat, 3600);

    let second: Value = app.login(&name, PASSWORD).await.json().await.unwrap();
    let again = keys
        .verify(second["access_token"].as_str().unwrap())
        .unwrap();
    assert_ne!(claims.jti, again.jti);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_401_in_similar_time() {
    let app = spawn_app().await;
    let name = unique("erin");
    app.register(&name, PASSWORD).await;

    let mut wrong_password = Vec::new();
    let mut unknown_user = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let res = app.login(&name, "not the password").await;
        wrong_password.push(started.elapsed());
        let a: Value = res.json().await.unwrap();

        let started = Instant::now();
        let res = app.login(&unique("nobody"), "not the password").await;
        unknown_user.push(started.elapsed());
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let b: Value = res.json().await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a["error"], "invalid_credentials");
    }
    wrong_password.sort();
    unknown_user.sort();
    // An unknown user must still pay for a password hash: without the dummy verification it
    // answers in well under a tenth of the time.
    assert!(
        unknown_user[2] * 4 >= wrong_password[2],
        "unknown user {:?} vs wrong password {:?}",
        unknown_user[2],
        wrong_password[2]
    );
}

#[tokio::test]
async fn a_token_is_accepted_from_the_header_the_cookie_or_the_query() {
    let app = spawn_app().await;
    let user = app.signup("frank").await;

    let by_header = app.get_authed("/users/me", &user.token).await;
    assert_eq!(by_header.status(), StatusCode::OK);
    let by_cookie = app
        .get("/users/me")
        .header("cookie", format!("access_token={}", user.token))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), StatusCode::OK);
    let by_query = app
        .get(&format!("/users/me?access_token={}", user.token))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), StatusCode::OK);
    let me: Value = by_query.json().await.unwrap();
    assert_eq!(me["username"], user.username.as_str());

    // Changes need the header: a cookie or query token alone is not enough (no CSRF).
    let res = app
        .post("/auth/logout")
        .header("cookie", format!("access_token={}", user.token))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "missing_token"
    );
    let res = app
        .post(&format!("/auth/logout?access_token={}", user.token))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "missing_token"
    );
}

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_are_401() {
    let app = spawn_app_with(&[("JWT_TTL_SECS", "1".to_owned())]).await;
    let user = app.signup("gina").await;

    let res = app.get("/users/me").send().await.unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "missing_token"
    );

    let res = app
        .get("/users/me")
        .header("authorization", format!("Basic {}", user.token))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );

    let res = app.get_authed("/users/me", "not.a.jwt").await;
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );

    let forger = JwtKeys::new(&Secret::new("f".repeat(64)), Duration::from_secs(3600));
    let forged = forger
        .issue(UserId::parse(&user.id).unwrap(), &user.username)
        .unwrap();
    let res = app.get_authed("/users/me", &forged.token).await;
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );

    let expired = eventually(Duration::from_secs(5), || async {
        app.get_authed("/users/me", &user.token).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        expired,
        "a token with a 1 s lifetime was still accepted after 5 s"
    );
}

#[tokio::test]
async fn logout_revokes_the_token_at_once_on_every_instance() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let user = a.signup("hank").await;
    let other_session = a.token_for(&user.username).await;

    assert_eq!(
        b.get_authed("/users/me", &user.token).await.status(),
        StatusCode::OK
    );
    let res = a.logout(&user.token).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("access_token=;") && cookie.contains("Max-Age=0"),
        "{cookie}"
    );

    let res = b.get_authed("/users/me", &user.token).await;
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "token_revoked"
    );
    let res = a.logout(&user.token).await;
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "token_revoked"
    );
    // Only that token: the user's other session still works.
    assert_eq!(
        b.get_authed("/users/me", &other_session).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn repeated_failed_logins_are_rate_limited_with_retry_after() {
    let app = spawn_app_with(&[("AUTH_RATE_LIMIT_PER_MINUTE", "3".to_owned())]).await;
    let name = unique("ivan");
    app.register(&name, PASSWORD).await;
    for _ in 0..3 {
        assert_eq!(
            app.login(&name, "wrong password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let res = app.login(&name, PASSWORD).await;
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(
        error_code(res, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
}
