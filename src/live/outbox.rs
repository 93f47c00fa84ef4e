//! Appending an event after its message is stored can fail (Redis unreachable for a moment).
//! The message is durable in MongoDB either way; the outbox keeps appending the event in the
//! background, in order, until Redis takes it, so live subscribers still get it. If Redis lost
//! its log meanwhile, the new epoch makes every client resync and reload history instead.
//!
//! Appends are grouped like the message writes: one task per instance takes every event that
//! queued up while the previous group was appended (up to [`MAX_GROUP`], and at most a quarter
//! of the log's length) and appends them with one script call. Under load that is one Redis
//! round trip and one Lua invocation per group instead of per message; idle, a group is one
//! event. A group that fails goes to the retries with everything queued behind it, at once.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::Live;
use super::events::{Audience, EventId, EventKind};

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

#[derive(Clone)]
pub struct Outbox {
    requests: mpsc::Sender<Request>,
    retries: mpsc::Sender<Pending>,
}

impl Outbox {
    pub fn start(live: Live, shutdown: watch::Receiver<bool>) -> Self {
        let (retries, pending) = mpsc::channel(CAPACITY);
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
        tokio::spawn(drain(live, pending, shutdown));
        Self { requests, retries }
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
            retry_later(&self.retries, request.event);
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

async fn append_groups(
    live: Live,
    mut queue: mpsc::Receiver<Request>,
    max_group: usize,
    retries: mpsc::Sender<Pending>,
) {
    let mut group: Vec<Request> = Vec::with_capacity(max_group);
    while queue.recv_many(&mut group, max_group).await > 0 {
        let requests = std::mem::take(&mut group);
        let events: Vec<(EventKind, &Audience, &str)> = requests
            .iter()
            .map(|r| (r.event.kind, &r.event.audience, r.event.data.as_str()))
            .collect();
        match live.publish_all(&events).await {
            Ok(ids) => {
                for (request, id) in requests.into_iter().zip(ids) {
                    // A request that gave up waiting still had its event appended.
                    let _ = request.appended.send(Some(id));
                }
            }
            Err(err) => {
                // Everything queued meanwhile goes to the retries as well, in order, instead
                // of waiting for its own failed attempt (up to the response timeout per group
                // while Redis hangs): the POSTs answer now, and the retries deliver later.
                let mut failed = 0_usize;
                let queued = std::iter::from_fn(|| queue.try_recv().ok()).take(CAPACITY);
                for request in requests.into_iter().chain(queued) {
                    retry_later(&retries, request.event);
                    let _ = request.appended.send(None);
                    failed += 1;
                }
                tracing::warn!(error = %err, events = failed, "events not appended; queued for retry");
            }
        }
    }
}

fn retry_later(retries: &mpsc::Sender<Pending>, event: Pending) {
    let kind = event.kind;
    if retries.try_send(event).is_err() {
        tracing::error!(
            kind = kind.as_str(),
            "event outbox full; event dropped (clients will see it in history)"
        );
    }
}

async fn drain(
    live: Live,
    mut pending: mpsc::Receiver<Pending>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            next = pending.recv() => next,
            _ = shutdown.changed() => return,
        };
        let Some(event) = next else { return };
        let mut delay = Duration::from_millis(100);
        while let Err(err) = live.publish(event.kind, &event.audience, &event.data).await {
            tracing::debug!(error = %err, "outbox: Redis still unavailable");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
