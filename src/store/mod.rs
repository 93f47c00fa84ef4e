//! All MongoDB access: connection, indexes, and one function per query. Handlers never build
//! queries; everything that reaches a filter here is a parsed domain value.
//!
//! Equality filters on fields other than `_id` are written `{field: {$eq: value}}`. MongoDB
//! treats that exactly like `{field: value}`; the local stand-in (nx-27017) turns the short
//! form into "equal, or an array containing it", which no index can serve, so every such read
//! scanned the whole collection there (a history page took 500 ms at 200,000 messages; with
//! `$eq`, an index search of under a millisecond).

mod finish;
mod ids;
mod messages;
mod reactions;
mod reads;
mod rooms;
mod search;
mod settled;
pub mod stats;
mod users;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mongodb::bson::{Bson, Document, doc};
use mongodb::event::{EventHandler, command::CommandEvent};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReadConcern, ReadPreference,
    SelectionCriteria, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};

pub use finish::{Effects, Finished, Lease, Source, Unfinished, mention_id};
pub use messages::{
    IDEMPOTENCY_WINDOW, InsertedBatch, MentionRef, MessageRecord, NewMessage, Target, Written,
    direct_conversation, room_conversation,
};
pub use reactions::{ReactionChange, Reactions};
pub use reads::{ReadChange, UNREAD_CAP, seq_before};
pub use rooms::{CreateRoomError, DEFAULT_ROOM, Joined, MembershipChange, RoomRecord};
pub use search::{MAX_QUERY_CHARS, SearchMode, terms};
pub use users::{InsertUserError, NewUser, UserRecord};

use crate::config::Settings;
use crate::telemetry::metrics;

/// How often the driver checks each member of the replica set (`heartbeatFrequencyMS`).
const HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Store {
    db: Database,
    /// How long one operation may take before it is given up (see [`Store::write_bound`]).
    write_bound: Duration,
    /// Counter sums over ranges that no longer change (see `settled`).
    settled: settled::Memory<stats::RangeKey, stats::Tallies>,
    /// The messages of settled hours, by hour start (ms), for the raw edges of windows.
    settled_edges: settled::Memory<i64, Arc<Vec<stats::EdgeMessage>>>,
    /// Rooms by id: they never change once created.
    known_rooms: moka::sync::Cache<crate::domain::RoomId, RoomRecord>,
    /// Grouped reads of users' rooms (see `rooms::RoomsOfUsers`).
    rooms_of_users: rooms::RoomsOfUsers,
    /// How search works on this server, found when its index is created.
    search_mode: Arc<std::sync::OnceLock<SearchMode>>,
}

impl Store {
    /// Builds the client. No network traffic happens until the first operation, so the
    /// service can start while MongoDB is still coming up.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let mut options = ClientOptions::parse(&settings.mongodb_uri)
            .await
            .context("MONGODB_URI is not a valid MongoDB connection string")?;
        options
            .app_name
            .get_or_insert_with(|| "chat-server".to_owned());
        options.server_selection_timeout = Some(settings.mongodb_timeout);
        options.connect_timeout = Some(settings.mongodb_timeout);
        // How soon the driver sees a new primary, or the old one back, when no operation
        // tells it (the default, 10 s, kept posts failing for 4 s after a step-down ended).
        options.heartbeat_freq.get_or_insert(HEARTBEAT);
        // On a replica set an acknowledged write must survive a primary failover.
        options.retry_writes.get_or_insert(true);
        options.retry_reads.get_or_insert(true);
        // Majority and journaled, bounded: an acknowledged write survives the loss of a member
        // and a crash of the primary; a write that cannot reach a majority fails instead of
        // waiting. (MongoDB journals majority writes by default; SecantusDB only when asked:
        // without `j`, a SIGKILL lost the last acknowledged writes.)
        options.write_concern.get_or_insert_with(|| {
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .w_timeout(settings.mongodb_timeout)
                .build()
        });
        // Every command's round trip and outcome, for the metrics (the driver builds an event
        // per command only when asked).
        if settings.metrics_addr.is_some() {
            options.command_event_handler = Some(EventHandler::callback(|event| match event {
                CommandEvent::Succeeded(done) => {
                    metrics::store_command(&done.command_name, done.duration, false);
                }
                CommandEvent::Failed(failed) => {
                    metrics::store_command(&failed.command_name, failed.duration, true);
                }
                _ => {}
            }));
        }
        let client = Client::with_options(options).context("cannot create the MongoDB client")?;
        let db = client.database(&settings.mongodb_database);
        // The write-concern wait plus as long again for the connection.
        let write_bound = settings.mongodb_timeout * 2;
        Ok(Self {
            rooms_of_users: rooms::RoomsOfUsers::spawn(db.clone(), write_bound),
            db,
            write_bound,
            settled: settled::memory(),
            settled_edges: settled::memory(),
            known_rooms: moka::sync::Cache::new(rooms::KNOWN_ROOMS),
            search_mode: Arc::default(),
        })
    }

    /// Creates the indexes the queries rely on; idempotent.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        users::ensure_indexes(&self.db).await?;
        rooms::ensure_indexes(&self.db).await?;
        stats::ensure_indexes(&self.db).await?;
        finish::ensure_indexes(&self.db).await?;
        reads::ensure_indexes(&self.db).await?;
        reactions::ensure_indexes(&self.db).await?;
        let mode = search::ensure_index(&self.db).await?;
        let _ = self.search_mode.set(mode);
        messages::ensure_indexes(&self.db).await
    }

    /// Retries [`Store::ensure_indexes`] until it succeeds or `deadline` passes, so that the
    /// service can be started before its database (as `docker compose up` does).
    pub async fn ensure_indexes_within(&self, deadline: Duration) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            match self.ensure_indexes().await {
                Ok(()) => return Ok(()),
                Err(err) if started.elapsed() < deadline => {
                    tracing::warn!(error = %err, "MongoDB is not ready yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => return Err(err).context("cannot create the MongoDB indexes"),
            }
        }
    }

    /// Whether the server the driver reaches is a writable primary (`hello`), asked of any
    /// member: during a failover the set answers, but nothing can be written.
    pub async fn writable_primary(&self) -> mongodb::error::Result<bool> {
        let any_member =
            SelectionCriteria::ReadPreference(ReadPreference::Nearest { options: None });
        let hello = self
            .db
            .run_command(doc! { "hello": 1 })
            .selection_criteria(any_member)
            .await?;
        Ok(hello.get_bool("isWritablePrimary").unwrap_or(false))
    }

    /// How long one write may take before it is given up as failed: the write-concern wait
    /// plus as long again for the connection.
    pub(crate) fn write_bound(&self) -> Duration {
        self.write_bound
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// How search works here (text until the indexes were made).
    pub fn search_mode(&self) -> SearchMode {
        self.search_mode.get().copied().unwrap_or(SearchMode::Text)
    }

    /// `operation`, given up as timed out (its outcome unknown) past the write bound.
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        operation: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> mongodb::error::Result<T> {
        let deadline = tokio::time::Instant::now() + self.write_bound();
        bounded_until(deadline, what, operation).await
    }

    /// A collection read with majority read concern: for reads that decide to announce or
    /// count, which must never act on a write a failover could roll back.
    pub(crate) fn majority<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.db.collection_with_options(
            name,
            CollectionOptions::builder()
                .read_concern(ReadConcern::majority())
                .build(),
        )
    }
}

/// `operation`, given up as timed out (its outcome unknown) at `deadline`.
pub(crate) async fn bounded_until<T>(
    deadline: tokio::time::Instant,
    what: &str,
    operation: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
) -> mongodb::error::Result<T> {
    tokio::time::timeout_at(deadline, operation.into_future())
        .await
        .unwrap_or_else(|_| Err(timed_out(what)))
}

/// Now, in milliseconds since the epoch, as stored times are.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A boolean field as the servers return it: nx-27017 stores a boolean that `$set` writes into
/// an existing document as 0 or 1 (docs/local-servers.md).
pub(crate) fn lenient_bool<'de, D: serde::Deserializer<'de>>(value: D) -> Result<bool, D::Error> {
    use serde::Deserialize;
    Ok(match Bson::deserialize(value)? {
        Bson::Boolean(b) => b,
        other => integer(Some(&other)).is_some_and(|n| n != 0),
    })
}

/// An integer field as the servers return it (32 or 64 bits).
pub(crate) fn integer(value: Option<&Bson>) -> Option<i64> {
    match value? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

/// The store cannot be used right now (a race with its own expiry, the process ending): a
/// 503, as a store that is away.
pub(crate) fn unavailable(what: &str) -> mongodb::error::Error {
    std::io::Error::other(what.to_owned()).into()
}

/// A store call that did not finish within its bound. An I/O error, like an unreachable
/// server: the client gets a 503 and may retry (for a write, its outcome is unknown).
pub(crate) fn timed_out(what: &str) -> mongodb::error::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took too long"),
    )
    .into()
}

/// The index `name` on `keys`, with `options` (their name is set here).
pub(super) fn index_with(name: &str, keys: Document, mut options: IndexOptions) -> IndexModel {
    options.name = Some(name.to_owned());
    IndexModel::builder().keys(keys).options(options).build()
}

/// The plain index `name` on `keys`.
pub(super) fn index(name: &str, keys: Document) -> IndexModel {
    index_with(name, keys, IndexOptions::default())
}

/// Whether a conditional upsert changed a document: its filter names the document's id and
/// the state it must not already be in, so a match is updated, no document is inserted, and a
/// document already in that state makes the insert fail on its id, which is "no change".
pub(super) fn changed(
    result: mongodb::error::Result<mongodb::results::UpdateResult>,
) -> mongodb::error::Result<bool> {
    match result {
        Ok(result) => Ok(result.modified_count > 0 || result.upserted_id.is_some()),
        Err(err) if is_duplicate_key(&err) => Ok(false),
        Err(err) => Err(err),
    }
}

/// True when a write failed on a unique index.
pub(crate) fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    const DUPLICATE_KEY: i32 = 11000;
    server_codes(err).contains(&DUPLICATE_KEY)
}

/// Server error codes of a failover or of a server that is going away, after which the same
/// request can succeed (the driver's retryable codes, as the SDAM and retryable-writes specs
/// list them): not primary (10107, 13435, 10058), recovering or shutting down (11600, 11602,
/// 13436, 189, 91), host and network trouble (6, 7, 89, 9001), 134 read concern majority not
/// available yet, 262 and 50 time limits exceeded, 64 write concern failed, 112 write conflict,
/// 251 no such transaction.
const TRANSIENT_CODES: [i32; 18] = [
    10107, 13435, 10058, 11600, 11602, 13436, 189, 91, 6, 7, 89, 9001, 134, 262, 50, 64, 112, 251,
];

/// Whether `err` is temporary: the store is unreachable or has no writable primary (a
/// failover), or the operation ran out of time. The client gets a 503 and may retry.
pub fn is_transient(err: &mongodb::error::Error) -> bool {
    use mongodb::error::{
        ErrorKind, RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR,
        UNKNOWN_TRANSACTION_COMMIT_RESULT,
    };
    [
        RETRYABLE_WRITE_ERROR,
        TRANSIENT_TRANSACTION_ERROR,
        UNKNOWN_TRANSACTION_COMMIT_RESULT,
    ]
    .iter()
    .any(|label| err.contains_label(label))
        || matches!(
            err.kind.as_ref(),
            ErrorKind::ServerSelection { .. }
                | ErrorKind::Io(_)
                | ErrorKind::ConnectionPoolCleared { .. }
                | ErrorKind::Shutdown
                | ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(_))
        )
        || matches!(err.kind.as_ref(), ErrorKind::InsertMany(failure) if failure.write_concern_error.is_some())
        || server_codes(err)
            .iter()
            .any(|code| TRANSIENT_CODES.contains(code))
}

/// The server error codes `err` carries (several for a partly failed `insert_many`).
pub(crate) fn server_codes(err: &mongodb::error::Error) -> Vec<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Command(e) => vec![e.code],
        ErrorKind::Write(WriteFailure::WriteError(e)) => vec![e.code],
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => vec![e.code],
        ErrorKind::InsertMany(failure) => failure
            .write_errors
            .iter()
            .flatten()
            .map(|e| e.code)
            .chain(failure.write_concern_error.iter().map(|e| e.code))
            .collect(),
        _ => Vec::new(),
    }
}
