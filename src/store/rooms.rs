use std::collections::{HashMap, HashSet};
use std::sync::PoisonError;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc, oid::ObjectId};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Store, is_duplicate_key};
use crate::domain::{RoomId, RoomName, UserId};

/// Rooms remembered by id per instance (see [`Store::find_room`]).
pub const KNOWN_ROOMS: usize = 10_000;

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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MembershipRecord {
    #[serde(rename = "_id")]
    id: ObjectId,
    room_id: String,
    user_id: String,
    joined_at: bson::DateTime,
}

fn rooms(db: &Database) -> Collection<RoomRecord> {
    db.collection("rooms")
}

fn memberships(db: &Database) -> Collection<MembershipRecord> {
    db.collection("memberships")
}

pub(super) async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    let unique = |name: &str| {
        IndexOptions::builder()
            .unique(true)
            .name(name.to_owned())
            .build()
    };
    rooms(db)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "name_lower": 1 })
                .options(unique("name_lower_unique"))
                .build(),
        )
        .await?;
    memberships(db)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "room_id": 1, "user_id": 1 })
                .options(unique("room_user_unique"))
                .build(),
        )
        .await?;
    memberships(db)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "user_id": 1, "room_id": 1 })
                .options(
                    IndexOptions::builder()
                        .name("user_rooms".to_owned())
                        .build(),
                )
                .build(),
        )
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

    /// Creates a room and makes its creator a member.
    pub async fn create_room(
        &self,
        name: &RoomName,
        creator: UserId,
    ) -> Result<RoomRecord, CreateRoomError> {
        let room = RoomRecord {
            id: ObjectId::new(),
            name: name.as_str().to_owned(),
            name_lower: name.normalized(),
            created_by: Some(creator.to_string()),
            created_at: bson::DateTime::now(),
            is_default: false,
        };
        match rooms(&self.db).insert_one(&room).await {
            Ok(_) => {}
            Err(err) if is_duplicate_key(&err) => return Err(CreateRoomError::NameTaken),
            Err(err) => return Err(err.into()),
        }
        self.join_room(room.room_id(), creator).await?;
        Ok(room)
    }

    /// All rooms, by name, at most `limit`.
    pub async fn list_rooms(&self, limit: i64) -> mongodb::error::Result<Vec<RoomRecord>> {
        rooms(&self.db)
            .find(doc! {})
            .sort(doc! { "name_lower": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    /// A room by id. Rooms are never renamed or deleted, so a found room is remembered and
    /// posting to it costs no read (at most [`KNOWN_ROOMS`] are kept; then memory starts over).
    pub async fn find_room(&self, id: RoomId) -> mongodb::error::Result<Option<RoomRecord>> {
        if let Some(room) = self
            .known_rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return Ok(Some(room.clone()));
        }
        let found = rooms(&self.db)
            .find_one(doc! { "_id": id.object_id() })
            .await?;
        if let Some(room) = &found {
            let mut known = self
                .known_rooms
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if known.len() >= KNOWN_ROOMS {
                known.clear();
            }
            known.insert(id, room.clone());
        }
        Ok(found)
    }

    /// The rooms `user` explicitly joined (the default room is implicit and not included),
    /// read with whatever other users' rooms are asked for at the same time (see
    /// [`RoomsOfUsers`]). The read is sent after this call begins, so it sees every join and
    /// leave acknowledged before.
    pub async fn rooms_of_user(&self, user: UserId) -> mongodb::error::Result<Vec<RoomId>> {
        self.rooms_of_users.read(user).await
    }

    pub async fn is_member(&self, room: &RoomRecord, user: UserId) -> mongodb::error::Result<bool> {
        if room.is_default {
            return Ok(true);
        }
        let found = memberships(&self.db)
            .find_one(doc! { "room_id": { "$eq": room.room_id().to_string() }, "user_id": { "$eq": user.to_string() } })
            .await?;
        Ok(found.is_some())
    }

    /// Returns whether `user` was not a member before (a repeated join changes nothing).
    pub async fn join_room(&self, room: RoomId, user: UserId) -> mongodb::error::Result<bool> {
        let record = MembershipRecord {
            id: ObjectId::new(),
            room_id: room.to_string(),
            user_id: user.to_string(),
            joined_at: bson::DateTime::now(),
        };
        match memberships(&self.db).insert_one(record).await {
            Ok(_) => Ok(true),
            Err(err) if is_duplicate_key(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Returns whether `user` was a member.
    pub async fn leave_room(&self, room: RoomId, user: UserId) -> mongodb::error::Result<bool> {
        let result = memberships(&self.db)
            .delete_one(doc! { "room_id": { "$eq": room.to_string() }, "user_id": { "$eq": user.to_string() } })
            .await?;
        Ok(result.deleted_count > 0)
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

type RoomsAnswer = mongodb::error::Result<Vec<RoomId>>;

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
            memberships(&db)
                .find(doc! { "user_id": { "$in": users.into_iter().collect::<Vec<_>>() } })
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
                let mut rooms: HashMap<&str, Vec<RoomId>> = HashMap::new();
                for record in &records {
                    if let Ok(room) = RoomId::parse(&record.room_id) {
                        rooms.entry(record.user_id.as_str()).or_default().push(room);
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
