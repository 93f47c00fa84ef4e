//! The delivery path: how a post or a membership change becomes durable, reaches every stream
//! of its audience once, and is counted once. Its promises and the one mechanism that keeps
//! each are in `docs/delivery.md`; in short:
//!
//! - **Batches.** Posts are stored by a group commit (`pipeline`): one insert per batch, ids
//!   that sort in the order of storage, the batch id on every message. Every other change (a
//!   membership, a read marker, a reaction, an edit or deletion) is a batch of its own,
//!   stored with what it changes ([`Change`]).
//! - **The log.** A batch's events are appended to the Redis log by one script that also sets
//!   the batch's marker, so that any number of appends of one batch append it once.
//! - **Finish records.** A batch is counted in the transaction that records it finished; the
//!   record's unique id makes that exactly once, whoever finishes it.
//! - **The reconciler.** One instance at a time walks the stored batches in time, a little
//!   behind the present, and finishes any without a record: its instance died, Redis was
//!   away, or its write had an unknown outcome.

mod payload;
mod pipeline;
mod reconciler;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use payload::{
    MessageResponse, ReactionCount, ReactionEvent, ReadEvent, RoomMemberEvent, TypingEvent,
    UserRef, audience_of,
};

use crate::live::{EventId, EventKind, Live, NewEvent};
use crate::store::stats::Increments;
use crate::store::{
    Effects, Finished, MembershipChange, MessageRecord, NewMessage, ReactionChange, ReadChange,
    Source, Store, Unfinished,
};
use crate::telemetry::metrics;

/// A stored change that is a batch of its own, to announce.
pub enum Change {
    Membership(MembershipChange),
    Read(ReadChange),
    Reaction(ReactionChange),
    /// An edit or a deletion: the message as it is now.
    Message(Box<MessageRecord>),
}

impl Change {
    fn batch(&self) -> Unfinished {
        let (batch, at_ms, source) = match self {
            Change::Membership(c) => (&c.batch, c.at_ms, Source::Membership),
            Change::Read(c) => (&c.batch, c.at_ms, Source::ReadMarker),
            Change::Reaction(c) => (&c.batch, c.at_ms, Source::Reaction),
            Change::Message(m) => (
                m.change_batch.as_ref().unwrap_or(&m.batch),
                m.changed_at_ms.unwrap_or(m.at_ms),
                Source::MessageChange,
            ),
        };
        Unfinished {
            batch: batch.clone(),
            at_ms,
            source,
        }
    }

    fn contents(&self) -> Contents {
        let (event, effects) = match self {
            Change::Membership(c) => (payload::membership_event(c), Effects::default()),
            Change::Read(c) => (payload::read_event(c), Effects::default()),
            Change::Reaction(c) => (payload::reaction_event(c), Effects::default()),
            Change::Message(m) => (payload::change_event(m), m.effects_of_change()),
        };
        Contents {
            events: vec![event],
            increments: Increments::default(),
            effects,
        }
    }
}

/// What a stored batch announces, and what finishing it writes besides its record.
#[derive(Default)]
struct Contents {
    events: Vec<NewEvent>,
    increments: Increments,
    effects: Effects,
}

impl Contents {
    /// A batch of new messages, in the order of their ids.
    fn of_messages(messages: &[MessageRecord]) -> Self {
        let mut increments = Increments::default();
        messages.iter().for_each(|m| increments.count(m));
        Contents {
            events: messages
                .iter()
                .map(|m| payload::message_event(m, EventKind::Message))
                .collect(),
            increments,
            effects: MessageRecord::effects_of_new(messages),
        }
    }

    /// The record of `batch` finished, once these contents are appended.
    fn finished(self, batch: &Unfinished) -> Finished {
        Finished {
            batch: batch.batch.clone(),
            at_ms: batch.at_ms,
            source: batch.source,
            events: i64::try_from(self.events.len()).unwrap_or(i64::MAX),
            increments: self.increments,
            effects: self.effects,
        }
    }
}

/// How often the batches an instance appended are recorded finished (and counted).
pub const FINISH_EVERY: Duration = Duration::from_millis(250);

/// A post, as the pipeline answers it.
pub enum Posted {
    Created(MessageResponse),
    /// A retry with the key of a stored post.
    Replayed(MessageResponse),
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("the idempotency key was used for a different message")]
    KeyReused,
    /// Not stored, or its outcome unknown (then it is finished later if it was stored).
    #[error(transparent)]
    Store(#[from] mongodb::error::Error),
}

#[derive(Clone)]
pub struct Delivery {
    /// How long a post waits for its answer: the store's write bound.
    bound: Duration,
    posts: mpsc::Sender<pipeline::PostJob>,
    appends: mpsc::Sender<pipeline::AppendJob>,
    finishing: Arc<Finishing>,
}

impl Delivery {
    /// Starts the pipeline, the finishing of appended batches and the reconciler. The last
    /// two stop with `shutdown` (what is left unfinished, another instance's reconciler
    /// finishes); the pipeline serves the requests still draining, and ends with the process.
    pub fn start(store: Store, live: Live, shutdown: watch::Receiver<bool>) -> Self {
        let finishing = Arc::new(Finishing {
            pending: Mutex::default(),
            writing: tokio::sync::Mutex::new(()),
            store: store.clone(),
            live: live.clone(),
        });
        let (posts, appends) = pipeline::start(&store, &live, &finishing);
        tokio::spawn(Arc::clone(&finishing).run(shutdown.clone()));
        tokio::spawn(reconciler::run(Arc::clone(&finishing), shutdown));
        Self {
            bound: store.write_bound(),
            posts,
            appends,
            finishing,
        }
    }

    /// Stores a post with the next batch and announces it; answers once it is in the log (or,
    /// when it cannot be appended within the write bound, without its event id: the message is
    /// stored, and its batch is appended and finished later). A post not
    /// answered within the write bound (the store hangs, or batches ahead of it are slow)
    /// fails, its outcome unknown: if it is stored after all, its batch is finished as usual.
    pub async fn post(&self, new: NewMessage) -> Result<Posted, PostError> {
        let (done, answer) = oneshot::channel();
        // Only while the process ends: as temporary as a store that is away.
        let stopped = || PostError::Store(crate::store::unavailable("the pipeline stopped"));
        let queued = async {
            self.posts
                .send(pipeline::PostJob { new, done })
                .await
                .map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())
        };
        let deadline = tokio::time::Instant::now() + self.bound;
        let answer = tokio::time::timeout_at(deadline, queued)
            .await
            .map_err(|_| PostError::Store(crate::store::timed_out("the message insert")))??;
        match answer {
            pipeline::Answer::Stored(record, appended) => {
                let mut response = MessageResponse::from(&record);
                // Stored: the post succeeded whatever the append does, within the bound.
                let event_id = tokio::time::timeout_at(deadline, appended).await;
                response.event_id = event_id
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .map(|id| id.to_string());
                Ok(Posted::Created(response))
            }
            pipeline::Answer::Replayed(record) => {
                let replay = tokio::time::timeout_at(deadline, self.replay(&record)).await;
                Ok(Posted::Replayed(
                    replay.unwrap_or_else(|_| MessageResponse::from(&record)),
                ))
            }
            pipeline::Answer::KeyReused => Err(PostError::KeyReused),
            pipeline::Answer::Failed(err) => Err(PostError::Store(err)),
        }
    }

    /// The answer to a retry of a stored post: the message, and its event's id. If its batch
    /// is not finished (its first attempt died, or got a 503), it is finished now, once.
    pub async fn replay(&self, record: &MessageRecord) -> MessageResponse {
        let mut response = MessageResponse::from(record);
        let event_id = self.finishing.replayed_event(record).await;
        response.event_id = event_id.map(|id| id.to_string());
        response
    }

    /// Announces a stored change (a batch of its own), in order with the posts. Waits, within
    /// the write bound, for it to be appended, so that what the caller does next comes after
    /// it in the log (a join before the posts that follow it); past the bound (Redis away) it
    /// returns, and the change is appended by a later attempt or by the reconciler.
    pub async fn announce(&self, change: Change) {
        let (done, answer) = oneshot::channel();
        let job = pipeline::AppendJob::change(&change, done);
        let deadline = tokio::time::Instant::now() + self.bound;
        match tokio::time::timeout_at(deadline, self.appends.send(job)).await {
            Ok(Ok(())) => {
                let _ = tokio::time::timeout_at(deadline, answer).await;
            }
            // The pipeline stopped: the process ends.
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!("the appender is behind; change left to the reconciler"),
        }
    }

    /// Records what this instance appended as finished (counting it): the last step of a
    /// shutdown.
    pub async fn flush(&self) -> mongodb::error::Result<()> {
        self.finishing.flush().await
    }

    /// The statistics read barrier: what this instance appended is counted first, so that an
    /// instance reads its own posts. If that fails the read goes on without them (they are
    /// counted later), rather than failing too.
    pub async fn before_reading_counts(&self) {
        if let Err(err) = self.flush().await {
            tracing::warn!(error = %err, "statistics read without this instance's latest counts");
        }
    }
}

/// Batches appended by this instance, waiting to be recorded finished.
pub(crate) struct Finishing {
    pending: Mutex<Vec<Finished>>,
    /// One write at a time, so that a read barrier also waits for a write in flight.
    writing: tokio::sync::Mutex<()>,
    store: Store,
    live: Live,
}

impl Finishing {
    fn add(&self, finished: Finished) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.push(finished);
        metrics::waiting_batches("record", pending.len());
    }

    /// Records the pending batches finished, with their counts. On failure they stay
    /// pending, and are recorded (exactly once) by a later call.
    async fn flush(&self) -> mongodb::error::Result<()> {
        let _turn = self.writing.lock().await;
        let batches =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batches.is_empty() {
            return Ok(());
        }
        if let Err(err) = self.store.finish(&batches, None).await {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let newer = std::mem::replace(&mut *pending, batches);
            pending.extend(newer);
            metrics::waiting_batches("record", pending.len());
            return Err(err);
        }
        metrics::waiting_batches(
            "record",
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
        );
        self.settle(&batches).await;
        Ok(())
    }

    async fn settle(&self, batches: &[Finished]) {
        if batches.is_empty() {
            return;
        }
        let ids: Vec<&str> = batches.iter().map(|b| b.batch.as_str()).collect();
        if let Err(err) = self.live.settle_markers(&ids).await {
            tracing::debug!(error = %err, "batch markers left to expire in a day");
        }
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(FINISH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(err) = self.flush().await {
                tracing::warn!(error = %err, "batches not recorded finished yet; will retry");
            }
        }
    }

    /// What a stored batch announces and writes, as its first append made it. Empty when
    /// nothing of it is stored (any more).
    async fn contents_of(&self, batch: &Unfinished) -> mongodb::error::Result<Option<Contents>> {
        let (store, id, at) = (&self.store, &batch.batch, batch.at_ms);
        let change = match batch.source {
            Source::Messages => {
                let messages = store.batch_messages(id, at).await?;
                return Ok((!messages.is_empty()).then(|| Contents::of_messages(&messages)));
            }
            Source::Membership => store
                .membership_change(id, at)
                .await?
                .map(Change::Membership),
            Source::ReadMarker => store.read_change(id, at).await?.map(Change::Read),
            Source::Reaction => store.reaction_change(id, at).await?.map(Change::Reaction),
            Source::MessageChange => store
                .message_change(id, at)
                .await?
                .map(|m| Change::Message(Box::new(m))),
        };
        Ok(change.map(|c| c.contents()))
    }

    /// Appends a stored batch (once, whoever else does: see `Live::append`); what to record.
    /// `None` when nothing of it is stored.
    async fn append_stored(&self, batch: &Unfinished) -> anyhow::Result<Option<Finished>> {
        let Some(contents) = self.contents_of(batch).await? else {
            return Ok(None);
        };
        self.live.append(&batch.batch, &contents.events).await?;
        Ok(Some(contents.finished(batch)))
    }

    /// For a retried post: its event's id, appending and finishing its batch if no one has.
    /// Best effort: otherwise the reconciler finishes it, and the answer has no event id.
    async fn replayed_event(&self, record: &MessageRecord) -> Option<EventId> {
        let batch = Unfinished {
            batch: record.batch.clone(),
            at_ms: record.at_ms,
            source: Source::Messages,
        };
        let messages = self
            .store
            .batch_messages(&batch.batch, batch.at_ms)
            .await
            .ok()?;
        let position = messages.iter().position(|m| m.id == record.id)?;
        let ids = if self.store.is_finished(&batch.batch).await.ok()? {
            // Never append a finished batch: its marker has the ids while it is kept.
            self.live.marker(&batch.batch).await.ok()??
        } else {
            let contents = Contents::of_messages(&messages);
            let ids = self
                .live
                .append(&batch.batch, &contents.events)
                .await
                .ok()?;
            self.add(contents.finished(&batch));
            ids
        };
        ids.get(position).cloned()
    }
}
