//! The master's `/metrics` in the Prometheus text exposition format (0.0.4):
//! counters, gauges, and the latency histograms as Prometheus histograms
//! (cumulative buckets in seconds, derived from the HdrHistograms).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::{Histograms, Metric};
use crate::proto::StatusReport;

/// Bucket bounds, seconds: 50 µs to 60 s.
pub const BUCKETS_S: [f64; 19] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    family(out, name, "histogram", help);
    for le in BUCKETS_S {
        let us = (le * 1e6) as u64;
        let n = if h.is_empty() {
            0
        } else {
            h.count_between(0, us)
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    let sum_s = if h.is_empty() {
        0.0
    } else {
        h.mean() * h.len() as f64 / 1e6
    };
    let _ = writeln!(out, "{name}_sum {sum_s}");
    let _ = writeln!(out, "{name}_count {}", h.len());
}

/// What the master knows beyond the status report: results kept for
/// fetching, and its journal's state if it keeps one.
#[derive(Debug, Default)]
pub struct MasterGauges {
    /// Results kept until a client fetches or acknowledges them.
    pub results_kept: u64,
    /// Results dropped since start for want of room to keep them.
    pub results_dropped: u64,
    /// Tasks waiting out a retry back-off.
    pub retries_waiting: u64,
    /// The journal, if any.
    pub journal: Option<JournalGauges>,
}

/// A journal's state, for operators.
#[derive(Debug, Default)]
pub struct JournalGauges {
    /// Whether writing it fails now (acknowledgements paused).
    pub failing: bool,
    /// The file's size.
    pub bytes: u64,
    /// Compactions since start.
    pub compactions: u64,
    /// Compactions that failed since start.
    pub compaction_failures: u64,
    /// `fdatasync` calls since start.
    pub syncs: u64,
}

/// Renders the whole exposition.
pub fn render(s: &StatusReport, hists: &Histograms, m: &MasterGauges) -> String {
    let mut out = String::with_capacity(8 * 1024);
    family(
        &mut out,
        "runner_results_kept",
        "gauge",
        "Results kept until a client fetches or acknowledges them.",
    );
    let _ = writeln!(out, "runner_results_kept {}", m.results_kept);
    for (name, kind, help, v) in [
        (
            "runner_results_dropped_total",
            "counter",
            "Results dropped since the master started: no journal, and no room left to keep them for clients that went away.",
            m.results_dropped,
        ),
        (
            "runner_tasks_waiting_to_retry",
            "gauge",
            "Tasks waiting out the back-off before their next attempt (in no queue, on no worker).",
            m.retries_waiting,
        ),
    ] {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    if let Some(j) = &m.journal {
        for (name, kind, help, v) in [
            (
                "runner_journal_failing",
                "gauge",
                "1 while the journal cannot be written (acknowledgements paused, new tasks refused).",
                u64::from(j.failing),
            ),
            ("runner_journal_bytes", "gauge", "The journal file's size.", j.bytes),
            (
                "runner_journal_compactions_total",
                "counter",
                "Journal compactions since the master started.",
                j.compactions,
            ),
            (
                "runner_journal_compaction_failures_total",
                "counter",
                "Journal compactions that failed since the master started (the journal stays as it was; retried).",
                j.compaction_failures,
            ),
            (
                "runner_journal_syncs_total",
                "counter",
                "Journal fdatasync calls since the master started.",
                j.syncs,
            ),
        ] {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
    for (name, help, v) in [
        (
            "runner_tasks_submitted_total",
            "Tasks accepted since the master started.",
            s.submitted,
        ),
        (
            "runner_tasks_completed_total",
            "Tasks finished with status ok.",
            s.completed,
        ),
        (
            "runner_tasks_failed_total",
            "Tasks finished failed or cancelled.",
            s.failed,
        ),
        (
            "runner_attempts_retried_total",
            "Attempts queued again: failed with retries left, on a lost worker, or handed back.",
            s.retried,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
    family(
        &mut out,
        "runner_tasks_running",
        "gauge",
        "Attempts out on workers now.",
    );
    let _ = writeln!(out, "runner_tasks_running {}", s.running);
    family(&mut out, "runner_workers", "gauge", "Registered workers.");
    let _ = writeln!(out, "runner_workers {}", s.workers.len());
    // The total is a family of its own: beside the per-priority series it
    // would be counted twice by anyone summing them.
    family(
        &mut out,
        "runner_queue_depth",
        "gauge",
        "Tasks waiting, all priorities.",
    );
    let _ = writeln!(
        out,
        "runner_queue_depth {}",
        s.queues.iter().map(|q| q.depth).sum::<u64>()
    );
    family(
        &mut out,
        "runner_tasks_queued",
        "gauge",
        "Tasks waiting, by priority.",
    );
    for q in &s.queues {
        let _ = writeln!(
            out,
            "runner_tasks_queued{{priority=\"{}\"}} {}",
            q.priority, q.depth
        );
    }
    for (name, help, get) in [
        (
            "runner_worker_slots",
            "Slots of each worker.",
            (|w| w.slots as f64) as fn(&crate::proto::WorkerInfo) -> f64,
        ),
        (
            "runner_worker_in_flight",
            "Attempts out on each worker.",
            |w| w.in_flight as f64,
        ),
        (
            "runner_worker_heartbeat_rtt_seconds",
            "Last heartbeat round trip to each worker.",
            |w| w.rtt_us as f64 / 1e6,
        ),
        (
            "runner_worker_silent_seconds",
            "Time since each worker was last heard from.",
            |w| w.silent_ms as f64 / 1e3,
        ),
    ] {
        family(&mut out, name, "gauge", help);
        for w in &s.workers {
            let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", escape(&w.id), get(w));
        }
    }
    for (name, help, get) in [
        (
            "runner_worker_attempts_done_total",
            "Attempts finished ok on each worker.",
            (|w| w.done) as fn(&crate::proto::WorkerInfo) -> u64,
        ),
        (
            "runner_worker_attempts_failed_total",
            "Attempts failed on each worker.",
            |w| w.failed,
        ),
    ] {
        family(&mut out, name, "counter", help);
        for w in &s.workers {
            let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", escape(&w.id), get(w));
        }
    }
    for m in Metric::ALL {
        histogram(
            &mut out,
            &format!("runner_{}_seconds", m.name()),
            m.help(),
            hists.get(m),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_are_cumulative_and_end_with_the_count() {
        let mut hs = Histograms::new();
        for us in [40u64, 90, 900, 20_000] {
            hs.record(Metric::EndToEnd, Duration::from_micros(us));
        }
        let text = render(
            &StatusReport {
                workers: vec![],
                queues: vec![],
                submitted: 4,
                completed: 4,
                failed: 0,
                retried: 0,
                running: 0,
                histograms: vec![],
            },
            &hs,
            &MasterGauges {
                results_kept: 2,
                results_dropped: 5,
                retries_waiting: 3,
                journal: Some(JournalGauges {
                    failing: true,
                    bytes: 4096,
                    compactions: 1,
                    compaction_failures: 0,
                    syncs: 9,
                }),
            },
        );
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            line("runner_end_to_end_seconds_bucket{le=\"0.00005\"}"),
            "runner_end_to_end_seconds_bucket{le=\"0.00005\"} 1"
        );
        assert_eq!(
            line("runner_end_to_end_seconds_bucket{le=\"0.001\"}"),
            "runner_end_to_end_seconds_bucket{le=\"0.001\"} 3"
        );
        assert_eq!(
            line("runner_end_to_end_seconds_bucket{le=\"+Inf\"}"),
            "runner_end_to_end_seconds_bucket{le=\"+Inf\"} 4"
        );
        assert_eq!(
            line("runner_end_to_end_seconds_count"),
            "runner_end_to_end_seconds_count 4"
        );
        assert_eq!(line("runner_results_kept"), "runner_results_kept 2");
        assert_eq!(line("runner_journal_failing"), "runner_journal_failing 1");
        assert_eq!(line("runner_journal_bytes"), "runner_journal_bytes 4096");
        assert_eq!(
            line("runner_tasks_submitted_total"),
            "runner_tasks_submitted_total 4"
        );
    }
}
