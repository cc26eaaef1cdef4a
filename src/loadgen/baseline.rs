//! Baselines measured in the same run as the cluster, so every figure can be
//! a ratio on the same machine at the same moment. Every server is a process
//! of its own (`loadgen peer`), as the master and the workers are, so the
//! baselines pay the same cross-process wake-ups:
//! - ping-pong: one 16-byte frame to an echo server over loopback and back,
//!   sequentially (the floor of any round trip here);
//! - relay: a client sends 16-byte frames to a relay that spreads them over
//!   two sinks, which send them back through the relay, with batched writes:
//!   the fastest any master could move a no-op task, as throughput (frames in
//!   flight) and as a sequential two-hop round trip.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics;

/// Bytes per frame.
pub const FRAME: usize = 16;
/// Frames per write when streaming.
const CHUNK_FRAMES: usize = 512;
/// Frames in flight when streaming.
const WINDOW_FRAMES: u64 = 64 * 1024;

/// What the baselines measured.
#[derive(Debug)]
pub struct Baseline {
    /// One-hop ping-pong round trip.
    pub ping_pong: Histogram<u64>,
    /// Two-hop (client, relay, sink, relay, client) round trip.
    pub relay_rtt: Histogram<u64>,
    /// Frames per second through the relay.
    pub relay_frames_per_s: f64,
}

async fn listener() -> std::io::Result<(TcpListener, std::net::SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Echoes whatever arrives, as it arrives.
async fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn round_trips(mut s: TcpStream, n: u32) -> std::io::Result<Histogram<u64>> {
    let mut h = metrics::histogram();
    let mut frame = [7u8; FRAME];
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&frame).await?;
        s.read_exact(&mut frame).await?;
        metrics::record(&mut h, t.elapsed());
    }
    Ok(h)
}

/// Reads a stream of [`FRAME`]-byte frames a read at a time, handing out the
/// whole frames each read completes; the bytes of a frame cut by the read
/// wait for the next.
struct FrameReader {
    buf: Vec<u8>,
    /// Bytes in `buf`, and how many of them were handed out as whole frames.
    have: usize,
    whole: usize,
}

impl FrameReader {
    fn new(bytes: usize) -> FrameReader {
        FrameReader {
            buf: vec![0u8; bytes],
            have: 0,
            whole: 0,
        }
    }

    /// The whole frames the next read completes (perhaps none); `None` at
    /// the end of the stream.
    async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<Option<&[u8]>> {
        self.buf.copy_within(self.whole..self.have, 0);
        let pending = self.have - self.whole;
        let n = r.read(&mut self.buf[pending..]).await?;
        if n == 0 {
            return Ok(None);
        }
        self.have = pending + n;
        self.whole = self.have / FRAME * FRAME;
        Ok(Some(&self.buf[..self.whole]))
    }
}

/// Sends what a sink returns on to the client, whole frames only: the two
/// sinks' streams merge into one, so a frame cut between two reads must not
/// have the other sink's frames spliced into it.
async fn whole_frames_back(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    let mut frames = FrameReader::new(64 * 1024);
    while let Ok(Some(whole)) = frames.next(&mut from).await {
        if !whole.is_empty() && to.send(whole.to_vec()).await.is_err() {
            return;
        }
    }
}

/// Keeps the thread's core busy for `d`, as a master's work on a batch would.
fn busy(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Forwards the client's frames to two sinks, whole frames at a time and
/// alternating between them, and everything the sinks send back to the client;
/// with `work`, busy for that long per frame before forwarding it.
async fn relay(client: TcpStream, a: TcpStream, b: TcpStream, work: Duration) {
    let (mut cr, mut cw) = client.into_split();
    let (ar, mut aw) = a.into_split();
    let (br, mut bw) = b.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let tx2 = tx.clone();
    let back_a = tokio::spawn(whole_frames_back(ar, tx));
    let back_b = tokio::spawn(whole_frames_back(br, tx2));
    let to_client = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if cw.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut frames = FrameReader::new(64 * 1024);
    let mut turn = false;
    while let Ok(Some(batch)) = frames.next(&mut cr).await {
        let whole = batch.len();
        if whole > 0 {
            if !work.is_zero() {
                busy(work * (whole / FRAME) as u32);
            }
            // Split the whole frames in two batches, one per sink.
            let half = (whole / FRAME).div_ceil(2) * FRAME;
            let (first, second) = batch.split_at(half);
            let (x, y) = if turn {
                (&mut bw, &mut aw)
            } else {
                (&mut aw, &mut bw)
            };
            turn = !turn;
            if x.write_all(first).await.is_err() || y.write_all(second).await.is_err() {
                break;
            }
        }
    }
    back_a.abort();
    back_b.abort();
    to_client.abort();
}

/// A baseline peer in a process of its own (`loadgen peer ...`), as the
/// master and the workers are: killed when dropped.
struct Peer {
    _child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

/// Starts `loadgen peer ARGS`, under the real-time policy if `realtime`.
async fn spawn_peer(args: &[String], realtime: bool) -> std::io::Result<Peer> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("peer")
        .args(args)
        .args(realtime.then_some("--realtime"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("peer has no stdout"))?;
    let mut lines = tokio::io::BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| std::io::Error::other("peer did not start"))??
        .ok_or_else(|| std::io::Error::other("peer exited"))?;
    let addr = line
        .trim_start_matches("listening on ")
        .parse()
        .map_err(|_| std::io::Error::other(format!("peer said {line:?}")))?;
    Ok(Peer {
        _child: child,
        addr,
    })
}

async fn connect(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Serves as a baseline peer until killed: `echo`, or `relay SINK_A SINK_B`,
/// under the real-time policy if asked, the relay busy for `work` per frame.
/// Prints `listening on ADDR` first.
pub async fn serve_peer(
    role: &str,
    sinks: &[String],
    realtime: bool,
    work: Duration,
) -> std::io::Result<()> {
    if realtime {
        crate::realtime::enter().map_err(std::io::Error::other)?;
    }
    let (l, addr) = listener().await?;
    crate::outln!("listening on {addr}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    match role {
        "echo" => loop {
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            tokio::spawn(echo(s));
        },
        "relay" => {
            let [a, b] = sinks else {
                return Err(std::io::Error::other("relay needs two sink addresses"));
            };
            let (a, b): (std::net::SocketAddr, std::net::SocketAddr) = (
                a.parse().map_err(std::io::Error::other)?,
                b.parse().map_err(std::io::Error::other)?,
            );
            loop {
                let (c, _) = l.accept().await?;
                c.set_nodelay(true)?;
                let (sa, sb) = (connect(a).await?, connect(b).await?);
                tokio::spawn(relay(c, sa, sb, work));
            }
        }
        other => Err(std::io::Error::other(format!(
            "unknown peer role {other:?}"
        ))),
    }
}

/// The relay and its two sinks, each a process; returns them (alive) and a
/// connection to the relay.
async fn relay_setup(realtime: bool, work: Duration) -> std::io::Result<(Vec<Peer>, TcpStream)> {
    let a = spawn_peer(&["echo".into()], realtime).await?;
    let b = spawn_peer(&["echo".into()], realtime).await?;
    let r = spawn_peer(
        &[
            "relay".into(),
            a.addr.to_string(),
            b.addr.to_string(),
            format!("--work={}ns", work.as_nanos()),
        ],
        realtime,
    )
    .await?;
    let s = connect(r.addr).await?;
    Ok((vec![a, b, r], s))
}

async fn stream(s: TcpStream, frames: u64) -> std::io::Result<f64> {
    let (mut r, mut w) = s.into_split();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let got = received.clone();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        while bytes < frames * FRAME as u64 {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    bytes += n as u64;
                    got.store(bytes / FRAME as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        bytes / FRAME as u64
    });
    let chunk = vec![1u8; CHUNK_FRAMES * FRAME];
    let mut sent = 0u64;
    while sent < frames {
        while sent - received.load(std::sync::atomic::Ordering::Relaxed) > WINDOW_FRAMES {
            tokio::task::yield_now().await;
        }
        let n = (frames - sent).min(CHUNK_FRAMES as u64);
        w.write_all(&chunk[..n as usize * FRAME]).await?;
        sent += n;
    }
    let back = reader
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(back as f64 / start.elapsed().as_secs_f64())
}

/// Runs the three baselines, each peer a process of its own: `round_trips_n`
/// sequential round trips for each latency, `frames` frames for the
/// throughput.
pub async fn run(round_trips_n: u32, frames: u64) -> std::io::Result<Baseline> {
    let echo_peer = spawn_peer(&["echo".into()], false).await?;
    let ping_pong = round_trips(connect(echo_peer.addr).await?, round_trips_n).await?;
    drop(echo_peer);
    let (peers, s) = relay_setup(false, Duration::ZERO).await?;
    let relay_rtt = round_trips(s, round_trips_n).await?;
    drop(peers);
    let (peers, s) = relay_setup(false, Duration::ZERO).await?;
    let relay_frames_per_s = stream(s, frames).await?;
    drop(peers);
    Ok(Baseline {
        ping_pong,
        relay_rtt,
        relay_frames_per_s,
    })
}

/// The relay under an open loop, as the cluster is measured: frames due at
/// `rate` per second for `duration`, of which the first `warmup` is not
/// recorded (as the load generator's run counts them), each sent when the
/// load generator's pacer (every `pace`) finds it due, its latency counted
/// from when it was due (coordinated-omission correction), the warm-up's
/// not recorded; the relay and its sinks under the real-time policy if
/// `realtime` (the caller's thread is under whatever it entered), the relay
/// busy for `work` per frame (a stand-in for a master that costs that much
/// CPU per task; zero for the bare relay). What any master would add to a
/// task's latency at this rate on this machine is at least what this shows:
/// the same four processes on the same cores, doing nothing but moving the
/// bytes. A zero `pace` paces at the load generator's ticker, as its loop
/// then does.
pub async fn relay_open_loop(
    rate: f64,
    warmup: Duration,
    duration: Duration,
    pace: Duration,
    realtime: bool,
    work: Duration,
) -> std::io::Result<Histogram<u64>> {
    let (peers, s) = relay_setup(realtime, work).await?;
    let (mut r, mut w) = s.into_split();
    let started = Instant::now();
    let schedule = super::Schedule {
        started,
        nanos_per_task: 1e9 / rate,
    };
    let record_from = started + warmup;
    let total = (duration.as_secs_f64() * rate) as u64;
    let reader = tokio::spawn(async move {
        let mut h = metrics::histogram();
        let mut frames = FrameReader::new(256 * 1024);
        let mut got = 0u64;
        while got < total {
            let Some(batch) = frames.next(&mut r).await? else {
                return Err(std::io::Error::other("the relay closed"));
            };
            let now = Instant::now();
            for f in batch.chunks_exact(FRAME) {
                let i = u64::from_le_bytes(f[..8].try_into().expect("8 bytes"));
                let due = schedule.due(i);
                if due >= record_from {
                    metrics::record(&mut h, now.saturating_duration_since(due));
                }
                got += 1;
            }
        }
        Ok(h)
    });
    let pacer = super::Pacer::start(if pace.is_zero() {
        super::RATE_TICK
    } else {
        pace
    })?;
    let send_and_collect = async move {
        let mut out = Vec::with_capacity(64 * 1024);
        let mut sent = 0u64;
        while sent < total {
            pacer.tick().await?;
            let due = schedule.count_due(Instant::now()).min(total);
            out.clear();
            for i in sent..due {
                out.extend_from_slice(&i.to_le_bytes());
                out.extend_from_slice(&[0u8; FRAME - 8]);
            }
            w.write_all(&out).await?;
            sent = due;
        }
        reader
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    };
    let end = started + duration + RELAY_DRAIN_TIMEOUT;
    let h = tokio::time::timeout_at(end.into(), send_and_collect)
        .await
        .map_err(|_| {
            std::io::Error::other(format!(
                "the relay fell behind: {RELAY_DRAIN_TIMEOUT:?} after the run's end it had not returned every frame"
            ))
        })??;
    drop(peers);
    Ok(h)
}

/// How long after the run's end the relay at a rate may take to return its
/// last frames: one that keeps up returns them within milliseconds, so this
/// only ends a run whose relay has stopped or fallen behind (too much
/// `work`) instead of waiting for ever.
const RELAY_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The bare spawn rate of `program` from a tokio program with `in_flight`
/// children at a time: the ceiling for `exec` tasks on this machine.
pub async fn spawn_rate(program: &str, n: u32, in_flight: u32) -> std::io::Result<f64> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    let mut done = 0;
    while done < n {
        while started < n && set.len() < in_flight as usize {
            let p = program.to_string();
            set.spawn(async move { tokio::process::Command::new(p).status().await });
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(_))) => done += 1,
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            None => break,
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// Prints what a baseline measured.
pub fn print(b: &Baseline) {
    let ms = |v: u64| v as f64 / 1000.0;
    crate::outln!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "baseline round trip (ms)",
        "p50",
        "p99",
        "p99.9",
        "max"
    );
    for (name, h) in [
        ("raw TCP ping-pong (1 hop)", &b.ping_pong),
        ("raw relay (2 hops)", &b.relay_rtt),
    ] {
        crate::outln!(
            "{:<34} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            name,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        );
    }
    crate::outln!(
        "{:<34} {:>9.0}",
        "raw relay throughput (frames/s)",
        b.relay_frames_per_s
    );
}

/// Default number of round trips per latency baseline.
pub const ROUND_TRIPS_DEFAULT: u32 = 20_000;
/// Default frames for the relay's throughput.
pub const FRAMES_DEFAULT: u64 = 5_000_000;
/// How long a baseline may take before it is abandoned.
pub const TIMEOUT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame cut between two reads comes out whole with the second, never
    /// in pieces: the relay's way back relies on it to merge two sinks.
    #[tokio::test]
    async fn a_frame_cut_between_reads_is_handed_out_whole_with_the_read_that_completes_it() {
        let (mut tx, mut rx) = tokio::io::duplex(1024);
        let frames: Vec<u8> = (0..3 * FRAME as u8).collect();
        let mut reader = FrameReader::new(256);
        tx.write_all(&frames[..FRAME + 5]).await.unwrap();
        let first = reader.next(&mut rx).await.unwrap().unwrap().to_vec();
        assert_eq!(first, frames[..FRAME]);
        tx.write_all(&frames[FRAME + 5..FRAME + 9]).await.unwrap();
        let none = reader.next(&mut rx).await.unwrap().unwrap().to_vec();
        assert!(none.is_empty(), "no frame is whole yet");
        tx.write_all(&frames[FRAME + 9..]).await.unwrap();
        let rest = reader.next(&mut rx).await.unwrap().unwrap().to_vec();
        assert_eq!(rest, frames[FRAME..]);
        drop(tx);
        assert!(reader.next(&mut rx).await.unwrap().is_none(), "the end");
    }
}
