//! Load generator of the issue-6 benchmarks: the send path, SSE fan-out and idle streams,
//! each next to its ceiling (a bare MongoDB insert, `GET /healthz`, nchan). Run by
//! `scripts/bench.sh`; every subcommand prints ONE markdown table row on stdout (the columns
//! of `loadgen header`) and a human summary on stderr.
//!
//! ```text
//! loadgen header
//! loadgen send     --url BASE --users N --concurrency C --seconds S
//! loadgen healthz  --url BASE --concurrency C --seconds S
//! loadgen mongo-insert --uri MONGODB_URI --db NAME --concurrency C --seconds S
//! loadgen fanout   --target api|nchan --sub-urls U1,U2 --pub-url U --subscribers N
//!                  --messages M [--publishers 4] [--users 20] --timeout-secs T
//! loadgen idle     --target api|nchan --url U1[,U2] --streams N --hold-secs H
//!                  --ready-file PATH [--users 20] [--timeout-secs T]
//! loadgen log-append --redis REDIS_URL --batch B --concurrency C --seconds S
//! ```
//!
//! `log-append` measures one Redis event log on its own: C tasks append batches of B events
//! (300-byte messages) through the API's own append script; the rate is events per second.
//!
//! For `api`, URLs are API base URLs (`http://127.0.0.1:18110`; streams are `BASE/events`,
//! messages are posted to `general` through `--pub-url`); for `nchan` they are the full
//! subscriber / publisher URLs (`http://127.0.0.1:18120/sub/bench`, `.../pub/bench`). Every
//! published body is `<seq> <unix micros at send> <run tag>`; subscribers parse the event
//! stream incrementally and record publish-to-deliver latency and which sequence numbers
//! arrived. Common options: `--label` (the target column), `--prefix` (user names, `lg`),
//! `--login-url BASE` (where API users log in, so password hashing does not land on a measured
//! instance), `--cpu NAME:PID[+PID],...` (CPU seconds of those processes and of the load
//! generator during the measured phase, added to the note).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, stream};
use mongodb::bson::{self, Bson, doc, oid::ObjectId};
use mongodb::options::{ClientOptions, WriteConcern};
use reqwest::{Client, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

const HEADER: &str =
    "| scenario | target | load | rate/s | p50 ms | p99 ms | max ms | errors/lost/dup | note |";
const RULE: &str = "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |";
const PASSWORD: &str = "loadgen-password";
/// Connection attempts in flight at once, so the server's accept queue is never overrun.
const CONNECT_PARALLELISM: usize = 200;
/// Streams per HTTP client (each client has its own connection pool and connector).
const STREAMS_PER_CLIENT: usize = 256;
/// How long one HTTP request (not a stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = raw.split_first() else {
        die("usage: loadgen header|send|healthz|mongo-insert|fanout|idle --key value ...");
    };
    let args = Args::parse(rest);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        match command.as_str() {
            "header" => {
                println!("{HEADER}\n{RULE}");
                0
            }
            "send" => send(&args).await,
            "healthz" => healthz(&args).await,
            "mongo-insert" => mongo_insert(&args).await,
            "fanout" => fanout(&args).await,
            "idle" => idle(&args).await,
            "log-append" => log_append(&args).await,
            other => die(&format!("unknown subcommand `{other}`")),
        }
    });
    // Streams still open are simply dropped: do not wait for the runtime to wind them down.
    std::process::exit(code);
}

fn die(message: &str) -> ! {
    eprintln!("loadgen: {message}");
    std::process::exit(2);
}

// --- arguments ---------------------------------------------------------------------------

struct Args(HashMap<String, String>);

impl Args {
    fn parse(raw: &[String]) -> Self {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(key) = it.next() {
            let Some(name) = key.strip_prefix("--") else {
                die(&format!("expected --key, got `{key}`"));
            };
            let Some(value) = it.next() else {
                die(&format!("--{name} needs a value"));
            };
            map.insert(name.to_owned(), value.clone());
        }
        Self(map)
    }

    fn required(&self, key: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| die(&format!("--{key} is required")))
    }

    fn string(&self, key: &str, default: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    fn number<T: FromStr>(&self, key: &str, default: T) -> T {
        match self.0.get(key) {
            None => default,
            Some(raw) => raw
                .parse()
                .unwrap_or_else(|_| die(&format!("--{key}: `{raw}` is not a number"))),
        }
    }

    fn list(&self, key: &str) -> Vec<String> {
        let list: Vec<String> = self
            .required(key)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if list.is_empty() {
            die(&format!("--{key} is empty"));
        }
        list
    }

    fn target(&self) -> Target {
        match self.required("target").as_str() {
            "api" => Target::Api,
            "nchan" => Target::Nchan,
            other => die(&format!("--target must be api or nchan, not `{other}`")),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Api,
    Nchan,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Api => "api",
            Target::Nchan => "nchan",
        }
    }
}

// --- measurements and output --------------------------------------------------------------

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// p50, p99, max in milliseconds of latencies in microseconds (sorts them).
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(samples: &mut [u32]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |p: usize| {
            let i = (samples.len() * p)
                .div_ceil(100)
                .saturating_sub(1)
                .min(samples.len() - 1);
            f64::from(samples[i]) / 1000.0
        };
        Some(Self {
            p50: at(50),
            p99: at(99),
            max: at(100),
        })
    }
}

struct Row {
    scenario: String,
    target: String,
    load: String,
    rate: Option<f64>,
    latency: Option<Percentiles>,
    errors: String,
    note: String,
}

impl Row {
    fn print(&self) {
        let rate = self.rate.map_or("-".to_owned(), |r| format!("{r:.0}"));
        let (p50, p99, max) = match &self.latency {
            Some(l) => (ms(l.p50), ms(l.p99), ms(l.max)),
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        println!(
            "| {} | {} | {} | {rate} | {p50} | {p99} | {max} | {} | {} |",
            self.scenario, self.target, self.load, self.errors, self.note
        );
    }
}

fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}

/// CPU time of named groups of processes over a phase, from `/proc/PID/stat`: `--cpu
/// "api:123+456,mongo:789"`; the load generator itself is always included.
struct CpuWatch {
    groups: Vec<(String, Vec<u32>)>,
    before: Vec<f64>,
}

impl CpuWatch {
    fn new(args: &Args) -> Self {
        let mut groups = Vec::new();
        for spec in args.string("cpu", "").split(',').filter(|s| !s.is_empty()) {
            let Some((name, pids)) = spec.split_once(':') else {
                die(&format!("--cpu: expected NAME:PID[+PID...], got `{spec}`"));
            };
            let pids = pids
                .split('+')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.parse()
                        .unwrap_or_else(|_| die(&format!("--cpu: bad pid `{p}`")))
                })
                .collect();
            groups.push((name.to_owned(), pids));
        }
        groups.push(("loadgen".to_owned(), vec![std::process::id()]));
        let mut watch = Self {
            groups,
            before: Vec::new(),
        };
        watch.before = watch.sample();
        watch
    }

    /// Seconds of CPU (user + system) used so far by each group.
    fn sample(&self) -> Vec<f64> {
        self.groups
            .iter()
            .map(|(_, pids)| pids.iter().map(|&pid| cpu_seconds(pid)).sum())
            .collect()
    }

    fn restart(&mut self) {
        self.before = self.sample();
    }

    /// `CPU s: api 1.23, loadgen 0.50` since `new` or `restart`.
    fn report(&self) -> String {
        let now = self.sample();
        let parts: Vec<String> = self
            .groups
            .iter()
            .zip(now.iter().zip(&self.before))
            .map(|((name, _), (now, before))| format!("{name} {:.2}", now - before))
            .collect();
        format!("CPU s: {}", parts.join(", "))
    }
}

/// utime + stime of a process (and its reaped threads), in seconds; 0 when it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on every Linux architecture this runs on.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

// --- closed-loop request benchmarks (send, healthz, mongo-insert) -------------------------

/// One operation of a closed loop: `(worker, iteration)` to a result.
type Op = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

struct LoopStats {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<u32>,
    first_error: Option<String>,
}

/// `concurrency` workers each run `op` back to back for `seconds`.
async fn closed_loop(concurrency: usize, seconds: u64, op: Op) -> LoopStats {
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(16 * 1024);
                let mut errors = 0u64;
                let mut first_error = None;
                let mut iteration = 0u64;
                while Instant::now() < end {
                    let began = Instant::now();
                    match op(worker, iteration).await {
                        Ok(()) => latencies.push(micros(began.elapsed())),
                        Err(err) => {
                            errors += 1;
                            first_error.get_or_insert(err);
                        }
                    }
                    iteration += 1;
                }
                (latencies, errors, first_error, Instant::now())
            })
        })
        .collect();
    let mut stats = LoopStats {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        first_error: None,
    };
    for worker in workers {
        let (latencies, errors, first_error, finished) = worker.await.expect("worker panicked");
        stats.ok += latencies.len() as u64;
        stats.latencies.extend(latencies);
        stats.errors += errors;
        if stats.first_error.is_none() {
            stats.first_error = first_error;
        }
        stats.elapsed = stats.elapsed.max(finished - start);
    }
    stats
}

fn report_loop(
    scenario: &str,
    target: String,
    concurrency: usize,
    seconds: u64,
    mut stats: LoopStats,
    note: String,
) -> i32 {
    let rate = stats.ok as f64 / stats.elapsed.as_secs_f64().max(1e-9);
    let latency = Percentiles::of(&mut stats.latencies);
    eprintln!(
        "{scenario} {target}: {} ok, {} errors in {:.1} s = {rate:.0}/s; p50 {} ms, p99 {} ms, max {} ms{}",
        stats.ok,
        stats.errors,
        stats.elapsed.as_secs_f64(),
        latency.as_ref().map_or("-".into(), |l| ms(l.p50)),
        latency.as_ref().map_or("-".into(), |l| ms(l.p99)),
        latency.as_ref().map_or("-".into(), |l| ms(l.max)),
        stats
            .first_error
            .as_ref()
            .map_or(String::new(), |e| format!("; first error: {e}")),
    );
    Row {
        scenario: scenario.to_owned(),
        target,
        load: format!("C={concurrency}, {seconds} s"),
        rate: Some(rate),
        latency,
        errors: stats.errors.to_string(),
        note,
    }
    .print();
    // Not one request succeeded: the row says so, and the exit status too.
    i32::from(stats.ok == 0)
}

fn http_client() -> Client {
    Client::builder()
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

async fn send(args: &Args) -> i32 {
    let base = args.required("url");
    let users: usize = args.number("users", 32);
    let concurrency: usize = args.number("concurrency", 32);
    let seconds: u64 = args.number("seconds", 10);
    let client = http_client();
    let (tokens, general) = api_users(&client, &base, &args.string("prefix", "lg"), users).await;
    let tokens = Arc::new(tokens);
    let url = Arc::new(format!("{base}/messages"));
    let op: Op = Arc::new(move |worker, iteration| {
        let client = client.clone();
        let url = Arc::clone(&url);
        let token = tokens[worker % tokens.len()].clone();
        let body = json!({"room_id": general, "body": format!("loadgen {worker} {iteration}")});
        async move {
            let response = client
                .post(url.as_str())
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            succeeded(response).await
        }
        .boxed()
    });
    let cpu = CpuWatch::new(args);
    let stats = bounded_closed_loop("send", concurrency, seconds, op).await;
    let note = format!(
        "{users} users, room general; {} ok; {}",
        stats.ok,
        cpu.report()
    );
    let target = args.string("label", "api POST /messages");
    report_loop("send", target, concurrency, seconds, stats, note)
}

/// Reads the whole answer; an error unless its status is 2xx.
async fn succeeded(response: reqwest::Response) -> Result<(), String> {
    let status = response.status();
    response.bytes().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// [`closed_loop`] for `seconds`, given up (the process exits) 30 s after it should have ended.
async fn bounded_closed_loop(name: &str, concurrency: usize, seconds: u64, op: Op) -> LoopStats {
    tokio::time::timeout(
        Duration::from_secs(seconds + 30),
        closed_loop(concurrency, seconds, op),
    )
    .await
    .unwrap_or_else(|_| die(&format!("{name}: the run did not end in time")))
}

async fn healthz(args: &Args) -> i32 {
    let base = args.required("url");
    let concurrency: usize = args.number("concurrency", 32);
    let seconds: u64 = args.number("seconds", 10);
    let client = http_client();
    let url = Arc::new(format!("{base}/healthz"));
    let op: Op = Arc::new(move |_, _| {
        let client = client.clone();
        let url = Arc::clone(&url);
        async move {
            let response = client
                .get(url.as_str())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            succeeded(response).await
        }
        .boxed()
    });
    let cpu = CpuWatch::new(args);
    let stats = bounded_closed_loop("healthz", concurrency, seconds, op).await;
    let note = format!("HTTP ceiling; {} ok; {}", stats.ok, cpu.report());
    let target = args.string("label", "api GET /healthz");
    report_loop("send ceiling", target, concurrency, seconds, stats, note)
}

async fn log_append(args: &Args) -> i32 {
    use chat_server::domain::RoomId;
    use chat_server::live::{Audience, EventKind, Live, NewEvent};
    let redis = args.required("redis");
    let batch: usize = args.number("batch", 1);
    let concurrency: usize = args.number("concurrency", 32);
    let seconds: u64 = args.number("seconds", 10);
    let prefix = format!("loadgen:{}:", ObjectId::new().to_hex());
    let vars = [
        ("REDIS_URL", redis.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("APP_ENV", "development"),
    ];
    let settings = chat_server::config::Settings::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .unwrap_or_else(|e| die(&format!("settings: {e}")));
    let live = Live::connect(&settings).unwrap_or_else(|e| die(&format!("redis: {e}")));
    let event = NewEvent {
        kind: EventKind::Message,
        audience: Audience::Room(RoomId::new()),
        data: json!({"body": "x".repeat(220), "id": ObjectId::new().to_hex()}).to_string(),
    };
    let events = Arc::new(vec![event; batch]);
    let op: Op = Arc::new(move |worker, iteration| {
        let (live, events) = (live.clone(), Arc::clone(&events));
        async move {
            let id = format!("{worker}-{iteration}");
            live.append(&id, &events)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        .boxed()
    });
    let cpu = CpuWatch::new(args);
    let mut stats = bounded_closed_loop("log-append", concurrency, seconds, op).await;
    let calls = stats.ok;
    let note = format!(
        "{calls} script calls of {batch} events; rate = events/s; {}",
        cpu.report()
    );
    // The row's rate counts events, not calls.
    stats.ok *= batch as u64;
    let target = args.string("label", &format!("append script, {batch} events a call"));
    report_loop("log", target, concurrency, seconds, stats, note)
}

async fn mongo_insert(args: &Args) -> i32 {
    let uri = args.required("uri");
    let db = args.required("db");
    let collection = args.string("collection", "messages");
    let concurrency: usize = args.number("concurrency", 32);
    let seconds: u64 = args.number("seconds", 10);
    // The options the API uses (see src/store/mod.rs): majority writes, retryable writes,
    // the driver's default pool.
    let mut options = ClientOptions::parse(&uri)
        .await
        .unwrap_or_else(|e| die(&format!("bad --uri: {e}")));
    options.app_name = Some("loadgen".to_owned());
    options.retry_writes = Some(true);
    options.write_concern = Some(
        WriteConcern::builder()
            .w(mongodb::options::Acknowledgment::Majority)
            .journal(true)
            .build(),
    );
    let pool = options.max_pool_size.unwrap_or(10);
    let client = mongodb::Client::with_options(options).expect("mongodb client");
    let messages = client
        .database(&db)
        .collection::<bson::Document>(&collection);
    let room = ObjectId::new().to_hex();
    let sender = ObjectId::new().to_hex();
    let shared = Arc::new((messages, room, sender));
    let op: Op = Arc::new(move |worker, iteration| {
        let shared = Arc::clone(&shared);
        async move {
            let (messages, room, sender) = &*shared;
            let id = ObjectId::new();
            let now = bson::DateTime::now();
            let message = doc! {
                "_id": id,
                "seq": id.to_hex(),
                "conversation": format!("r:{room}"),
                "sender_id": sender.as_str(),
                "sender_name": "loadgen",
                "room_id": room.as_str(),
                "recipient_id": Bson::Null,
                "recipient_name": Bson::Null,
                "body": format!("loadgen {worker} {iteration}"),
                "created_at": now,
                "at_ms": now.timestamp_millis(),
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, messages.insert_one(message)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!(
                    "insert_one: no answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )),
            }
        }
        .boxed()
    });
    let cpu = CpuWatch::new(args);
    let stats = bounded_closed_loop("mongo-insert", concurrency, seconds, op).await;
    let note = format!(
        "1 insert_one per op, w:majority, pool {pool}, {db}.{collection}; {} ok; {}",
        stats.ok,
        cpu.report()
    );
    let target = args.string("label", "mongo insert_one");
    report_loop("send ceiling", target, concurrency, seconds, stats, note)
}

// --- API users -----------------------------------------------------------------------------

/// Registers (or reuses) `count` users named `<prefix>NNNN`, logs them in, and returns their
/// tokens and the id of `general`.
async fn api_users(
    client: &Client,
    base: &str,
    prefix: &str,
    count: usize,
) -> (Vec<String>, String) {
    let count = count.max(1);
    let tokens: Vec<String> = stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            let username = format!("{prefix}{i:04}");
            async move {
                let credentials = json!({"username": username, "password": PASSWORD});
                let response = client
                    .post(format!("{base}/auth/register"))
                    .json(&credentials)
                    .send()
                    .await
                    .unwrap_or_else(|e| die(&format!("register {username}: {e}")));
                let status = response.status();
                if !(status.is_success() || status == StatusCode::CONFLICT) {
                    let body = response.text().await.unwrap_or_default();
                    die(&format!("register {username}: HTTP {status} {body}"));
                }
                let response = client
                    .post(format!("{base}/auth/login"))
                    .json(&credentials)
                    .send()
                    .await
                    .unwrap_or_else(|e| die(&format!("login {username}: {e}")));
                let status = response.status();
                let body: Value = response.json().await.unwrap_or_default();
                match body["access_token"].as_str() {
                    Some(token) if status.is_success() => token.to_owned(),
                    _ => die(&format!("login {username}: HTTP {status} {body}")),
                }
            }
        })
        // Password hashing is the server's most expensive operation: a few at a time.
        .buffered(4)
        .collect()
        .await;
    let rooms: Value = client
        .get(format!("{base}/rooms"))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap_or_else(|e| die(&format!("GET /rooms: {e}")))
        .json()
        .await
        .unwrap_or_else(|e| die(&format!("GET /rooms: {e}")));
    let general = rooms["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|room| room["name"] == "general")
        .and_then(|room| room["id"].as_str())
        .unwrap_or_else(|| die(&format!("no `general` room in {rooms}")))
        .to_owned();
    (tokens, general)
}

// --- Server-Sent Events ------------------------------------------------------------------

/// One dispatched event; borrowed from the parser's buffers.
struct SseEvent<'a> {
    event: &'a str,
    data: &'a str,
    #[allow(dead_code)]
    id: &'a str,
}

/// Incremental parser of `text/event-stream`, as the HTML standard interprets it: lines end
/// with `\n`, `\r\n` or `\r` (even split across chunks); `data:` lines are joined with `\n`;
/// `event:` and `id:` fields; lines starting with `:` are comments; one space after the colon
/// is dropped; a blank line dispatches the event (nothing when no data was given). Buffers
/// are reused, so a steady stream allocates nothing per event.
#[derive(Default)]
struct SseParser {
    /// Part of a line carried over from the previous chunk.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting the next one ends nothing.
    skip_lf: bool,
    started: bool,
    event: Vec<u8>,
    data: Vec<u8>,
    /// The last event id, which persists across events.
    id: Vec<u8>,
    comments: u64,
    invalid_utf8: u64,
}

impl SseParser {
    fn feed(&mut self, mut chunk: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        if !self.started && !chunk.is_empty() {
            self.started = true;
            chunk = chunk.strip_prefix("\u{feff}".as_bytes()).unwrap_or(chunk);
        }
        // An empty chunk between `\r` and `\n` must not lose the pending `\r`.
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            chunk = chunk.strip_prefix(b"\n").unwrap_or(chunk);
        }
        while !chunk.is_empty() {
            let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.line.extend_from_slice(chunk);
                return;
            };
            if self.line.is_empty() {
                self.process_line(&chunk[..end], on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[..end]);
                self.process_line(&line, on_event);
                line.clear();
                self.line = line;
            }
            let terminator = chunk[end];
            chunk = &chunk[end + 1..];
            if terminator == b'\r' {
                match chunk.first() {
                    None => self.skip_lf = true,
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                }
            }
        }
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"id" if !value.contains(&0) => {
                self.id.clear();
                self.id.extend_from_slice(value);
            }
            // `retry` and unknown fields change nothing here.
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        self.data.pop(); // the last `\n`
        match (
            std::str::from_utf8(&self.event),
            std::str::from_utf8(&self.data),
            std::str::from_utf8(&self.id),
        ) {
            (Ok(event), Ok(data), Ok(id)) => on_event(SseEvent {
                event: if event.is_empty() { "message" } else { event },
                data,
                id,
            }),
            _ => self.invalid_utf8 += 1,
        }
        self.data.clear();
        self.event.clear();
    }
}

/// The part of a `message` event of the API the benchmark needs.
#[derive(Deserialize)]
struct MessageData<'a> {
    #[serde(borrow)]
    body: Cow<'a, str>,
}

/// `<seq> <send micros> <run>` from a published body.
fn parse_body(body: &str, run: u32) -> Option<(usize, u64)> {
    let mut parts = body.split(' ');
    let seq = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    let tag: u32 = parts.next()?.parse().ok()?;
    (tag == run && parts.next().is_none()).then_some((seq, sent))
}

// --- subscribers (fan-out and idle) --------------------------------------------------------

struct SubConfig {
    target: Target,
    /// Messages expected (0 for idle streams).
    expect: usize,
    run: u32,
}

#[derive(Default)]
struct Shared {
    /// Streams established on time: before the measured phase (fan-out: publishing; idle:
    /// holding) began.
    ready: AtomicUsize,
    /// Streams established after the measured phase began.
    late: AtomicUsize,
    failed: AtomicUsize,
    /// On-time streams the drain need not wait for: those that saw every expected message,
    /// and those that ended before being told to stop without having seen them all.
    settled: AtomicUsize,
    /// On-time streams that ended before being told to stop.
    dropped: AtomicUsize,
    /// Distinct expected messages received, over all on-time streams.
    distinct: AtomicU64,
    /// The measured phase has begun: streams established from now on are late.
    publishing: AtomicBool,
    /// Taken by `mark_ready` and `begin_measuring`, so that every stream is either in the
    /// count `begin_measuring` returns or late, never both or neither.
    phase: std::sync::Mutex<()>,
    stopping: AtomicBool,
}

impl Shared {
    /// Counts a newly established stream; true when it is late.
    fn mark_ready(&self) -> bool {
        let _phase = self.phase.lock().expect("phase lock");
        let late = self.publishing.load(Ordering::Relaxed);
        if late {
            self.late.fetch_add(1, Ordering::Relaxed);
        } else {
            self.ready.fetch_add(1, Ordering::Relaxed);
        }
        late
    }

    /// Begins the measured phase; returns the number of streams established before it.
    fn begin_measuring(&self) -> usize {
        let _phase = self.phase.lock().expect("phase lock");
        self.publishing.store(true, Ordering::Relaxed);
        self.ready.load(Ordering::Relaxed)
    }
}

struct SubOutcome {
    ready: bool,
    /// Established after the measured phase began: it missed what was published before, so
    /// it is not held to every message (fan-out) and not counted as held (idle).
    late: bool,
    connect_us: Option<u32>,
    latencies: Vec<u32>,
    seen: Vec<u64>,
    received: u64,
    distinct: u64,
    duplicates: u64,
    /// Message events that are not ours (another run's tag, unparsable).
    foreign: u64,
    last_delivery_us: u64,
    comments: u64,
    /// Events dropped because their fields were not UTF-8.
    invalid_utf8: u64,
    /// Chunks read from the connection (each is at least one read from the socket).
    reads: u64,
    error: Option<String>,
}

impl SubOutcome {
    fn new(expect: usize) -> Self {
        Self {
            ready: false,
            late: false,
            connect_us: None,
            latencies: Vec::with_capacity(expect),
            seen: vec![0; expect.div_ceil(64)],
            received: 0,
            distinct: 0,
            duplicates: 0,
            foreign: 0,
            last_delivery_us: 0,
            comments: 0,
            invalid_utf8: 0,
            reads: 0,
            error: None,
        }
    }

    fn record(&mut self, body: &str, now_us: u64, config: &SubConfig, shared: &Shared) {
        let Some((seq, sent_us)) = parse_body(body, config.run).filter(|(s, _)| *s < config.expect)
        else {
            self.foreign += 1;
            return;
        };
        self.received += 1;
        self.last_delivery_us = now_us;
        let (word, bit) = (seq / 64, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            // Not a delivery of its own: no latency sample.
            self.duplicates += 1;
            return;
        }
        self.latencies
            .push(u32::try_from(now_us.saturating_sub(sent_us)).unwrap_or(u32::MAX));
        self.seen[word] |= bit;
        self.distinct += 1;
        // Only on-time streams are held to every message, so only they count towards the
        // end of the drain.
        if self.on_time() {
            shared.distinct.fetch_add(1, Ordering::Relaxed);
            if self.complete(config) {
                shared.settled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_time(&self) -> bool {
        self.ready && !self.late
    }

    fn complete(&self, config: &SubConfig) -> bool {
        self.distinct == config.expect as u64
    }
}

/// What subscribers are told by the run.
#[derive(Clone)]
struct Signals {
    /// Stop reading: the run is over.
    stop: watch::Receiver<bool>,
    /// Connect no more: streams not yet established give up, and so do late ones (idle).
    /// The sender must stay alive for as long as the streams run, even if it never sends.
    cutoff: watch::Receiver<bool>,
}

/// Opens one stream and reads it until `stop`: ready once `event: ready` arrived (api) or
/// the response headers did (nchan).
async fn subscriber(
    client: Client,
    url: String,
    token: Option<String>,
    config: Arc<SubConfig>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    signals: Signals,
) -> SubOutcome {
    let Signals {
        mut stop,
        mut cutoff,
    } = signals;
    let mut out = SubOutcome::new(config.expect);
    let mut permit = Some(tokio::select! {
        biased;
        _ = stop.changed() => return out,
        _ = cutoff.changed() => return out,
        permit = gate.acquire_owned() => permit.expect("semaphore"),
    });
    let began = Instant::now();
    let mut request = client.get(&url).header(header::ACCEPT, "text/event-stream");
    if let Some(token) = &token {
        request = request.bearer_auth(token);
    }
    let response = tokio::select! {
        biased;
        _ = stop.changed() => return out,
        _ = cutoff.changed() => return out,
        response = tokio::time::timeout(Duration::from_secs(30), request.send()) => response,
    };
    let mut response = match response {
        Ok(Ok(response)) if response.status() == StatusCode::OK => response,
        Ok(Ok(response)) => {
            out.error = Some(format!("HTTP {}", response.status()));
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return out;
        }
        Ok(Err(err)) => {
            out.error = Some(format!("connect: {err}"));
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return out;
        }
        Err(_) => {
            out.error = Some("no response headers within 30 s".to_owned());
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return out;
        }
    };
    let mark_ready = |out: &mut SubOutcome| {
        out.ready = true;
        out.connect_us = Some(micros(began.elapsed()));
        out.late = shared.mark_ready();
    };
    if config.target == Target::Nchan {
        mark_ready(&mut out);
        permit = None;
    }
    let mut parser = SseParser::default();
    loop {
        let chunk = tokio::select! {
            biased;
            _ = stop.changed() => break,
            // Still connecting, or late: give up when told to connect no more.
            _ = cutoff.changed(), if !out.ready || out.late => break,
            chunk = response.chunk() => chunk,
        };
        let bytes = match chunk {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                out.error = Some("the server ended the stream".to_owned());
                break;
            }
            Err(err) => {
                out.error = Some(format!("stream error: {err}"));
                break;
            }
        };
        let now_us = unix_micros();
        out.reads += 1;
        let mut became_ready = false;
        parser.feed(&bytes, &mut |event| match (config.target, event.event) {
            (Target::Api, "message") => match serde_json::from_str::<MessageData<'_>>(event.data) {
                Ok(message) => out.record(&message.body, now_us, &config, &shared),
                Err(_) => out.foreign += 1,
            },
            (Target::Api, "ready") => became_ready = !out.ready,
            (Target::Api, _) => {}
            (Target::Nchan, _) => out.record(event.data, now_us, &config, &shared),
        });
        if became_ready {
            mark_ready(&mut out);
            permit = None;
        }
    }
    drop(permit);
    out.comments = parser.comments;
    out.invalid_utf8 = parser.invalid_utf8;
    if out.error.is_some() && !shared.stopping.load(Ordering::Relaxed) {
        if out.on_time() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            if !out.complete(&config) {
                // Complete streams were settled when they became complete.
                shared.settled.fetch_add(1, Ordering::Relaxed);
            }
        } else if !out.ready {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        // A late stream that ended is already counted as not established in time.
    }
    out
}

/// Opens `count` streams round-robin over `urls` (tokens round-robin too, for the API).
#[allow(clippy::too_many_arguments)]
fn spawn_subscribers(
    target: Target,
    urls: &[String],
    tokens: &[String],
    count: usize,
    config: &Arc<SubConfig>,
    shared: &Arc<Shared>,
    signals: &Signals,
) -> Vec<tokio::task::JoinHandle<SubOutcome>> {
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut client = None;
    (0..count)
        .map(|i| {
            if i % STREAMS_PER_CLIENT == 0 {
                client = Some(
                    Client::builder()
                        .tcp_nodelay(true)
                        .pool_max_idle_per_host(0)
                        .connect_timeout(Duration::from_secs(10))
                        .build()
                        .expect("http client"),
                );
            }
            let url = match target {
                Target::Api => format!("{}/events", urls[i % urls.len()]),
                Target::Nchan => urls[i % urls.len()].clone(),
            };
            let token = (!tokens.is_empty()).then(|| tokens[i % tokens.len()].clone());
            tokio::spawn(subscriber(
                client.clone().expect("client"),
                url,
                token,
                Arc::clone(config),
                Arc::clone(shared),
                Arc::clone(&gate),
                signals.clone(),
            ))
        })
        .collect()
}

/// Waits until every stream is ready or failed, or `deadline`.
async fn wait_connected(shared: &Shared, count: usize, deadline: tokio::time::Instant) {
    let mut last_report = Instant::now();
    while shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < count {
        if tokio::time::Instant::now() >= deadline {
            eprintln!("  connect phase timed out");
            return;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {} of {count} streams ready, {} failed",
                shared.ready.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Tells every subscriber to stop and collects what they saw, within `bound`; returns the
/// outcomes and how many streams could not be collected (aborted).
async fn collect(
    handles: Vec<tokio::task::JoinHandle<SubOutcome>>,
    shared: &Shared,
    stop: &watch::Sender<bool>,
    bound: Duration,
) -> (Vec<SubOutcome>, usize) {
    shared.stopping.store(true, Ordering::Relaxed);
    let _ = stop.send(true);
    // One deadline for all: what was collected before it is kept, whatever comes after.
    let until = tokio::time::Instant::now() + bound;
    let mut outcomes = Vec::with_capacity(handles.len());
    let mut missing = 0;
    for mut handle in handles {
        match tokio::time::timeout_at(until, &mut handle).await {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            // Cancelled (a panic aborts the release build the scripts run): nothing to collect.
            Ok(Err(_)) => missing += 1,
            Err(_) => {
                handle.abort();
                missing += 1;
            }
        }
    }
    (outcomes, missing)
}

fn first_error(outcomes: &[SubOutcome]) -> String {
    outcomes
        .iter()
        .find_map(|o| o.error.clone())
        .map_or(String::new(), |e| format!("; first stream error: {e}"))
}

// --- fan-out -----------------------------------------------------------------------------

async fn fanout(args: &Args) -> i32 {
    let target = args.target();
    let sub_urls = args.list("sub-urls");
    let pub_url = args.required("pub-url");
    let subscribers: usize = args.number("subscribers", 100);
    let messages: usize = args.number("messages", 100);
    let publishers: usize = args.number::<usize>("publishers", 4).max(1);
    let users: usize = args.number("users", 20);
    let timeout_secs: u64 = args.number("timeout-secs", 60);
    let label = args.string(
        "label",
        &format!("{} ({} sub URL(s))", target.name(), sub_urls.len()),
    );
    let hard = Duration::from_secs(timeout_secs);
    let run = async {
        let started = tokio::time::Instant::now();
        let deadline = started + hard;
        let run_tag: u32 = rand::random();
        let client = http_client();
        let (tokens, general) = match target {
            Target::Api => {
                let login = args.string("login-url", &pub_url);
                let (tokens, general) =
                    api_users(&client, &login, &args.string("prefix", "lg"), users).await;
                (tokens, Some(general))
            }
            Target::Nchan => (Vec::new(), None),
        };
        let config = Arc::new(SubConfig {
            target,
            expect: messages,
            run: run_tag,
        });
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop) = watch::channel(false);
        // Never sent: streams that are late (established once publishing began) keep
        // reading, and are only left out of the accounting.
        let (_cutoff_tx, cutoff) = watch::channel(false);
        let connect_began = Instant::now();
        let handles = spawn_subscribers(
            target,
            &sub_urls,
            &tokens,
            subscribers,
            &config,
            &shared,
            &Signals { stop, cutoff },
        );
        // Connecting may take up to half of the budget.
        wait_connected(&shared, subscribers, started + hard / 2).await;
        let connect_secs = connect_began.elapsed().as_secs_f64();

        // Publish as fast as `publishers` closed loops can.
        let mut cpu = CpuWatch::new(args);
        cpu.restart();
        let next = Arc::new(AtomicUsize::new(0));
        let published: Arc<Vec<AtomicBool>> =
            Arc::new((0..messages).map(|_| AtomicBool::new(false)).collect());
        let publish_deadline = deadline - Duration::from_secs(3).min(hard / 4);
        let first_sent = Arc::new(AtomicU64::new(u64::MAX));
        let general = Arc::new(general);
        // From here on, a stream that becomes ready may have missed messages (both targets
        // are live-only): it is late, and not held to every message. `ready` is final.
        let ready = shared.begin_measuring();
        eprintln!(
            "fanout {}: {ready} of {subscribers} streams ready in {connect_secs:.1} s, {} failed; publishing {messages}",
            target.name(),
            shared.failed.load(Ordering::Relaxed)
        );
        let pub_began = Instant::now();
        let pub_tasks: Vec<_> = (0..publishers)
            .map(|p| {
                let client = client.clone();
                let next = Arc::clone(&next);
                let published = Arc::clone(&published);
                let first_sent = Arc::clone(&first_sent);
                let general = Arc::clone(&general);
                let token = (!tokens.is_empty()).then(|| tokens[p % tokens.len()].clone());
                let url = match target {
                    Target::Api => format!("{pub_url}/messages"),
                    Target::Nchan => pub_url.clone(),
                };
                tokio::spawn(async move {
                    let mut errors = 0u64;
                    let mut first_error = None;
                    loop {
                        // The deadline first, so that a sequence number taken is one sent.
                        if tokio::time::Instant::now() >= publish_deadline {
                            break;
                        }
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= messages {
                            break;
                        }
                        let sent = unix_micros();
                        first_sent.fetch_min(sent, Ordering::Relaxed);
                        let body = format!("{seq} {sent} {run_tag}");
                        let request = match (&*general, &token) {
                            (Some(room), Some(token)) => client
                                .post(&url)
                                .bearer_auth(token)
                                .json(&json!({"room_id": room, "body": body})),
                            _ => client
                                .post(&url)
                                .header(header::CONTENT_TYPE, "text/plain")
                                .body(body),
                        };
                        let outcome = match request.send().await {
                            Ok(response) => {
                                let status = response.status();
                                let _ = response.bytes().await;
                                if status.is_success() {
                                    Ok(())
                                } else {
                                    Err(format!("HTTP {status}"))
                                }
                            }
                            Err(err) => Err(err.to_string()),
                        };
                        match outcome {
                            Ok(()) => published[seq].store(true, Ordering::Relaxed),
                            Err(err) => {
                                errors += 1;
                                first_error.get_or_insert(err);
                            }
                        }
                    }
                    (errors, first_error)
                })
            })
            .collect();
        let mut publish_errors = 0u64;
        let mut publish_error = None;
        for mut task in pub_tasks {
            match tokio::time::timeout_at(publish_deadline, &mut task).await {
                Ok(result) => {
                    let (errors, first_error) = result.expect("publisher panicked");
                    publish_errors += errors;
                    if publish_error.is_none() {
                        publish_error = first_error;
                    }
                }
                // A request still in flight at the deadline: given up, counted as an error.
                Err(_) => {
                    task.abort();
                    publish_errors += 1;
                    publish_error
                        .get_or_insert_with(|| "publishing cut off at the deadline".into());
                }
            }
        }
        let pub_secs = pub_began.elapsed().as_secs_f64();
        let ok_published = published
            .iter()
            .filter(|p| p.load(Ordering::Relaxed))
            .count();
        let not_attempted = messages.saturating_sub(next.load(Ordering::Relaxed));
        eprintln!(
            "  published {ok_published} of {messages} in {pub_secs:.2} s ({:.0}/s), {publish_errors} errors{}",
            ok_published as f64 / pub_secs.max(1e-9),
            publish_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})"))
        );

        // Wait for every on-time subscriber to have every published message. Each one's
        // distinct messages are at most the acknowledged ones when every publish was
        // acknowledged, so then their sum tells; otherwise messages whose publish failed may
        // be delivered as well, and only complete (or ended) streams do.
        let drain_deadline = deadline - Duration::from_secs(2).min(hard / 8);
        let wanted = (ok_published * ready) as u64;
        let drain_began = Instant::now();
        let mut timed_out = false;
        loop {
            if shared.settled.load(Ordering::Relaxed) >= ready
                || (publish_errors == 0 && shared.distinct.load(Ordering::Relaxed) >= wanted)
            {
                break;
            }
            if tokio::time::Instant::now() >= drain_deadline {
                timed_out = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let drain_secs = drain_began.elapsed().as_secs_f64();
        let cpu = cpu.report();
        let (outcomes, unjoined) =
            collect(handles, &shared, &stop_tx, Duration::from_secs(1)).await;

        // Every stream established on time should have every published message exactly
        // once. Late streams count only for duplicates and malformed events.
        let mut latencies = Vec::with_capacity(outcomes.iter().map(|o| o.latencies.len()).sum());
        let (mut received, mut lost, mut duplicates, mut foreign) = (0u64, 0u64, 0u64, 0u64);
        let mut invalid_utf8 = 0u64;
        let mut reads = 0u64;
        let mut last_delivery = 0u64;
        for outcome in &outcomes {
            duplicates += outcome.duplicates;
            foreign += outcome.foreign;
            invalid_utf8 += outcome.invalid_utf8;
            if outcome.on_time() {
                latencies.extend_from_slice(&outcome.latencies);
                received += outcome.received;
                reads += outcome.reads;
                last_delivery = last_delivery.max(outcome.last_delivery_us);
                lost += published
                    .iter()
                    .enumerate()
                    .filter(|(seq, p)| {
                        p.load(Ordering::Relaxed) && outcome.seen[seq / 64] & (1 << (seq % 64)) == 0
                    })
                    .count() as u64;
            }
        }
        let first_sent = first_sent.load(Ordering::Relaxed);
        let span_secs = last_delivery.saturating_sub(first_sent) as f64 / 1e6;
        let rate = (received > 0).then(|| received as f64 / span_secs.max(1e-9));
        // Streams not ready when publishing began: refused, failed or too slow (late).
        let failed = subscribers - ready;
        let late = shared.late.load(Ordering::Relaxed);
        let dropped = shared.dropped.load(Ordering::Relaxed);
        let errors = failed as u64 + dropped as u64 + publish_errors + unjoined as u64;
        let latency = Percentiles::of(&mut latencies);
        let expected = (ok_published * ready) as u64;
        let mut note = format!(
            "publish {:.0}/s ({publishers} publishers); {received}/{expected} delivered, {:.1} per read; connect {connect_secs:.1} s",
            ok_published as f64 / pub_secs.max(1e-9),
            received as f64 / reads.max(1) as f64
        );
        if failed > 0 || dropped > 0 {
            let _ = write!(
                note,
                "; {failed} streams not established in time ({late} late), {dropped} dropped"
            );
        }
        if unjoined > 0 {
            let _ = write!(note, "; {unjoined} streams not collected");
        }
        if publish_errors > 0 || not_attempted > 0 {
            let _ = write!(
                note,
                "; {publish_errors} publish errors, {not_attempted} not sent"
            );
        }
        if timed_out && publish_errors > 0 {
            // Expected: a stream is complete only with the messages whose publish failed.
            let _ = write!(note, "; drain ran to its deadline ({drain_secs:.1} s)");
        } else if timed_out {
            let _ = write!(note, "; TIMED OUT after {drain_secs:.1} s of waiting");
        }
        if foreign > 0 {
            let _ = write!(note, "; {foreign} foreign events");
        }
        if invalid_utf8 > 0 {
            let _ = write!(note, "; {invalid_utf8} events not UTF-8");
        }
        let _ = write!(note, "; {cpu} (publish to last delivery)");
        eprintln!(
            "  delivered {received} of {expected} ({lost} lost, {duplicates} duplicated, {invalid_utf8} not UTF-8) over {span_secs:.2} s = {:.0}/s; latency p50 {} ms, p99 {} ms, max {} ms; drain {drain_secs:.2} s{}{}",
            rate.unwrap_or(0.0),
            latency.as_ref().map_or("-".into(), |l| ms(l.p50)),
            latency.as_ref().map_or("-".into(), |l| ms(l.p99)),
            latency.as_ref().map_or("-".into(), |l| ms(l.max)),
            if timed_out { " (timed out)" } else { "" },
            first_error(&outcomes),
        );
        Row {
            scenario: "fan-out".to_owned(),
            target: label.clone(),
            load: format!("{subscribers} subs × {messages} msgs, {publishers} pubs"),
            rate,
            latency,
            errors: format!("{errors}/{lost}/{duplicates}"),
            note,
        }
        .print();
        i32::from(lost > 0 || errors > 0)
    };
    match tokio::time::timeout(hard, run).await {
        Ok(code) => code,
        Err(_) => {
            Row {
                scenario: "fan-out".to_owned(),
                target: label,
                load: format!("{subscribers} subs × {messages} msgs, {publishers} pubs"),
                rate: None,
                latency: None,
                errors: "-".to_owned(),
                note: format!("ABORTED: did not finish within {timeout_secs} s"),
            }
            .print();
            1
        }
    }
}

// --- idle streams ------------------------------------------------------------------------

async fn idle(args: &Args) -> i32 {
    let target = args.target();
    let urls = args.list("url");
    let streams: usize = args.number("streams", 1000);
    let hold_secs: u64 = args.number("hold-secs", 10);
    let ready_file = args.required("ready-file");
    let users: usize = args.number("users", 20);
    let timeout_secs: u64 = args.number("timeout-secs", hold_secs + 180);
    let label = args.string("label", target.name());
    let hard = Duration::from_secs(timeout_secs);
    let run = async {
        let started = tokio::time::Instant::now();
        let tokens = match target {
            Target::Api => {
                let client = http_client();
                let login = args.string("login-url", &urls[0]);
                api_users(&client, &login, &args.string("prefix", "lg"), users)
                    .await
                    .0
            }
            Target::Nchan => Vec::new(),
        };
        let config = Arc::new(SubConfig {
            target,
            expect: 0,
            run: 0,
        });
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop) = watch::channel(false);
        let (cutoff_tx, cutoff) = watch::channel(false);
        let connect_began = Instant::now();
        let handles = spawn_subscribers(
            target,
            &urls,
            &tokens,
            streams,
            &config,
            &shared,
            &Signals { stop, cutoff },
        );
        let connect_budget = hard.saturating_sub(Duration::from_secs(hold_secs + 10));
        wait_connected(&shared, streams, started + connect_budget).await;
        let connect_secs = connect_began.elapsed().as_secs_f64();
        // No connection attempt starts from here on and pending ones give up, so the streams
        // held are the ones counted now (a stream that still becomes ready is late and closes
        // at once): the ready file is what the memory per stream is divided by.
        let _ = cutoff_tx.send(true);
        let ready = shared.begin_measuring();
        let held = ready - shared.dropped.load(Ordering::Relaxed).min(ready);
        eprintln!(
            "idle {}: {ready} of {streams} streams established in {connect_secs:.1} s, {} failed; holding {held} for {hold_secs} s",
            target.name(),
            shared.failed.load(Ordering::Relaxed)
        );
        if let Err(err) = std::fs::write(&ready_file, format!("{held}\n")) {
            die(&format!("cannot write {ready_file}: {err}"));
        }
        let cpu = CpuWatch::new(args);
        tokio::time::sleep(Duration::from_secs(hold_secs)).await;
        let cpu = cpu.report();
        let dropped = shared.dropped.load(Ordering::Relaxed);
        let (mut outcomes, unjoined) =
            collect(handles, &shared, &stop_tx, Duration::from_secs(5)).await;
        let failed = streams - ready;
        let late = match shared.late.load(Ordering::Relaxed) {
            0 => String::new(),
            late => format!(" ({late} late, closed)"),
        };
        let on_time = || outcomes.iter().filter(|o| o.on_time());
        let mut connect: Vec<u32> = on_time().filter_map(|o| o.connect_us).collect();
        let heartbeats: u64 = on_time().map(|o| o.comments).sum();
        let invalid_utf8: u64 = outcomes.iter().map(|o| o.invalid_utf8).sum();
        let error = first_error(&outcomes);
        outcomes.clear();
        eprintln!(
            "  {failed} not established{late}, {dropped} dropped while held, {unjoined} not collected, {heartbeats} comment lines received, {invalid_utf8} events not UTF-8{error}"
        );
        let mut note = format!(
            "rate = streams opened/s ({CONNECT_PARALLELISM} at a time), latencies = time to ready; {ready} held {hold_secs} s, {failed} not established{late}, {dropped} dropped"
        );
        if unjoined > 0 {
            let _ = write!(note, "; {unjoined} streams not collected");
        }
        if invalid_utf8 > 0 {
            let _ = write!(note, "; {invalid_utf8} events not UTF-8");
        }
        let _ = write!(note, "; {cpu} while held");
        Row {
            scenario: "idle streams".to_owned(),
            target: label.clone(),
            load: format!("{streams} streams"),
            rate: Some(ready as f64 / connect_secs.max(1e-9)),
            latency: Percentiles::of(&mut connect),
            errors: format!("{}", failed + dropped + unjoined),
            note,
        }
        .print();
        i32::from(ready < streams || dropped > 0)
    };
    match tokio::time::timeout(hard, run).await {
        Ok(code) => code,
        Err(_) => {
            Row {
                scenario: "idle streams".to_owned(),
                target: label,
                load: format!("{streams} streams"),
                rate: None,
                latency: None,
                errors: "-".to_owned(),
                note: format!("ABORTED: did not finish within {timeout_secs} s"),
            }
            .print();
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<(String, String, String)> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut |e| {
                events.push((e.event.to_owned(), e.data.to_owned(), e.id.to_owned()));
            });
        }
        events
    }

    #[test]
    fn parses_events_across_chunks_and_line_endings() {
        let events = parse(&[
            b"retry: 2000\n\nid: 1\nevent: ready\nda",
            b"ta: {\"a\":1}\r",
            b"\n\r\n: keep-alive\n\ndata:x\rdata: y\r\rdata\n\n",
        ]);
        assert_eq!(
            events,
            vec![
                ("ready".into(), "{\"a\":1}".into(), "1".into()),
                ("message".into(), "x\ny".into(), "1".into()),
                ("message".into(), "".into(), "1".into()),
            ]
        );
    }

    #[test]
    fn strips_one_space_and_ignores_empty_data() {
        let events = parse(&[b"event: x\n\ndata:  two\n\n"]);
        assert_eq!(events, vec![("message".into(), " two".into(), "".into())]);
    }

    #[test]
    fn joins_a_utf8_character_split_across_chunks() {
        let events = parse(&[
            b"data: caf\xc3",
            b"\xa9\n\n",
            b"data: \xe2\x82",
            b"\xac\n\n",
        ]);
        assert_eq!(
            events,
            vec![
                ("message".into(), "café".into(), "".into()),
                ("message".into(), "€".into(), "".into()),
            ]
        );
    }

    #[test]
    fn keeps_a_pending_cr_across_an_empty_chunk() {
        // `\r`, nothing, `\n`: one line ending, so both data lines are one event.
        let events = parse(&[b"data: a\r", b"", b"\ndata: b\n\n"]);
        assert_eq!(events, vec![("message".into(), "a\nb".into(), "".into())]);
    }

    #[test]
    fn treats_crlf_split_across_chunks_as_one_line_ending() {
        let events = parse(&[
            b"data: a\r",
            b"\ndata: b\r",
            b"\n\r",
            b"\n",
            b"data: c\r\n\r\n",
        ]);
        assert_eq!(
            events,
            vec![
                ("message".into(), "a\nb".into(), "".into()),
                ("message".into(), "c".into(), "".into()),
            ]
        );
    }

    #[test]
    fn counts_events_that_are_not_utf8() {
        let mut parser = SseParser::default();
        let mut events = 0;
        parser.feed(b"data: \xff\n\ndata: ok\n\n", &mut |_| events += 1);
        assert_eq!((events, parser.invalid_utf8), (1, 1));
    }

    #[test]
    fn duplicates_have_no_latency_and_late_streams_do_not_count() {
        let config = SubConfig {
            target: Target::Nchan,
            expect: 2,
            run: 7,
        };
        let shared = Shared::default();
        let mut out = SubOutcome::new(2);
        out.ready = true;
        out.late = shared.mark_ready();
        out.record("0 100 7", 300, &config, &shared);
        out.record("0 100 7", 400, &config, &shared);
        out.record("1 100 7", 500, &config, &shared);
        assert_eq!(
            (out.received, out.duplicates, out.latencies.len()),
            (3, 1, 2)
        );
        assert_eq!(shared.settled.load(Ordering::Relaxed), 1);
        assert_eq!(shared.distinct.load(Ordering::Relaxed), 2);

        assert_eq!(shared.begin_measuring(), 1);
        let mut late = SubOutcome::new(2);
        late.ready = true;
        late.late = shared.mark_ready();
        assert!(late.late);
        late.record("0 100 7", 300, &config, &shared);
        late.record("1 100 7", 300, &config, &shared);
        assert_eq!(shared.settled.load(Ordering::Relaxed), 1);
        assert_eq!(shared.distinct.load(Ordering::Relaxed), 2);
        assert_eq!(shared.late.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn reads_bodies() {
        assert_eq!(
            parse_body("12 1700000000000000 7", 7),
            Some((12, 1_700_000_000_000_000))
        );
        assert_eq!(parse_body("12 1700000000000000 8", 7), None);
        assert_eq!(parse_body("hello", 7), None);
    }
}
