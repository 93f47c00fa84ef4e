//! Read state (markers, unread counts, unread mentions) and typing, across two instances.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt, stream};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, eventually, spawn_app, unique};

impl TestApp {
    /// `POST <conversation>/read` with `last_read`.
    pub async fn mark_read(&self, token: &str, conversation: &str, last_read: &str) -> Response {
        self.post(&format!("{conversation}/read"))
            .bearer_auth(token)
            .json(&json!({ "last_read": last_read }))
            .send()
            .await
            .unwrap()
    }

    /// The caller's read state of room `room`, from `GET /rooms`.
    pub async fn room_read_state(&self, token: &str, room: &str) -> Value {
        let rooms = self.get_json("/rooms", token).await;
        let room = rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == room)
            .unwrap_or_else(|| panic!("no room {room} in {rooms}"))
            .clone();
        room["read_state"].clone()
    }

    pub async fn typing(&self, token: &str, conversation: &str) -> Response {
        self.post(&format!("{conversation}/typing"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

/// Waits (bounded) until `token`'s counts in `room`, read through `app`, are `expected`:
/// mentions posted through another instance count once their batch is finished there.
async fn settles_at(app: &TestApp, token: &str, room: &str, expected: (i64, i64)) {
    let settled = eventually(Duration::from_secs(5), || async {
        counts(&app.room_read_state(token, room).await) == expected
    })
    .await;
    let last = counts(&app.room_read_state(token, room).await);
    assert!(settled, "{last:?}, not {expected:?}");
}

fn counts(state: &Value) -> (i64, i64) {
    (
        state["unread"].as_i64().unwrap(),
        state["unread_mentions"].as_i64().unwrap(),
    )
}

/// Unread counts are the messages from others after the marker, read on one instance while
/// posted through another; moving the marker on one instance reaches the reader's streams on
/// the other; a marker never moves back.
#[tokio::test]
async fn unread_counts_and_markers_agree_across_two_instances() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = a.signup("bob").await;
    let room = a.create_room(&alice.token, &unique("r")).await;
    b.joins(&bob.token, &room).await;
    // Nothing before the join counts for bob; everything after it does.
    let mut tab = b.ready_events(&bob.token).await;
    let mut other_tab = a.ready_events(&bob.token).await;

    let first = a.post_to_room(&alice.token, &room, "one").await;
    let second = a
        .post_to_room(
            &alice.token,
            &room,
            &format!("two, @{}", bob.username.to_uppercase()),
        )
        .await;
    let third = b.post_to_room(&alice.token, &room, "three").await;
    b.post_to_room(&bob.token, &room, "bob's own").await;
    assert_eq!(
        second["mentions"],
        json!([{ "id": bob.id, "username": bob.username }])
    );

    let path = format!("/rooms/{room}");
    // One's own messages are never unread; the others' are, on either instance (the mention
    // at once through the instance it was posted through).
    let state = a.room_read_state(&bob.token, &room).await;
    assert_eq!(counts(&state), (3, 1), "{state}");
    assert!(state.get("last_read").is_none());
    settles_at(&b, &bob.token, &room, (3, 1)).await;
    assert_eq!(
        counts(&b.room_read_state(&alice.token, &room).await),
        (1, 0)
    );

    let res = b
        .mark_read(&bob.token, &path, second["id"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let state: Value = res.json().await.unwrap();
    assert_eq!(state["last_read"], second["id"]);
    assert_eq!(counts(&state), (1, 0));
    // Both of bob's streams hear of it, whichever instance serves them.
    for stream in [&mut tab, &mut other_tab] {
        let read = stream.expect("read").await.json();
        assert_eq!(read["room_id"], room.as_str());
        assert_eq!(read["last_read"], second["id"]);
    }
    assert_eq!(counts(&a.room_read_state(&bob.token, &room).await), (1, 0));

    // Back to the first message: nothing moves, and nothing is announced (the next `read`
    // event bob's stream sees is that of the move after it).
    let res = a
        .mark_read(&bob.token, &path, first["id"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let state: Value = res.json().await.unwrap();
    assert_eq!(state["last_read"], second["id"]);
    let res = a
        .mark_read(&bob.token, &path, third["id"].as_str().unwrap())
        .await;
    let state: Value = res.json().await.unwrap();
    assert_eq!(counts(&state), (0, 0));
    assert_eq!(tab.expect("read").await.json()["last_read"], third["id"]);

    // A member who joins now starts at zero.
    let carol = a.signup("carol").await;
    a.joins(&carol.token, &room).await;
    assert_eq!(
        counts(&b.room_read_state(&carol.token, &room).await),
        (0, 0)
    );
    a.post_to_room(&alice.token, &room, "welcome").await;
    assert_eq!(
        counts(&b.room_read_state(&carol.token, &room).await),
        (1, 0)
    );
}

/// Messages posted at the same time through two instances by two senders are counted exactly,
/// and a count stops at 100.
#[tokio::test]
async fn unread_counts_are_exact_under_concurrent_posts_and_capped_at_100() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = a.signup("bob").await;
    let carol = a.signup("carol").await;
    let room = a.create_room(&alice.token, &unique("r")).await;
    a.joins(&bob.token, &room).await;
    a.joins(&carol.token, &room).await;

    let post = |n: usize| {
        let (app, user) = if n.is_multiple_of(2) {
            (&a, &alice)
        } else {
            (&b, &bob)
        };
        let room = room.clone();
        let body = if n.is_multiple_of(10) {
            format!("{n} for @{}", carol.username)
        } else {
            format!("{n}")
        };
        async move { app.post_to_room(&user.token, &room, &body).await }
    };
    stream::iter(0..60)
        .map(post)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    settles_at(&b, &carol.token, &room, (60, 6)).await;
    // Alice's count is bob's 30; bob's is alice's 30.
    assert_eq!(
        counts(&a.room_read_state(&alice.token, &room).await),
        (30, 0)
    );
    assert_eq!(counts(&b.room_read_state(&bob.token, &room).await), (30, 0));

    stream::iter(60..130)
        .map(post)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    settles_at(&a, &carol.token, &room, (100, 13)).await;
}

/// Direct conversations have read state too, listed with `GET /conversations`.
#[tokio::test]
async fn direct_conversations_have_markers_and_counts() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = a.signup("bob").await;
    let hello = a.post_to_user(&alice.token, &bob.username, "hello").await;
    b.post_to_user(
        &alice.token,
        &bob.username,
        &format!("@{} are you there?", bob.username),
    )
    .await;
    let list = b.get_json("/conversations", &bob.token).await;
    let with_alice = &list["conversations"][0];
    assert_eq!(with_alice["with"]["username"], alice.username.as_str());
    assert_eq!(counts(&with_alice["read_state"]), (2, 1));
    let mine = a.get_json("/conversations", &alice.token).await;
    assert_eq!(counts(&mine["conversations"][0]["read_state"]), (0, 0));

    let path = format!("/conversations/{}", alice.username);
    let mut stream = b.ready_events(&bob.token).await;
    let res = a
        .mark_read(&bob.token, &path, hello["id"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let state: Value = res.json().await.unwrap();
    assert_eq!(counts(&state), (1, 1));
    let read = stream.expect("read").await.json();
    assert_eq!(read["with_id"], alice.id.as_str());
    assert!(read.get("room_id").is_none());
}

/// Nobody moves a marker in a conversation they are not part of, or to a message of another
/// conversation; bad input is a clear 4xx.
#[tokio::test]
async fn markers_are_checked() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.create_room(&alice.token, &unique("r")).await;
    let in_room = app.post_to_room(&alice.token, &room, "in the room").await;
    let general = app.general(&alice.token).await;
    let in_general = app.post_to_room(&alice.token, &general, "in general").await;
    let direct = app
        .post_to_user(&alice.token, &bob.username, "just us")
        .await;
    let room_path = format!("/rooms/{room}");
    let id = |m: &Value| m["id"].as_str().unwrap().to_owned();

    // Bob is not in the room.
    let res = app.mark_read(&bob.token, &room_path, &id(&in_room)).await;
    assert_eq!(error_code(res, StatusCode::FORBIDDEN).await, "not_a_member");
    // A message of another conversation, or of none.
    for message in [
        id(&in_general),
        id(&direct),
        "665f1d009b1e8a00123456ff".to_owned(),
    ] {
        let res = app.mark_read(&alice.token, &room_path, &message).await;
        assert_eq!(
            error_code(res, StatusCode::NOT_FOUND).await,
            "message_not_found"
        );
    }
    let in_room_id = id(&in_room);
    for (path, message, status, code) in [
        (
            room_path.as_str(),
            "nope",
            StatusCode::BAD_REQUEST,
            "invalid_message_id",
        ),
        (
            "/rooms/nope",
            &in_room_id,
            StatusCode::BAD_REQUEST,
            "invalid_room_id",
        ),
        (
            "/rooms/665f1c2e9b1e8a00123456aa",
            &in_room_id,
            StatusCode::NOT_FOUND,
            "room_not_found",
        ),
    ] {
        let res = app.mark_read(&alice.token, path, message).await;
        assert_eq!(error_code(res, status).await, code, "{path} {message}");
    }
    let res = app
        .post(&format!("{room_path}/read"))
        .bearer_auth(&alice.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_body"
    );
    let res = app
        .post(&format!("{room_path}/read"))
        .bearer_auth(&alice.token)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::BAD_REQUEST).await,
        "invalid_json"
    );
    let res = app.post(&format!("{room_path}/read")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Direct conversations: someone else's message, nobody, oneself.
    let carol = app.signup("carol").await;
    let nobody = unique("nobody");
    for (token, with, status, code) in [
        (
            &carol.token,
            &alice.username,
            StatusCode::NOT_FOUND,
            "message_not_found",
        ),
        (
            &alice.token,
            &nobody,
            StatusCode::NOT_FOUND,
            "user_not_found",
        ),
        (
            &alice.token,
            &alice.username,
            StatusCode::UNPROCESSABLE_ENTITY,
            "cannot_message_self",
        ),
    ] {
        let path = format!("/conversations/{with}");
        let res = app.mark_read(token, &path, &id(&direct)).await;
        assert_eq!(error_code(res, status).await, code, "{path}");
    }
}

/// `@name` is a mention of an existing user who reads the conversation, in any case, and not
/// inside a word or an address; an edit or a deletion takes its mentions back.
#[tokio::test]
async fn mentions_are_users_who_read_the_conversation() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let outsider = app.signup("out").await;
    let room = app.create_room(&alice.token, &unique("r")).await;
    app.joins(&bob.token, &room).await;

    let body = format!(
        "@{} and mail {}@example.com, x@{} @{} @{}.",
        bob.username.to_uppercase(),
        bob.username,
        bob.username,
        outsider.username,
        alice.username,
    );
    let message = app.post_to_room(&alice.token, &room, &body).await;
    // Bob once (not in the address, nor glued to a word); the outsider is not in the room,
    // alice is the sender.
    assert_eq!(
        message["mentions"],
        json!([{ "id": bob.id, "username": bob.username }])
    );
    assert_eq!(
        counts(&app.room_read_state(&bob.token, &room).await),
        (1, 1)
    );
    let history = app
        .get_json(&format!("/rooms/{room}/messages"), &bob.token)
        .await;
    assert_eq!(history["messages"][0]["mentions"], message["mentions"]);

    let id = message["id"].as_str().unwrap();
    let res = app
        .client
        .patch(app.url(&format!("/messages/{id}")))
        .bearer_auth(&alice.token)
        .json(&json!({ "body": "nobody now" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let edited: Value = res.json().await.unwrap();
    assert!(edited.get("mentions").is_none(), "{edited}");
    // The mention is taken back when the edit's batch is finished (at once on this instance).
    assert_eq!(
        counts(&app.room_read_state(&bob.token, &room).await),
        (1, 0)
    );

    let again = app
        .post_to_room(&alice.token, &room, &format!("hey @{}", bob.username))
        .await;
    assert_eq!(
        counts(&app.room_read_state(&bob.token, &room).await),
        (2, 1)
    );
    let res = app
        .client
        .delete(app.url(&format!("/messages/{}", again["id"].as_str().unwrap())))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(counts(&app.room_read_state(&bob.token, &room).await).1, 0);
}

/// A typing signal reaches the others live, at most once a second per user and conversation,
/// and is never replayed on a resume.
#[tokio::test]
async fn typing_is_live_throttled_and_never_replayed() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = a.signup("bob").await;
    let carol = a.signup("carol").await;
    let room = a.create_room(&alice.token, &unique("r")).await;
    a.joins(&bob.token, &room).await;
    let mut bobs = b.events(&bob.token, None).await;
    let ready = bobs.expect("ready").await;
    let path = format!("/rooms/{room}");

    let res = a.typing(&alice.token, &path).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["announced"], true);
    let expires = answer["expires_in_ms"].as_u64().unwrap();
    assert!(expires >= 3000, "{answer}");
    // Absorbed: the next event bob sees after the first signal is the sentinel message.
    let res = b.typing(&alice.token, &path).await;
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["announced"], false);
    a.post_to_room(&alice.token, &room, "sentinel").await;
    let typing = bobs.expect("typing").await.json();
    assert_eq!(typing["room_id"], room.as_str());
    assert_eq!(typing["user_id"], alice.id.as_str());
    assert_eq!(typing["username"], alice.username.as_str());
    assert_eq!(typing["expires_in_ms"], expires);
    let next = bobs.next().await.unwrap();
    assert_eq!(
        (next.event.as_str(), next.json()["body"].clone()),
        ("message", json!("sentinel"))
    );

    // A resume from before the signal replays the message, not the signal.
    let mut resumed = a.events(&bob.token, ready.id.as_deref()).await;
    loop {
        let event = resumed.next().await.expect("the sentinel is replayed");
        assert_ne!(event.event, "typing");
        if event.event == "message" {
            assert_eq!(event.json()["body"], "sentinel");
            break;
        }
    }

    // Not a member, or typing to oneself or to nobody.
    let res = a.typing(&carol.token, &path).await;
    assert_eq!(error_code(res, StatusCode::FORBIDDEN).await, "not_a_member");
    let res = a
        .typing(&carol.token, &format!("/conversations/{}", carol.username))
        .await;
    assert_eq!(
        error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
        "cannot_message_self"
    );
    let res = a
        .typing(
            &carol.token,
            &format!("/conversations/{}", unique("nobody")),
        )
        .await;
    assert_eq!(
        error_code(res, StatusCode::NOT_FOUND).await,
        "user_not_found"
    );

    // To one user: only the two of them hear it (alice does not: the sentinel after it is
    // the next thing she sees that is not her own stream's).
    let mut alices = a.ready_events(&alice.token).await;
    let res = b
        .typing(&carol.token, &format!("/conversations/{}", bob.username))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let typing = bobs.expect("typing").await.json();
    assert_eq!(typing["user_id"], carol.id.as_str());
    assert!(typing.get("room_id").is_none());
    a.post_to_room(&bob.token, &room, "second sentinel").await;
    let next = alices.next_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(next.event, "message", "{next:?}");
}

/// Past the mentions one read takes at once (500), each conversation's mentions are counted on
/// their own: a room with many mentions does not crowd a quieter one out of its count. The
/// busy room is created first and its mentions posted first: whether the single read walks
/// the `(user, conversation, seq)` index (the busy room's key, an older id, sorts first) or
/// the order of writing, it stops inside the busy room.
#[tokio::test]
async fn many_unread_mentions_in_one_room_leave_another_rooms_count_exact() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let busy = app.create_room(&alice.token, &unique("busy")).await;
    let quiet = app.create_room(&alice.token, &unique("quiet")).await;
    for room in [&busy, &quiet] {
        app.joins(&bob.token, room).await;
    }
    let mention = format!("@{} look", bob.username);
    stream::iter(0..501)
        .for_each_concurrent(16, |_| {
            app.post_to_room(&alice.token, &busy, &mention).map(drop)
        })
        .await;
    for _ in 0..3 {
        app.post_to_room(&alice.token, &quiet, &mention).await;
    }

    assert_eq!(
        counts(&app.room_read_state(&bob.token, &quiet).await),
        (3, 3)
    );
    assert_eq!(
        counts(&app.room_read_state(&bob.token, &busy).await),
        (100, 100),
        "counted up to the cap"
    );
}
