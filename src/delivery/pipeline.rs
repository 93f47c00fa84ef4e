//! One instance's path from a post to the log: the group commit, then the appender, each a
//! task that takes its work in order, so that the log holds one instance's messages in the
//! order of their ids (history's order).
//!
//! The writer takes every post that queued up while it stored the previous batch (up to
//! [`MAX_BATCH`]) and stores them with one insert; idle, a batch is one post. Under load the
//! store sees a few large writes instead of many small ones. A stored batch goes to the
//! appender; a post that was not stored is answered at once (a 503 whose outcome is unknown
//! may have been stored: the reconciler finishes its batch then).
//!
//! The appender appends each batch with one script call, answers its posts with their event
//! ids, and hands the batch to `Finishing`. When Redis refuses, the batch is retried in place,
//! later batches waiting behind it, so that the log keeps the order; its posts wait for the
//! retry until their write bound passes, and are then answered without an event id (their
//! messages are stored). After [`GIVE_UP`] the batch is left to the reconciler. Nothing here
//! needs to outlive a crash: a batch stored and not finished is found by the reconciler.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Change, Contents, Finishing};
use crate::live::{EventId, Live};
use crate::store::{MessageRecord, NewMessage, Source, Store, Unfinished, Written};
use crate::telemetry::metrics;

/// Posts stored by one insert at most.
pub const MAX_BATCH: usize = 256;
/// Posts waiting for the writer before new ones wait to queue (backpressure).
const QUEUE: usize = 4096;
/// Batches waiting for the appender; past it a stored batch is left to the reconciler.
const APPENDS: usize = 1024;
/// How long after a batch was stored the appender may still append it; then it is left to the
/// reconciler. Well within `FINISHED_MARKER_TTL`, so that the appender can never append a
/// batch again once its marker is gone.
const GIVE_UP: Duration = Duration::from_secs(60);
/// The first wait before appending a refused batch again; it doubles up to 2 s.
const FIRST_RETRY: Duration = Duration::from_millis(100);

pub(super) struct PostJob {
    pub new: NewMessage,
    pub done: oneshot::Sender<Answer>,
}

pub(super) enum Answer {
    /// Stored; the id of its event follows once the batch is appended (`None` if it was
    /// left to the reconciler: not appended within a minute of being stored, the appender's
    /// queue full, or too many batches waiting behind one Redis refused).
    Stored(MessageRecord, oneshot::Receiver<Option<EventId>>),
    Replayed(MessageRecord),
    KeyReused,
    Failed(mongodb::error::Error),
}

/// A stored batch, for the appender.
pub(super) struct AppendJob {
    batch: Unfinished,
    contents: Contents,
    /// Who waits for each event's id, in order.
    waiters: Vec<oneshot::Sender<Option<EventId>>>,
    stored: Instant,
}

impl AppendJob {
    pub(super) fn change(change: &Change, done: oneshot::Sender<Option<EventId>>) -> Self {
        Self {
            batch: change.batch(),
            contents: change.contents(),
            waiters: vec![done],
            stored: Instant::now(),
        }
    }

    /// Answers its posts without event ids: the reconciler appends the batch.
    fn leave_to_reconciler(&mut self, why: &str) {
        tracing::warn!(batch = %self.batch.batch, "{why}; batch left to the reconciler");
        self.answer(None);
    }

    fn answer(&mut self, ids: Option<&[EventId]>) {
        for (n, waiter) in std::mem::take(&mut self.waiters).into_iter().enumerate() {
            // A request that gave up waiting needs no answer.
            let _ = waiter.send(ids.and_then(|ids| ids.get(n)).cloned());
        }
    }
}

pub(super) fn start(
    store: &Store,
    live: &Live,
    finishing: &Arc<Finishing>,
) -> (mpsc::Sender<PostJob>, mpsc::Sender<AppendJob>) {
    let (posts, queue) = mpsc::channel(QUEUE);
    let (appends, batches) = mpsc::channel(APPENDS);
    // A batch is appended by one atomic script, which trims the log as it goes: a batch
    // longer than the log would trim its own first events before any tailer read them.
    let max_batch = MAX_BATCH.min((live.event_log_max_len() / 4).max(1));
    tokio::spawn(write(store.clone(), queue, appends.clone(), max_batch));
    tokio::spawn(append(live.clone(), Arc::clone(finishing), batches));
    (posts, appends)
}

async fn write(
    store: Store,
    mut queue: mpsc::Receiver<PostJob>,
    appends: mpsc::Sender<AppendJob>,
    max_batch: usize,
) {
    let mut jobs: Vec<PostJob> = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut jobs, max_batch).await > 0 {
        let (posts, answers): (Vec<NewMessage>, Vec<_>) =
            jobs.drain(..).map(|job| (job.new, job.done)).unzip();
        tracing::debug!(posts = posts.len(), "group commit");
        let batch = store.insert_batch(posts).await;
        let mut stored = Vec::new();
        for (written, done) in batch.written.into_iter().zip(answers) {
            let answer = match written {
                Written::Stored(record) => {
                    let (event, event_id) = oneshot::channel();
                    stored.push((record.clone(), event));
                    Answer::Stored(record, event_id)
                }
                Written::Replayed(record) => Answer::Replayed(record),
                Written::KeyReused => Answer::KeyReused,
                Written::Failed(err) => Answer::Failed(err),
            };
            let _ = done.send(answer);
        }
        metrics::messages_posted(stored.len());
        if stored.is_empty() {
            continue;
        }
        // Events in the order of their messages' ids, as the reconciler would make them.
        stored.sort_by_key(|(record, _)| record.id);
        let (records, waiters): (Vec<MessageRecord>, Vec<_>) = stored.into_iter().unzip();
        let job = AppendJob {
            batch: Unfinished {
                batch: batch.id,
                at_ms: batch.at_ms,
                source: Source::Messages,
            },
            contents: Contents::of_messages(&records),
            waiters,
            stored: Instant::now(),
        };
        if let Err(full) = appends.try_send(job) {
            full.into_inner()
                .leave_to_reconciler("the appender is behind");
        }
    }
}

async fn append(live: Live, finishing: Arc<Finishing>, mut batches: mpsc::Receiver<AppendJob>) {
    // Batches behind one that Redis refused, their posts waiting within their bound.
    let mut waiting: VecDeque<AppendJob> = VecDeque::new();
    loop {
        metrics::waiting_batches("announce", waiting.len() + batches.len());
        let mut job = match waiting.pop_front() {
            Some(job) => job,
            None => match batches.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut delay = FIRST_RETRY;
        let mut refused_before = false;
        loop {
            if job.stored.elapsed() > GIVE_UP {
                job.leave_to_reconciler("not appended within a minute of being stored");
                break;
            }
            match live.append(&job.batch.batch, &job.contents.events).await {
                Ok(ids) => {
                    // Handed to finishing before the posts are answered, so that a statistics
                    // read right after the answer counts them (the read barrier).
                    let contents = std::mem::take(&mut job.contents);
                    finishing.add(contents.finished(&job.batch));
                    job.answer(Some(&ids));
                    break;
                }
                Err(err) => {
                    // The batch is stored: its events come later, and those of the batches
                    // behind it after them. Its posts wait for them within their bound, so
                    // that a post answered with an event id is in the log before its answer.
                    if !refused_before {
                        refused_before = true;
                        tracing::warn!(batch = %job.batch.batch, error = %err, "cannot append to the event log; retrying");
                    }
                    let retry = tokio::time::sleep(delay);
                    tokio::pin!(retry);
                    loop {
                        tokio::select! {
                            _ = &mut retry => break,
                            Some(mut later) = batches.recv() => {
                                if waiting.len() < APPENDS {
                                    waiting.push_back(later);
                                } else {
                                    later.leave_to_reconciler("too many batches wait for Redis");
                                }
                            }
                        }
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
