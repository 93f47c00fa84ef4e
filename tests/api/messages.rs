use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use chat_server::domain::{MessageBody, RoomId, UserId};
use chat_server::store::{NewMessage, Store, Target, Written};

use crate::helpers::{ScratchMongo, TestApp, error_code, spawn_app, spawn_app_with, unique};

/// Stores a post as the group commit does, without announcing or finishing it: what a first
/// attempt leaves behind when its instance dies right after the write.
pub async fn stored_unannounced(
    store: &Store,
    new: NewMessage,
) -> chat_server::store::MessageRecord {
    let mut batch = store.insert_batch(vec![new]).await;
    match batch.written.remove(0) {
        Written::Stored(record) => record,
        other => panic!("a new post is stored: {other:?}"),
    }
}

#[tokio::test]
async fn a_room_message_is_stored_and_returned_with_its_sender_and_time() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let body = "  <img src=x onerror=alert(1)> héllo 🙂\nsecond line  ";
    let message = app.post_to_room(&alice.token, &general, body).await;
    assert_eq!(
        message["body"],
        "<img src=x onerror=alert(1)> héllo 🙂\nsecond line"
    );
    assert_eq!(message["sender"]["id"], alice.id.as_str());
    assert_eq!(message["sender"]["username"], alice.username.as_str());
    assert_eq!(message["room_id"], general.as_str());
    assert!(message["created_at"].is_string());
    assert!(message["event_id"].is_string());
    assert_eq!(message["id"].as_str().unwrap().len(), 24);
}

#[tokio::test]
async fn history_is_newest_first_and_pages_with_a_cursor() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    for i in 0..7 {
        app.post_to_room(&alice.token, &general, &format!("m{i}"))
            .await;
    }
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    let mut pages = 0;
    loop {
        let cursor = before
            .as_ref()
            .map(|b| format!("&before={b}"))
            .unwrap_or_default();
        let res = app
            .get_authed(
                &format!("/rooms/{general}/messages?limit=3{cursor}"),
                &alice.token,
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let page: Value = res.json().await.unwrap();
        pages += 1;
        for m in page["messages"].as_array().unwrap() {
            seen.push(m["body"].as_str().unwrap().to_owned());
        }
        match page["next_before"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["m6", "m5", "m4", "m3", "m2", "m1", "m0"]);
}

#[tokio::test]
async fn history_parameters_are_checked() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    for (query, status, code) in [
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit"),
        (
            "limit=201",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        ("limit=many", StatusCode::BAD_REQUEST, "invalid_query"),
        (
            "before=yesterday",
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
    ] {
        let res = app
            .get_authed(&format!("/rooms/{general}/messages?{query}"), &alice.token)
            .await;
        assert_eq!(error_code(res, status).await, code, "{query}");
    }
}

#[tokio::test]
async fn a_direct_conversation_is_visible_to_its_two_users_only() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let eve = app.signup("eve").await;
    let sent = app
        .post_to_user(&alice.token, &bob.username.to_uppercase(), "psst")
        .await;
    assert_eq!(sent["to"]["username"], bob.username.as_str());
    assert!(sent.get("room_id").is_none());
    app.post_to_user(&bob.token, &alice.username, "hi back")
        .await;

    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        let page: Value = app
            .get_json(
                &format!("/conversations/{}/messages", other.username),
                &me.token,
            )
            .await;
        let bodies: Vec<&str> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect();
        assert_eq!(bodies, ["hi back", "psst"]);
    }
    // Eve can only ever read her own conversations.
    for other in [&alice, &bob] {
        let page: Value = app
            .get_json(
                &format!("/conversations/{}/messages", other.username),
                &eve.token,
            )
            .await;
        assert_eq!(page["messages"], json!([]));
    }
    let res = app
        .get_authed("/conversations/nobody-at-all/messages", &alice.token)
        .await;
    assert_eq!(
        error_code(res, StatusCode::NOT_FOUND).await,
        "user_not_found"
    );
    // As posting, marking read and typing say: a conversation is with someone else.
    let own = format!("/conversations/{}/messages", alice.username);
    let res = app.get_authed(&own, &alice.token).await;
    assert_eq!(
        error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
        "cannot_message_self"
    );
}

#[tokio::test]
async fn each_user_lists_their_own_conversations_most_recent_first() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let dave = app.signup("dave").await;
    let general = app.general(&alice.token).await;
    app.post_to_room(&alice.token, &general, "rooms are not conversations")
        .await;
    app.post_to_user(&alice.token, &bob.username, "one").await;
    app.post_to_user(&bob.token, &alice.username, "two").await;
    let latest = app
        .post_to_user(&carol.token, &alice.username, "three")
        .await;

    let list = |token: String| {
        let app = &app;
        async move {
            let res = app.get_authed("/conversations", &token).await;
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<Value>().await.unwrap()["conversations"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let mine = list(alice.token.clone()).await;
    let summary: Vec<(&str, i64, &str)> = mine
        .iter()
        .map(|c| {
            (
                c["with"]["username"].as_str().unwrap(),
                c["messages"].as_i64().unwrap(),
                c["last_message"]["body"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (carol.username.as_str(), 1, "three"),
            (bob.username.as_str(), 2, "two")
        ]
    );
    assert_eq!(mine[0]["with"]["id"], carol.id.as_str());
    let mut stored = latest.clone();
    stored.as_object_mut().unwrap().remove("event_id");
    assert_eq!(mine[0]["last_message"], stored);
    assert_eq!(mine[0]["last_activity"], latest["created_at"]);

    // Nobody sees anyone else's.
    let bobs = list(bob.token.clone()).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["with"]["username"], alice.username.as_str());
    assert_eq!(list(dave.token.clone()).await, Vec::<Value>::new());

    // `limit` keeps the most recent ones, and is checked.
    let res = app.get_authed("/conversations?limit=1", &alice.token).await;
    let one: Value = res.json().await.unwrap();
    assert_eq!(one["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(
        one["conversations"][0]["with"]["username"],
        carol.username.as_str()
    );
    for (query, status, code) in [
        ("limit=0", StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit"),
        (
            "limit=101",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        ("limit=many", StatusCode::BAD_REQUEST, "invalid_query"),
    ] {
        let res = app
            .get_authed(&format!("/conversations?{query}"), &alice.token)
            .await;
        assert_eq!(error_code(res, status).await, code, "{query}");
    }
    let res = app.get("/conversations").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // A message stored through another instance shows up too (its counters are written
    // behind, within a quarter of a second).
    let sibling = app.spawn_sibling().await;
    sibling
        .post_to_user(&dave.token, &alice.username, "four")
        .await;
    let shows = crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
        let mine = list(alice.token.clone()).await;
        mine[0]["with"]["username"] == dave.username.as_str()
            && mine[0]["last_message"]["body"] == "four"
    })
    .await;
    assert!(shows, "the conversation with Dave comes first");
}

#[tokio::test]
async fn invalid_messages_are_rejected_with_clear_codes() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let cases = [
        (
            json!({"room_id": general, "body": "   \n\t "}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_message",
        ),
        (
            json!({"room_id": general, "body": "x".repeat(4001)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "message_too_long",
        ),
        (
            json!({"body": "to nobody"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_target",
        ),
        (
            json!({"room_id": general, "to": "bob", "body": "both"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_target",
        ),
        (
            json!({"to": alice.username, "body": "me"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "cannot_message_self",
        ),
        (
            json!({"to": "no-such-user", "body": "x"}),
            StatusCode::NOT_FOUND,
            "user_not_found",
        ),
        (
            json!({"room_id": "bogus", "body": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_room_id",
        ),
        (
            json!({"room_id": {"$ne": null}, "body": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"room_id": general, "body": "x", "sender": "bob"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (message, status, code) in cases {
        let res = app.send_message(&alice.token, &message).await;
        assert_eq!(error_code(res, status).await, code, "{message}");
    }
    let ok = app
        .post_to_room(&alice.token, &general, &"🙂".repeat(4000))
        .await;
    assert_eq!(ok["body"].as_str().unwrap().chars().count(), 4000);
    let page: Value = app
        .get_json(&format!("/rooms/{general}/messages"), &alice.token)
        .await;
    assert_eq!(
        page["messages"].as_array().unwrap().len(),
        1,
        "nothing else was stored"
    );
}

#[tokio::test]
async fn an_idempotency_key_stores_a_retried_message_once() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;
    let send = |key: &'static str, body: &'static str| {
        app.post("/messages")
            .bearer_auth(&alice.token)
            .header("idempotency-key", key)
            .json(&json!({"room_id": general, "body": body}))
            .send()
    };
    let first = send("k-1", "once").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();

    assert!(first["event_id"].is_string(), "{first}");

    let retries = futures_util::future::join_all((0..5).map(|_| send("k-1", "once"))).await;
    for retry in retries {
        let retry = retry.unwrap();
        assert_eq!(retry.status(), StatusCode::OK);
        let retry: Value = retry.json().await.unwrap();
        assert_eq!(retry["id"], first["id"]);
        // The retry points at the event of the first attempt; it announced nothing new.
        assert_eq!(retry["event_id"], first["event_id"]);
    }
    let event = stream.expect("message").await;
    assert_eq!(event.json()["id"], first["id"]);
    let res = send("k-1", "something else").await.unwrap();
    assert_eq!(
        error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
        "idempotency_key_reused"
    );

    // Concurrent first attempts with a new key also converge on one message.
    let racing = futures_util::future::join_all((0..6).map(|_| send("k-2", "racing"))).await;
    let mut ids = Vec::new();
    let mut event_ids = Vec::new();
    for res in racing {
        let res = res.unwrap();
        assert!(res.status() == StatusCode::CREATED || res.status() == StatusCode::OK);
        let res: Value = res.json().await.unwrap();
        ids.push(res["id"].clone());
        event_ids.push(res["event_id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    event_ids.dedup();
    assert_eq!(event_ids.len(), 1, "one event for all: {event_ids:?}");
    // Announced once, whichever attempt announced it: the next message on the stream is the
    // one posted after them (the log keeps order).
    let event = stream.expect("message").await;
    assert_eq!(event.json()["id"], ids[0]);
    assert_eq!(event.id.as_deref(), event_ids[0].as_str());
    app.post_to_room(&alice.token, &general, "next").await;
    assert_eq!(stream.expect("message").await.json()["body"], "next");

    let page: Value = app
        .get_json(&format!("/rooms/{general}/messages"), &alice.token)
        .await;
    // "once", "racing" and "next".
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    // Counted once each, retries included.
    let summary: Value = app.get_json("/stats/summary", &alice.token).await;
    assert_eq!(summary["messages"], 3);

    let res = app
        .post("/messages")
        .bearer_auth(&alice.token)
        .header("idempotency-key", "x".repeat(129))
        .json(&json!({"room_id": general, "body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::BAD_REQUEST).await,
        "invalid_idempotency_key"
    );
}

/// A first attempt can store its message and never announce it: its write outlived the
/// request's time bound (503, outcome unknown), or its instance died before appending the
/// event. The retry with the same key, which the 503 asks for, finishes its batch then (the
/// reconciler would, a little later), and once: a message that only history knows would reach
/// the others in the conversation only when they reload.
#[tokio::test]
async fn a_retry_announces_a_message_its_first_attempt_stored_but_never_announced() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let mut bobs = app.ready_events(&bob.token).await;
    // The first attempt, up to where the handler would announce it.
    let store = Store::connect(&app.settings).await.unwrap();
    let first = stored_unannounced(
        &store,
        NewMessage {
            sender: UserId::parse(&alice.id).unwrap(),
            sender_name: alice.username.clone(),
            target: Target::Direct {
                user: UserId::parse(&bob.id).unwrap(),
                username: bob.username.clone(),
            },
            body: MessageBody::parse("stored, not announced").unwrap(),
            idempotency_key: Some("k-1".to_owned()),
            mentions: Vec::new(),
        },
    )
    .await;

    let retry = || {
        app.post("/messages")
            .bearer_auth(&alice.token)
            .header("idempotency-key", "k-1")
            .json(&json!({"to": bob.username, "body": "stored, not announced"}))
            .send()
    };
    let res = retry().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let replayed: Value = res.json().await.unwrap();
    assert_eq!(replayed["id"], first.id.to_hex());
    let event = bobs.expect("message").await;
    assert_eq!(event.json()["id"], replayed["id"]);
    assert_eq!(event.json()["body"], "stored, not announced");
    assert_eq!(replayed["event_id"].as_str(), event.id.as_deref());

    // Announced once: later retries give the same event id and announce nothing (the log
    // keeps order, so the next message on the stream is the one posted after them).
    let again: Value = retry().await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], replayed["id"]);
    assert_eq!(again["event_id"], replayed["event_id"]);
    app.post_to_user(&alice.token, &bob.username, "next").await;
    assert_eq!(bobs.expect("message").await.json()["body"], "next");
}

/// A sender whose post got a 503 may leave the room before retrying. The retry still gets
/// its message, stored by the first attempt, and announces it; nothing else gets past the
/// membership check.
#[tokio::test]
async fn a_retry_after_leaving_the_room_still_answers_and_announces_its_message() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.create_room(&alice.token, &unique("r")).await;
    app.joins(&bob.token, &room).await;
    let mut bobs = app.ready_events(&bob.token).await;
    let store = Store::connect(&app.settings).await.unwrap();
    let first = stored_unannounced(
        &store,
        NewMessage {
            sender: UserId::parse(&alice.id).unwrap(),
            sender_name: alice.username.clone(),
            target: Target::Room(RoomId::parse(&room).unwrap()),
            body: MessageBody::parse("before I left").unwrap(),
            idempotency_key: Some("k-1".to_owned()),
            mentions: Vec::new(),
        },
    )
    .await;
    assert_eq!(
        app.leave_room(&alice.token, &room).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(bobs.expect("room_member").await.json()["action"], "left");

    let post = |key: Option<&'static str>, body: &'static str| {
        let mut request = app.post("/messages").bearer_auth(&alice.token);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.json(&json!({"room_id": room, "body": body})).send()
    };
    let res = post(Some("k-1"), "before I left").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let replayed: Value = res.json().await.unwrap();
    assert_eq!(replayed["id"], first.id.to_hex());
    let event = bobs.expect("message").await;
    assert_eq!(event.json()["id"], replayed["id"]);

    // Anything that is not a retry of that post is refused as before.
    for (key, body) in [
        (None, "before I left"),
        (Some("k-2"), "before I left"),
        (Some("k-1"), "something else"),
    ] {
        let res = post(key, body).await.unwrap();
        assert_eq!(
            error_code(res, StatusCode::FORBIDDEN).await,
            "not_a_member",
            "{key:?} {body}"
        );
    }
    let page: Value = app
        .get_json(&format!("/rooms/{room}/messages"), &bob.token)
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
}

#[tokio::test]
async fn posting_while_mongodb_is_down_is_503_and_stores_nothing() {
    let mut mongo = ScratchMongo::start().await;
    let app = mongo.app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;
    // A first message, so the room is known and the next post reaches the (group) insert.
    app.post_to_room(&alice.token, &general, "stored").await;
    stream.expect("message").await;
    mongo.kill();
    let res = app
        .send_message(&alice.token, &json!({"room_id": general, "body": "lost?"}))
        .await;
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(
        error_code(res, StatusCode::SERVICE_UNAVAILABLE).await,
        "database_unavailable"
    );
    // Nothing was announced, and the stream stays open.
    stream
        .assert_no_message_within(std::time::Duration::from_millis(500))
        .await;
    assert!(!stream.ended);
}

#[tokio::test]
async fn a_store_that_hangs_is_503_for_posts_and_stream_opens_within_the_bound() {
    let mongo = ScratchMongo::start().await;
    let app = mongo.app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    app.post_to_room(&alice.token, &general, "stored").await;

    mongo.pause();
    // Both wait on a store call bounded by twice MONGODB_TIMEOUT_MS; a hang is a failure here.
    let bound = std::time::Duration::from_secs(10);
    let message = json!({"room_id": general, "body": "hung?"});
    let post = app.send_message(&alice.token, &message);
    let res = tokio::time::timeout(bound, post)
        .await
        .expect("a post to a hung store is answered");
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(
        error_code(res, StatusCode::SERVICE_UNAVAILABLE).await,
        "database_unavailable"
    );
    let open = app.get_fresh("/events", &alice.token).send();
    let res = tokio::time::timeout(bound, open)
        .await
        .expect("a stream opening on a hung store is answered")
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::SERVICE_UNAVAILABLE).await,
        "database_unavailable"
    );
    mongo.resume();
}

/// Posts to `room` while the store is paused, each post answered 503 (its insert's outcome
/// unknown), until one is applied all the same once the store goes on; returns its body.
/// `in_history` tells whether a body is stored. Whether the paused store applies a post depends
/// on the driver: if a heartbeat to it timed out first, the connection was dropped before the
/// insert was sent, and nothing is stored (nor to announce); hence up to three posts.
async fn post_applied_after_its_503<F, Fut>(
    mongo: &ScratchMongo,
    app: &TestApp,
    token: &str,
    room: &str,
    mut in_history: F,
) -> String
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let body = format!("late {attempt}");
        mongo.pause();
        let res = app
            .send_message(token, &json!({"room_id": room, "body": body}))
            .await;
        assert_eq!(
            error_code(res, StatusCode::SERVICE_UNAVAILABLE).await,
            "database_unavailable"
        );
        mongo.resume();
        let stored =
            crate::helpers::eventually(Duration::from_secs(10), || in_history(body.clone())).await;
        if stored {
            return body;
        }
        assert!(attempt < 3, "no post sent to the paused store was applied");
    }
}

/// A post whose insert outlives the request's bound gets a 503, its outcome unknown. When the
/// store applies it after all, the message is in history: it is then announced to the others
/// (once) and counted, as if the post had been answered.
#[tokio::test]
async fn a_post_the_store_applies_after_its_503_is_announced_and_counted() {
    let mongo = ScratchMongo::start().await;
    let app = mongo.app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let general = app.general(&alice.token).await;
    let mut bobs = app.ready_events(&bob.token).await;
    app.post_to_room(&alice.token, &general, "before").await;
    assert_eq!(bobs.messages(1).await[0].json()["body"], "before");
    let summary = || async {
        let summary: Value = app.get_json("/stats/summary", &alice.token).await;
        summary["messages"].clone()
    };
    assert_eq!(summary().await, 1);

    let history = || async {
        let page: Value = app
            .get_json(&format!("/rooms/{general}/messages"), &bob.token)
            .await;
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    // The store is paused while the post's insert waits in its socket, and goes on after the
    // 503; only a post it then applies is the case under test.
    let body =
        post_applied_after_its_503(&mongo, &app, &alice.token, &general, |body| async move {
            history().await.contains(&body)
        })
        .await;
    // Its batch has no finish record: the reconciler finishes it once it is older than the
    // write bound (2 × MONGODB_TIMEOUT_MS) and a second.
    let late = loop {
        match bobs.next_within(Duration::from_secs(30)).await {
            Some(event) if event.event == "message" => break event,
            Some(_) => {}
            None => panic!("the message stored after its 503 was not announced"),
        }
    };
    assert_eq!(late.json()["body"], body.as_str());
    assert_eq!(late.json()["sender"]["username"], alice.username.as_str());

    // Once: the next message on the stream is the one posted next.
    app.post_to_room(&alice.token, &general, "next").await;
    assert_eq!(bobs.expect("message").await.json()["body"], "next");
    assert_eq!(history().await, ["next", body.as_str(), "before"]);
    assert_eq!(summary().await, 3);
}

/// An instance that stops right after a post of unknown outcome leaves nothing behind that
/// another instance cannot finish: the message, stored after its 503, is announced to a stream
/// on the sibling by its reconciler, and counted.
#[tokio::test]
async fn a_post_of_unknown_outcome_is_finished_by_a_sibling_after_its_instance_stopped() {
    let mongo = ScratchMongo::start().await;
    let mut app = mongo.app().await;
    let sibling = app.spawn_sibling().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let general = app.general(&alice.token).await;
    let mut bobs = sibling.ready_events(&bob.token).await;
    app.post_to_room(&alice.token, &general, "before").await;
    assert_eq!(bobs.messages(1).await[0].json()["body"], "before");
    let summary = || async {
        let summary: Value = sibling.get_json("/stats/summary", &bob.token).await;
        summary["messages"].as_i64()
    };
    // Written by the first instance within a quarter of a second.
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            summary().await == Some(1)
        })
        .await
    );
    let stored = |body: String| {
        let (sibling, general, token) = (&sibling, &general, &bob.token);
        async move {
            let page: Value = sibling
                .get_json(&format!("/rooms/{general}/messages"), token)
                .await;
            page["messages"]
                .as_array()
                .is_some_and(|messages| messages.iter().any(|m| m["body"] == body.as_str()))
        }
    };

    let body = post_applied_after_its_503(&mongo, &app, &alice.token, &general, stored).await;

    app.shutdown.trigger().await;
    tokio::time::timeout(Duration::from_secs(30), &mut app.run)
        .await
        .expect("the instance stops")
        .unwrap()
        .unwrap();
    // The stopped instance's lease on the reconciler lapses first (5 s).
    let late = loop {
        match bobs.next_within(Duration::from_secs(30)).await {
            Some(event) if event.event == "message" => break event,
            Some(_) => {}
            None => panic!("the message stored after its 503 was not announced"),
        }
    };
    assert_eq!(late.json()["body"], body.as_str());
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            summary().await == Some(2)
        })
        .await,
        "counted once: {:?}",
        summary().await
    );
}

/// A keyed post stored by an attempt that got no answer can be finished by its retry and by
/// the reconciler: counted once either way, and the key always gives the same message (a
/// reused key is refused).
#[tokio::test]
async fn a_keyed_post_finished_by_its_retry_and_by_the_reconciler_is_counted_once() {
    let app = spawn_app_with(&[("MONGODB_TIMEOUT_MS", "500".to_owned())]).await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let store = Store::connect(&app.settings).await.unwrap();
    let new = |key: Option<&str>, body: &str| NewMessage {
        sender: UserId::parse(&alice.id).unwrap(),
        sender_name: alice.username.clone(),
        target: Target::Room(RoomId::parse(&general).unwrap()),
        body: MessageBody::parse(body).unwrap(),
        idempotency_key: key.map(str::to_owned),
        mentions: Vec::new(),
    };
    let first = stored_unannounced(&store, new(Some("k-1"), "keyed")).await;
    assert!(!first.batch.is_empty());
    // The store gives the key's message back, and refuses the key for another one.
    let mut again = store
        .insert_batch(vec![new(Some("k-1"), "keyed"), new(Some("k-1"), "other")])
        .await;
    assert!(
        matches!(&again.written[0], Written::Replayed(m) if m.id == first.id && m.batch == first.batch)
    );
    assert!(matches!(again.written.remove(1), Written::KeyReused));

    // The retry finishes the batch; the reconciler then finds it finished.
    let res = app
        .post("/messages")
        .bearer_auth(&alice.token)
        .header("idempotency-key", "k-1")
        .json(&json!({"room_id": general, "body": "keyed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let after = app.post_to_room(&alice.token, &general, "after").await;
    assert!(after["event_id"].is_string());
    // Once the reconciler has walked past both batches, nothing more will count them.
    crate::helpers::reconciled_past(&app, first.at_ms + 1).await;
    let summary: Value = app.get_json("/stats/summary", &alice.token).await;
    assert_eq!(summary["messages"], 2);
}

/// Concurrent posts are written together (group commit), yet each is acknowledged, stored in
/// history and counted exactly once.
#[tokio::test]
async fn concurrent_posts_are_each_stored_and_counted_once() {
    let app = spawn_app().await;
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(app.signup(&format!("burst{i}-")).await);
    }
    let general = app.general(&users[0].token).await;
    let app = &app;
    let posts = (0..120).map(|i| {
        let user = &users[i % 4];
        let body = json!({"room_id": general, "body": format!("m{i}")});
        async move { app.send_message(&user.token, &body).await }
    });
    let mut ids = std::collections::HashSet::new();
    for res in futures_util::future::join_all(posts).await {
        assert_eq!(res.status(), StatusCode::CREATED);
        let message: Value = res.json().await.unwrap();
        ids.insert(message["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 120);

    let mut stored = std::collections::HashSet::new();
    let mut before: Option<String> = None;
    loop {
        let cursor = before.map(|b| format!("&before={b}")).unwrap_or_default();
        let page: Value = app
            .get_json(
                &format!("/rooms/{general}/messages?limit=50{cursor}"),
                &users[0].token,
            )
            .await;
        for m in page["messages"].as_array().unwrap() {
            assert!(
                stored.insert(m["id"].as_str().unwrap().to_owned()),
                "listed twice"
            );
        }
        match page["next_before"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(stored, ids);

    let stats: Value = app.get_json("/stats/most-active", &users[0].token).await;
    let counts: Vec<i64> = stats["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [30, 30, 30, 30]);
    let summary: Value = app.get_json("/stats/summary", &users[0].token).await;
    assert_eq!(summary["messages"], 120);
}
