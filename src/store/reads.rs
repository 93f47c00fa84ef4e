//! Read state: each user's read marker per conversation (the newest message read), and the
//! unread messages and unread mentions after it. See `docs/data-model.md`.

use std::collections::HashMap;

use futures_util::{StreamExt, TryStreamExt, stream};
use mongodb::bson::{self, Document, doc};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::{Store, ids};
use super::{changed, index, integer};
use crate::domain::UserId;

/// Unread messages, and unread mentions, are counted up to this many (the page shows "99+"):
/// a count reads at most this many index entries, however long the history.
pub const UNREAD_CAP: i64 = 100;
/// Counts read at once, so that a long list does not take every pooled connection.
const COUNT_READS: usize = 8;
/// Unread mentions read in one go for a whole list of conversations; past this many they are
/// counted per conversation instead.
const MENTIONS_AT_ONCE: i64 = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MarkerRecord {
    #[serde(rename = "_id")]
    id: String,
    user: String,
    conversation: String,
    /// The `seq` of the newest message read.
    seq: String,
    /// The last change that moved it (a batch of its own, announced as `read`).
    #[serde(default)]
    batch: String,
    #[serde(default)]
    at_ms: i64,
}

/// A marker moved forward: what its `read` event says.
#[derive(Debug, Clone)]
pub struct ReadChange {
    pub user: UserId,
    pub conversation: String,
    /// The newest message read, as its id (`seq`).
    pub seq: String,
    pub batch: String,
    pub at_ms: i64,
}

/// One user mentioned by one message (written when the message's batch is finished).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    pub user: String,
    pub message: String,
    pub conversation: String,
    pub seq: String,
}

fn markers(db: &Database) -> Collection<MarkerRecord> {
    db.collection("read_markers")
}

pub(super) fn mentions(db: &Database) -> Collection<Document> {
    db.collection("mentions")
}

fn marker_id(user: &str, conversation: &str) -> String {
    format!("{user}|{conversation}")
}

/// The `seq` below every message stored from `at_ms` on: where a conversation's unread count
/// starts for someone who never read it.
pub fn seq_before(at_ms: i64) -> String {
    ids::floor(at_ms).to_hex()
}

pub(super) async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    markers(db)
        .create_index(index("at_ms", doc! { "at_ms": 1 }))
        .await?;
    mentions(db)
        .create_index(index(
            "unread_mentions",
            doc! { "user": 1, "conversation": 1, "seq": 1 },
        ))
        .await?;
    Ok(())
}

impl Store {
    /// `user`'s markers for `conversations`, by conversation.
    pub async fn read_markers(
        &self,
        user: UserId,
        conversations: &[String],
    ) -> mongodb::error::Result<HashMap<String, String>> {
        let user = user.to_string();
        let ids: Vec<String> = conversations.iter().map(|c| marker_id(&user, c)).collect();
        let collection = markers(&self.db);
        let read = async {
            let found = collection.find(doc! { "_id": { "$in": ids } }).await?;
            found.try_collect::<Vec<_>>().await
        };
        let found = self.bounded("reading read markers", read).await?;
        Ok(found.into_iter().map(|m| (m.conversation, m.seq)).collect())
    }

    /// Moves `user`'s marker in `conversation` forward to `seq`: the change to announce, or
    /// `None` when the marker was there or further already (it never moves back).
    pub async fn mark_read(
        &self,
        user: UserId,
        conversation: &str,
        seq: &str,
    ) -> mongodb::error::Result<Option<ReadChange>> {
        let at_ms = ids::stamp();
        let record = MarkerRecord {
            id: marker_id(&user.to_string(), conversation),
            user: user.to_string(),
            conversation: conversation.to_owned(),
            seq: seq.to_owned(),
            batch: ids::next(at_ms).to_hex(),
            at_ms,
        };
        // Only a marker behind `seq` moves; none at all is inserted, and one at or past it
        // makes the upsert fail on its id instead.
        let filter = doc! { "_id": &record.id, "seq": { "$lt": seq } };
        let update =
            doc! { "$set": bson::to_document(&record).map_err(mongodb::error::Error::custom)? };
        let collection = markers(&self.db);
        let moved = collection.update_one(filter, update).upsert(true);
        if !changed(self.bounded("moving a read marker", moved).await)? {
            return Ok(None);
        }
        Ok(Some(ReadChange {
            user,
            conversation: record.conversation,
            seq: record.seq,
            batch: record.batch,
            at_ms,
        }))
    }

    /// The marker change stored with `batch` at `at_ms`, if it is still the last one.
    pub async fn read_change(
        &self,
        batch: &str,
        at_ms: i64,
    ) -> mongodb::error::Result<Option<ReadChange>> {
        let collection = self.majority::<MarkerRecord>("read_markers");
        let find =
            collection.find_one(doc! { "at_ms": { "$eq": at_ms }, "batch": { "$eq": batch } });
        let found = self.bounded("reading a read marker", find).await?;
        Ok(found.and_then(|m| {
            Some(ReadChange {
                user: UserId::parse(&m.user).ok()?,
                conversation: m.conversation,
                seq: m.seq,
                batch: m.batch,
                at_ms: m.at_ms,
            })
        }))
    }

    /// For each of `conversations` (its key, and the `seq` its unread messages come after):
    /// the messages after it that others sent (one's own are never unread), and those of
    /// them that mention `user`, each counted up to [`UNREAD_CAP`]. Messages are counted per
    /// conversation from the `(conversation, seq)` index; mentions, which are few, are read
    /// for all the conversations at once, and counted per conversation only when there are
    /// many of them.
    pub async fn unread(
        &self,
        user: UserId,
        conversations: &[(String, String)],
    ) -> mongodb::error::Result<Vec<(i64, i64)>> {
        let user = user.to_string();
        let messages = stream::iter(conversations.iter().map(|(key, after)| {
            let by_others = doc! {
                "conversation": { "$eq": key },
                "seq": { "$gt": after },
                "sender_id": { "$ne": &user },
            };
            self.count_capped("messages", by_others)
        }))
        .buffered(COUNT_READS)
        .try_collect::<Vec<i64>>();
        let (messages, mentions) =
            tokio::try_join!(messages, self.mentions_after(&user, conversations))?;
        Ok(messages.into_iter().zip(mentions).collect())
    }

    /// `user`'s mentions after each conversation's `seq`, up to [`UNREAD_CAP`] each.
    async fn mentions_after(
        &self,
        user: &str,
        conversations: &[(String, String)],
    ) -> mongodb::error::Result<Vec<i64>> {
        let Some(oldest) = conversations.iter().map(|(_, after)| after).min() else {
            return Ok(Vec::new());
        };
        let keys: Vec<&String> = conversations.iter().map(|(key, _)| key).collect();
        let all = doc! {
            "user": { "$eq": user },
            "conversation": { "$in": keys },
            "seq": { "$gt": oldest },
        };
        let collection = mentions(&self.db);
        let read = async {
            collection
                .find(all)
                .projection(doc! { "conversation": 1, "seq": 1 })
                .limit(MENTIONS_AT_ONCE)
                .await?
                .try_collect::<Vec<Document>>()
                .await
        };
        let found = self.bounded("reading unread mentions", read).await?;
        if found.len() < usize::try_from(MENTIONS_AT_ONCE).unwrap_or(usize::MAX) {
            let counted = conversations.iter().map(|(key, after)| {
                let n = found
                    .iter()
                    .filter(|m| m.get_str("conversation").ok() == Some(key.as_str()))
                    .filter(|m| m.get_str("seq").is_ok_and(|seq| seq > after.as_str()))
                    .count();
                i64::try_from(n).unwrap_or(UNREAD_CAP).min(UNREAD_CAP)
            });
            return Ok(counted.collect());
        }
        stream::iter(conversations.iter().map(|(key, after)| {
            let mentioning = doc! {
                "user": { "$eq": user },
                "conversation": { "$eq": key },
                "seq": { "$gt": after },
            };
            self.count_capped("mentions", mentioning)
        }))
        .buffered(COUNT_READS)
        .try_collect()
        .await
    }

    /// Up to [`UNREAD_CAP`] matches, counted by the server with the `count` command and its
    /// `limit`, which reads at most that many index entries. At a million messages on
    /// nx-27017 (2026-12-01), a direct conversation's capped count took 2.0 ms this way,
    /// 7.3 ms as a `find` of the ids with a limit, and 21.5 ms as an aggregation
    /// (`$match`, `$limit`, `$count`), which scans.
    async fn count_capped(
        &self,
        collection: &str,
        filter: Document,
    ) -> mongodb::error::Result<i64> {
        let command = doc! { "count": collection, "query": filter, "limit": UNREAD_CAP };
        // A command is not retried by the driver, as the `find` it replaces was: once, here,
        // across a failover, within the one bound of the whole count.
        let deadline = tokio::time::Instant::now() + self.write_bound();
        let count = || {
            super::bounded_until(
                deadline,
                "counting unread messages",
                self.db.run_command(command.clone()),
            )
        };
        let answer = match count().await {
            // Once, if the bound leaves time for it (a timeout spent it all).
            Err(err) if super::is_transient(&err) && tokio::time::Instant::now() < deadline => {
                count().await?
            }
            answer => answer?,
        };
        let n = integer(answer.get("n")).ok_or_else(|| {
            mongodb::error::Error::custom(format!("a count answered without a number: {answer}"))
        })?;
        Ok(n.min(UNREAD_CAP))
    }
}
