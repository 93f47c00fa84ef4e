//! Emoji reactions: one document per user, message and emoji (its id is the three), so that
//! two clicks at once make one reaction. Removing one marks it inactive: a reaction is state,
//! and each change is a batch of its own, announced as a `reaction` event.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use mongodb::bson::{self, doc};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::{MessageRecord, Store, ids};
use super::{changed, index};
use crate::domain::UserId;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReactionRecord {
    #[serde(rename = "_id")]
    id: String,
    message_id: String,
    conversation: String,
    seq: String,
    user: String,
    username: String,
    emoji: String,
    #[serde(deserialize_with = "super::lenient_bool")]
    active: bool,
    batch: String,
    at_ms: i64,
}

/// A reaction added or removed: what its `reaction` event says.
#[derive(Debug, Clone)]
pub struct ReactionChange {
    pub message_id: String,
    pub conversation: String,
    pub user: String,
    pub username: String,
    pub emoji: String,
    pub active: bool,
    pub batch: String,
    pub at_ms: i64,
}

impl From<ReactionRecord> for ReactionChange {
    fn from(r: ReactionRecord) -> Self {
        Self {
            message_id: r.message_id,
            conversation: r.conversation,
            user: r.user,
            username: r.username,
            emoji: r.emoji,
            active: r.active,
            batch: r.batch,
            at_ms: r.at_ms,
        }
    }
}

/// The reactions of some messages: per message, per emoji, who reacted.
pub type Reactions = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn reactions(db: &Database) -> Collection<ReactionRecord> {
    db.collection("reactions")
}

pub(super) async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    reactions(db)
        .create_index(index(
            "conversation_seq",
            doc! { "conversation": 1, "seq": 1 },
        ))
        .await?;
    reactions(db)
        .create_index(index("at_ms", doc! { "at_ms": 1 }))
        .await?;
    Ok(())
}

impl Store {
    /// Adds (`active`) or removes `user`'s `emoji` on `message`: the change to announce, or
    /// `None` when it changes nothing (a second click, concurrent or not).
    pub async fn set_reaction(
        &self,
        message: &MessageRecord,
        user: UserId,
        username: &str,
        emoji: &str,
        active: bool,
    ) -> mongodb::error::Result<Option<ReactionChange>> {
        let at_ms = ids::stamp();
        let record = ReactionRecord {
            id: format!("{}|{user}|{emoji}", message.seq),
            message_id: message.seq.clone(),
            conversation: message.conversation.clone(),
            seq: message.seq.clone(),
            user: user.to_string(),
            username: username.to_owned(),
            emoji: emoji.to_owned(),
            active,
            batch: ids::next(at_ms).to_hex(),
            at_ms,
        };
        // Only a document that says otherwise changes; adding one that does not exist
        // inserts it, and adding one that is there fails on its id instead.
        let filter = doc! { "_id": &record.id, "active": { "$ne": active } };
        let update =
            doc! { "$set": bson::to_document(&record).map_err(mongodb::error::Error::custom)? };
        let collection = reactions(&self.db);
        let change = collection.update_one(filter, update).upsert(active);
        if !changed(self.bounded("a reaction", change).await)? {
            return Ok(None);
        }
        Ok(Some(ReactionChange::from(record)))
    }

    /// The reaction change stored with `batch` at `at_ms`, if it is still the last one.
    pub async fn reaction_change(
        &self,
        batch: &str,
        at_ms: i64,
    ) -> mongodb::error::Result<Option<ReactionChange>> {
        let collection = self.majority::<ReactionRecord>("reactions");
        let find =
            collection.find_one(doc! { "at_ms": { "$eq": at_ms }, "batch": { "$eq": batch } });
        let found = self.bounded("reading a reaction", find).await?;
        Ok(found.map(ReactionChange::from))
    }

    /// The reactions to the messages of `conversation` from `oldest` to `newest` (`seq`s):
    /// one range of the index, for a page of history.
    pub async fn reactions_between(
        &self,
        conversation: &str,
        oldest: &str,
        newest: &str,
    ) -> mongodb::error::Result<Reactions> {
        let collection = reactions(&self.db);
        let read = async {
            let found = collection
                .find(doc! {
                    "conversation": { "$eq": conversation },
                    "seq": { "$gte": oldest, "$lte": newest },
                })
                .await?;
            found.try_collect::<Vec<_>>().await
        };
        let found = self.bounded("reading reactions", read).await?;
        let mut out = Reactions::new();
        for r in found.into_iter().filter(|r| r.active) {
            out.entry(r.message_id)
                .or_default()
                .entry(r.emoji)
                .or_default()
                .push(r.user);
        }
        Ok(out)
    }
}
