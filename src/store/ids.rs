//! Ids that sort in the order things were stored: messages (history is ordered by id) and the
//! batches that store them. An id is a valid ObjectId: 4 bytes of seconds and 2 of
//! milliseconds of the instance's clock (never going back within a process), then 3 random
//! bytes of the process and a 3-byte counter. So history follows the order in which one
//! instance stored its messages exactly, and across instances the clock to the millisecond,
//! ties broken by a part of the id that every instance sees alike.

use std::sync::{LazyLock, Mutex, PoisonError};

use mongodb::bson::oid::ObjectId;
use rand::Rng;

/// The last millisecond handed out, and the counter.
static CLOCK: Mutex<(i64, u32)> = Mutex::new((0, 0));
static PROCESS: LazyLock<[u8; 3]> = LazyLock::new(|| rand::thread_rng().r#gen());

/// Now, in milliseconds since the epoch, never before an earlier call's.
pub fn stamp() -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    let mut clock = CLOCK.lock().unwrap_or_else(PoisonError::into_inner);
    clock.0 = clock.0.max(now);
    clock.0
}

/// A new id for something stored at `ms` (a [`stamp`]), after every id made before it.
pub fn next(ms: i64) -> ObjectId {
    let counter = {
        let mut clock = CLOCK.lock().unwrap_or_else(PoisonError::into_inner);
        clock.1 = (clock.1 + 1) & 0x00ff_ffff;
        clock.1
    };
    let mut bytes = floor(ms).bytes();
    bytes[6..9].copy_from_slice(&*PROCESS);
    bytes[9..].copy_from_slice(&counter.to_be_bytes()[1..]);
    ObjectId::from_bytes(bytes)
}

/// The id below every id made for `ms` or later.
pub fn floor(ms: i64) -> ObjectId {
    let secs = u32::try_from(ms.div_euclid(1000)).unwrap_or(u32::MAX);
    let millis = u16::try_from(ms.rem_euclid(1000)).unwrap_or(0);
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    bytes[4..6].copy_from_slice(&millis.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_millisecond_then_in_the_order_they_were_made() {
        let first = stamp();
        let a = next(first);
        let b = next(first);
        let later = next(first + 1);
        assert!(a < b && b < later, "{a} {b} {later}");
        assert_eq!(a.timestamp().timestamp_millis(), first / 1000 * 1000);
        // A millisecond later sorts later whatever the counter says.
        assert!(next(first + 1) > next(first));
        assert!(stamp() >= first);
        assert!(floor(first) < a && floor(first + 1) > b);
    }
}
