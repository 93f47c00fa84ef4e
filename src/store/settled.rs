//! Per-instance memory of what was read from settled time ranges: counter sums, and the
//! messages of whole hours (for the raw edges of windows).
//!
//! A message is timestamped by the instance that stores it and counted when its batch is
//! finished: by that instance once its events are appended, or by the reconciler within
//! `2 × MONGODB_TIMEOUT_MS + 2 s` and a pass (longer only while Redis refuses appends), so an hourly or daily bucket stops changing shortly after it ends (instances are
//! expected to keep their clocks within seconds of each other, as NTP does). Sums over buckets that
//! ended more than [`SETTLE`] ago are kept here and reused by every request whose window covers
//! the same range: a sliding 7-day window then reads only the current hour from MongoDB.
//!
//! Entries expire after [`TTL`], so a counter written unusually late (a write that took longer
//! than [`SETTLE`], or a history loaded under a running server) shows up within minutes, and
//! the weight held (subjects, or messages) is bounded by [`CAPACITY`] per memory (a `moka`
//! cache: it evicts what is least likely to be asked again).
//! Every instance computes the same sums from the same counters, so instances never disagree
//! for longer than that.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

/// How long after its end a bucket is taken to be final.
pub const SETTLE: Duration = Duration::from_secs(5 * 60);
/// How long a remembered value is served.
pub const TTL: Duration = Duration::from_secs(10 * 60);
/// Weight (subjects, or messages) held across all entries of one memory.
pub const CAPACITY: u64 = 500_000;

/// What an entry costs against [`CAPACITY`]: subjects for sums, messages for raw hours.
pub trait Weight {
    fn weight(&self) -> usize;
}

impl<T> Weight for Arc<HashMap<String, T>> {
    fn weight(&self) -> usize {
        self.len().max(1)
    }
}

impl<T> Weight for Arc<Vec<T>> {
    fn weight(&self) -> usize {
        self.len().max(1)
    }
}

/// Values computed from settled data, each served for [`TTL`], at most [`CAPACITY`] in weight.
pub type Memory<K, V> = Cache<K, V>;

/// An empty memory.
pub fn memory<K, V>() -> Memory<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Weight + Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(CAPACITY)
        .weigher(|_, value: &V| u32::try_from(value.weight()).unwrap_or(u32::MAX))
        .time_to_live(TTL)
        .build()
}
