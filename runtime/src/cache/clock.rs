//! The cache's clock: the system clock, or one a test sets.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time in Unix milliseconds: entries' `created_at`, `expires_at` and `last_used`
/// are wall-clock times because they outlive the process. Clones of a manual clock share it.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that stands still at `start` until [`Clock::set`] or [`Clock::advance`].
    pub fn manual(start: SystemTime) -> Self {
        Self(Some(Arc::new(AtomicI64::new(to_ms(start)))))
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Some(ms) => ms.load(Ordering::SeqCst),
            None => to_ms(SystemTime::now()),
        }
    }

    /// Sets a manual clock (no effect on the system clock).
    pub fn set(&self, time: SystemTime) {
        if let Some(ms) = &self.0 {
            ms.store(to_ms(time), Ordering::SeqCst);
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(ms) = &self.0 {
            ms.fetch_add(duration_ms(by), Ordering::SeqCst);
        }
    }
}

/// Unix milliseconds of a time (0 before the epoch, saturated far after it).
pub(crate) fn to_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

/// A duration in milliseconds, saturated.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The time of Unix milliseconds.
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
