//! The run's summary table and its report files: `*.hgrm`, `e2e.hlog`,
//! `summary.json`, `summary.csv` and `latency.svg`.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use hdrhistogram::Histogram;
use serde_json::json;

use super::Outcome;
use crate::metrics::{self, export};

/// This machine, for reports: cores, CPU model, memory, kernel.
pub fn machine() -> serde_json::Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem_kib: u64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|r| r.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0);
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": model,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// p50, p90, p99, p99.9 and max of `h` (microseconds), in milliseconds: the
/// columns of every report.
fn points_ms(h: &Histogram<u64>) -> [f64; 5] {
    let ms = |v: u64| v as f64 / 1000.0;
    [
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    ]
}

/// A histogram's count and percentiles; `null` percentiles for an empty
/// one (no sample is not a latency of 0).
fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return json!({
            "count": 0, "p50_ms": null, "p90_ms": null, "p99_ms": null, "p999_ms": null, "max_ms": null,
        });
    }
    let [p50, p90, p99, p999, max] = points_ms(h);
    json!({
        "count": h.len(),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "p999_ms": p999,
        "max_ms": max,
    })
}

/// The client's histograms, by name: end to end, and in an open loop the
/// submit lag.
fn client_histograms(o: &Outcome) -> Vec<(&'static str, &Histogram<u64>)> {
    let mut all = vec![("end_to_end", &o.e2e)];
    if !o.submit_lag.is_empty() {
        all.push(("submit_lag", &o.submit_lag));
    }
    all
}

/// The master's histograms, decoded from its status, over the recorded
/// window: what they held at the end of the warm-up is subtracted (the
/// master counts from its start, the client from the end of the warm-up).
pub fn master_histograms(o: &Outcome) -> Vec<(String, Histogram<u64>)> {
    let at_warmup = |name: &str| {
        o.master_at_warmup
            .iter()
            .flat_map(|s| s.histograms.iter())
            .find(|h| h.name.as_str() == name)
            .and_then(|h| metrics::decode(&h.hdr).ok())
    };
    let Some(status) = &o.master else {
        return Vec::new();
    };
    // Every histogram, in one order, whether the master sent it or not:
    // reports of different runs have the same rows.
    metrics::Metric::ALL
        .iter()
        .map(|m| {
            let sent = status
                .histograms
                .iter()
                .find(|h| h.name.as_str() == m.name())
                .and_then(|h| metrics::decode(&h.hdr).ok());
            let mut d = sent.unwrap_or_else(metrics::histogram);
            if let Some(before) = at_warmup(m.name()) {
                // A histogram that somehow shrank is kept whole.
                let whole = d.clone();
                if d.subtract(&before).is_err() {
                    d = whole;
                }
            }
            (m.name().to_string(), d)
        })
        .collect()
}

/// The summary as JSON.
pub fn summary_json(o: &Outcome, command: &str) -> serde_json::Value {
    let mut latency = serde_json::Map::new();
    for (name, h) in client_histograms(o) {
        latency.insert(format!("client_{name}"), percentiles(h));
    }
    for (name, h) in master_histograms(o) {
        latency.insert(format!("master_{name}"), percentiles(&h));
    }
    json!({
        "command": command,
        "working_directory": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
        "machine": machine(),
        "elapsed_s": o.elapsed.as_secs_f64(),
        "throughput_per_s": o.throughput(),
        "submit_only": o.submit_only,
        "master_rss_mib": o.master_rss_mib,
        "accepted": o.accepted,
        "ok": o.ok,
        "failed": o.failed,
        "cancelled": o.cancelled,
        "lost": o.lost,
        "duplicated": o.duplicated,
        "unexpected": o.unexpected,
        "chaos_events": o.chaos_events,
        "chaos": o.chaos_log.iter().map(|(at, what, worker)| json!({
            "at_s": at.as_secs_f64(), "what": what, "worker": worker,
        })).collect::<Vec<_>>(),
        "failure_reasons": o.failure_reasons.iter().map(|(reason, count)| json!({
            "reason": reason, "count": count,
        })).collect::<Vec<_>>(),
        "behind": o.behind.map(|(sent, due)| json!({"sent": sent, "due": due})),
        "interrupted": o.interrupted,
        "failed_without_reason": o.failed_without_reason,
        "workers_at_end": o.master.as_ref().map_or(0, |s| s.workers.len()),
        "latency": latency,
    })
}

/// Prints the summary table.
pub fn print_summary(o: &Outcome) {
    crate::outln!();
    let (label, digits) = match (o.submit_only, o.throughput() < 10.0) {
        (true, _) => ("throughput (accepted/s)", 0),
        (false, true) => ("throughput (results/s)", 2),
        (false, false) => ("throughput (results/s)", 0),
    };
    crate::outln!(
        "{label:<28} {:>14}",
        format!("{:.*}", digits, o.throughput())
    );
    if o.submit_only {
        crate::outln!("(--submit-only: results not awaited, so no latency is measured)");
    }
    if let Some(m) = o.master_rss_mib {
        crate::outln!(
            "{:<28} {:>14}",
            "master resident memory",
            format!("{m:.0} MiB")
        );
    }
    crate::outln!(
        "{:<28} {:>14}",
        "elapsed (s)",
        format!("{:.3}", o.elapsed.as_secs_f64())
    );
    crate::outln!(
        "{:<28} {:>14}",
        "accepted / ok / failed",
        format!("{} / {} / {}", o.accepted, o.ok, o.failed)
    );
    crate::outln!(
        "{:<28} {:>14}",
        "lost / duplicated / unexpected",
        format!("{} / {} / {}", o.lost, o.duplicated, o.unexpected)
    );
    if !o.chaos_log.is_empty() {
        let n = |what: &str| o.chaos_log.iter().filter(|(_, w, _)| *w == what).count();
        crate::outln!(
            "{:<28} {:>14}",
            "chaos: killed/stopped/added",
            format!("{} / {} / {}", n("killed"), n("stopped"), n("added"))
        );
        for (at, what, worker) in &o.chaos_log {
            crate::outln!("  {:>8.3} s  {what} {worker}", at.as_secs_f64());
        }
    }
    if !o.failure_reasons.is_empty() {
        crate::outln!("failures, by their last attempt's reason:");
        for (reason, count) in &o.failure_reasons {
            crate::outln!("  {count:>9}  {reason}");
        }
    }
    if let Some((sent, due)) = o.behind {
        crate::outln!(
            "BEHIND: the load generator sent {sent} of the {due} tasks due by the end: it could not keep up with --rate (latency counts from when each was due, so it includes that lag)"
        );
    }
    if o.interrupted {
        crate::outln!("INTERRUPTED: the figures cover what ran before the interruption");
    }
    crate::outln!();
    crate::outln!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)",
        "count",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max"
    );
    let row = |name: &str, h: &Histogram<u64>| {
        if h.is_empty() {
            crate::outln!(
                "{name:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                0,
                "-",
                "-",
                "-",
                "-",
                "-"
            );
            return;
        }
        let [p50, p90, p99, p999, max] = points_ms(h);
        crate::outln!(
            "{:<28} {:>9} {p50:>9.3} {p90:>9.3} {p99:>9.3} {p999:>9.3} {max:>9.3}",
            name,
            h.len()
        );
    };
    for (name, h) in client_histograms(o) {
        row(&format!("client {}", name.replace('_', " ")), h);
    }
    for (name, h) in master_histograms(o) {
        row(&format!("master {name}"), &h);
    }
}

/// Writes `h` to `dir/NAME.hgrm` (a baseline's, say, beside the run's).
pub fn write_hgrm(dir: &Path, name: &str, h: &Histogram<u64>) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {name}: {e}", dir.display());
    let f = fs::File::create(dir.join(format!("{name}.hgrm"))).map_err(io)?;
    export::write_hgrm(h, std::io::BufWriter::new(f)).map_err(io)
}

/// Files a run writes into its report directory that are not histograms.
const REPORT_FILES: &[&str] = &["summary.json", "summary.csv", "latency.svg"];

/// Checks before the run that `dir` can take a report (so a path that
/// cannot fails at once, not after the load): creates it and writes a probe
/// file. An earlier report there stays until this run has one to write
/// ([`clear_stale`]): a run that fails to start must not cost it.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| format!("--report {}: {e}", dir.display());
    fs::create_dir_all(dir).map_err(io)?;
    // Writable: a report that fails only at the end wastes the run.
    let probe = dir.join(".loadgen-write-check");
    fs::write(&probe, b"").map_err(io)?;
    let _ = fs::remove_file(probe);
    Ok(())
}

/// Removes, just before a run writes its report, what an earlier run's
/// report left in `dir` (its histograms, logs, summaries), so that nothing
/// stale sits beside the new figures. Other files are left alone.
pub fn clear_stale(dir: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| format!("--report {}: {e}", dir.display());
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let ours = REPORT_FILES.contains(&name)
            || ((name.ends_with(".hgrm") || name.ends_with(".hlog"))
                && ["client_", "master_", "baseline_"]
                    .iter()
                    .any(|p| name.starts_with(p)));
        if ours && path.is_file() {
            fs::remove_file(&path).map_err(io)?;
        }
    }
    Ok(())
}

/// Shell-quotes `args` as one command line that runs the same again.
pub fn command_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes every report file into `dir`.
pub fn write(dir: &Path, o: &Outcome, command: &str) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", dir.display());
    fs::create_dir_all(dir).map_err(|e| io("create", e))?;
    let mut all: Vec<(String, &Histogram<u64>)> = client_histograms(o)
        .into_iter()
        .map(|(name, h)| (format!("client_{name}"), h))
        .collect();
    let master = master_histograms(o);
    for (name, h) in &master {
        all.push((format!("master_{name}"), h));
    }
    for (name, h) in &all {
        write_hgrm(dir, name, h)?;
    }
    let base = SystemTime::now() - o.elapsed;
    // Each interval lasts until the next begins; the last until the run's
    // end (an interval closes at the first result a second or more after it
    // began, so lengths are about a second, not exactly).
    let ends = o
        .intervals
        .iter()
        .skip(1)
        .map(|(start, _)| *start)
        .chain(std::iter::once(o.elapsed));
    let intervals: Vec<export::Interval> = o
        .intervals
        .iter()
        .zip(ends)
        .map(|((start, h), end)| export::Interval {
            start: *start,
            length: end
                .saturating_sub(*start)
                .max(std::time::Duration::from_millis(1)),
            histogram: h,
        })
        .collect();
    let f = fs::File::create(dir.join("client_end_to_end.hlog")).map_err(|e| io("hlog", e))?;
    export::write_hlog(
        std::io::BufWriter::new(f),
        base,
        "client_end_to_end",
        &intervals,
    )
    .map_err(|e| io("hlog", e))?;
    let summary = summary_json(o, command);
    fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())? + "\n",
    )
    .map_err(|e| io("summary.json", e))?;
    let mut csv = fs::File::create(dir.join("summary.csv")).map_err(|e| io("summary.csv", e))?;
    writeln!(csv, "histogram,count,p50_ms,p90_ms,p99_ms,p999_ms,max_ms")
        .map_err(|e| io("csv", e))?;
    // Rows of one shape only (the run's counts are in summary.json); an
    // empty histogram's percentiles are empty fields, not zeros.
    for (name, h) in &all {
        if h.is_empty() {
            writeln!(csv, "{name},0,,,,,").map_err(|e| io("csv", e))?;
            continue;
        }
        let [p50, p90, p99, p999, max] = points_ms(h);
        writeln!(csv, "{name},{},{p50},{p90},{p99},{p999},{max}", h.len())
            .map_err(|e| io("csv", e))?;
    }
    let plotted: Vec<(&str, &Histogram<u64>)> = all
        .iter()
        .filter(|(n, _)| {
            [
                "client_end_to_end",
                "master_end_to_end",
                "master_queue_wait",
                "master_dispatch_to_result",
            ]
            .contains(&n.as_str())
        })
        .map(|(n, h)| (n.as_str(), *h))
        .collect();
    export::plot_percentiles(&dir.join("latency.svg"), "latency by percentile", &plotted)?;
    Ok(())
}
