//! Read state: each user's read marker per conversation (the newest message read), and the
//! unread messages and unread mentions after it. See `docs/data-model.md`.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use mongodb::bson::{self, Document, doc};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::{Store, ids};
use super::{changed, index};
use crate::domain::UserId;

/// Unread messages, and unread mentions, are counted up to this many (the page shows "99+"):
/// a count reads at most this many index entries, however long the history.
pub const UNREAD_CAP: i64 = 100;

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

    /// Messages of `conversation` after `after` (a `seq`) that others sent (one's own are
    /// never unread), and those of them that mention `user`, each counted up to
    /// [`UNREAD_CAP`] from the index.
    pub async fn unread(
        &self,
        user: UserId,
        conversation: &str,
        after: &str,
    ) -> mongodb::error::Result<(i64, i64)> {
        let user = user.to_string();
        let after_it = doc! { "conversation": { "$eq": conversation }, "seq": { "$gt": after } };
        let mut by_others = after_it.clone();
        by_others.insert("sender_id", doc! { "$ne": &user });
        let mut mentioning = after_it;
        mentioning.insert("user", doc! { "$eq": &user });
        tokio::try_join!(
            self.count_capped("messages", by_others),
            self.count_capped("mentions", mentioning),
        )
    }

    /// Up to [`UNREAD_CAP`] matches counted by reading their ids from the index: a `find`
    /// with a limit, where an aggregation's `$count` took nx-27017 a scan (435 ms at p95 for
    /// 20 conversations at a million messages, 2026-12-01).
    async fn count_capped(
        &self,
        collection: &str,
        filter: Document,
    ) -> mongodb::error::Result<i64> {
        let collection = self.db.collection::<Document>(collection);
        let count = async {
            let ids: Vec<Document> = collection
                .find(filter)
                .sort(doc! { "seq": 1 })
                .projection(doc! { "_id": 1 })
                .limit(UNREAD_CAP)
                .await?
                .try_collect()
                .await?;
            Ok(i64::try_from(ids.len()).unwrap_or(UNREAD_CAP))
        };
        self.bounded("counting unread messages", count).await
    }
}
