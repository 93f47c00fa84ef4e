use std::future::IntoFuture;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc, oid::ObjectId};
use mongodb::options::{CollectionOptions, IndexOptions, ReadConcern};
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::writer::{WriteFailure, outcome_unknown};
use super::{Store, is_duplicate_key};
use crate::domain::{MessageBody, MessageId, RoomId, UserId};

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A message as stored. `conversation` groups the messages of one room (`r:<room id>`) or of
/// one pair of users (`d:<smaller id>:<larger id>`); history pages walk the
/// `(conversation, seq)` index backwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRecord {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The history order and cursor: `_id` in hex (hex of equal length sorts like the id).
    /// A field of its own because the local MongoDB stand-in can neither put `_id` in a
    /// compound index nor match ObjectId values outside `_id`; ids of other documents are
    /// hex strings here for the same reason, which real MongoDB indexes and compares alike.
    pub seq: String,
    pub conversation: String,
    pub sender_id: String,
    pub sender_name: String,
    pub room_id: Option<String>,
    pub recipient_id: Option<String>,
    pub recipient_name: Option<String>,
    pub body: String,
    pub created_at: bson::DateTime,
    /// `created_at` in milliseconds since the epoch, what statistics compare: the local
    /// stand-in compares BSON dates as text (wrong below one second); integers compare
    /// exactly everywhere.
    pub at_ms: i64,
    /// Posts with an idempotency key only: a token of the attempt that stored the message.
    /// Attempts of one key all write the same id, so after an insert of unknown outcome the
    /// stored token tells whether this attempt stored it (and must count it) or a retry did
    /// (which counted it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
}

impl MessageRecord {
    pub fn message_id(&self) -> MessageId {
        MessageId::from(self.id)
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.created_at.timestamp_millis()).unwrap_or_default()
    }

    fn same_request(&self, other: &MessageRecord) -> bool {
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
}

#[derive(Debug, Serialize, Deserialize)]
struct IdempotencyRecord {
    /// `<sender id>:<key>`
    #[serde(rename = "_id")]
    id: String,
    message_id: ObjectId,
    created_at: bson::DateTime,
}

pub enum Inserted {
    /// Stored now.
    Created(MessageRecord),
    /// The idempotency key was used before for this very message: here it is.
    Replayed(MessageRecord),
}

#[derive(Debug, thiserror::Error)]
pub enum InsertMessageError {
    #[error("the idempotency key was used for a different message")]
    KeyReused,
    #[error(transparent)]
    Database(#[from] mongodb::error::Error),
    /// The insert failed in a way that may have stored the message all the same (a timeout, a
    /// lost connection, a write concern not met).
    #[error("{source}")]
    MaybeStored {
        record: Box<MessageRecord>,
        source: mongodb::error::Error,
    },
}

impl From<WriteFailure> for InsertMessageError {
    fn from(failure: WriteFailure) -> Self {
        match failure.maybe_stored {
            Some(record) => Self::MaybeStored {
                record: Box::new(record),
                source: failure.error,
            },
            None => Self::Database(failure.error),
        }
    }
}

fn messages(db: &Database) -> Collection<MessageRecord> {
    db.collection("messages")
}

fn idempotency_keys(db: &Database) -> Collection<IdempotencyRecord> {
    db.collection("idempotency_keys")
}

pub(super) async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    messages(db)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "conversation": 1, "seq": -1 })
                .options(
                    IndexOptions::builder()
                        .name("conversation_history".to_owned())
                        .build(),
                )
                .build(),
        )
        .await?;
    // Statistics count the edges of a window from the messages themselves.
    messages(db)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "at_ms": 1 })
                .options(IndexOptions::builder().name("at_ms".to_owned()).build())
                .build(),
        )
        .await?;
    idempotency_keys(db)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "created_at": 1 })
                .options(
                    IndexOptions::builder()
                        .name("expire_after_a_day".to_owned())
                        .expire_after(IDEMPOTENCY_WINDOW)
                        .build(),
                )
                .build(),
        )
        .await?;
    Ok(())
}

impl Store {
    /// Stores a message and counts it in the statistics (written behind, see `writer`),
    /// honouring its idempotency key. Without a key the message joins the next group commit.
    /// With one, the key is claimed first and points at the message id; a retry that finds
    /// the key claimed writes the message under that same id, so an attempt that died between
    /// the two writes is completed by its retry and concurrent retries converge on one message.
    /// An insert that fails with its outcome unknown gives the record back, uncounted
    /// ([`InsertMessageError::MaybeStored`]).
    pub async fn insert_message(&self, new: NewMessage) -> Result<Inserted, InsertMessageError> {
        let id = ObjectId::new();
        let now = bson::DateTime::now();
        let mut record = MessageRecord {
            id,
            seq: id.to_hex(),
            conversation: match &new.target {
                Target::Room(room) => room_conversation(*room),
                Target::Direct { user, .. } => direct_conversation(new.sender, *user),
            },
            sender_id: new.sender.to_string(),
            sender_name: new.sender_name,
            room_id: match &new.target {
                Target::Room(room) => Some(room.to_string()),
                Target::Direct { .. } => None,
            },
            recipient_id: match &new.target {
                Target::Direct { user, .. } => Some(user.to_string()),
                Target::Room(_) => None,
            },
            recipient_name: match new.target {
                Target::Direct { username, .. } => Some(username),
                Target::Room(_) => None,
            },
            body: new.body.into_inner(),
            created_at: now,
            at_ms: now.timestamp_millis(),
            attempt: None,
        };
        let Some(key) = new.idempotency_key else {
            // Group commit with concurrent posts; counted before this returns.
            return Ok(Inserted::Created(self.writer.write(record).await?));
        };

        record.attempt = Some(ObjectId::new().to_hex());
        let key_id = format!("{}:{key}", new.sender);
        let claim = IdempotencyRecord {
            id: key_id.clone(),
            message_id: record.id,
            created_at: record.created_at,
        };
        // Every step is bounded like the group commit's insert: without a primary a post
        // answers 503 in time instead of hanging.
        let keys = idempotency_keys(&self.db);
        match self
            .bounded(
                "claiming an idempotency key",
                keys.insert_one(&claim).into_future(),
            )
            .await
        {
            Ok(_) => {}
            Err(err) if is_duplicate_key(&err) => {
                let existing = self
                    .bounded(
                        "reading an idempotency key",
                        keys.find_one(doc! { "_id": &key_id }).into_future(),
                    )
                    .await?;
                match existing {
                    Some(existing) if !expired(&existing) => {
                        record.id = existing.message_id;
                        record.seq = existing.message_id.to_hex();
                    }
                    // Older than the window but not yet swept by the TTL monitor: reuse the key.
                    _ => {
                        let reuse = keys
                            .replace_one(doc! { "_id": &key_id }, &claim)
                            .upsert(true);
                        self.bounded("reusing an idempotency key", reuse.into_future())
                            .await?;
                    }
                }
            }
            Err(err) => return Err(err.into()),
        }
        let messages = messages(&self.db);
        let insert = messages.insert_one(&record).into_future();
        match self.bounded("the message insert", insert).await {
            Ok(_) => {
                self.writer.count(&record);
                Ok(Inserted::Created(record))
            }
            Err(err) if is_duplicate_key(&err) => {
                let find = messages.find_one(doc! { "_id": record.id }).into_future();
                let original = self
                    .bounded("reading a message", find)
                    .await?
                    .ok_or_else(|| mongodb::error::Error::custom("idempotent message vanished"))?;
                if original.same_request(&record) {
                    Ok(Inserted::Replayed(original))
                } else {
                    Err(InsertMessageError::KeyReused)
                }
            }
            Err(err) if outcome_unknown(&err) => Err(InsertMessageError::MaybeStored {
                record: Box::new(record),
                source: err,
            }),
            Err(err) => Err(err.into()),
        }
    }

    /// `operation`, given up as timed out (its outcome unknown) past the write bound.
    async fn bounded<T>(
        &self,
        what: &str,
        operation: impl std::future::Future<Output = mongodb::error::Result<T>>,
    ) -> mongodb::error::Result<T> {
        tokio::time::timeout(self.write_bound(), operation)
            .await
            .unwrap_or_else(|_| Err(super::timed_out(what)))
    }

    /// Whether `record`'s post is stored, and if so by which attempt (bounded like a write: a
    /// store that hangs is an error). `None` also when its id holds another post: its key was
    /// reused for a different message, whose own attempts answer for it.
    pub async fn message_stored(
        &self,
        record: &MessageRecord,
    ) -> mongodb::error::Result<Option<StoredBy>> {
        // Majority: a write found on a primary only could still be rolled back.
        let messages = self.db.collection_with_options::<MessageRecord>(
            "messages",
            CollectionOptions::builder()
                .read_concern(ReadConcern::majority())
                .build(),
        );
        let find = messages.find_one(doc! { "_id": record.id }).into_future();
        let found = tokio::time::timeout(self.write_bound(), find)
            .await
            .unwrap_or_else(|_| Err(super::timed_out("looking a message up")))?;
        Ok(match found {
            Some(stored) if stored.attempt == record.attempt => Some(StoredBy::ThisAttempt),
            Some(stored) if stored.same_request(record) => {
                Some(StoredBy::AnotherAttempt(Box::new(stored)))
            }
            _ => None,
        })
    }

    /// Counts a message in the statistics that its own attempt was found to have stored after
    /// the insert failed with its outcome unknown (and so was not counted then).
    pub fn count_found(&self, record: &MessageRecord) {
        self.writer.count(record);
    }

    /// The message `sender` stored as `body` in `room` with idempotency key `key` within the
    /// window, if any: a retry of that post is answered (and announced) with it even if the
    /// sender has left the room since. Read only: nothing is claimed or stored.
    pub async fn posted_with_key(
        &self,
        sender: UserId,
        key: &str,
        room: RoomId,
        body: &MessageBody,
    ) -> mongodb::error::Result<Option<MessageRecord>> {
        let claim = idempotency_keys(&self.db)
            .find_one(doc! { "_id": format!("{sender}:{key}") })
            .await?;
        let Some(claim) = claim.filter(|claim| !expired(claim)) else {
            return Ok(None);
        };
        let stored = messages(&self.db)
            .find_one(doc! { "_id": claim.message_id })
            .await?;
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
        messages(&self.db)
            .find(filter)
            .sort(doc! { "seq": -1 })
            .limit(limit)
            .await?
            .try_collect()
            .await
    }
}

/// Which attempt stored a post found after its insert had an unknown outcome.
#[derive(Debug)]
pub enum StoredBy {
    /// The attempt looked for: nothing has counted it, the look does.
    ThisAttempt,
    /// Another attempt of the same post (same idempotency key), here as stored: that attempt
    /// counts it, or its own look does.
    AnotherAttempt(Box<MessageRecord>),
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
