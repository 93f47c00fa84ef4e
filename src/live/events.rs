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
use crate::domain::{MessageId, RoomId, UserId};
use crate::store::IDEMPOTENCY_WINDOW;

/// Lua shared by every script that appends to the log: creates the epoch when it is missing,
/// numbers the entry (`n`, one more than the entry before it, so that a tailer can tell when
/// entries were trimmed before it read them), then XADDs with trimming. Returns
/// `{epoch, entry id}`.
pub(crate) const APPEND_LUA: &str = r"
local function append(stream, epoch_key, count_key, candidate, maxlen, mode, kind, audience, data)
    local epoch = redis.call('GET', epoch_key)
    if not epoch then
        redis.call('SET', epoch_key, candidate)
        epoch = candidate
    end
    local n = redis.call('INCR', count_key)
    local id = redis.call('XADD', stream, 'MAXLEN', mode, maxlen, '*',
        'e', epoch, 't', kind, 'a', audience, 'd', data, 'n', n)
    return {epoch, id}
end
";

/// KEYS: stream, epoch, count, this group's marker, the marker of a group whose reply arrived
/// (to drop; this group's own marker when there is none), then the announcement keys of the
/// group's messages that have one. ARGV: candidate epoch, maxlen, mode, the lifetimes in
/// seconds of group markers and of announcement keys, then kind, audience, data and the index
/// of its announcement key (0 for none) for each event in order.
///
/// If the marker is set, an earlier attempt at this same group went through (its reply was
/// lost), and nothing is appended; the reply is then empty. Otherwise the events are appended
/// and the marker set (last, so that a script stopped half-way by an error leaves no marker:
/// its retry appends again rather than never), and the reply holds the id of each event in
/// order, `<epoch>-<ms>-<seq>`: one script call appends a whole group, with one epoch (the
/// script is atomic). An event with an announcement key is appended only if the key is not
/// set, and sets it to its id; when it is set, the message was announced before, and its id
/// there stands for the event.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{APPEND_LUA}
        if redis.call('EXISTS', KEYS[4]) == 1 then
            return {{}}
        end
        local result = {{}}
        for i = 6, #ARGV, 4 do
            local announced = tonumber(ARGV[i + 3])
            local earlier = false
            if announced > 0 then
                earlier = redis.call('GET', KEYS[5 + announced])
            end
            if earlier then
                result[#result + 1] = earlier
            else
                local appended = append(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[i], ARGV[i + 1], ARGV[i + 2])
                local id = appended[1] .. '-' .. appended[2]
                if announced > 0 then
                    redis.call('SET', KEYS[5 + announced], id, 'EX', ARGV[5])
                end
                result[#result + 1] = id
            end
        end
        redis.call('SET', KEYS[4], '1', 'EX', ARGV[4])
        if KEYS[5] ~= KEYS[4] then
            redis.call('DEL', KEYS[5])
        end
        return result
        "
    ))
});

/// KEYS: epoch. ARGV: candidate. The current epoch, created when missing.
static EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local epoch = redis.call('GET', KEYS[1])
        if not epoch then
            redis.call('SET', KEYS[1], ARGV[1])
            epoch = ARGV[1]
        end
        return epoch
        ",
    )
});

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
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Presence => "presence",
            EventKind::RoomMember => "room_member",
            EventKind::SessionRevoked => "session_revoked",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "message" => EventKind::Message,
            "presence" => EventKind::Presence,
            "room_member" => EventKind::RoomMember,
            "session_revoked" => EventKind::SessionRevoked,
            _ => return None,
        })
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
            EventKind::Message => data,
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

/// How long the marker of a group whose reply was lost is kept: a retry within that time is
/// recognised (retries go on, with backoff, for as long as Redis is unreachable).
pub const GROUP_MARKER_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Names one group of events across its attempts. The append script sets a marker for it
/// in the same atomic step as the appends, so that a retry of a group whose reply was lost (a timeout while Redis was
/// busy, a dropped connection) finds the marker and appends nothing, in whichever order the
/// attempts run. The next group's script drops the marker of a group whose reply arrived, so
/// markers outlive only groups that were retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupToken(String);

impl GroupToken {
    /// 128 random bits: unique across instances and restarts.
    pub fn new() -> Self {
        Self(format!("{:032x}", rand::thread_rng().r#gen::<u128>()))
    }
}

impl Default for GroupToken {
    fn default() -> Self {
        Self::new()
    }
}

/// An event to append.
#[derive(Clone, Copy, Debug)]
pub struct NewEvent<'a> {
    pub kind: EventKind,
    pub audience: &'a Audience,
    /// The JSON sent to clients.
    pub data: &'a str,
    /// The message this event announces, when a retry of its request may announce it again
    /// (it was posted with an idempotency key): the event is then appended only if no event
    /// announced that message before (within [`ANNOUNCEMENT_TTL`]).
    pub announces: Option<MessageId>,
}

/// How long the announcement of a message posted with an idempotency key is remembered: as
/// long as the key, so that a retry with it never announces the message a second time, plus
/// an hour for clocks that differ (the key's age is read on the API's clock, this lifetime
/// counted on Redis's).
pub const ANNOUNCEMENT_TTL: Duration = Duration::from_secs(IDEMPOTENCY_WINDOW.as_secs() + 60 * 60);

/// What [`Live::append_group`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// Appended now: the ids of the group's events, in order (for an event whose message
    /// was announced before, the id of that earlier event).
    Now(Vec<EventId>),
    /// Already appended by an earlier attempt with the same token; nothing was appended.
    Earlier,
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

    /// XADD trims exactly for small logs (tests) and approximately (cheaper) for real ones.
    pub(crate) fn trim_mode(&self) -> &'static str {
        if self.event_log_max_len >= 1000 {
            "~"
        } else {
            "="
        }
    }

    /// Appends `events` in order with one script call (one round trip, one Lua invocation),
    /// unless an earlier attempt with the same `token` went through (see [`GroupToken`]).
    /// `acknowledged` is the token of a group whose reply arrived: its marker is dropped.
    pub async fn append_group(
        &self,
        token: &GroupToken,
        events: &[NewEvent<'_>],
        acknowledged: Option<&GroupToken>,
    ) -> redis::RedisResult<Appended> {
        let marker = self.keys.group_marker(&token.0);
        let drop =
            acknowledged.map_or_else(|| marker.clone(), |done| self.keys.group_marker(&done.0));
        let mut invocation = PUBLISH.prepare_invoke();
        invocation
            .key(self.keys.events())
            .key(self.keys.epoch())
            .key(self.keys.event_count())
            .key(marker)
            .key(drop)
            .arg(new_epoch())
            .arg(self.event_log_max_len)
            .arg(self.trim_mode())
            .arg(GROUP_MARKER_TTL.as_secs())
            .arg(ANNOUNCEMENT_TTL.as_secs());
        let mut announcements = 0_usize;
        for event in events {
            let index = match event.announces {
                Some(message) => {
                    invocation.key(self.keys.announcement(message));
                    announcements += 1;
                    announcements
                }
                None => 0,
            };
            invocation
                .arg(event.kind.as_str())
                .arg(event.audience.encode())
                .arg(event.data)
                .arg(index);
        }
        let mut conn = self.redis.clone();
        let reply: Vec<String> = invocation.invoke_async(&mut conn).await?;
        if reply.is_empty() {
            return Ok(Appended::Earlier);
        }
        if reply.len() != events.len() {
            return Err(unexpected_reply(&format!(
                "{} ids for {} events",
                reply.len(),
                events.len()
            )));
        }
        reply
            .iter()
            .map(|id| EventId::parse(id).ok_or_else(|| unexpected_reply(id)))
            .collect::<redis::RedisResult<_>>()
            .map(Appended::Now)
    }

    /// The current epoch of the log, created when missing.
    pub(crate) async fn epoch_on(
        &self,
        conn: &mut redis::aio::ConnectionManager,
    ) -> redis::RedisResult<String> {
        EPOCH
            .key(self.keys.epoch())
            .arg(new_epoch())
            .invoke_async(conn)
            .await
    }

    /// The id of the newest entry of the log (`0-0` when it is empty).
    pub(crate) async fn tail_on(
        &self,
        conn: &mut redis::aio::ConnectionManager,
    ) -> redis::RedisResult<String> {
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
        if gap {
            return Ok(None);
        }
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
            events.extend(
                page.ids
                    .iter()
                    .filter_map(LogEvent::from_entry)
                    .filter(|e| e.id.epoch == after.epoch),
            );
            if !full {
                return Ok(Some(events));
            }
        }
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
