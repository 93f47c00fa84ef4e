//! The event log: one Redis Stream that every instance appends to and tails.
//!
//! XADD assigns ids in append order, so an id is visible only once everything before it is:
//! a reader resuming "after X" can never skip an event that commits later with a smaller id.
//! Each entry also carries the log's *epoch*, a random tag kept in a separate key. When Redis
//! loses the log (restart without persistence, flush), the epoch key is lost with it and the
//! next append picks a new one, so a client resuming with an id from the old epoch is told to
//! resync instead of being silently moved past what it missed.

use std::cmp::Ordering;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use actix_web::web::Bytes;
use chrono::DateTime;
use rand::Rng;
use redis::Script;
use redis::streams::StreamId;
use serde_json::{Value, json};

use super::Live;
use crate::domain::{RoomId, UserId};

/// Lua shared by every script that appends to the log: `epoch_of` gives the log's epoch,
/// created when missing; `append` numbers the entry (`n`, one more than the entry before it,
/// so that a tailer can tell when entries were trimmed before it read them), then XADDs with
/// trimming, and returns `{epoch, entry id}`.
pub(crate) const APPEND_LUA: &str = r"
local function epoch_of(epoch_key, candidate)
    local epoch = redis.call('GET', epoch_key)
    if not epoch then
        redis.call('SET', epoch_key, candidate)
        epoch = candidate
    end
    return epoch
end
local function append(stream, epoch_key, count_key, candidate, maxlen, mode, kind, audience, data)
    local epoch = epoch_of(epoch_key, candidate)
    local n = redis.call('INCR', count_key)
    local id = redis.call('XADD', stream, 'MAXLEN', mode, maxlen, '*',
        'e', epoch, 't', kind, 'a', audience, 'd', data, 'n', n)
    return {epoch, id}
end
";

/// KEYS: the batch's marker, stream, epoch, count. ARGV: the marker's lifetime in seconds,
/// candidate epoch, maxlen, mode, then kind, audience and data of each event in order.
///
/// Appends the events of one batch, once: the marker (a list of the ids appended) is set in
/// the same atomic step (no command of the script can fail once it has appended). Any later
/// call for the batch (a retry after a lost reply, the reconciler, a retried post) appends
/// nothing and gets the ids of the first. Ids are `<epoch>-<ms>-<seq>`.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPEND_LUA}
        if redis.call('EXISTS', KEYS[1]) == 1 then
            return redis.call('LRANGE', KEYS[1], 0, -1)
        end
        local ids = {{}}
        for i = 5, #ARGV, 3 do
            local appended = append(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4], ARGV[i], ARGV[i + 1], ARGV[i + 2])
            ids[#ids + 1] = appended[1] .. '-' .. appended[2]
        end
        redis.call('RPUSH', KEYS[1], unpack(ids))
        redis.call('EXPIRE', KEYS[1], ARGV[1])
        return ids
        "
    ))
});

/// KEYS: epoch. ARGV: candidate. The current epoch, created when missing.
static EPOCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{APPEND_LUA}\nreturn epoch_of(KEYS[1], ARGV[1])")));

/// KEYS: stream. Returns `{id of the oldest entry or '', number of entries ever trimmed}`.
static LOG_HEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then return {'', 0} end
        local info = redis.call('XINFO', 'STREAM', KEYS[1])
        local first, added, length = '', 0, 0
        for i = 1, #info, 2 do
            if info[i] == 'first-entry' and info[i + 1] then first = info[i + 1][1] end
            if info[i] == 'entries-added' then added = info[i + 1] end
            if info[i] == 'length' then length = info[i + 1] end
        end
        return {first, added - length}
        ",
    )
});

/// The id of an event as clients see it: `<epoch>-<ms>-<seq>`, the Redis stream entry id
/// prefixed by the log's epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventId {
    pub epoch: String,
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    pub fn new(epoch: &str, stream_id: &str) -> Option<Self> {
        let (ms, seq) = stream_id.split_once('-')?;
        Some(Self {
            epoch: epoch.to_owned(),
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The start of an epoch: before any of its events.
    pub fn start_of(epoch: &str) -> Self {
        Self {
            epoch: epoch.to_owned(),
            ms: 0,
            seq: 0,
        }
    }

    /// Parses what a client sends back in `Last-Event-ID`.
    pub fn parse(raw: &str) -> Option<Self> {
        let (epoch, rest) = raw.split_once('-')?;
        if epoch.is_empty() || epoch.len() > 32 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Self::new(epoch, rest)
    }

    /// The greatest id before this one (not necessarily an entry's): resuming after it
    /// starts at this event.
    pub fn predecessor(&self) -> Self {
        let (ms, seq) = match self.seq.checked_sub(1) {
            Some(seq) => (self.ms, seq),
            None => (self.ms.saturating_sub(1), u64::MAX),
        };
        Self {
            epoch: self.epoch.clone(),
            ms,
            seq,
        }
    }

    pub fn stream_id(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }

    /// Order within one epoch; ids of different epochs are not comparable.
    pub fn cmp_in_epoch(&self, other: &EventId) -> Option<Ordering> {
        (self.epoch == other.epoch).then(|| (self.ms, self.seq).cmp(&(other.ms, other.seq)))
    }

    pub fn is_after(&self, other: &EventId) -> bool {
        self.cmp_in_epoch(other) == Some(Ordering::Greater)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.epoch, self.ms, self.seq)
    }
}

/// Who may see an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    Everyone,
    Room(RoomId),
    Users(Vec<UserId>),
}

impl Audience {
    pub fn encode(&self) -> String {
        match self {
            Audience::Everyone => "*".to_owned(),
            Audience::Room(room) => format!("r:{room}"),
            Audience::Users(users) => {
                let ids: Vec<String> = users.iter().map(ToString::to_string).collect();
                format!("u:{}", ids.join(","))
            }
        }
    }

    pub fn decode(raw: &str) -> Option<Self> {
        if raw == "*" {
            return Some(Audience::Everyone);
        }
        if let Some(room) = raw.strip_prefix("r:") {
            return RoomId::parse(room).ok().map(Audience::Room);
        }
        let users = raw.strip_prefix("u:")?;
        users
            .split(',')
            .map(|u| UserId::parse(u).ok())
            .collect::<Option<Vec<_>>>()
            .map(Audience::Users)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A new message (data: the message, as `POST /messages` returns it).
    Message,
    /// A user came online or went offline.
    Presence,
    /// A user joined or left a room.
    RoomMember,
    /// A token was revoked (internal: ends that token's streams, never sent to clients).
    SessionRevoked,
    /// A message's body was edited (data: the message as it is now).
    MessageEdited,
    /// A message was deleted (data: its tombstone).
    MessageDeleted,
    /// A reaction was added or removed.
    Reaction,
    /// The user's read marker moved (to their own other streams).
    Read,
    /// Someone is typing: live only, never replayed on a resume.
    Typing,
}

impl EventKind {
    const ALL: [(EventKind, &'static str); 9] = [
        (EventKind::Message, "message"),
        (EventKind::Presence, "presence"),
        (EventKind::RoomMember, "room_member"),
        (EventKind::SessionRevoked, "session_revoked"),
        (EventKind::MessageEdited, "message_edited"),
        (EventKind::MessageDeleted, "message_deleted"),
        (EventKind::Reaction, "reaction"),
        (EventKind::Read, "read"),
        (EventKind::Typing, "typing"),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(kind, _)| *kind == self)
            .map_or("message", |(_, name)| name)
    }

    fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, name)| *name == raw)
            .map(|(kind, _)| *kind)
    }
}

/// A change of room membership carried by a `room_member` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange {
    pub room: RoomId,
    pub user: UserId,
    pub joined: bool,
}

/// An event read from the log, with its SSE frame rendered once and shared by every stream
/// that receives it.
#[derive(Debug)]
pub struct LogEvent {
    pub id: EventId,
    pub kind: EventKind,
    pub audience: Audience,
    pub member_change: Option<MemberChange>,
    pub revoked_jti: Option<String>,
    pub frame: Bytes,
}

impl LogEvent {
    /// Builds an event from a stream entry; `None` for an entry this version cannot read
    /// (it is skipped, never fatal).
    pub fn from_entry(entry: &StreamId) -> Option<Self> {
        let epoch: String = entry.get("e")?;
        let id = EventId::new(&epoch, &entry.id)?;
        let kind = EventKind::parse(&entry.get::<String>("t")?)?;
        let audience = Audience::decode(&entry.get::<String>("a")?)?;
        let data: String = entry.get("d")?;
        let mut member_change = None;
        let mut revoked_jti = None;
        let payload = match kind {
            EventKind::Presence => render_presence(&data)?,
            EventKind::RoomMember => {
                let value: Value = serde_json::from_str(&data).ok()?;
                member_change = Some(MemberChange {
                    room: RoomId::parse(value["room_id"].as_str()?).ok()?,
                    user: UserId::parse(value["user_id"].as_str()?).ok()?,
                    joined: value["action"].as_str()? == "joined",
                });
                data
            }
            EventKind::SessionRevoked => {
                let value: Value = serde_json::from_str(&data).ok()?;
                revoked_jti = Some(value["jti"].as_str()?.to_owned());
                String::new()
            }
            _ => data,
        };
        let frame = sse_frame(Some(&id), kind.as_str(), &payload);
        Some(Self {
            id,
            kind,
            audience,
            member_change,
            revoked_jti,
            frame,
        })
    }
}

/// Presence entries are written by Lua with a millisecond timestamp; clients get RFC 3339.
fn render_presence(data: &str) -> Option<String> {
    let value: Value = serde_json::from_str(data).ok()?;
    #[allow(clippy::cast_possible_truncation)]
    let at = DateTime::from_timestamp_millis(value["at"].as_f64()? as i64)?;
    Some(
        json!({
            "user_id": value["user_id"],
            "username": value["username"],
            "online": value["online"],
            "at": at,
        })
        .to_string(),
    )
}

/// One SSE frame. `data` must be a single line (compact JSON is).
pub fn sse_frame(id: Option<&EventId>, event: &str, data: &str) -> Bytes {
    let mut frame = String::with_capacity(data.len() + 64);
    if let Some(id) = id {
        frame.push_str("id: ");
        frame.push_str(&id.to_string());
        frame.push('\n');
    }
    frame.push_str("event: ");
    frame.push_str(event);
    frame.push_str("\ndata: ");
    frame.push_str(data);
    frame.push_str("\n\n");
    Bytes::from(frame)
}

/// How long a batch's marker is kept while the batch is not known finished: as long as the
/// reconciler or a retry might append it again.
pub const MARKER_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long it is kept once the batch is finished: longer than any finisher takes between
/// reading that a batch is unfinished and appending it (the reconciler checks again just
/// before each append; the appender gives up on a batch a minute after it was stored), so
/// that it still finds the marker.
pub const FINISHED_MARKER_TTL: Duration = Duration::from_secs(5 * 60);

/// An event to append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: EventKind,
    pub audience: Audience,
    /// The JSON sent to clients.
    pub data: String,
}

impl NewEvent {
    /// An event whose data is `data` as JSON (the event structs are plain fields, which
    /// serialize without fail).
    pub fn json(kind: EventKind, audience: Audience, data: &impl serde::Serialize) -> Self {
        Self {
            kind,
            audience,
            data: serde_json::to_string(data).unwrap_or_default(),
        }
    }
}

fn unexpected_reply(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply to an append",
        what.to_owned(),
    ))
}

pub(crate) fn new_epoch() -> String {
    format!("{:08x}", rand::thread_rng().r#gen::<u32>())
}

impl Live {
    /// How many events the log keeps (`EVENT_LOG_MAX_LEN`).
    pub(crate) fn event_log_max_len(&self) -> usize {
        self.event_log_max_len
    }

    /// Adds, after a script's own keys and arguments, what its `append` (see [`APPEND_LUA`])
    /// needs: the log's keys, then a candidate epoch, the log's length and the trim mode.
    pub(crate) fn with_log<'a, 's>(
        &self,
        invocation: &'a mut redis::ScriptInvocation<'s>,
    ) -> &'a mut redis::ScriptInvocation<'s> {
        invocation
            .key(self.keys.events())
            .key(self.keys.epoch())
            .key(self.keys.event_count())
            .arg(new_epoch())
            .arg(self.event_log_max_len)
            // XADD trims exactly for small logs (tests), approximately (cheaper) for real ones.
            .arg(if self.event_log_max_len >= 1000 {
                "~"
            } else {
                "="
            })
    }

    /// Appends the events of `batch` in order with one script call, unless an earlier call
    /// for the batch did: returns the ids either way (see [`APPEND`]).
    pub async fn append(
        &self,
        batch: &str,
        events: &[NewEvent],
    ) -> redis::RedisResult<Vec<EventId>> {
        let mut invocation = APPEND.prepare_invoke();
        invocation
            .key(self.keys.batch_marker(batch))
            .arg(MARKER_TTL.as_secs());
        self.with_log(&mut invocation);
        for event in events {
            invocation
                .arg(event.kind.as_str())
                .arg(event.audience.encode())
                .arg(&event.data);
        }
        let mut conn = self.redis.clone();
        let reply: Vec<String> = invocation.invoke_async(&mut conn).await?;
        if reply.len() != events.len() {
            return Err(unexpected_reply(&format!(
                "{} ids for {} events",
                reply.len(),
                events.len()
            )));
        }
        crate::telemetry::metrics::events_appended(events.len());
        reply
            .iter()
            .map(|id| EventId::parse(id).ok_or_else(|| unexpected_reply(id)))
            .collect()
    }

    /// The ids of a batch's events while its marker is kept; `None` after.
    pub async fn marker(&self, batch: &str) -> redis::RedisResult<Option<Vec<EventId>>> {
        let mut conn = self.redis.clone();
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(self.keys.batch_marker(batch))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        Ok((!ids.is_empty()).then(|| ids.iter().filter_map(|id| EventId::parse(id)).collect()))
    }

    /// Shortens the markers of finished batches to [`FINISHED_MARKER_TTL`].
    pub async fn settle_markers(&self, batches: &[&str]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for batch in batches {
            pipe.expire(
                self.keys.batch_marker(batch),
                FINISHED_MARKER_TTL.as_secs().cast_signed(),
            )
            .ignore();
        }
        let mut conn = self.redis.clone();
        pipe.query_async(&mut conn).await
    }

    /// The current epoch of the log, created when missing.
    pub async fn epoch(&self) -> redis::RedisResult<String> {
        self.epoch_on(&mut self.redis.clone()).await
    }

    /// The current epoch of the log, created when missing.
    pub(crate) async fn epoch_on(&self, conn: &mut super::Measured) -> redis::RedisResult<String> {
        EPOCH
            .key(self.keys.epoch())
            .arg(new_epoch())
            .invoke_async(conn)
            .await
    }

    /// The id of the newest entry of the log (`0-0` when it is empty).
    pub(crate) async fn tail_on(&self, conn: &mut super::Measured) -> redis::RedisResult<String> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        Ok(reply
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()))
    }

    /// Entries after `after` up to and including `upto` (same epoch), or `None` when the log
    /// no longer holds everything after `after` (trimmed): the caller must resync.
    pub async fn replay(
        &self,
        after: &EventId,
        upto: &EventId,
    ) -> redis::RedisResult<Option<Vec<LogEvent>>> {
        let mut conn = self.redis.clone();
        let mut events = Vec::new();
        let mut cursor = after.stream_id();
        loop {
            let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(self.keys.events())
                .arg(format!("({cursor}"))
                .arg(upto.stream_id())
                .arg("COUNT")
                .arg(REPLAY_PAGE)
                .query_async(&mut conn)
                .await?;
            let full = page.ids.len() == REPLAY_PAGE;
            if let Some(last) = page.ids.last() {
                cursor = last.id.clone();
            }
            // Typing is live only: a resume never replays it.
            events.extend(
                page.ids
                    .iter()
                    .filter_map(LogEvent::from_entry)
                    .filter(|e| e.id.epoch == after.epoch && e.kind != EventKind::Typing),
            );
            if !full {
                break;
            }
        }
        // Checked once everything is read: trimming only ever drops the oldest entries, so if
        // nothing after `after` is gone now, nothing was gone while the pages were read.
        let (first, trimmed): (String, i64) = LOG_HEAD
            .key(self.keys.events())
            .invoke_async(&mut conn)
            .await?;
        let gap = match EventId::new(&after.epoch, &first) {
            // The entry the client saw is still there: nothing after it is missing.
            Some(first) if !first.is_after(after) => false,
            // Everything the log ever held is still there.
            Some(_) => trimmed > 0,
            None => upto.is_after(after),
        };
        Ok((!gap).then_some(events))
    }
}

const REPLAY_PAGE: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_predecessor_of_an_id_is_the_greatest_id_before_it() {
        let id = EventId::parse("0a1b2c3d-1700000000000-5").unwrap();
        let before = id.predecessor();
        assert_eq!(before.to_string(), "0a1b2c3d-1700000000000-4");
        assert_eq!(before.cmp_in_epoch(&id), Some(Ordering::Less));
        let first_of_its_ms = EventId::parse("0a1b2c3d-1700000000000-0").unwrap();
        assert_eq!(
            first_of_its_ms.predecessor().to_string(),
            format!("0a1b2c3d-1699999999999-{}", u64::MAX)
        );
    }

    #[test]
    fn event_ids_round_trip_and_order_within_an_epoch() {
        let a = EventId::parse("0a1b2c3d-1700000000000-0").unwrap();
        let b = EventId::parse("0a1b2c3d-1700000000000-1").unwrap();
        assert_eq!(a.to_string(), "0a1b2c3d-1700000000000-0");
        assert!(b.is_after(&a));
        assert!(!a.is_after(&b));
        let other = EventId::parse("ffffffff-1-0").unwrap();
        assert_eq!(other.cmp_in_epoch(&a), None);
    }

    #[test]
    fn malformed_event_ids_are_rejected() {
        for bad in [
            "",
            "abc",
            "zz-1-0",
            "0a1b-1",
            "0a1b-x-0",
            "0a1b-1-0-0",
            "0a1b--1-0",
        ] {
            assert!(EventId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn audiences_round_trip() {
        let room = Audience::Room(RoomId::new());
        let users = Audience::Users(vec![UserId::new(), UserId::new()]);
        for a in [Audience::Everyone, room, users] {
            assert_eq!(Audience::decode(&a.encode()), Some(a));
        }
        assert_eq!(Audience::decode("r:nope"), None);
    }

    #[test]
    fn frames_are_well_formed() {
        let id = EventId::parse("0a-5-1").unwrap();
        assert_eq!(
            &sse_frame(Some(&id), "message", "{\"a\":1}")[..],
            b"id: 0a-5-1\nevent: message\ndata: {\"a\":1}\n\n"
        );
    }
}
