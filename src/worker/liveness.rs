//! [`MasterWatch`]: how a worker judges its master, without I/O: the receiver
//! judges liveness by the time since it last heard anything, on its own clock.

use std::time::{Duration, Instant};

/// Tracks when the master was last heard from.
#[derive(Debug, Clone, Copy)]
pub struct MasterWatch {
    timeout: Duration,
    last_heard: Instant,
}

impl MasterWatch {
    /// Starts the clock at `now`: a worker waits `timeout` for a first master.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        MasterWatch {
            timeout,
            last_heard: now,
        }
    }

    /// A frame arrived from a master at `now` (a later one wins).
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// When the master was last heard from.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// How long the master has been silent.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }

    /// `Some(silence)` once the master has been silent longer than the
    /// timeout.
    pub fn expired(&self, now: Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.last_heard);
        (silent > self.timeout).then_some(silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_is_lost_only_after_the_timeout_of_silence() {
        let t0 = Instant::now();
        let mut w = MasterWatch::new(Duration::from_secs(30), t0);
        assert_eq!(w.expired(t0 + Duration::from_secs(30)), None);
        w.heard(t0 + Duration::from_secs(20));
        assert_eq!(
            w.expired(t0 + Duration::from_secs(45)),
            None,
            "heard 25 s ago"
        );
        assert_eq!(
            w.expired(t0 + Duration::from_secs(51)),
            Some(Duration::from_secs(31))
        );
    }

    #[test]
    fn an_older_report_does_not_move_the_clock_back() {
        let t0 = Instant::now();
        let mut w = MasterWatch::new(Duration::from_secs(1), t0);
        w.heard(t0 + Duration::from_secs(5));
        w.heard(t0 + Duration::from_secs(2));
        assert_eq!(w.last_heard(), t0 + Duration::from_secs(5));
    }
}
