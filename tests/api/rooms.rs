use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app, unique};

#[tokio::test]
async fn everyone_is_in_the_default_room_and_cannot_leave_it() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let body: Value = app.get_json("/rooms", &alice.token).await;
    let rooms = body["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0]["name"], "general");
    assert_eq!(rooms[0]["joined"], true);
    let general = rooms[0]["id"].as_str().unwrap();
    let res = app.leave_room(&alice.token, general).await;
    assert_eq!(
        error_code(res, StatusCode::CONFLICT).await,
        "cannot_leave_default_room"
    );
    app.joins(&alice.token, general).await;
}

#[tokio::test]
async fn rooms_can_be_created_joined_and_left() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let name = unique("Rust-");
    let room = app.create_room(&alice.token, &name).await;

    let res = app
        .post("/rooms")
        .bearer_auth(&bob.token)
        .json(&json!({"name": name.to_lowercase()}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::CONFLICT).await,
        "room_name_taken"
    );

    let listed: Value = app.get_json("/rooms", &bob.token).await;
    let entry = listed["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == room.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["joined"], false);

    for _ in 0..2 {
        let res = app.join_room(&bob.token, &room).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.json::<Value>().await.unwrap()["joined"], true);
    }
    app.post_to_room(&bob.token, &room, "hi").await;
    for _ in 0..2 {
        assert_eq!(
            app.leave_room(&bob.token, &room).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    let res = app
        .send_message(&bob.token, &json!({"room_id": room, "body": "still here?"}))
        .await;
    assert_eq!(error_code(res, StatusCode::FORBIDDEN).await, "not_a_member");
}

#[tokio::test]
async fn non_members_cannot_read_or_post_in_a_room() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let eve = app.signup("eve").await;
    let room = app.create_room(&alice.token, &unique("secret-")).await;
    app.post_to_room(&alice.token, &room, "for members only")
        .await;

    let res = app
        .get_authed(&format!("/rooms/{room}/messages"), &eve.token)
        .await;
    assert_eq!(error_code(res, StatusCode::FORBIDDEN).await, "not_a_member");
    let res = app
        .send_message(&eve.token, &json!({"room_id": room, "body": "let me in"}))
        .await;
    assert_eq!(error_code(res, StatusCode::FORBIDDEN).await, "not_a_member");
}

#[tokio::test]
async fn bad_room_names_and_ids_are_rejected() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    for name in [
        json!("a"),
        json!("has space"),
        json!({"$ne": null}),
        json!("x".repeat(33)),
    ] {
        let res = app
            .post("/rooms")
            .bearer_auth(&alice.token)
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{name}");
    }
    let res = app.join_room(&alice.token, "not-an-id").await;
    assert_eq!(
        error_code(res, StatusCode::BAD_REQUEST).await,
        "invalid_room_id"
    );
    let res = app
        .get_authed("/rooms/zzzzzzzzzzzzzzzzzzzzzzzz/messages", &alice.token)
        .await;
    assert_eq!(
        error_code(res, StatusCode::BAD_REQUEST).await,
        "invalid_room_id"
    );
    let res = app
        .join_room(&alice.token, "0123456789abcdef01234567")
        .await;
    assert_eq!(
        error_code(res, StatusCode::NOT_FOUND).await,
        "room_not_found"
    );
    let res = app
        .send_message(
            &alice.token,
            &json!({"room_id": "0123456789abcdef01234567", "body": "x"}),
        )
        .await;
    assert_eq!(
        error_code(res, StatusCode::NOT_FOUND).await,
        "room_not_found"
    );
    let res = app.get("/rooms").send().await.unwrap();
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "missing_token"
    );
}

/// A creation whose request failed between writing the room and its creator's membership is
/// finished by its retry (201, a member); the same name from anyone else, or from a creator
/// who has since left, is still taken.
#[tokio::test]
async fn a_retried_creation_finishes_a_room_left_without_its_creator() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let name = unique("half");
    let store = chat_server::store::Store::connect(&app.settings)
        .await
        .unwrap();
    store
        .database()
        .collection::<mongodb::bson::Document>("rooms")
        .insert_one(mongodb::bson::doc! {
            "name": &name, "name_lower": name.to_lowercase(), "created_by": &alice.id,
            "created_at": mongodb::bson::DateTime::now(), "is_default": false,
        })
        .await
        .unwrap();
    let create = |token: String| {
        app.post("/rooms")
            .bearer_auth(token)
            .json(&json!({ "name": name }))
            .send()
    };
    let res = create(bob.token.clone()).await.unwrap();
    assert_eq!(
        error_code(res, StatusCode::CONFLICT).await,
        "room_name_taken"
    );
    let res = create(alice.token.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let room: Value = res.json().await.unwrap();
    let room = room["id"].as_str().unwrap().to_owned();
    app.post_to_room(&alice.token, &room, "a member now").await;
    assert!(
        app.leave_room(&alice.token, &room)
            .await
            .status()
            .is_success()
    );
    let res = create(alice.token.clone()).await.unwrap();
    assert_eq!(
        error_code(res, StatusCode::CONFLICT).await,
        "room_name_taken"
    );
}
