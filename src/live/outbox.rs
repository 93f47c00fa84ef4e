//! Appending an event after its message is stored can fail (Redis unreachable for a moment).
//! The message is durable in MongoDB either way; the outbox keeps appending the event in the
//! background, in order, until Redis takes it, so live subscribers still get it. If Redis lost
//! its log meanwhile, the new epoch makes every client resync and reload history instead.
//!
//! Appends are grouped like the message writes: one task per instance takes every event that
//! queued up while the previous group was appended (up to [`MAX_GROUP`], and at most a quarter
//! of the log's length) and appends them with one script call. Under load that is one Redis
//! round trip and one Lua invocation per group instead of per message; idle, a group is one
//! event. A group that fails goes to the retries with everything queued behind it, at once,
//! and later groups follow it there until the retries are done, so the log keeps the order in
//! which messages were stored.
//!
//! A failed attempt may still have gone through: Redis ran the script, and the reply was lost
//! to a timeout or a dropped connection. Appending the group again would show its messages
//! twice on every stream. So every group has a random token, the script that appends it also
//! sets a marker key for that token (in the same atomic step), and a script that finds its
//! group's marker set appends nothing. A retry keeps its group's token, so whichever of the
//! lost attempt and the retry runs second does nothing. The next group's script drops the
//! marker of a group whose reply arrived; a retried group's marker expires after a day
//! ([`GROUP_MARKER_TTL`](super::events::GROUP_MARKER_TTL)), so markers stay few.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use super::Live;
use super::events::{Appended, Audience, EventId, EventKind, GroupToken};

/// Events waiting in the retries at most; past it they are dropped (and logged).
const CAPACITY: usize = 10_000;
/// Events appended by one script call at most.
const MAX_GROUP: usize = 128;

struct Pending {
    kind: EventKind,
    audience: Audience,
    data: String,
}

struct Request {
    event: Pending,
    appended: oneshot::Sender<Option<EventId>>,
}

/// A group waiting to be appended again, under the token of its first attempt.
struct Retry {
    token: GroupToken,
    events: Vec<Pending>,
}

/// The retry queue, bounded in events rather than groups.
#[derive(Clone)]
struct Retries {
    groups: mpsc::UnboundedSender<Retry>,
    /// Events queued or being retried.
    events: Arc<AtomicUsize>,
    /// Notified whenever a retried group is done with.
    done: Arc<Notify>,
}

impl Retries {
    fn finished(&self, count: usize) {
        self.events.fetch_sub(count, Ordering::AcqRel);
        self.done.notify_waiters();
    }

    fn push(&self, retry: Retry) {
        let count = retry.events.len();
        if self.events.fetch_add(count, Ordering::AcqRel) + count > CAPACITY {
            self.events.fetch_sub(count, Ordering::AcqRel);
            tracing::error!(
                events = count,
                "event outbox full; events dropped (clients will see them in history)"
            );
            return;
        }
        if let Err(mpsc::error::SendError(retry)) = self.groups.send(retry) {
            self.events.fetch_sub(retry.events.len(), Ordering::AcqRel);
            tracing::error!(
                events = retry.events.len(),
                "event outbox stopped; events dropped (clients will see them in history)"
            );
        }
    }
}

#[derive(Clone)]
pub struct Outbox {
    requests: mpsc::Sender<Request>,
    retries: Retries,
}

impl Outbox {
    pub fn start(live: Live) -> Self {
        let (groups, pending) = mpsc::unbounded_channel();
        let retries = Retries {
            groups,
            events: Arc::default(),
            done: Arc::default(),
        };
        let (requests, queue) = mpsc::channel(CAPACITY);
        // A group is appended by one atomic script, which trims the log as it goes: a group
        // longer than the log would trim its own first events before any tailer read them.
        let max_group = MAX_GROUP.min((live.event_log_max_len() / 4).max(1));
        tokio::spawn(append_groups(
            live.clone(),
            queue,
            max_group,
            retries.clone(),
        ));
        tokio::spawn(drain(live, pending, retries.clone()));
        Self { requests, retries }
    }

    /// Waits until no event is waiting for a retry, for at most `bound` (at shutdown, once no
    /// request can queue more). Returns how many still wait.
    pub async fn settle(&self, bound: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Created before the count is read, so a group finished in between still wakes it.
            let done = self.retries.done.notified();
            let waiting = self.retries.events.load(Ordering::Acquire);
            if waiting == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return self.retries.events.load(Ordering::Acquire);
            }
        }
    }

    /// Appends with the next group, or queues for a retry and returns `None`.
    pub async fn publish(
        &self,
        kind: EventKind,
        audience: Audience,
        data: String,
    ) -> Option<EventId> {
        let event = Pending {
            kind,
            audience,
            data,
        };
        let (appended, id) = oneshot::channel();
        // The group task holds its queue for as long as any handle lives, so it is gone only
        // if it failed; the retries then deliver what it cannot.
        if let Err(mpsc::error::SendError(request)) =
            self.requests.send(Request { event, appended }).await
        {
            tracing::error!(
                kind = kind.as_str(),
                "event group task gone; event queued for retry"
            );
            self.retries.push(Retry {
                token: GroupToken::new(),
                events: vec![request.event],
            });
            return None;
        }
        id.await.unwrap_or_else(|_| {
            // The group task ended while holding the request (it failed, or the runtime is
            // shutting down): the message is stored, its event was not appended.
            tracing::error!(
                kind = kind.as_str(),
                "event neither appended nor queued; clients will see it in history"
            );
            None
        })
    }
}

fn borrowed(events: &[Pending]) -> Vec<(EventKind, &Audience, &str)> {
    events
        .iter()
        .map(|event| (event.kind, &event.audience, event.data.as_str()))
        .collect()
}

async fn append_groups(
    live: Live,
    mut queue: mpsc::Receiver<Request>,
    max_group: usize,
    retries: Retries,
) {
    let mut group: Vec<Request> = Vec::with_capacity(max_group);
    // The last group whose reply arrived: the next append drops its marker.
    let mut acknowledged: Option<GroupToken> = None;
    while queue.recv_many(&mut group, max_group).await > 0 {
        let (events, answers): (Vec<Pending>, Vec<_>) = std::mem::take(&mut group)
            .into_iter()
            .map(|request| (request.event, request.appended))
            .unzip();
        let token = GroupToken::new();
        // While earlier events wait for a retry, later ones queue behind them, so the log
        // keeps the order in which their messages were stored.
        if retries.events.load(Ordering::Acquire) > 0 {
            retries.push(Retry { token, events });
            answers.into_iter().for_each(|answer| {
                let _ = answer.send(None);
            });
            continue;
        }
        match live
            .append_group(&token, &borrowed(&events), acknowledged.as_ref())
            .await
        {
            Ok(Appended::Now(ids)) => {
                for (answer, id) in answers.into_iter().zip(ids) {
                    // A request that gave up waiting still had its event appended.
                    let _ = answer.send(Some(id));
                }
                acknowledged = Some(token);
            }
            // A new token has no marker yet.
            Ok(Appended::Earlier) => answers.into_iter().for_each(|answer| {
                let _ = answer.send(None);
            }),
            Err(err) => {
                // The group may have gone through with its reply lost: its retry keeps its
                // token, and appends nothing if so. Everything queued meanwhile was never sent;
                // it goes to the retries as well, in order, instead of waiting for its own
                // failed attempt (up to the response timeout per group while Redis hangs): the
                // POSTs answer now, and the retries deliver later.
                let mut failed = events.len();
                retries.push(Retry { token, events });
                answers.into_iter().for_each(|answer| {
                    let _ = answer.send(None);
                });
                let mut queued = Vec::new();
                while let Ok(request) = queue.try_recv() {
                    queued.push(request.event);
                    let _ = request.appended.send(None);
                    failed += 1;
                    if queued.len() == max_group {
                        retries.push(Retry {
                            token: GroupToken::new(),
                            events: std::mem::take(&mut queued),
                        });
                    }
                    if failed >= CAPACITY {
                        break;
                    }
                }
                if !queued.is_empty() {
                    retries.push(Retry {
                        token: GroupToken::new(),
                        events: queued,
                    });
                }
                tracing::warn!(error = %err, events = failed, "events not appended; queued for retry");
            }
        }
    }
}

/// Appends the retried groups, one at a time and in order, until Redis takes each. It keeps
/// going through shutdown, which waits for it (see [`Outbox::settle`]).
async fn drain(live: Live, mut pending: mpsc::UnboundedReceiver<Retry>, retries: Retries) {
    while let Some(retry) = pending.recv().await {
        let mut delay = Duration::from_millis(100);
        loop {
            // A retried group's marker is left to expire: its lost attempt may still be on its
            // way to Redis, and must find it.
            let events = borrowed(&retry.events);
            match live.append_group(&retry.token, &events, None).await {
                Ok(Appended::Now(_)) => break,
                Ok(Appended::Earlier) => {
                    tracing::info!(
                        events = events.len(),
                        "a retried group had been appended by an attempt whose reply was lost; not appended again"
                    );
                    break;
                }
                Err(err) => tracing::debug!(error = %err, "outbox: Redis still unavailable"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        retries.finished(retry.events.len());
    }
}
