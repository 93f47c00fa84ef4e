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
//! marker of a group whose reply arrived; the markers of groups appended from the retries
//! expire after a day ([`GROUP_MARKER_TTL`](super::events::GROUP_MARKER_TTL)), so markers stay
//! few.
//!
//! A message posted with an idempotency key may be announced twice over: by the request that
//! stored it and by a retry with the same key, which announces it in case the first attempt
//! never did (see `store_and_announce`). Its event names the message ([`NewEvent::announces`]);
//! the script appends such an event only if no event announced that message before, and
//! answers with the earlier event's id otherwise.
//!
//! Shutdown waits for every event given to the outbox to be appended (see [`Outbox::settle`]);
//! a crash loses those still waiting (their messages are in history, not on live streams),
//! except that a message posted with an idempotency key is announced by a retry of its post.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use super::Live;
use super::events::{Appended, Audience, EventId, EventKind, GroupToken, NewEvent};
use crate::domain::MessageId;

/// Events waiting in the retries at most; past it they are dropped (and logged).
const CAPACITY: usize = 10_000;
/// Events appended by one script call at most.
const MAX_GROUP: usize = 128;

struct Pending {
    kind: EventKind,
    audience: Audience,
    data: String,
    announces: Option<MessageId>,
}

struct Request {
    event: Pending,
    appended: oneshot::Sender<Option<EventId>>,
}

/// A group waiting in the retries.
struct Retry {
    token: GroupToken,
    events: Vec<Pending>,
    /// An attempt was sent, with an unknown outcome: the group keeps its token, and stays
    /// whole. Groups never sent are merged on the way out, as the group task would have.
    sent: bool,
}

/// Counts shared by the outbox's handles and tasks.
#[derive(Default)]
struct Counts {
    /// Events given to [`Outbox::publish`] and neither appended nor dropped yet: what
    /// shutdown waits for.
    unsettled: AtomicUsize,
    /// Of those, the events in the retry queue (at most [`CAPACITY`]).
    retrying: AtomicUsize,
    /// Notified whenever events are settled.
    settled: Notify,
    /// How many of the unsettled events announce each message: while events wait for a
    /// retry, a replay of one of these messages is not given another (a client retrying in a
    /// loop while Redis is down would otherwise fill the retries with copies of one event).
    announcing: Mutex<HashMap<MessageId, usize>>,
}

impl Counts {
    fn settle(&self, events: &[Pending]) {
        self.forget(events.iter().filter_map(|event| event.announces));
        self.unsettled.fetch_sub(events.len(), Ordering::AcqRel);
        self.settled.notify_waiters();
    }

    /// Takes on an announcement of `message`, unless `only_first` and one is under way.
    fn start_announcing(&self, message: MessageId, only_first: bool) -> bool {
        let mut announcing = self
            .announcing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let under_way = announcing.entry(message).or_default();
        if only_first && *under_way > 0 {
            return false;
        }
        *under_way += 1;
        true
    }

    fn forget(&self, messages: impl Iterator<Item = MessageId>) {
        // Most events announce no message (posts without a key, joins, leaves): they settle
        // without taking the lock.
        let mut messages = messages.peekable();
        if messages.peek().is_none() {
            return;
        }
        let mut announcing = self
            .announcing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for message in messages {
            if let Some(under_way) = announcing.get_mut(&message) {
                *under_way -= 1;
                if *under_way == 0 {
                    announcing.remove(&message);
                }
            }
        }
    }
}

/// The retry queue, bounded in events rather than groups.
#[derive(Clone)]
struct Retries {
    groups: mpsc::UnboundedSender<Retry>,
    counts: Arc<Counts>,
}

impl Retries {
    fn push(&self, retry: Retry) {
        let count = retry.events.len();
        let retrying = &self.counts.retrying;
        if retrying.fetch_add(count, Ordering::AcqRel) + count > CAPACITY {
            retrying.fetch_sub(count, Ordering::AcqRel);
            self.counts.settle(&retry.events);
            tracing::error!(
                events = count,
                "event outbox full; events dropped (clients will see them in history)"
            );
            return;
        }
        if let Err(mpsc::error::SendError(retry)) = self.groups.send(retry) {
            retrying.fetch_sub(count, Ordering::AcqRel);
            self.counts.settle(&retry.events);
            tracing::error!(
                events = retry.events.len(),
                "event outbox stopped; events dropped (clients will see them in history)"
            );
        }
    }

    fn pending(&self) -> bool {
        self.counts.retrying.load(Ordering::Acquire) > 0
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
            counts: Arc::default(),
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
        tokio::spawn(drain(live, pending, max_group, retries.clone()));
        Self { requests, retries }
    }

    /// Waits until every event given to [`Outbox::publish`] is appended (or dropped), for at
    /// most `bound` (at shutdown, once no request can give more). Returns how many are not.
    pub async fn settle(&self, bound: Duration) -> usize {
        let counts = &self.retries.counts;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Created before the count is read, so events settled in between still wake it.
            let settled = counts.settled.notified();
            if counts.unsettled.load(Ordering::Acquire) == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return counts.unsettled.load(Ordering::Acquire);
            }
        }
    }

    /// Appends with the next group, or queues for a retry and returns `None`. An event that
    /// `announces` a message is appended only if that message was not announced before; its
    /// id is then the earlier event's (see [`NewEvent::announces`]). While events wait for a
    /// retry, one that announces a message already announced by an event of this outbox still
    /// waiting is not queued again, and `None` returned.
    pub async fn publish(
        &self,
        kind: EventKind,
        audience: Audience,
        data: String,
        announces: Option<MessageId>,
    ) -> Option<EventId> {
        let counts = &self.retries.counts;
        if let Some(message) = announces
            && !counts.start_announcing(message, self.retries.pending())
        {
            return None;
        }
        // Until the event is handed over, dropping this call forgets the announcement.
        let mut taken_on = Announcing {
            counts,
            message: announces,
        };
        let event = Pending {
            kind,
            audience,
            data,
            announces,
        };
        let (appended, id) = oneshot::channel();
        // Counted once a queue slot is held, so that a caller dropped while waiting for one
        // (a client that hung up) leaves no count behind for shutdown to wait on.
        let slot = self.requests.reserve().await;
        taken_on.message = None;
        counts.unsettled.fetch_add(1, Ordering::AcqRel);
        match slot {
            Ok(slot) => slot.send(Request { event, appended }),
            // The group task holds its queue for as long as any handle lives, so it is gone
            // only if it failed; the retries then deliver what it cannot.
            Err(_) => {
                tracing::error!(
                    kind = kind.as_str(),
                    "event group task gone; event queued for retry"
                );
                self.retries.push(Retry {
                    token: GroupToken::new(),
                    events: vec![event],
                    sent: false,
                });
                return None;
            }
        }
        id.await.unwrap_or_else(|_| {
            // The group task ended while holding the request (it failed, or the runtime is
            // shutting down): the message is stored, its event was not appended.
            counts.forget(announces.into_iter());
            counts.unsettled.fetch_sub(1, Ordering::AcqRel);
            counts.settled.notify_waiters();
            tracing::error!(
                kind = kind.as_str(),
                "event neither appended nor queued; clients will see it in history"
            );
            None
        })
    }
}

/// An announcement taken on by [`Outbox::publish`] and not yet handed over with its event:
/// forgotten when the call ends early (its caller dropped it while waiting for a queue slot).
struct Announcing<'a> {
    counts: &'a Counts,
    message: Option<MessageId>,
}

impl Drop for Announcing<'_> {
    fn drop(&mut self) {
        self.counts.forget(self.message.take().into_iter());
    }
}

fn borrowed(events: &[Pending]) -> Vec<NewEvent<'_>> {
    events
        .iter()
        .map(|event| NewEvent {
            kind: event.kind,
            audience: &event.audience,
            data: &event.data,
            announces: event.announces,
        })
        .collect()
}

fn answer_none(answers: Vec<oneshot::Sender<Option<EventId>>>) {
    for answer in answers {
        let _ = answer.send(None);
    }
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
        if retries.pending() {
            retries.push(Retry {
                token,
                events,
                sent: false,
            });
            answer_none(answers);
            continue;
        }
        let count = events.len();
        match live
            .append_group(&token, &borrowed(&events), acknowledged.as_ref())
            .await
        {
            Ok(Appended::Now(ids)) => {
                // Settled first, so that a replay answered after its original finds the
                // announcement no longer under way, and gets the event's id from Redis.
                retries.counts.settle(&events);
                for (answer, id) in answers.into_iter().zip(ids) {
                    // A request that gave up waiting still had its event appended.
                    let _ = answer.send(Some(id));
                }
                acknowledged = Some(token);
            }
            Ok(Appended::Earlier) => {
                // A new token with a marker: only a collision of 128 random bits does that.
                tracing::error!(
                    events = count,
                    "a new event group found its marker set; events not appended (clients will see them in history)"
                );
                answer_none(answers);
                retries.counts.settle(&events);
            }
            Err(err) => {
                // The group may have gone through with its reply lost: its retry keeps its
                // token, and appends nothing if so. Everything queued meanwhile was never sent;
                // it goes to the retries as well, in order, instead of waiting for its own
                // failed attempt (up to the response timeout per group while Redis hangs): the
                // POSTs answer now, and the retries deliver later.
                retries.push(Retry {
                    token,
                    events,
                    sent: true,
                });
                answer_none(answers);
                let mut failed = count;
                let mut queued = Vec::new();
                while let Ok(request) = queue.try_recv() {
                    queued.push(request.event);
                    let _ = request.appended.send(None);
                    failed += 1;
                    if queued.len() == max_group {
                        retries.push(Retry {
                            token: GroupToken::new(),
                            events: std::mem::take(&mut queued),
                            sent: false,
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
                        sent: false,
                    });
                }
                tracing::warn!(error = %err, events = failed, "events not appended; queued for retry");
            }
        }
    }
}

/// Appends the retried groups in order, until Redis takes each: a group that was sent alone,
/// under its token; consecutive groups never sent together, up to `max_group` events. It keeps
/// going through shutdown, which waits for it (see [`Outbox::settle`]).
async fn drain(
    live: Live,
    mut pending: mpsc::UnboundedReceiver<Retry>,
    max_group: usize,
    retries: Retries,
) {
    let mut next: Option<Retry> = None;
    loop {
        let mut retry = match next.take() {
            Some(retry) => retry,
            None => match pending.recv().await {
                Some(retry) => retry,
                None => return,
            },
        };
        while !retry.sent && retry.events.len() < max_group {
            match pending.try_recv() {
                Ok(more) if !more.sent && retry.events.len() + more.events.len() <= max_group => {
                    retry.events.extend(more.events);
                }
                Ok(more) => {
                    next = Some(more);
                    break;
                }
                Err(_) => break,
            }
        }
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
                Err(err) => {
                    tracing::debug!(error = %err, "outbox: Redis still unavailable");
                    retry.sent = true;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        retries
            .counts
            .retrying
            .fetch_sub(retry.events.len(), Ordering::AcqRel);
        retries.counts.settle(&retry.events);
    }
}
