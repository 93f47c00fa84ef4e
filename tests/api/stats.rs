use std::collections::HashMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::Value;

use chat_server::store::{MessageRecord, Store, UserRecord};
use futures_util::TryStreamExt;
use mongodb::bson::oid::ObjectId;

use crate::helpers::{TestApp, TestUser, error_code, eventually, spawn_app, unique};

struct Sent {
    sender: String,
    room: Option<String>,
    to: Option<String>,
    at: DateTime<Utc>,
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn query(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    let mut q = vec!["limit=100".to_owned()];
    if let Some(f) = from {
        q.push(format!("from={}", rfc(f)));
    }
    if let Some(t) = to {
        q.push(format!("to={}", rfc(t)));
    }
    q.join("&")
}

/// Expected ranking: most first, then name case-insensitively, then id.
fn ranking(counts: HashMap<String, i64>, names: &HashMap<String, String>) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = counts.into_iter().filter(|(_, n)| *n > 0).collect();
    v.sort_by(|(a, x), (b, y)| {
        y.cmp(x)
            .then_with(|| names[a].to_lowercase().cmp(&names[b].to_lowercase()))
            .then_with(|| a.cmp(b))
    });
    v
}

fn listed(body: &Value, key: &str, id: &str) -> Vec<(String, i64)> {
    body[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[id].as_str().unwrap().to_owned(),
                e["count"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn get(app: &TestApp, token: &str, path: &str) -> Value {
    let res = app.get_authed(path, token).await;
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    res.json().await.unwrap()
}

/// Every endpoint over `[from, to)` against a brute-force count of `sent`.
async fn check_window(
    app: &TestApp,
    token: &str,
    users: &[TestUser],
    names: &HashMap<String, String>,
    sent: &[Sent],
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) {
    let inside: Vec<&Sent> = sent
        .iter()
        .filter(|m| from.is_none_or(|f| m.at >= f) && to.is_none_or(|t| m.at < t))
        .collect();
    let q = query(from, to);
    let label = format!("window {from:?}..{to:?}");

    let mut active: HashMap<String, i64> = HashMap::new();
    let mut solicited: HashMap<String, i64> = HashMap::new();
    let mut rooms: HashMap<String, i64> = HashMap::new();
    for m in &inside {
        *active.entry(m.sender.clone()).or_default() += 1;
        if let Some(to) = &m.to {
            *solicited.entry(to.clone()).or_default() += 1;
        }
        if let Some(room) = &m.room {
            *rooms.entry(room.clone()).or_default() += 1;
        }
    }
    let body = get(app, token, &format!("/stats/most-active?{q}")).await;
    assert_eq!(
        listed(&body, "users", "user_id"),
        ranking(active, names),
        "most-active, {label}"
    );
    let body = get(app, token, &format!("/stats/most-solicited?{q}")).await;
    assert_eq!(
        listed(&body, "users", "user_id"),
        ranking(solicited, names),
        "most-solicited, {label}"
    );
    let body = get(app, token, &format!("/stats/rooms?{q}")).await;
    assert_eq!(
        listed(&body, "rooms", "room_id"),
        ranking(rooms, names),
        "rooms, {label}"
    );

    let body = get(app, token, &format!("/stats/summary?{q}")).await;
    assert_eq!(body["messages"], inside.len(), "summary, {label}");
    assert_eq!(
        body["direct_messages"],
        inside.iter().filter(|m| m.to.is_some()).count(),
        "summary, {label}"
    );
    let day_ago = Utc::now() - Duration::hours(24);
    assert_eq!(
        body["messages_last_24h"],
        sent.iter().filter(|m| m.at >= day_ago).count(),
        "summary, last 24 h"
    );

    for user in users {
        let mine: Vec<&&Sent> = inside
            .iter()
            .filter(|m| m.sender == user.id || m.to.as_deref() == Some(&user.id))
            .collect();
        // One's own statistics (another user's have no partners: see
        // `another_users_statistics_do_not_say_whom_they_write_to`).
        let body = get(
            app,
            &user.token,
            &format!("/stats/users/{}?{q}", user.username),
        )
        .await;
        assert_eq!(
            body["sent"],
            inside.iter().filter(|m| m.sender == user.id).count(),
            "sent, {label}"
        );
        assert_eq!(
            body["received"],
            inside
                .iter()
                .filter(|m| m.to.as_deref() == Some(&user.id))
                .count(),
            "received, {label}"
        );
        let when = |v: &Value| v.as_str().map(|s| s.parse::<DateTime<Utc>>().unwrap());
        assert_eq!(
            when(&body["first_activity"]),
            mine.iter().map(|m| m.at).min(),
            "first, {label}"
        );
        assert_eq!(
            when(&body["last_activity"]),
            mine.iter().map(|m| m.at).max(),
            "last, {label}"
        );
        let mut partners: HashMap<String, i64> = HashMap::new();
        for m in &mine {
            if let Some(to) = &m.to {
                let other = if m.sender == user.id { to } else { &m.sender };
                *partners.entry(other.clone()).or_default() += 1;
            }
        }
        assert_eq!(
            listed(&body, "top_partners", "user_id"),
            ranking(partners, names),
            "partners, {label}"
        );
    }
}

/// Random traffic through the API, then every endpoint against a brute-force count of what
/// was sent, over windows that use every path: all-time counters, daily and hourly counters,
/// and raw edges falling between two messages.
#[tokio::test]
async fn every_statistic_equals_a_brute_force_count_for_any_window() {
    let app = spawn_app().await;
    let mut users: Vec<TestUser> = Vec::new();
    for i in 0..5 {
        users.push(app.signup(&format!("s{i}-")).await);
    }
    let general = app.general(&users[0].token).await;
    let side = app.create_room(&users[1].token, &unique("side-")).await;
    app.joins(&users[2].token, &side).await;
    let mut names: HashMap<String, String> = users
        .iter()
        .map(|u| (u.id.clone(), u.username.clone()))
        .collect();
    names.insert(general.clone(), "general".to_owned());

    let mut rng = StdRng::seed_from_u64(7);
    let mut sent: Vec<Sent> = Vec::new();
    for _ in 0..60 {
        // Skewed: user 0 talks most, as in real chats.
        let s = [0, 0, 0, 1, 1, 2, 3, 4][rng.gen_range(0..8)];
        let sender = &users[s];
        let message = match rng.gen_range(0..10) {
            0..=3 => app.post_to_room(&sender.token, &general, "hi").await,
            4..=5 if s == 1 || s == 2 => app.post_to_room(&sender.token, &side, "side").await,
            _ => {
                let mut r = rng.gen_range(0..5);
                if r == s {
                    r = (r + 1) % 5;
                }
                app.post_to_user(&sender.token, &users[r].username, "dm")
                    .await
            }
        };
        sent.push(Sent {
            sender: sender.id.clone(),
            room: message["room_id"].as_str().map(str::to_owned),
            to: message["to"]["id"].as_str().map(str::to_owned),
            at: message["created_at"].as_str().unwrap().parse().unwrap(),
        });
    }
    let side_name: Value = get(&app, &users[0].token, "/rooms").await;
    for room in side_name["rooms"].as_array().unwrap() {
        names.insert(
            room["id"].as_str().unwrap().to_owned(),
            room["name"].as_str().unwrap().to_owned(),
        );
    }

    let now = Utc::now();
    let today = now.duration_trunc(Duration::days(1)).unwrap();
    let first = sent.iter().map(|m| m.at).min().unwrap();
    let last = sent.iter().map(|m| m.at).max().unwrap();
    let mid = sent[sent.len() / 2].at;
    type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let windows: Vec<Bounds> = vec![
        (None, None),
        (Some(today), Some(today + Duration::days(1))),
        (
            Some(now - Duration::days(3) + Duration::minutes(17)),
            Some(now + Duration::hours(5) + Duration::minutes(13)),
        ),
        (None, Some(now + Duration::hours(2))),
        (Some(first), Some(mid)),
        (Some(mid), None),
        (Some(sent[5].at), Some(sent[40].at)),
        (
            Some(first - Duration::days(30)),
            Some(first - Duration::days(29)),
        ),
        (Some(last + Duration::milliseconds(1)), None),
    ];
    let token = &users[0].token;
    for (from, to) in windows {
        check_window(&app, token, &users, &names, &sent, from, to).await;
    }
    let body = get(&app, token, "/stats/summary").await;
    assert_eq!(body["users"], 5);
    assert_eq!(body["rooms"], 2);

    // Activity: every hourly bucket present, zeros included, summing to the window.
    let from = (first - Duration::hours(2))
        .duration_trunc(Duration::hours(1))
        .unwrap()
        + Duration::minutes(7);
    let to = last + Duration::hours(1);
    let body = get(
        &app,
        token,
        &format!(
            "/stats/activity?bucket=hour&from={}&to={}",
            rfc(from),
            rfc(to)
        ),
    )
    .await;
    let points = body["points"].as_array().unwrap();
    assert!(points.len() >= 3);
    assert!(points.iter().any(|p| p["count"] == 0));
    let total: i64 = points.iter().map(|p| p["count"].as_i64().unwrap()).sum();
    assert_eq!(total, sent.len() as i64);
    let body = get(&app, token, "/stats/activity?bucket=day").await;
    assert_eq!(body["points"].as_array().unwrap().len(), 31);
    // The default window ends now, to the millisecond, like every time the API shows.
    for bound in ["from", "to"] {
        let shown = body[bound].as_str().unwrap();
        let at = DateTime::parse_from_rfc3339(shown).unwrap();
        assert_eq!(
            at.timestamp_subsec_nanos() % 1_000_000,
            0,
            "{bound}: {shown}"
        );
    }
    let total: i64 = body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_i64().unwrap())
        .sum();
    assert_eq!(total, sent.len() as i64);
}

#[tokio::test]
async fn ties_are_broken_by_name_and_empty_windows_are_empty() {
    let app = spawn_app().await;
    let zed = app.signup("zed").await;
    let amy = app.signup("amy").await;
    let general = app.general(&zed.token).await;
    app.post_to_room(&zed.token, &general, "one").await;
    app.post_to_room(&amy.token, &general, "one").await;
    let body = get(&app, &zed.token, "/stats/most-active").await;
    let names: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, [amy.username.as_str(), zed.username.as_str()]);
    let body = get(
        &app,
        &zed.token,
        "/stats/most-active?from=2001-01-01T00:00:00Z&to=2001-01-02T00:00:00Z",
    )
    .await;
    assert_eq!(body["users"], serde_json::json!([]));
    let body = get(&app, &zed.token, "/stats/most-active?limit=1").await;
    assert_eq!(body["users"].as_array().unwrap().len(), 1);
}

/// All-time rankings read only the largest counters and those tied with the last one shown:
/// every limit, including ones that cut through a tie, gives the head of the full ranking.
#[tokio::test]
async fn every_limit_gives_the_head_of_the_all_time_ranking() {
    let app = spawn_app().await;
    // Signed up one after the other so that ids (the counters' key order) run against names
    // among the tied: a store that cut a tie in key order would show c before a.
    let mut users: Vec<TestUser> = Vec::new();
    for prefix in ["tie-z", "tie-c", "tie-b", "tie-a", "tie-e"] {
        users.push(app.signup(prefix).await);
    }
    let general = app.general(&users[0].token).await;
    // Sent: z 6, c 2, b 2, a 2, e 1. Direct messages from z: to c twice, b twice, a once.
    for (sender, n) in [(0, 1), (1, 2), (2, 2), (3, 2), (4, 1)] {
        for _ in 0..n {
            app.post_to_room(&users[sender].token, &general, "hi").await;
        }
    }
    for (to, n) in [(1, 2), (2, 2), (3, 1)] {
        for _ in 0..n {
            app.post_to_user(&users[0].token, &users[to].username, "dm")
                .await;
        }
    }
    let names: HashMap<String, String> = users
        .iter()
        .map(|u| (u.id.clone(), u.username.clone()))
        .collect();
    let count = |pairs: &[(usize, i64)]| -> HashMap<String, i64> {
        pairs
            .iter()
            .map(|&(u, n)| (users[u].id.clone(), n))
            .collect()
    };
    let sent = ranking(count(&[(0, 6), (1, 2), (2, 2), (3, 2), (4, 1)]), &names);
    let received = ranking(count(&[(1, 2), (2, 2), (3, 1)]), &names);
    for limit in 1..=6 {
        let partners = format!("/stats/users/{}?limit={limit}", users[0].username);
        for (path, key, ranking) in [
            (format!("/stats/most-active?limit={limit}"), "users", &sent),
            (
                format!("/stats/most-solicited?limit={limit}"),
                "users",
                &received,
            ),
            (partners, "top_partners", &received),
        ] {
            let body = get(&app, &users[0].token, &path).await;
            let expected = &ranking[..limit.min(ranking.len())];
            assert_eq!(listed(&body, key, "user_id"), expected, "{path}");
        }
    }
}

#[tokio::test]
async fn bad_statistics_parameters_are_rejected() {
    let app = spawn_app().await;
    let user = app.signup("stats").await;
    for (path, status, code) in [
        (
            "/stats/most-active?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_window",
        ),
        (
            "/stats/rooms?limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        (
            "/stats/most-solicited?limit=100000",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
        ),
        (
            "/stats/most-active?from=yesterday",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/stats/activity?bucket=week",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        ("/stats/activity", StatusCode::BAD_REQUEST, "invalid_query"),
        (
            "/stats/activity?bucket=hour&from=2000-01-01T00:00:00Z",
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_buckets",
        ),
        (
            "/stats/summary?from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_window",
        ),
        (
            "/stats/users/nobody-here",
            StatusCode::NOT_FOUND,
            "user_not_found",
        ),
        // Times chrono reads but no date arithmetic survives: refused before any.
        (
            "/stats/activity?bucket=day&to=-262143-01-01T00:00:00Z",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_window",
        ),
        (
            "/stats/most-active?from=%2B262142-12-31T23:30:00Z&to=%2B262142-12-31T23:59:00Z",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_window",
        ),
        (
            "/stats/summary?from=1969-12-31T23:59:59Z",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_window",
        ),
    ] {
        let res = app.get_authed(path, &user.token).await;
        assert_eq!(error_code(res, status).await, code, "{path}");
    }
    // A window ending just after 1970 starts there, not before.
    let early: Value = app
        .get_json(
            "/stats/activity?bucket=hour&to=1970-01-01T05:00:00Z",
            &user.token,
        )
        .await;
    assert_eq!(early["from"], "1970-01-01T00:00:00Z");
    assert_eq!(early["points"].as_array().unwrap().len(), 5);
    // A query string that does not parse names the parameter at fault.
    for (path, names) in [
        (
            "/stats/most-active?from=yesterday",
            "query parameter `from`",
        ),
        ("/stats/rooms?limit=-1", "query parameter `limit`"),
        ("/stats/activity?bucket=week", "query parameter `bucket`"),
        ("/stats/activity", "missing field `bucket`"),
    ] {
        let res = app.get_authed(path, &user.token).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = res.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(names), "{path}: {message}");
    }
    let res = app.get("/stats/summary").send().await.unwrap();
    assert_eq!(
        error_code(res, StatusCode::UNAUTHORIZED).await,
        "missing_token"
    );
}

/// History older than the settle delay is summed once per instance and then served from
/// memory: every window over it, asked twice (computed, then remembered), equals a
/// brute-force count. The messages are written as the generator writes them, backdated.
#[tokio::test]
async fn settled_history_is_counted_exactly_when_remembered() {
    let app = spawn_app().await;
    let mut users: Vec<TestUser> = Vec::new();
    for i in 0..4 {
        users.push(app.signup(&format!("h{i}-")).await);
    }
    let general = app.general(&users[0].token).await;
    let mut names: HashMap<String, String> = users
        .iter()
        .map(|u| (u.id.clone(), u.username.clone()))
        .collect();
    names.insert(general.clone(), "general".to_owned());
    let store = Store::connect(&app.settings).await.unwrap();
    let messages = store.database().collection::<MessageRecord>("messages");

    let now = Utc::now();
    let mut rng = StdRng::seed_from_u64(11);
    let mut sent: Vec<Sent> = Vec::new();
    for _ in 0..150 {
        let at = now - Duration::milliseconds(rng.gen_range(20 * 60_000..9 * 86_400_000));
        let s = [0, 0, 0, 1, 1, 2, 3][rng.gen_range(0..7)];
        let r = (s + rng.gen_range(1..4)) % 4;
        let direct = rng.gen_bool(0.5);
        let id = ObjectId::new();
        let record = MessageRecord {
            id,
            seq: id.to_hex(),
            conversation: String::new(),
            sender_id: users[s].id.clone(),
            sender_name: users[s].username.clone(),
            room_id: (!direct).then(|| general.clone()),
            recipient_id: direct.then(|| users[r].id.clone()),
            recipient_name: direct.then(|| users[r].username.clone()),
            body: "backdated".to_owned(),
            created_at: mongodb::bson::DateTime::from_millis(at.timestamp_millis()),
            at_ms: at.timestamp_millis(),
            ..MessageRecord::default()
        };
        messages.insert_one(&record).await.unwrap();
        store.record_activity(&record).await.unwrap();
        sent.push(Sent {
            sender: record.sender_id.clone(),
            room: record.room_id.clone(),
            to: record.recipient_id.clone(),
            at: DateTime::from_timestamp_millis(record.at_ms).unwrap(),
        });
    }

    type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let windows: Vec<Bounds> = vec![
        (None, None),
        (Some(now - Duration::days(7)), None),
        (
            Some(now - Duration::days(7) + Duration::minutes(13)),
            Some(now - Duration::hours(3) + Duration::minutes(7)),
        ),
        (Some(now - Duration::days(8)), Some(now - Duration::days(1))),
        (
            Some(now - Duration::days(2)),
            Some(now - Duration::minutes(30)),
        ),
    ];
    for _ in 0..2 {
        for &(from, to) in &windows {
            check_window(&app, &users[0].token, &users, &names, &sent, from, to).await;
        }
    }
}

/// Counters are written behind the messages: the posting instance reads its own posts at
/// once, another instance sees them within a bound, and nothing is counted twice.
#[tokio::test]
async fn counters_written_behind_reach_every_instance_exactly() {
    let a = spawn_app().await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let general = a.general(&alice.token).await;
    for i in 0..5 {
        a.post_to_room(&alice.token, &general, &format!("m{i}"))
            .await;
    }
    let own = get(&a, &alice.token, "/stats/summary").await;
    assert_eq!(own["messages"], 5);
    let seen = eventually(std::time::Duration::from_secs(5), || async {
        get(&b, &alice.token, "/stats/summary").await["messages"] == 5
    })
    .await;
    assert!(seen, "the other instance never saw the 5 messages");
    // Written once: still 5 after further flushes on both instances.
    a.post_to_room(&alice.token, &general, "sixth").await;
    assert_eq!(get(&a, &alice.token, "/stats/summary").await["messages"], 6);
    let seen = eventually(std::time::Duration::from_secs(5), || async {
        get(&b, &alice.token, "/stats/most-active").await["users"][0]["count"] == 6
    })
    .await;
    assert!(seen, "the other instance never saw the sixth message");
    assert_eq!(get(&b, &alice.token, "/stats/summary").await["messages"], 6);
}

/// The history generator loads counters where the statistics read them: over the whole
/// history and over windows inside it, every ranking and total equals a count of the
/// messages it generated.
#[tokio::test]
async fn a_generated_history_is_what_the_statistics_count() {
    let app = spawn_app().await;
    let generator = env!("CARGO_BIN_EXE_generate-history");
    let (uri, database) = (
        app.settings.mongodb_uri.clone(),
        app.settings.mongodb_database.clone(),
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(generator)
            .args([
                "--users",
                "6",
                "--rooms",
                "3",
                "--messages",
                "400",
                "--days",
                "3",
            ])
            .env("MONGODB_URI", uri)
            .env("MONGODB_DATABASE", database)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");

    let store = Store::connect(&app.settings).await.unwrap();
    let db = store.database();
    let users: Vec<UserRecord> = db
        .collection::<UserRecord>("users")
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let names: HashMap<String, String> = users
        .iter()
        .map(|u| (u.id.to_hex(), u.username.clone()))
        .collect();
    let generated: Vec<MessageRecord> = db
        .collection::<MessageRecord>("messages")
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(generated.len(), 400);

    let login: Value = app
        .login("user00000", "generated-password")
        .await
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let now = Utc::now();
    for (from, to) in [
        (None, None),
        (Some(now - Duration::days(1)), None),
        (
            Some(now - Duration::hours(50)),
            Some(now - Duration::hours(20)),
        ),
    ] {
        let inside = generated.iter().filter(|m| {
            let at = DateTime::from_timestamp_millis(m.at_ms).unwrap();
            from.is_none_or(|f| at >= f) && to.is_none_or(|t| at < t)
        });
        let mut active: HashMap<String, i64> = HashMap::new();
        let mut total = 0;
        for m in inside {
            *active.entry(m.sender_id.clone()).or_default() += 1;
            total += 1;
        }
        let q = query(from, to);
        let body = get(&app, &token, &format!("/stats/most-active?{q}")).await;
        assert_eq!(
            listed(&body, "users", "user_id"),
            ranking(active, &names),
            "most-active {from:?}..{to:?}"
        );
        let body = get(&app, &token, &format!("/stats/summary?{q}")).await;
        assert_eq!(body["messages"], total, "summary {from:?}..{to:?}");
    }
}

/// Anyone may see how much another user writes, but not to whom: `top_partners` is only in
/// one's own statistics.
#[tokio::test]
async fn another_users_statistics_do_not_say_whom_they_write_to() {
    let app = spawn_app().await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let carol = app.signup("carol").await;
    app.post_to_user(&alice.token, &bob.username, "private")
        .await;

    let path = format!("/stats/users/{}", alice.username);
    let own = get(&app, &alice.token, &path).await;
    assert_eq!(
        listed(&own, "top_partners", "user_id"),
        [(bob.id.clone(), 1)]
    );
    for window in ["", "?from=2020-01-01T00:00:00Z"] {
        let other = get(&app, &carol.token, &format!("{path}{window}")).await;
        assert_eq!(other["sent"], 1, "{other}");
        assert!(other.get("top_partners").is_none(), "{other}");
    }
}
