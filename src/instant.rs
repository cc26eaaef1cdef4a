//! [`AtomicInstant`]: an instant one task sets and another reads without a
//! lock (when a peer was last heard from, when a writer last got bytes out).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An [`Instant`] that can be set and read through a shared reference:
/// nanoseconds since an epoch taken at creation, in an atomic.
#[derive(Debug)]
pub struct AtomicInstant {
    epoch: Instant,
    nanos: AtomicU64,
}

impl AtomicInstant {
    /// Holds `now`.
    pub fn new(now: Instant) -> AtomicInstant {
        AtomicInstant {
            epoch: now,
            nanos: AtomicU64::new(0),
        }
    }

    /// Holds `at` from now on (an instant before the epoch holds the epoch).
    pub fn set(&self, at: Instant) {
        let n = at.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.nanos.store(n, Ordering::Relaxed);
    }

    /// The instant held.
    pub fn get(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }

    /// How long before `now` the instant held is.
    pub fn elapsed_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_last_instant_set() {
        let t0 = Instant::now();
        let a = AtomicInstant::new(t0);
        assert_eq!(a.get(), t0);
        a.set(t0 + Duration::from_millis(5));
        assert_eq!(
            a.elapsed_at(t0 + Duration::from_millis(7)),
            Duration::from_millis(2)
        );
        assert_eq!(a.elapsed_at(t0), Duration::ZERO, "never negative");
    }
}
