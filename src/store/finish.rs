//! Finish records: a batch (the messages of one group commit, or one change: a membership, a
//! read marker, a reaction, an edit or a deletion) is finished once its events are in the log
//! and its messages are counted. Its record is
//! inserted in the same transaction as its counts, and its unique `_id` (the batch id) is what
//! makes counting exactly once: a second finisher's transaction fails on it and applies
//! nothing. The reconciler walks stored batches in time and finishes those without a record;
//! its place (the watermark) and lease are one document, moved in the same transactions.

use std::collections::HashSet;

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::reads::{Mention, mentions};
use super::stats::Increments;
use super::{Store, is_duplicate_key};
use super::{index, index_with};

/// A finished batch, to record.
pub struct Finished {
    pub batch: String,
    pub at_ms: i64,
    pub source: Source,
    /// Events it announced (messages, or one change).
    pub events: i64,
    pub increments: Increments,
    pub effects: Effects,
}

/// What finishing a batch writes besides its record and counts, in the same transaction (each
/// write an upsert or a removal, so that it is the same written twice).
#[derive(Debug, Default)]
pub struct Effects {
    /// Messages whose mention documents go first (an edit replaces them, a deletion drops them).
    pub forget_mentions_of: Vec<String>,
    pub mentions: Vec<Mention>,
}

#[derive(Serialize, Deserialize)]
struct FinishRecord {
    #[serde(rename = "_id")]
    batch: String,
    at_ms: i64,
    source: Source,
    events: i64,
    /// For the expiry: a record outlives by far the time a batch can take to be finished.
    at: mongodb::bson::DateTime,
}

/// A stored batch with no finish record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub batch: String,
    pub at_ms: i64,
    pub source: Source,
}

/// Who holds the reconciler's lease.
pub enum Lease {
    /// This instance, with the reconciler's watermark (none before the first pass).
    Mine {
        watermark: Option<i64>,
    },
    Others,
}

/// Where a batch's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A group commit's messages: never updated, so their number in a window is final.
    Messages,
    /// The other sources are state, overwritten by the next change of the same thing: a
    /// membership, a read marker, a reaction, a message's edit or deletion.
    Membership,
    ReadMarker,
    Reaction,
    MessageChange,
}

impl Source {
    /// The changes whose documents the reconciler reads in every window, with the collection
    /// and the fields that hold their batch and time.
    const STATE: [(Source, &'static str, &'static str, &'static str); 4] = [
        (Source::Membership, "memberships", "batch", "at_ms"),
        (Source::ReadMarker, "read_markers", "batch", "at_ms"),
        (Source::Reaction, "reactions", "batch", "at_ms"),
        (
            Source::MessageChange,
            "messages",
            "change_batch",
            "changed_at_ms",
        ),
    ];
}

/// The id of the document that says `message` mentions `user`: one per user and message.
pub fn mention_id(user: &str, message: &str) -> String {
    format!("{user}|{message}")
}

fn records(db: &Database) -> Collection<FinishRecord> {
    db.collection("finished")
}

fn reconciler(db: &Database) -> Collection<Document> {
    db.collection("reconciler")
}

pub(super) async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    records(db)
        .create_index(index("at_ms", doc! { "at_ms": 1 }))
        .await?;
    let a_week = IndexOptions::builder()
        .expire_after(std::time::Duration::from_secs(7 * 24 * 3600))
        .build();
    records(db)
        .create_index(index_with("expire_after_a_week", doc! { "at": 1 }, a_week))
        .await?;
    Ok(())
}

impl Store {
    /// Records `batches` finished and applies their counts in one transaction, and moves the
    /// reconciler's watermark to `watermark` when given. Batches already finished (by another
    /// finisher) are left out, with their counts, and the rest written. On error nothing is
    /// known to be applied: the caller tries again with the same batches.
    pub async fn finish(
        &self,
        batches: &[Finished],
        watermark: Option<i64>,
    ) -> mongodb::error::Result<()> {
        // A batch can be handed in twice (its instance and a retried post both appended it).
        let mut seen = HashSet::new();
        let mut todo: Vec<&Finished> = batches.iter().filter(|b| seen.insert(&b.batch)).collect();
        // A failed commit may have been applied (a lost reply; nx-27017 reports concurrent
        // transactions as failed after applying them): what was, its records say, and the
        // rest is tried again.
        let mut failure = None;
        for _ in 0..3 {
            match self
                .bounded("finishing batches", self.finish_once(&todo, watermark))
                .await
            {
                Ok(()) => return Ok(()),
                Err(err) => failure = Some(err),
            }
            let ids: Vec<&str> = todo.iter().map(|b| b.batch.as_str()).collect();
            let done = self.finished_among(&ids).await?;
            todo.retain(|b| !done.contains(&b.batch));
            if todo.is_empty() && watermark.is_none() {
                return Ok(());
            }
        }
        Err(failure.unwrap_or_else(|| mongodb::error::Error::custom("finishing batches failed")))
    }

    async fn finish_once(
        &self,
        batches: &[&Finished],
        watermark: Option<i64>,
    ) -> mongodb::error::Result<()> {
        if batches.is_empty() && watermark.is_none() {
            return Ok(());
        }
        let mut increments = Increments::default();
        let now = mongodb::bson::DateTime::now();
        let finished: Vec<FinishRecord> = batches
            .iter()
            .map(|b| {
                increments.add(&b.increments);
                FinishRecord {
                    batch: b.batch.clone(),
                    at_ms: b.at_ms,
                    source: b.source,
                    events: b.events,
                    at: now,
                }
            })
            .collect();
        let mut session = self.db.client().start_session().await?;
        session.start_transaction().await?;
        if !finished.is_empty() {
            records(&self.db)
                .insert_many(&finished)
                .session(&mut session)
                .await?;
        }
        increments.apply(&self.db, &mut session).await?;
        let effects: Vec<&Effects> = batches.iter().map(|b| &b.effects).collect();
        self.apply_effects(&effects, &mut session).await?;
        if let Some(watermark) = watermark {
            reconciler(&self.db)
                .update_one(
                    doc! { "_id": "reconciler" },
                    doc! { "$max": { "watermark": watermark } },
                )
                .upsert(true)
                .session(&mut session)
                .await?;
        }
        session.commit_transaction().await
    }

    async fn apply_effects(
        &self,
        effects: &[&Effects],
        session: &mut mongodb::ClientSession,
    ) -> mongodb::error::Result<()> {
        let forget: Vec<&String> = effects.iter().flat_map(|e| &e.forget_mentions_of).collect();
        if !forget.is_empty() {
            mentions(&self.db)
                .delete_many(doc! { "message": { "$in": forget } })
                .session(&mut *session)
                .await?;
        }
        let upserts: Vec<Document> = effects
            .iter()
            .flat_map(|e| &e.mentions)
            .map(|m| {
                doc! {
                    "q": { "_id": mention_id(&m.user, &m.message) },
                    "u": { "$set": {
                        "user": &m.user, "message": &m.message,
                        "conversation": &m.conversation, "seq": &m.seq,
                    } },
                    "upsert": true,
                }
            })
            .collect();
        if !upserts.is_empty() {
            self.db
                .run_command(doc! { "update": "mentions", "updates": upserts, "ordered": true })
                .session(&mut *session)
                .await?;
        }
        Ok(())
    }

    async fn finished_among(&self, ids: &[&str]) -> mongodb::error::Result<HashSet<String>> {
        let finished = self.majority::<Document>("finished");
        let found: Vec<Document> = self
            .bounded("reading finish records", async {
                finished
                    .find(doc! { "_id": { "$in": ids } })
                    .projection(doc! { "_id": 1 })
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        Ok(found
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// Whether `batch` is finished.
    pub async fn is_finished(&self, batch: &str) -> mongodb::error::Result<bool> {
        Ok(!self.finished_among(&[batch]).await?.is_empty())
    }

    /// Takes (or keeps) the reconciler's lease for `owner` until `until_ms`, unless another
    /// instance holds it past `now_ms`.
    pub async fn reconciler_lease(
        &self,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> mongodb::error::Result<Lease> {
        let lease = reconciler(&self.db);
        let take = lease
            .find_one_and_update(
                doc! { "_id": "reconciler", "$or": [
                    { "owner": { "$eq": owner } },
                    { "until": { "$lt": now_ms } },
                    { "until": { "$exists": false } },
                ] },
                doc! { "$set": { "owner": owner, "until": until_ms } },
            )
            .upsert(true)
            .return_document(mongodb::options::ReturnDocument::After);
        match self.bounded("taking the reconciler's lease", take).await {
            Ok(Some(lease)) => Ok(Lease::Mine {
                watermark: lease.get_i64("watermark").ok(),
            }),
            // The document exists and another instance holds the lease: the upsert fails on
            // the document's id (nx-27017 answers no document instead).
            Ok(None) => Ok(Lease::Others),
            Err(err) if is_duplicate_key(&err) => Ok(Lease::Others),
            Err(err) => Err(err),
        }
    }

    /// The batches stored in `[from_ms, to_ms)` that have no finish record, oldest first.
    /// Posted messages are never taken back from a window: when it holds as many as the
    /// finish records of message batches account for, none is unfinished, and two counts are
    /// all it reads. Changes (memberships, read markers, reactions, edits and deletions) are
    /// state that a later change overwrites with its own batch, so those of the window are
    /// always read, each from an index on its time.
    pub async fn unfinished(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> mongodb::error::Result<Vec<Unfinished>> {
        let window = doc! { "at_ms": { "$gte": from_ms, "$lt": to_ms } };
        let stored = self.count_in("messages", &window).await?;
        // Only the records of message batches (records of changes share the window).
        let changes = Source::STATE
            .iter()
            .map(|(source, ..)| mongodb::bson::to_bson(source))
            .collect::<Result<Vec<_>, _>>()
            .map_err(mongodb::error::Error::custom)?;
        let mut of_messages = window.clone();
        of_messages.insert("source", doc! { "$nin": changes });
        let sum = vec![
            doc! { "$match": of_messages },
            doc! { "$group": { "_id": null, "events": { "$sum": "$events" } } },
        ];
        let accounted = self
            .bounded("summing finish records", async {
                let mut cursor = self.majority::<Document>("finished").aggregate(sum).await?;
                let first = cursor.try_next().await?;
                Ok(first
                    .and_then(|d| super::integer(d.get("events")))
                    .unwrap_or(0))
            })
            .await?;
        let mut sources = Source::STATE.to_vec();
        if stored != accounted {
            sources.insert(0, (Source::Messages, "messages", "batch", "at_ms"));
        }
        let mut batches = Vec::new();
        for (source, collection, batch_field, time_field) in sources {
            let stored = self.majority::<Document>(collection);
            let window = doc! { time_field: { "$gte": from_ms, "$lt": to_ms } };
            let found: Vec<Document> = self
                .bounded("reading stored batches", async {
                    stored
                        .find(window)
                        .projection(doc! { batch_field: 1, time_field: 1 })
                        .await?
                        .try_collect()
                        .await
                })
                .await?;
            for d in found {
                // Loaded history (and documents of older versions) has no batch to finish.
                let (Ok(batch), Ok(at_ms)) = (d.get_str(batch_field), d.get_i64(time_field)) else {
                    continue;
                };
                if batch.is_empty() {
                    continue;
                }
                let batch = Unfinished {
                    batch: batch.to_owned(),
                    at_ms,
                    source,
                };
                if !batches.contains(&batch) {
                    batches.push(batch);
                }
            }
        }
        let ids: Vec<&str> = batches.iter().map(|b| b.batch.as_str()).collect();
        let done = self.finished_among(&ids).await?;
        batches.retain(|b| !done.contains(&b.batch));
        batches.sort_by_key(|b| b.at_ms);
        Ok(batches)
    }

    async fn count_in(&self, collection: &str, filter: &Document) -> mongodb::error::Result<i64> {
        // An exact count: `$match` + `$count` uses the index on both servers, where
        // nx-27017's `count` without a `limit` scans (with one it stops there: the capped
        // unread counts of `reads` use it so).
        let pipeline = vec![doc! { "$match": filter.clone() }, doc! { "$count": "n" }];
        self.bounded("counting stored events", async {
            let mut cursor = self
                .majority::<Document>(collection)
                .aggregate(pipeline)
                .await?;
            let first = cursor.try_next().await?;
            Ok(first.and_then(|d| super::integer(d.get("n"))).unwrap_or(0))
        })
        .await
    }
}
