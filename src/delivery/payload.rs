//! The data of the events a batch announces, as clients see them (on the stream, and in the
//! answers of the API).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{RoomId, UserId};
use crate::live::{Audience, EventKind, NewEvent};
use crate::store::{MembershipChange, MessageRecord, ReactionChange, ReadChange};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserRef {
    #[schema(example = "665f1c2e9b1e8a0012345678")]
    pub id: String,
    #[schema(example = "alice")]
    pub username: String,
}

/// A stored message, or the tombstone of a deleted one. Also the data of the `message`,
/// `message_edited` and `message_deleted` events.
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
    /// Empty once the message is deleted.
    pub body: String,
    /// The users the body mentions (`@name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserRef>,
    /// Server time of storage, to the millisecond.
    pub created_at: DateTime<Utc>,
    /// When the body was last edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<DateTime<Utc>>,
    /// When the message was deleted, and by whom (its sender): a tombstone, with no body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<String>,
    /// In history: the reactions, by emoji (none when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionCount>,
    /// Id of the `message` event on the SSE stream, when known (in the answer to a post, or
    /// to a retry with its idempotency key within minutes), so the sender can recognise its
    /// own message there. Absent when the event could not be appended within the write bound
    /// (2 × MONGODB_TIMEOUT_MS: Redis refused it, or the instance's appender was too far
    /// behind): the message is stored, and its event follows later.
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
            mentions: m
                .mentions
                .iter()
                .map(|u| UserRef {
                    id: u.id.clone(),
                    username: u.username.clone(),
                })
                .collect(),
            created_at: m.created_at(),
            edited_at: m.edited_at_ms.and_then(DateTime::from_timestamp_millis),
            deleted_at: m.deleted_at_ms.and_then(DateTime::from_timestamp_millis),
            deleted_by: m.deleted_by.clone(),
            reactions: Vec::new(),
            event_id: None,
        }
    }
}

/// How many reacted to a message with one emoji, and whether the caller did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"emoji": "👍", "count": 2, "me": true}))]
pub struct ReactionCount {
    pub emoji: String,
    pub count: usize,
    pub me: bool,
}

impl ReactionCount {
    /// The counts of one message's reactions (who reacted, by emoji), in emoji order.
    pub fn of(by_emoji: &BTreeMap<String, Vec<String>>, me: &str) -> Vec<Self> {
        by_emoji
            .iter()
            .map(|(emoji, users)| Self {
                emoji: emoji.clone(),
                count: users.len(),
                me: users.iter().any(|u| u == me),
            })
            .collect()
    }
}

/// Data of the `reaction` event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReactionEvent {
    pub message_id: String,
    /// Set for a room message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[schema(example = "👍")]
    pub emoji: String,
    pub user_id: String,
    pub username: String,
    /// `true` when added, `false` when removed.
    pub added: bool,
    pub at: DateTime<Utc>,
}

/// Data of the `read` event: the caller's read marker moved (on another of their devices).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadEvent {
    /// Set for a room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    /// Set for a direct conversation: the other user's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with_id: Option<String>,
    /// The newest message read.
    pub last_read: String,
    pub at: DateTime<Utc>,
}

/// Data of the `typing` event: someone is typing; the indicator ends by itself after
/// `expires_in_ms` unless another signal comes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TypingEvent {
    /// Set for a room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    pub user_id: String,
    pub username: String,
    #[schema(example = 6000)]
    pub expires_in_ms: u64,
}

/// Who may see the events of `conversation` (`r:<room>` or `d:<user>:<user>`).
pub fn audience_of(conversation: &str) -> Audience {
    if let Some(room) = conversation.strip_prefix("r:") {
        return RoomId::parse(room).map_or(Audience::Users(Vec::new()), Audience::Room);
    }
    let users = conversation.strip_prefix("d:").unwrap_or_default();
    Audience::Users(
        users
            .split(':')
            .filter_map(|u| UserId::parse(u).ok())
            .collect(),
    )
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

/// The event of a stored message: `message`, or for a message changed since, its change
/// (`message_edited`, `message_deleted`); for the room's members, or the two users.
pub fn message_event(record: &MessageRecord, kind: EventKind) -> NewEvent {
    let audience = audience_of(&record.conversation);
    NewEvent::json(kind, audience, &MessageResponse::from(record))
}

/// The event of a message's last edit or deletion.
pub fn change_event(record: &MessageRecord) -> NewEvent {
    let kind = if record.deleted_at_ms.is_some() {
        EventKind::MessageDeleted
    } else {
        EventKind::MessageEdited
    };
    message_event(record, kind)
}

/// The `reaction` event of a stored reaction change.
pub fn reaction_event(change: &ReactionChange) -> NewEvent {
    let event = ReactionEvent {
        message_id: change.message_id.clone(),
        room_id: change.conversation.strip_prefix("r:").map(str::to_owned),
        emoji: change.emoji.clone(),
        user_id: change.user.clone(),
        username: change.username.clone(),
        added: change.active,
        at: DateTime::from_timestamp_millis(change.at_ms).unwrap_or_default(),
    };
    NewEvent::json(
        EventKind::Reaction,
        audience_of(&change.conversation),
        &event,
    )
}

/// The `read` event of a stored marker change, for the user's own streams.
pub fn read_event(change: &ReadChange) -> NewEvent {
    let me = change.user.to_string();
    let event = ReadEvent {
        room_id: change.conversation.strip_prefix("r:").map(str::to_owned),
        with_id: change
            .conversation
            .strip_prefix("d:")
            .and_then(|pair| pair.split(':').find(|u| *u != me).map(str::to_owned)),
        last_read: change.seq.clone(),
        at: DateTime::from_timestamp_millis(change.at_ms).unwrap_or_default(),
    };
    NewEvent::json(EventKind::Read, Audience::Users(vec![change.user]), &event)
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
    NewEvent::json(EventKind::RoomMember, Audience::Room(change.room), &event)
}
