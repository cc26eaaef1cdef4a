//! Shared by the protocol tests: one sample of every message of every
//! direction, and helpers to push messages through a codec.
#![allow(dead_code)]

use bytes::BytesMut;
use runner::proto::*;
use tokio_util::codec::{Decoder, Encoder};

pub fn hello(role: Role) -> Hello {
    Hello {
        role,
        min_version: 1,
        max_version: 1,
        node: Text::from_static("node-1"),
        auth: true,
        nonce: Bytes32([0xab; 32]),
    }
}

/// The common messages, with a hello from `sender` (the role that sends
/// in this direction).
fn common<M: From<Common>>(sender: Role) -> Vec<(&'static str, M)> {
    vec![
        ("hello", M::from(Common::Hello(hello(sender)))),
        (
            "auth",
            M::from(Common::Auth(Auth {
                proof: Bytes32([7; 32]),
            })),
        ),
        (
            "error",
            M::from(Common::Error(ErrorMsg::new(
                ErrorCode::AUTH_FAILED,
                "the peer's proof did not verify",
            ))),
        ),
        ("ping", M::from(Common::Ping(Ping { seq: 300 }))),
        ("pong", M::from(Common::Pong(Pong { seq: 300 }))),
        (
            "goodbye",
            M::from(Common::Goodbye(Goodbye {
                reason: Text::from_static("shutting down"),
            })),
        ),
    ]
}

pub fn new_task(kind: &'static str, payload: Payload) -> NewTask {
    NewTask {
        kind: Text::from_static(kind),
        payload,
        priority: 200,
        retries: 3,
        timeout_ms: 2500,
    }
}

pub fn from_client() -> Vec<(&'static str, FromClient)> {
    let mut v = common::<FromClient>(Role::Client);
    v.push((
        "submit",
        FromClient::Submit(Submit {
            tasks: vec![
                new_task("echo", Payload::from("hi")),
                new_task("sleep", Payload::from("50")),
                new_task("custom", Payload::from(&[0u8, 159, 146, 150, 255][..])),
            ],
        }),
    ));
    v.push((
        "status",
        FromClient::Status(StatusRequest { histograms: true }),
    ));
    v.push((
        "fetch",
        FromClient::Fetch(Fetch {
            ids: vec![7, 300, 1 << 40],
        }),
    ));
    v.push(("ack", FromClient::Ack(Ack { ids: vec![7, 8, 9] })));
    v.push((
        "submit_detached",
        FromClient::SubmitDetached(SubmitDetached {
            tasks: vec![new_task("noop", Payload::from("later"))],
        }),
    ));
    v.push((
        "cancel_tasks",
        FromClient::CancelTasks(CancelTasks {
            request: 1,
            ids: vec![1_000_000, 1_000_001],
            reason: Text::from_static("wrong input"),
        }),
    ));
    v
}

pub fn to_client() -> Vec<(&'static str, ToClient)> {
    let mut v = common::<ToClient>(Role::Master);
    v.push((
        "accepted",
        ToClient::Accepted(Accepted {
            first_id: 1_000_000,
            count: 3,
        }),
    ));
    v.push((
        "results",
        ToClient::Results(Results {
            results: vec![
                TaskResult {
                    id: 1_000_000,
                    status: TaskStatus::Ok,
                    output: Payload::from("hi"),
                    attempts: 1,
                    worker: Text::from_static("w1"),
                    errors: vec![],
                },
                TaskResult {
                    id: 1_000_001,
                    status: TaskStatus::Failed,
                    output: Payload::empty(),
                    attempts: 2,
                    worker: Text::from_static("w2"),
                    errors: vec![
                        AttemptError {
                            attempt: 1,
                            worker: Text::from_static("w1"),
                            reason: Text::from_static("timed out after 2500 ms"),
                        },
                        AttemptError {
                            attempt: 2,
                            worker: Text::from_static("w2"),
                            reason: Text::from_static("exit status 1"),
                        },
                    ],
                },
                TaskResult {
                    id: 1_000_002,
                    status: TaskStatus::Cancelled,
                    output: Payload::empty(),
                    attempts: 0,
                    worker: Text::empty(),
                    errors: vec![],
                },
                TaskResult {
                    id: 1_000_003,
                    status: TaskStatus::Unknown,
                    output: Payload::empty(),
                    attempts: 0,
                    worker: Text::empty(),
                    errors: vec![],
                },
            ],
        }),
    ));
    v.push((
        "status_report",
        ToClient::Status(StatusReport {
            workers: vec![WorkerInfo {
                id: Text::from_static("w1"),
                addr: Text::from_static("127.0.0.1:5000"),
                slots: 2,
                in_flight: 1,
                done: 42,
                failed: 1,
                rtt_us: 130,
                silent_ms: 12,
            }],
            queues: vec![
                QueueDepth {
                    priority: 200,
                    depth: 5,
                },
                QueueDepth {
                    priority: 128,
                    depth: 70_000,
                },
            ],
            submitted: 100,
            completed: 90,
            failed: 2,
            retried: 3,
            running: 1,
            histograms: vec![HistogramSummary {
                name: Text::from_static("end_to_end"),
                count: 92,
                p50_us: 250,
                p90_us: 400,
                p99_us: 900,
                p999_us: 1500,
                max_us: 2100,
                hdr: Text::empty(),
            }],
        }),
    ));
    v.push((
        "cancel_report",
        ToClient::CancelReport(CancelReport {
            request: 1,
            cancelled: vec![1_000_001],
            finished: vec![1_000_000],
            unknown: vec![],
        }),
    ));
    v
}

pub fn to_worker() -> Vec<(&'static str, ToWorker)> {
    let mut v = common::<ToWorker>(Role::Master);
    v.push((
        "run",
        ToWorker::Run(Run {
            tasks: vec![
                Assignment {
                    task_id: 7,
                    attempt: 1,
                    kind: Text::from_static("noop"),
                    payload: Payload::from("0123456789abcdef"),
                    timeout_ms: 0,
                },
                Assignment {
                    task_id: 8,
                    attempt: 2,
                    kind: Text::from_static("spin"),
                    payload: Payload::from("100"),
                    timeout_ms: 1000,
                },
            ],
        }),
    ));
    v.push((
        "cancel",
        ToWorker::Cancel(Cancel {
            task_id: 8,
            attempt: 2,
        }),
    ));
    v
}

pub fn from_worker() -> Vec<(&'static str, FromWorker)> {
    let mut v = common::<FromWorker>(Role::Worker);
    v.push((
        "register",
        FromWorker::Register(Register {
            slots: 2,
            kinds: vec![Text::from_static("noop"), Text::from_static("echo")],
            listen: Text::from_static("127.0.0.1:5000"),
        }),
    ));
    v.push((
        "done",
        FromWorker::Done(Done {
            results: vec![
                AttemptResult {
                    task_id: 7,
                    attempt: 1,
                    status: AttemptStatus::Ok,
                    output: Payload::from("0123456789abcdef"),
                    error: Text::empty(),
                },
                AttemptResult {
                    task_id: 8,
                    attempt: 2,
                    status: AttemptStatus::TimedOut,
                    output: Payload::empty(),
                    error: Text::from_static("timed out after 1000 ms"),
                },
                AttemptResult {
                    task_id: 9,
                    attempt: 1,
                    status: AttemptStatus::Rejected,
                    output: Payload::empty(),
                    error: Text::from_static(
                        "sleep: payload \"soon\" is not a number of milliseconds",
                    ),
                },
            ],
        }),
    ));
    v
}

/// Encodes `msg` on `wire` with a codec that sends `M`.
pub fn encode<M: Message>(wire: Wire, msg: &M) -> BytesMut {
    let mut codec = WireCodec::<M, M>::new(wire);
    let mut buf = BytesMut::new();
    codec.encode_ref(msg, &mut buf).expect("encode");
    buf
}

/// A receiving codec past its handshake (full frame limit).
pub fn receiver<M: Message>(wire: Option<Wire>) -> WireCodec<M, M> {
    let mut c = match wire {
        Some(w) => WireCodec::<M, M>::new(w),
        None => WireCodec::<M, M>::detect(),
    };
    c.handshake_complete();
    c
}

/// Decodes every message in `bytes`, all at once, then at end of stream.
pub fn decode_all<M: Message>(wire: Option<Wire>, bytes: &[u8]) -> Result<Vec<M>, ProtoError> {
    let mut codec = receiver::<M>(wire);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(m) = codec.decode(&mut buf)? {
        out.push(m);
    }
    while let Some(m) = codec.decode_eof(&mut buf)? {
        out.push(m);
    }
    Ok(out)
}

pub fn encode_with<M: Message>(codec: &mut WireCodec<M, M>, msg: M, buf: &mut BytesMut) {
    codec.encode(msg, buf).expect("encode");
}
