use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Document, doc, oid::ObjectId};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Store, ids, is_duplicate_key};
use super::{changed, index, index_with};
use crate::domain::{RoomId, RoomName, UserId};

/// Rooms remembered by id per instance (see [`Store::find_room`]).
pub const KNOWN_ROOMS: u64 = 10_000;

/// The room everyone is in, created at start-up.
pub const DEFAULT_ROOM: &str = "general";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomRecord {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub name: String,
    pub name_lower: String,
    /// Hex id of the creator. References to other documents are stored as hex strings: the
    /// local MongoDB stand-in cannot match ObjectId values outside `_id`, and strings index
    /// and compare the same way on real MongoDB.
    pub created_by: Option<String>,
    pub created_at: bson::DateTime,
    /// The default room: every user is a member, nobody can leave it.
    #[serde(default)]
    pub is_default: bool,
}

impl RoomRecord {
    pub fn room_id(&self) -> RoomId {
        RoomId::from(self.id)
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.created_at.timestamp_millis()).unwrap_or_default()
    }
}

/// One user's membership of one room, and its last change: a join or leave is stored with the
/// batch id and time that announce it (see `finish`), so a change whose instance died before
/// announcing it is found and announced by the reconciler. Leaving keeps the document.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MembershipRecord {
    room_id: String,
    user_id: String,
    /// Absent in documents of older versions, which were all members.
    #[serde(
        default = "member_by_default",
        deserialize_with = "super::lenient_bool"
    )]
    member: bool,
    #[serde(default)]
    room_name: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    batch: String,
    #[serde(default)]
    at_ms: i64,
}

fn member_by_default() -> bool {
    true
}

/// A room a user is in, and when they joined it (their membership's last change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub room: RoomId,
    pub at_ms: i64,
}

/// A join or a leave, as stored: what its `room_member` event says.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    pub room: RoomId,
    pub room_name: String,
    pub user: UserId,
    pub username: String,
    pub joined: bool,
    /// The batch that announces it, and when it happened.
    pub batch: String,
    pub at_ms: i64,
}

impl MembershipChange {
    fn from_record(record: MembershipRecord) -> Option<Self> {
        Some(Self {
            room: RoomId::parse(&record.room_id).ok()?,
            user: UserId::parse(&record.user_id).ok()?,
            room_name: record.room_name,
            username: record.username,
            joined: record.member,
            batch: record.batch,
            at_ms: record.at_ms,
        })
    }
}

/// Members only: documents of those who left stay.
fn members() -> Document {
    doc! { "member": { "$ne": false } }
}

fn rooms(db: &Database) -> Collection<RoomRecord> {
    db.collection("rooms")
}

fn memberships(db: &Database) -> Collection<MembershipRecord> {
    db.collection("memberships")
}

pub(super) async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    let unique = || IndexOptions::builder().unique(true).build();
    rooms(db)
        .create_index(index_with(
            "name_lower_unique",
            doc! { "name_lower": 1 },
            unique(),
        ))
        .await?;
    let room_user = doc! { "room_id": 1, "user_id": 1 };
    memberships(db)
        .create_index(index_with("room_user_unique", room_user, unique()))
        .await?;
    memberships(db)
        .create_index(index("user_rooms", doc! { "user_id": 1, "room_id": 1 }))
        .await?;
    // The reconciler counts and reads changes by time.
    memberships(db)
        .create_index(index("at_ms", doc! { "at_ms": 1 }))
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum CreateRoomError {
    #[error("the room name is taken")]
    NameTaken,
    #[error(transparent)]
    Database(#[from] mongodb::error::Error),
}

impl Store {
    /// Finds or creates the default room; safe when several instances start at once (the
    /// unique name index lets exactly one insert win).
    pub async fn ensure_default_room(&self) -> mongodb::error::Result<RoomRecord> {
        let filter = doc! { "name_lower": { "$eq": DEFAULT_ROOM } };
        if let Some(room) = rooms(&self.db).find_one(filter.clone()).await? {
            return Ok(room);
        }
        let room = RoomRecord {
            id: ObjectId::new(),
            name: DEFAULT_ROOM.to_owned(),
            name_lower: DEFAULT_ROOM.to_owned(),
            created_by: None,
            created_at: bson::DateTime::now(),
            is_default: true,
        };
        match rooms(&self.db).insert_one(&room).await {
            Ok(_) => Ok(room),
            Err(err) if is_duplicate_key(&err) => rooms(&self.db)
                .find_one(filter)
                .await?
                .ok_or_else(|| mongodb::error::Error::custom("the default room vanished")),
            Err(err) => Err(err),
        }
    }

    /// Creates a room and makes its creator a member: the change to announce.
    pub async fn create_room(
        &self,
        name: &RoomName,
        creator: UserId,
        creator_name: &str,
    ) -> Result<(RoomRecord, Option<MembershipChange>), CreateRoomError> {
        let room = RoomRecord {
            id: ObjectId::new(),
            name: name.as_str().to_owned(),
            name_lower: name.normalized(),
            created_by: Some(creator.to_string()),
            created_at: bson::DateTime::now(),
            is_default: false,
        };
        let room = match self
            .bounded("creating a room", rooms(&self.db).insert_one(&room))
            .await
        {
            Ok(_) => room,
            Err(err) if is_duplicate_key(&err) => {
                // A retry of a creation whose membership was not written (its request failed
                // between the two writes) finishes it; any other is a name taken.
                let all = rooms(&self.db);
                let taken = all.find_one(doc! { "name_lower": { "$eq": &room.name_lower } });
                let mine = match self.bounded("reading a room", taken).await? {
                    Some(taken) if taken.created_by == room.created_by => taken,
                    _ => return Err(CreateRoomError::NameTaken),
                };
                let members = memberships(&self.db);
                let ever_member = members.find_one(doc! {
                    "room_id": { "$eq": mine.room_id().to_string() },
                    "user_id": { "$eq": creator.to_string() },
                });
                if self
                    .bounded("reading a membership", ever_member)
                    .await?
                    .is_some()
                {
                    return Err(CreateRoomError::NameTaken);
                }
                mine
            }
            Err(err) => return Err(err.into()),
        };
        let joined = self.set_member(&room, creator, creator_name, true).await?;
        Ok((room, joined))
    }

    /// All rooms, by name, at most `limit`.
    pub async fn list_rooms(&self, limit: i64) -> mongodb::error::Result<Vec<RoomRecord>> {
        let rooms = rooms(&self.db);
        let list = async {
            let found = rooms
                .find(doc! {})
                .sort(doc! { "name_lower": 1 })
                .limit(limit)
                .await?;
            found.try_collect().await
        };
        self.bounded("listing rooms", list).await
    }

    /// A room by id. Rooms are never renamed or deleted, so a found room is remembered and
    /// posting to it costs no read (at most [`KNOWN_ROOMS`] are kept).
    pub async fn find_room(&self, id: RoomId) -> mongodb::error::Result<Option<RoomRecord>> {
        if let Some(room) = self.known_rooms.get(&id) {
            return Ok(Some(room));
        }
        let rooms = rooms(&self.db);
        let find = rooms.find_one(doc! { "_id": id.object_id() });
        let found = self.bounded("reading a room", find).await?;
        if let Some(room) = &found {
            self.known_rooms.insert(id, room.clone());
        }
        Ok(found)
    }

    /// The rooms `user` explicitly joined (the default room is implicit and not included),
    /// with when they joined each, read with whatever other users' rooms are asked for at the
    /// same time (see [`RoomsOfUsers`]). The read is sent after this call begins, so it sees
    /// every join and leave acknowledged before.
    pub async fn rooms_of_user(&self, user: UserId) -> mongodb::error::Result<Vec<Joined>> {
        self.rooms_of_users.read(user).await
    }

    pub async fn is_member(&self, room: &RoomRecord, user: UserId) -> mongodb::error::Result<bool> {
        if room.is_default {
            return Ok(true);
        }
        let mut filter = doc! { "room_id": { "$eq": room.room_id().to_string() }, "user_id": { "$eq": user.to_string() } };
        filter.extend(members());
        let memberships = memberships(&self.db);
        let find = memberships.find_one(filter);
        Ok(self.bounded("reading a membership", find).await?.is_some())
    }

    /// The users among `users` who are members of `room`.
    pub async fn members_among(
        &self,
        room: &RoomRecord,
        users: &[UserId],
    ) -> mongodb::error::Result<Vec<UserId>> {
        if room.is_default || users.is_empty() {
            return Ok(users.to_vec());
        }
        let ids: Vec<String> = users.iter().map(UserId::to_string).collect();
        let mut filter =
            doc! { "room_id": { "$eq": room.room_id().to_string() }, "user_id": { "$in": ids } };
        filter.extend(members());
        let memberships = memberships(&self.db);
        let find = async { memberships.find(filter).await?.try_collect().await };
        let found: Vec<MembershipRecord> = self.bounded("reading memberships", find).await?;
        Ok(users
            .iter()
            .filter(|u| found.iter().any(|m| m.user_id == u.to_string()))
            .copied()
            .collect())
    }

    /// Makes `user` a member of `room` or not; the change to announce, or `None` when it
    /// changes nothing (a repeated join or leave). The change is stored with the batch that
    /// announces it (see [`MembershipRecord`]).
    pub async fn set_member(
        &self,
        room: &RoomRecord,
        user: UserId,
        username: &str,
        member: bool,
    ) -> mongodb::error::Result<Option<MembershipChange>> {
        let at_ms = ids::stamp();
        let record = MembershipRecord {
            room_id: room.room_id().to_string(),
            user_id: user.to_string(),
            member,
            room_name: room.name.clone(),
            username: username.to_owned(),
            batch: ids::next(at_ms).to_hex(),
            at_ms,
        };
        // Only a document that says otherwise changes; joining one that does not exist
        // inserts it, and a join of a member fails on the unique index instead.
        let filter = doc! {
            "room_id": { "$eq": &record.room_id },
            "user_id": { "$eq": &record.user_id },
            "member": if member { doc! { "$ne": true } } else { doc! { "$ne": false } },
        };
        let update =
            doc! { "$set": bson::to_document(&record).map_err(mongodb::error::Error::custom)? };
        let collection = memberships(&self.db);
        let change = collection.update_one(filter, update).upsert(member);
        if !changed(self.bounded("a membership change", change).await)? {
            return Ok(None);
        }
        Ok(MembershipChange::from_record(record))
    }

    /// The membership change stored with `batch` at `at_ms`, if it is still the last one
    /// (a newer change of the same membership supersedes it, and announces the state).
    pub async fn membership_change(
        &self,
        batch: &str,
        at_ms: i64,
    ) -> mongodb::error::Result<Option<MembershipChange>> {
        let collection = self.majority::<MembershipRecord>("memberships");
        let find =
            collection.find_one(doc! { "at_ms": { "$eq": at_ms }, "batch": { "$eq": batch } });
        let found = self.bounded("reading a membership change", find).await?;
        Ok(found.and_then(MembershipChange::from_record))
    }
}

/// Grouped reads of "which rooms is this user in": the one MongoDB query of opening an event
/// stream, also used by `GET /rooms`. When many streams open at once (every client of a
/// restarted instance reconnects), one query per stream means one round trip and one
/// command's fixed cost each, in order, on the store. Here one task takes every read that
/// queued up while the previous query ran (up to [`RoomsOfUsers::MAX_USERS`] users) and
/// answers them all from one `find({user_id: {$in: [...]}})`. Idle, a group is one user and
/// costs what a plain `find` does. A failed or timed-out read fails the reads queued behind it
/// too, so that a stalled store costs each caller one bound, not one per group ahead of it.
#[derive(Clone)]
pub(super) struct RoomsOfUsers {
    requests: mpsc::Sender<RoomsRequest>,
}

type RoomsAnswer = mongodb::error::Result<Vec<Joined>>;

struct RoomsRequest {
    user: String,
    answer: oneshot::Sender<RoomsAnswer>,
}

impl RoomsOfUsers {
    const MAX_USERS: usize = 256;
    const QUEUE: usize = 4096;

    /// Starts the reading task; it ends when the handle is dropped.
    pub(super) fn spawn(db: Database, bound: Duration) -> Self {
        let (requests, queue) = mpsc::channel(Self::QUEUE);
        tokio::spawn(read_groups(db, bound, queue));
        Self { requests }
    }

    async fn read(&self, user: UserId) -> RoomsAnswer {
        let stopped = || mongodb::error::Error::custom("the membership reader has stopped");
        let (answer, answered) = oneshot::channel();
        self.requests
            .send(RoomsRequest {
                user: user.to_string(),
                answer,
            })
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

async fn read_groups(db: Database, bound: Duration, mut queue: mpsc::Receiver<RoomsRequest>) {
    let mut group: Vec<RoomsRequest> = Vec::with_capacity(RoomsOfUsers::MAX_USERS);
    while queue.recv_many(&mut group, RoomsOfUsers::MAX_USERS).await > 0 {
        let requests = std::mem::take(&mut group);
        let users: HashSet<&str> = requests.iter().map(|r| r.user.as_str()).collect();
        let read = async {
            let mut filter = doc! { "user_id": { "$in": users.into_iter().collect::<Vec<_>>() } };
            filter.extend(members());
            memberships(&db)
                .find(filter)
                .await?
                .try_collect::<Vec<MembershipRecord>>()
                .await
        };
        // A stalled store must not hold every stream opening of the instance forever.
        let found = tokio::time::timeout(bound, read)
            .await
            .unwrap_or_else(|_| Err(super::timed_out("the membership read")));
        match found {
            Ok(records) => {
                let mut rooms: HashMap<&str, Vec<Joined>> = HashMap::new();
                for record in &records {
                    if let Ok(room) = RoomId::parse(&record.room_id) {
                        let joined = Joined {
                            room,
                            at_ms: record.at_ms,
                        };
                        rooms
                            .entry(record.user_id.as_str())
                            .or_default()
                            .push(joined);
                    }
                }
                for request in requests {
                    let of_user = rooms
                        .get(request.user.as_str())
                        .cloned()
                        .unwrap_or_default();
                    // A caller that stopped waiting needs no answer.
                    let _ = request.answer.send(Ok(of_user));
                }
            }
            Err(err) => {
                let queued = std::iter::from_fn(|| queue.try_recv().ok()).take(RoomsOfUsers::QUEUE);
                for request in requests.into_iter().chain(queued) {
                    let _ = request.answer.send(Err(err.clone()));
                }
            }
        }
    }
}
