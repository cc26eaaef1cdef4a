//! The latency exports are read by HdrHistogram's own tooling: the Python
//! `hdrhistogram` package reads our interval log and finds the same counts and
//! percentiles. (Skipped with a message where the package is missing; CI
//! installs it.)

use std::time::{Duration, SystemTime};

use runner::metrics::{self, export};

const READER: &str = r#"
import sys
from hdrh.log import HistogramLogReader
from hdrh.histogram import HdrHistogram
reader = HistogramLogReader(sys.argv[1], HdrHistogram(1, 3600000000, 3))
acc = None
n = 0
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    n += 1
    if acc is None:
        acc = h
    else:
        acc.add(h)
print(n, acc.get_total_count(), acc.get_value_at_percentile(50), acc.get_value_at_percentile(99))
"#;

#[test]
fn the_python_hdrhistogram_package_reads_our_interval_log() {
    let has_module = std::process::Command::new("python3")
        .args(["-c", "import hdrh"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_module {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the hdrhistogram Python package"
        );
        eprintln!(
            "SKIPPED: the Python hdrhistogram package is not installed (pip install hdrhistogram)"
        );
        return;
    }
    let mut a = metrics::histogram();
    let mut b = metrics::histogram();
    for us in 1..=1000u64 {
        a.record(us).unwrap();
        b.record(us * 100).unwrap();
    }
    let mut all = a.clone();
    all.add(&b).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e2e.hlog");
    let intervals = [
        export::Interval {
            start: Duration::ZERO,
            length: Duration::from_secs(1),
            histogram: &a,
        },
        export::Interval {
            start: Duration::from_secs(1),
            length: Duration::from_secs(1),
            histogram: &b,
        },
    ];
    export::write_hlog(
        std::fs::File::create(&path).unwrap(),
        SystemTime::now(),
        "e2e",
        &intervals,
    )
    .unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", READER])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(
        got,
        [
            2,
            2000,
            all.value_at_quantile(0.5),
            all.value_at_quantile(0.99)
        ],
        "intervals, count, p50, p99 as Python reads them"
    );
}
