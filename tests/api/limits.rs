//! Per-user write limits, counted in Redis across instances, and the metrics endpoint.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app_with, unique};

/// Asserts a 429 `rate_limited` with a `Retry-After` within the minute.
async fn assert_limited(res: Response, what: &str) {
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "{what}: Retry-After {retry_after}"
    );
    assert_eq!(
        error_code(res, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited",
        "{what}"
    );
}

fn id(message: &Value) -> String {
    message["id"].as_str().unwrap().to_owned()
}

/// Every kind of write spends one budget per user, on both instances together; once it is
/// spent each kind is refused with 429 and writes nothing, while another user writes on.
#[tokio::test]
async fn every_write_spends_one_budget_per_user_across_instances() {
    let a = spawn_app_with(&[("WRITE_RATE_LIMIT_PER_MINUTE", "8".to_owned())]).await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = a.signup("bob").await;
    let general = a.general(&alice.token).await;

    // Eight writes of every kind, alternating between the instances: all allowed.
    let first = a.post_to_room(&alice.token, &general, "one").await; // 1
    let room = b.create_room(&alice.token, &unique("limits")).await; // 2
    assert!(
        a.leave_room(&alice.token, &room)
            .await
            .status()
            .is_success()
    ); // 3
    assert!(b.join_room(&alice.token, &room).await.status().is_success()); // 4
    assert_eq!(
        a.edit(&alice.token, &id(&first), "one, edited")
            .await
            .status(),
        StatusCode::OK
    ); // 5
    assert_eq!(
        b.react(&alice.token, &id(&first), "👍", true)
            .await
            .status(),
        StatusCode::NO_CONTENT
    ); // 6
    assert_eq!(
        a.react(&alice.token, &id(&first), "👍", false)
            .await
            .status(),
        StatusCode::NO_CONTENT
    ); // 7
    let second = b.post_to_room(&alice.token, &general, "two").await; // 8

    // The ninth of any kind, on either instance, is refused.
    let post = json!({ "room_id": general, "body": "refused post" });
    assert_limited(a.send_message(&alice.token, &post).await, "post on a").await;
    assert_limited(b.send_message(&alice.token, &post).await, "post on b").await;
    assert_limited(
        a.edit(&alice.token, &id(&second), "refused edit").await,
        "edit",
    )
    .await;
    assert_limited(b.delete(&alice.token, &id(&second)).await, "delete").await;
    assert_limited(
        a.react(&alice.token, &id(&second), "🎉", true).await,
        "react",
    )
    .await;
    assert_limited(
        b.react(&alice.token, &id(&second), "🎉", false).await,
        "unreact",
    )
    .await;
    let create = a
        .post("/rooms")
        .bearer_auth(&alice.token)
        .json(&json!({ "name": unique("refused") }))
        .send()
        .await
        .unwrap();
    assert_limited(create, "create room").await;
    assert_limited(b.join_room(&alice.token, &room).await, "join").await;
    assert_limited(a.leave_room(&alice.token, &room).await, "leave").await;

    // Nothing refused was written; reading is not limited; bob has a budget of his own.
    let history = a
        .get_json(&format!("/rooms/{general}/messages"), &alice.token)
        .await;
    let bodies: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["two", "one, edited"]);
    let reactions = &history["messages"][1]["reactions"];
    assert!(
        reactions.is_null() || reactions == &json!([]),
        "{reactions}"
    );
    b.post_to_room(&bob.token, &general, "bob writes on").await;
}

/// Read markers and typing signals have a budget of their own: spending it refuses both,
/// in rooms and in direct conversations, and leaves posting alone.
#[tokio::test]
async fn read_markers_and_typing_spend_the_signal_budget() {
    let a = spawn_app_with(&[("SIGNAL_RATE_LIMIT_PER_MINUTE", "3".to_owned())]).await;
    let b = a.spawn_sibling().await;
    let alice = a.signup("alice").await;
    let bob = a.signup("bob").await;
    let general = a.general(&alice.token).await;
    let message = a.post_to_room(&bob.token, &general, "read me").await;
    let room = format!("/rooms/{general}");
    let direct = format!("/conversations/{}", bob.username);

    assert_eq!(
        a.typing(&alice.token, &room).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        b.mark_read(&alice.token, &room, &id(&message))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        a.typing(&alice.token, &direct).await.status(),
        StatusCode::ACCEPTED
    );

    assert_limited(b.typing(&alice.token, &room).await, "typing in a room").await;
    assert_limited(
        a.typing(&alice.token, &direct).await,
        "typing in a conversation",
    )
    .await;
    assert_limited(
        b.mark_read(&alice.token, &room, &id(&message)).await,
        "room read",
    )
    .await;
    assert_limited(
        a.mark_read(&alice.token, &direct, &id(&message)).await,
        "direct read",
    )
    .await;

    a.post_to_room(&alice.token, &general, "posting is another budget")
        .await;
    assert_eq!(
        b.typing(&bob.token, &room).await.status(),
        StatusCode::ACCEPTED
    );
}

/// `GET /metrics` on `METRICS_ADDR` shows the series an operator watches, with the values
/// of what was just done; the API's own listener does not serve it.
#[tokio::test]
async fn metrics_show_requests_streams_delivery_and_dependencies() {
    let app = spawn_app_with(&[
        ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("PRESENCE_TTL_SECS", "1".to_owned()),
        ("WRITE_RATE_LIMIT_PER_MINUTE", "2".to_owned()),
    ])
    .await;
    let port = app.metrics_port.expect("METRICS_ADDR is set");
    let scrape = || async move {
        let res = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        res.text().await.unwrap()
    };
    let alice = app.signup("alice").await;
    let general = app.general(&alice.token).await;
    let mut stream = app.ready_events(&alice.token).await;
    app.post_to_room(&alice.token, &general, "measured").await;
    stream.expect("message").await;
    app.post_to_room(&alice.token, &general, "the last one allowed")
        .await;
    let refused = json!({ "room_id": general, "body": "over the limit" });
    assert_limited(app.send_message(&alice.token, &refused).await, "third post").await;

    app.get_json(&format!("/rooms/{general}/messages"), &alice.token)
        .await;

    // The stream's event is counted when written, presence at the next sweep: scrape until
    // both are there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = scrape().await;
        let complete = text.contains("chat_users_online ")
            && text.contains(r#"chat_sse_events_sent_total{type="message"}"#);
        if complete || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for series in [
        r#"chat_http_requests_total{method="POST",route="/messages",status="201"}"#,
        r#"chat_http_requests_total{method="POST",route="/messages",status="429"}"#,
        r#"chat_http_request_duration_seconds_bucket{method="GET",route="/rooms/{room_id}/messages",status="200",le="0.1"}"#,
        "chat_sse_streams ",
        "chat_messages_posted_total ",
        "chat_log_events_appended_total ",
        "chat_delivery_lag_seconds_bucket{le=",
        r#"chat_delivery_waiting_batches{stage="announce"}"#,
        r#"chat_store_commands_total{command="insert",outcome="ok"}"#,
        r#"chat_store_command_duration_seconds_bucket{command="find",le="#,
        r#"chat_redis_commands_total{command="EVALSHA",outcome="ok"}"#,
        r#"chat_redis_command_duration_seconds_bucket{command="EVALSHA",le="#,
        r#"chat_rate_limited_total{budget="writes"}"#,
        "# TYPE chat_http_request_duration_seconds histogram",
    ] {
        assert!(text.contains(series), "no `{series}` in:\n{text}");
    }
    let open_streams = text
        .lines()
        .find_map(|line| line.strip_prefix("chat_sse_streams "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap();
    assert!(open_streams >= 1.0, "the stream is open: {open_streams}");
    let api = app.get("/metrics").send().await.unwrap();
    assert_eq!(
        api.status(),
        StatusCode::NOT_FOUND,
        "not on the public listener"
    );
}
