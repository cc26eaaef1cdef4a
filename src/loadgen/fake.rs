//! Lightweight fake workers: thousands of real worker sessions (handshake,
//! register, heartbeats both ways, no-op tasks answered at once) from one
//! process, to measure what a master spends to keep a large pool.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::task::JoinSet;

use crate::client::Client;
use crate::net;
use crate::proto::handshake::Identity;
use crate::proto::*;

/// Connections set up at once. They all come from one address, and a
/// master holds at most `PREAUTH_PER_SOURCE_MAX` unauthenticated
/// connections per address (refusing more as `busy`), so stay well under.
const CONNECTS_IN_FLIGHT_MAX: usize = crate::limits::PREAUTH_PER_SOURCE_MAX / 2;

type WorkerConn = net::Conn<FromWorker, ToWorker>;

/// This run's fake workers' node ids start with this: they are told apart
/// from the master's other workers, and from another run's fake workers.
fn node_prefix() -> String {
    format!("fake-{}-", std::process::id())
}

/// Connects and registers one fake worker.
async fn join(master: SocketAddr, id: u32, wire: Wire) -> Result<WorkerConn, String> {
    let me = Identity {
        role: Role::Worker,
        node: Text::from(format!("{}{id}", node_prefix())),
        secret: None,
    };
    let (mut conn, _) = net::connect::<FromWorker, ToWorker>(
        master,
        wire,
        me,
        &[Role::Master],
        Duration::from_secs(10),
        Duration::from_secs(15),
    )
    .await
    .map_err(|e| e.to_string())?;
    conn.send(FromWorker::Register(Register {
        slots: 1,
        kinds: vec![Text::from_static("noop")],
        listen: Text::empty(),
    }))
    .await
    .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Runs one fake worker until its connection ends: answers pings, pings
/// every `heartbeat`, answers every task at once.
async fn serve(mut conn: WorkerConn, id: u32, heartbeat: Duration) -> Result<(), String> {
    // Spread the heartbeats over the interval instead of all at once.
    let offset = heartbeat.mul_f64((id % 1000) as f64 / 1000.0);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
    let mut seq = 0u64;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            frame = conn.next() => {
                last_heard = Instant::now();
                match frame {
                Some(Ok(ToWorker::Ping(p))) => conn.send(FromWorker::Pong(Pong { seq: p.seq })).await.map_err(|e| e.to_string())?,
                Some(Ok(ToWorker::Run(run))) => {
                    let results = run
                        .tasks
                        .into_iter()
                        .map(|a| AttemptResult {
                            task_id: a.task_id,
                            attempt: a.attempt,
                            status: AttemptStatus::Ok,
                            output: Payload::empty(),
                            error: Text::empty(),
                        })
                        .collect();
                    conn.send(FromWorker::Done(Done { results })).await.map_err(|e| e.to_string())?;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
                }
            }
            _ = tick.tick() => {
                // As a real worker: ping only when the master has gone quiet.
                if last_heard.elapsed() >= heartbeat {
                    seq += 1;
                    conn.send(FromWorker::Ping(Ping { seq })).await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
}

/// What holding the fake pool cost the master.
#[derive(Debug)]
pub struct PoolReport {
    /// This run's fake workers registered at the master.
    pub registered: usize,
    /// The master's other workers.
    pub others: usize,
    /// Time to connect and register them all.
    pub setup: Duration,
    /// The measurement window.
    pub window: Duration,
    /// Master CPU over the window, in percent of one core (when its pid is
    /// known).
    pub master_cpu_percent: Option<f64>,
    /// What one clock tick over the window is in percent of a core: the
    /// CPU figure's resolution.
    pub cpu_resolution_percent: f64,
    /// Master resident memory at the end of the window, in MiB.
    pub master_rss_mib: Option<f64>,
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Connects `n` fake workers to `master`, waits until they are registered,
/// then measures the master (process `pid`, when known) over `window`.
pub async fn hold_pool(
    master: SocketAddr,
    pid: Option<u32>,
    n: u32,
    wire: Wire,
    heartbeat: Duration,
    window: Duration,
    client: &Client,
) -> Result<PoolReport, String> {
    let start = Instant::now();
    let mut set = JoinSet::new();
    for id in 0..n {
        if set.len() >= CONNECTS_IN_FLIGHT_MAX {
            if let Some(Ok(Err(e))) = set.join_next().await {
                return Err(format!("a fake worker could not join: {e}"));
            }
        }
        // Joining (connect, handshake, register) is bounded in parallel;
        // each joined worker then runs in a task of its own.
        set.spawn(async move {
            let conn = join(master, id, wire).await?;
            tokio::spawn(serve(conn, id, heartbeat));
            Ok::<(), String>(())
        });
    }
    while set.join_next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(120);
    let prefix = node_prefix();
    let (registered, others) = loop {
        let s = client.status(false).await.map_err(|e| e.to_string())?;
        let ours = s
            .workers
            .iter()
            .filter(|w| w.id.as_str().starts_with(&prefix))
            .count();
        if ours >= n as usize {
            break (ours, s.workers.len() - ours);
        }
        if Instant::now() > deadline {
            return Err(format!("only {ours} of {n} fake workers registered"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let setup = start.elapsed();
    let before = pid.and_then(cpu_ticks);
    tokio::time::sleep(window).await;
    let after = pid.and_then(cpu_ticks);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let master_cpu_percent = match (before, after) {
        (Some(b), Some(a)) => Some((a - b) as f64 / hz / window.as_secs_f64() * 100.0),
        _ => None,
    };
    Ok(PoolReport {
        registered,
        others,
        setup,
        window,
        master_cpu_percent,
        cpu_resolution_percent: 100.0 / hz / window.as_secs_f64(),
        master_rss_mib: pid.and_then(rss_mib),
    })
}
