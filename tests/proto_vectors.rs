//! proto-spec/vectors/ holds every message in both wires; each decodes to the
//! sample it was made from and re-encodes to the same bytes, so the spec and
//! the code cannot drift apart. Regenerate after a deliberate change with
//! `REGENERATE_VECTORS=1 cargo test --test proto_vectors`.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use runner::proto::frame::HEADER_LEN;
use runner::proto::{Message, Wire};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto-spec/vectors")
}

fn regenerate() -> bool {
    std::env::var_os("REGENERATE_VECTORS").is_some()
}

/// Frame hex: the 10 header bytes on the first line, the body 32 bytes a line.
fn to_hex(frame: &[u8]) -> String {
    let mut out = hex::encode(&frame[..HEADER_LEN]);
    out.push('\n');
    for chunk in frame[HEADER_LEN..].chunks(32) {
        out.push_str(&hex::encode(chunk));
        out.push('\n');
    }
    out
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(digits).expect("vector files hold hex digits")
}

fn check_direction<M: Message + std::fmt::Debug + PartialEq + Clone>(
    dir_name: &str,
    samples: Vec<(&'static str, M)>,
) {
    let dir = vectors_dir().join(dir_name);
    if regenerate() {
        fs::create_dir_all(&dir).unwrap();
    }
    let names: BTreeSet<&str> = samples.iter().map(|(n, _)| *n).collect();
    let table: BTreeSet<&str> = M::TYPES.iter().map(|(_, n)| *n).collect();
    assert_eq!(names, table, "{dir_name}: a sample for every message type");

    let mut expected_files = BTreeSet::new();
    for (name, msg) in &samples {
        let stem = format!("{:02x}-{name}", msg.msg_type());
        let bin_path = dir.join(format!("{stem}.bincode.hex"));
        let json_path = dir.join(format!("{stem}.json"));
        expected_files.insert(bin_path.file_name().unwrap().to_owned());
        expected_files.insert(json_path.file_name().unwrap().to_owned());

        let frame = common::encode(Wire::Bincode, msg);
        let line = common::encode(Wire::Json, msg);
        if regenerate() {
            fs::write(&bin_path, to_hex(&frame)).unwrap();
            fs::write(&json_path, &line).unwrap();
            continue;
        }

        let vec_frame = from_hex(&fs::read_to_string(&bin_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run REGENERATE_VECTORS=1 cargo test --test proto_vectors)",
                bin_path.display()
            )
        }));
        let decoded: Vec<M> = common::decode_all(Some(Wire::Bincode), &vec_frame)
            .unwrap_or_else(|e| panic!("{}: {e}", bin_path.display()));
        assert_eq!(decoded, vec![msg.clone()], "{}", bin_path.display());
        let again = common::encode(Wire::Bincode, &decoded[0]);
        assert_eq!(
            &again[..],
            &vec_frame[..],
            "{} re-encodes byte-identically",
            bin_path.display()
        );
        assert_eq!(
            &frame[..],
            &vec_frame[..],
            "{} matches the code",
            bin_path.display()
        );

        let vec_line = fs::read(&json_path).unwrap();
        let decoded: Vec<M> = common::decode_all(Some(Wire::Json), &vec_line)
            .unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
        assert_eq!(decoded, vec![msg.clone()], "{}", json_path.display());
        let again = common::encode(Wire::Json, &decoded[0]);
        assert_eq!(
            &again[..],
            &vec_line[..],
            "{} re-encodes byte-identically",
            json_path.display()
        );
        assert_eq!(
            &line[..],
            &vec_line[..],
            "{} matches the code",
            json_path.display()
        );
    }
    if !regenerate() {
        let present: BTreeSet<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            present, expected_files,
            "{dir_name}: no stray or missing vector files"
        );
    }
}

#[test]
fn client_to_master_vectors_round_trip_byte_identically() {
    check_direction("client-to-master", common::from_client());
}

#[test]
fn master_to_client_vectors_round_trip_byte_identically() {
    check_direction("master-to-client", common::to_client());
}

#[test]
fn master_to_worker_vectors_round_trip_byte_identically() {
    check_direction("master-to-worker", common::to_worker());
}

#[test]
fn worker_to_master_vectors_round_trip_byte_identically() {
    check_direction("worker-to-master", common::from_worker());
}
