//! Loads a realistic chat history straight into MongoDB, in bulk, for statistics and
//! benchmarks: users, rooms, memberships, messages over a time span with skewed activity
//! (a few very active users, as in real chats) and the statistics counters that go with them.
//!
//! ```text
//! cargo run --release --bin generate-history -- --users 2000 --rooms 50 --messages 1000000 --days 90
//! ```
//!
//! Connects with `MONGODB_URI` / `MONGODB_DATABASE`. Refuses to touch a database that already
//! holds users or messages unless `--force` is given (which empties it first). Every generated
//! user can log in with the password `generated-password`.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use anyhow::{Context, bail};
use argon2::password_hash::{PasswordHasher as _, SaltString};
use chrono::{Duration, Utc};
use mongodb::bson::{self, Document, doc, oid::ObjectId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use chat_server::config::Settings;
use chat_server::store::stats::Increments;
use chat_server::store::{
    MentionRef, MessageRecord, Store, direct_conversation, room_conversation,
};

const PASSWORD: &str = "generated-password";
const BATCH: usize = 10_000;
const WORDS: &[&str] = &[
    "hello",
    "ok",
    "lunch?",
    "sounds good",
    "see you",
    "on my way",
    "did you see",
    "the build",
    "is green",
    "again",
    "thanks",
    "meeting",
    "in 5",
    "ship it",
    "coffee",
    "later",
    "why not",
    "👍",
    "héhé",
    "tomorrow",
];

struct Options {
    users: usize,
    rooms: usize,
    messages: usize,
    days: i64,
    seed: u64,
    force: bool,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        users: 2000,
        rooms: 50,
        messages: 1_000_000,
        days: 90,
        seed: 42,
        force: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--users" => options.users = value()?.parse()?,
            "--rooms" => options.rooms = value()?.parse()?,
            "--messages" => options.messages = value()?.parse()?,
            "--days" => options.days = value()?.parse()?,
            "--seed" => options.seed = value()?.parse()?,
            "--force" => options.force = true,
            "-h" | "--help" => {
                println!(
                    "generate-history [--users N] [--rooms N] [--messages N] [--days N] [--seed N] [--force]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    if options.users < 2 || options.rooms < 1 || options.days < 1 {
        bail!("need at least 2 users, 1 room and 1 day");
    }
    Ok(options)
}

/// Zipf-like weights: the user of rank r sends in proportion to 1 / r^1.1.
struct Skewed {
    cumulative: Vec<f64>,
}

impl Skewed {
    fn new(n: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                #[allow(clippy::cast_precision_loss)]
                let w = 1.0 / (rank as f64).powf(1.1);
                total += w;
                total
            })
            .collect();
        Self { cumulative }
    }

    fn pick(&self, rng: &mut StdRng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.r#gen::<f64>() * total;
        self.cumulative
            .partition_point(|c| *c < x)
            .min(self.cumulative.len() - 1)
    }
}

fn progress(label: &str, done: usize, total: usize, started: Instant) {
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let eta = if rate > 0.0 {
        (total - done) as f64 / rate
    } else {
        0.0
    };
    eprint!(
        "\r{label:<9} [{}{}] {:>3}% {done}/{total}  {rate:>8.0}/s  ETA {eta:>4.0}s ",
        "#".repeat(filled),
        " ".repeat(width - filled),
        (done * 100).checked_div(total).unwrap_or(100),
    );
    let _ = std::io::stderr().flush();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    let settings = Settings::from_lookup(|name| {
        if name == "APP_ENV" {
            Some("development".to_owned())
        } else {
            std::env::var(name).ok()
        }
    })?;
    let store = Store::connect(&settings).await?;
    let db = store.database().clone();
    let existing = store.count_all("users").await? + store.count_all("messages").await?;
    if existing > 0 && !options.force {
        bail!(
            "database `{}` already holds data ({existing} users and messages); pass --force to empty it first",
            settings.mongodb_database
        );
    }
    if options.force {
        db.drop().await.context("cannot empty the database")?;
    }
    store.ensure_indexes().await?;
    let general = store.ensure_default_room().await?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let now = Utc::now();
    let start = now - Duration::days(options.days);
    let started = Instant::now();

    // Users, all with one password hash (hashing 2000 times would take a minute).
    let salt = SaltString::from_b64("Z2VuZXJhdGVkc2FsdA").map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(PASSWORD.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string();
    let users: Vec<(String, String)> = (0..options.users)
        .map(|i| (ObjectId::new().to_hex(), format!("user{i:05}")))
        .collect();
    let user_docs: Vec<Document> = users
        .iter()
        .map(|(id, name)| {
            Ok(doc! {
                "_id": ObjectId::parse_str(id)?,
                "username": name, "username_lower": name, "password_hash": &hash,
                "created_at": bson::DateTime::from_millis(start.timestamp_millis()),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    for (i, chunk) in user_docs.chunks(BATCH).enumerate() {
        db.collection::<Document>("users")
            .insert_many(chunk.to_vec())
            .await?;
        progress(
            "users",
            (i * BATCH + chunk.len()).min(users.len()),
            users.len(),
            started,
        );
    }
    eprintln!();

    // Rooms and memberships: every user is in `general` and joins 1 to 4 rooms, popular
    // rooms more often.
    let rooms: Vec<(String, String)> = (0..options.rooms)
        .map(|i| (ObjectId::new().to_hex(), format!("room{i:03}")))
        .collect();
    let mut room_docs = Vec::new();
    for (id, name) in &rooms {
        room_docs.push(doc! {
            "_id": ObjectId::parse_str(id)?, "name": name, "name_lower": name,
            "created_by": &users[0].0, "created_at": bson::DateTime::from_millis(start.timestamp_millis()),
            "is_default": false,
        });
    }
    db.collection::<Document>("rooms")
        .insert_many(room_docs)
        .await?;
    let room_pick = Skewed::new(rooms.len());
    let mut member_of: Vec<Vec<usize>> = Vec::with_capacity(users.len());
    let mut memberships = Vec::new();
    for (user_id, _) in &users {
        let mut mine: Vec<usize> = (0..rng.gen_range(1..=4))
            .map(|_| room_pick.pick(&mut rng))
            .collect();
        mine.sort_unstable();
        mine.dedup();
        for r in &mine {
            memberships.push(doc! {
                "_id": ObjectId::new(), "room_id": &rooms[*r].0, "user_id": user_id,
                "joined_at": bson::DateTime::from_millis(start.timestamp_millis()),
            });
        }
        member_of.push(mine);
    }
    for chunk in memberships.chunks(BATCH) {
        db.collection::<Document>("memberships")
            .insert_many(chunk.to_vec())
            .await?;
    }
    eprintln!(
        "rooms     {} rooms, {} memberships",
        rooms.len(),
        memberships.len()
    );

    // Messages, with the counters accumulated in memory and written once at the end.
    let sender_pick = Skewed::new(users.len());
    let topic_pick = Skewed::new(20_000);
    let mut mentions: Vec<Document> = Vec::new();
    let span_ms = (now - start).num_milliseconds();
    // Merged exactly as the API merges the counts it writes behind its messages.
    let mut counters = Increments::default();
    let messages = db.collection::<MessageRecord>("messages");
    let started = Instant::now();
    let mut done = 0;
    while done < options.messages {
        let n = BATCH.min(options.messages - done);
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            let s = sender_pick.pick(&mut rng);
            let at = start + Duration::milliseconds(rng.gen_range(0..span_ms));
            // Ids carry the message's time, as the API's would have.
            let id = ObjectId::from_parts(
                u32::try_from(at.timestamp()).unwrap_or(0),
                rng.r#gen(),
                rng.r#gen(),
            );
            let mut body: Vec<String> = (0..rng.gen_range(1..6))
                .map(|_| WORDS[rng.gen_range(0..WORDS.len())].to_owned())
                .collect();
            // Half the messages name a topic, a few topics often and most rarely, so that
            // search has words of every frequency: `topic1` in about 3% of messages, `topic30`
            // in about 0.1%, `topic1000` in a few.
            if rng.gen_bool(0.5) {
                body.push(format!("topic{}", topic_pick.pick(&mut rng) + 1));
            }
            let (sender_id, sender_name) = &users[s];
            let mut record = MessageRecord {
                id,
                seq: id.to_hex(),
                conversation: String::new(),
                sender_id: sender_id.clone(),
                sender_name: sender_name.clone(),
                room_id: None,
                recipient_id: None,
                recipient_name: None,
                body: body.join(" "),
                created_at: bson::DateTime::from_millis(at.timestamp_millis()),
                at_ms: at.timestamp_millis(),
                // Loaded history: counted here, never announced (no batch to finish).
                ..MessageRecord::default()
            };
            if rng.gen_bool(0.8) {
                let room = match member_of[s].as_slice() {
                    mine if !mine.is_empty() && rng.gen_bool(0.7) => {
                        rooms[mine[rng.gen_range(0..mine.len())]].0.clone()
                    }
                    _ => general.room_id().to_string(),
                };
                record.conversation = room_conversation(chat_server::domain::RoomId::parse(&room)?);
                // Some messages in `general` (where everyone reads) mention someone, stored as
                // finishing a posted batch stores them.
                if room == general.room_id().to_string() && rng.gen_bool(0.02) {
                    let (id, name) = &users[rng.gen_range(0..users.len())];
                    if id != sender_id {
                        record.body.push_str(&format!(" @{name}"));
                        record.mentions = vec![MentionRef {
                            id: id.clone(),
                            username: name.clone(),
                        }];
                        mentions.push(doc! {
                            "_id": chat_server::store::mention_id(id, &record.seq), "user": id,
                            "message": &record.seq, "conversation": &record.conversation,
                            "seq": &record.seq,
                        });
                    }
                }
                record.room_id = Some(room);
            } else {
                let mut r = sender_pick.pick(&mut rng);
                if r == s {
                    r = (r + 1 + rng.gen_range(0..users.len() - 1)) % users.len();
                }
                let (recipient_id, recipient_name) = &users[r];
                record.conversation = direct_conversation(
                    chat_server::domain::UserId::parse(sender_id)?,
                    chat_server::domain::UserId::parse(recipient_id)?,
                );
                record.recipient_id = Some(recipient_id.clone());
                record.recipient_name = Some(recipient_name.clone());
            }
            counters.count(&record);
            batch.push(record);
        }
        messages.insert_many(batch).ordered(false).await?;
        if !mentions.is_empty() {
            db.collection::<Document>("mentions")
                .insert_many(std::mem::take(&mut mentions))
                .ordered(false)
                .await?;
        }
        done += n;
        progress("messages", done, options.messages, started);
    }
    eprintln!();

    let started = Instant::now();
    let total = counters.len();
    let mut by_collection: HashMap<&'static str, Vec<Document>> = HashMap::new();
    for (collection, document) in counters.into_documents() {
        by_collection.entry(collection).or_default().push(document);
    }
    let mut written = 0;
    for (collection, docs) in by_collection {
        for chunk in docs.chunks(BATCH) {
            db.collection::<Document>(collection)
                .insert_many(chunk.to_vec())
                .ordered(false)
                .await?;
            written += chunk.len();
            progress("counters", written, total, started);
        }
    }
    eprintln!();
    println!(
        "generated {} users, {} rooms, {} messages over {} days, {total} counters into `{}`",
        users.len(),
        rooms.len(),
        options.messages,
        options.days,
        settings.mongodb_database
    );
    Ok(())
}
