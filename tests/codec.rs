//! The codec, one behaviour per test: zero-copy payloads, batching, limits
//! checked from the header, typed errors, wire detection, split reads.

mod common;

use bytes::{BufMut, BytesMut};
use runner::limits;
use runner::proto::codec::READ_AHEAD_BYTES_MAX;
use runner::proto::frame::{Header, HEADER_LEN};
use runner::proto::*;
use tokio_util::codec::Decoder;

fn run_with(payload: &'static [u8]) -> ToWorker {
    ToWorker::Run(Run {
        tasks: vec![Assignment {
            task_id: 1,
            attempt: 1,
            kind: Text::from_static("echo"),
            payload: Payload::from(payload),
            timeout_ms: 0,
        }],
    })
}

fn payload_of(msg: &ToWorker) -> &Payload {
    match msg {
        ToWorker::Run(r) => &r.tasks[0].payload,
        other => panic!("expected run, got {other:?}"),
    }
}

fn points_into(inner: &[u8], outer: (usize, usize)) -> bool {
    let at = inner.as_ptr() as usize;
    at >= outer.0 && at + inner.len() <= outer.1
}

#[test]
fn bincode_payload_is_a_slice_of_the_read_buffer() {
    let buf_bytes = common::encode(Wire::Bincode, &run_with(b"payload bytes, not copied"));
    let mut buf = BytesMut::with_capacity(4096);
    buf.put_slice(&buf_bytes);
    let range = (
        buf.as_ptr() as usize,
        buf.as_ptr() as usize + buf.capacity(),
    );
    let msg = common::receiver::<ToWorker>(None)
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    let p = payload_of(&msg);
    assert_eq!(&p[..], b"payload bytes, not copied");
    assert!(
        points_into(p, range),
        "payload must point into the read buffer"
    );
    match &msg {
        ToWorker::Run(r) => assert!(points_into(r.tasks[0].kind.as_bytes(), range)),
        _ => unreachable!(),
    }
}

#[test]
fn json_text_payload_is_a_slice_of_the_read_buffer() {
    let line = common::encode(Wire::Json, &run_with(b"plain text payload"));
    let mut buf = BytesMut::with_capacity(4096);
    buf.put_slice(&line);
    let range = (
        buf.as_ptr() as usize,
        buf.as_ptr() as usize + buf.capacity(),
    );
    let msg = common::receiver::<ToWorker>(None)
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    assert!(points_into(payload_of(&msg), range));
}

#[test]
fn one_frame_carries_a_whole_batch() {
    let tasks: Vec<NewTask> = (0..1000)
        .map(|i| common::new_task("noop", Payload::from(format!("{i:016}"))))
        .collect();
    let msg = FromClient::Submit(Submit {
        tasks: tasks.clone(),
    });
    let frame = common::encode(Wire::Bincode, &msg);
    let header = Header::parse(&frame).unwrap();
    assert_eq!(
        header.body_len as usize,
        frame.len() - HEADER_LEN,
        "one frame"
    );
    let decoded: Vec<FromClient> = common::decode_all(Some(Wire::Bincode), &frame).unwrap();
    assert_eq!(decoded, vec![FromClient::Submit(Submit { tasks })]);
}

#[test]
fn frame_over_the_limit_is_rejected_from_its_header_alone() {
    let header = Header {
        version: PROTOCOL_VERSION,
        msg_type: 0x30,
        flags: 0,
        body_len: (limits::FRAME_BYTES_MAX + 1) as u32,
    };
    let mut buf = BytesMut::from(&header.to_bytes()[..]);
    let err = common::receiver::<ToWorker>(None)
        .decode(&mut buf)
        .unwrap_err();
    assert!(matches!(err, ProtoError::FrameTooLarge { len, max }
        if len == limits::FRAME_BYTES_MAX + 1 && max == limits::FRAME_BYTES_MAX));
    assert!(
        buf.capacity() < 64 * 1024,
        "nothing reserved for the declared body"
    );
    assert_eq!(err.code(), ErrorCode::FRAME_TOO_LARGE);
}

#[test]
fn u32_max_length_prefix_is_rejected_without_allocating() {
    let header = Header {
        version: PROTOCOL_VERSION,
        msg_type: 0x30,
        flags: 0,
        body_len: u32::MAX,
    };
    let mut buf = BytesMut::from(&header.to_bytes()[..]);
    let err = common::receiver::<ToWorker>(None)
        .decode(&mut buf)
        .unwrap_err();
    assert!(matches!(err, ProtoError::FrameTooLarge { .. }));
    assert!(buf.capacity() < 64 * 1024);
}

#[test]
fn before_the_handshake_the_frame_limit_is_small() {
    let frame = common::encode(Wire::Bincode, &run_with(&[b'x'; 5000]));
    let mut codec = WireCodec::<ToWorker, ToWorker>::detect();
    let mut buf = BytesMut::from(&frame[..HEADER_LEN]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, ProtoError::FrameTooLarge { max, .. } if max == limits::PREAUTH_FRAME_BYTES_MAX)
    );
}

#[test]
fn payload_at_the_maximum_size_is_accepted() {
    for byte in [b'x', b'"', 0x07, 0xff] {
        let payload = Payload::from(vec![byte; limits::PAYLOAD_BYTES_MAX]);
        let msg = ToWorker::Run(Run {
            tasks: vec![Assignment {
                task_id: 1,
                attempt: 1,
                kind: Text::from_static("echo"),
                payload,
                timeout_ms: 0,
            }],
        });
        for wire in [Wire::Bincode, Wire::Json] {
            let bytes = common::encode(wire, &msg);
            let decoded: Vec<ToWorker> = common::decode_all(Some(wire), &bytes).unwrap();
            assert_eq!(decoded, vec![msg.clone()], "{wire}");
        }
    }
}

#[test]
fn payload_over_the_maximum_is_invalid() {
    let msg = run_with(b"").clone();
    let mut big = match msg {
        ToWorker::Run(r) => r,
        _ => unreachable!(),
    };
    big.tasks[0].payload = Payload::from(vec![1u8; limits::PAYLOAD_BYTES_MAX + 1]);
    let bytes = common::encode(Wire::Bincode, &ToWorker::Run(big));
    let err = common::decode_all::<ToWorker>(Some(Wire::Bincode), &bytes).unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::Limit {
                what: "run.payload",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn batch_over_the_maximum_is_invalid() {
    let tasks = vec![common::new_task("noop", Payload::empty()); limits::BATCH_TASKS_MAX + 1];
    let bytes = common::encode(Wire::Bincode, &FromClient::Submit(Submit { tasks }));
    let err = common::decode_all::<FromClient>(Some(Wire::Bincode), &bytes).unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::Limit {
                what: "submit.tasks",
                ..
            }
        ),
        "{err}"
    );
}

fn admission(line: &[u8]) -> Result<(), ProtoError> {
    let msgs = common::decode_all::<FromClient>(None, line)?;
    match &msgs[..] {
        [FromClient::Submit(s)] => s.check_admission(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn absurd_retries_and_timeouts_fail_admission_without_failing_the_frame() {
    let mut t = common::new_task("noop", Payload::empty());
    t.retries = limits::RETRIES_MAX + 1;
    let bytes = common::encode(
        Wire::Bincode,
        &FromClient::Submit(Submit { tasks: vec![t] }),
    );
    let msgs = common::decode_all::<FromClient>(Some(Wire::Bincode), &bytes).unwrap();
    let FromClient::Submit(s) = &msgs[0] else {
        panic!()
    };
    let err = s.check_admission().unwrap_err();
    assert!(
        err.to_string()
            .contains("task 0 of the batch: task.retries is 101"),
        "{err}"
    );

    let err = admission(
        b"{\"type\":\"submit\",\"tasks\":[{\"kind\":\"noop\",\"timeout_ms\":4000000000}]}\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("task.timeout_ms"), "{err}");
    assert_eq!(err.code(), ErrorCode::INVALID);
    let err = admission(b"{\"type\":\"submit\",\"tasks\":[{\"kind\":\"noop\"},{\"kind\":\"\"}]}\n")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("task 1 of the batch: task.kind is empty"),
        "{err}"
    );
    let err = admission(b"{\"type\":\"submit\",\"tasks\":[]}\n").unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn a_negative_timeout_is_malformed_json() {
    let line = b"{\"type\":\"submit\",\"tasks\":[{\"kind\":\"noop\",\"timeout_ms\":-5}]}\n";
    let err = common::decode_all::<FromClient>(None, line).unwrap_err();
    assert!(matches!(err, ProtoError::Malformed(_)), "{err}");
}

#[test]
fn unknown_version_is_a_typed_error_naming_both() {
    let mut frame = common::encode(Wire::Bincode, &ToWorker::Ping(Ping { seq: 1 }));
    frame[2] = 2;
    let err = common::decode_all::<ToWorker>(None, &frame).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::UnsupportedVersion {
            got: 2,
            min: 1,
            max: 1
        }
    ));
    assert_eq!(err.code(), ErrorCode::VERSION_MISMATCH);
    assert!(err.to_string().contains("version 2") && err.to_string().contains("1..=1"));
}

#[test]
fn unknown_message_type_is_a_typed_error() {
    let mut frame = common::encode(Wire::Bincode, &ToWorker::Ping(Ping { seq: 1 }));
    frame[3] = 0x10; // submit: a client's message, not the master's to a worker
    let err = common::decode_all::<ToWorker>(None, &frame).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::UnknownMessageType {
            ty: 0x10,
            direction: "master->worker"
        }
    ));
    let err =
        common::decode_all::<ToWorker>(None, b"{\"type\":\"submit\",\"tasks\":[]}\n").unwrap_err();
    assert!(matches!(err, ProtoError::UnknownMessageName { .. }));
}

#[test]
fn truncated_frame_then_eof_is_a_typed_error() {
    let frame = common::encode(Wire::Bincode, &run_with(b"abc"));
    let err = common::decode_all::<ToWorker>(None, &frame[..frame.len() - 1]).unwrap_err();
    assert!(matches!(err, ProtoError::Truncated(_)), "{err}");
}

#[test]
fn malformed_body_is_a_typed_error() {
    // A run body whose task count claims more tasks than the body holds.
    let mut frame = BytesMut::new();
    let body = [0x05u8, 0x01];
    frame.put_slice(
        &Header {
            version: 1,
            msg_type: 0x30,
            flags: 0,
            body_len: 2,
        }
        .to_bytes(),
    );
    frame.put_slice(&body);
    let err = common::decode_all::<ToWorker>(None, &frame).unwrap_err();
    assert!(matches!(err, ProtoError::Malformed(_)), "{err}");
    assert_eq!(err.code(), ErrorCode::MALFORMED);
}

#[test]
fn trailing_bytes_after_a_body_are_malformed() {
    let mut frame = common::encode(Wire::Bincode, &ToWorker::Ping(Ping { seq: 1 })).to_vec();
    frame.push(0);
    frame[6] += 1;
    let err = common::decode_all::<ToWorker>(None, &frame).unwrap_err();
    assert!(
        matches!(err, ProtoError::Malformed(ref m) if m.contains("trailing")),
        "{err}"
    );
}

#[test]
fn invalid_utf8_in_a_text_field_is_malformed() {
    let mut frame = common::encode(
        Wire::Bincode,
        &ToWorker::Goodbye(Goodbye {
            reason: Text::from_static("ab"),
        }),
    );
    let n = frame.len();
    frame[n - 1] = 0xff;
    let err = common::decode_all::<ToWorker>(None, &frame).unwrap_err();
    assert!(matches!(err, ProtoError::Malformed(_)), "{err}");
}

#[test]
fn bad_magic_is_a_typed_error() {
    let mut frame = common::encode(Wire::Bincode, &ToWorker::Ping(Ping { seq: 1 }));
    frame[1] = b'X';
    let err = common::decode_all::<ToWorker>(None, &frame).unwrap_err();
    assert!(matches!(err, ProtoError::BadMagic([b'R', b'X'])), "{err}");
}

#[test]
fn unknown_must_understand_flags_are_rejected_and_may_ignore_flags_are_not() {
    let mut frame = common::encode(Wire::Bincode, &ToWorker::Ping(Ping { seq: 1 }));
    frame[4] = 0x01;
    let err = common::decode_all::<ToWorker>(None, &frame).unwrap_err();
    assert!(matches!(err, ProtoError::UnknownFlags(1)), "{err}");
    frame[4] = 0;
    frame[5] = 0x80;
    let ok: Vec<ToWorker> = common::decode_all(None, &frame).unwrap();
    assert_eq!(ok, vec![ToWorker::Ping(Ping { seq: 1 })]);
}

#[test]
fn the_first_byte_tells_the_wire() {
    let mut codec = common::receiver::<FromClient>(None);
    let mut buf = BytesMut::from(&b"\n  {\"type\":\"ping\",\"seq\":5}\n"[..]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(FromClient::Ping(Ping { seq: 5 }))
    );
    assert_eq!(codec.wire(), Some(Wire::Json));

    let mut codec = common::receiver::<FromClient>(None);
    let mut buf = common::encode(Wire::Bincode, &FromClient::Ping(Ping { seq: 5 }));
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(FromClient::Ping(Ping { seq: 5 }))
    );
    assert_eq!(codec.wire(), Some(Wire::Bincode));

    let mut codec = common::receiver::<FromClient>(None);
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(ProtoError::UnknownWire(b'G'))
    ));
}

#[test]
fn an_undetected_connection_answers_errors_in_json() {
    let mut codec = WireCodec::<ToClient, FromClient>::detect();
    let mut out = BytesMut::new();
    codec
        .encode_ref(
            &ToClient::Error(ErrorMsg::new(ErrorCode::MALFORMED, "what is this")),
            &mut out,
        )
        .unwrap();
    assert!(
        out.starts_with(b"{\"type\":\"error\",\"code\":4,"),
        "{out:?}"
    );
}

#[test]
fn json_lines_accept_any_field_order_crlf_blank_lines_and_unknown_fields() {
    let input = b"\r\n{\"seq\":9,\"future_field\":[1,2],\"type\":\"ping\"}\r\n\n{\"type\":\"pong\",\"seq\":10}";
    let msgs: Vec<FromClient> = common::decode_all(None, input).unwrap();
    assert_eq!(
        msgs,
        vec![
            FromClient::Ping(Ping { seq: 9 }),
            FromClient::Pong(Pong { seq: 10 })
        ]
    );
}

#[test]
fn json_fields_left_out_take_their_defaults() {
    let input = b"{\"type\":\"submit\",\"tasks\":[{\"kind\":\"echo\"}]}\n{\"type\":\"hello\",\"role\":\"client\"}\n";
    let msgs: Vec<FromClient> = common::decode_all(None, input).unwrap();
    let FromClient::Submit(s) = &msgs[0] else {
        panic!()
    };
    assert_eq!(s.tasks[0].priority, PRIORITY_DEFAULT);
    assert_eq!(s.tasks[0].retries, RETRIES_DEFAULT);
    assert_eq!(s.tasks[0].timeout_ms, 0);
    assert!(s.tasks[0].payload.is_empty());
    let FromClient::Hello(h) = &msgs[1] else {
        panic!()
    };
    assert_eq!((h.min_version, h.max_version, h.auth), (1, 1, false));
}

#[test]
fn json_binary_payloads_travel_as_base64_and_text_as_strings() {
    let line = common::encode(Wire::Json, &run_with(&[0xff, 0x00, 0x01]));
    assert!(std::str::from_utf8(&line)
        .unwrap()
        .contains("\"payload\":{\"base64\":\"/wAB\"}"));
    let line = common::encode(Wire::Json, &run_with(b"tab\there"));
    assert!(std::str::from_utf8(&line)
        .unwrap()
        .contains("\"payload\":\"tab\\there\""));
    let decoded: Vec<ToWorker> = common::decode_all(None, &line).unwrap();
    assert_eq!(&payload_of(&decoded[0])[..], b"tab\there");
}

#[test]
fn json_of_the_wrong_shape_is_malformed() {
    for bad in [
        &b"{\"type\":\"ping\",\"seq\":\"five\"}\n"[..],
        b"{\"type\":\"ping\"}\n",
        b"{\"seq\":1}\n",
        b"[1,2,3]\n",
        b"{\"type\":\"ping\",\"seq\":1\n",
        b"{\"type\":\"submit\",\"tasks\":[{\"kind\":\"x\",\"payload\":{\"base64\":\"!!\"}}]}\n",
        b"{\"type\":\"ping\",\"seq\":1,\"x\":\"\xff\"}\n",
    ] {
        let err = common::decode_all::<FromClient>(Some(Wire::Json), bad).unwrap_err();
        assert!(
            matches!(err, ProtoError::Malformed(_)),
            "{:?}: {err}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn json_line_over_the_limit_is_rejected_before_its_end_arrives() {
    let mut codec = WireCodec::<FromClient, FromClient>::detect();
    let mut buf = BytesMut::from(&b"{\"type\":\"submit\",\"tasks\":[\""[..]);
    buf.put_slice(&vec![b'a'; limits::PREAUTH_FRAME_BYTES_MAX]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(ProtoError::LineTooLong { .. })
    ));
}

fn check_split_reads<M: Message + PartialEq + std::fmt::Debug + Clone>(samples: Vec<(&str, M)>) {
    for wire in [Wire::Bincode, Wire::Json] {
        let mut stream = BytesMut::new();
        let msgs: Vec<M> = samples.iter().map(|(_, m)| m.clone()).collect();
        for m in &msgs {
            stream.put_slice(&common::encode(wire, m));
        }
        for cut in 0..=stream.len() {
            let mut codec = common::receiver::<M>(None);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                buf.put_slice(part);
                while let Some(m) = codec.decode(&mut buf).unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, msgs, "{wire}: split at byte {cut}");
        }
        // And one byte at a time.
        let mut codec = common::receiver::<M>(None);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in stream.iter() {
            buf.put_u8(*b);
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, msgs, "{wire}: byte by byte");
    }
}

#[test]
fn frames_split_at_every_byte_decode_as_whole_ones() {
    check_split_reads(common::from_client());
    check_split_reads(common::to_client());
    check_split_reads(common::to_worker());
    check_split_reads(common::from_worker());
}

#[test]
fn attempt_zero_and_zero_nonces_are_invalid() {
    for line in [
        &b"{\"type\":\"cancel\",\"task_id\":1,\"attempt\":0}\n"[..],
        b"{\"type\":\"run\",\"tasks\":[{\"task_id\":1,\"attempt\":0,\"kind\":\"noop\"}]}\n",
    ] {
        let err = common::decode_all::<ToWorker>(None, line).unwrap_err();
        assert!(matches!(err, ProtoError::Invalid(_)), "{err}");
    }
    let err = common::decode_all::<FromClient>(
        None,
        b"{\"type\":\"hello\",\"role\":\"client\",\"auth\":true}\n",
    )
    .unwrap_err();
    assert!(
        matches!(err, ProtoError::Invalid(ref m) if m.contains("nonce")),
        "{err}"
    );
}

/// A `submit` of `n` no-op tasks, as one bincode frame.
fn submit_frame(n: usize) -> BytesMut {
    let tasks = (0..n)
        .map(|i| common::new_task("noop", Payload::from(format!("{i:016}"))))
        .collect();
    common::encode(Wire::Bincode, &FromClient::Submit(Submit { tasks }))
}

/// Decodes every frame of `read` (what one read brought) and returns the
/// room the codec then leaves for the next read. The messages are held
/// meanwhile, as a master holds its tasks' payloads (slices of the buffer).
fn room_after_read(codec: &mut WireCodec<FromClient, FromClient>, read: &[u8]) -> usize {
    let mut buf = BytesMut::from(read);
    let mut held = Vec::new();
    while let Some(msg) = codec.decode(&mut buf).unwrap() {
        held.push(msg);
    }
    buf.capacity() - buf.len()
}

#[test]
fn a_busy_connection_gets_room_for_twice_what_its_last_read_brought() {
    let mut codec = common::receiver::<FromClient>(Some(Wire::Bincode));
    let mut read = BytesMut::new();
    for _ in 0..3 {
        read.extend_from_slice(&submit_frame(70));
    }
    let delivered = read.len();
    assert!(delivered > 4 * 1024, "{delivered}");
    assert!(room_after_read(&mut codec, &read) >= 2 * delivered);
}

#[test]
fn the_room_halves_while_less_arrives_and_never_passes_the_maximum() {
    let mut codec = common::receiver::<FromClient>(Some(Wire::Bincode));
    let big = submit_frame(limits::BATCH_TASKS_MAX);
    assert!(big.len() > 2 * READ_AHEAD_BYTES_MAX);
    assert!(room_after_read(&mut codec, &big) <= READ_AHEAD_BYTES_MAX);
    let small = submit_frame(1);
    let rooms: Vec<usize> = (0..10)
        .map(|_| room_after_read(&mut codec, &small))
        .collect();
    assert!(rooms.windows(2).all(|w| w[1] <= w[0]), "{rooms:?}");
    assert!(
        rooms[9] < 1024,
        "an idle connection keeps a small buffer: {rooms:?}"
    );
}

#[test]
fn a_json_line_naming_its_type_twice_is_malformed() {
    for line in [
        &b"{\"type\":\"ping\",\"seq\":3,\"type\":\"status\"}\n"[..],
        b"{\"seq\":3,\"type\":\"ping\",\"type\":\"ping\"}\n",
        // The second spelled with an escape.
        b"{\"type\":\"status\",\"ty\\u0070e\":\"ping\",\"seq\":3}\n",
    ] {
        let err = common::decode_all::<FromClient>(Some(Wire::Json), line).unwrap_err();
        assert!(matches!(err, ProtoError::Malformed(_)), "{err}");
    }
    // "type" as text inside a value is not a second member.
    let line =
        b"{\"type\":\"submit\",\"tasks\":[{\"kind\":\"type\",\"payload\":\"\\\"type\\\":1\"}]}\n";
    let msgs = common::decode_all::<FromClient>(Some(Wire::Json), line).unwrap();
    assert!(matches!(&msgs[..], [FromClient::Submit(s)] if s.tasks[0].kind == "type"));
}

#[test]
fn a_json_integer_too_large_for_its_field_is_malformed_and_said_so() {
    let line = b"{\"type\":\"fetch\",\"ids\":[18446744073709551616]}\n";
    let err = common::decode_all::<FromClient>(Some(Wire::Json), line).unwrap_err();
    let said = err.to_string();
    assert!(matches!(err, ProtoError::Malformed(_)), "{said}");
    assert!(said.contains("18446744073709551615"), "{said}");
}

#[test]
fn a_register_with_an_empty_kind_is_invalid() {
    let msg = FromWorker::Register(Register {
        slots: 1,
        kinds: vec![Text::from_static("noop"), Text::empty()],
        listen: Text::empty(),
    });
    let frame = common::encode(Wire::Bincode, &msg);
    let err = common::decode_all::<FromWorker>(None, &frame).unwrap_err();
    assert_eq!(err.code(), ErrorCode::INVALID, "{err}");
}

#[test]
fn a_json_cancel_without_a_reason_has_an_empty_one() {
    let line = b"{\"type\":\"cancel_tasks\",\"request\":3,\"ids\":[7]}\n";
    let msgs = common::decode_all::<FromClient>(Some(Wire::Json), line).unwrap();
    assert!(
        matches!(&msgs[..], [FromClient::CancelTasks(c)] if c.request == 3 && c.ids == [7] && c.reason.is_empty()),
        "{msgs:?}"
    );
}

#[test]
fn a_hello_whose_versions_are_out_of_order_is_invalid_not_a_version_mismatch() {
    let line = b"{\"type\":\"hello\",\"role\":\"client\",\"min_version\":2,\"max_version\":1}\n";
    let err = common::decode_all::<FromClient>(Some(Wire::Json), line).unwrap_err();
    assert_eq!(err.code(), ErrorCode::INVALID, "{err}");
}
