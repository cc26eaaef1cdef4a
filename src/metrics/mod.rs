//! Latency histograms (HdrHistogram, microseconds, 3 significant digits) and
//! their exports.
//!
//! Hot paths record into a [`Histograms`] they own (one per worker session),
//! with no lock; each session folds its own into the master's shared set on
//! its heartbeat tick, so a reader (`status --histograms`, `/metrics`) sees
//! figures at most one tick old.

pub mod export;
pub mod prometheus;

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::proto::{HistogramSummary, Text};

/// Largest value recorded: one hour, in microseconds. Longer samples are
/// recorded as this (saturated), never dropped.
pub const HIST_MAX_US: u64 = 3_600_000_000;
/// Significant decimal digits kept.
pub const HIST_SIGFIG: u8 = 3;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Submit to dispatch: time a task waited in the queue (each attempt).
    QueueWait,
    /// Dispatch to result: network out and back plus the run (each attempt).
    DispatchToResult,
    /// Accepted to final result, inside the master (each task).
    EndToEnd,
    /// Heartbeat round trip to a worker.
    HeartbeatRtt,
    /// One full discovery scan of the ranges.
    DiscoveryScan,
    /// A worker's last frame to its removal.
    FailureDetection,
    /// A lost worker's removal to its task running elsewhere (each task).
    Recovery,
    /// A failed attempt to its retry's dispatch (back-off included).
    RetryDelay,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 8] = [
        Metric::QueueWait,
        Metric::DispatchToResult,
        Metric::EndToEnd,
        Metric::HeartbeatRtt,
        Metric::DiscoveryScan,
        Metric::FailureDetection,
        Metric::Recovery,
        Metric::RetryDelay,
    ];

    /// Its snake_case name (file names, Prometheus, status).
    pub fn name(self) -> &'static str {
        match self {
            Metric::QueueWait => "queue_wait",
            Metric::DispatchToResult => "dispatch_to_result",
            Metric::EndToEnd => "end_to_end",
            Metric::HeartbeatRtt => "heartbeat_rtt",
            Metric::DiscoveryScan => "discovery_scan",
            Metric::FailureDetection => "failure_detection",
            Metric::Recovery => "recovery",
            Metric::RetryDelay => "retry_delay",
        }
    }

    /// What it measures, for help texts.
    pub fn help(self) -> &'static str {
        match self {
            Metric::QueueWait => "time a task waited in the master's queue before dispatch",
            Metric::DispatchToResult => "dispatch of an attempt to its end: its result reaching the master, or its worker lost (every attempt, retried ones too)",
            Metric::EndToEnd => "task accepted to its final result, in the master",
            Metric::HeartbeatRtt => "heartbeat round trip from the master to a worker",
            Metric::DiscoveryScan => "duration of one discovery scan",
            Metric::FailureDetection => "a worker's last frame to its removal",
            Metric::Recovery => "a lost worker's removal to its task being dispatched elsewhere",
            Metric::RetryDelay => "a failed attempt to the dispatch of its retry",
        }
    }
}

/// A histogram in microseconds with this crate's bounds.
pub fn histogram() -> Histogram<u64> {
    // Cannot fail: the bounds are constants within hdrhistogram's range.
    Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG).expect("valid histogram bounds")
}

/// Records `d` in microseconds (at least 1, saturated at the maximum).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, HIST_MAX_US);
    h.saturating_record(us);
}

/// One histogram per [`Metric`].
#[derive(Debug, Clone)]
pub struct Histograms {
    h: Vec<Histogram<u64>>,
}

impl Default for Histograms {
    fn default() -> Self {
        Self::new()
    }
}

impl Histograms {
    /// Empty histograms.
    pub fn new() -> Self {
        Histograms {
            h: Metric::ALL.iter().map(|_| histogram()).collect(),
        }
    }

    /// Records one sample.
    pub fn record(&mut self, m: Metric, d: Duration) {
        record(&mut self.h[m as usize], d);
    }

    /// The histogram of `m`.
    pub fn get(&self, m: Metric) -> &Histogram<u64> {
        &self.h[m as usize]
    }

    /// Adds `other`'s samples to these and empties `other`.
    pub fn drain_from(&mut self, other: &mut Histograms) {
        for (mine, theirs) in self.h.iter_mut().zip(other.h.iter_mut()) {
            if !theirs.is_empty() {
                // Same bounds on both sides: cannot fail.
                let _ = mine.add(&*theirs);
                theirs.reset();
            }
        }
    }

    /// Adds `other`'s samples to these.
    pub fn add(&mut self, other: &Histograms) {
        for (mine, theirs) in self.h.iter_mut().zip(other.h.iter()) {
            if !theirs.is_empty() {
                // Same bounds on both sides: cannot fail.
                let _ = mine.add(theirs);
            }
        }
    }

    /// Percentile summaries of every non-empty histogram.
    pub fn summaries(&self) -> Vec<HistogramSummary> {
        Metric::ALL
            .iter()
            .filter(|m| !self.get(**m).is_empty())
            .map(|m| summary(m.name(), self.get(*m)))
            .collect()
    }
}

/// p50 / p90 / p99 / p99.9 / max of `h`.
pub fn summary(name: &'static str, h: &Histogram<u64>) -> HistogramSummary {
    HistogramSummary {
        name: Text::from_static(name),
        count: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        hdr: Text::from(encode(h)),
    }
}

/// `h` in HdrHistogram's V2 compressed encoding, base64 (empty if it cannot
/// be encoded, which does not happen for these bounds).
pub fn encode(h: &Histogram<u64>) -> String {
    use base64::Engine as _;
    use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
    let mut raw = Vec::new();
    match V2DeflateSerializer::new().serialize(h, &mut raw) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(raw),
        Err(_) => String::new(),
    }
}

/// Decodes what [`encode`] wrote.
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("histogram base64: {e}"))?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &raw[..])
        .map_err(|e| format!("histogram encoding: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_carries_the_whole_histogram() {
        let mut hs = Histograms::new();
        for us in [100u64, 200, 300, 40_000] {
            hs.record(Metric::EndToEnd, Duration::from_micros(us));
        }
        let s = &hs.summaries()[0];
        assert_eq!((s.name.as_str(), s.count), ("end_to_end", 4));
        assert_eq!(s.max_us, hs.get(Metric::EndToEnd).max());
        let back = decode(&s.hdr).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(
            back.value_at_quantile(0.5),
            hs.get(Metric::EndToEnd).value_at_quantile(0.5)
        );
    }
}
