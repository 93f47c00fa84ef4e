//! Group commit for new messages.
//!
//! Every `POST /messages` without an idempotency key hands its record to one writer task per
//! instance and waits. The writer takes whatever has queued up (up to [`MAX_BATCH`]), stores it
//! with one unordered `insert` command (majority write concern), then updates the statistics
//! counters of the whole batch with one `update` command per counter collection (increments of
//! the same counter merged), and only then answers each request. Under load a batch holds
//! as many messages as arrived while the previous one was written, so the store sees a few
//! large writes instead of many small ones; idle, a batch is one message and costs what a
//! single insert does. A message is acknowledged only once its insert is acknowledged: a
//! failed insert (or a write-concern error, where durability is unknown) fails exactly the
//! requests it concerns, with nothing acknowledged that was not stored.

use mongodb::Database;
use mongodb::error::{Error, ErrorKind, Result};
use tokio::sync::{mpsc, oneshot};

use super::MessageRecord;
use super::stats::record_activity_batch;

/// Messages written by one command at most.
pub const MAX_BATCH: usize = 256;
/// Requests waiting for the writer before new ones wait to queue (backpressure).
const QUEUE: usize = 4096;

struct Job {
    record: MessageRecord,
    done: oneshot::Sender<Result<()>>,
}

#[derive(Clone)]
pub struct MessageWriter {
    jobs: mpsc::Sender<Job>,
}

impl MessageWriter {
    /// Starts the writer task; it ends when every handle is dropped.
    pub fn spawn(db: Database, write_timeout_ms: i64) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, write_timeout_ms, queue));
        Self { jobs }
    }

    /// Stores `record` and its counters; returns once the insert is acknowledged.
    pub async fn write(&self, record: MessageRecord) -> Result<MessageRecord> {
        let (done, answer) = oneshot::channel();
        let job = Job {
            record: record.clone(),
            done,
        };
        let stopped = || Error::custom("the message writer has stopped");
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())??;
        Ok(record)
    }
}

async fn run(db: Database, write_timeout_ms: i64, mut queue: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        tracing::debug!(messages = jobs.len(), "group commit");
        write_batch(&db, write_timeout_ms, jobs).await;
    }
}

async fn write_batch(db: &Database, write_timeout_ms: i64, jobs: Vec<Job>) {
    let collection = db.collection::<MessageRecord>("messages");
    let result = collection
        .insert_many(jobs.iter().map(|job| &job.record))
        .ordered(false)
        .await;
    // Which records are stored: all, none, or those the server reports inserted.
    let stored: Vec<bool> = match &result {
        Ok(_) => vec![true; jobs.len()],
        Err(err) => match err.kind.as_ref() {
            // Unordered: every record the server did not report failed is stored.
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
    let counted: Vec<&MessageRecord> = jobs
        .iter()
        .zip(&stored)
        .filter(|(_, stored)| **stored)
        .map(|(job, _)| &job.record)
        .collect();
    if !counted.is_empty()
        && let Err(err) = record_activity_batch(db, write_timeout_ms, &counted).await
    {
        // The messages are stored and acknowledged either way; statistics miss them.
        tracing::error!(error = %err, messages = counted.len(), "statistics counters not updated");
    }
    let failure = result.err();
    for (job, stored) in jobs.into_iter().zip(stored) {
        let answer = if stored {
            Ok(())
        } else {
            Err(failure
                .clone()
                .unwrap_or_else(|| Error::custom("message not stored")))
        };
        // A request that gave up waiting is not an error of the writer.
        let _ = job.done.send(answer);
    }
}
