//! Edits, deletions and reactions: live on every stream of the audience (and on a resume),
//! checked on every path.

use futures_util::future::join_all;
use mongodb::bson::{Document, doc, oid::ObjectId};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, reconciled_past, spawn_app, unique};

impl TestApp {
    pub async fn edit(&self, token: &str, id: &str, body: &str) -> Response {
        self.client
            .patch(self.url(&format!("/messages/{id}")))
            .bearer_auth(token)
            .json(&json!({ "body": body }))
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, token: &str, id: &str) -> Response {
        self.client
            .delete(self.url(&format!("/messages/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `PUT` (`add`) or `DELETE` a reaction; `emoji` goes in the path as it is (reqwest
    /// percent-encodes it).
    pub async fn react(&self, token: &str, id: &str, emoji: &str, add: bool) -> Response {
        let url = self.url(&format!("/messages/{id}/reactions/{emoji}"));
        let request = if add {
            self.client.put(url)
        } else {
            self.client.delete(url)
        };
        request.bearer_auth(token).send().await.unwrap()
    }

    async fn raw_message(&self, id: &str) -> Document {
        let client = mongodb::Client::with_uri_str(&self.settings.mongodb_uri)
            .await
            .unwrap();
        client
            .database(&self.settings.mongodb_database)
            .collection::<Document>("messages")
            .find_one(doc! { "_id": ObjectId::parse_str(id).unwrap() })
            .await
            .unwrap()
            .unwrap()
    }
}

fn id(message: &Value) -> String {
    message["id"].as_str().unwrap().to_owned()
}

/// An edit and a deletion made on one instance reach streams served by another at once, and a
/// stream resuming from before them; history shows the current text, then the tombstone, and
/// the deleted text is gone from the database.
#[tokio::test]
async fn edits_and_deletions_reach_every_stream_and_the_history() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = a.signup("bob").await;
    let room = a.create_room(&alice.token, &unique("r")).await;
    a.joins(&bob.token, &room).await;
    let mut bobs = b.ready_events(&bob.token).await;
    let message = a.post_to_room(&alice.token, &room, "helo wrold").await;
    let before_changes = bobs.expect("message").await;

    let res = a.edit(&alice.token, &id(&message), "  hello world  ").await;
    assert_eq!(res.status(), StatusCode::OK);
    let edited: Value = res.json().await.unwrap();
    assert_eq!(edited["body"], "hello world");
    assert_eq!(edited["id"], message["id"]);
    assert_eq!(edited["created_at"], message["created_at"]);
    assert!(edited["edited_at"].is_string());
    let live = bobs.expect("message_edited").await.json();
    assert_eq!(live["body"], "hello world");
    assert_eq!(live["edited_at"], edited["edited_at"]);
    let history = b
        .get_json(&format!("/rooms/{room}/messages"), &bob.token)
        .await;
    assert_eq!(history["messages"][0]["body"], "hello world");
    assert_eq!(history["messages"][0]["edited_at"], edited["edited_at"]);

    let res = b.delete(&alice.token, &id(&message)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tombstone: Value = res.json().await.unwrap();
    assert_eq!(tombstone["body"], "");
    assert_eq!(tombstone["deleted_by"], alice.id.as_str());
    assert!(tombstone["deleted_at"].is_string());
    let live = bobs.expect("message_deleted").await.json();
    assert_eq!(live["id"], message["id"]);
    assert_eq!(live["body"], "");
    assert_eq!(live["deleted_at"], tombstone["deleted_at"]);
    let history = a
        .get_json(&format!("/rooms/{room}/messages"), &bob.token)
        .await;
    assert_eq!(history["messages"][0]["deleted_by"], alice.id.as_str());
    assert_eq!(history["messages"][0]["body"], "");
    let stored = a.raw_message(&id(&message)).await;
    assert!(
        stored.get("body").is_none(),
        "the text is still stored: {stored}"
    );
    // Deleting again answers the same tombstone and announces nothing new; editing is refused.
    let res = a.delete(&alice.token, &id(&message)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["deleted_at"], tombstone["deleted_at"]);
    let res = a.edit(&alice.token, &id(&message), "back").await;
    assert_eq!(
        error_code(res, StatusCode::CONFLICT).await,
        "message_deleted"
    );
    a.post_to_room(&alice.token, &room, "sentinel").await;
    let next = bobs.next().await.unwrap();
    assert_eq!(
        (next.event.as_str(), next.json()["body"].clone()),
        ("message", json!("sentinel"))
    );

    // A stream resuming from before the changes gets both, in order, once.
    let mut resumed = a.events(&bob.token, before_changes.id.as_deref()).await;
    let kinds: Vec<String> = {
        let mut kinds = Vec::new();
        while kinds.last().map(String::as_str) != Some("message") {
            let event = resumed.next().await.expect("the changes are replayed");
            if event.event != "ready" {
                kinds.push(event.event);
            }
        }
        kinds
    };
    assert_eq!(kinds, ["message_edited", "message_deleted", "message"]);
}

/// Only the sender edits or deletes (403 for others who see the message, 404 for those who
/// cannot); bad ids and bodies are a clear 4xx; nothing is changed by a refused request.
#[tokio::test]
async fn only_the_sender_changes_a_message() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    let room = app.create_room(&alice.token, &unique("r")).await;
    app.joins(&bob.token, &room).await;
    let in_room = app.post_to_room(&alice.token, &room, "original").await;
    let direct = app
        .post_to_user(&alice.token, &bob.username, "between us")
        .await;

    for message in [&in_room, &direct] {
        let res = app.edit(&bob.token, &id(message), "mine now").await;
        assert_eq!(
            error_code(res, StatusCode::FORBIDDEN).await,
            "not_the_sender"
        );
        let res = app.delete(&bob.token, &id(message)).await;
        assert_eq!(
            error_code(res, StatusCode::FORBIDDEN).await,
            "not_the_sender"
        );
        // Carol sees neither: not in the room, not in the conversation.
        let res = app.edit(&carol.token, &id(message), "hi").await;
        assert_eq!(
            error_code(res, StatusCode::NOT_FOUND).await,
            "message_not_found"
        );
        let res = app.delete(&carol.token, &id(message)).await;
        assert_eq!(
            error_code(res, StatusCode::NOT_FOUND).await,
            "message_not_found"
        );
        let res = app.react(&carol.token, &id(message), "👍", true).await;
        assert_eq!(
            error_code(res, StatusCode::NOT_FOUND).await,
            "message_not_found"
        );
    }
    // A member who left sees the room's messages no more.
    app.leave_room(&alice.token, &room).await;
    let res = app.edit(&alice.token, &id(&in_room), "after leaving").await;
    assert_eq!(
        error_code(res, StatusCode::NOT_FOUND).await,
        "message_not_found"
    );
    app.joins(&alice.token, &room).await;

    let res = app.edit(&alice.token, "nope", "x").await;
    assert_eq!(
        error_code(res, StatusCode::BAD_REQUEST).await,
        "invalid_message_id"
    );
    let res = app.edit(&alice.token, &ObjectId::new().to_hex(), "x").await;
    assert_eq!(
        error_code(res, StatusCode::NOT_FOUND).await,
        "message_not_found"
    );
    let res = app.edit(&alice.token, &id(&in_room), "   ").await;
    assert_eq!(
        error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
        "empty_message"
    );
    let res = app
        .edit(&alice.token, &id(&in_room), &"x".repeat(4001))
        .await;
    assert_eq!(
        error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
        "message_too_long"
    );
    let res = app
        .client
        .patch(app.url(&format!("/messages/{}", id(&in_room))))
        .bearer_auth(&alice.token)
        .json(&json!({ "body": "x", "extra": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_body"
    );
    let res = app
        .client
        .patch(app.url(&format!("/messages/{}", id(&in_room))))
        .json(&json!({ "body": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Nothing above changed anything.
    let history = app
        .get_json(&format!("/rooms/{room}/messages"), &bob.token)
        .await;
    assert_eq!(history["messages"][0]["body"], "original");
    assert!(history["messages"][0].get("edited_at").is_none());
    let conversation = app
        .get_json(
            &format!("/conversations/{}/messages", alice.username),
            &bob.token,
        )
        .await;
    assert_eq!(conversation["messages"][0]["body"], "between us");
}

/// Statistics count messages posted: an edit or a deletion changes no count.
#[tokio::test]
async fn edits_and_deletions_change_no_statistics() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let message = app.post_to_room(&alice.token, &general, "counted").await;
    let path = format!("/stats/users/{}", alice.username);
    let before = app.get_json(&path, &alice.token).await;
    assert_eq!(
        app.edit(&alice.token, &id(&message), "still counted")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.delete(&alice.token, &id(&message)).await.status(),
        StatusCode::OK
    );
    app.post_to_room(&alice.token, &general, "one more").await;
    let after = app.get_json(&path, &alice.token).await;
    assert_eq!(
        after["sent"].as_i64().unwrap(),
        before["sent"].as_i64().unwrap() + 1,
        "{before} then {after}"
    );
}

/// The reactions of message `id` in room `room`'s history, as `token` reads them.
async fn reactions_of(app: &TestApp, token: &str, room: &str, id: &str) -> Value {
    let page = app
        .get_json(&format!("/rooms/{room}/messages"), token)
        .await;
    let message = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap()
        .clone();
    message.get("reactions").cloned().unwrap_or(json!([]))
}

/// One reaction per user, message and emoji, however many clicks at once on however many
/// instances; history gives the counts and the caller's own; every change is live.
#[tokio::test]
async fn reactions_are_one_per_user_message_and_emoji() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = a.signup("bob").await;
    let general = a.general(&alice.token).await;
    let message = a.post_to_room(&alice.token, &general, "react to me").await;
    let mut alices = a.ready_events(&alice.token).await;

    // Ten clicks at once, through both instances: one reaction, one event.
    let message_id = id(&message);
    let clicks = (0..10_u32).map(|n| {
        let app = if n.is_multiple_of(2) { &a } else { &b };
        app.react(&bob.token, &message_id, "👍", true)
    });
    for res in join_all(clicks).await {
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    let event = alices.expect("reaction").await.json();
    assert_eq!(event["message_id"], message["id"]);
    assert_eq!(event["emoji"], "👍");
    assert_eq!(event["user_id"], bob.id.as_str());
    assert_eq!(event["username"], bob.username.as_str());
    assert_eq!(event["added"], true);
    assert_eq!(event["room_id"], general.as_str());
    // `❤` and `❤️` are one emoji.
    assert_eq!(
        b.react(&alice.token, &id(&message), "❤", true)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        b.react(&alice.token, &id(&message), "❤️", true)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let next = alices.next().await.unwrap();
    assert_eq!(
        (next.event.as_str(), next.json()["emoji"].clone()),
        ("reaction", json!("❤️"))
    );
    a.post_to_room(&alice.token, &general, "sentinel").await;
    let next = alices.next().await.unwrap();
    assert_eq!(next.event, "message", "one event per reaction: {next:?}");

    assert_eq!(
        reactions_of(&b, &bob.token, &general, &message_id).await,
        json!([{ "emoji": "❤️", "count": 1, "me": false }, { "emoji": "👍", "count": 1, "me": true }])
    );
    assert_eq!(
        reactions_of(&a, &alice.token, &general, &message_id).await,
        json!([{ "emoji": "❤️", "count": 1, "me": true }, { "emoji": "👍", "count": 1, "me": false }])
    );

    assert_eq!(
        b.react(&bob.token, &id(&message), "👍", false)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let removed = alices.expect("reaction").await.json();
    assert_eq!(removed["added"], false);
    // Removing it again changes nothing.
    assert_eq!(
        a.react(&bob.token, &id(&message), "👍", false)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        reactions_of(&a, &bob.token, &general, &message_id).await,
        json!([{ "emoji": "❤️", "count": 1, "me": false }])
    );

    // Not one emoji; a deleted message.
    for bad in ["👍👍", "a", "%F0", "ok", "%20"] {
        let res = a.react(&bob.token, &id(&message), bad, true).await;
        assert_eq!(
            error_code(res, StatusCode::UNPROCESSABLE_ENTITY).await,
            "invalid_emoji",
            "{bad}"
        );
    }
    let res = a.react(&bob.token, "nope", "👍", true).await;
    assert_eq!(
        error_code(res, StatusCode::BAD_REQUEST).await,
        "invalid_message_id"
    );
    a.delete(&alice.token, &id(&message)).await;
    let res = a.react(&bob.token, &id(&message), "🎉", true).await;
    assert_eq!(
        error_code(res, StatusCode::CONFLICT).await,
        "message_deleted"
    );
}

/// Changes whose instance stored them and never announced them (it died, or Redis refused)
/// are announced by the reconciler, like messages: an edit, a reaction, a read marker.
#[tokio::test]
async fn changes_nobody_announced_are_announced_by_the_reconciler() {
    let app = crate::helpers::spawn_app_with(&[("MONGODB_TIMEOUT_MS", "500".to_owned())]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let general = app.general(&alice.token).await;
    let message = app.post_to_room(&alice.token, &general, "before").await;
    let mut alices = app.ready_events(&alice.token).await;
    let mut bobs = app.ready_events(&bob.token).await;

    let store = chat_server::store::Store::connect(&app.settings)
        .await
        .unwrap();
    let message_id = chat_server::domain::MessageId::parse(&id(&message)).unwrap();
    let edited = store
        .edit_message(
            message_id,
            chat_server::domain::MessageBody::parse("after").unwrap(),
            Vec::new(),
        )
        .await
        .unwrap()
        .unwrap();
    let bob_id = chat_server::domain::UserId::parse(&bob.id).unwrap();
    let reaction = store
        .set_reaction(&edited, bob_id, &bob.username, "🎉", true)
        .await
        .unwrap()
        .unwrap();
    let read = store
        .mark_read(bob_id, &edited.conversation, &edited.seq)
        .await
        .unwrap()
        .unwrap();

    let live = alices.expect("message_edited").await.json();
    assert_eq!(live["body"], "after");
    let live = alices.expect("reaction").await.json();
    assert_eq!(live["emoji"], "🎉");
    let live = bobs.expect("read").await.json();
    assert_eq!(live["last_read"], message["id"]);
    reconciled_past(&app, read.at_ms.max(reaction.at_ms)).await;
    // Announced once each: the next event is the sentinel.
    app.post_to_room(&bob.token, &general, "sentinel").await;
    let next = alices.next().await.unwrap();
    assert_eq!(
        (next.event.as_str(), next.json()["body"].clone()),
        ("message", json!("sentinel"))
    );
}

/// A post stored and never announced, next to a change that was finished at once (a
/// reaction, with its finish record): the reconciler tells the two apart and announces the
/// post, so a window whose message count matches its records by coincidence hides nothing.
#[tokio::test]
async fn a_finished_reaction_does_not_hide_an_unannounced_post_of_the_same_moment() {
    let app = crate::helpers::spawn_app_with(&[("MONGODB_TIMEOUT_MS", "500".to_owned())]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let general = app.general(&alice.token).await;
    let message = app.post_to_room(&alice.token, &general, "react here").await;
    let mut bobs = app.ready_events(&bob.token).await;
    let store = chat_server::store::Store::connect(&app.settings)
        .await
        .unwrap();
    let new = chat_server::store::NewMessage {
        sender: chat_server::domain::UserId::parse(&alice.id).unwrap(),
        sender_name: alice.username.clone(),
        target: chat_server::store::Target::Room(
            chat_server::domain::RoomId::parse(&general).unwrap(),
        ),
        body: chat_server::domain::MessageBody::parse("never announced").unwrap(),
        idempotency_key: None,
        mentions: Vec::new(),
    };
    crate::messages::stored_unannounced(&store, new).await;
    let res = app.react(&bob.token, &id(&message), "👍", true).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let mut seen = Vec::new();
    while !seen.contains(&"never announced".to_owned()) {
        let event = bobs
            .next_within(std::time::Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("the stored post was never announced; saw {seen:?}"));
        if event.event == "message" {
            seen.push(event.json()["body"].as_str().unwrap().to_owned());
        }
    }
}
