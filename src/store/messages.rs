//! Messages: the stored record, the insert of a batch (the group commit, idempotency keys
//! claimed in it), the messages of one batch (to finish it), and history pages.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc, oid::ObjectId};
use mongodb::error::{Error, ErrorKind};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::finish::Effects;
use super::reads::Mention;
use super::users::UserRecord;
use super::{Store, bounded_until, ids};
use super::{index, index_with};
use crate::domain::{MessageBody, MessageId, RoomId, UserId, mentioned_names};

/// Names in a body looked up as mentions at most.
pub const MAX_MENTIONS: usize = 20;

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A message as stored. `conversation` groups the messages of one room (`r:<room id>`) or of
/// one pair of users (`d:<smaller id>:<larger id>`); history pages walk the
/// `(conversation, seq)` index backwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Made by the group commit in the order messages are stored (see `ids`).
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The history order and cursor: `_id` in hex (hex of equal length sorts like the id). A
    /// field of its own because nx-27017 can neither put `_id` in a compound index nor match
    /// ObjectId values outside `_id` (docs/local-servers.md).
    pub seq: String,
    /// The batch (group commit) that stored it, in hex: it is announced and counted with its
    /// batch, exactly once (see `finish`). Empty in loaded history and in messages of older
    /// versions, which have nothing to finish.
    #[serde(default)]
    pub batch: String,
    pub conversation: String,
    pub sender_id: String,
    pub sender_name: String,
    pub room_id: Option<String>,
    pub recipient_id: Option<String>,
    pub recipient_name: Option<String>,
    /// Removed when the message is deleted.
    #[serde(default)]
    pub body: String,
    /// The users the body mentions (`@name`), as of its last edit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<MentionRef>,
    pub created_at: bson::DateTime,
    /// `created_at` in milliseconds, shared by the whole batch: what statistics and the
    /// reconciler compare (nx-27017 compares dates as text).
    pub at_ms: i64,
    /// When the body was last edited, and when the message was deleted, in milliseconds
    /// (nx-27017 stores a date set by an update as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<String>,
    /// The last edit or deletion: a batch of its own, announced and finished like the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_batch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at_ms: Option<i64>,
}

/// An empty message at the epoch, for tools and tests to fill in.
impl Default for MessageRecord {
    fn default() -> Self {
        Self {
            id: ObjectId::new(),
            seq: String::new(),
            batch: String::new(),
            conversation: String::new(),
            sender_id: String::new(),
            sender_name: String::new(),
            room_id: None,
            recipient_id: None,
            recipient_name: None,
            body: String::new(),
            mentions: Vec::new(),
            created_at: bson::DateTime::from_millis(0),
            at_ms: 0,
            edited_at_ms: None,
            deleted_at_ms: None,
            deleted_by: None,
            change_batch: None,
            changed_at_ms: None,
        }
    }
}

/// A user a message mentions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MentionRef {
    pub id: String,
    pub username: String,
}

impl MessageRecord {
    pub fn message_id(&self) -> MessageId {
        MessageId::from(self.id)
    }

    /// Who the message was posted to (`None` for a document that names no audience).
    pub fn target(&self) -> Option<Target> {
        match (&self.room_id, &self.recipient_id) {
            (Some(room), _) => RoomId::parse(room).ok().map(Target::Room),
            (None, Some(to)) => Some(Target::Direct {
                user: UserId::parse(to).ok()?,
                username: self.recipient_name.clone().unwrap_or_default(),
            }),
            (None, None) => None,
        }
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.created_at.timestamp_millis()).unwrap_or_default()
    }

    /// What finishing a batch of new messages writes besides counts: their mentions.
    pub fn effects_of_new(batch: &[MessageRecord]) -> Effects {
        Effects {
            mentions: batch
                .iter()
                .flat_map(MessageRecord::mention_documents)
                .collect(),
            ..Effects::default()
        }
    }

    /// What finishing an edit or a deletion writes: the message's mentions, replaced.
    pub fn effects_of_change(&self) -> Effects {
        Effects {
            forget_mentions_of: vec![self.seq.clone()],
            mentions: self.mention_documents(),
        }
    }

    fn mention_documents(&self) -> Vec<Mention> {
        self.mentions
            .iter()
            .map(|m| Mention {
                user: m.id.clone(),
                message: self.seq.clone(),
                conversation: self.conversation.clone(),
                seq: self.seq.clone(),
            })
            .collect()
    }

    fn same_post(&self, other: &MessageRecord) -> bool {
        self.conversation == other.conversation
            && self.sender_id == other.sender_id
            && self.body == other.body
    }
}

/// Where a message goes.
#[derive(Debug, Clone)]
pub enum Target {
    Room(RoomId),
    Direct { user: UserId, username: String },
}

pub fn room_conversation(room: RoomId) -> String {
    format!("r:{room}")
}

pub fn direct_conversation(a: UserId, b: UserId) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("d:{lo}:{hi}")
}

pub struct NewMessage {
    pub sender: UserId,
    pub sender_name: String,
    pub target: Target,
    pub body: MessageBody,
    /// Client-chosen key: the same key from the same sender within a day gives back the
    /// message stored the first time.
    pub idempotency_key: Option<String>,
    /// The existing users the body mentions.
    pub mentions: Vec<MentionRef>,
}

impl NewMessage {
    fn into_record(self, id: ObjectId, batch: &str, at_ms: i64) -> MessageRecord {
        let (conversation, room_id, recipient_id, recipient_name) = match self.target {
            Target::Room(room) => (room_conversation(room), Some(room.to_string()), None, None),
            Target::Direct { user, username } => (
                direct_conversation(self.sender, user),
                None,
                Some(user.to_string()),
                Some(username),
            ),
        };
        MessageRecord {
            id,
            seq: id.to_hex(),
            batch: batch.to_owned(),
            conversation,
            sender_id: self.sender.to_string(),
            sender_name: self.sender_name,
            room_id,
            recipient_id,
            recipient_name,
            body: self.body.into_inner(),
            mentions: self.mentions,
            created_at: bson::DateTime::from_millis(at_ms),
            at_ms,
            edited_at_ms: None,
            deleted_at_ms: None,
            deleted_by: None,
            change_batch: None,
            changed_at_ms: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct IdempotencyRecord {
    /// `<sender id>:<key>`
    #[serde(rename = "_id")]
    id: String,
    message_id: ObjectId,
    created_at: bson::DateTime,
}

/// What became of one post of a batch.
#[derive(Debug)]
pub enum Written {
    /// Stored now, with the batch.
    Stored(MessageRecord),
    /// Its idempotency key was used before for this very message: here it is, as stored (in
    /// the batch that stored it).
    Replayed(MessageRecord),
    /// Its idempotency key was used before for a different message.
    KeyReused,
    /// Not stored by this batch. When the error leaves the outcome unknown (a timeout, a lost
    /// connection), it may be stored all the same: then its batch is finished by the
    /// reconciler, or by a retry with its key.
    Failed(Error),
}

/// A batch of posts, as inserted.
pub struct InsertedBatch {
    /// The batch id, in hex.
    pub id: String,
    pub at_ms: i64,
    /// One outcome per post, in order.
    pub written: Vec<Written>,
}

fn messages(db: &Database) -> Collection<MessageRecord> {
    db.collection("messages")
}

fn idempotency_keys(db: &Database) -> Collection<IdempotencyRecord> {
    db.collection("idempotency_keys")
}

pub(super) async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    messages(db)
        .create_index(index(
            "conversation_history",
            doc! { "conversation": 1, "seq": -1 },
        ))
        .await?;
    // Statistics count the edges of a window from the messages themselves; the reconciler
    // counts and reads them by time to find batches nobody finished.
    messages(db)
        .create_index(index("at_ms", doc! { "at_ms": 1 }))
        .await?;
    // The reconciler reads edits and deletions by when they happened.
    messages(db)
        .create_index(index("changed_at_ms", doc! { "changed_at_ms": 1 }))
        .await?;
    let a_day = IndexOptions::builder()
        .expire_after(IDEMPOTENCY_WINDOW)
        .build();
    idempotency_keys(db)
        .create_index(index_with(
            "expire_after_a_day",
            doc! { "created_at": 1 },
            a_day,
        ))
        .await?;
    Ok(())
}

const DUPLICATE_KEY: i32 = 11000;

/// Which posts of an unordered `insert_many` of `n` failed, with the server's code for each
/// when it rejected that post alone (`None` when the whole command failed).
fn failed_posts(err: &Error, n: usize) -> HashMap<usize, (Option<i32>, Error)> {
    match err.kind.as_ref() {
        ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => failure
            .write_errors
            .iter()
            .flatten()
            .map(|e| (e.index, (Some(e.code), err.clone())))
            .collect(),
        _ => (0..n).map(|i| (i, (None, err.clone()))).collect(),
    }
}

impl Store {
    /// Stores a batch of posts with one `insert` (majority, journaled, bounded), in order: the
    /// batch and each message get ids that sort in that order, and the batch's time. A post
    /// with an idempotency key claims the key first (one more `insert` for the batch's keys);
    /// a key claimed before gives its message id to the post, so that a retry writes the
    /// message the first attempt wrote, whether or not that attempt got as far as writing it.
    pub async fn insert_batch(&self, posts: Vec<NewMessage>) -> InsertedBatch {
        // One bound for every step, from the batch's time: a batch is stored within the write
        // bound of its time or not at all (bar a store that applies a write after the client
        // gave up), which is what the reconciler's lag counts on.
        let deadline = tokio::time::Instant::now() + self.write_bound();
        let at_ms = ids::stamp();
        let batch = ids::next(at_ms).to_hex();
        let keys: Vec<Option<String>> = posts
            .iter()
            .map(|p| {
                p.idempotency_key
                    .as_ref()
                    .map(|k| format!("{}:{k}", p.sender))
            })
            .collect();
        let mut records: Vec<MessageRecord> = posts
            .into_iter()
            .map(|post| post.into_record(ids::next(at_ms), &batch, at_ms))
            .collect();
        let mut written: Vec<Option<Written>> = records.iter().map(|_| None).collect();
        if keys.iter().any(Option::is_some) {
            self.claim_keys(deadline, &keys, &mut records, &mut written)
                .await;
        }
        let pending: Vec<usize> = (0..records.len())
            .filter(|&i| written[i].is_none())
            .collect();
        if !pending.is_empty() {
            let collection = messages(&self.db);
            let insert = collection
                .insert_many(pending.iter().map(|&i| &records[i]))
                .ordered(false);
            let failed = match bounded_until(deadline, "the message insert", insert).await {
                Ok(_) => HashMap::new(),
                Err(err) => failed_posts(&err, pending.len()),
            };
            let mut replays = Vec::new();
            for (n, &i) in pending.iter().enumerate() {
                written[i] = Some(match failed.get(&n) {
                    None => Written::Stored(records[i].clone()),
                    Some((Some(DUPLICATE_KEY), _)) if keys[i].is_some() => {
                        replays.push(i);
                        continue;
                    }
                    Some((_, err)) => Written::Failed(err.clone()),
                });
            }
            self.replays(&replays, &records, &mut written).await;
        }
        InsertedBatch {
            id: batch,
            at_ms,
            written: written
                .into_iter()
                .map(|w| w.unwrap_or_else(|| Written::Failed(Error::custom("not written"))))
                .collect(),
        }
    }

    /// Claims the idempotency keys of a batch; a post whose key was claimed before takes the
    /// claimed message id. A post whose claim fails is failed.
    async fn claim_keys(
        &self,
        deadline: tokio::time::Instant,
        keys: &[Option<String>],
        records: &mut [MessageRecord],
        written: &mut [Option<Written>],
    ) {
        let keyed: Vec<usize> = (0..keys.len()).filter(|&i| keys[i].is_some()).collect();
        let claims: Vec<IdempotencyRecord> = keyed
            .iter()
            .map(|&i| IdempotencyRecord {
                id: keys[i].clone().unwrap_or_default(),
                message_id: records[i].id,
                created_at: records[i].created_at,
            })
            .collect();
        let collection = idempotency_keys(&self.db);
        let insert = collection.insert_many(&claims).ordered(false);
        let failed = match bounded_until(deadline, "claiming keys", insert).await {
            Ok(_) => return,
            Err(err) => failed_posts(&err, keyed.len()),
        };
        let taken: Vec<&str> = failed
            .iter()
            .filter(|(_, (code, _))| *code == Some(DUPLICATE_KEY))
            .map(|(n, _)| claims[*n].id.as_str())
            .collect();
        let read = async {
            let found = collection.find(doc! { "_id": { "$in": &taken } }).await?;
            found.try_collect::<Vec<_>>().await
        };
        let existing: HashMap<String, IdempotencyRecord> =
            match bounded_until(deadline, "reading claimed keys", read).await {
                Ok(found) => found.into_iter().map(|c| (c.id.clone(), c)).collect(),
                Err(err) => {
                    for &n in failed.keys() {
                        written[keyed[n]] = Some(Written::Failed(err.clone()));
                    }
                    return;
                }
            };
        for (n, (code, err)) in failed {
            let i = keyed[n];
            let taken = code == Some(DUPLICATE_KEY);
            match existing.get(&claims[n].id) {
                Some(claim) if taken && !expired(claim) => {
                    records[i].id = claim.message_id;
                    records[i].seq = claim.message_id.to_hex();
                }
                // Older than the window but not yet swept by the TTL monitor: reuse the key.
                Some(_) if taken => {
                    let reuse = collection.replace_one(doc! { "_id": &claims[n].id }, &claims[n]);
                    if let Err(err) = bounded_until(deadline, "reusing a key", reuse).await {
                        written[i] = Some(Written::Failed(err));
                    }
                }
                // Claimed, and gone by now (swept as expired): a retry claims it anew.
                None if taken => {
                    written[i] = Some(Written::Failed(super::unavailable("a claimed key expired")));
                }
                _ => written[i] = Some(Written::Failed(err)),
            }
        }
    }

    /// Posts whose message id was stored before (a retry with its key): the message as stored
    /// if it is the same post, a reused key otherwise.
    async fn replays(
        &self,
        replays: &[usize],
        records: &[MessageRecord],
        written: &mut [Option<Written>],
    ) {
        if replays.is_empty() {
            return;
        }
        let ids: Vec<ObjectId> = replays.iter().map(|&i| records[i].id).collect();
        let collection = messages(&self.db);
        let read = async {
            let found = collection.find(doc! { "_id": { "$in": ids } }).await?;
            found.try_collect::<Vec<_>>().await
        };
        let found = self.bounded("reading stored messages", read).await;
        for &i in replays {
            written[i] = Some(match &found {
                Err(err) => Written::Failed(err.clone()),
                Ok(stored) => match stored.iter().find(|m| m.id == records[i].id) {
                    Some(original) if original.same_post(&records[i]) => {
                        Written::Replayed(original.clone())
                    }
                    Some(_) => Written::KeyReused,
                    None => Written::Failed(super::unavailable("an idempotent message vanished")),
                },
            });
        }
    }

    /// The messages of one batch, in the order their events are appended (by id). Majority:
    /// a batch is never finished with a write a failover could roll back.
    pub async fn batch_messages(
        &self,
        batch: &str,
        at_ms: i64,
    ) -> mongodb::error::Result<Vec<MessageRecord>> {
        let collection = self.majority::<MessageRecord>("messages");
        let read = async {
            let found = collection
                .find(doc! { "at_ms": { "$eq": at_ms }, "batch": { "$eq": batch } })
                .sort(doc! { "_id": 1 })
                .await?;
            found.try_collect().await
        };
        self.bounded("reading a batch", read).await
    }

    /// The mentions in `body` that notify someone: existing users, other than the sender, who
    /// read the conversation (members of the room; the other user of a direct conversation).
    /// The first [`MAX_MENTIONS`] names only.
    pub async fn mentions(
        &self,
        body: &MessageBody,
        sender: UserId,
        target: &Target,
    ) -> mongodb::error::Result<Vec<MentionRef>> {
        let mut names = mentioned_names(body.as_str());
        names.truncate(MAX_MENTIONS);
        let mut users = self.find_users_by_names(&names).await?;
        users.retain(|u| u.user_id() != sender);
        let readers: Vec<UserId> = match target {
            Target::Direct { user, .. } => vec![*user],
            Target::Room(room) => {
                let ids: Vec<UserId> = users.iter().map(UserRecord::user_id).collect();
                match self.find_room(*room).await? {
                    Some(room) => self.members_among(&room, &ids).await?,
                    None => Vec::new(),
                }
            }
        };
        users.retain(|u| readers.contains(&u.user_id()));
        // In the order the body names them.
        users.sort_by_key(|u| names.iter().position(|n| *n == u.username_lower));
        Ok(users
            .into_iter()
            .map(|u| MentionRef {
                id: u.id.to_hex(),
                username: u.username,
            })
            .collect())
    }

    /// A message by id.
    pub async fn find_message(
        &self,
        id: MessageId,
    ) -> mongodb::error::Result<Option<MessageRecord>> {
        let collection = messages(&self.db);
        let find = collection.find_one(doc! { "_id": id.object_id() });
        self.bounded("reading a message", find).await
    }

    /// Replaces a message's body (and so its mentions); the message as edited, a change to
    /// announce, or `None` if it is deleted.
    pub async fn edit_message(
        &self,
        id: MessageId,
        body: MessageBody,
        mentions: Vec<MentionRef>,
    ) -> mongodb::error::Result<Option<MessageRecord>> {
        let at_ms = ids::stamp();
        let mentions = bson::to_bson(&mentions).map_err(mongodb::error::Error::custom)?;
        self.change_message(
            id,
            doc! { "$set": {
                "body": body.into_inner(), "mentions": mentions,
                "edited_at_ms": at_ms,
                "change_batch": ids::next(at_ms).to_hex(), "changed_at_ms": at_ms,
            } },
        )
        .await
    }

    /// Deletes a message: a tombstone stays, the body (and mentions) go. The tombstone, a
    /// change to announce, or `None` if it was deleted already.
    pub async fn delete_message(
        &self,
        id: MessageId,
        by: UserId,
    ) -> mongodb::error::Result<Option<MessageRecord>> {
        let at_ms = ids::stamp();
        self.change_message(
            id,
            doc! {
                "$set": {
                    "mentions": [],
                    "deleted_at_ms": at_ms, "deleted_by": by.to_string(),
                    "change_batch": ids::next(at_ms).to_hex(), "changed_at_ms": at_ms,
                },
                "$unset": { "body": "" },
            },
        )
        .await
    }

    async fn change_message(
        &self,
        id: MessageId,
        update: bson::Document,
    ) -> mongodb::error::Result<Option<MessageRecord>> {
        let collection = messages(&self.db);
        let change = collection
            .find_one_and_update(
                doc! { "_id": id.object_id(), "deleted_at_ms": { "$exists": false } },
                update,
            )
            .return_document(mongodb::options::ReturnDocument::After);
        self.bounded("changing a message", change).await
    }

    /// The message whose last change is the batch `batch` at `at_ms`, if it still is.
    pub async fn message_change(
        &self,
        batch: &str,
        at_ms: i64,
    ) -> mongodb::error::Result<Option<MessageRecord>> {
        let collection = self.majority::<MessageRecord>("messages");
        let find = collection
            .find_one(doc! { "changed_at_ms": { "$eq": at_ms }, "change_batch": { "$eq": batch } });
        self.bounded("reading a message change", find).await
    }

    /// The message `sender` stored as `body` in `room` with idempotency key `key` within the
    /// window, if any: a retry of that post is answered with it even if the sender has left
    /// the room since. Read only: nothing is claimed or stored.
    pub async fn posted_with_key(
        &self,
        sender: UserId,
        key: &str,
        room: RoomId,
        body: &MessageBody,
    ) -> mongodb::error::Result<Option<MessageRecord>> {
        let keys = idempotency_keys(&self.db);
        let find = keys.find_one(doc! { "_id": format!("{sender}:{key}") });
        let claim = self.bounded("reading an idempotency key", find).await?;
        let Some(claim) = claim.filter(|claim| !expired(claim)) else {
            return Ok(None);
        };
        let messages = messages(&self.db);
        let find = messages.find_one(doc! { "_id": claim.message_id });
        let stored = self.bounded("reading a message", find).await?;
        Ok(stored.filter(|message| {
            message.sender_id == sender.to_string()
                && message.conversation == room_conversation(room)
                && message.body == body.as_str()
        }))
    }

    /// A page of a conversation, newest first, strictly older than `before` when given.
    pub async fn history(
        &self,
        conversation: &str,
        before: Option<MessageId>,
        limit: i64,
    ) -> mongodb::error::Result<Vec<MessageRecord>> {
        let filter = match before {
            Some(before) => {
                doc! { "conversation": { "$eq": conversation }, "seq": { "$lt": before.to_string() } }
            }
            None => doc! { "conversation": { "$eq": conversation } },
        };
        let messages = messages(&self.db);
        let page = async {
            let found = messages
                .find(filter)
                .sort(doc! { "seq": -1 })
                .limit(limit)
                .await?;
            found.try_collect().await
        };
        self.bounded("reading history", page).await
    }
}

fn expired(record: &IdempotencyRecord) -> bool {
    let age_ms = bson::DateTime::now().timestamp_millis() - record.created_at.timestamp_millis();
    age_ms > i64::try_from(IDEMPOTENCY_WINDOW.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_conversation_has_one_key_whoever_writes() {
        let (a, b) = (UserId::new(), UserId::new());
        assert_eq!(direct_conversation(a, b), direct_conversation(b, a));
        assert_ne!(direct_conversation(a, b), direct_conversation(a, a));
    }
}
