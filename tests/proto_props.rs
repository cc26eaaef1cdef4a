//! Property tests: every message survives a round trip through both wires,
//! and no input, however broken, makes a decoder panic.

mod common;

use proptest::collection::vec;
use proptest::prelude::*;
use runner::proto::*;

fn text() -> impl Strategy<Value = Text> {
    "\\PC{0,12}".prop_map(Text::from)
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        vec(any::<u8>(), 0..48).prop_map(Payload::from),
        "\\PC{0,24}".prop_map(Payload::from),
        Just(Payload::empty()),
    ]
}

fn bytes32() -> impl Strategy<Value = Bytes32> {
    any::<[u8; 32]>().prop_map(Bytes32)
}

fn attempt() -> impl Strategy<Value = u32> {
    1..=u32::MAX
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Client), Just(Role::Worker), Just(Role::Master)]
}

fn common_msg() -> impl Strategy<Value = Common> {
    prop_oneof![
        (
            role(),
            any::<u8>(),
            any::<u8>(),
            text(),
            any::<bool>(),
            bytes32()
        )
            .prop_map(|(role, a, b, node, auth, nonce)| {
                // A valid hello lists its versions in order.
                Common::Hello(Hello {
                    role,
                    min_version: a.min(b),
                    max_version: a.max(b),
                    node,
                    auth,
                    nonce,
                })
            }),
        bytes32().prop_map(|proof| Common::Auth(Auth { proof })),
        (any::<u16>(), text()).prop_map(|(c, message)| Common::Error(ErrorMsg {
            code: ErrorCode(c),
            message
        })),
        any::<u64>().prop_map(|seq| Common::Ping(Ping { seq })),
        any::<u64>().prop_map(|seq| Common::Pong(Pong { seq })),
        text().prop_map(|reason| Common::Goodbye(Goodbye { reason })),
    ]
}

fn new_task() -> impl Strategy<Value = NewTask> {
    (
        "[a-z]{1,8}",
        payload(),
        any::<u8>(),
        0..=runner::limits::RETRIES_MAX,
        0..=runner::limits::TASK_TIMEOUT_MS_MAX,
    )
        .prop_map(|(kind, payload, priority, retries, timeout_ms)| NewTask {
            kind: Text::from(kind),
            payload,
            priority,
            retries,
            timeout_ms,
        })
}

fn from_client() -> impl Strategy<Value = FromClient> {
    prop_oneof![
        common_msg().prop_map(FromClient::from),
        vec(new_task(), 1..6).prop_map(|tasks| FromClient::Submit(Submit { tasks })),
        any::<bool>().prop_map(|histograms| FromClient::Status(StatusRequest { histograms })),
        vec(any::<u64>(), 0..6).prop_map(|ids| FromClient::Fetch(Fetch { ids })),
        vec(any::<u64>(), 0..6).prop_map(|ids| FromClient::Ack(Ack { ids })),
    ]
}

fn task_status() -> impl Strategy<Value = TaskStatus> {
    prop_oneof![
        Just(TaskStatus::Ok),
        Just(TaskStatus::Failed),
        Just(TaskStatus::Cancelled),
        Just(TaskStatus::Unknown)
    ]
}

fn attempt_status() -> impl Strategy<Value = AttemptStatus> {
    prop_oneof![
        Just(AttemptStatus::Ok),
        Just(AttemptStatus::Failed),
        Just(AttemptStatus::TimedOut),
        Just(AttemptStatus::Unsupported),
        Just(AttemptStatus::Returned),
        Just(AttemptStatus::Rejected),
    ]
}

fn task_result() -> impl Strategy<Value = TaskResult> {
    (
        any::<u64>(),
        task_status(),
        payload(),
        any::<u32>(),
        text(),
        vec((any::<u32>(), text(), text()), 0..3),
    )
        .prop_map(
            |(id, status, output, attempts, worker, errors)| TaskResult {
                id,
                status,
                output,
                attempts,
                worker,
                errors: errors
                    .into_iter()
                    .map(|(attempt, worker, reason)| AttemptError {
                        attempt,
                        worker,
                        reason,
                    })
                    .collect(),
            },
        )
}

fn status_report() -> impl Strategy<Value = StatusReport> {
    let worker = (
        text(),
        text(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(id, addr, slots, in_flight, done, failed, rtt_us, silent_ms)| WorkerInfo {
                id,
                addr,
                slots,
                in_flight,
                done,
                failed,
                rtt_us,
                silent_ms,
            },
        );
    let hist = (text(), any::<[u64; 6]>()).prop_map(|(name, v)| HistogramSummary {
        name,
        count: v[0],
        p50_us: v[1],
        p90_us: v[2],
        p99_us: v[3],
        p999_us: v[4],
        max_us: v[5],
        hdr: Text::empty(),
    });
    (
        vec(worker, 0..3),
        vec((any::<u8>(), any::<u64>()), 0..3),
        any::<[u64; 5]>(),
        vec(hist, 0..2),
    )
        .prop_map(|(workers, queues, n, histograms)| StatusReport {
            workers,
            queues: queues
                .into_iter()
                .map(|(priority, depth)| QueueDepth { priority, depth })
                .collect(),
            submitted: n[0],
            completed: n[1],
            failed: n[2],
            retried: n[3],
            running: n[4],
            histograms,
        })
}

fn to_client() -> impl Strategy<Value = ToClient> {
    prop_oneof![
        common_msg().prop_map(ToClient::from),
        (any::<u64>(), any::<u32>())
            .prop_map(|(first_id, count)| ToClient::Accepted(Accepted { first_id, count })),
        vec(task_result(), 0..4).prop_map(|results| ToClient::Results(Results { results })),
        status_report().prop_map(ToClient::Status),
    ]
}

fn to_worker() -> impl Strategy<Value = ToWorker> {
    let assignment = (
        any::<u64>(),
        attempt(),
        "[a-z]{1,8}",
        payload(),
        0..=runner::limits::TASK_TIMEOUT_MS_MAX,
    )
        .prop_map(|(task_id, attempt, kind, payload, timeout_ms)| Assignment {
            task_id,
            attempt,
            kind: Text::from(kind),
            payload,
            timeout_ms,
        });
    prop_oneof![
        common_msg().prop_map(ToWorker::from),
        vec(assignment, 0..6).prop_map(|tasks| ToWorker::Run(Run { tasks })),
        (any::<u64>(), attempt())
            .prop_map(|(task_id, attempt)| ToWorker::Cancel(Cancel { task_id, attempt })),
    ]
}

fn from_worker() -> impl Strategy<Value = FromWorker> {
    let result = (any::<u64>(), attempt(), attempt_status(), payload(), text()).prop_map(
        |(task_id, attempt, status, output, error)| AttemptResult {
            task_id,
            attempt,
            status,
            output,
            error,
        },
    );
    prop_oneof![
        common_msg().prop_map(FromWorker::from),
        (
            1..=u32::MAX,
            vec("[a-z]{1,8}".prop_map(Text::from), 0..4),
            text()
        )
            .prop_map(|(slots, kinds, listen)| {
                FromWorker::Register(Register {
                    slots,
                    kinds,
                    listen,
                })
            }),
        vec(result, 0..6).prop_map(|results| FromWorker::Done(Done { results })),
    ]
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(msg: M) -> Result<(), TestCaseError> {
    for wire in [Wire::Bincode, Wire::Json] {
        let bytes = common::encode(wire, &msg);
        let back: Vec<M> = common::decode_all(None, &bytes)
            .map_err(|e| TestCaseError::fail(format!("{wire}: {e}")))?;
        prop_assert_eq!(back.len(), 1);
        prop_assert_eq!(&back[0], &msg, "{}", wire);
    }
    Ok(())
}

/// Decodes `bytes` with every direction and every starting state; only the
/// absence of a panic is asserted.
fn decode_everything(bytes: &[u8]) {
    for wire in [None, Some(Wire::Bincode), Some(Wire::Json)] {
        let _ = common::decode_all::<FromClient>(wire, bytes);
        let _ = common::decode_all::<ToClient>(wire, bytes);
        let _ = common::decode_all::<ToWorker>(wire, bytes);
        let _ = common::decode_all::<FromWorker>(wire, bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn client_to_master_messages_round_trip_on_both_wires(m in from_client()) { round_trip(m)?; }

    #[test]
    fn master_to_client_messages_round_trip_on_both_wires(m in to_client()) { round_trip(m)?; }

    #[test]
    fn master_to_worker_messages_round_trip_on_both_wires(m in to_worker()) { round_trip(m)?; }

    #[test]
    fn worker_to_master_messages_round_trip_on_both_wires(m in from_worker()) { round_trip(m)?; }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in vec(any::<u8>(), 0..600)) {
        decode_everything(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(ty in any::<u8>(), body in vec(any::<u8>(), 0..300)) {
        let mut frame = runner::proto::frame::Header { version: 1, msg_type: ty, flags: 0, body_len: body.len() as u32 }
            .to_bytes()
            .to_vec();
        frame.extend_from_slice(&body);
        decode_everything(&frame);
    }

    #[test]
    fn corrupted_valid_messages_never_panic(
        m in from_worker(),
        json in any::<bool>(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let wire = if json { Wire::Json } else { Wire::Bincode };
        let mut bytes = common::encode(wire, &m).to_vec();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        decode_everything(&bytes);
    }
}
