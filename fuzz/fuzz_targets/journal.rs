//! Feeds arbitrary bytes to `journal::replay::replay` as a journal image. The
//! first byte picks how: bit 0 prepends a valid header (so half the inputs
//! reach the records), bit 1 rewrites the checksum of each record along the
//! chain of length prefixes (so the record decoders are reached without the
//! fuzzer solving CRC-32). Findings: a panic; a valid header refused; `Ok`
//! with `valid_len` past the input or not the end of the `records`-th record
//! (walking the length prefixes from the header); a torn tail that is not at
//! `valid_len`, or none while `valid_len` is short of the input; a `Corrupt`
//! error whose offsets are outside the input, out of order, or not at a
//! record boundary. On `Ok`, the state is written with `write_state` (as
//! compaction does) and replayed: that must succeed in full and give back
//! the same next id, pending ids and result ids, then the same tasks and
//! results.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use runner::journal::record::{self, HEADER_LEN, RECORD_PREFIX_LEN};
use runner::journal::replay::replay;
use runner::journal::{write_state, JournalError, State};

/// The offsets where the length prefixes put records, from the header on,
/// as `(start, end)` of each record whose prefix is in `data`.
fn chain(data: &[u8]) -> Vec<(usize, usize)> {
    let (mut out, mut at) = (Vec::new(), HEADER_LEN);
    while at + RECORD_PREFIX_LEN <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let end = at + RECORD_PREFIX_LEN + len;
        out.push((at, end));
        if len == 0 {
            break;
        }
        at = end;
    }
    out
}

/// Writes the right checksum into every whole record of the chain.
fn fix_checksums(data: &mut [u8]) {
    for (at, end) in chain(data) {
        if end > data.len() || end == at + RECORD_PREFIX_LEN {
            break;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&data[at..at + 4]);
        crc.update(&data[at + RECORD_PREFIX_LEN..end]);
        data[at + 4..at + 8].copy_from_slice(&crc.finalize().to_le_bytes());
    }
}

/// What compaction must keep: the next id and which tasks are pending or done.
fn ids(s: &State) -> (u64, Vec<u64>, Vec<u64>) {
    (s.next_id, s.pending.keys().copied().collect(), s.results.keys().copied().collect())
}

/// Writes `state` as compaction does and replays it.
fn round_trip(state: &State) {
    let mut out = Vec::new();
    write_state(&mut out, state, record::Salt::NONE).expect("write_state failed on a replayed state");
    let len = out.len();
    let again = replay(&Bytes::from(out)).expect("a journal from write_state does not replay");
    assert!(
        again.torn.is_none() && again.valid_len == len,
        "a journal from write_state is torn: {:?}",
        again.torn
    );
    assert_eq!(ids(&again.state), ids(state), "write_state + replay changes ids");
    assert!(again.state.pending == state.pending, "write_state + replay changes a pending task");
    assert!(again.state.results == state.results, "write_state + replay changes a result");
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else { return };
    let mut image = Vec::with_capacity(HEADER_LEN + rest.len());
    if mode & 1 == 1 {
        // Format 1 (no salt), whose checksums `fix_checksums` makes.
        image.extend_from_slice(&record::Salt::NONE.header());
    }
    image.extend_from_slice(rest);
    if mode & 2 == 2 {
        fix_checksums(&mut image);
    }
    let data = Bytes::from(image);
    match replay(&data) {
        Ok(r) => {
            assert!(r.valid_len <= data.len(), "valid_len {} past the input", r.valid_len);
            // `records` intact records follow the header: `valid_len` ends the last.
            let end = match r.records as usize {
                0 => Some(HEADER_LEN),
                n => chain(&data).get(n - 1).map(|&(_, end)| end),
            };
            assert_eq!(end, Some(r.valid_len), "valid_len is not the end of record {}", r.records);
            match &r.torn {
                None => assert_eq!(r.valid_len, data.len(), "bytes left over but nothing torn"),
                Some((at, why)) => assert_eq!(*at, r.valid_len, "torn at {at} ({why})"),
            }
            round_trip(&r.state);
        }
        Err(JournalError::Corrupt { offset, intact_after, why, .. }) => {
            let (offset, after) = (offset as usize, intact_after as usize);
            assert!(offset < after && after < data.len(), "corrupt at {offset}, intact at {after}");
            let starts = chain(&data);
            assert!(
                offset == HEADER_LEN || starts.iter().any(|&(_, end)| end == offset),
                "corruption ({why}) reported at {offset}, inside a record"
            );
        }
        Err(e) => assert!(mode & 1 == 0, "a valid header was refused: {e}"),
    }
});
