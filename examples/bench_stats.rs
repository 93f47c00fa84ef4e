//! Latency of every statistics endpoint, all-time and over the last 7 days, then of the
//! read-state requests and of search: N sequential requests each after a warm-up, the first
//! request's time and p50/p95/max printed as tables. Run by `scripts/bench-stats.sh` against a
//! server loaded by `generate-history`.
//!
//! Before measuring it posts `BENCH_LIVE_POSTS` messages to `general` through the API, as a
//! server in use has them: the current hour then always holds messages, whenever the
//! generator ran (a read of that unsettled hour's messages on every request went unnoticed
//! when it held none).
//!
//! Environment: `BASE_URL` (default http://127.0.0.1:18100), `BENCH_USER` (user00000),
//! `BENCH_PASSWORD` (generated-password), `BENCH_REQUESTS` (50), `BENCH_LIVE_POSTS` (2000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    let i = (sorted.len() * p)
        .div_ceil(100)
        .saturating_sub(1)
        .min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1000.0
}

/// Sends `request` and reads its JSON answer, which must be a success.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn general_room(client: &reqwest::Client, base: &str, token: &str) -> String {
    let rooms = json_of(client.get(format!("{base}/rooms")).bearer_auth(token)).await;
    rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|room| room["name"] == "general")
        .and_then(|room| room["id"].as_str())
        .expect("a `general` room")
        .to_owned()
}

/// Posts `count` messages to `general`, 16 at a time.
async fn post_live_traffic(client: &reqwest::Client, base: &str, token: &str, count: usize) {
    if count == 0 {
        return;
    }
    let general = general_room(client, base, token).await;
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let posters: Vec<_> = (0..16)
        .map(|_| {
            let (client, next) = (client.clone(), Arc::clone(&next));
            let (url, token, general) = (
                format!("{base}/messages"),
                token.to_owned(),
                general.clone(),
            );
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"room_id": general, "body": "live traffic"}))
                        .send()
                        .await
                        .unwrap()
                        .error_for_status()
                        .unwrap();
                }
            })
        })
        .collect();
    for poster in posters {
        poster.await.unwrap();
    }
    eprintln!(
        "posted {count} messages to general in {:.1} s (the current hour's live traffic)",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let base = env("BASE_URL", "http://127.0.0.1:18100");
    let requests: usize = env("BENCH_REQUESTS", "50").parse().unwrap();
    let client = reqwest::Client::new();
    let login = json_of(
        client
            .post(format!("{base}/auth/login"))
            .json(&json!({"username": env("BENCH_USER", "user00000"), "password": env("BENCH_PASSWORD", "generated-password")})),
    )
    .await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    let live_posts: usize = env("BENCH_LIVE_POSTS", "2000").parse().unwrap();
    post_live_traffic(&client, &base, &token, live_posts).await;
    let week = format!(
        "from={}",
        (Utc::now() - chrono::Duration::days(7)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    // `/conversations` is read from the same counters (the user's partners), with no window.
    let endpoints = [
        ("/stats/most-active", true),
        ("/stats/most-solicited", true),
        ("/stats/rooms", true),
        ("/stats/summary", true),
        ("/stats/users/user00000", true),
        ("/stats/activity?bucket=day", true),
        ("/conversations?limit=20", false),
    ];
    println!("| endpoint | window | first (cold) ms | p50 ms | p95 ms | max ms |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for (endpoint, windowed) in endpoints {
        let windows = if windowed {
            vec![("all time", String::new()), ("7 days", week.clone())]
        } else {
            vec![("latest 20", String::new())]
        };
        for (label, window) in windows {
            let separator = if endpoint.contains('?') { '&' } else { '?' };
            let mut url = format!("{base}{endpoint}");
            if !window.is_empty() {
                url = format!("{url}{separator}{window}");
            } else if endpoint.contains("activity") {
                // "All time" for the series: the 90 days the generator spans.
                let from = (Utc::now() - chrono::Duration::days(91))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                url = format!("{url}&from={from}");
            }
            let (cold, times) = timed(requests, || client.get(&url).bearer_auth(&token)).await;
            print_row(&format!("`{endpoint}`"), label, cold, &times);
        }
    }

    // Read state and search. The marker moves through the live traffic's messages, oldest
    // first, so that every request moves it.
    let general = general_room(&client, &base, &token).await;
    let page = json_of(
        client
            .get(format!("{base}/rooms/{general}/messages?limit=200"))
            .bearer_auth(&token),
    )
    .await;
    let mut ids: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.reverse();
    let next = AtomicUsize::new(0);
    let (cold, times) = timed(requests.min(ids.len().saturating_sub(3)), || {
        let id = &ids[next.fetch_add(1, Ordering::Relaxed) % ids.len()];
        client
            .post(format!("{base}/rooms/{general}/read"))
            .bearer_auth(&token)
            .json(&json!({ "last_read": id }))
    })
    .await;
    println!();
    println!("| request | what | first (cold) ms | p50 ms | p95 ms | max ms |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    print_row(
        "`POST /rooms/{general}/read`",
        "a move each time",
        cold,
        &times,
    );
    for (path, what) in [
        ("/rooms", "the user's rooms with their read state"),
        (
            "/conversations?limit=20",
            "20 conversations with their read state",
        ),
        ("/search?q=topic1000", "a rare word"),
        ("/search?q=topic30", "a word in 0.1% of messages"),
        ("/search?q=topic1", "a word in 3% of messages"),
        ("/search?q=coffee", "a word in 15% of messages"),
        ("/search?q=coffee%20topic30", "two words"),
    ] {
        let url = format!("{base}{path}");
        let (cold, times) = timed(requests, || client.get(&url).bearer_auth(&token)).await;
        print_row(&format!("`GET {path}`"), what, cold, &times);
    }
}

/// Sends `count` requests made by `request` one after another, after three warm-up requests
/// (the first finds nothing remembered on this instance: cold). The cold time and the
/// measured times, sorted.
async fn timed(
    count: usize,
    mut request: impl FnMut() -> reqwest::RequestBuilder,
) -> (Duration, Vec<Duration>) {
    let mut cold = Duration::ZERO;
    let mut times = Vec::with_capacity(count);
    for i in 0..count + 3 {
        let started = Instant::now();
        let res = request().send().await.unwrap();
        res.error_for_status().unwrap().bytes().await.unwrap();
        match i {
            0 => cold = started.elapsed(),
            1 | 2 => {}
            _ => times.push(started.elapsed()),
        }
    }
    times.sort();
    (cold, times)
}

fn print_row(what: &str, label: &str, cold: Duration, times: &[Duration]) {
    println!(
        "| {what} | {label} | {:.1} | {:.1} | {:.1} | {:.1} |",
        cold.as_secs_f64() * 1000.0,
        percentile(times, 50),
        percentile(times, 95),
        percentile(times, 100)
    );
}
