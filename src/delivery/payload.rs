//! The data of the events a batch announces, as clients see them (on the stream, and in the
//! answers of the API).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{RoomId, UserId};
use crate::live::{Audience, EventKind, NewEvent};
use crate::store::{MembershipChange, MessageRecord};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserRef {
    #[schema(example = "665f1c2e9b1e8a0012345678")]
    pub id: String,
    #[schema(example = "alice")]
    pub username: String,
}

/// A stored message. Also the data of the `message` event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageResponse {
    /// Sorts like the messages' order in history.
    #[schema(example = "665f1d009b1e8a00123456ff")]
    pub id: String,
    pub sender: UserRef,
    /// Set for a room message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    /// Set for a direct message: the recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<UserRef>,
    pub body: String,
    /// Server time of storage, to the millisecond.
    pub created_at: DateTime<Utc>,
    /// Id of the `message` event on the SSE stream, when known (in the answer to a post, or
    /// to a retry with its idempotency key within minutes), so the sender can recognise its
    /// own message there. Absent when the event is still waiting for Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl From<&MessageRecord> for MessageResponse {
    fn from(m: &MessageRecord) -> Self {
        Self {
            id: m.message_id().to_string(),
            sender: UserRef {
                id: m.sender_id.clone(),
                username: m.sender_name.clone(),
            },
            room_id: m.room_id.clone(),
            to: m.recipient_id.as_ref().map(|id| UserRef {
                id: id.clone(),
                username: m.recipient_name.clone().unwrap_or_default(),
            }),
            body: m.body.clone(),
            created_at: m.created_at(),
            event_id: None,
        }
    }
}

/// Data of the `room_member` event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomMemberEvent {
    pub room_id: String,
    pub room_name: String,
    pub user_id: String,
    pub username: String,
    #[schema(example = "joined")]
    pub action: String,
    pub at: DateTime<Utc>,
}

/// The `message` event of a stored message: for the room's members, or the two users.
pub fn message_event(record: &MessageRecord) -> NewEvent {
    // A record is written from parsed ids only.
    let audience = match (&record.room_id, &record.recipient_id) {
        (Some(room), _) => RoomId::parse(room).map(Audience::Room).ok(),
        (None, Some(to)) => Some(Audience::Users(
            [&record.sender_id, to]
                .iter()
                .filter_map(|id| UserId::parse(id).ok())
                .collect(),
        )),
        (None, None) => None,
    };
    NewEvent {
        kind: EventKind::Message,
        audience: audience.unwrap_or(Audience::Users(Vec::new())),
        data: serde_json::to_string(&MessageResponse::from(record)).unwrap_or_default(),
    }
}

/// The `room_member` event of a stored membership change, for the room's members (and the
/// user, whose streams follow it).
pub fn membership_event(change: &MembershipChange) -> NewEvent {
    let event = RoomMemberEvent {
        room_id: change.room.to_string(),
        room_name: change.room_name.clone(),
        user_id: change.user.to_string(),
        username: change.username.clone(),
        action: if change.joined { "joined" } else { "left" }.to_owned(),
        at: DateTime::from_timestamp_millis(change.at_ms).unwrap_or_default(),
    };
    NewEvent {
        kind: EventKind::RoomMember,
        audience: Audience::Room(change.room),
        data: serde_json::to_string(&event).unwrap_or_default(),
    }
}
