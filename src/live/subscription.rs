//! What one open stream may see. The stream applies membership changes in log order and
//! decides, for each event, whether its user may see it.
//!
//! Why this is exact: a stream subscribes to the hub *before* it reads the user's rooms from
//! MongoDB. Every membership change is written to MongoDB before its event is appended, so
//! the rooms read include every change whose event came before the subscription, and every
//! later change arrives as an event. Each change sets membership to a value (not a toggle), so
//! applying it on top of a state that may already include it is harmless.

use std::collections::HashSet;

use super::events::{Audience, EventKind, LogEvent};
use crate::domain::{RoomId, UserId};

pub struct Subscription {
    user: UserId,
    jti: String,
    rooms: HashSet<RoomId>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Send,
    Skip,
    /// This stream's token was revoked: close it.
    Close,
}

impl Subscription {
    /// `rooms` are the rooms the user belongs to, the default room included.
    pub fn new(user: UserId, jti: String, rooms: impl IntoIterator<Item = RoomId>) -> Self {
        Self {
            user,
            jti,
            rooms: rooms.into_iter().collect(),
        }
    }

    /// Takes membership back to what it was before `events` (in log order): undoes this
    /// user's joins and leaves among them, newest first. A stream resuming from the log starts
    /// from the rooms it was in at its last event, and replays the changes since in order.
    /// (Each change is in the log once, when it changed something: a repeated join is not.)
    pub fn rewind(&mut self, events: &[LogEvent]) {
        for change in events
            .iter()
            .rev()
            .filter_map(|event| event.member_change.as_ref())
        {
            if change.user == self.user {
                self.set_member(change.room, !change.joined);
            }
        }
    }

    fn set_member(&mut self, room: RoomId, member: bool) {
        if member {
            self.rooms.insert(room);
        } else {
            self.rooms.remove(&room);
        }
    }

    pub fn admit(&mut self, event: &LogEvent) -> Admission {
        if let Some(change) = &event.member_change
            && change.user == self.user
        {
            self.set_member(change.room, change.joined);
            return Admission::Send;
        }
        if event.kind == EventKind::SessionRevoked {
            return if event.revoked_jti.as_deref() == Some(self.jti.as_str()) {
                Admission::Close
            } else {
                Admission::Skip
            };
        }
        let visible = match &event.audience {
            Audience::Everyone => true,
            Audience::Room(room) => self.rooms.contains(room),
            Audience::Users(users) => users.contains(&self.user),
        };
        if visible {
            Admission::Send
        } else {
            Admission::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::events::{EventId, MemberChange};
    use actix_web::web::Bytes;

    fn event(kind: EventKind, audience: Audience, member_change: Option<MemberChange>) -> LogEvent {
        LogEvent {
            id: EventId::parse("ab-1-0").unwrap(),
            kind,
            audience,
            member_change,
            revoked_jti: None,
            frame: Bytes::new(),
        }
    }

    #[test]
    fn room_messages_follow_membership_changes_in_order() {
        let (me, room) = (UserId::new(), RoomId::new());
        let mut sub = Subscription::new(me, "j".into(), []);
        let message = event(EventKind::Message, Audience::Room(room), None);
        assert_eq!(sub.admit(&message), Admission::Skip);
        let join = MemberChange {
            room,
            user: me,
            joined: true,
        };
        assert_eq!(
            sub.admit(&event(
                EventKind::RoomMember,
                Audience::Room(room),
                Some(join)
            )),
            Admission::Send
        );
        assert_eq!(sub.admit(&message), Admission::Send);
        let leave = MemberChange {
            room,
            user: me,
            joined: false,
        };
        assert_eq!(
            sub.admit(&event(
                EventKind::RoomMember,
                Audience::Room(room),
                Some(leave)
            )),
            Admission::Send
        );
        assert_eq!(sub.admit(&message), Admission::Skip);
    }

    #[test]
    fn a_resumed_stream_replays_with_the_rooms_it_had_at_its_last_event() {
        let (me, left, joined) = (UserId::new(), RoomId::new(), RoomId::new());
        let change = |room, joined| {
            event(
                EventKind::RoomMember,
                Audience::Room(room),
                Some(MemberChange {
                    room,
                    user: me,
                    joined,
                }),
            )
        };
        let in_room = |room| event(EventKind::Message, Audience::Room(room), None);
        // Missed: a message in `left`, then I leave it; a message in `joined`, then I join it.
        let missed = [
            in_room(left),
            change(left, false),
            in_room(joined),
            change(joined, true),
        ];
        // What MongoDB says now.
        let mut sub = Subscription::new(me, "j".into(), [joined]);
        sub.rewind(&missed);
        let admitted: Vec<Admission> = missed.iter().map(|e| sub.admit(e)).collect();
        assert_eq!(
            admitted,
            [
                Admission::Send,
                Admission::Send,
                Admission::Skip,
                Admission::Send
            ]
        );
        // And from then on, the rooms of now.
        assert_eq!(sub.admit(&in_room(joined)), Admission::Send);
        assert_eq!(sub.admit(&in_room(left)), Admission::Skip);
    }

    #[test]
    fn direct_messages_reach_only_their_two_users() {
        let (me, you, them) = (UserId::new(), UserId::new(), UserId::new());
        let mut sub = Subscription::new(me, "j".into(), []);
        assert_eq!(
            sub.admit(&event(
                EventKind::Message,
                Audience::Users(vec![you, me]),
                None
            )),
            Admission::Send
        );
        assert_eq!(
            sub.admit(&event(
                EventKind::Message,
                Audience::Users(vec![you, them]),
                None
            )),
            Admission::Skip
        );
    }

    #[test]
    fn only_the_revoked_token_closes_its_stream() {
        let me = UserId::new();
        let mut sub = Subscription::new(me, "mine".into(), []);
        let mut revoked = event(EventKind::SessionRevoked, Audience::Users(vec![me]), None);
        revoked.revoked_jti = Some("other".into());
        assert_eq!(sub.admit(&revoked), Admission::Skip);
        revoked.revoked_jti = Some("mine".into());
        assert_eq!(sub.admit(&revoked), Admission::Close);
    }
}
