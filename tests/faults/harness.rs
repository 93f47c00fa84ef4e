//! Two instances, a SecantusDB and a Redis of the test's own, and steady traffic: posters
//! (some with idempotency keys, retrying a 503 with the same key as a careful client does;
//! some without, which cannot retry safely), subscribers holding streams and resuming with
//! `Last-Event-ID` when one ends, a reader of history, and a probe of `/readyz`. A test starts
//! the traffic, injects its fault, marks when the fault is repaired, and [`Traffic::finish`]
//! checks the promises:
//!
//! - every acknowledged post is in history exactly once, and nothing else is (a post that got a
//!   503 is there at most once); the statistics count exactly what history holds;
//! - every subscriber got every message posted while it was subscribed exactly once, except
//!   where a `resync` told it to reload history;
//! - a message acknowledged before another was sent comes first, in history and on every
//!   stream (the order people saw is the order they find on reload); on streams a post
//!   answered without an event id (Redis refused it for the whole write bound) may come later;
//! - no response was a 5xx other than 503 with `Retry-After`, and none a 4xx;
//! - within [`RECOVERY_BOUND`] of the repair, readiness is back on both instances, posts
//!   succeed and every subscriber has its stream open again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::helpers::{
    ScratchMongo, ScratchRedis, Storage, TestApp, TestUser, eventually, spawn_app_with,
};

/// How long after a fault is repaired the service must be back by itself.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// `MONGODB_TIMEOUT_MS` of the instances: a write is given up after twice this.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(1000);
/// The longest a post may take to be answered: its write's bound, and time for the rest.
pub const POST_BOUND: Duration = Duration::from_millis(2 * 1000 + 1500);
/// Posters that use idempotency keys, and posters that do not.
const KEYED_POSTERS: usize = 2;
const UNKEYED_POSTERS: usize = 2;
const SUBSCRIBERS: usize = 4;
/// A client's pause before it retries (it would wait `Retry-After`; a test waits less).
const BACKOFF: Duration = Duration::from_millis(100);

/// At most two scenarios at once: each runs two instances, a store and a Redis, on 2 cores.
static SCENARIOS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Seconds of steady traffic before the fault and after the repair: `FAULT_SECONDS`, 2 by
/// default (`scripts/failover.sh` sets more).
pub fn steady() -> Duration {
    let secs = std::env::var("FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

pub struct Cluster {
    pub store: ScratchMongo,
    pub redis: ScratchRedis,
    pub apps: Arc<Vec<TestApp>>,
    pub general: String,
    /// A client of the store's own (not through the service), for admin commands.
    pub admin: mongodb::Client,
    posters: Vec<TestUser>,
    subscribers: Vec<TestUser>,
    _turn: tokio::sync::SemaphorePermit<'static>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let turn = SCENARIOS.acquire().await.unwrap();
        let store = ScratchMongo::secantus(Storage::Disk).await;
        let redis = ScratchRedis::start().await;
        let first = spawn_app_with(&[
            ("MONGODB_URI", store.uri.clone()),
            ("REDIS_URL", redis.url()),
            ("MONGODB_TIMEOUT_MS", STORE_TIMEOUT.as_millis().to_string()),
            ("HTTP_WORKERS", "2".to_owned()),
        ])
        .await;
        let second = first.spawn_sibling().await;
        let mut posters = Vec::new();
        for _ in 0..KEYED_POSTERS + UNKEYED_POSTERS {
            posters.push(first.signup("poster").await);
        }
        let mut subscribers = Vec::new();
        for _ in 0..SUBSCRIBERS {
            subscribers.push(second.signup("reader").await);
        }
        let general = first.general(&posters[0].token).await;
        let admin_uri = store
            .uri
            .replace("replicaSet=secantus", "directConnection=true");
        let admin = mongodb::Client::with_uri_str(&admin_uri).await.unwrap();
        Cluster {
            store,
            redis,
            apps: Arc::new(vec![first, second]),
            general,
            admin,
            posters,
            subscribers,
            _turn: turn,
        }
    }

    /// Runs an admin command on the store.
    pub async fn admin_command(&self, command: mongodb::bson::Document) -> mongodb::bson::Document {
        self.admin
            .database("admin")
            .run_command(command)
            .await
            .unwrap()
    }

    /// Arms SecantusDB's `failCommand` failpoint with `data` until [`Cluster::clear_failpoint`].
    pub async fn fail_commands(&self, data: mongodb::bson::Document) {
        self.admin_command(mongodb::bson::doc! {
            "configureFailPoint": "failCommand", "mode": "alwaysOn", "data": data,
        })
        .await;
    }

    pub async fn clear_failpoint(&self) {
        self.admin_command(mongodb::bson::doc! {
            "configureFailPoint": "failCommand", "mode": "off",
        })
        .await;
    }

    /// Whether the store is a writable primary right now.
    pub async fn writable(&self) -> bool {
        match self
            .admin
            .database("admin")
            .run_command(mongodb::bson::doc! { "hello": 1 })
            .await
        {
            Ok(hello) => hello.get_bool("isWritablePrimary").unwrap_or(false),
            Err(_) => false,
        }
    }

    pub fn start_traffic(&self) -> Traffic {
        let clock = Instant::now();
        let shared = Arc::new(Shared {
            clock,
            acks: AtomicUsize::new(0),
            marks: Mutex::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let mut posters = Vec::new();
        for (n, user) in self.posters.iter().enumerate() {
            let keyed = n < KEYED_POSTERS;
            posters.push(tokio::spawn(post(
                Arc::clone(&self.apps),
                user.token.clone(),
                self.general.clone(),
                n,
                keyed,
                stopped.clone(),
                Arc::clone(&shared),
            )));
        }
        let mut subscribers = Vec::new();
        for (n, user) in self.subscribers.iter().enumerate() {
            subscribers.push(tokio::spawn(subscribe(
                Arc::clone(&self.apps),
                user.token.clone(),
                n,
                stopped.clone(),
                Arc::clone(&shared),
            )));
        }
        let reader = tokio::spawn(read_history(
            Arc::clone(&self.apps),
            self.subscribers[0].token.clone(),
            self.general.clone(),
            stopped.clone(),
            Arc::clone(&shared),
        ));
        let probe = tokio::spawn(probe_readiness(
            Arc::clone(&self.apps),
            stopped,
            Arc::clone(&shared),
        ));
        Traffic {
            shared,
            stop,
            posters,
            subscribers,
            reader,
            probe,
        }
    }
}

/// What the traffic's tasks share while they run.
struct Shared {
    clock: Instant,
    acks: AtomicUsize,
    marks: Mutex<Marks>,
}

#[derive(Default, Clone, Copy)]
struct Marks {
    fault: Option<Duration>,
    repair: Option<Duration>,
    /// Subscribers stop once they have seen this message (posted last).
    sentinel_posted: bool,
}

impl Shared {
    fn now(&self) -> Duration {
        self.clock.elapsed()
    }
}

/// One answer to a request: when, how long it took, and what it was.
#[derive(Debug, Clone)]
struct Answer {
    at: Duration,
    latency: Duration,
    /// `None` for a transport error (timeout, connection reset).
    status: Option<StatusCode>,
    retry_after: bool,
    path: &'static str,
}

impl Answer {
    fn failed(&self) -> bool {
        !self.status.is_some_and(|s| s.is_success())
    }

    /// A 4xx, or a 5xx other than 503 with `Retry-After`.
    fn broken(&self) -> bool {
        match self.status {
            Some(s) if s.is_success() => false,
            Some(StatusCode::SERVICE_UNAVAILABLE) => !self.retry_after,
            Some(_) => true,
            None => false,
        }
    }
}

#[derive(Debug, Clone)]
struct Post {
    body: String,
    /// When the first attempt was sent.
    sent: Duration,
    /// The stored message's id, once a 2xx said so, and when.
    id: Option<String>,
    acked: Duration,
    /// Whether the 2xx gave the message's event id: it was in the log before its answer.
    /// A post answered without one (Redis refused its append for the write bound) is
    /// appended later, and may come on streams after messages sent after its answer.
    in_log: bool,
}

#[derive(Default)]
struct PosterLog {
    posts: Vec<Post>,
    answers: Vec<Answer>,
}

#[derive(Debug, Clone)]
enum Seen {
    Ready,
    Message(String),
    Resync,
    /// The stream ended or failed; the subscriber reconnects.
    Dropped,
    /// A stream request was refused (an error response or no connection).
    Refused(String),
}

#[derive(Default)]
struct SubscriberLog {
    seen: Vec<(Duration, Seen)>,
    got_sentinel: bool,
}

fn rotate(apps: &[TestApp], n: usize) -> &TestApp {
    &apps[n % apps.len()]
}

/// Posts to `general` until stopped. A keyed poster retries a failed post with the same key
/// (alternating instances) until it is acknowledged; an unkeyed one cannot know whether a 503
/// stored its message, so it moves on.
async fn post(
    apps: Arc<Vec<TestApp>>,
    token: String,
    room: String,
    poster: usize,
    keyed: bool,
    stopped: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> PosterLog {
    let mut log = PosterLog::default();
    let mut k = 0_usize;
    while !*stopped.borrow() {
        k += 1;
        let body = format!("p{poster}-{k}");
        let key = uuid::Uuid::new_v4().to_string();
        let sent = shared.now();
        let mut attempt = 0;
        let answered = loop {
            let app = rotate(&apps, poster + k + attempt);
            attempt += 1;
            let mut request = app
                .post("/messages")
                .bearer_auth(&token)
                .json(&json!({ "room_id": room, "body": body }))
                .timeout(Duration::from_secs(20));
            if keyed {
                request = request.header("idempotency-key", &key);
            }
            let started = Instant::now();
            let response = request.send().await;
            let (answer, body) = answer_of("POST /messages", started, &shared, response).await;
            let failed = answer.failed();
            log.answers.push(answer);
            if !failed {
                shared.acks.fetch_add(1, Ordering::Relaxed);
                break body;
            }
            if !keyed || attempt > 600 {
                break Value::Null;
            }
            tokio::time::sleep(BACKOFF).await;
        };
        log.posts.push(Post {
            body,
            sent,
            id: answered["id"].as_str().map(str::to_owned),
            acked: shared.now(),
            in_log: answered["event_id"].is_string(),
        });
    }
    log
}

async fn answer_of(
    path: &'static str,
    started: Instant,
    shared: &Shared,
    response: reqwest::Result<reqwest::Response>,
) -> (Answer, Value) {
    let latency = started.elapsed();
    let at = shared.now();
    match response {
        Ok(response) => {
            let status = response.status();
            let retry_after = response.headers().contains_key("retry-after");
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let answer = Answer {
                at,
                latency,
                status: Some(status),
                retry_after,
                path,
            };
            (answer, body)
        }
        Err(_) => {
            let answer = Answer {
                at,
                latency,
                status: None,
                retry_after: false,
                path,
            };
            (answer, Value::Null)
        }
    }
}

/// Holds a stream, alternating instances, resuming with the last id seen whenever one ends.
async fn subscribe(
    apps: Arc<Vec<TestApp>>,
    token: String,
    subscriber: usize,
    stopped: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> SubscriberLog {
    let mut log = SubscriberLog::default();
    let mut last_id: Option<String> = None;
    let mut attempt = subscriber;
    let deadline = || {
        let marks = *shared.marks.lock().unwrap();
        marks.sentinel_posted && *stopped.borrow()
    };
    'streams: loop {
        let app = rotate(&apps, attempt);
        attempt += 1;
        let mut stream = match app.try_events(&token, last_id.as_deref()).await {
            Ok(stream) => stream,
            Err(refused) => {
                log.seen.push((shared.now(), Seen::Refused(refused)));
                if deadline() && log.got_sentinel {
                    break;
                }
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        loop {
            let event = stream.next_within(Duration::from_millis(300)).await;
            last_id = stream.last_id.clone();
            match event {
                Some(event) => {
                    let seen = match event.event.as_str() {
                        "ready" => Seen::Ready,
                        "resync" => Seen::Resync,
                        "message" => {
                            let data = event.json();
                            if data["body"]
                                .as_str()
                                .is_some_and(|b| b.starts_with("sentinel"))
                            {
                                log.got_sentinel = true;
                            }
                            Seen::Message(data["id"].as_str().unwrap().to_owned())
                        }
                        _ => continue,
                    };
                    log.seen.push((shared.now(), seen));
                    if log.got_sentinel {
                        break 'streams;
                    }
                }
                None if stream.ended => {
                    log.seen.push((shared.now(), Seen::Dropped));
                    continue 'streams;
                }
                None => {}
            }
            // Gives up on the sentinel only well after it was posted (the check that it
            // arrived fails then).
            if deadline() && shared.now() > sentinel_deadline(&shared) {
                break 'streams;
            }
        }
    }
    log
}

/// When subscribers stop waiting for the sentinel: well after everything else settled.
fn sentinel_deadline(shared: &Shared) -> Duration {
    let repair = shared.marks.lock().unwrap().repair.unwrap_or_default();
    repair + RECOVERY_BOUND * 3
}

/// Reads the newest page of history every so often: reads must fail cleanly too.
async fn read_history(
    apps: Arc<Vec<TestApp>>,
    token: String,
    room: String,
    stopped: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut n = 0;
    while !*stopped.borrow() {
        n += 1;
        let started = Instant::now();
        let response = rotate(&apps, n)
            .get(&format!("/rooms/{room}/messages?limit=20"))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        answers.push(answer_of("GET history", started, &shared, response).await.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    answers
}

/// `/readyz` of each instance, every 200 ms: (when, instance, status, the `mongodb` check).
async fn probe_readiness(
    apps: Arc<Vec<TestApp>>,
    stopped: watch::Receiver<bool>,
    shared: Arc<Shared>,
) -> Vec<(Duration, usize, u16, String)> {
    let mut probes = Vec::new();
    while !*stopped.borrow() {
        for (n, app) in apps.iter().enumerate() {
            let response = app
                .get("/readyz")
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            let (status, mongodb) = match response {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    let check = body["checks"]["mongodb"].as_str().unwrap_or("").to_owned();
                    (status, check)
                }
                Err(_) => (0, String::new()),
            };
            probes.push((shared.now(), n, status, mongodb));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    probes
}

pub struct Traffic {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    posters: Vec<JoinHandle<PosterLog>>,
    subscribers: Vec<JoinHandle<SubscriberLog>>,
    reader: JoinHandle<Vec<Answer>>,
    probe: JoinHandle<Vec<(Duration, usize, u16, String)>>,
}

/// What a scenario measured, and every promise it saw broken.
#[derive(Debug)]
pub struct Outcome {
    pub fault: &'static str,
    pub posted: usize,
    pub acknowledged: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub unavailable: usize,
    pub resyncs: usize,
    /// From the repair until posts succeed again (0 when they never stopped).
    pub posts_back: Duration,
    /// From the repair until every subscriber has its stream open again.
    pub streams_back: Duration,
    /// From the repair until `/readyz` is 200 on both instances.
    pub ready_back: Duration,
    /// Whether `/readyz` said MongoDB had no writable primary at some point.
    pub saw_no_primary: bool,
    /// The slowest answer to a post.
    pub slowest_post: Duration,
    pub broken: Vec<String>,
}

impl Outcome {
    /// Fails the test with everything that went wrong, and writes the scenario's row for
    /// `scripts/failover.sh`.
    pub fn assert_kept(&self) {
        self.report();
        assert!(
            self.broken.is_empty(),
            "{}: {} broken promise(s):\n{}",
            self.fault,
            self.broken.len(),
            self.broken.join("\n")
        );
    }

    fn report(&self) {
        eprintln!("{self:?}");
        let Some(path) = std::env::var_os("FAULT_REPORT") else {
            return;
        };
        let row = json!({
            "fault": self.fault,
            "posted": self.posted,
            "acknowledged": self.acknowledged,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "unavailable": self.unavailable,
            "resyncs": self.resyncs,
            "posts_back_s": self.posts_back.as_secs_f64(),
            "streams_back_s": self.streams_back.as_secs_f64(),
            "ready_back_s": self.ready_back.as_secs_f64(),
            "slowest_post_s": self.slowest_post.as_secs_f64(),
            "broken": self.broken.len(),
        });
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(file, "{row}").unwrap();
    }
}

impl Traffic {
    /// Waits until `n` more posts have been acknowledged (at most `bound`).
    pub async fn acknowledged(&self, n: usize, bound: Duration) {
        let target = self.shared.acks.load(Ordering::Relaxed) + n;
        let shared = &self.shared;
        let reached = eventually(bound, || async move {
            shared.acks.load(Ordering::Relaxed) >= target
        })
        .await;
        assert!(reached, "{n} posts were not acknowledged within {bound:?}");
    }

    /// Steady traffic for `how_long`, then `n` more acknowledged posts at least.
    pub async fn steady(&self, how_long: Duration) {
        tokio::time::sleep(how_long).await;
        self.acknowledged(10, RECOVERY_BOUND * 2).await;
    }

    pub fn mark_fault(&self) {
        self.shared.marks.lock().unwrap().fault = Some(self.shared.now());
    }

    pub fn mark_repair(&self) {
        self.shared.marks.lock().unwrap().repair = Some(self.shared.now());
    }

    /// Stops the traffic, posts a sentinel that every subscriber must receive, and checks
    /// every promise (see the module's comment).
    pub async fn finish(self, cluster: &Cluster, fault: &'static str) -> Outcome {
        let _ = self.stop.send(true);
        let mut posts = Vec::new();
        let mut answers = Vec::new();
        for poster in self.posters {
            let log = poster.await.unwrap();
            posts.extend(log.posts);
            answers.extend(log.answers);
        }
        answers.extend(self.reader.await.unwrap());
        let probes = self.probe.await.unwrap();

        let mut broken = Vec::new();
        let sentinel = cluster.apps[0]
            .post_to_room(&cluster.posters[0].token, &cluster.general, "sentinel")
            .await;
        self.shared.marks.lock().unwrap().sentinel_posted = true;
        let sentinel_id = sentinel["id"].as_str().unwrap().to_owned();
        let mut logs = Vec::new();
        for subscriber in self.subscribers {
            logs.push(subscriber.await.unwrap());
        }
        let marks = *self.shared.marks.lock().unwrap();
        let fault_at = marks.fault.expect("the test marks its fault");
        let repair = marks.repair.expect("the test marks its repair");

        // History: every acknowledged post once, a post of unknown outcome at most once.
        let history = history(cluster).await;
        let mut in_history: HashMap<&str, usize> = HashMap::new();
        for message in &history {
            *in_history
                .entry(message["body"].as_str().unwrap())
                .or_default() += 1;
        }
        let ids_in_history: Vec<&str> = history.iter().map(|m| m["id"].as_str().unwrap()).collect();
        let attempted: HashSet<&str> = posts.iter().map(|p| p.body.as_str()).collect();
        let mut lost = 0;
        let mut duplicated = 0;
        for post in &posts {
            let copies = in_history.get(post.body.as_str()).copied().unwrap_or(0);
            if post.id.is_some() && copies == 0 {
                lost += 1;
                broken.push(format!("acknowledged post {} is not in history", post.body));
            }
            if copies > 1 {
                duplicated += copies - 1;
                broken.push(format!("post {} is in history {copies} times", post.body));
            }
        }
        for body in in_history.keys() {
            if !attempted.contains(body) && *body != "sentinel" {
                broken.push(format!("history holds {body}, which nobody posted"));
            }
        }

        // Statistics: exactly what history holds, once every instance has written its counts.
        let stored = history.len();
        let counted = counted_messages(cluster, stored).await;
        if counted != Some(stored) {
            broken.push(format!(
                "the statistics count {counted:?} messages, history holds {stored}"
            ));
        }

        // Order: history, then each stream between its resyncs.
        let times: HashMap<&str, (Duration, Duration)> = posts
            .iter()
            .filter_map(|p| Some((p.id.as_deref()?, (p.sent, p.acked))))
            .collect();
        let oldest_first: Vec<&str> = ids_in_history.iter().rev().copied().collect();
        broken.extend(causal_inversions(
            "history",
            &oldest_first,
            &times,
            &HashSet::new(),
        ));
        // A post answered without an event id may come late on streams, not early.
        let late: HashSet<&str> = posts
            .iter()
            .filter(|p| !p.in_log)
            .filter_map(|p| p.id.as_deref())
            .collect();

        // Streams: each message sent while subscribed, once, unless a resync came after it
        // was sent.
        let in_history_ids: HashSet<&str> = ids_in_history.iter().copied().collect();
        let sent_at: HashMap<&str, Duration> = posts
            .iter()
            .filter_map(|p| Some((p.id.as_deref()?, p.sent)))
            .collect();
        let mut resyncs = 0;
        for (n, log) in logs.iter().enumerate() {
            if !log.got_sentinel {
                broken.push(format!(
                    "subscriber {n} never got the sentinel {sentinel_id}"
                ));
            }
            let first_ready = log
                .seen
                .iter()
                .find(|(_, seen)| matches!(seen, Seen::Ready))
                .map(|(at, _)| *at);
            let resync_times: Vec<Duration> = log
                .seen
                .iter()
                .filter(|(_, seen)| matches!(seen, Seen::Resync))
                .map(|(at, _)| *at)
                .collect();
            resyncs += resync_times.len();
            let mut since_resync: HashSet<&str> = HashSet::new();
            let mut delivered: HashSet<&str> = HashSet::new();
            let mut segment: Vec<&str> = Vec::new();
            for (_, seen) in &log.seen {
                match seen {
                    Seen::Resync => {
                        since_resync.clear();
                        broken.extend(causal_inversions(
                            &format!("subscriber {n}"),
                            &segment,
                            &times,
                            &late,
                        ));
                        segment.clear();
                    }
                    Seen::Message(id) => {
                        if !since_resync.insert(id) {
                            duplicated += 1;
                            broken.push(format!("subscriber {n} got {id} twice"));
                        }
                        delivered.insert(id);
                        segment.push(id);
                        if !in_history_ids.contains(id.as_str()) {
                            broken.push(format!(
                                "subscriber {n} got {id}, which history does not hold"
                            ));
                        }
                    }
                    _ => {}
                }
            }
            broken.extend(causal_inversions(
                &format!("subscriber {n}"),
                &segment,
                &times,
                &late,
            ));
            let Some(first_ready) = first_ready else {
                let refusal = log.seen.iter().rev().find_map(|(_, seen)| match seen {
                    Seen::Refused(why) => Some(why.as_str()),
                    _ => None,
                });
                broken.push(format!(
                    "subscriber {n} never had a stream (last refusal: {refusal:?})"
                ));
                continue;
            };
            for (id, sent) in &sent_at {
                let excused = resync_times.iter().any(|at| at >= sent);
                if *sent > first_ready && !excused && !delivered.contains(id) {
                    lost += 1;
                    broken.push(format!("subscriber {n} never got {id}"));
                }
            }
        }

        // Answers: nothing but successes and 503s with Retry-After.
        for answer in answers.iter().filter(|a| a.broken()) {
            broken.push(format!("{} answered {answer:?}", answer.path));
        }
        let unavailable = answers
            .iter()
            .filter(|a| a.status == Some(StatusCode::SERVICE_UNAVAILABLE))
            .count();

        // Recovery, measured from the repair.
        let last_failure = answers
            .iter()
            .filter(|a| a.failed() && a.path == "POST /messages")
            .map(|a| a.at)
            .max();
        let posts_back = match last_failure {
            None => Duration::ZERO,
            Some(last) => answers
                .iter()
                .filter(|a| !a.failed() && a.path == "POST /messages" && a.at > last)
                .map(|a| a.at)
                .min()
                .unwrap_or(Duration::MAX)
                .saturating_sub(repair),
        };
        let mut streams_back = Duration::ZERO;
        for log in &logs {
            let last_drop = log
                .seen
                .iter()
                .filter(|(at, seen)| {
                    *at >= fault_at && matches!(seen, Seen::Dropped | Seen::Refused(_))
                })
                .map(|(at, _)| *at)
                .max();
            if let Some(dropped) = last_drop {
                let back = log
                    .seen
                    .iter()
                    .find(|(at, seen)| *at > dropped && matches!(seen, Seen::Ready))
                    .map_or(Duration::MAX, |(at, _)| *at);
                streams_back = streams_back.max(back.saturating_sub(repair));
            }
        }
        let last_unready = probes
            .iter()
            .filter(|(_, _, status, _)| *status != 200)
            .map(|(at, ..)| *at)
            .max();
        let ready_back = match last_unready {
            None => Duration::ZERO,
            Some(last) => probes
                .iter()
                .filter(|(at, _, status, _)| *at > last && *status == 200)
                .map(|(at, ..)| *at)
                .min()
                .unwrap_or(Duration::MAX)
                .saturating_sub(repair),
        };
        // A post answers within its bound, a 503 if need be, rather than hanging.
        let slowest_post = answers
            .iter()
            .filter(|a| a.path == "POST /messages")
            .map(|a| a.latency)
            .max()
            .unwrap_or_default();
        if slowest_post > POST_BOUND {
            broken.push(format!(
                "a post took {slowest_post:?} (bound {POST_BOUND:?})"
            ));
        }
        for (what, took) in [
            ("posts", posts_back),
            ("streams", streams_back),
            ("readiness", ready_back),
        ] {
            if took > RECOVERY_BOUND {
                broken.push(format!(
                    "{what} were not back within {RECOVERY_BOUND:?} of the repair ({took:?})"
                ));
            }
        }
        Outcome {
            fault,
            posted: posts.len(),
            acknowledged: posts.iter().filter(|p| p.id.is_some()).count(),
            lost,
            duplicated,
            unavailable,
            resyncs,
            posts_back,
            streams_back,
            ready_back,
            saw_no_primary: probes.iter().any(|(.., check)| check == "no_primary"),
            slowest_post,
            broken,
        }
    }
}

/// Where `order` (oldest first) puts a message after another although it was acknowledged
/// before the other was sent. Messages posted at the same time may come in either order, and
/// a `late` one may come after any other (not before).
fn causal_inversions(
    what: &str,
    order: &[&str],
    times: &HashMap<&str, (Duration, Duration)>,
    late: &HashSet<&str>,
) -> Vec<String> {
    let mut broken = Vec::new();
    let mut latest_sent: Option<(&str, Duration)> = None;
    for id in order {
        let Some(&(sent, acked)) = times.get(id) else {
            continue;
        };
        if let Some((before, before_sent)) = latest_sent
            && acked < before_sent
            && !late.contains(id)
        {
            broken.push(format!(
                "{what} puts {id} after {before}, which was sent after {id} was acknowledged"
            ));
        }
        if latest_sent.is_none_or(|(_, at)| sent > at) {
            latest_sent = Some((id, sent));
        }
    }
    broken
}

/// Every message of `general`, newest first.
async fn history(cluster: &Cluster) -> Vec<Value> {
    let app = &cluster.apps[0];
    let token = &cluster.posters[0].token;
    let mut messages = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = format!("/rooms/{}/messages?limit=200", cluster.general);
        if let Some(before) = &before {
            path.push_str(&format!("&before={before}"));
        }
        let page = app.get_json(&path, token).await;
        messages.extend(page["messages"].as_array().unwrap().iter().cloned());
        match page["next_before"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => return messages,
        }
    }
}

/// The statistics' message total, once it reaches `expected` (or what it is after a while).
async fn counted_messages(cluster: &Cluster, expected: usize) -> Option<usize> {
    let token = &cluster.posters[0].token;
    let last = std::cell::Cell::new(None);
    eventually(RECOVERY_BOUND, || {
        let last = &last;
        async move {
            let mut total = Vec::new();
            for app in cluster.apps.iter() {
                let summary = app.get_json("/stats/summary", token).await;
                total.push(summary["messages"].as_u64().map(|n| n as usize));
            }
            last.set(total[0]);
            total.iter().all(|n| *n == Some(expected))
        }
    })
    .await;
    last.get()
}
