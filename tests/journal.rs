//! The journal file on its own: what a restart reads back, torn tails,
//! corruption, versions and compaction (no master, no sockets).

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use runner::journal::{
    record, Durability, Entry, Journal, JournalConfig, JournalError, PendingTask,
};
use runner::proto::{Assignment, AttemptError, NewTask, Payload, TaskResult, TaskStatus, Text};

fn task(i: u64) -> NewTask {
    NewTask {
        kind: Text::from_static("echo"),
        payload: Payload::from(format!("payload {i}")),
        priority: (i % 7) as u8,
        retries: 2,
        timeout_ms: 1000,
    }
}

fn result(id: u64) -> TaskResult {
    TaskResult {
        id,
        status: TaskStatus::Ok,
        output: Payload::from(format!("out {id}")),
        attempts: 1,
        worker: Text::from_static("w1"),
        errors: Vec::new(),
    }
}

fn open(path: &std::path::Path) -> Result<(Journal, runner::journal::Replayed), JournalError> {
    Journal::open(&JournalConfig::new(path, Durability::Fsync))
}

/// Waits (at most 10 s) until `j` has compacted at least once.
fn wait_for_a_compaction(j: &Journal) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while j
        .stats()
        .compactions
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < deadline, "no compaction within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes a journal with a little of everything: 3 batches of 10 tasks,
/// dispatches, a failure, results, an acknowledgement. Returns its path.
fn sample(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("j");
    let (j, r) = open(&path).unwrap();
    assert_eq!(r.records, 0);
    for b in 0..3u64 {
        let tasks: Vec<NewTask> = (0..10).map(|i| task(b * 10 + i + 1)).collect();
        j.append(Entry::Accepted {
            first_id: b * 10 + 1,
            tasks: &tasks,
        });
    }
    let assigned: Vec<Assignment> = (1..=5)
        .map(|id| Assignment {
            task_id: id,
            attempt: 1,
            kind: Text::from_static("echo"),
            payload: Payload::empty(),
            timeout_ms: 0,
        })
        .collect();
    j.append(Entry::Dispatched(&assigned));
    j.append(Entry::AttemptFailed {
        id: 5,
        error: &AttemptError {
            attempt: 1,
            worker: Text::from_static("w1"),
            reason: Text::from_static("boom"),
        },
    });
    for id in 1..=4 {
        j.append(Entry::Finished(&result(id)));
    }
    j.append(Entry::Forgotten(&[1, 2]));
    j.close();
    path
}

#[test]
fn a_reopened_journal_gives_back_unfinished_tasks_and_unacknowledged_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let (_j, r) = open(&path).unwrap();
    assert!(r.torn.is_none());
    let s = r.state;
    assert_eq!(s.next_id, 31);
    assert_eq!(s.pending.len(), 26, "30 accepted, 4 finished");
    assert_eq!(s.pending[&5].attempt, 1, "attempt counts are kept");
    assert_eq!(s.pending[&5].errors.len(), 1, "failures are kept");
    assert_eq!(s.pending[&6].attempt, 0);
    assert_eq!(s.pending[&17].spec, task(17));
    assert_eq!(
        s.results.keys().copied().collect::<Vec<_>>(),
        [3, 4],
        "acknowledged results are forgotten"
    );
    assert_eq!(s.results[&3], result(3));
}

#[test]
fn fault_07_a_journal_cut_at_any_byte_opens_and_loses_only_the_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let full = fs::read(&path).unwrap();
    let whole = {
        let (_j, r) = open(&path).unwrap();
        r.state
    };
    let cut = dir.path().join("cut");
    for len in record::HEADER_LEN..full.len() {
        fs::write(&cut, &full[..len]).unwrap();
        let (j, r) = open(&cut).unwrap_or_else(|e| panic!("cut at {len}: {e}"));
        j.close();
        // What survives is a prefix of the history: every pending task of
        // the cut journal is pending or finished in the whole one.
        for id in r.state.pending.keys() {
            assert!(
                whole.pending.contains_key(id) || id <= &4,
                "cut at {len}: task {id}"
            );
        }
        let kept = fs::metadata(&cut).unwrap().len() as usize;
        assert_eq!(kept, r.valid_len, "cut at {len}: the torn tail is removed");
        if r.valid_len < len {
            assert!(r.torn.is_some(), "cut at {len}: the torn tail is reported");
        }
    }
}

#[test]
fn fault_07_a_flipped_bit_in_the_last_record_drops_that_record_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let (_j, r) = open(&path).unwrap();
    let (at, why) = r.torn.expect("reported");
    assert!(why.contains("checksum"), "{why}");
    assert_eq!(
        fs::read(runner::journal::torn_path(&path)).unwrap(),
        &bytes[at..],
        "the cut bytes are kept beside the journal"
    );
    // The last record was the acknowledgement of 1 and 2: they are kept.
    assert_eq!(
        r.state.results.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
}

#[test]
fn fault_07_a_flipped_bit_in_a_middle_record_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    bytes[record::HEADER_LEN + 40] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let err = open(&path).expect_err("refused");
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("corrupt at byte") && msg.contains("refusing"),
        "{msg}"
    );
    assert!(
        msg.contains(&path.display().to_string()),
        "names the file: {msg}"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "a corrupt journal is not modified"
    );
}

/// A damaged salt fails every record's checksum: the first record looks
/// damaged with the whole journal after it, which no torn write leaves.
#[test]
fn fault_07_a_damaged_header_refuses_to_start_rather_than_cut_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    bytes[13] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let err = open(&path).expect_err("refused");
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("more than a write cut short leaves"),
        "{err}"
    );
    assert_eq!(fs::read(&path).unwrap(), bytes, "not modified");
}

/// Zeros over the last few records, from inside one: acknowledged records
/// may be among them, so nothing is cut.
#[test]
fn fault_07_zeros_over_more_than_the_last_record_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    let from = n - (n - record::HEADER_LEN) * 2 / 3;
    bytes[from..].fill(0);
    fs::write(&path, &bytes).unwrap();
    let err = open(&path).expect_err("refused");
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), bytes, "not modified");
}

#[test]
fn a_journal_from_a_newer_version_is_refused_with_both_versions_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer");
    let mut h = record::Salt::random().header();
    h[8..12].copy_from_slice(&(record::FORMAT_VERSION + 1).to_le_bytes());
    fs::write(&path, h).unwrap();
    let err = open(&path).expect_err("refused");
    let msg = err.to_string();
    assert!(
        matches!(err, JournalError::NewerVersion { found, supported, .. } if found == supported + 1),
        "{msg}"
    );
    let (newer, ours) = (record::FORMAT_VERSION + 1, record::FORMAT_VERSION);
    assert!(
        msg.contains(&path.display().to_string()),
        "names the file: {msg}"
    );
    assert!(
        msg.contains(&format!("version {newer}")) && msg.contains(&format!("runner's {ours}")),
        "{msg}"
    );
}

#[test]
fn a_file_that_is_not_a_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    fs::write(&path, "shopping list: eggs, flour, milk\n").unwrap();
    let err = open(&path).expect_err("refused");
    assert!(matches!(err, JournalError::NotAJournal(_)), "{err}");
}

#[test]
fn a_journal_in_a_missing_directory_is_refused_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    match open(&missing.join("journal")) {
        Err(e @ JournalError::NoDirectory { .. }) => {
            let said = e.to_string();
            assert!(
                said.contains(&format!("mkdir -p {}", missing.display())),
                "{said}"
            );
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(!missing.exists(), "not created behind the user's back");
}

#[test]
fn a_second_master_cannot_open_a_journal_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let (j, _) = open(&path).unwrap();
    let err = open(&path).expect_err("refused");
    assert!(matches!(err, JournalError::Locked(_)), "{err}");
    j.close();
}

/// A compaction renames a new file over the journal's name. Were that file
/// unlocked for a moment, a second master opening the name then would win
/// its lock and two masters would write one journal.
#[test]
fn a_second_master_cannot_open_a_journal_while_its_holder_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let cfg = JournalConfig {
        compact_at: 16 * 1024,
        ..JournalConfig::new(&path, Durability::None)
    };
    let (j, _) = Journal::open(&cfg).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let second = {
        let (stop, cfg) = (stop.clone(), cfg.clone());
        std::thread::spawn(move || {
            let mut tries = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match Journal::open(&cfg) {
                    Err(JournalError::Locked(_)) => tries += 1,
                    Err(e) => panic!("a second open failed otherwise: {e}"),
                    Ok(_) => return Err(tries),
                }
            }
            Ok(tries)
        })
    };
    let compactions = || {
        j.stats()
            .compactions
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = 1u64;
    while compactions() < 20 && !second.is_finished() {
        assert!(Instant::now() < deadline, "20 compactions within 30 s");
        let tasks: Vec<NewTask> = (0..20).map(|i| task(next + i)).collect();
        j.append(Entry::Accepted {
            first_id: next,
            tasks: &tasks,
        });
        for id in next..next + 20 {
            j.append(Entry::Finished(&result(id)));
            j.append(Entry::Forgotten(&[id]));
        }
        next += 20;
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    match second.join().unwrap() {
        Ok(tries) => assert!(tries > 0, "the second master tried"),
        Err(tries) => panic!("a second master opened the journal after {tries} refusals"),
    }
    j.close();
}

/// A journal whose compacted file is already past its threshold (here an
/// empty one, past a threshold of 1 byte) is not compacted again while
/// nothing is written: it had been, dozens of times a second.
#[test]
fn a_journal_compacted_to_nothing_is_not_compacted_again_while_idle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let cfg = JournalConfig {
        compact_at: 1,
        ..JournalConfig::new(&path, Durability::None)
    };
    let (j, _) = Journal::open(&cfg).unwrap();
    let tasks: Vec<NewTask> = (1..=10).map(task).collect();
    j.append(Entry::Accepted {
        first_id: 1,
        tasks: &tasks,
    });
    for id in 1..=10 {
        j.append(Entry::Finished(&result(id)));
        j.append(Entry::Forgotten(&[id]));
    }
    wait_for_a_compaction(&j);
    let compactions = || {
        j.stats()
            .compactions
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Let any compaction already under way finish.
    std::thread::sleep(Duration::from_millis(300));
    let before = compactions();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        compactions(),
        before,
        "compacted again with nothing written"
    );
    j.close();
}

#[test]
fn compaction_keeps_the_live_state_and_shrinks_the_file_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let cfg = JournalConfig {
        compact_at: 64 * 1024,
        ..JournalConfig::new(&path, Durability::None)
    };
    let (j, _) = Journal::open(&cfg).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut model: BTreeMap<u64, bool> = BTreeMap::new(); // id -> finished
    let mut next = 1u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while j
        .stats()
        .compactions
        .load(std::sync::atomic::Ordering::Relaxed)
        < 3
    {
        assert!(Instant::now() < deadline, "no compaction happened");
        let tasks: Vec<NewTask> = (0..50).map(|i| task(next + i)).collect();
        j.append(Entry::Accepted {
            first_id: next,
            tasks: &tasks,
        });
        for id in next..next + 50 {
            model.insert(id, false);
        }
        next += 50;
        // Finish and acknowledge most of them: history grows, live work
        // stays small.
        let open: Vec<u64> = model
            .iter()
            .filter(|(_, f)| !**f)
            .map(|(k, _)| *k)
            .collect();
        for id in open {
            if rng.gen_bool(0.9) {
                j.append(Entry::Finished(&result(id)));
                j.append(Entry::Forgotten(&[id]));
                model.insert(id, true);
            }
        }
        model.retain(|_, finished| !*finished);
        std::thread::sleep(Duration::from_millis(1));
    }
    let appended = j
        .stats()
        .appended
        .load(std::sync::atomic::Ordering::Relaxed);
    j.close();
    let len = fs::metadata(&path).unwrap().len();
    assert!(
        len < appended / 2,
        "the file ({len} bytes) follows live work, not the {appended} bytes of history"
    );
    let (_j, r) = Journal::open(&cfg).unwrap();
    assert_eq!(
        r.state.pending.keys().copied().collect::<Vec<_>>(),
        model.keys().copied().collect::<Vec<_>>(),
        "exactly the unfinished tasks survive compaction"
    );
    assert!(r.state.results.is_empty());
    assert_eq!(r.state.next_id, next, "ids are never reused");
    assert_eq!(
        r.state
            .pending
            .values()
            .next()
            .map(|p: &PendingTask| p.spec.retries),
        Some(2)
    );
}

/// A master restarted more often than its journal grew twice over had
/// never compacted it: the bar was twice the size found at the start.
#[test]
fn a_journal_opened_past_its_compaction_threshold_is_compacted_at_its_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let mut cfg = JournalConfig {
        compact_at: 1 << 30,
        ..JournalConfig::new(&path, Durability::None)
    };
    let (j, _) = Journal::open(&cfg).unwrap();
    for id in 1..=2000u64 {
        j.append(Entry::Accepted {
            first_id: id,
            tasks: &[task(id)],
        });
        j.append(Entry::Finished(&result(id)));
        j.append(Entry::Forgotten(&[id]));
    }
    j.close();
    let before = fs::metadata(&path).unwrap().len();
    cfg.compact_at = before / 2;
    let (j, _) = Journal::open(&cfg).unwrap();
    j.append(Entry::Accepted {
        first_id: 2001,
        tasks: &[task(2001)],
    });
    wait_for_a_compaction(&j);
    j.close();
    assert!(fs::metadata(&path).unwrap().len() < before / 10);
}

/// A backlog compacted at its peak and then drained left the file at its
/// peak size for as long as the master ran: the bar was twice that size.
#[test]
fn a_journal_whose_backlog_drained_is_compacted_to_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let cfg = JournalConfig {
        compact_at: 64 * 1024,
        ..JournalConfig::new(&path, Durability::None)
    };
    let (j, _) = Journal::open(&cfg).unwrap();
    let compactions = || {
        j.stats()
            .compactions
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (batches, per_batch) = (20u64, 100u64);
    for b in 0..batches {
        let first_id = 1 + b * per_batch;
        let tasks: Vec<NewTask> = (first_id..first_id + per_batch)
            .map(|id| NewTask {
                payload: Payload::from(vec![id as u8; 1024]),
                ..task(id)
            })
            .collect();
        j.append(Entry::Accepted {
            first_id,
            tasks: &tasks,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while j.stored() < j.appended() {
        assert!(
            Instant::now() < deadline,
            "the backlog was not written within 10 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_for_a_compaction(&j);
    let file_len = || {
        j.stats()
            .file_len
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let peak = file_len();
    assert!(peak > 1024 * 1024, "the backlog is compacted at its peak");
    let ids: Vec<u64> = (1..=batches * per_batch).collect();
    for &id in &ids {
        j.append(Entry::Finished(&result(id)));
    }
    j.append(Entry::Forgotten(&ids));
    // Compactions of the backlog may still finish meanwhile; the one that
    // counts leaves the file at its live state: nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while file_len() >= 4096 {
        assert!(
            Instant::now() < deadline,
            "a drained journal of {peak} bytes was not compacted ({} bytes, {} compactions)",
            file_len(),
            compactions()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    j.close();
    let len = fs::metadata(&path).unwrap().len();
    assert!(len < 4096, "{len} bytes left of {peak}");
    let (_j, r) = Journal::open(&cfg).unwrap();
    assert!(r.state.pending.is_empty() && r.state.results.is_empty());
    assert_eq!(r.state.next_id, batches * per_batch + 1);
}

/// Deleted under a running master, the journal is written again under its
/// name from what the open file holds: nothing acknowledged is lost.
#[test]
fn a_journal_deleted_while_in_use_is_written_again_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let cfg = JournalConfig::new(&path, Durability::Fsync);
    let (j, _) = Journal::open(&cfg).unwrap();
    let accept = |id: u64| {
        j.append(Entry::Accepted {
            first_id: id,
            tasks: &[task(id)],
        });
    };
    accept(1);
    fs::remove_file(&path).unwrap();
    accept(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "the journal was not written again"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    accept(3);
    j.close();
    let (_j, r) = Journal::open(&cfg).unwrap();
    assert_eq!(
        r.state.pending.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[test]
fn appends_are_stored_in_order_and_fsync_shares_syncs_between_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let (j, _) = open(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut last = 0;
    for id in 1..=2000u64 {
        last = j.append(Entry::Accepted {
            first_id: id,
            tasks: &[task(id)],
        });
    }
    rt.block_on(j.wait_stored(last)).unwrap();
    let syncs = j.stats().syncs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        syncs < 2000,
        "{syncs} syncs for 2000 records: no group commit"
    );
    j.close();
    let (_j, r) = open(&path).unwrap();
    assert_eq!(r.state.pending.len(), 2000);
}

#[test]
fn fault_06_with_fsync_a_record_counts_as_stored_only_once_synced() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (durability, syncs_needed) in [(Durability::Fsync, true), (Durability::None, false)] {
        let path = dir.path().join(durability.to_string());
        let (j, _) = Journal::open(&JournalConfig::new(&path, durability)).unwrap();
        let syncs = || j.stats().syncs.load(std::sync::atomic::Ordering::SeqCst);
        let before = syncs();
        let end = j.append(Entry::Accepted {
            first_id: 1,
            tasks: &[task(1)],
        });
        rt.block_on(j.wait_stored(end)).unwrap();
        // The acknowledgement waits for exactly this: with fsync, a sync
        // covering the record has returned; with none, only the write.
        assert_eq!(syncs() > before, syncs_needed, "{durability}");
        j.close();
    }
}

/// A record as a client could write it into a payload: the checksum a
/// journal without a salt (format 1) would have.
fn forged_record() -> Vec<u8> {
    let body = [5u8, 2, 7, 8]; // Forgotten([7, 8])
    let len = (body.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&body);
    let mut r = len.to_vec();
    r.extend_from_slice(&crc.finalize().to_le_bytes());
    r.extend_from_slice(&body);
    r
}

#[test]
fn fault_07_a_torn_record_whose_payload_holds_a_forged_record_is_still_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let (j, _) = open(&path).unwrap();
    j.append(Entry::Accepted {
        first_id: 1,
        tasks: &[task(1)],
    });
    let mut payload = vec![b'x'; 3000];
    payload.extend_from_slice(&forged_record());
    payload.extend(vec![b'x'; 3000]);
    let poisoned = NewTask {
        payload: Payload::from(payload),
        ..task(2)
    };
    j.append(Entry::Accepted {
        first_id: 2,
        tasks: &[poisoned],
    });
    j.close();
    // A crash in the middle of writing the second record, after the forged
    // one inside it.
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..full.len() - 1000]).unwrap();
    let (_j, r) = open(&path).expect("a torn tail, not corruption");
    assert!(r.torn.is_some());
    assert_eq!(r.state.pending.keys().copied().collect::<Vec<_>>(), [1]);
}

#[test]
fn a_journal_of_format_1_is_still_read_and_appended_to_as_format_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old");
    let mut state = runner::journal::State {
        next_id: 10,
        ..Default::default()
    };
    state.results.insert(3, result(3));
    let mut image = Vec::new();
    runner::journal::write_state(&mut image, &state, record::Salt::NONE).unwrap();
    assert_eq!(
        &image[8..16],
        &[1, 0, 0, 0, 0, 0, 0, 0],
        "format 1, no salt"
    );
    fs::write(&path, image).unwrap();
    let (j, r) = open(&path).unwrap();
    assert_eq!(r.state.next_id, 10);
    assert_eq!(r.state.results[&3], result(3));
    j.append(Entry::Finished(&result(4)));
    j.close();
    let (_j, r) = open(&path).unwrap();
    assert!(r.torn.is_none());
    assert_eq!(r.state.results.keys().copied().collect::<Vec<_>>(), [3, 4]);
    assert_eq!(&fs::read(&path).unwrap()[8..12], &[1, 0, 0, 0]);
}

#[test]
fn the_worked_example_of_the_journal_spec_replays_as_it_says() {
    let image =
        hex::decode("52554e4a524e4c00020000003412ed5e02000000837ca9b2072a04000000689e661305020708")
            .unwrap();
    let r = runner::journal::replay::replay(&bytes::Bytes::from(image.clone())).unwrap();
    assert_eq!((r.records, r.state.next_id), (2, 42));
    assert!(r.state.pending.is_empty() && r.state.results.is_empty());
    let mut own = Vec::new();
    let state = runner::journal::State {
        next_id: 42,
        ..Default::default()
    };
    runner::journal::write_state(&mut own, &state, record::Salt::fixed(0x5eed_1234)).unwrap();
    assert_eq!(&own[..], &image[..26], "the same header and first record");
}

#[test]
fn a_new_journal_is_readable_by_its_owner_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "clients' payloads are in it: {mode:o}");
}

/// A compacted journal of unfinished tasks, most never handed out, is no
/// bigger than the records it replaces, and replays to the same state:
/// runs of consecutive fresh ids go back as `Accepted` records.
#[test]
fn compacting_a_backlog_of_unfinished_tasks_does_not_grow_it() {
    let mut state = runner::journal::State {
        next_id: 20_001,
        ..Default::default()
    };
    let mut accepted = bytes::BytesMut::new();
    for first in (1..20_001).step_by(1000) {
        let tasks: Vec<NewTask> = (first..first + 1000).map(task).collect();
        Entry::Accepted {
            first_id: first,
            tasks: &tasks,
        }
        .encode(&mut accepted, record::Salt::NONE)
        .unwrap();
        state.apply(runner::journal::Record::Accepted {
            first_id: first,
            tasks,
        });
    }
    // Some were handed out, one failed once, one finished (a gap).
    state.apply(runner::journal::Record::Dispatched(vec![
        (5, 1),
        (6, 1),
        (7_000, 2),
    ]));
    state.apply(runner::journal::Record::AttemptFailed {
        id: 7_000,
        error: AttemptError {
            attempt: 1,
            worker: Text::from_static("w1"),
            reason: Text::from_static("lost"),
        },
    });
    state.apply(runner::journal::Record::Finished(result(9_000)));
    let mut compacted = Vec::new();
    runner::journal::write_state(&mut compacted, &state, record::Salt::NONE).unwrap();
    assert!(
        compacted.len() <= accepted.len() + 1024,
        "{} bytes compacted from {} of accepted records",
        compacted.len(),
        accepted.len()
    );
    let r = runner::journal::replay::replay(&bytes::Bytes::from(compacted)).unwrap();
    assert_eq!(r.state.next_id, state.next_id);
    assert_eq!(r.state.pending, state.pending);
    assert_eq!(r.state.results, state.results);
}

/// A torn tail is cut even where its copy cannot be kept (a full disk, a
/// read-only directory; here its name is taken by a directory): the master
/// starts rather than refuse over a copy for inspection.
#[test]
fn a_torn_tail_is_cut_even_when_its_copy_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..full.len() - 3]).unwrap();
    fs::create_dir(runner::journal::torn_path(&path)).unwrap();
    let (j, r) = open(&path).expect("starts");
    j.close();
    assert!(r.torn.is_some());
    assert_eq!(fs::metadata(&path).unwrap().len() as usize, r.valid_len);
}

/// A journal given as a symbolic link: compactions replace the file it
/// names, and the link stays a link (else the target is left stale, and a
/// master given the target's own name would run its old state).
#[test]
fn a_journal_named_by_a_link_is_compacted_in_the_file_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let cfg = JournalConfig {
        compact_at: 4096,
        ..JournalConfig::new(&link, Durability::None)
    };
    let (j, _) = Journal::open(&cfg).unwrap();
    for id in 1..=500u64 {
        j.append(Entry::Accepted {
            first_id: id,
            tasks: &[task(id)],
        });
        j.append(Entry::Finished(&result(id)));
        j.append(Entry::Forgotten(&[id]));
    }
    j.append(Entry::Accepted {
        first_id: 501,
        tasks: &[task(501)],
    });
    wait_for_a_compaction(&j);
    j.close();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let (_j, r) = open(&target).unwrap();
    assert_eq!(r.state.pending.keys().copied().collect::<Vec<_>>(), [501]);
}

/// A compaction that fails (here its file's name is taken by a directory;
/// in life, a full disk) is tried again after `compact_retry`, not only
/// once the journal has doubled: on a disk that filled up it never would.
#[test]
fn a_failed_compaction_is_tried_again_after_the_retry_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let blocker = dir.path().join("j.compacting");
    let cfg = JournalConfig {
        compact_at: 4096,
        compact_retry: Duration::from_millis(200),
        ..JournalConfig::new(&path, Durability::None)
    };
    let (j, _) = Journal::open(&cfg).unwrap();
    fs::create_dir(&blocker).unwrap();
    let mut id = 0;
    let mut append_one = || {
        id += 1;
        j.append(Entry::Accepted {
            first_id: id,
            tasks: &[task(id)],
        });
        j.append(Entry::Finished(&result(id)));
        j.append(Entry::Forgotten(&[id]));
    };
    // Past the threshold: the compaction starts and fails, and again when
    // the file has doubled (at about 8 KiB); then halfway to the next
    // doubling.
    while fs::metadata(&path).unwrap().len() < 12 * 1024 {
        append_one();
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = j.stats();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let compactions = || count(&stats.compactions);
    // The failure is noted by the writer: small records until it is.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(&stats.compaction_failures) == 0 {
        assert!(std::time::Instant::now() < deadline, "no compaction failed");
        j.append(Entry::Forgotten(&[1]));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(compactions(), 0);
    fs::remove_dir(&blocker).unwrap();
    // A few small records over two seconds, far from doubling the file.
    let size = fs::metadata(&path).unwrap().len();
    for _ in 0..20 {
        if compactions() > 0 {
            break;
        }
        j.append(Entry::Forgotten(&[1]));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(compactions() > 0, "not tried again");
    assert!(
        fs::metadata(&path).unwrap().len() < size,
        "compacted, not doubled"
    );
    j.close();
    assert!(fs::metadata(&path).unwrap().len() < 4096);
    assert!(!blocker.exists());
}
