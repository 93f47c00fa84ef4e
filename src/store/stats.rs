//! Statistics over the message history, fast at millions of messages.
//!
//! Every stored message increments counters at three levels: per hour, per day and for all
//! time (one collection per level, pairs apart), each keyed by what is counted (`kind`) and
//! whom (`subject`), with the first and last message time. A window `[from, to)` is answered
//! from the all-time counters when unbounded; otherwise it is cut into whole days, whole hours
//! at the ragged ends, and the minutes left over at the edges, which are counted from the
//! messages themselves (an `at_ms` range of at most two partial hours). The answer is exact
//! for any window. Sums over ranges that ended more than a few minutes ago never change and
//! are remembered per instance (`settled`), as are the messages of settled hours for the raw
//! edges, so a sliding window reads only its newest hour from MongoDB. All-time rankings read
//! the largest all-time counters through an index on the count, not every subject.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use futures_util::TryStreamExt;
use mongodb::Database;
use mongodb::bson::{self, Bson, Document, doc};
use serde::Deserialize;

use super::index;
use super::settled;
use super::{MessageRecord, Store};

/// What a counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Messages sent by a user (subject: user id).
    Sent,
    /// Direct messages received by a user (subject: user id).
    Received,
    /// Messages posted in a room (subject: room id).
    Room,
    /// All messages (subject: `all`).
    Total,
    /// All direct messages (subject: `all`).
    Direct,
    /// Direct messages between a user and a partner, either way (subject: `<user>|<partner>`).
    Pair,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Sent => "sent",
            Kind::Received => "received",
            Kind::Room => "room",
            Kind::Total => "total",
            Kind::Direct => "direct",
            Kind::Pair => "pair",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Hour,
    Day,
    All,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Hour => "h",
            Level::Day => "d",
            Level::All => "a",
        }
    }

    /// Length of one bucket in milliseconds; none for all time.
    fn step_ms(self) -> Option<i64> {
        match self {
            Level::Hour => Some(3_600_000),
            Level::Day => Some(86_400_000),
            Level::All => None,
        }
    }

    /// Start of the bucket holding `t`, in milliseconds (0 for all time).
    fn bucket(self, t: DateTime<Utc>) -> i64 {
        match self {
            Level::Hour => floor_hour(t).timestamp_millis(),
            Level::Day => floor_day(t).timestamp_millis(),
            Level::All => 0,
        }
    }
}

/// One increment a message makes: `(kind, subject, display name of the subject)`.
pub fn increments(m: &MessageRecord) -> Vec<(Kind, String, String)> {
    let mut out = vec![
        (Kind::Total, "all".to_owned(), String::new()),
        (Kind::Sent, m.sender_id.clone(), m.sender_name.clone()),
    ];
    match (&m.room_id, &m.recipient_id) {
        (Some(room), _) => out.push((Kind::Room, room.clone(), String::new())),
        (None, Some(recipient)) => {
            let recipient_name = m.recipient_name.clone().unwrap_or_default();
            out.push((Kind::Direct, "all".to_owned(), String::new()));
            out.push((Kind::Received, recipient.clone(), recipient_name.clone()));
            out.push((
                Kind::Pair,
                format!("{}|{recipient}", m.sender_id),
                recipient_name,
            ));
            out.push((
                Kind::Pair,
                format!("{recipient}|{}", m.sender_id),
                m.sender_name.clone(),
            ));
        }
        (None, None) => {}
    }
    out
}

/// The collection of a counter: one per level, pairs apart, so that every query reads one
/// contiguous `_id` range of one small collection.
pub fn counter_collection(level: Level, kind: Kind) -> &'static str {
    match (kind, level) {
        (Kind::Pair, Level::Hour) => "pairs_hourly",
        (Kind::Pair, Level::Day) => "pairs_daily",
        (Kind::Pair, Level::All) => "pairs_all_time",
        (_, Level::Hour) => "activity_hourly",
        (_, Level::Day) => "activity_daily",
        (_, Level::All) => "activity_all_time",
    }
}

/// The `_id` of a counter document, ordered so that a window is one `_id` range (the primary
/// index, on real MongoDB and on the stand-in alike): `<kind>:<level><bucket>:<subject>`, or
/// for a pair `<user>|<level><bucket>|<partner>` so that one user's partners are one range too. Buckets
/// are zero-padded milliseconds, so text order is time order.
pub fn counter_id(level: Level, bucket: i64, kind: Kind, subject: &str) -> String {
    let l = level.as_str();
    match (kind, subject.split_once('|')) {
        (Kind::Pair, Some((user, partner))) => format!("{user}|{l}{bucket:013}|{partner}"),
        _ => format!("{}:{l}{bucket:013}:{subject}", kind.as_str()),
    }
}

/// The `_id` range of the counters of `kind` at `level` for buckets in `[a, b)`.
fn id_range(level: Level, kind: Kind, subjects: &Subjects, a: i64, b: i64) -> (String, String) {
    let l = level.as_str();
    match (kind, subjects) {
        (Kind::Pair, Subjects::Prefix(prefix)) => (
            format!("{prefix}{l}{a:013}|"),
            format!("{prefix}{l}{b:013}|"),
        ),
        _ => (
            format!("{}:{l}{a:013}:", kind.as_str()),
            format!("{}:{l}{b:013}:", kind.as_str()),
        ),
    }
}

pub const LEVELS: [Level; 3] = [Level::Hour, Level::Day, Level::All];

/// Every counter collection, for index creation.
const COLLECTIONS: [&str; 6] = [
    "activity_hourly",
    "activity_daily",
    "activity_all_time",
    "pairs_hourly",
    "pairs_daily",
    "pairs_all_time",
];

/// Counters are read by ranges of `key`, a copy of `_id` with its own index. On MongoDB an
/// `_id` range would do; the local stand-in evaluates `_id` ranges in Python over the whole
/// collection (seconds at a million counters) but answers an indexed field range from SQLite.
pub(super) async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    for collection in COLLECTIONS {
        db.collection::<Document>(collection)
            .create_index(index("key", doc! { "key": 1 }))
            .await?;
    }
    // All-time rankings read the largest counts of a `key` range first (`ranking_candidates`).
    for collection in ["activity_all_time", "pairs_all_time"] {
        db.collection::<Document>(collection)
            .create_index(index("rank", doc! { "n": -1, "key": 1 }))
            .await?;
    }
    Ok(())
}

/// A time window; `None` bounds are open.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// How many messages, and when the first and last were, for one subject.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub n: i64,
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
    pub name: String,
}

impl Tally {
    fn add(
        &mut self,
        n: i64,
        first: Option<DateTime<Utc>>,
        last: Option<DateTime<Utc>>,
        name: &str,
    ) {
        self.n += n;
        self.first = match (self.first, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(last);
        if self.name.is_empty() {
            name.clone_into(&mut self.name);
        }
    }
}

/// Which subjects to count.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subjects {
    All,
    Exact(String),
    /// Subjects starting with this prefix (the pairs of one user: `<user>|`).
    Prefix(String),
    /// Every subject, summed per bucket instead of per subject (the activity series); the
    /// tallies are keyed by bucket start in ms.
    Buckets,
}

impl Subjects {
    fn matches(&self, subject: &str) -> bool {
        match self {
            Subjects::All | Subjects::Buckets => true,
            Subjects::Exact(s) => s == subject,
            Subjects::Prefix(p) => subject.starts_with(p.as_str()),
        }
    }
}

/// The pieces a window is answered from.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// Counter ranges: `(level, first bucket, end bucket exclusive)`, in ms.
    counters: Vec<(Level, i64, i64)>,
    /// Ranges counted from the messages themselves.
    raw: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

fn floor_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), t.day(), t.hour(), 0, 0)
        .single()
        .unwrap_or(t)
}

fn floor_day(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
        .single()
        .unwrap_or(t)
}

fn ceil_with(
    t: DateTime<Utc>,
    floor: fn(DateTime<Utc>) -> DateTime<Utc>,
    step: Duration,
) -> DateTime<Utc> {
    let f = floor(t);
    if f == t { t } else { f + step }
}

/// Cuts `[from, to)` into whole days, whole hours and raw edges; `finest` caps the coarsest
/// level used (activity per hour must not use daily counters).
fn plan(window: Window, now: DateTime<Utc>, coarsest: Level) -> Plan {
    if window.from.is_none() && window.to.is_none() && coarsest == Level::All {
        return Plan {
            counters: vec![(Level::All, 0, 1)],
            raw: Vec::new(),
        };
    }
    // Open bounds: from the epoch, up to just after now (nothing is stored in the future).
    let from = window.from.unwrap_or(DateTime::UNIX_EPOCH);
    let to = window
        .to
        .unwrap_or_else(|| floor_hour(now) + Duration::hours(1));
    let mut out = Plan {
        counters: Vec::new(),
        raw: Vec::new(),
    };
    if from >= to {
        return out;
    }
    let h0 = ceil_with(from, floor_hour, Duration::hours(1));
    let h1 = floor_hour(to);
    if h0 >= h1 {
        out.raw.push((from, to));
        return out;
    }
    if from < h0 {
        out.raw.push((from, h0));
    }
    if h1 < to {
        out.raw.push((h1, to));
    }
    let hours = |out: &mut Plan, a: DateTime<Utc>, b: DateTime<Utc>| {
        if a < b {
            out.counters
                .push((Level::Hour, a.timestamp_millis(), b.timestamp_millis()));
        }
    };
    let d0 = ceil_with(h0, floor_day, Duration::days(1));
    let d1 = floor_day(h1);
    if coarsest == Level::Hour || d0 >= d1 {
        hours(&mut out, h0, h1);
        return out;
    }
    hours(&mut out, h0, d0);
    hours(&mut out, d1, h1);
    out.counters
        .push((Level::Day, d0.timestamp_millis(), d1.timestamp_millis()));
    out
}

#[derive(Debug, Deserialize)]
struct Grouped {
    #[serde(rename = "_id")]
    key: Bson,
    n: i64,
    first: Option<Bson>,
    last: Option<Bson>,
    name: Option<String>,
}

/// One counter as stored (the fields a read needs).
#[derive(Debug, Deserialize)]
struct Counter {
    subject: String,
    #[serde(default)]
    bucket: Bson,
    n: i64,
    first: Option<Bson>,
    last: Option<Bson>,
    name: Option<String>,
}

/// Hour buckets at most for which a read of one counter per bucket goes through `find`.
const FEW_BUCKETS: i64 = 400;

/// Whether the counters of `key` are few enough to be read one by one (`find`, summed here)
/// rather than grouped by the server (`aggregate`). The stand-in spends about 18 ms on an
/// aggregation before its first document, and about 30 µs more per document on a `find`
/// (measured: 1 counter in 19 ms against 1.2 ms; 165 in 34 against 9 ms; 4,263 in 76 against
/// 178 ms). Few: one counter per bucket (totals, one subject, the series per bucket) over at
/// most [`FEW_BUCKETS`] buckets, or a range that has not settled (the last hour or two).
fn few_counters(key: &RangeKey, settled: bool) -> bool {
    let one_per_bucket = matches!(key.kind, Kind::Total | Kind::Direct)
        || matches!(key.subjects, Subjects::Exact(_) | Subjects::Buckets);
    let buckets = key
        .level
        .step_ms()
        .map_or(1, |step| (key.to - key.from) / step);
    (one_per_bucket && buckets <= FEW_BUCKETS) || (!settled && key.level == Level::Hour)
}

/// A time from a counter or an aggregation result (milliseconds since the epoch).
fn bson_time(value: Option<Bson>) -> Option<DateTime<Utc>> {
    let ms = match value? {
        Bson::Int64(ms) => ms,
        Bson::Int32(ms) => i64::from(ms),
        #[allow(clippy::cast_possible_truncation)]
        Bson::Double(ms) => ms as i64,
        _ => return None,
    };
    DateTime::from_timestamp_millis(ms)
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct EdgeMessage {
    sender_id: String,
    sender_name: String,
    room_id: Option<String>,
    recipient_id: Option<String>,
    recipient_name: Option<String>,
    created_at: bson::DateTime,
    at_ms: i64,
}

impl Store {
    /// Counts one stored message at once, not written behind (for loading backdated messages).
    pub async fn record_activity(&self, message: &MessageRecord) -> mongodb::error::Result<()> {
        let mut increments = Increments::default();
        increments.count(message);
        let finished = super::Finished {
            batch: bson::oid::ObjectId::new().to_hex(),
            at_ms: message.at_ms,
            source: super::Source::Messages,
            events: 1,
            increments,
            effects: super::Effects::default(),
        };
        self.finish(&[finished], None).await
    }

    /// Tallies of `kind` per subject over `window`, exact.
    pub async fn tally(
        &self,
        kind: Kind,
        subjects: &Subjects,
        window: Window,
    ) -> mongodb::error::Result<HashMap<String, Tally>> {
        let [tally] = self.tallies([(kind, subjects)], window).await?;
        Ok(tally)
    }

    /// [`Store::tally`] of several kinds over one window, in order: the window is planned,
    /// the pending counts written and the raw edges read once for all of them.
    pub async fn tallies<const N: usize>(
        &self,
        queries: [(Kind, &Subjects); N],
        window: Window,
    ) -> mongodb::error::Result<[HashMap<String, Tally>; N]> {
        let now = Utc::now();
        let plan = plan(window, now, Level::All);
        let settled_at = now - Duration::seconds(settled::SETTLE.as_secs().cast_signed());
        let pieces = split(&plan.counters, |level| level.bucket(settled_at));
        let sums = futures_util::future::try_join_all(queries.iter().enumerate().flat_map(
            |(i, &(kind, subjects))| {
                pieces.iter().map(move |&(level, from, to, settled)| {
                    let key = RangeKey {
                        kind,
                        level,
                        from,
                        to,
                        subjects: subjects.clone(),
                    };
                    async move {
                        Ok::<_, mongodb::error::Error>((i, self.counter_sums(key, settled).await?))
                    }
                })
            },
        ));
        let (sums, edges) = tokio::try_join!(sums, self.edge_messages(&plan.raw, now))?;
        let mut tallies: [HashMap<String, Tally>; N] = std::array::from_fn(|_| HashMap::new());
        for (i, sum) in sums {
            for (subject, t) in sum.iter() {
                tallies[i]
                    .entry(subject.clone())
                    .or_default()
                    .add(t.n, t.first, t.last, &t.name);
            }
        }
        for message in edges {
            let at = DateTime::from_timestamp_millis(message.at_ms);
            let record = edge_record(&message);
            for (k, subject, name) in increments(&record) {
                for (i, &(kind, subjects)) in queries.iter().enumerate() {
                    if k == kind && subjects.matches(&subject) {
                        tallies[i]
                            .entry(subject.clone())
                            .or_default()
                            .add(1, at, at, &name);
                    }
                }
            }
        }
        Ok(tallies)
    }

    /// The subjects that can rank among the first `limit` by count over `window`, with their
    /// tallies: every subject for a bounded window; for all time, the first `limit` of the
    /// all-time counters by count and every subject tied with the last of them (ties are broken
    /// by name afterwards), read through an index on the count instead of every counter.
    pub async fn ranking_candidates(
        &self,
        kind: Kind,
        subjects: &Subjects,
        window: Window,
        limit: usize,
    ) -> mongodb::error::Result<HashMap<String, Tally>> {
        if window.from.is_some() || window.to.is_some() || matches!(subjects, Subjects::Exact(_)) {
            return self.tally(kind, subjects, window).await;
        }
        let (low, high) = id_range(Level::All, kind, subjects, 0, 1);
        let range = doc! { "key": { "$gte": &low, "$lt": &high } };
        let collection = self
            .db
            .collection::<Counter>(counter_collection(Level::All, kind));
        let first: Vec<Counter> = collection
            .find(range.clone())
            .sort(doc! { "n": -1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?
            .try_collect()
            .await?;
        let counters = match first.last() {
            Some(last) if first.len() >= limit => {
                let mut tied = range;
                tied.insert("n", doc! { "$gte": last.n });
                collection.find(tied).await?.try_collect().await?
            }
            _ => first,
        };
        Ok(counters
            .into_iter()
            .filter(|c| subjects.matches(&c.subject))
            .map(|c| {
                let tally = Tally {
                    n: c.n,
                    first: bson_time(c.first),
                    last: bson_time(c.last),
                    name: c.name.unwrap_or_default(),
                };
                (c.subject, tally)
            })
            .collect())
    }

    /// The partners `user` exchanged direct messages with, most recent first (at most
    /// `limit`), with the all-time tally of each conversation: one range of the all-time pair
    /// counters, which hold one document per partner (read whole and sorted by the store: fine
    /// for the hundreds of partners a person has, not for millions). Like every statistics
    /// read, it first writes the increments this instance holds.
    pub async fn partners_of(
        &self,
        user: &str,
        limit: usize,
    ) -> mongodb::error::Result<Vec<(String, Tally)>> {
        let prefix = format!("{user}|");
        let (low, high) = id_range(
            Level::All,
            Kind::Pair,
            &Subjects::Prefix(prefix.clone()),
            0,
            1,
        );
        let counters: Vec<Counter> = self
            .db
            .collection::<Counter>(counter_collection(Level::All, Kind::Pair))
            .find(doc! { "key": { "$gte": &low, "$lt": &high } })
            .sort(doc! { "last": -1, "key": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await?
            .try_collect()
            .await?;
        Ok(counters
            .into_iter()
            .filter_map(|c| {
                let partner = c.subject.strip_prefix(&prefix)?.to_owned();
                let tally = Tally {
                    n: c.n,
                    first: bson_time(c.first),
                    last: bson_time(c.last),
                    name: c.name.unwrap_or_default(),
                };
                Some((partner, tally))
            })
            .collect())
    }

    /// Sums of one range of counters per subject. Sums over a settled range are remembered
    /// and served from memory.
    async fn counter_sums(&self, key: RangeKey, settled: bool) -> mongodb::error::Result<Tallies> {
        if settled && let Some(hit) = self.settled.get(&key) {
            return Ok(hit);
        }
        let subjects = &key.subjects;
        let group_by = match subjects {
            Subjects::Buckets => "$bucket",
            _ => "$subject",
        };
        let started = Instant::now();
        let collection = self
            .db
            .collection::<Document>(counter_collection(key.level, key.kind));
        let grouped: Vec<Grouped> = if few_counters(&key, settled) {
            let counters: Vec<Counter> = collection
                .clone_with_type::<Counter>()
                .find(counter_filter(&key))
                .projection(doc! { "_id": 0, "subject": 1, "bucket": 1, "n": 1, "first": 1, "last": 1, "name": 1 })
                .await?
                .try_collect()
                .await?;
            counters
                .into_iter()
                .map(|c| Grouped {
                    key: match subjects {
                        Subjects::Buckets => c.bucket,
                        _ => Bson::String(c.subject),
                    },
                    n: c.n,
                    first: c.first,
                    last: c.last,
                    name: c.name,
                })
                .collect()
        } else {
            collection
                .aggregate(vec![
                    doc! { "$match": counter_filter(&key) },
                    // `$max` for the name, not `$first`: the stand-in runs `$first` in Python.
                    doc! { "$group": {
                        "_id": group_by,
                        "n": { "$sum": "$n" },
                        "first": { "$min": "$first" },
                        "last": { "$max": "$last" },
                        "name": { "$max": "$name" },
                    }},
                ])
                .with_type::<Grouped>()
                .await?
                .try_collect()
                .await?
        };
        tracing::debug!(?key, ?subjects, rows = grouped.len(), elapsed = ?started.elapsed(), "counter sums read");
        let mut sums: HashMap<String, Tally> = HashMap::with_capacity(grouped.len());
        for g in grouped {
            let subject = match g.key {
                Bson::String(subject) => subject,
                Bson::Int64(v) => v.to_string(),
                Bson::Int32(v) => v.to_string(),
                #[allow(clippy::cast_possible_truncation)]
                Bson::Double(v) => (v as i64).to_string(),
                _ => continue,
            };
            if subjects.matches(&subject) {
                sums.entry(subject).or_default().add(
                    g.n,
                    bson_time(g.first),
                    bson_time(g.last),
                    g.name.as_deref().unwrap_or_default(),
                );
            }
        }
        let sums = Arc::new(sums);
        if settled {
            self.settled.insert(key, Arc::clone(&sums));
        }
        Ok(sums)
    }

    /// Message counts per bucket start (ms) for `level` (hour or day) over `window`. Settled
    /// ranges come from memory, as for tallies.
    pub async fn activity_series(
        &self,
        level: Level,
        window: Window,
    ) -> mongodb::error::Result<HashMap<i64, i64>> {
        let now = Utc::now();
        let plan = plan(window, now, level);
        let settled_at = now - Duration::seconds(settled::SETTLE.as_secs().cast_signed());
        let pieces = split(&plan.counters, |level| level.bucket(settled_at));
        let sums =
            futures_util::future::try_join_all(pieces.iter().map(|&(level, from, to, settled)| {
                let key = RangeKey {
                    kind: Kind::Total,
                    level,
                    from,
                    to,
                    subjects: Subjects::Buckets,
                };
                self.counter_sums(key, settled)
            }));
        let (sums, edges) = tokio::try_join!(sums, self.edge_messages(&plan.raw, now))?;
        let mut series: HashMap<i64, i64> = HashMap::new();
        for sum in sums {
            for (start, t) in sum.iter() {
                // An hourly counter inside a day bucket belongs to that day.
                if let Some(t0) = start.parse().ok().and_then(DateTime::from_timestamp_millis) {
                    *series.entry(level.bucket(t0)).or_default() += t.n;
                }
            }
        }
        for message in edges {
            if let Some(t) = DateTime::from_timestamp_millis(message.at_ms) {
                *series.entry(level.bucket(t)).or_default() += 1;
            }
        }
        Ok(series)
    }

    /// The messages stamped in `ranges`, read from MongoDB. A range inside an hour that has
    /// settled is served from that whole hour's messages, remembered: the ragged start of a
    /// sliding window is then read once per instance, not on every request.
    async fn edge_messages(
        &self,
        ranges: &[(DateTime<Utc>, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Vec<EdgeMessage>> {
        let settled_at = now - Duration::seconds(settled::SETTLE.as_secs().cast_signed());
        let mut out = Vec::new();
        for &(a, b) in ranges {
            let mut hour = floor_hour(a);
            while hour < b {
                let next = hour + Duration::hours(1);
                let (from, to) = (a.max(hour), b.min(next));
                if next <= settled_at {
                    let key = hour.timestamp_millis();
                    let messages = match self.settled_edges.get(&key) {
                        Some(hit) => hit,
                        None => {
                            let read = Arc::new(self.messages_between(hour, next).await?);
                            self.settled_edges.insert(key, Arc::clone(&read));
                            read
                        }
                    };
                    let (from, to) = (from.timestamp_millis(), to.timestamp_millis());
                    out.extend(
                        messages
                            .iter()
                            .filter(|m| from <= m.at_ms && m.at_ms < to)
                            .cloned(),
                    );
                } else {
                    out.extend(self.messages_between(from, to).await?);
                }
                hour = next;
            }
        }
        Ok(out)
    }

    async fn messages_between(
        &self,
        a: DateTime<Utc>,
        b: DateTime<Utc>,
    ) -> mongodb::error::Result<Vec<EdgeMessage>> {
        let started = Instant::now();
        let found: Vec<EdgeMessage> = self
            .db
            .collection::<EdgeMessage>("messages")
            .find(doc! { "at_ms": { "$gte": a.timestamp_millis(), "$lt": b.timestamp_millis() } })
            .projection(doc! { "sender_id": 1, "sender_name": 1, "room_id": 1, "recipient_id": 1, "recipient_name": 1, "created_at": 1, "at_ms": 1 })
            .await?
            .try_collect()
            .await?;
        tracing::debug!(from = %a, to = %b, messages = found.len(), elapsed = ?started.elapsed(), "edge messages read");
        Ok(found)
    }

    /// Exact number of documents in a collection.
    pub async fn count_all(&self, collection: &str) -> mongodb::error::Result<i64> {
        let mut cursor = self
            .db
            .collection::<Document>(collection)
            .aggregate(vec![doc! { "$count": "n" }])
            .await?;
        let first = cursor.try_next().await?;
        Ok(first
            .and_then(|d| d.get("n").cloned())
            .and_then(|n| match n {
                Bson::Int32(v) => Some(i64::from(v)),
                Bson::Int64(v) => Some(v),
                _ => None,
            })
            .unwrap_or(0))
    }
}

/// Counter increments of some messages, merged per counter: what the API writes behind its
/// messages (as upserts) and what the history generator loads (as new documents).
#[derive(Default)]
pub struct Increments {
    counters: HashMap<String, Increment>,
}

#[derive(Clone)]
struct Increment {
    collection: &'static str,
    level: Level,
    bucket: i64,
    kind: Kind,
    subject: String,
    name: String,
    n: i64,
    first: i64,
    last: i64,
}

impl Increment {
    /// The fields that identify the counter (everything but the counts).
    fn identity(&self, id: &str) -> Document {
        doc! {
            "key": id,
            "level": self.level.as_str(),
            "bucket": self.bucket,
            "kind": self.kind.as_str(),
            "subject": &self.subject,
            "name": &self.name,
        }
    }
}

impl Increments {
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// The counters as complete new documents, with their collection: for loading a history
    /// into an empty database.
    pub fn into_documents(self) -> Vec<(&'static str, Document)> {
        self.counters
            .into_iter()
            .map(|(id, m)| {
                let mut document = doc! { "_id": &id };
                document.extend(m.identity(&id));
                document.extend(doc! { "n": m.n, "first": m.first, "last": m.last });
                (m.collection, document)
            })
            .collect()
    }

    /// Adds what `message` increments.
    pub fn count(&mut self, message: &MessageRecord) {
        let at = message.created_at();
        let when = message.at_ms;
        for (kind, subject, name) in increments(message) {
            for level in LEVELS {
                let bucket = level.bucket(at);
                let id = counter_id(level, bucket, kind, &subject);
                let increment = self.counters.entry(id).or_insert_with(|| Increment {
                    collection: counter_collection(level, kind),
                    level,
                    bucket,
                    kind,
                    subject: subject.clone(),
                    name: name.clone(),
                    n: 0,
                    first: when,
                    last: when,
                });
                increment.n += 1;
                increment.first = increment.first.min(when);
                increment.last = increment.last.max(when);
            }
        }
    }

    /// Adds `other`'s increments to these.
    pub(super) fn add(&mut self, other: &Increments) {
        for (id, theirs) in &other.counters {
            match self.counters.get_mut(id) {
                Some(mine) => {
                    mine.n += theirs.n;
                    mine.first = mine.first.min(theirs.first);
                    mine.last = mine.last.max(theirs.last);
                }
                None => {
                    self.counters.insert(id.clone(), theirs.clone());
                }
            }
        }
    }

    /// Applies the increments within `session`'s transaction (see `finish`, which makes it
    /// exactly once): `update` commands of at most [`UPDATES_PER_COMMAND`] upserts per counter
    /// collection, each counter updated once however many messages it counts.
    pub(super) async fn apply(
        &self,
        db: &Database,
        session: &mut mongodb::ClientSession,
    ) -> mongodb::error::Result<()> {
        let mut by_collection: HashMap<&'static str, Vec<Document>> = HashMap::new();
        for (id, m) in &self.counters {
            by_collection.entry(m.collection).or_default().push(doc! {
                "q": { "_id": id },
                "u": {
                    "$inc": { "n": m.n },
                    "$set": m.identity(id),
                    "$min": { "first": m.first },
                    "$max": { "last": m.last },
                },
                "upsert": true,
            });
        }
        for (collection, updates) in by_collection {
            for updates in updates.chunks(UPDATES_PER_COMMAND) {
                let reply = db
                    .run_command(doc! { "update": collection, "updates": updates, "ordered": true })
                    .session(&mut *session)
                    .await?;
                if let Ok(errors) = reply.get_array("writeErrors")
                    && !errors.is_empty()
                {
                    // The transaction is then aborted: nothing of it is applied.
                    return Err(mongodb::error::Error::custom(format!(
                        "activity counters: {errors:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Upserts sent in one `update` command at most (the server's limit is 100,000 and 16 MiB).
const UPDATES_PER_COMMAND: usize = 1000;

/// Buckets beyond which one subject's counters are read as a range rather than by id.
const MAX_EXACT_IDS: i64 = 512;

/// The filter selecting the counters of `key`: the ids themselves for one subject over a
/// bounded number of buckets (unique index lookups), otherwise a range of `key`.
fn counter_filter(key: &RangeKey) -> Document {
    let RangeKey {
        kind,
        level,
        from,
        to,
        ref subjects,
    } = *key;
    if let Subjects::Exact(subject) = subjects {
        let ids: Option<Vec<String>> = match level.step_ms() {
            None => Some(vec![counter_id(Level::All, 0, kind, subject)]),
            Some(step) if (to - from) / step <= MAX_EXACT_IDS => Some(
                (0..(to - from) / step)
                    .map(|i| counter_id(level, from + i * step, kind, subject))
                    .collect(),
            ),
            Some(_) => None,
        };
        if let Some(ids) = ids {
            return doc! { "_id": { "$in": ids } };
        }
    }
    let (low, high) = id_range(level, kind, subjects, from, to);
    doc! { "key": { "$gte": low, "$lt": high } }
}

fn edge_record(m: &EdgeMessage) -> MessageRecord {
    MessageRecord {
        id: bson::oid::ObjectId::new(),
        seq: String::new(),
        conversation: String::new(),
        sender_id: m.sender_id.clone(),
        sender_name: m.sender_name.clone(),
        room_id: m.room_id.clone(),
        recipient_id: m.recipient_id.clone(),
        recipient_name: m.recipient_name.clone(),
        body: String::new(),
        created_at: m.created_at,
        at_ms: m.at_ms,
        ..MessageRecord::default()
    }
}

/// Sums of one kind of counter over buckets `[from, to)` (ms) of one level, for some subjects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RangeKey {
    pub kind: Kind,
    pub level: Level,
    pub from: i64,
    pub to: i64,
    pub subjects: Subjects,
}

pub type Tallies = Arc<HashMap<String, Tally>>;

/// Splits counter ranges at the settled boundary: `(level, from, to, settled)`. All-time
/// counters never settle.
fn split(
    ranges: &[(Level, i64, i64)],
    settled_cut: impl Fn(Level) -> i64,
) -> Vec<(Level, i64, i64, bool)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(level, a, b) in ranges {
        if level == Level::All {
            out.push((level, a, b, false));
            continue;
        }
        let cut = settled_cut(level);
        if b <= cut {
            out.push((level, a, b, true));
        } else if a >= cut {
            out.push((level, a, b, false));
        } else {
            out.push((level, a, cut, true));
            out.push((level, cut, b, false));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn message(sender: &str, at_ms: i64) -> MessageRecord {
        MessageRecord {
            id: bson::oid::ObjectId::new(),
            seq: String::new(),
            conversation: String::new(),
            sender_id: sender.to_owned(),
            sender_name: sender.to_owned(),
            room_id: Some("room".to_owned()),
            recipient_id: None,
            recipient_name: None,
            body: String::new(),
            created_at: bson::DateTime::from_millis(at_ms),
            at_ms,
            ..MessageRecord::default()
        }
    }

    #[test]
    fn increments_of_many_messages_merge_per_counter() {
        let hour = t("2026-11-24T10:00:00Z").timestamp_millis();
        let mut a = Increments::default();
        a.count(&message("u1", hour + 5));
        a.count(&message("u1", hour + 1));
        a.count(&message("u2", hour + 9));
        let sent_u1 = &a.counters[&counter_id(Level::Hour, hour, Kind::Sent, "u1")];
        assert_eq!(
            (sent_u1.n, sent_u1.first, sent_u1.last),
            (2, hour + 1, hour + 5)
        );
        let total = &a.counters[&counter_id(Level::All, 0, Kind::Total, "all")];
        assert_eq!((total.n, total.first, total.last), (3, hour + 1, hour + 9));
        // Total, sent and room, at three levels each, for two senders sharing all but `sent`.
        assert_eq!(a.counters.len(), 3 * 4);
    }

    #[test]
    fn counter_ids_of_levels_never_collide() {
        let midnight = t("2026-11-24T00:00:00Z").timestamp_millis();
        for kind in [Kind::Sent, Kind::Pair] {
            let hour = counter_id(Level::Hour, midnight, kind, "u|p");
            assert_ne!(hour, counter_id(Level::Day, midnight, kind, "u|p"));
        }
        let (low, high) = id_range(Level::Day, Kind::Sent, &Subjects::All, 0, midnight + 1);
        let id = counter_id(Level::Day, midnight, Kind::Sent, "u");
        assert!(low <= id && id < high);
    }

    #[test]
    fn an_unbounded_window_uses_the_all_time_counters() {
        let p = plan(Window::default(), Utc::now(), Level::All);
        assert_eq!(p.counters, vec![(Level::All, 0, 1)]);
        assert!(p.raw.is_empty());
    }

    #[test]
    fn a_window_is_cut_into_days_hours_and_raw_edges() {
        let w = Window {
            from: Some(t("2026-11-01T10:30:00Z")),
            to: Some(t("2026-11-08T05:15:00Z")),
        };
        let p = plan(w, t("2026-11-24T00:00:00Z"), Level::All);
        assert_eq!(
            p.raw,
            vec![
                (t("2026-11-01T10:30:00Z"), t("2026-11-01T11:00:00Z")),
                (t("2026-11-08T05:00:00Z"), t("2026-11-08T05:15:00Z")),
            ]
        );
        let ms = |s: &str| t(s).timestamp_millis();
        assert_eq!(
            p.counters,
            vec![
                (
                    Level::Hour,
                    ms("2026-11-01T11:00:00Z"),
                    ms("2026-11-02T00:00:00Z")
                ),
                (
                    Level::Hour,
                    ms("2026-11-08T00:00:00Z"),
                    ms("2026-11-08T05:00:00Z")
                ),
                (
                    Level::Day,
                    ms("2026-11-02T00:00:00Z"),
                    ms("2026-11-08T00:00:00Z")
                ),
            ]
        );
    }

    #[test]
    fn a_window_inside_one_hour_is_counted_raw() {
        let w = Window {
            from: Some(t("2026-11-01T10:10:00Z")),
            to: Some(t("2026-11-01T10:50:00Z")),
        };
        let p = plan(w, Utc::now(), Level::All);
        assert!(p.counters.is_empty());
        assert_eq!(p.raw.len(), 1);
    }

    #[test]
    fn hourly_plans_never_use_daily_counters() {
        let w = Window {
            from: Some(t("2026-11-01T00:00:00Z")),
            to: Some(t("2026-11-05T00:00:00Z")),
        };
        let p = plan(w, Utc::now(), Level::Hour);
        assert!(p.counters.iter().all(|(l, _, _)| *l == Level::Hour));
        assert!(p.raw.is_empty());
    }

    #[test]
    fn ranges_are_split_at_the_settled_boundary() {
        let cut = |level: Level| if level == Level::Hour { 50 } else { 10 };
        let ranges = [
            (Level::Hour, 0, 40),
            (Level::Hour, 40, 60),
            (Level::Day, 20, 30),
            (Level::Day, 0, 10),
            (Level::All, 0, 1),
        ];
        assert_eq!(
            split(&ranges, cut),
            vec![
                (Level::Hour, 0, 40, true),
                (Level::Hour, 40, 50, true),
                (Level::Hour, 50, 60, false),
                (Level::Day, 20, 30, false),
                (Level::Day, 0, 10, true),
                (Level::All, 0, 1, false),
            ]
        );
    }
}
