//! Appending an event after its message is stored can fail (Redis unreachable for a moment).
//! The message is durable in MongoDB either way; the outbox keeps appending the event in the
//! background, in order, until Redis takes it, so live subscribers still get it. If Redis lost
//! its log meanwhile, the new epoch makes every client resync and reload history instead.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::Live;
use super::events::{Audience, EventId, EventKind};

const CAPACITY: usize = 10_000;

struct Pending {
    kind: EventKind,
    audience: Audience,
    data: String,
}

#[derive(Clone)]
pub struct Outbox {
    live: Live,
    queue: mpsc::Sender<Pending>,
}

impl Outbox {
    pub fn start(live: Live, shutdown: watch::Receiver<bool>) -> Self {
        let (queue, pending) = mpsc::channel(CAPACITY);
        tokio::spawn(drain(live.clone(), pending, shutdown));
        Self { live, queue }
    }

    /// Appends now, or queues for a retry and returns `None`.
    pub async fn publish(
        &self,
        kind: EventKind,
        audience: Audience,
        data: String,
    ) -> Option<EventId> {
        match self.live.publish(kind, &audience, &data).await {
            Ok(id) => Some(id),
            Err(err) => {
                tracing::warn!(error = %err, kind = kind.as_str(), "event not appended; queued for retry");
                if self
                    .queue
                    .try_send(Pending {
                        kind,
                        audience,
                        data,
                    })
                    .is_err()
                {
                    tracing::error!(
                        kind = kind.as_str(),
                        "event outbox full; event dropped (clients will see it in history)"
                    );
                }
                None
            }
        }
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
