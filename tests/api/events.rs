use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    ScratchMongo, ScratchRedis, TestApp, TestUser, error_code, spawn_app, spawn_app_with, unique,
};
use crate::sse::SseEvent;

/// `(ms, seq)` of an event id `<epoch>-<ms>-<seq>`, for order checks.
fn position(event: &SseEvent) -> (u64, u64) {
    let id = event.id.as_deref().expect("every event has an id");
    let mut parts = id.splitn(3, '-').skip(1).map(|p| p.parse::<u64>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

#[tokio::test]
async fn a_message_arrives_live_on_the_stream_of_another_user() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let general = app.general(&alice.token).await;

    let mut stream = app.events(&alice.token, None).await;
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    assert!(
        stream.headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-cache")
    );
    let ready = stream.expect("ready").await;
    assert_eq!(ready.json()["username"], alice.username.as_str());

    let sent = app.post_to_room(&bob.token, &general, "hello alice").await;
    let received = stream.messages(1).await.remove(0);
    let message = received.json();
    assert_eq!(message["id"], sent["id"]);
    assert_eq!(message["body"], "hello alice");
    assert_eq!(message["sender"]["username"], bob.username.as_str());
    assert_eq!(received.id.as_deref(), sent["event_id"].as_str());
}

#[tokio::test]
async fn concurrent_posts_appended_in_one_group_each_get_the_id_of_their_own_event() {
    const POSTS: usize = 60;
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let senders = [app.signup("bob").await, app.signup("carol").await];
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;

    // Sent at once, so that most are appended to the log in groups of several.
    let posts = (0..POSTS).map(|i| {
        let (app, sender, general) = (&app, &senders[i % 2], &general);
        async move {
            let sent = app
                .post_to_room(&sender.token, general, &format!("grouped {i}"))
                .await;
            let event_id = sent["event_id"].as_str().expect("an event id").to_owned();
            (sent["id"].as_str().unwrap().to_owned(), event_id)
        }
    });
    let event_of: HashMap<String, String> = futures_util::future::join_all(posts)
        .await
        .into_iter()
        .collect();
    assert_eq!(
        event_of.values().collect::<HashSet<_>>().len(),
        POSTS,
        "every post has an event id of its own"
    );

    let received = stream.messages(POSTS).await;
    for event in &received {
        let message = event.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(
            event.id.as_deref(),
            event_of.get(&message).map(String::as_str),
            "the event carrying message {message} has the id its POST answered with"
        );
    }
    assert!(
        received
            .windows(2)
            .all(|pair| position(&pair[0]) < position(&pair[1])),
        "the stream delivers in log order"
    );
}

#[tokio::test]
async fn streams_opened_at_once_each_get_their_own_users_rooms() {
    const USERS: usize = 12;
    let app = spawn_app().await;
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(app.signup(&format!("storm{i}-")).await);
    }
    let general = app.general(&users[0].token).await;
    // Users 0, 3, 6, ... are in room 0; 1, 4, 7, ... in room 1; 2, 5, 8, ... in none.
    let rooms = [
        app.create_room(&users[0].token, &unique("even-")).await,
        app.create_room(&users[1].token, &unique("odd-")).await,
    ];
    for (i, user) in users.iter().enumerate().skip(2) {
        if i % 3 < 2 {
            app.joins(&user.token, &rooms[i % 3]).await;
        }
    }

    // Opened together, so that their rooms are read in groups of several users.
    let mut streams =
        futures_util::future::join_all(users.iter().map(|user| app.ready_events(&user.token)))
            .await;
    app.post_to_room(&users[0].token, &rooms[0], "to room 0")
        .await;
    app.post_to_room(&users[1].token, &rooms[1], "to room 1")
        .await;
    app.post_to_room(&users[2].token, &general, "to everyone")
        .await;

    for (i, stream) in streams.iter_mut().enumerate() {
        let mut bodies = Vec::new();
        loop {
            let body = stream.messages(1).await[0].json()["body"]
                .as_str()
                .unwrap()
                .to_owned();
            let last = body == "to everyone";
            bodies.push(body);
            if last {
                break;
            }
        }
        let expected = match i % 3 {
            0 => vec!["to room 0", "to everyone"],
            1 => vec!["to room 1", "to everyone"],
            _ => vec!["to everyone"],
        };
        assert_eq!(
            bodies, expected,
            "user {i} sees exactly the rooms they are in"
        );
    }
}

#[tokio::test]
async fn a_browser_event_source_can_authenticate_with_the_query_or_the_cookie() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    // On a connection of its own (the front door, `connection: close`) and on a kept-alive
    // one (actix-web, no `connection` header).
    for kept_alive in [false, true] {
        for by_cookie in [false, true] {
            let client = if kept_alive {
                app.kept_alive_client().await
            } else {
                app.fresh_client.clone()
            };
            let request = if by_cookie {
                client.get(app.url("/events")).header(
                    "cookie",
                    format!("theme=dark; access_token={}", alice.token),
                )
            } else {
                client.get(app.url(&format!("/events?access_token={}", alice.token)))
            };
            let res = request.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["content-type"], "text/event-stream");
            let closing = res.headers().get("connection").map(|v| v.to_str().unwrap());
            assert_eq!(
                closing,
                (!kept_alive).then_some("close"),
                "{kept_alive} {by_cookie}"
            );
        }
    }
    let res = app
        .fresh_client
        .get(app.url("/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "missing_token"
    );
}

#[tokio::test]
async fn nothing_leaks_across_rooms_or_conversations_and_membership_is_followed_live() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let eve = app.signup("eve").await;
    let room = app.create_room(&alice.token, &unique("club-")).await;
    let mut eve_stream = app.ready_events(&eve.token).await;

    app.post_to_room(&alice.token, &room, "members only").await;
    app.post_to_user(&alice.token, &bob.username, "just for bob")
        .await;
    eve_stream
        .assert_no_message_within(Duration::from_millis(300))
        .await;

    // Eve joins: her own stream tells her, and from then on she gets the room.
    app.joins(&eve.token, &room).await;
    let joined = eve_stream.expect("room_member").await.json();
    assert_eq!(
        (joined["action"].as_str(), joined["room_id"].as_str()),
        (Some("joined"), Some(room.as_str()))
    );
    app.post_to_room(&alice.token, &room, "welcome eve").await;
    assert_eq!(
        eve_stream.messages(1).await[0].json()["body"],
        "welcome eve"
    );

    app.leave_room(&eve.token, &room).await;
    assert_eq!(
        eve_stream.expect("room_member").await.json()["action"],
        "left"
    );
    app.post_to_room(&alice.token, &room, "eve is gone").await;
    eve_stream
        .assert_no_message_within(Duration::from_millis(300))
        .await;
}

/// Three instances, six users each streaming from one instance and sending through another,
/// all at once: every subscriber gets exactly what it may see, once each, in log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_instances_deliver_every_message_exactly_once_in_order() {
    const USERS: usize = 6;
    const PER_USER: usize = 20;
    let a = spawn_app().await;
    let instances = [a.spawn_sibling().await, a.spawn_sibling().await, a];
    let mut users: Vec<TestUser> = Vec::new();
    for i in 0..USERS {
        users.push(instances[i % 3].signup(&format!("u{i}-")).await);
    }
    // Users 0-3 are in the room; 4 and 5 are not.
    let room = instances[0]
        .create_room(&users[0].token, &unique("busy-"))
        .await;
    for user in &users[1..4] {
        instances[1].joins(&user.token, &room).await;
    }
    let member = |i: usize| i < 4;

    // Who should receive what: (sender, k) -> recipients.
    let mut expected: Vec<HashSet<String>> = vec![HashSet::new(); USERS];
    let mut plan = Vec::new();
    for i in 0..USERS {
        for k in 0..PER_USER {
            let body = format!("{i}:{k}");
            if member(i) && k % 2 == 0 {
                for (j, set) in expected.iter_mut().enumerate() {
                    if member(j) {
                        set.insert(body.clone());
                    }
                }
                plan.push((i, body, None));
            } else {
                let to = (i + 1) % USERS;
                expected[i].insert(body.clone());
                expected[to].insert(body.clone());
                plan.push((i, body, Some(to)));
            }
        }
    }

    let mut readers = Vec::new();
    for (j, user) in users.iter().enumerate() {
        let mut stream = instances[j % 3].ready_events(&user.token).await;
        let want = expected[j].len();
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < want {
                match stream.next_within(Duration::from_secs(20)).await {
                    Some(e) if e.event == "message" => got.push((e, Utc::now())),
                    Some(_) => {}
                    None => break,
                }
            }
            // Anything extra that should not be there shows up now.
            while let Some(e) = stream.next_within(Duration::from_millis(300)).await {
                if e.event == "message" {
                    got.push((e, Utc::now()));
                }
            }
            got
        }));
    }

    let names: Vec<String> = users.iter().map(|u| u.username.clone()).collect();
    let mut senders = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let app_index = (i + 1) % 3;
        let client = instances[app_index].client.clone();
        let base = instances[app_index].address.clone();
        let token = user.token.clone();
        let mine: Vec<(String, Option<String>)> = plan
            .iter()
            .filter(|(sender, _, _)| *sender == i)
            .map(|(_, body, to)| (body.clone(), to.map(|t| names[t].clone())))
            .collect();
        let room = room.clone();
        senders.push(tokio::spawn(async move {
            for (body, to) in mine {
                let message = match to {
                    Some(to) => serde_json::json!({"to": to, "body": body}),
                    None => serde_json::json!({"room_id": room, "body": body}),
                };
                let res = client
                    .post(format!("{base}/messages"))
                    .bearer_auth(&token)
                    .json(&message)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::CREATED);
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }

    let mut latencies = Vec::new();
    let mut deliveries = 0;
    for (j, reader) in readers.into_iter().enumerate() {
        let got = reader.await.unwrap();
        let bodies: Vec<String> = got
            .iter()
            .map(|(e, _)| e.json()["body"].as_str().unwrap().to_owned())
            .collect();
        let unique_bodies: HashSet<String> = bodies.iter().cloned().collect();
        assert_eq!(bodies.len(), unique_bodies.len(), "user {j} got duplicates");
        assert_eq!(unique_bodies, expected[j], "user {j} got the wrong set");
        let positions: Vec<(u64, u64)> = got.iter().map(|(e, _)| position(e)).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "user {j}: ids out of order"
        );
        // Each sender's messages arrive in the order they were sent.
        let mut last_k: HashMap<String, usize> = HashMap::new();
        for body in &bodies {
            let (sender, k) = body.split_once(':').unwrap();
            let k: usize = k.parse().unwrap();
            if let Some(previous) = last_k.insert(sender.to_owned(), k) {
                assert!(previous < k, "user {j}: {sender}'s messages out of order");
            }
        }
        for (event, at) in &got {
            let created: DateTime<Utc> = event.json()["created_at"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            latencies.push((*at - created).num_microseconds().unwrap_or(0));
        }
        deliveries += got.len();
    }
    latencies.sort_unstable();
    let pct =
        |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)] as f64 / 1000.0;
    eprintln!(
        "multi-instance delivery: {} messages, {deliveries} deliveries, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        plan.len(),
        pct(50),
        pct(99),
        pct(100)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_last_event_id_mid_burst_on_another_instance_misses_nothing() {
    const TOTAL: usize = 60;
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = a.signup("bob").await;
    let general = a.general(&alice.token).await;
    let mut first = a.ready_events(&alice.token).await;

    let (client, base, token, room) = (
        b.client.clone(),
        b.address.clone(),
        bob.token.clone(),
        general.clone(),
    );
    let burst = tokio::spawn(async move {
        for k in 0..TOTAL {
            let res = client
                .post(format!("{base}/messages"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"room_id": room, "body": format!("{k}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
        }
    });
    let mut bodies: Vec<usize> = first
        .messages(10)
        .await
        .iter()
        .map(|e| e.json()["body"].as_str().unwrap().parse().unwrap())
        .collect();
    let last_id = first.last_id.clone().unwrap();
    drop(first);

    let mut second = b.events(&alice.token, Some(&last_id)).await;
    while bodies.len() < TOTAL {
        match second.next().await {
            Some(e) if e.event == "message" => {
                bodies.push(e.json()["body"].as_str().unwrap().parse().unwrap())
            }
            Some(e) if e.event == "ready" => assert_eq!(e.json()["resumed"], true),
            Some(e) => assert_ne!(e.event, "resync", "no resync is needed here"),
            None => break,
        }
    }
    burst.await.unwrap();
    assert_eq!(
        bodies,
        (0..TOTAL).collect::<Vec<_>>(),
        "every message once, in order"
    );
    second
        .assert_no_message_within(Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_client_away_longer_than_the_log_keeps_is_told_to_resync() {
    let app = spawn_app_with(&[("EVENT_LOG_MAX_LEN", "10".to_owned())]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let general = app.general(&alice.token).await;
    let stream = app.ready_events(&alice.token).await;
    let last_id = stream.last_id.clone().unwrap();
    drop(stream);
    for k in 0..25 {
        app.post_to_room(&bob.token, &general, &format!("{k}"))
            .await;
    }
    let mut back = app.events(&alice.token, Some(&last_id)).await;
    let first = back.next().await.unwrap();
    assert_eq!(first.event, "resync");
    assert!(first.json()["reason"].is_string());
    back.expect("ready").await;
    app.post_to_room(&bob.token, &general, "after the resync")
        .await;
    assert_eq!(back.messages(1).await[0].json()["body"], "after the resync");
}

/// A stream that resumes gets what it missed as its user saw it then: a message in a room the
/// user left while away arrives (they were in the room when it was posted), and one posted in
/// a room before the user joined it does not.
#[tokio::test]
async fn a_resumed_stream_replays_with_the_rooms_its_user_had_then() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let left = app.create_room(&alice.token, &unique("left")).await;
    let joined = app.create_room(&alice.token, &unique("joined")).await;
    app.joins(&bob.token, &left).await;
    let mut away = app.ready_events(&bob.token).await;
    app.post_to_room(&alice.token, &left, "while bob is in")
        .await;
    assert_eq!(away.messages(1).await[0].json()["body"], "while bob is in");
    let last_id = away.last_id.clone().unwrap();
    drop(away);

    app.post_to_room(&alice.token, &left, "before bob left")
        .await;
    app.post_to_room(&alice.token, &joined, "before bob joined")
        .await;
    assert_eq!(
        app.leave_room(&bob.token, &left).await.status(),
        StatusCode::NO_CONTENT
    );
    app.joins(&bob.token, &joined).await;
    app.post_to_room(&alice.token, &joined, "after bob joined")
        .await;

    let mut back = app.events(&bob.token, Some(&last_id)).await;
    let mut seen = Vec::new();
    while let Some(event) = back.next().await {
        match event.event.as_str() {
            "message" => seen.push(event.json()["body"].as_str().unwrap().to_owned()),
            "room_member" => seen.push(format!(
                "{} {}",
                event.json()["action"].as_str().unwrap(),
                event.json()["room_id"].as_str().unwrap()
            )),
            "ready" => break,
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            "before bob left".to_owned(),
            format!("left {left}"),
            format!("joined {joined}"),
            "after bob joined".to_owned(),
        ]
    );
}

#[tokio::test]
async fn last_event_ids_are_validated() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    // A new connection each: the front door answers a request it refuses as every other
    // error is answered.
    for bad in ["garbage", "12-x-0", "--", "abc-1-2-3"] {
        let res = app
            .get_fresh("/events", &alice.token)
            .header("last-event-id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(res, StatusCode::BAD_REQUEST).await,
            "invalid_last_event_id",
            "{bad}"
        );
    }
    let res = app
        .get_fresh("/events?last_event_id=nope", &alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res, StatusCode::BAD_REQUEST).await,
        "invalid_last_event_id"
    );
    // Well formed but from another epoch of the log: resync.
    let mut stream = app.events(&alice.token, Some("0000000f-1-0")).await;
    assert_eq!(stream.next().await.unwrap().event, "resync");
}

/// A `Last-Event-ID` ahead of this instance makes the stream skip what the client says it has;
/// a membership change among those events still applies to the stream. Here the id is made up,
/// a few seconds ahead: the leave it covers must still take the room off the stream.
#[tokio::test]
async fn a_leave_under_a_made_up_future_event_id_still_takes_the_room_off_the_stream() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room = app.create_room(&bob.token, &unique("r")).await;
    app.joins(&alice.token, &room).await;

    let (made_up, ahead_ms) = an_id_ahead(&app, &alice.token).await;
    let mut stream = app.events(&alice.token, Some(&made_up)).await;
    assert_eq!(stream.next().await.unwrap().event, "ready");
    assert_eq!(
        app.leave_room(&alice.token, &room).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(
        Utc::now().timestamp_millis() < ahead_ms,
        "the leave came after the made-up id: this run proves nothing"
    );

    // Direct messages to alice until one arrives: the stream is past the made-up id.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "no event ever came past the made-up id"
        );
        app.post_to_user(&bob.token, &alice.username, "tick").await;
        if let Some(event) = stream.next_within(Duration::from_millis(500)).await {
            assert_eq!(event.event, "message", "{event:?}");
            break;
        }
    }
    // Drain the ticks already on their way, then the room's message must not come before
    // the sentinel.
    app.post_to_room(&bob.token, &room, "after alice left")
        .await;
    app.post_to_user(&bob.token, &alice.username, "sentinel")
        .await;
    loop {
        let event = stream.next().await.expect("the sentinel arrives");
        let data = event.json();
        assert_ne!(data["body"], "after alice left", "{event:?}");
        if data["body"] == "sentinel" {
            break;
        }
    }
}

/// An event id of the log's epoch 8 s ahead of now (time enough for a loaded machine to open a
/// stream and leave or log out before it), and that time in ms.
async fn an_id_ahead(app: &TestApp, token: &str) -> (String, i64) {
    let ready = app.ready_events(token).await.last_id.unwrap();
    let epoch = ready.split('-').next().unwrap();
    let ahead_ms = Utc::now().timestamp_millis() + 8_000;
    (format!("{epoch}-{ahead_ms}-0"), ahead_ms)
}

/// Likewise, a logout among the events under a made-up id ahead still ends the stream with
/// `logout` (not only at the next presence check, which sends none).
#[tokio::test]
async fn a_logout_under_a_made_up_future_event_id_still_ends_the_stream() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let (made_up, ahead_ms) = an_id_ahead(&app, &alice.token).await;
    let mut stream = app.events(&alice.token, Some(&made_up)).await;
    assert_eq!(stream.next().await.unwrap().event, "ready");
    assert_eq!(
        app.logout(&alice.token).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(
        Utc::now().timestamp_millis() < ahead_ms,
        "the logout came after the made-up id: this run proves nothing"
    );
    assert_eq!(
        stream.expect("logout").await.json()["reason"],
        "token revoked"
    );
}

#[tokio::test]
async fn logout_ends_the_stream_of_that_token_on_every_instance() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let other_session = a.token_for(&alice.username).await;
    let mut doomed = b.ready_events(&alice.token).await;
    let mut survivor = b.ready_events(&other_session).await;
    assert_eq!(
        a.logout(&alice.token).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        doomed.expect("logout").await.json()["reason"],
        "token revoked"
    );
    assert!(
        doomed.next().await.is_none() && doomed.ended_cleanly(),
        "the stream ended"
    );
    let general = a.general(&other_session).await;
    a.post_to_room(&other_session, &general, "still here").await;
    assert_eq!(survivor.messages(1).await[0].json()["body"], "still here");
}

#[tokio::test]
async fn presence_changes_are_pushed() {
    let app = spawn_app_with(&[("PRESENCE_TTL_SECS", "1".to_owned())]).await;
    let alice = app.signup("alice").await;
    let mut stream = app.ready_events(&alice.token).await;

    let bob = app.signup("bob").await;
    let online = stream.expect("presence").await.json();
    assert_eq!(
        (online["username"].as_str(), online["online"].as_bool()),
        (Some(bob.username.as_str()), Some(true))
    );
    app.logout(&bob.token).await;
    let offline = stream.expect("presence").await.json();
    assert_eq!(
        (offline["username"].as_str(), offline["online"].as_bool()),
        (Some(bob.username.as_str()), Some(false))
    );

    // Carol logs in and goes silent: the TTL takes her offline, and that is announced too.
    let carol = app.signup("carol").await;
    let mut states = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) && states.last() != Some(&false) {
        let event = stream.expect("presence").await.json();
        if event["username"] == carol.username.as_str() {
            states.push(event["online"].as_bool().unwrap());
        }
    }
    assert_eq!(states, [true, false]);
    // Alice's open stream kept her online all along.
    let names = app.online_names(&alice.token).await;
    assert!(names.contains(&alice.username) && !names.contains(&carol.username));
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_alive() {
    let app = spawn_app_with(&[("SSE_HEARTBEAT_SECS", "1".to_owned())]).await;
    let alice = app.signup("alice").await;
    let mut stream = app.ready_events(&alice.token).await;
    stream
        .assert_no_message_within(Duration::from_millis(2500))
        .await;
    assert!(stream.comments >= 1, "no heartbeat in 2.5 s");
    assert!(!stream.ended);
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let mut stream = app.ready_events(&alice.token).await;
    let shutdown = app.shutdown.clone();
    tokio::spawn(async move { shutdown.trigger().await });
    assert!(stream.next_within(Duration::from_secs(5)).await.is_none());
    assert!(
        stream.ended_cleanly(),
        "the stream ended, well-formed, instead of hanging: {:?}",
        stream.failed
    );
}

#[tokio::test]
async fn entries_trimmed_before_an_instance_read_them_make_its_streams_resync() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;
    app.post_to_room(&alice.token, &general, "before").await;
    assert_eq!(stream.messages(1).await[0].json()["body"], "before");

    // What an instance that fell further behind than the log is long finds: the next entry
    // it reads is numbered past the last one it saw. Simulated by skipping numbers, as three
    // appends trimmed away unread would.
    let redis = redis::Client::open(crate::helpers::test_redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let count_key = format!("{}events:count", app.settings.redis_key_prefix);
    let _: i64 = redis::cmd("INCRBY")
        .arg(&count_key)
        .arg(3)
        .query_async(&mut conn)
        .await
        .unwrap();
    let sent = app
        .post_to_room(&alice.token, &general, "after the gap")
        .await;

    let resync = stream.expect("resync").await;
    assert!(
        resync.json()["reason"]
            .as_str()
            .unwrap()
            .contains("dropped from the log"),
        "{}",
        resync.data
    );
    let message = stream.messages(1).await.remove(0);
    assert_eq!(message.json()["body"], "after the gap");
    assert_eq!(message.id.as_deref(), sent["event_id"].as_str());
    assert!(
        position(&resync) < position(&message),
        "resuming after the resync's id starts at the first event after the gap"
    );
    // Without a gap, no resync.
    app.post_to_room(&alice.token, &general, "no gap").await;
    let next = stream.next().await.unwrap();
    assert_eq!(next.event, "message");
    assert_eq!(next.json()["body"], "no gap");
}

/// A batch is appended once however often it is appended (a retry after a lost reply, the
/// reconciler, a retried post): later calls append nothing and get the first call's ids. Its
/// marker is kept while the batch may be appended again, and shortened once it is finished.
#[tokio::test]
async fn a_batch_appended_again_is_not_appended_twice() {
    use chat_server::domain::RoomId;
    use chat_server::live::{Audience, EventKind, FINISHED_MARKER_TTL, Live, MARKER_TTL, NewEvent};

    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;
    let live = Live::connect(&app.settings).unwrap();
    let redis = redis::Client::open(crate::helpers::test_redis_url()).unwrap();
    let conn = redis.get_multiplexed_async_connection().await.unwrap();
    let log = format!("{}events", app.settings.redis_key_prefix);
    let audience = Audience::Room(RoomId::parse(&general).unwrap());
    let event = |text: &str| NewEvent {
        kind: EventKind::Message,
        audience: audience.clone(),
        data: serde_json::json!({ "body": text }).to_string(),
    };
    let batch = [event("one"), event("two")];

    let ids = live.append("b-1", &batch).await.unwrap();
    assert_eq!(ids.len(), 2);
    let length = || {
        let mut conn = conn.clone();
        let log = log.clone();
        async move {
            redis::cmd("XLEN")
                .arg(&log)
                .query_async::<usize>(&mut conn)
                .await
                .unwrap()
        }
    };
    let before = length().await;
    // Its retry, as after a lost reply, appends nothing and answers the same ids.
    assert_eq!(live.append("b-1", &batch).await.unwrap(), ids);
    assert_eq!(length().await, before, "nothing was appended again");
    let third = live.append("b-2", &[event("three")]).await.unwrap();

    let marker = format!("{}events:batch:b-1", app.settings.redis_key_prefix);
    let ttl = || {
        let mut conn = conn.clone();
        let marker = marker.clone();
        async move {
            redis::cmd("TTL")
                .arg(&marker)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    let kept = i64::try_from(MARKER_TTL.as_secs()).unwrap();
    assert!(
        ttl().await > kept - 60 && ttl().await <= kept,
        "{}",
        ttl().await
    );
    live.settle_markers(&["b-1"]).await.unwrap();
    let settled = i64::try_from(FINISHED_MARKER_TTL.as_secs()).unwrap();
    assert!(
        ttl().await > settled - 60 && ttl().await <= settled,
        "{}",
        ttl().await
    );
    assert_eq!(live.marker("b-1").await.unwrap(), Some(ids.clone()));
    assert_eq!(live.marker("b-9").await.unwrap(), None);

    let seen = stream.messages(3).await;
    let bodies: Vec<_> = seen.iter().map(|e| e.json()["body"].clone()).collect();
    assert_eq!(bodies, ["one", "two", "three"]);
    let seen_ids: Vec<_> = seen.iter().map(|e| e.id.clone().unwrap()).collect();
    let sent_ids: Vec<_> = ids.iter().chain(&third).map(ToString::to_string).collect();
    assert_eq!(seen_ids, sent_ids);
    // Once: the next message on the stream is the one posted next.
    app.post_to_room(&alice.token, &general, "next").await;
    assert_eq!(stream.messages(1).await[0].json()["body"], "next");
}

/// When Redis last saw a user (the score that every check of their token refreshes).
struct Presence {
    conn: redis::aio::MultiplexedConnection,
    online: String,
    user: String,
}

impl Presence {
    async fn of(app: &crate::helpers::TestApp, redis: &ScratchRedis, user: &TestUser) -> Self {
        Presence {
            conn: redis.connection().await,
            online: format!("{}online", app.settings.redis_key_prefix),
            user: user.id.clone(),
        }
    }

    async fn last_seen(&self) -> f64 {
        redis::cmd("ZSCORE")
            .arg(&self.online)
            .arg(&self.user)
            .query_async::<Option<f64>>(&mut self.conn.clone())
            .await
            .unwrap()
            .unwrap_or(0.0)
    }
}

/// Posts `body` to `room` as `user` with the store hung (SIGSTOP), and returns once the post's
/// token was checked (which refreshes the user's presence in Redis): the post then waits in the
/// store until the caller resumes it.
async fn post_held_in_the_store(
    app: &crate::helpers::TestApp,
    mongo: &ScratchMongo,
    redis: &ScratchRedis,
    user: &TestUser,
    room: &str,
    body: &str,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let presence = Presence::of(app, redis, user).await;
    let before = presence.last_seen().await;
    mongo.pause();
    let post = tokio::spawn(
        app.post("/messages")
            .bearer_auth(&user.token)
            .json(&serde_json::json!({"room_id": room, "body": body}))
            .send(),
    );
    let checked = crate::helpers::eventually(Duration::from_secs(5), || async {
        presence.last_seen().await > before
    })
    .await;
    assert!(checked, "the post's token was checked");
    post
}

/// The `message` entries of `app`'s event log, oldest first.
async fn logged_messages(
    conn: &mut redis::aio::MultiplexedConnection,
    app: &crate::helpers::TestApp,
) -> Vec<redis::streams::StreamId> {
    try_logged_messages(conn, app).await.unwrap()
}

async fn try_logged_messages(
    conn: &mut redis::aio::MultiplexedConnection,
    app: &crate::helpers::TestApp,
) -> redis::RedisResult<Vec<redis::streams::StreamId>> {
    let log: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{}events", app.settings.redis_key_prefix))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await?;
    Ok(log
        .ids
        .into_iter()
        .filter(|entry| entry.get::<String>("t").as_deref() == Some("message"))
        .collect())
}

/// The bodies of the `message` events in `app`'s log, oldest first; none while Redis does
/// not answer.
async fn logged_bodies(redis: &ScratchRedis, app: &crate::helpers::TestApp) -> Vec<String> {
    let Ok(mut conn) = redis.try_connection().await else {
        return Vec::new();
    };
    let Ok(logged) = try_logged_messages(&mut conn, app).await else {
        return Vec::new();
    };
    logged
        .iter()
        .filter_map(|entry| entry.get::<String>("d"))
        .map(|data| {
            let data: serde_json::Value = serde_json::from_str(&data).unwrap();
            data["body"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Makes Redis run a Lua loop for `micros` microseconds (answering nothing meanwhile), and
/// returns once it does; the returned connection gets the loop's reply at its end.
async fn keep_busy(redis: &ScratchRedis, micros: &str) -> TcpStream {
    let mut busy = TcpStream::connect(("127.0.0.1", redis.port)).await.unwrap();
    busy.write_all(&resp(&["CONFIG", "SET", "busy-reply-threshold", "10000"]))
        .await
        .unwrap();
    let mut ok = [0u8; 5];
    busy.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    busy.write_all(&resp(&["EVAL", BUSY_LUA, "0", micros]))
        .await
        .unwrap();
    wait_until_busy(redis.port).await;
    busy
}

/// Keeps Redis busy for `ARGV[1]` microseconds.
const BUSY_LUA: &str = "local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end \
    local start = now() while now() - start < tonumber(ARGV[1]) do end return 1";

/// Waits (bounded) until Redis on `port` runs the busy script: a PING gets no answer in 200 ms.
async fn wait_until_busy(port: u16) {
    let busy = crate::helpers::eventually(Duration::from_secs(5), || async move {
        let mut ping = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        ping.write_all(&resp(&["PING"])).await.unwrap();
        let mut reply = [0u8; 7];
        tokio::time::timeout(Duration::from_millis(200), ping.read_exact(&mut reply))
            .await
            .is_err()
    })
    .await;
    assert!(busy, "Redis runs the busy script");
}

/// A command in the Redis protocol.
fn resp(parts: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n{part}\r\n", part.len()).as_bytes());
    }
    out
}

#[tokio::test]
async fn a_post_whose_event_reply_was_lost_after_redis_appended_it_is_announced_once() {
    let mongo = ScratchMongo::start().await;
    let redis = ScratchRedis::start().await;
    let app = spawn_app_with(&[
        ("MONGODB_URI", mongo.uri.clone()),
        ("REDIS_URL", redis.url()),
    ])
    .await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;
    // Redis knows the append script from then on (a first call would only send its hash).
    app.post_to_room(&alice.token, &general, "before").await;
    assert_eq!(stream.messages(1).await[0].json()["body"], "before");
    // The store hangs, so the post waits there once its token was checked...
    let post = post_held_in_the_store(&app, &mongo, &redis, &alice, &general, "once").await;
    // ...then Redis is busy for 7 s, longer than the API waits for a reply (2 s), and the store
    // goes on. The append is sent within the first 5 s and times out; Redis runs it when it is
    // free again, and the outbox's retry, sent after the timeout, finds its group's marker.
    let mut busy = keep_busy(&redis, "7000000").await;
    mongo.resume();
    let response = post.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let sent: serde_json::Value = response.json().await.unwrap();
    assert!(
        sent["event_id"].is_null(),
        "the append's reply was lost: {sent}"
    );

    let first = stream.messages(1).await.remove(0);
    assert_eq!(first.json()["id"], sent["id"]);
    app.post_to_room(&alice.token, &general, "next").await;
    let next = stream.messages(1).await.remove(0);
    assert_eq!(next.json()["body"], "next", "the first message came once");
    let mut reply = [0u8; 4];
    busy.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b":1\r\n", "the busy script ran to its end");
}

/// Posts made straight through an instance's delivery path (no HTTP request, which would need
/// Redis for its token), as a handler makes them.
async fn post_through(
    delivery: &chat_server::delivery::Delivery,
    user: &TestUser,
    room: &str,
    body: &str,
    key: Option<&str>,
) -> chat_server::delivery::MessageResponse {
    use chat_server::delivery::Posted;
    use chat_server::domain::{MessageBody, RoomId, UserId};
    use chat_server::store::{NewMessage, Target};
    let new = NewMessage {
        sender: UserId::parse(&user.id).unwrap(),
        sender_name: user.username.clone(),
        target: Target::Room(RoomId::parse(room).unwrap()),
        body: MessageBody::parse(body).unwrap(),
        idempotency_key: key.map(str::to_owned),
        mentions: Vec::new(),
    };
    match delivery.post(new).await {
        Ok(Posted::Created(message) | Posted::Replayed(message)) => message,
        Err(err) => panic!("the post failed: {err}"),
    }
}

/// A delivery path of its own on `app`'s store and Redis, as a second instance has.
async fn delivery_of(app: &crate::helpers::TestApp) -> chat_server::delivery::Delivery {
    use chat_server::live::Live;
    use chat_server::store::Store;
    let store = Store::connect(&app.settings).await.unwrap();
    let live = Live::connect(&app.settings).unwrap();
    // Kept for the test's length: a dropped sender stops the delivery path.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    std::mem::forget(stop);
    chat_server::delivery::Delivery::start(store, live, shutdown)
}

/// An instance on `redis` with `env`, a delivery path of its own on it, and alice in
/// `general`, whose first post there taught Redis the append script (a first call would only
/// send its hash), so that a later append is one call Redis can hold up.
async fn posting_through_a_warm_log(
    redis: &ScratchRedis,
    env: &[(&str, String)],
) -> (
    crate::helpers::TestApp,
    chat_server::delivery::Delivery,
    TestUser,
    String,
) {
    let mut env = env.to_vec();
    env.push(("REDIS_URL", redis.url()));
    let app = spawn_app_with(&env).await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let delivery = delivery_of(&app).await;
    let first = post_through(&delivery, &alice, &general, "0", None).await;
    assert!(first.event_id.is_some());
    (app, delivery, alice, general)
}

#[tokio::test]
async fn events_after_a_failed_append_queue_behind_its_retry() {
    let redis = ScratchRedis::start().await;
    // A log of 10 entries makes batches of at most 2 posts (a quarter of it).
    // Posts wait for their event within the write bound (1 s), shorter than Redis is busy.
    let (app, delivery, alice, general) = posting_through_a_warm_log(
        &redis,
        &[
            ("EVENT_LOG_MAX_LEN", "10".to_owned()),
            ("MONGODB_TIMEOUT_MS", "500".to_owned()),
        ],
    )
    .await;

    // Redis is busy past the reply timeout: the first batch is sent and fails; those queued
    // behind it, and one posted after the failure while Redis is still busy, must not
    // overtake it. Their posts are answered at their bound (the messages are stored).
    let _busy = keep_busy(&redis, "5000000").await;
    let (one, two, three) = tokio::join!(
        post_through(&delivery, &alice, &general, "1", None),
        post_through(&delivery, &alice, &general, "2", None),
        post_through(&delivery, &alice, &general, "3", None),
    );
    assert!(
        [one, two, three].iter().all(|m| m.event_id.is_none()),
        "all failed"
    );
    let four = post_through(&delivery, &alice, &general, "4", None).await;
    assert!(four.event_id.is_none(), "it waits behind the retries");

    // The log as Redis has it, once it answers again (empty while it is busy).
    let bodies = || logged_bodies(&redis, &app);
    let all = crate::helpers::eventually(Duration::from_secs(20), || async {
        bodies().await.len() >= 5
    })
    .await;
    assert!(all, "every event was appended: {:?}", bodies().await);
    assert_eq!(
        bodies().await,
        ["0", "1", "2", "3", "4"],
        "each once, in order"
    );
}

/// A post whose first append Redis does not answer in time waits for the retry within its
/// bound, and is answered with its event id once it is in the log: so a post sent after that
/// answer comes after it on every stream, whichever instance appends it.
#[tokio::test]
async fn a_post_whose_append_is_retried_within_its_bound_is_answered_once_in_the_log() {
    let redis = ScratchRedis::start().await;
    // The write bound is 6 s; Redis answers in 2 s or not at all.
    let (app, delivery, alice, general) =
        posting_through_a_warm_log(&redis, &[("MONGODB_TIMEOUT_MS", "3000".to_owned())]).await;

    // Busy for 3 s: the first append times out at 2 s, its retry runs once Redis is free.
    let _busy = keep_busy(&redis, "3000000").await;
    let started = Instant::now();
    let late = post_through(&delivery, &alice, &general, "late", None).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the first append timed out, and the post waited for its retry"
    );
    let event_id = late
        .event_id
        .expect("answered once appended, within the bound");

    assert_eq!(
        logged_bodies(&redis, &app).await,
        ["0", "late"],
        "each once, in order"
    );
    let mut conn = redis.connection().await;
    let logged = logged_messages(&mut conn, &app).await;
    let epoch: String = logged[1].get("e").unwrap();
    assert_eq!(event_id, format!("{epoch}-{}", logged[1].id));
}

/// While Redis is down, retries of a keyed post (a client retrying in a loop) append nothing
/// and queue nothing: its batch is appended once, when Redis is back.
#[tokio::test]
async fn retries_while_redis_is_down_append_their_message_once() {
    let mut redis = ScratchRedis::start().await;
    // Each post waits for its event within the write bound (1 s) before it is answered.
    let app = spawn_app_with(&[
        ("REDIS_URL", redis.url()),
        ("MONGODB_TIMEOUT_MS", "500".to_owned()),
    ])
    .await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let delivery = delivery_of(&app).await;

    redis.kill();
    let first = post_through(&delivery, &alice, &general, "first", Some("k-1")).await;
    assert!(first.event_id.is_none(), "stored, not appended");
    for _ in 0..5 {
        let replay = post_through(&delivery, &alice, &general, "first", Some("k-1")).await;
        assert_eq!(replay.id, first.id);
        assert!(replay.event_id.is_none());
    }

    redis.restart().await;
    let mut conn = redis.connection().await;
    let appended = crate::helpers::eventually(Duration::from_secs(20), || {
        let mut conn = conn.clone();
        let app = &app;
        async move { !logged_messages(&mut conn, app).await.is_empty() }
    })
    .await;
    assert!(appended, "appended once Redis is back");
    // A later retry gets that event's id, and appends nothing.
    let later = post_through(&delivery, &alice, &general, "first", Some("k-1")).await;
    let logged = logged_messages(&mut conn, &app).await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    let epoch: String = logged[0].get("e").unwrap();
    assert_eq!(later.event_id, Some(format!("{epoch}-{}", logged[0].id)));
}

/// An instance that stops while an event waits for Redis does not wait for it: the message is
/// stored, and a sibling's reconciler appends its event, once, when Redis is back.
#[tokio::test]
async fn an_event_waiting_for_redis_when_its_instance_stops_is_appended_once_by_a_sibling() {
    let mongo = ScratchMongo::start().await;
    let mut redis = ScratchRedis::start().await;
    let mut app = spawn_app_with(&[
        ("MONGODB_URI", mongo.uri.clone()),
        ("REDIS_URL", redis.url()),
        ("MONGODB_TIMEOUT_MS", "500".to_owned()),
    ])
    .await;
    let sibling = app.spawn_sibling().await;
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    // Redis goes away once the post's token was checked (the post waits in the hung store
    // meanwhile): its event cannot be appended.
    let post = post_held_in_the_store(&app, &mongo, &redis, &alice, &general, "last words").await;
    redis.kill();
    mongo.resume();
    let response = post.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let sent: serde_json::Value = response.json().await.unwrap();
    assert!(sent["event_id"].is_null(), "not appended yet: {sent}");

    app.shutdown.trigger().await;
    tokio::time::timeout(Duration::from_secs(20), &mut app.run)
        .await
        .expect("the instance stops without waiting for Redis")
        .unwrap()
        .unwrap();
    redis.restart().await;

    let conn = redis.connection().await;
    let id = sent["id"].as_str().unwrap();
    let copies = || {
        let mut conn = conn.clone();
        let sibling = &sibling;
        async move {
            logged_messages(&mut conn, sibling)
                .await
                .iter()
                .filter_map(|entry| entry.get::<String>("d"))
                .filter(|data| data.contains(id))
                .count()
        }
    };
    let appended =
        crate::helpers::eventually(Duration::from_secs(30), || async { copies().await > 0 }).await;
    assert!(appended, "the sibling's reconciler appended the event");
    let stored_at = chrono::DateTime::parse_from_rfc3339(sent["created_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    crate::helpers::reconciled_past(&sibling, stored_at).await;
    let message = sibling.post_to_room(&alice.token, &general, "later").await;
    assert!(message["event_id"].is_string());
    assert_eq!(copies().await, 1, "the message's event is in the log once");
}

#[tokio::test]
async fn a_redis_restart_that_loses_the_log_makes_streams_resync_and_recover() {
    let mut redis = ScratchRedis::start().await;
    let app = spawn_app_with(&[("REDIS_URL", redis.url())]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;
    let before_restart = stream.last_id.clone().unwrap();

    redis.restart().await;
    let posted = crate::helpers::eventually(Duration::from_secs(10), || async {
        app.send_message(
            &bob.token,
            &serde_json::json!({"room_id": general, "body": "after restart"}),
        )
        .await
        .status()
            == StatusCode::CREATED
    })
    .await;
    assert!(posted, "posting works again once Redis is back");
    let mut saw_resync = false;
    loop {
        let event = stream
            .next_within(Duration::from_secs(10))
            .await
            .expect("the stream stayed open");
        match event.event.as_str() {
            "resync" => saw_resync = true,
            "message" => {
                assert!(saw_resync, "resync comes before events of the new log");
                assert_eq!(event.json()["body"], "after restart");
                break;
            }
            _ => {}
        }
    }
    let mut resumed = app.events(&alice.token, Some(&before_restart)).await;
    assert_eq!(resumed.next().await.unwrap().event, "resync");
}

#[tokio::test]
async fn a_stream_on_a_connection_that_carried_a_request_before_works_the_same() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let general = app.general(&bob.token).await;
    let mut stream = app.events_kept_alive(&alice.token).await;
    stream.expect("ready").await;
    app.post_to_room(&bob.token, &general, "on the old connection")
        .await;
    assert_eq!(
        stream.messages(1).await[0].json()["body"],
        "on the old connection"
    );
    app.logout(&alice.token).await;
    stream.expect("logout").await;
    assert!(
        stream.next().await.is_none(),
        "the stream ends after logout"
    );
    assert!(stream.ended_cleanly(), "{:?}", stream.failed);
}

/// Reads one HTTP/1.1 response with a `content-length` from `socket`, keeping what follows
/// it in `buffer`: `(head, body)`.
async fn read_response(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> (String, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buffer[..end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("a content-length");
            if buffer.len() >= end + 4 + length {
                let body = buffer[end + 4..end + 4 + length].to_vec();
                buffer.drain(..end + 4 + length);
                return (head, body);
            }
        }
        read_more(socket, buffer, deadline, "a response").await;
    }
}

/// Reads what `socket` has next into `buffer`; panics at `deadline` or if it closes.
async fn read_more(socket: &mut TcpStream, buffer: &mut Vec<u8>, deadline: Instant, what: &str) {
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout_at(deadline.into(), socket.read(&mut chunk))
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s"))
        .unwrap();
    assert!(read > 0, "closed before {what}: {buffer:?}");
    buffer.extend_from_slice(&chunk[..read]);
}

#[tokio::test]
async fn a_refused_stream_gets_the_error_body_and_other_requests_go_to_actix_web() {
    let app = spawn_app().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut socket = TcpStream::connect(&address).await.unwrap();
    let mut buffer = Vec::new();
    socket
        .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nonsense\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut socket, &mut buffer).await;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 401 unauthorized"), "{head}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "invalid_token");
    let mut rest = Vec::new();
    socket.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty() && buffer.is_empty(),
        "nothing after the error"
    );

    // Anything that is not a stream request goes to actix-web with the bytes already read,
    // pipelined requests included.
    let mut socket = TcpStream::connect(&address).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut socket, &mut buffer).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, body) = read_response(&mut socket, &mut buffer).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "not_found");
}

/// Decodes a chunked body read to its end: the data, and whether the terminating chunk came.
fn dechunk(mut raw: &[u8]) -> (String, bool) {
    let mut data = Vec::new();
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (String::from_utf8(data).unwrap(), false);
        };
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap(), 16)
            .unwrap_or_else(|_| {
                panic!("bad chunk size line in {:?}", String::from_utf8_lossy(raw))
            });
        raw = &raw[line_end + 2..];
        if size == 0 {
            return (String::from_utf8(data).unwrap(), raw == b"\r\n");
        }
        assert!(raw.len() >= size + 2, "truncated chunk");
        data.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n", "chunk not followed by CRLF");
        raw = &raw[size + 2..];
    }
}

#[tokio::test]
async fn the_lean_stream_is_well_formed_chunked_http_and_ignores_what_the_client_sends() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let general = app.general(&bob.token).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut socket = TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        alice.token
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&raw).contains("event: ready") {
        read_more(&mut socket, &mut raw, deadline, "ready").await;
    }
    // Bytes from the client on an open stream change nothing.
    socket.write_all(b"stray bytes\r\n").await.unwrap();
    app.post_to_room(&bob.token, &general, "through the lean path")
        .await;
    app.logout(&alice.token).await;
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut raw))
        .await
        .expect("the stream ends after logout")
        .unwrap();

    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..end].to_vec())
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for header in [
        "content-type: text/event-stream",
        "cache-control: no-cache, no-transform",
        "x-accel-buffering: no",
        "transfer-encoding: chunked",
        "connection: close",
        "date: ",
    ] {
        assert!(head.contains(header), "{header} missing from {head}");
    }
    let (body, terminated) = dechunk(&raw[end + 4..]);
    assert!(terminated, "no terminating chunk after {body:?}");
    let ready = body.find("event: ready").unwrap();
    let message = body
        .find("through the lean path")
        .expect("the message arrived");
    let logout = body
        .find("event: logout")
        .expect("the logout event arrived");
    assert!(
        body.starts_with("retry: ") && ready < message && message < logout,
        "{body}"
    );
}

#[tokio::test]
async fn a_stream_whose_client_went_away_is_released_at_once() {
    // With a 1 s TTL an open stream refreshes its user's presence every 333 ms, and the
    // heartbeat (15 s) is far off: carol goes offline only if her stream ended when her
    // client closed the connection.
    let app = spawn_app_with(&[("PRESENCE_TTL_SECS", "1".to_owned())]).await;
    let alice = app.signup("alice").await;
    let carol = app.signup("carol").await;
    let mut watcher = app.ready_events(&alice.token).await;
    let carols = app.ready_events(&carol.token).await;
    drop(carols);
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "carol is still online: her stream outlived her connection"
        );
        let event = watcher.expect("presence").await.json();
        if event["username"] == carol.username.as_str() && event["online"] == false {
            break;
        }
    }
}

/// A stream that stops reading while more events than `SSE_BUFFER_EVENTS` come is closed, not
/// buffered without bound; its client resumes with the last id it got and misses nothing.
#[tokio::test]
async fn a_stream_that_stops_reading_is_closed_and_its_resume_misses_nothing() {
    // More 16 KB events than the server can have on their way: the kernel's largest send
    // buffer, a write of up to 64 frames, the 16 the fan-out keeps, and a margin.
    let send_buffer: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|v| v.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let posts = send_buffer / 16_000 + 64 + 16 + 60;
    let app = spawn_app_with(&[("SSE_BUFFER_EVENTS", "16".to_owned())]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    // A client with a small receive buffer that reads up to `ready`, then nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = app.address.trim_start_matches("http://").parse().unwrap();
    let mut slow = socket.connect(address).await.unwrap();
    let request = format!(
        "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        alice.token
    );
    slow.write_all(request.as_bytes()).await.unwrap();
    let mut read = Vec::new();
    while !String::from_utf8_lossy(&read).contains("event: ready") {
        let mut chunk = [0u8; 4096];
        let n = slow.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the stream opens");
        read.extend_from_slice(&chunk[..n]);
    }

    // 16 KB each (4 bytes a character).
    let body = "\u{1F600}".repeat(3990);
    let bodies: Vec<String> = (0..posts).map(|i| format!("{i} {body}")).collect();
    for body in &bodies {
        app.post_to_user(&bob.token, &alice.username, body).await;
    }
    // Now read it all: it ends, well before the last message.
    tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut read))
        .await
        .expect("the slow stream was closed")
        .unwrap();
    // Ended by the server (a stalled write would cut it without the last chunk).
    assert!(read.ends_with(b"0\r\n\r\n"), "the stream ended cleanly");
    let text = String::from_utf8_lossy(&read);
    let mut last_id = None;
    let mut got = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(id) = line.strip_prefix("id: ")
            && lines.next() == Some("event: message")
        {
            last_id = Some(id.to_owned());
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            let message: serde_json::Value = serde_json::from_str(data).unwrap();
            got.push(message["body"].as_str().unwrap().to_owned());
        }
    }
    assert!(got.len() < posts, "closed before the end: {}", got.len());
    assert_eq!(got, bodies[..got.len()], "in order, none missing");

    // The resume from the last message it got brings the rest.
    let mut resumed = app.events(&alice.token, last_id.as_deref()).await;
    let rest = resumed.messages(posts - got.len()).await;
    let rest: Vec<String> = rest
        .iter()
        .map(|e| e.json()["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rest, bodies[got.len()..]);
}
