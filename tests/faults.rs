//! Bad input and floods against a live master (../shared/FAULTS.md,
//! scenarios 9-13, named after them): each connection that misbehaves is
//! refused or closed, nothing it sent changes the master's state, and the
//! master keeps serving everyone else.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use runner::proto::{NewTask, Payload, TaskStatus, Text};
use support::{Cluster, Opts};

const PORT_BASE: u16 = 24000;

fn task(kind: &'static str, payload: impl Into<Payload>) -> NewTask {
    NewTask {
        kind: Text::from_static(kind),
        payload: payload.into(),
        priority: 1,
        retries: 0,
        timeout_ms: 0,
    }
}

/// A fresh client submits a task and gets its result: the master serves.
async fn still_serves(c: &Cluster) {
    let started = Instant::now();
    let mut client = tokio::time::timeout(Duration::from_secs(5), c.client())
        .await
        .expect("a new client connects");
    client.submit(task("echo", "still here")).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), client.next_result())
        .await
        .expect("result in time")
        .unwrap();
    assert_eq!(
        (r.status, r.output.as_text()),
        (TaskStatus::Ok, Some("still here"))
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Sends `bytes` on a fresh connection and reads until the master closes it
/// (or `deadline`); returns what came back and how long the master took.
fn send_and_read(addr: SocketAddr, bytes: &[u8], deadline: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(deadline)).unwrap();
    let started = Instant::now();
    let _ = s.write_all(bytes);
    // Then EOF: a truncated frame must not leave the master waiting.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the master did not close the connection within {deadline:?}: {e}"),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_09_a_trickling_peer_is_closed_at_the_handshake_deadline_and_others_are_served() {
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            master_args: &["--handshake-timeout", "1s"],
            ..Opts::default()
        },
    )
    .await;
    let addr = c.addr;
    // One byte of a hello every 100 ms: never a whole line.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        for b in br#"{"type":"hello","role":"client","node":"slowloris-slowloris"}"#.iter() {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        (started.elapsed(), rest)
    });
    // Meanwhile everyone else is served.
    still_serves(&c).await;
    let (closed_after, said) = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert!(
        closed_after < Duration::from_millis(3000),
        "closed after {closed_after:?}"
    );
    assert!(
        said.contains("handshake_timeout") || said.contains("3,"),
        "{said}"
    );
    still_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_10_oversized_frames_are_refused_from_their_header_without_allocating() {
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let pid = c.master.pid();
    let before = rss_kib(pid);
    // A bincode hello header declaring u32::MAX bytes, then one over the
    // pre-handshake limit: each refused from the header alone.
    for len in [u32::MAX, runner::limits::PREAUTH_FRAME_BYTES_MAX as u32 + 1] {
        let mut frame = vec![b'R', b'N', 1, 0x01, 0, 0];
        frame.extend_from_slice(&len.to_le_bytes());
        for _ in 0..20 {
            let (said, took) = send_and_read(c.addr, &frame, Duration::from_secs(5));
            assert!(took < Duration::from_secs(2), "{took:?}");
            assert!(
                !said.is_empty(),
                "an error frame comes back before the close"
            );
        }
    }
    let after = rss_kib(pid);
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    still_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_10_a_payload_of_exactly_the_maximum_size_travels_both_ways() {
    let (_c, mut client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let max = runner::limits::PAYLOAD_BYTES_MAX;
    let payload: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
    client
        .submit(task("echo", Payload::from(payload.clone())))
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), client.next_result())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, TaskStatus::Ok);
    assert_eq!(&r.output[..], &payload[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_11_malformed_input_is_refused_and_changes_nothing() {
    let (c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    let hello = b"{\"type\":\"hello\",\"role\":\"client\",\"node\":\"bad\"}\n".to_vec();
    let after_hello = |line: &[u8]| {
        let mut v = hello.clone();
        v.extend_from_slice(line);
        v
    };
    let mut random = vec![0u8; 3000];
    rand::Rng::fill(&mut rand::thread_rng(), &mut random[..]);
    random[0] = b'R'; // looks like a frame: exercise the frame path
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random),
        ("a valid length and a garbage body", {
            let mut f = vec![b'R', b'N', 1, 0x01, 0, 0, 8, 0, 0, 0];
            f.extend_from_slice(&[0xff; 8]);
            f
        }),
        (
            "a truncated frame, then EOF",
            vec![b'R', b'N', 1, 0x01, 0, 0, 100, 0, 0, 0, 1, 2, 3],
        ),
        ("an unknown message type", {
            let mut f = vec![b'R', b'N', 1, 0x7e, 0, 0, 1, 0, 0, 0];
            f.push(0);
            f
        }),
        (
            "a JSON line that is not JSON",
            b"{\"type\": hello\n".to_vec(),
        ),
        (
            "JSON of the wrong shape",
            b"{\"type\":\"hello\",\"role\":42}\n".to_vec(),
        ),
        (
            "invalid UTF-8 in a JSON string",
            b"{\"type\":\"hello\",\"role\":\"client\",\"node\":\"\xff\xfe\"}\n".to_vec(),
        ),
        (
            "a submit of the wrong shape after the handshake",
            after_hello(b"{\"type\":\"submit\",\"tasks\":\"all of them\"}\n"),
        ),
        (
            "an unknown message after the handshake",
            after_hello(b"{\"type\":\"launch_missiles\"}\n"),
        ),
    ];
    for (what, bytes) in &cases {
        eprintln!("sending {what}");
        let (said, took) = send_and_read(c.addr, bytes, Duration::from_secs(5));
        assert!(
            took < Duration::from_secs(3),
            "{what}: closed after {took:?}"
        );
        assert!(
            said.contains("error") || said.starts_with("RN"),
            "{what}: {said:?}"
        );
    }
    // Nothing the bad connections sent took effect.
    let s = client.status(false).await.unwrap();
    assert_eq!(s.workers.len(), 1, "no phantom worker");
    assert_eq!(s.submitted, 0, "no phantom task");
    still_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_12_a_wrong_protocol_version_is_refused_naming_both_versions() {
    let (c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            ..Opts::default()
        },
    )
    .await;
    for v in [0u8, 2] {
        let hello = format!(
            "{{\"type\":\"hello\",\"role\":\"worker\",\"node\":\"w-v{v}\",\"min_version\":{v},\"max_version\":{v}}}\n"
        );
        let (said, took) = send_and_read(c.addr, hello.as_bytes(), Duration::from_secs(5));
        assert!(took < Duration::from_secs(1), "closed after {took:?}");
        assert!(
            said.contains("version_mismatch") || said.contains("\"code\":1"),
            "{said}"
        );
        assert!(
            said.contains(&format!("{v}..={v}")) && said.contains("1..=1"),
            "names both: {said}"
        );
    }
    let s = client.status(false).await.unwrap();
    assert_eq!(s.workers.len(), 1, "nothing registered");
    still_serves(&c).await;
}

/// Opens `n` connections to `to` from `from`, none of which ever says
/// hello, and holds them.
async fn flood(to: SocketAddr, from: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        pending.push(tokio::spawn(sock.connect(to)));
    }
    let mut streams = Vec::new();
    for p in pending {
        if let Ok(Ok(s)) = p.await {
            streams.push(s);
        }
    }
    streams
}

/// Reads each flood connection until the node closes it: how many were
/// closed at once to make room (nothing said), and how many were held until
/// the handshake deadline.
async fn closed_how(streams: Vec<tokio::net::TcpStream>) -> (usize, usize) {
    let reads: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 512];
                let read = tokio::io::AsyncReadExt::read(&mut s, &mut buf);
                match tokio::time::timeout(Duration::from_secs(6), read).await {
                    Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Ok(Err(_)) => Some(String::new()),
                    Err(_) => None,
                }
            })
        })
        .collect();
    let (mut displaced, mut held) = (0, 0);
    for r in reads {
        let said = r
            .await
            .unwrap()
            .expect("every connection is closed by the deadline");
        if said.is_empty() {
            displaced += 1;
        } else {
            assert!(said.contains("handshake did not finish"), "{said}");
            held += 1;
        }
    }
    (displaced, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_13_a_connection_flood_is_capped_and_the_master_keeps_serving_its_own_host() {
    const FLOOD: usize = 2000;
    let (c, client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            master_args: &["--handshake-timeout", "2s"],
            ..Opts::default()
        },
    )
    .await;
    let pid = c.master.pid();
    // From the address every local client has: the flood cannot be told
    // from them by its source.
    let streams = flood(c.addr, "127.0.0.1", FLOOD).await;
    let started = Instant::now();
    still_serves(&c).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a client on the flooding host waited {:?}",
        started.elapsed()
    );
    let s = client.status(false).await.unwrap();
    assert_eq!(s.workers.len(), 1, "the worker was not dropped");
    let fds = open_fds(pid);
    assert!(fds < 600, "the master holds {fds} descriptors");
    let (displaced, held) = closed_how(streams).await;
    assert!(
        held <= runner::limits::PREAUTH_PER_SOURCE_MAX,
        "{held} unauthenticated connections held from one source"
    );
    assert!(displaced >= FLOOD - runner::limits::PREAUTH_PER_SOURCE_MAX);
    still_serves(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_13_a_connection_flood_on_a_worker_is_capped_and_it_keeps_working() {
    const FLOOD: usize = 2000;
    let (mut c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 1,
            worker_args: &["--handshake-timeout", "2s"],
            ..Opts::default()
        },
    )
    .await;
    let w = c.worker("w1");
    let pid = w.pid();
    let line = w
        .seen
        .iter()
        .find(|l| l.contains(" listening on "))
        .cloned()
        .unwrap();
    let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let streams = flood(addr, "127.0.0.1", FLOOD).await;
    still_serves(&c).await;
    let fds = open_fds(pid);
    assert!(fds < 600, "the worker holds {fds} descriptors");
    let (displaced, held) = closed_how(streams).await;
    assert!(
        held <= runner::limits::PREAUTH_PER_SOURCE_MAX,
        "{held} held"
    );
    assert!(displaced >= FLOOD - runner::limits::PREAUTH_PER_SOURCE_MAX);
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_11_a_workers_bad_first_message_is_refused_with_the_code_of_its_fault() {
    let (c, _client) = Cluster::ready(
        PORT_BASE,
        Opts {
            workers: 0,
            ..Opts::default()
        },
    )
    .await;
    let hello = "{\"type\":\"hello\",\"role\":\"worker\",\"node\":\"odd\"}\n";
    for (what, register, code) in [
        (
            "no slots",
            "{\"type\":\"register\",\"slots\":0,\"kinds\":[\"noop\"]}",
            7,
        ),
        (
            "an empty kind",
            "{\"type\":\"register\",\"slots\":1,\"kinds\":[\"\"]}",
            7,
        ),
        ("not JSON", "{\"type\":\"register\",\"slots\":", 4),
        ("a client's message", "{\"type\":\"fetch\",\"ids\":[1]}", 6),
    ] {
        let line = format!("{hello}{register}\n");
        let (said, _) = send_and_read(c.addr, line.as_bytes(), Duration::from_secs(5));
        let expect = format!("\"code\":{code},");
        assert!(said.contains(&expect), "{what}: {said}");
    }
    // A node id is written into the master's log: a line feed in one would
    // forge lines there.
    let register = "{\"type\":\"register\",\"slots\":1,\"kinds\":[\"noop\"]}";
    for (role, node) in [
        ("worker", ""),
        ("worker", "odd\\nINFO forged line"),
        ("worker", "bell\\u0007"),
        ("client", "odd\\nINFO forged line"),
        ("client", "reversed\\u202e1"),
    ] {
        let line =
            format!("{{\"type\":\"hello\",\"role\":\"{role}\",\"node\":\"{node}\"}}\n{register}\n");
        let (said, _) = send_and_read(c.addr, line.as_bytes(), Duration::from_secs(5));
        let why = if node.is_empty() {
            "node is empty"
        } else {
            "control"
        };
        assert!(
            said.contains("\"code\":7,") && said.contains(why),
            "{role} node id {node:?}: {said}"
        );
    }
    assert!(!c.master_log().contains("\nINFO forged line"));
}
