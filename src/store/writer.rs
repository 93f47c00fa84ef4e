//! Group commit for new messages, with their statistics counters written behind.
//!
//! Every `POST /messages` without an idempotency key hands its record to one writer task per
//! instance and waits. The writer takes whatever has queued up (up to [`MAX_BATCH`]) and
//! stores it with one unordered `insert` command (majority write concern), then answers each
//! request. Under load a batch holds as many messages as arrived while the previous one was
//! written, so the store sees a few large writes instead of many small ones; idle, a batch is
//! one message and costs what a single insert does. A message is acknowledged only once its
//! insert is acknowledged: a failed insert fails exactly the requests it concerns, with nothing
//! acknowledged that was not stored. After a write-concern error, a timeout or a lost
//! connection the outcome is unknown: the requests get 503, and each gets its record back
//! ([`WriteFailure::maybe_stored`]) so that the handler can look for it later and announce
//! and count it if it was stored after all.
//!
//! The counter increments of stored messages are merged in memory ([`PendingCounters`]) and
//! written every [`FLUSH_EVERY`], each counter once however many messages it counts: a busy
//! room's hourly counter is updated four times a second instead of once per message. Every
//! statistics read on an instance first writes what that instance holds, so an instance reads
//! its own writes (unless that write fails, which is logged); other instances see them within
//! [`FLUSH_EVERY`] plus a write. A write is applied exactly once: a failed one is retried with
//! the same id until it is known applied (see `Increments::write_once`). A crash loses at most
//! the increments not yet written (the messages themselves are stored), and shutdown writes
//! them.

use std::future::IntoFuture;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mongodb::Database;
use mongodb::error::{Error, ErrorKind, Result};
use tokio::sync::{mpsc, oneshot};

use super::stats::Increments;
use super::{MessageRecord, write_bound};

/// Messages written by one command at most.
pub const MAX_BATCH: usize = 256;
/// Requests waiting for the writer before new ones wait to queue (backpressure).
const QUEUE: usize = 4096;
/// How often pending counter increments are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

struct Job {
    record: MessageRecord,
    done: oneshot::Sender<std::result::Result<MessageRecord, WriteFailure>>,
}

/// Why a message was not acknowledged.
#[derive(Debug)]
pub struct WriteFailure {
    pub error: Error,
    /// The record, when the write may have been applied all the same (it timed out, its
    /// connection was lost, or its write concern was not met): whether it is stored is
    /// unknown.
    pub maybe_stored: Option<MessageRecord>,
}

impl WriteFailure {
    fn not_stored(error: Error) -> Self {
        Self {
            error,
            maybe_stored: None,
        }
    }
}

/// Whether a write that failed with `err` may have been applied all the same.
pub(crate) fn outcome_unknown(err: &Error) -> bool {
    err.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
        || match err.kind.as_ref() {
            ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => true,
            ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(_)) => true,
            ErrorKind::InsertMany(failure) => failure.write_concern_error.is_some(),
            _ => false,
        }
}

#[derive(Clone)]
pub struct MessageWriter {
    jobs: mpsc::Sender<Job>,
    counters: Arc<PendingCounters>,
}

impl MessageWriter {
    /// Starts the writer and counter tasks; they end when every handle is dropped.
    pub fn spawn(db: Database, write_timeout_ms: i64) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let counters = Arc::new(PendingCounters {
            pending: Mutex::default(),
            in_flight: tokio::sync::Mutex::new(None),
            db: db.clone(),
            write_timeout_ms,
        });
        tokio::spawn(run(db, write_timeout_ms, queue, Arc::clone(&counters)));
        tokio::spawn(flush_periodically(Arc::downgrade(&counters)));
        Self { jobs, counters }
    }

    /// Stores `record`; returns once its insert is acknowledged.
    pub async fn write(
        &self,
        record: MessageRecord,
    ) -> std::result::Result<MessageRecord, WriteFailure> {
        let (done, answer) = oneshot::channel();
        let stopped = || WriteFailure::not_stored(Error::custom("the message writer has stopped"));
        self.jobs
            .send(Job { record, done })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Counts a message stored outside the group commit (the idempotent path), or found
    /// stored after its insert failed with an unknown outcome; written behind like the others.
    pub fn count(&self, record: &MessageRecord) {
        self.counters.add(std::iter::once(record));
    }

    /// Writes the counter increments held so far (a read barrier for statistics). The write
    /// runs in its own task: a caller that stops waiting cannot drop increments in flight.
    pub async fn flush_counters(&self) -> Result<()> {
        let counters = Arc::clone(&self.counters);
        tokio::spawn(async move { counters.flush().await })
            .await
            .map_err(|err| Error::custom(format!("counter flush task failed: {err}")))?
    }
}

async fn run(
    db: Database,
    write_timeout_ms: i64,
    mut queue: mpsc::Receiver<Job>,
    counters: Arc<PendingCounters>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        tracing::debug!(messages = jobs.len(), "group commit");
        write_batch(&db, write_bound(write_timeout_ms), jobs, &counters).await;
    }
}

async fn write_batch(db: &Database, bound: Duration, jobs: Vec<Job>, counters: &PendingCounters) {
    let collection = db.collection::<MessageRecord>("messages");
    let insert = collection
        .insert_many(jobs.iter().map(|job| &job.record))
        .ordered(false)
        .into_future();
    // A stalled connection must not hold every post of the instance: past the bound the
    // whole batch fails (its fate unknown, like a write-concern error).
    let result = tokio::time::timeout(bound, insert)
        .await
        .unwrap_or_else(|_| Err(super::timed_out("the message insert")));
    // Which records are stored: all, none, or those the server did not report failed. After
    // a failure whose outcome is unknown, none counts as stored.
    let stored: Vec<bool> = match &result {
        Ok(_) => vec![true; jobs.len()],
        Err(err) => match err.kind.as_ref() {
            ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => {
                let mut stored = vec![true; jobs.len()];
                for failed in failure.write_errors.iter().flatten() {
                    if let Some(slot) = stored.get_mut(failed.index) {
                        *slot = false;
                    }
                }
                stored
            }
            _ => vec![false; jobs.len()],
        },
    };
    let unknown = result.as_ref().err().is_some_and(outcome_unknown);
    counters.add(
        jobs.iter()
            .zip(&stored)
            .filter(|(_, stored)| **stored)
            .map(|(job, _)| &job.record),
    );
    let failure = result.err();
    for (job, stored) in jobs.into_iter().zip(stored) {
        let answer = if stored {
            Ok(job.record)
        } else {
            let error = failure
                .clone()
                .unwrap_or_else(|| Error::custom("message not stored"));
            Err(WriteFailure {
                error,
                maybe_stored: unknown.then_some(job.record),
            })
        };
        // A request that gave up waiting is not an error of the writer.
        let _ = job.done.send(answer);
    }
}

/// Counter increments of stored messages not yet written.
pub struct PendingCounters {
    pending: Mutex<Increments>,
    /// The flush being written, until it is known applied: retried with its id and increments
    /// unchanged, so that it is applied exactly once (see `Increments::write_once`). Also one
    /// write at a time, so that a read barrier waits for a write in flight.
    in_flight: tokio::sync::Mutex<Option<Flush>>,
    db: Database,
    write_timeout_ms: i64,
}

struct Flush {
    id: String,
    increments: Increments,
}

impl PendingCounters {
    fn add<'a>(&self, records: impl Iterator<Item = &'a MessageRecord>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for record in records {
            pending.count(record);
        }
    }

    /// Writes the flush in flight, if one is, then what is pending.
    async fn flush(&self) -> Result<()> {
        let mut in_flight = self.in_flight.lock().await;
        for _ in 0..2 {
            let flush = match in_flight.take() {
                Some(flush) => flush,
                None => {
                    let increments = std::mem::take(
                        &mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner),
                    );
                    if increments.is_empty() {
                        return Ok(());
                    }
                    Flush {
                        id: mongodb::bson::oid::ObjectId::new().to_hex(),
                        increments,
                    }
                }
            };
            let written = flush
                .increments
                .write_once(&self.db, &flush.id, write_bound(self.write_timeout_ms))
                .await;
            if let Err(err) = written {
                *in_flight = Some(flush);
                return Err(err);
            }
        }
        Ok(())
    }
}

async fn flush_periodically(counters: std::sync::Weak<PendingCounters>) {
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(counters) = counters.upgrade() else {
            return;
        };
        if let Err(err) = counters.flush().await {
            tracing::warn!(error = %err, "statistics counters not written yet; will retry");
        }
    }
}
