//! Finding workers: every scan interval, connect to each port of the scan
//! ranges on localhost and the listed hosts, concurrently, and run the
//! handshake as the master. A port that refuses or times out is skipped
//! quietly; a listener that answers but is not a runner worker (or lacks the
//! secret) is logged once and left alone for a while; a worker becomes a
//! session and registers on this first contact.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::serve::{worker_session, Registration};
use super::Shared;
use crate::metrics::Metric;
use crate::net::{self, ConnectError};
use crate::proto::handshake::HandshakeError;
use crate::proto::{FromWorker, Role, ToWorker};

/// How long a listener that failed the handshake is left alone: well
/// short of a worker's default master-timeout (30 s), so that a worker
/// restarted on that port, its secret or id corrected, is found before it
/// gives up. The cost is one handshake per interval with a listener that
/// is not a worker.
const NOT_A_WORKER_BACKOFF: Duration = Duration::from_secs(10);
/// How long a worker that refused this master (it serves another), or a
/// listener that did not finish the handshake in time, is left alone: a
/// stopped worker, for one, answers again once resumed, and must be found
/// well within its master-timeout.
const REFUSED_BACKOFF: Duration = Duration::from_secs(5);
/// Most probes in flight at once.
const PROBES_IN_FLIGHT_MAX: usize = 256;

pub(crate) async fn scan_loop(shared: Arc<Shared>) {
    loop {
        let started = Instant::now();
        let targets = targets(&shared).await;
        let probed = targets.len();
        let found = scan(&shared, targets).await;
        shared
            .hists()
            .record(Metric::DiscoveryScan, started.elapsed());
        tracing::debug!(
            probed,
            found,
            took_us = started.elapsed().as_micros() as u64,
            "discovery scan done"
        );
        tokio::select! {
            _ = tokio::time::sleep(shared.cfg.scan_interval) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

async fn targets(shared: &Shared) -> Vec<SocketAddr> {
    let mut hosts = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    for h in &shared.cfg.scan_hosts {
        match tokio::net::lookup_host((h.as_str(), 0)).await {
            Ok(addrs) => hosts.extend(addrs.map(|a| a.ip())),
            Err(e) => tracing::warn!(host = %h, "cannot resolve scan host: {e}"),
        }
    }
    hosts.sort();
    hosts.dedup();
    let now = Instant::now();
    let mut reg = shared.registry();
    reg.not_workers.retain(|_, until| *until > now);
    let known: std::collections::HashSet<SocketAddr> =
        reg.workers().values().filter_map(|w| w.listen).collect();
    let mut out = Vec::new();
    for host in hosts {
        for range in &shared.cfg.scan {
            for port in range.ports() {
                let a = SocketAddr::new(host, port);
                if a == shared.local_addr
                    || known.contains(&a)
                    || reg.probing.contains(&a)
                    || reg.not_workers.contains_key(&a)
                {
                    continue;
                }
                out.push(a);
            }
        }
    }
    for a in &out {
        reg.probing.insert(*a);
    }
    out
}

/// Probes `targets`; returns how many were workers. Waits for the probes
/// for at most a scan interval: a listener that holds a probe to its
/// handshake deadline (a silent one, a stopped worker) must not hold back
/// the next round, which finds the workers that came meanwhile. A probe
/// still running then goes on by itself (its address is skipped while it
/// does).
async fn scan(shared: &Arc<Shared>, targets: Vec<SocketAddr>) -> usize {
    let mut set = JoinSet::new();
    let mut found = 0;
    let until = tokio::time::Instant::now() + shared.cfg.scan_interval;
    for addr in targets {
        if set.len() >= PROBES_IN_FLIGHT_MAX {
            found += set.join_next().await.and_then(|r| r.ok()).unwrap_or(0);
        }
        set.spawn(probe(shared.clone(), addr));
    }
    loop {
        match tokio::time::timeout_at(until, set.join_next()).await {
            Ok(Some(r)) => found += r.unwrap_or(0),
            Ok(None) => break,
            Err(_) => {
                set.detach_all();
                break;
            }
        }
    }
    found
}

async fn probe(shared: Arc<Shared>, addr: SocketAddr) -> usize {
    let result = net::connect::<ToWorker, FromWorker>(
        addr,
        shared.cfg.wire,
        shared.identity.clone(),
        &[Role::Worker],
        shared.cfg.scan_connect_timeout,
        shared.cfg.scan_handshake_timeout,
    )
    .await;
    match result {
        Ok((conn, peer)) => {
            tracing::info!(%addr, worker = %peer.node, "discovered worker");
            let (r, w) = net::split(conn);
            let s = shared.clone();
            shared.tracker.spawn(async move {
                let went = worker_session(s.clone(), r, w, peer, addr).await;
                let mut reg = s.registry();
                if went == Registration::Refused {
                    reg.not_workers
                        .insert(addr, Instant::now() + REFUSED_BACKOFF);
                }
                reg.probing.remove(&addr);
            });
            1
        }
        Err(ConnectError::Handshake { source, .. }) => {
            let backoff = match source {
                HandshakeError::Timeout(_) => {
                    tracing::info!(%addr, "skipping listener for {REFUSED_BACKOFF:?}: {source} (a stopped worker, or not a runner worker)");
                    REFUSED_BACKOFF
                }
                _ => {
                    tracing::info!(%addr, "skipping listener for {NOT_A_WORKER_BACKOFF:?}: not a runner worker we can use ({source})");
                    NOT_A_WORKER_BACKOFF
                }
            };
            let mut reg = shared.registry();
            reg.not_workers.insert(addr, Instant::now() + backoff);
            reg.probing.remove(&addr);
            0
        }
        Err(_) => {
            shared.registry().probing.remove(&addr);
            0
        }
    }
}
