//! Each instance tails the event log once, on one dedicated Redis connection, and fans every
//! event out in process to its own open streams: a ring of the events some stream has yet to
//! take (shared, pre-rendered) that every stream reads at its own pace. Never one Redis read
//! per client.
//!
//! The events of one log read are handed out together, with one wake-up per waiting stream:
//! a stream woken by a read finds all of its events there and writes them together (the lean
//! stream path: one system call for up to 64), instead of being woken (and writing) once per
//! event while the rest are still being handed out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::streams::StreamReadReply;
use tokio::sync::{Notify, watch};

use super::Live;
use super::events::{EventId, LogEvent};

const BLOCK: Duration = Duration::from_secs(2);
const BATCH: usize = 512;

/// What the tailer hands to every stream of the instance.
#[derive(Debug)]
pub enum HubItem {
    Event(LogEvent),
    /// Events were lost: every client must reload history. Carries the position after which
    /// events follow again, and why.
    Resync(EventId, ResyncCause),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncCause {
    /// Redis lost the log (new epoch); the position is the start of the new epoch.
    LogLost,
    /// Entries were trimmed before this instance read them (it fell further behind than the
    /// log is long); the position is just before the first entry still there.
    Trimmed,
}

impl ResyncCause {
    pub fn reason(self) -> &'static str {
        match self {
            Self::LogLost => "the event log was reset",
            Self::Trimmed => "events were dropped from the log before they could be delivered",
        }
    }
}

pub struct Hub {
    ring: Mutex<Ring>,
    /// How many items the ring keeps: how far a stream may fall behind.
    capacity: usize,
    /// Woken once per batch of items handed out.
    arrived: Notify,
}

/// The items handed out that some stream has yet to take, numbered: `slots` holds numbers
/// `next - slots.len()` to `next - 1`. An item every stream has taken is dropped (the ones
/// before it were taken by all too: each stream takes them in order), so a quiet instance, or
/// one whose streams keep up, holds none.
struct Ring {
    slots: VecDeque<Slot>,
    next: u64,
    /// Open streams (receivers).
    receivers: usize,
    /// The id of the last item handed out. Read and advanced under the same lock as the
    /// items, so a subscriber knows exactly which events it will and will not receive.
    position: Option<EventId>,
}

struct Slot {
    item: Arc<HubItem>,
    /// Streams that were open when it was handed out and have not taken it yet.
    untaken: usize,
}

impl Ring {
    fn oldest(&self) -> u64 {
        self.next - self.slots.len() as u64
    }

    /// Drops the leading items that every stream has taken.
    fn release(&mut self) {
        while self.slots.front().is_some_and(|slot| slot.untaken == 0) {
            self.slots.pop_front();
        }
    }
}

impl Hub {
    /// Starts the tailer. `capacity` is how many events a slow stream may fall behind before
    /// it is closed (its client then resumes from the log with `Last-Event-ID`).
    pub fn start(live: Live, capacity: usize, shutdown: watch::Receiver<bool>) -> Arc<Hub> {
        let hub = Arc::new(Hub::new(capacity));
        tokio::spawn(tail(live, Arc::clone(&hub), shutdown));
        hub
    }

    fn new(capacity: usize) -> Self {
        Hub {
            ring: Mutex::new(Ring {
                slots: VecDeque::new(),
                next: 0,
                receivers: 0,
                position: None,
            }),
            capacity: capacity.max(16),
            arrived: Notify::new(),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes to everything after the returned position; `None` until the tailer has
    /// reached Redis once.
    pub fn subscribe(self: &Arc<Self>) -> (HubReceiver, Option<EventId>) {
        let mut ring = self.ring();
        ring.receivers += 1;
        let receiver = HubReceiver {
            hub: Arc::clone(self),
            next: ring.next,
        };
        (receiver, ring.position.clone())
    }

    pub fn position(&self) -> Option<EventId> {
        self.ring().position.clone()
    }

    /// Log entries read at once at most: a read must fit in the ring, or every stream would
    /// fall behind it before any could take from it.
    fn read_batch(&self) -> usize {
        BATCH.min(self.capacity / 2)
    }

    /// Hands out `items` in order, at once, and moves the position to the last id (an item
    /// of `None` only moves the position past an entry that is not handed out).
    fn emit(&self, items: impl IntoIterator<Item = (EventId, Option<HubItem>)>) {
        // Allocated, and evicted items freed, outside the lock the streams take.
        let items: Vec<(EventId, Option<Arc<HubItem>>)> = items
            .into_iter()
            .map(|(id, item)| (id, item.map(Arc::new)))
            .collect();
        let mut evicted = Vec::new();
        let mut handed_out = false;
        {
            let mut ring = self.ring();
            for (id, item) in items {
                ring.position = Some(id);
                let Some(item) = item else { continue };
                ring.next += 1;
                handed_out = true;
                if ring.receivers == 0 {
                    continue;
                }
                if ring.slots.len() == self.capacity {
                    evicted.extend(ring.slots.pop_front());
                }
                let untaken = ring.receivers;
                ring.slots.push_back(Slot { item, untaken });
            }
        }
        drop(evicted);
        if handed_out {
            self.arrived.notify_waiters();
        }
    }
}

/// One stream's place in the hub's ring.
pub struct HubReceiver {
    hub: Arc<Hub>,
    /// The number of the next item this stream takes.
    next: u64,
}

/// The stream fell further behind than the ring holds; carries how many items it missed.
#[derive(Debug, PartialEq, Eq)]
pub struct Lagged(pub u64);

impl HubReceiver {
    /// The next item if it is there already.
    pub fn try_recv(&mut self) -> Result<Option<Arc<HubItem>>, Lagged> {
        take(&self.hub, &mut self.next)
    }

    /// Waits for the next item. Cancel-safe: an item is taken only when it is returned.
    pub async fn recv(&mut self) -> Result<Arc<HubItem>, Lagged> {
        if let Some(item) = take(&self.hub, &mut self.next)? {
            return Ok(item);
        }
        loop {
            // Registered before looking again, so a batch handed out in between still wakes
            // us.
            let arrived = self.hub.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(item) = take(&self.hub, &mut self.next)? {
                return Ok(item);
            }
            arrived.await;
        }
    }
}

impl Drop for HubReceiver {
    fn drop(&mut self) {
        let mut ring = self.hub.ring();
        let from = usize::try_from(self.next.saturating_sub(ring.oldest())).unwrap_or(usize::MAX);
        for slot in ring.slots.iter_mut().skip(from) {
            slot.untaken -= 1;
        }
        ring.receivers -= 1;
        ring.release();
    }
}

/// Takes item number `next` from the ring, if it is there, and moves `next` past it.
fn take(hub: &Hub, next: &mut u64) -> Result<Option<Arc<HubItem>>, Lagged> {
    let mut ring = hub.ring();
    let oldest = ring.oldest();
    if *next < oldest {
        let missed = oldest - *next;
        *next = oldest;
        return Err(Lagged(missed));
    }
    let Some(slot) = usize::try_from(*next - oldest)
        .ok()
        .and_then(|index| ring.slots.get_mut(index))
    else {
        return Ok(None);
    };
    slot.untaken -= 1;
    let item = Arc::clone(&slot.item);
    *next += 1;
    ring.release();
    Ok(Some(item))
}

async fn tail(live: Live, hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let mut conn = match live.dedicated_connection(BLOCK + Duration::from_secs(3)) {
        Ok(conn) => conn,
        Err(err) => {
            tracing::error!(error = %err, "cannot create the event log connection");
            return;
        }
    };
    let mut failures = 0u32;
    let mut last_number = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let step = tail_once(&live, &hub, &mut conn, &mut last_number);
        let result = tokio::select! {
            result = step => result,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("event log reachable again");
                }
                failures = 0;
            }
            Err(err) => {
                if failures == 0 {
                    tracing::warn!(error = %err, "cannot read the event log; retrying");
                }
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(100 * u64::from(failures.min(10)));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// One round: check the epoch, then block for new entries and hand them out. `last_number`
/// is the `n` of the last entry handed out (see `APPEND_LUA`): an entry numbered more than one
/// past it means entries in between were trimmed unread, and streams are told to resync.
async fn tail_once(
    live: &Live,
    hub: &Hub,
    conn: &mut super::Measured,
    last_number: &mut Option<u64>,
) -> redis::RedisResult<()> {
    let epoch = live.epoch_on(conn).await?;
    let position = match hub.position() {
        Some(position) if position.epoch == epoch => position,
        Some(old) => {
            // Redis lost the log: streams must tell their clients to resync. Entries of the
            // new epoch written before we noticed are read from its start.
            tracing::warn!(old_epoch = %old.epoch, new_epoch = %epoch, "event log was lost; streams will resync");
            let start = EventId::start_of(&epoch);
            hub.emit([(
                start.clone(),
                Some(HubItem::Resync(start.clone(), ResyncCause::LogLost)),
            )]);
            // Read from the new log's start: its first entry is numbered 1, and a higher
            // number means entries were trimmed before this instance read them.
            *last_number = Some(0);
            start
        }
        None => {
            let tail = live.tail_on(conn).await?;
            let start = EventId::new(&epoch, &tail).unwrap_or_else(|| EventId::start_of(&epoch));
            hub.emit([(start.clone(), None)]);
            start
        }
    };
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(hub.read_batch())
        .arg("BLOCK")
        .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(2000))
        .arg("STREAMS")
        .arg(live.keys.events())
        .arg(position.stream_id())
        .query_async(conn)
        .await?;
    let mut batch = Vec::new();
    for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
        let id = EventId::new(&epoch, &entry.id);
        // Entries of an older version carry no number; a number at or below the last one
        // means the counter was reset: neither is a gap.
        let number: Option<u64> = entry.get("n");
        if let (Some(number), Some(last), Some(id)) = (number, *last_number, &id)
            && number > last.saturating_add(1)
        {
            tracing::warn!(
                missed = number - last - 1,
                "event log entries were trimmed before this instance read them; streams will resync"
            );
            let before = id.predecessor();
            batch.push((
                before.clone(),
                Some(HubItem::Resync(before, ResyncCause::Trimmed)),
            ));
        }
        *last_number = number;
        match LogEvent::from_entry(&entry) {
            Some(event) if event.id.epoch == epoch => {
                batch.push((event.id.clone(), Some(HubItem::Event(event))));
            }
            // Unreadable, or written under another epoch: skip it, but move past it.
            _ => {
                if let Some(id) = id {
                    batch.push((id, None));
                }
            }
        }
    }
    hub.emit(batch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    fn id(n: u64) -> EventId {
        EventId::parse(&format!("ab-{n}-0")).unwrap()
    }

    /// An item that says which entry it stands for.
    fn item(n: u64) -> (EventId, Option<HubItem>) {
        (id(n), Some(HubItem::Resync(id(n), ResyncCause::Trimmed)))
    }

    fn number(item: &HubItem) -> EventId {
        match item {
            HubItem::Resync(id, _) | HubItem::Event(LogEvent { id, .. }) => id.clone(),
        }
    }

    fn drain(receiver: &mut HubReceiver) -> Vec<EventId> {
        let mut seen = Vec::new();
        while let Some(item) = receiver.try_recv().unwrap() {
            seen.push(number(&item));
        }
        seen
    }

    fn held(hub: &Hub) -> usize {
        hub.ring().slots.len()
    }

    #[test]
    fn a_stream_gets_what_is_handed_out_after_its_position_in_order() {
        let hub = Arc::new(Hub::new(16));
        assert_eq!(hub.subscribe().1, None);
        hub.emit([item(1), (id(2), None)]);
        let (mut receiver, position) = hub.subscribe();
        // Entry 2 was passed over: the position moved past it, and nothing was handed out.
        assert_eq!(position, Some(id(2)));
        assert!(drain(&mut receiver).is_empty());
        hub.emit([item(3), item(4), (id(5), None), item(6)]);
        assert_eq!(drain(&mut receiver), vec![id(3), id(4), id(6)]);
        assert_eq!(hub.position(), Some(id(6)));
    }

    #[test]
    fn a_stream_further_behind_than_the_ring_holds_is_told_how_far() {
        let hub = Arc::new(Hub::new(16));
        let (mut slow, _) = hub.subscribe();
        // Exactly as far behind as the ring holds is not too far.
        hub.emit((1..=16).map(item));
        assert_eq!(number(&slow.try_recv().unwrap().unwrap()), id(1));
        hub.emit((17..=21).map(item));
        assert_eq!(slow.try_recv().unwrap_err(), Lagged(4));
        // What the ring still holds follows, should the stream go on.
        assert_eq!(drain(&mut slow), (6..=21).map(id).collect::<Vec<_>>());
    }

    #[test]
    fn items_are_held_only_until_every_open_stream_took_them() {
        let hub = Arc::new(Hub::new(16));
        // Nobody listening: nothing is kept.
        hub.emit((1..=3).map(item));
        assert_eq!(held(&hub), 0);
        let (mut fast, _) = hub.subscribe();
        let (mut slow, _) = hub.subscribe();
        hub.emit((4..=6).map(item));
        assert_eq!(drain(&mut fast), vec![id(4), id(5), id(6)]);
        assert_eq!(held(&hub), 3, "the slow stream has taken none");
        assert_eq!(number(&slow.try_recv().unwrap().unwrap()), id(4));
        assert_eq!(held(&hub), 2);
        // A stream that goes away lets go of what it had not taken.
        drop(slow);
        assert_eq!(held(&hub), 0);
        // A stream opened later does not hold up earlier items.
        hub.emit([item(7)]);
        let (mut late, _) = hub.subscribe();
        assert_eq!(drain(&mut fast), vec![id(7)]);
        assert_eq!(held(&hub), 0);
        assert!(drain(&mut late).is_empty());
    }

    /// A waker that records that it was woken.
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_stream_is_woken_once_and_finds_the_whole_batch() {
        let hub = Arc::new(Hub::new(16));
        let (mut receiver, _) = hub.subscribe();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        {
            let mut waiting = std::pin::pin!(receiver.recv());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
            assert!(!flag.0.load(Ordering::SeqCst));
            hub.emit((1..=3).map(item));
            assert!(flag.0.load(Ordering::SeqCst), "not woken by the batch");
            match waiting.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(first)) => assert_eq!(number(&first), id(1)),
                other => panic!("expected the first item, got {other:?}"),
            }
        }
        // The rest of the batch is there without waiting.
        assert_eq!(drain(&mut receiver), vec![id(2), id(3)]);
    }
}
