//! The delivery path's promises that need more than one process, or a crash: a batch stored
//! by an instance killed before announcing it, a membership change nobody announced, history
//! in the order posts were acknowledged across instances, and a resume across a lost log.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    ChildApp, ScratchMongo, ScratchRedis, TestApp, eventually, reconciled_past, spawn_app_with,
};

/// How many messages `GET /stats/summary` counts, as `token`'s owner sees it on `app`.
async fn counted(app: &TestApp, token: &str) -> i64 {
    let summary: Value = app.get_json("/stats/summary", token).await;
    summary["messages"].as_i64().unwrap()
}

/// A message stored through an instance that was killed (SIGKILL) after the write and before
/// its event was appended: the surviving instance's reconciler announces it, once, to the
/// streams of its audience, and counts it, once.
#[tokio::test]
async fn a_message_whose_instance_was_killed_before_announcing_it_is_announced_and_counted_once() {
    let mongo = ScratchMongo::start().await;
    let redis = ScratchRedis::start().await;
    let survivor = spawn_app_with(&[
        ("MONGODB_URI", mongo.uri.clone()),
        ("REDIS_URL", redis.url()),
        ("MONGODB_TIMEOUT_MS", "1000".to_owned()),
    ])
    .await;
    let mut doomed = ChildApp::start(&survivor).await;
    let alice = survivor.signup("alice").await;
    let bob = survivor.signup("bob").await;
    let mut bobs = survivor.ready_events(&bob.token).await;

    // Redis stops answering while the post is in the store: the message is written, its event
    // cannot be appended, and the instance dies then.
    let store = chat_server::store::Store::connect(&survivor.settings)
        .await
        .unwrap();
    let messages = store
        .database()
        .collection::<mongodb::bson::Document>("messages");
    // Alice's presence score is the time of her last authenticated request: it moves when
    // the post's token is checked.
    let online = format!("{}online", survivor.settings.redis_key_prefix);
    let conn = redis.connection().await;
    let seen = |conn: redis::aio::MultiplexedConnection| {
        let (online, alice) = (online.clone(), alice.id.clone());
        async move {
            redis::cmd("ZSCORE")
                .arg(online)
                .arg(alice)
                .query_async::<Option<f64>>(&mut conn.clone())
                .await
                .unwrap()
                .unwrap_or(0.0)
        }
    };
    let before = seen(conn.clone()).await;
    mongo.pause();
    let client = reqwest::Client::new();
    let post = tokio::spawn(
        client
            .post(format!("{}/messages", doomed.address))
            .bearer_auth(&alice.token)
            .json(&json!({"to": bob.username, "body": "my last words"}))
            .send(),
    );
    // The post waits in the paused store once its token was checked; Redis stops next.
    let checked = eventually(Duration::from_secs(10), || {
        let score = seen(conn.clone());
        async move { score.await > before }
    })
    .await;
    assert!(checked, "the post's token was checked");
    redis.pause();
    mongo.resume();
    let stored = eventually(Duration::from_secs(10), || async {
        messages
            .find_one(mongodb::bson::doc! { "body": { "$eq": "my last words" } })
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(stored, "the message was written");
    doomed.kill();
    redis.resume();
    let _ = post.await;

    let event = loop {
        match bobs.next_within(Duration::from_secs(30)).await {
            Some(event) if event.event == "message" => break event,
            Some(_) => {}
            None => panic!("the message of the killed instance was never announced"),
        }
    };
    assert_eq!(event.json()["body"], "my last words");
    let at = chrono::DateTime::parse_from_rfc3339(event.json()["created_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    reconciled_past(&survivor, at).await;
    // Once: the next message on the stream is one posted after the reconciler went past it.
    survivor
        .post_to_user(&alice.token, &bob.username, "next")
        .await;
    assert_eq!(bobs.expect("message").await.json()["body"], "next");
    assert_eq!(counted(&survivor, &alice.token).await, 2);
}

/// A join stored by an instance that never announced it (it died right after the write):
/// the reconciler announces it, and the member's streams follow it from then on.
#[tokio::test]
async fn a_membership_change_nobody_announced_is_announced_by_the_reconciler() {
    let app = spawn_app_with(&[("MONGODB_TIMEOUT_MS", "500".to_owned())]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app
        .create_room(&alice.token, &crate::helpers::unique("r"))
        .await;
    let mut bobs = app.ready_events(&bob.token).await;
    let mut alices = app.ready_events(&alice.token).await;

    let store = chat_server::store::Store::connect(&app.settings)
        .await
        .unwrap();
    let record = store
        .find_room(chat_server::domain::RoomId::parse(&room).unwrap())
        .await
        .unwrap()
        .unwrap();
    let change = store
        .set_member(
            &record,
            chat_server::domain::UserId::parse(&bob.id).unwrap(),
            &bob.username,
            true,
        )
        .await
        .unwrap()
        .expect("bob was not a member");

    for stream in [&mut alices, &mut bobs] {
        let joined = stream.expect("room_member").await.json();
        assert_eq!(joined["user_id"], bob.id.as_str());
        assert_eq!(joined["action"], "joined");
    }
    reconciled_past(&app, change.at_ms).await;
    // Bob's stream follows the join: a message in the room reaches him, and the join was
    // announced once (the next event is that message).
    app.post_to_room(&alice.token, &room, "welcome").await;
    let next = bobs.next().await.unwrap();
    assert_eq!(next.event, "message");
    assert_eq!(next.json()["body"], "welcome");
}

/// Posts that follow one another (each sent once the one before was acknowledged) through
/// three instances in processes of their own come back from history, and reach a stream, in
/// that order. (Message ids made by each process used to sort by a random part within a
/// second: thousands of pairs came back reversed.)
#[tokio::test]
async fn posts_acknowledged_one_after_another_on_three_processes_keep_their_order() {
    let app = spawn_app_with(&[]).await;
    let others = [ChildApp::start(&app).await, ChildApp::start(&app).await];
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;
    let client = reqwest::Client::new();
    let addresses: Vec<&str> = std::iter::once(app.address.as_str())
        .chain(others.iter().map(|o| o.address.as_str()))
        .collect();
    let mut sent = Vec::new();
    for n in 0..60 {
        let res = client
            .post(format!("{}/messages", addresses[n % 3]))
            .bearer_auth(&alice.token)
            .json(&json!({"room_id": general, "body": format!("m{n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        sent.push(format!("m{n}"));
    }
    let delivered: Vec<String> = stream
        .messages(60)
        .await
        .iter()
        .map(|e| e.json()["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, sent, "the stream's order");
    let page: Value = app
        .get_json(&format!("/rooms/{general}/messages?limit=60"), &alice.token)
        .await;
    let mut history: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    history.reverse();
    assert_eq!(history, sent, "history's order");
}

/// Posts made at once through one instance: its stream and history agree exactly, whatever
/// the group commit made of them.
#[tokio::test]
async fn posts_made_at_once_through_one_instance_come_in_history_order() {
    let app = spawn_app_with(&[]).await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;
    let app = &app;
    let posts = (0..40).map(|n| {
        let (token, general) = (&alice.token, &general);
        async move { app.post_to_room(token, general, &format!("m{n}")).await }
    });
    futures_util::future::join_all(posts).await;
    let delivered: Vec<Value> = stream
        .messages(40)
        .await
        .iter()
        .map(|e| e.json()["id"].clone())
        .collect();
    let page: Value = app
        .get_json(&format!("/rooms/{general}/messages?limit=40"), &alice.token)
        .await;
    let mut history: Vec<Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    history.reverse();
    assert_eq!(delivered, history);
}

/// Redis loses its data, and a client resumes at once, before the instance's tailer noticed:
/// it is told to resync (never a silent gap), and gets what is posted next.
#[tokio::test]
async fn a_resume_right_after_the_log_was_lost_is_told_to_resync() {
    let redis = ScratchRedis::start().await;
    let app = spawn_app_with(&[("REDIS_URL", redis.url())]).await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;
    app.post_to_room(&alice.token, &general, "before").await;
    stream.messages(1).await;
    let last = stream.last_id.clone().unwrap();

    // What a restart without persistence leaves: nothing (the tailer waits on its read).
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    // The token's revocation check and presence went with it; the token itself is still good.
    let mut resumed = app.events(&alice.token, Some(&last)).await;
    let first = resumed.next().await.unwrap();
    assert_eq!(first.event, "resync", "{first:?}");
    assert_eq!(resumed.next().await.unwrap().event, "ready");
    app.post_to_room(&alice.token, &general, "after").await;
    assert_eq!(resumed.messages(1).await[0].json()["body"], "after");
}

/// A join announced and finished, then a leave stored and never announced, in the same
/// second: the finished join must not stand in for the leave when the reconciler counts what
/// its window holds (a membership document is overwritten by its next change).
#[tokio::test]
async fn a_finished_change_does_not_hide_the_unannounced_change_that_superseded_it() {
    let app = spawn_app_with(&[("MONGODB_TIMEOUT_MS", "500".to_owned())]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app
        .create_room(&alice.token, &crate::helpers::unique("r"))
        .await;
    let mut alices = app.ready_events(&alice.token).await;
    app.joins(&bob.token, &room).await;
    assert_eq!(
        alices.expect("room_member").await.json()["action"],
        "joined"
    );

    let store = chat_server::store::Store::connect(&app.settings)
        .await
        .unwrap();
    let record = store
        .find_room(chat_server::domain::RoomId::parse(&room).unwrap())
        .await
        .unwrap()
        .unwrap();
    let user = chat_server::domain::UserId::parse(&bob.id).unwrap();
    let left = store
        .set_member(&record, user, &bob.username, false)
        .await
        .unwrap()
        .expect("bob was a member");
    let event = alices.expect("room_member").await.json();
    assert_eq!(event["user_id"], bob.id.as_str());
    assert_eq!(event["action"], "left");
    reconciled_past(&app, left.at_ms).await;
}

/// Messages written before batches existed (older versions, loaded history) have no batch:
/// history reads them as ever, and the reconciler passes them by.
#[tokio::test]
async fn messages_without_a_batch_are_read_as_ever() {
    let app = spawn_app_with(&[("MONGODB_TIMEOUT_MS", "500".to_owned())]).await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let store = chat_server::store::Store::connect(&app.settings)
        .await
        .unwrap();
    let id = mongodb::bson::oid::ObjectId::new();
    let now = mongodb::bson::DateTime::now();
    store
        .database()
        .collection::<mongodb::bson::Document>("messages")
        .insert_one(mongodb::bson::doc! {
            "_id": id, "seq": id.to_hex(), "conversation": format!("r:{general}"),
            "sender_id": &alice.id, "sender_name": &alice.username,
            "room_id": &general, "recipient_id": null, "recipient_name": null,
            "body": "from an older version", "created_at": now, "at_ms": now.timestamp_millis(),
        })
        .await
        .unwrap();
    let res = app
        .get_authed(&format!("/rooms/{general}/messages"), &alice.token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page: Value = res.json().await.unwrap();
    assert_eq!(page["messages"][0]["body"], "from an older version");
    reconciled_past(&app, now.timestamp_millis()).await;
    let summary: Value = app.get_json("/stats/summary", &alice.token).await;
    assert_eq!(summary["messages"], 0, "not counted by the reconciler");
}
