//! The load generator end to end: it starts its own cluster, runs a small
//! load with a failing fraction, checks exactly-once delivery and writes
//! every report file.

#[test]
fn a_small_run_writes_every_report_and_exits_zero_when_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--tasks",
            "3000",
            "--concurrency",
            "200",
            "--batch",
            "64",
            "--fail-fraction",
            "0.1",
            "--quiet",
        ])
        .arg("--report")
        .arg(&report)
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("lost / duplicated / unexpected      0 / 0 / 0"),
        "{stdout}"
    );
    for f in [
        "client_end_to_end.hgrm",
        "client_end_to_end.hlog",
        "master_end_to_end.hgrm",
        "master_queue_wait.hgrm",
        "summary.json",
        "summary.csv",
        "latency.svg",
    ] {
        assert!(report.join(f).exists(), "{f} written");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["accepted"], 3000);
    assert_eq!(
        summary["failed"], 300,
        "the failing fraction fails, with no retries"
    );
    assert_eq!(summary["ok"], 2700);
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["duplicated"], 0);
    assert!(summary["machine"]["cores"].as_u64().unwrap() >= 1);
}
