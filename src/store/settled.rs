//! Per-instance memory of what was read from settled time ranges: counter sums, and the
//! messages of whole hours (for the raw edges of windows).
//!
//! A message is timestamped by the instance that stores it and counted in the same group
//! commit (or, when its insert's outcome was unknown, once it is found stored, within 80 s),
//! so an hourly or daily bucket stops changing shortly after it ends (instances are
//! expected to keep their clocks within seconds of each other, as NTP does). Sums over buckets that
//! ended more than [`SETTLE`] ago are kept here and reused by every request whose window covers
//! the same range: a sliding 7-day window then reads only the current hour from MongoDB.
//!
//! Entries expire after [`TTL`], so a counter written unusually late (a write that took longer
//! than [`SETTLE`], or a history loaded under a running server) shows up within minutes, and
//! the weight held (subjects, or messages) is bounded by [`CAPACITY`] per memory, oldest entries
//! evicted first.
//! Every instance computes the same sums from the same counters, so instances never disagree
//! for longer than that.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::stats::{Kind, Level, Subjects, Tally};

/// How long after its end a bucket is taken to be final.
pub const SETTLE: Duration = Duration::from_secs(5 * 60);
/// How long a remembered sum is served.
pub const TTL: Duration = Duration::from_secs(10 * 60);
/// Weight (subjects, or messages) held across all entries of one memory.
pub const CAPACITY: usize = 500_000;

/// Sums of one kind of counter over buckets `[from, to)` (ms) of one level, for some subjects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RangeKey {
    pub kind: Kind,
    pub level: Level,
    pub from: i64,
    pub to: i64,
    pub subjects: Subjects,
}

pub type Tallies = Arc<HashMap<String, Tally>>;

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
pub struct SettledRanges<K = RangeKey, V = Tallies> {
    inner: Mutex<Inner<K, V>>,
}

impl<K, V> Default for SettledRanges<K, V> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                weight: 0,
            }),
        }
    }
}

struct Inner<K, V> {
    entries: HashMap<K, (Instant, V)>,
    /// Insertion order, for eviction; an entry replaced later appears twice and is only
    /// removed by its latest occurrence.
    order: VecDeque<(K, Instant)>,
    weight: usize,
}

impl<K: Clone + Eq + std::hash::Hash, V: Clone + Weight> SettledRanges<K, V> {
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (stored, value) = inner.entries.get(key)?;
        (now.saturating_duration_since(*stored) < TTL).then(|| value.clone())
    }

    pub fn put(&self, key: K, value: V, now: Instant) {
        if value.weight() > CAPACITY {
            // It would evict everything else, then itself.
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.weight += value.weight();
        if let Some((_, old)) = inner.entries.insert(key.clone(), (now, value)) {
            inner.weight -= old.weight();
        }
        inner.order.push_back((key, now));
        while inner.weight > CAPACITY {
            let Some((oldest, stored)) = inner.order.pop_front() else {
                break;
            };
            if inner
                .entries
                .get(&oldest)
                .is_some_and(|(at, _)| *at == stored)
                && let Some((_, old)) = inner.entries.remove(&oldest)
            {
                inner.weight -= old.weight();
            }
        }
        if inner.order.len() > 2 * inner.entries.len() + 16 {
            let Inner { entries, order, .. } = &mut *inner;
            order.retain(|(key, at)| entries.get(key).is_some_and(|(current, _)| current == at));
        }
    }

    #[cfg(test)]
    fn weight(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .weight
    }
}

/// Splits counter ranges at the settled boundary: `(level, from, to, settled)`. All-time
/// counters never settle.
pub fn split(
    ranges: &[(Level, i64, i64)],
    settled_cut: impl Fn(Level) -> i64,
) -> Vec<(Level, i64, i64, bool)> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(level, a, b) in ranges {
        if level == Level::All {
            out.push((level, a, b, false));
            continue;
        }
        let cut = settled_cut(level);
        if b <= cut {
            out.push((level, a, b, true));
        } else if a >= cut {
            out.push((level, a, b, false));
        } else {
            out.push((level, a, cut, true));
            out.push((level, cut, b, false));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(from: i64) -> RangeKey {
        RangeKey {
            kind: Kind::Sent,
            level: Level::Hour,
            from,
            to: from + 1,
            subjects: Subjects::All,
        }
    }

    fn tallies(n: usize) -> Tallies {
        Arc::new((0..n).map(|i| (i.to_string(), Tally::default())).collect())
    }

    #[test]
    fn an_entry_is_served_until_it_expires() {
        let cache = SettledRanges::default();
        let t0 = Instant::now();
        cache.put(key(1), tallies(3), t0);
        assert_eq!(cache.get(&key(1), t0 + TTL / 2).map(|t| t.len()), Some(3));
        assert!(cache.get(&key(1), t0 + TTL).is_none());
        assert!(cache.get(&key(2), t0).is_none());
    }

    #[test]
    fn the_oldest_entries_go_first_when_full() {
        let cache = SettledRanges::default();
        let t0 = Instant::now();
        let half = CAPACITY / 2;
        cache.put(key(1), tallies(half), t0);
        cache.put(key(2), tallies(half), t0);
        cache.put(key(3), tallies(10), t0);
        assert!(cache.get(&key(1), t0).is_none());
        assert!(cache.get(&key(2), t0).is_some());
        assert!(cache.get(&key(3), t0).is_some());
        assert_eq!(cache.weight(), half + 10);
    }

    #[test]
    fn an_entry_larger_than_the_whole_cache_is_not_kept() {
        let cache = SettledRanges::default();
        let t0 = Instant::now();
        cache.put(key(1), tallies(10), t0);
        cache.put(key(2), tallies(CAPACITY + 1), t0);
        assert!(cache.get(&key(2), t0).is_none());
        assert!(
            cache.get(&key(1), t0).is_some(),
            "nothing else was evicted for it"
        );
    }

    #[test]
    fn replacing_an_entry_keeps_the_weight_and_the_queue_bounded() {
        let cache = SettledRanges::default();
        let t0 = Instant::now();
        for i in 0..1000 {
            cache.put(key(1), tallies(5), t0 + Duration::from_millis(i));
        }
        assert_eq!(cache.weight(), 5);
        let inner = cache.inner.lock().unwrap();
        assert!(inner.order.len() <= 2 * inner.entries.len() + 16);
    }

    #[test]
    fn ranges_are_split_at_the_settled_boundary() {
        let cut = |level: Level| if level == Level::Hour { 50 } else { 10 };
        let ranges = [
            (Level::Hour, 0, 40),
            (Level::Hour, 40, 60),
            (Level::Day, 20, 30),
            (Level::Day, 0, 10),
            (Level::All, 0, 1),
        ];
        assert_eq!(
            split(&ranges, cut),
            vec![
                (Level::Hour, 0, 40, true),
                (Level::Hour, 40, 50, true),
                (Level::Hour, 50, 60, false),
                (Level::Day, 20, 30, false),
                (Level::Day, 0, 10, true),
                (Level::All, 0, 1, false),
            ]
        );
    }
}
