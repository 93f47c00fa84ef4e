//! Each instance tails the event log once, on one dedicated Redis connection, and fans every
//! event out in process (a broadcast channel of shared, pre-rendered events) to its own open
//! streams. Never one Redis read per client.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::streams::StreamReadReply;
use tokio::sync::{broadcast, watch};

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
    sender: broadcast::Sender<Arc<HubItem>>,
    /// The id of the last item handed out. Read and advanced under the same lock as the
    /// send, so a subscriber knows exactly which events it will and will not receive.
    position: Mutex<Option<EventId>>,
}

impl Hub {
    /// Starts the tailer. `capacity` is how many events a slow stream may fall behind before
    /// it is closed (its client then resumes from the log with `Last-Event-ID`).
    pub fn start(live: Live, capacity: usize, shutdown: watch::Receiver<bool>) -> Arc<Hub> {
        let (sender, _) = broadcast::channel(capacity.max(16));
        let hub = Arc::new(Hub {
            sender,
            position: Mutex::new(None),
        });
        tokio::spawn(tail(live, Arc::clone(&hub), shutdown));
        hub
    }

    /// Subscribes to everything after the returned position; `None` until the tailer has
    /// reached Redis once.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<HubItem>>, Option<EventId>) {
        let position = self.position.lock().unwrap_or_else(PoisonError::into_inner);
        (self.sender.subscribe(), position.clone())
    }

    pub fn position(&self) -> Option<EventId> {
        self.position
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn emit(&self, id: EventId, item: Option<HubItem>) {
        let mut position = self.position.lock().unwrap_or_else(PoisonError::into_inner);
        *position = Some(id);
        if let Some(item) = item {
            // No receivers is fine: nobody is listening on this instance.
            let _ = self.sender.send(Arc::new(item));
        }
    }
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
    conn: &mut redis::aio::ConnectionManager,
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
            hub.emit(
                start.clone(),
                Some(HubItem::Resync(start.clone(), ResyncCause::LogLost)),
            );
            *last_number = None;
            start
        }
        None => {
            let tail = live.tail_on(conn).await?;
            let start = EventId::new(&epoch, &tail).unwrap_or_else(|| EventId::start_of(&epoch));
            hub.emit(start.clone(), None);
            start
        }
    };
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(2000))
        .arg("STREAMS")
        .arg(live.keys.events())
        .arg(position.stream_id())
        .query_async(conn)
        .await?;
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
            hub.emit(
                before.clone(),
                Some(HubItem::Resync(before, ResyncCause::Trimmed)),
            );
        }
        *last_number = number;
        match LogEvent::from_entry(&entry) {
            Some(event) if event.id.epoch == epoch => {
                hub.emit(event.id.clone(), Some(HubItem::Event(event)));
            }
            // Unreadable, or written under another epoch: skip it, but move past it.
            _ => {
                if let Some(id) = id {
                    hub.emit(id, None);
                }
            }
        }
    }
    Ok(())
}
