//! The reconciler: finishes the batches that were stored and that nobody finished. One
//! instance at a time holds its lease (in MongoDB, with its place); it walks the stored
//! batches in time from its watermark up to [`Finishing`]'s lag behind the present, so that a
//! write still on its way (bounded by the write bound) is in place when it looks. A window
//! whose stored events its finish records account for costs two counts; otherwise it reads
//! the window's batch ids and finishes those without a record: appends them (once, whoever
//! else does) and records them with their counts and the new watermark, in one transaction.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Finishing;
use crate::store::Lease;

/// How often the reconciler looks.
const EVERY: Duration = Duration::from_secs(1);
/// How long a lease lasts without being renewed: then another instance takes over.
const LEASE: Duration = Duration::from_secs(5);
/// The most of the store's history, and of batches, one pass covers: a reconciler far behind
/// catches up in steps, each recorded in one transaction of bounded size.
const MAX_WINDOW_MS: i64 = 60_000;
const MAX_BATCHES: usize = 200;

pub(super) async fn run(finishing: Arc<Finishing>, mut shutdown: watch::Receiver<bool>) {
    let owner = mongodb::bson::oid::ObjectId::new().to_hex();
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        match pass(&finishing, &owner).await {
            Ok(0) => failing = false,
            Ok(finished) => {
                failing = false;
                tracing::info!(batches = finished, "finished batches that nobody finished");
            }
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(error = %err, "the reconciler cannot look yet; retrying");
            }
            Err(_) => {}
        }
    }
}

/// One pass: how many batches it finished.
async fn pass(finishing: &Finishing, owner: &str) -> anyhow::Result<usize> {
    let store = &finishing.store;
    let now = crate::store::now_ms();
    let lease_ms = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
    let Lease::Mine { watermark } = store.reconciler_lease(owner, now, now + lease_ms).await?
    else {
        return Ok(0);
    };
    let lag = i64::try_from(lag(store).as_millis()).unwrap_or(i64::MAX);
    let upto = now - lag;
    let Some(from) = watermark else {
        // The first pass of a deployment: nothing was stored before its instances started.
        store.finish(&[], Some(upto)).await?;
        return Ok(0);
    };
    let to = upto.min(from + MAX_WINDOW_MS);
    if to <= from {
        return Ok(0);
    }
    // Everything stored before `reached` is finished once this pass is recorded.
    let mut reached = to;
    let mut finished = Vec::new();
    for batch in store.unfinished(from, to).await? {
        if finished.len() == MAX_BATCHES {
            reached = batch.at_ms;
            break;
        }
        // Finished meanwhile (by its instance, or by a reconciler that took over while this
        // pass was slow): its marker may be on its way out, so it is never appended again.
        if store.is_finished(&batch.batch).await? {
            continue;
        }
        match finishing.append_stored(&batch).await {
            Ok(Some(done)) => finished.push(done),
            Ok(None) => {}
            Err(err) if retry_later(&err) => {
                reached = batch.at_ms;
                break;
            }
            // A document no version can read, say: logged and passed, not a wall.
            Err(err) => {
                tracing::error!(batch = %batch.batch, error = %err, "a stored batch cannot be finished; skipped");
            }
        }
    }
    store.finish(&finished, Some(reached)).await?;
    finishing.settle(&finished).await;
    Ok(finished.len())
}

/// Whether finishing a batch failed for a while only (the store or Redis away).
fn retry_later(err: &anyhow::Error) -> bool {
    err.downcast_ref::<mongodb::error::Error>()
        .is_none_or(crate::store::is_transient)
}

/// How far behind the present the reconciler stays: a batch is stored within the write bound
/// of its time or not at all, and two seconds more cover the clocks of instances (which must
/// agree that well) and the time to record it.
fn lag(store: &crate::store::Store) -> Duration {
    store.write_bound() + Duration::from_secs(2)
}
