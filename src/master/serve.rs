//! The master's connections: the accept loop, client sessions and worker
//! sessions (whether the worker dialed in or was found by the scan).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::link::{Departure, LinkTiming, Outcome, WorkerLink};
use super::parked::PARK_PER_ROUND_MAX;
use super::results::Unacked;
use super::{ClientOut, ClientRoute, LinkStats, Record, Route, Shared, WorkerEntry};
use crate::metrics::{Histograms, Metric};
use crate::net::preauth::Preauth;
use crate::net::{self, Conn, Reader, Writer};
use crate::proto::handshake::Peer;
use crate::proto::*;
use crate::sched::{Requeued, TaskRecord};

const MASTER_ACCEPTS: &[Role] = &[Role::Client, Role::Worker];

/// Pause after a failed accept (out of file descriptors): retrying at once
/// would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Longest part of a failed attempt's reason the master's log quotes.
const LOGGED_REASON_BYTES: usize = crate::proto::LOGGED_TEXT_BYTES;

/// Of a failed task's attempts, how many first and last the master's log
/// quotes.
const LOGGED_REASONS_EACH_END: usize = 3;

/// Least time between two of a worker session's heartbeat ticks, however
/// short the configured heartbeat: a floor on the timer wake-ups a worker
/// costs the master.
const TICK_MIN: Duration = Duration::from_millis(10);

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let preauth = Arc::new(Preauth::default());
    let mut displaced = 0u64;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    let (slot, gone) = preauth.admit(addr.ip());
                    if let Some(gone) = gone {
                        displaced += 1;
                        if displaced.is_power_of_two() {
                            tracing::warn!(%addr, displaced_from = %gone.source, displaced, "{}", gone.describe());
                        }
                    }
                    let s = shared.clone();
                    shared.clients.spawn(async move {
                        let accepted = tokio::select! {
                            a = net::accept::<ToClient, FromClient>(
                                stream,
                                s.identity.clone(),
                                MASTER_ACCEPTS,
                                s.cfg.handshake_timeout,
                            ) => a,
                            _ = slot.displaced() => {
                                tracing::debug!(%addr, "closed before it authenticated: a newer connection took its place");
                                return;
                            }
                        };
                        drop(slot);
                        match accepted {
                            Ok((conn, peer)) => session(s, conn, peer, addr).await,
                            Err(e) => tracing::info!(%addr, "connection refused: {e}"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

async fn session(
    shared: Arc<Shared>,
    conn: Conn<ToClient, FromClient>,
    peer: Peer,
    addr: SocketAddr,
) {
    match peer.role {
        Role::Worker => {
            let (r, w) = net::split(conn);
            let s = shared.clone();
            // Worker sessions belong to the main tracker: shutdown waits for
            // them to hand back their attempts.
            shared.tracker.spawn(async move {
                worker_session(s, r, w, peer, addr).await;
            });
        }
        _ => {
            let (r, w) = net::split(conn);
            client_session(shared, r, w, peer, addr).await
        }
    }
}

async fn client_session(
    shared: Arc<Shared>,
    mut read: Reader<ToClient, FromClient>,
    write: Writer<ToClient, FromClient>,
    peer: Peer,
    addr: SocketAddr,
) {
    tracing::info!(%addr, client = %peer.node, "client connected");
    let (tx, rx) = mpsc::unbounded_channel();
    let queued_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let too_slow = tokio_util::sync::CancellationToken::new();
    let wrote = Arc::new(crate::instant::AtomicInstant::new(Instant::now()));
    let route: Route = Arc::new(ClientRoute {
        tx: tx.clone(),
        name: peer.node.clone(),
        queued_bytes: queued_bytes.clone(),
        too_slow: too_slow.clone(),
        wrote: wrote.clone(),
    });
    // Told to the writer when the client is gone: tasks still hold this
    // route, so its queue would otherwise stay open (and take their results)
    // until the last of them finished.
    let gone = tokio_util::sync::CancellationToken::new();
    // With a journal every result is kept until acknowledged anyway.
    let unacked = shared
        .journal
        .is_none()
        .then(|| Arc::new(Mutex::new(Unacked::default())));
    let writer = tokio::spawn(client_writer(
        write,
        rx,
        shared.clone(),
        Outbox {
            queued_bytes,
            wrote,
            unacked: unacked.clone(),
        },
        too_slow.clone(),
        gone.clone(),
    ));
    let say = |m: ToClient| {
        let _ = tx.send(ClientOut::Msg(m));
    };
    // Tells a client that stopped reading from one that reads slowly, even
    // when no more results come to trigger the check in `send_results`.
    let mut stall_check =
        tokio::time::interval(Duration::from_millis(crate::limits::CLIENT_STALL_MS / 4));
    stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutting_down = false;
    let mut half_closed = false;
    loop {
        let msg = tokio::select! {
            m = read.next() => m,
            _ = shared.clients_close.cancelled() => {
                shutting_down = true;
                break;
            }
            _ = too_slow.cancelled() => break,
            _ = stall_check.tick() => {
                shared.check_outbox(&route);
                continue;
            }
        };
        let msg = match msg {
            None => {
                half_closed = true;
                break;
            }
            Some(Err(ProtoError::Io(e))) => {
                tracing::info!(%addr, client = %peer.node, "connection lost: {e}");
                break;
            }
            Some(Err(e)) => {
                tracing::info!(%addr, client = %peer.node, "bad input from client: {e}");
                say(ToClient::Error(ErrorMsg::new(e.code(), e.to_string())));
                break;
            }
            Some(Ok(m)) => m,
        };
        match msg {
            FromClient::Submit(s) => submit(&shared, &route, s, &say),
            FromClient::SubmitDetached(s) => submit(&shared, &shared.detached, s.into(), &say),
            FromClient::Status(req) => {
                say(ToClient::Status(status_report(&shared, req.histograms)))
            }
            FromClient::Fetch(f) => fetch(&shared, &route, f),
            FromClient::Ack(a) => ack(&shared, unacked.as_deref(), a),
            FromClient::CancelTasks(c) => super::cancel::cancel_tasks(&shared, &route, c),
            FromClient::Ping(p) => say(ToClient::Pong(Pong { seq: p.seq })),
            FromClient::Pong(_) => {}
            FromClient::Goodbye(g) => {
                tracing::info!(client = %peer.node, "client said goodbye: {}", g.reason.loggable(LOGGED_REASON_BYTES));
                break;
            }
            FromClient::Error(e) => {
                tracing::info!(client = %peer.node, "client sent error: {} ({})", e.message.loggable(LOGGED_REASON_BYTES), e.code.name());
                break;
            }
            other @ (FromClient::Hello(_) | FromClient::Auth(_)) => {
                say(ToClient::Error(ErrorMsg::new(
                    ErrorCode::UNEXPECTED,
                    format!("{} after the handshake", other.name()),
                )));
                break;
            }
        }
    }
    drop(tx);
    let weak_route = Arc::downgrade(&route);
    drop(route);
    let mut writer = writer;
    let mut writer_ended = false;
    if half_closed {
        // The client closed its sending side only (`nc -N`, `shutdown(WR)`):
        // it still reads, and gets the results of what it submitted. The
        // writer ends once the last task holding its route has delivered.
        // A client that closed both sides is found by a ping: its kernel
        // answers the write with a reset, which fails the next one.
        tracing::info!(%addr, client = %peer.node, "client closed its sending side; its results still go to it");
        let mut seq = 0;
        loop {
            tokio::select! {
                _ = &mut writer => {
                    writer_ended = true;
                    break;
                }
                _ = shared.clients_close.cancelled() => {
                    shutting_down = true;
                    break;
                }
                _ = too_slow.cancelled() => break,
                _ = stall_check.tick() => {
                    if let Some(route) = weak_route.upgrade() {
                        if shared.check_outbox(&route) {
                            seq += 1;
                            let _ = route.tx.send(ClientOut::Msg(ToClient::Ping(Ping { seq })));
                        }
                    }
                }
            }
        }
    }
    // The writer ends when the client goes, or, on shutdown, once it has
    // delivered every result (the last route clone is dropped).
    if !shutting_down {
        gone.cancel();
    }
    if too_slow.is_cancelled() {
        // Its writer may be stuck writing to a socket nobody reads.
        writer.abort();
    }
    if !writer_ended {
        let _ = writer.await;
    }
    if let Some(unacked) = unacked {
        let mut unacked = unacked.lock().unwrap_or_else(|e| e.into_inner());
        let left = unacked.take();
        if !left.is_empty() || unacked.untracked > 0 {
            tracing::info!(
                client = %peer.node,
                kept = left.len(),
                not_kept = unacked.untracked,
                "the client left results unacknowledged; those kept wait for a fetch"
            );
        }
        shared.keep_left(left);
    }
    tracing::info!(%addr, client = %peer.node, "client disconnected");
}

/// Accepts a batch (answered through `say`) whose results go to `route`:
/// the submitting client's, or for a detached submit the route of no
/// client, which keeps them for a fetch.
fn submit(shared: &Arc<Shared>, route: &Route, s: Submit, say: &impl Fn(ToClient)) {
    if shared.shutdown.is_cancelled() {
        say(ToClient::Error(ErrorMsg::new(
            ErrorCode::SHUTTING_DOWN,
            "the master is shutting down and takes no new tasks",
        )));
        return;
    }
    if let Err(e) = s.check_admission() {
        tracing::info!(client = %route.name, "batch rejected: {e}");
        say(ToClient::Error(ErrorMsg::new(e.code(), e.to_string())));
        return;
    }
    if let Some(why) = shared.journal.as_ref().and_then(|j| j.failure()) {
        say(ToClient::Error(ErrorMsg::new(
            ErrorCode::JOURNAL_FAILED,
            format!(
                "the master cannot write its journal ({why}); no task is accepted until it can"
            ),
        )));
        return;
    }
    if shared.journal.is_some() {
        let (waiting, bytes) = {
            let st = shared.store();
            (st.kept.len(), st.kept_bytes)
        };
        if waiting >= super::UNACKNOWLEDGED_RESULTS_MAX
            || bytes >= shared.cfg.kept_results_bytes_max
        {
            say(ToClient::Error(ErrorMsg::new(
                ErrorCode::BUSY,
                format!("{waiting} results ({} MiB) wait for clients to acknowledge (or fetch) them; no new tasks until fewer do", bytes >> 20),
            )));
            return;
        }
    } else if Arc::ptr_eq(route, &shared.detached) {
        // Their results could not all be kept: refused now rather than
        // dropped when they finish.
        let (kept, bytes) = {
            let st = shared.store();
            (st.kept.len(), st.kept_bytes)
        };
        let waiting = kept + shared.detached_pending.load(Ordering::Relaxed) as usize;
        let max = shared.cfg.unclaimed_results_max;
        if bytes >= shared.cfg.kept_results_bytes_max {
            say(ToClient::Error(ErrorMsg::new(
                ErrorCode::BUSY,
                format!(
                    "{kept} results taking {} MiB wait to be fetched, the most this master keeps without a journal; fetch results (runner results) or start the master with --journal",
                    bytes >> 20
                ),
            )));
            return;
        }
        if waiting + s.tasks.len() > max {
            say(ToClient::Error(ErrorMsg::new(
                ErrorCode::BUSY,
                format!(
                    "a detached batch of {} tasks does not fit: {waiting} results wait to be fetched or will, this master keeps at most {max} without a journal, so {} more fit now; fetch results (runner results) or start the master with --journal",
                    s.tasks.len(),
                    max.saturating_sub(waiting)
                ),
            )));
            return;
        }
        shared
            .detached_pending
            .fetch_add(s.tasks.len() as u64, Ordering::Relaxed);
    }
    let n = s.tasks.len() as u64;
    let first_id = shared.next_id.fetch_add(n, Ordering::Relaxed);
    if let (Some(j), Some(r)) = (&shared.journal, &shared.reservation) {
        r.extend(j, first_id + n);
    }
    if let Some(j) = &shared.journal {
        // Before `accepted` is queued: the client's writer sends it only
        // once this record is stored.
        j.append(crate::journal::Entry::Accepted {
            first_id,
            tasks: &s.tasks,
        });
    }
    // `accepted` goes into the client's queue before any record can finish.
    say(ToClient::Accepted(Accepted {
        first_id,
        count: n as u32,
    }));
    let now = Instant::now();
    for (id, task) in (first_id..).zip(s.tasks) {
        shared
            .queue
            .push(task.priority, TaskRecord::new(id, task, route.clone(), now));
    }
    shared.totals.submitted.fetch_add(n, Ordering::Relaxed);
    shared.work.notify_waiters();
}

/// Attaches a client to tasks by id: kept results go out now, unfinished
/// tasks' results when they finish, unknown ids get status `unknown`.
fn fetch(shared: &Shared, route: &Route, f: Fetch) {
    let next_id = shared.next_id.load(Ordering::Relaxed);
    let mut now = Vec::new();
    {
        let mut st = shared.store();
        for id in f.ids {
            if let Some(r) = st.get(id) {
                now.push(r.clone());
            } else if id == 0 || id >= next_id || st.done.contains(id) {
                now.push(super::results::unknown(id));
            } else {
                let w = st.watchers.entry(id).or_default();
                if !w.iter().any(|r| Arc::ptr_eq(r, route)) {
                    w.push(route.clone());
                }
            }
        }
    }
    shared.send_kept(now, route);
}

/// A client holds these results: forget them (and journal that).
fn ack(shared: &Shared, unacked: Option<&Mutex<Unacked>>, a: Ack) {
    if let Some(u) = unacked {
        u.lock().unwrap_or_else(|e| e.into_inner()).acked(&a.ids);
    }
    let mut st = shared.store();
    if !st.left.is_empty() {
        for id in &a.ids {
            st.left.remove(*id);
        }
    }
    if st.kept.is_empty() {
        return;
    }
    let forgotten: Vec<u64> = a.ids.into_iter().filter(|id| st.forget(*id)).collect();
    if let (Some(j), false) = (&shared.journal, forgotten.is_empty()) {
        j.append(crate::journal::Entry::Forgotten(&forgotten));
    }
}

/// A client writer's accounting, shared with [`Shared::send_results`]: bytes
/// queued and not yet written, and when the writer last got bytes out.
struct Outbox {
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    wrote: Arc<crate::instant::AtomicInstant>,
    /// Without a journal, results written and not yet acknowledged.
    unacked: Option<Arc<Mutex<Unacked>>>,
}

/// Writes a client's messages in order, folding consecutive results into
/// one `results` frame: many per frame when busy, no wait when idle. With a
/// journal, nothing is written before the records behind it are stored: an
/// `accepted` or a result the client sees survives a crash of the master.
async fn client_writer(
    mut write: Writer<ToClient, FromClient>,
    mut rx: mpsc::UnboundedReceiver<ClientOut>,
    shared: Arc<Shared>,
    outbox: Outbox,
    too_slow: tokio_util::sync::CancellationToken,
    gone: tokio_util::sync::CancellationToken,
) {
    let close = shared.clients_close.clone();
    let journal = shared.journal.clone();
    let mut results = Vec::new();
    let mut closing = false;
    let mut items = Vec::new();
    loop {
        let first = if closing {
            rx.try_recv().ok()
        } else {
            tokio::select! {
                biased;
                // A client that does not read is dropped, not waited for;
                // what it was not sent is kept for a fetch.
                _ = too_slow.cancelled() => {
                    client_gone(&mut write, rx, &shared).await;
                    return;
                }
                _ = gone.cancelled() => {
                    client_gone(&mut write, rx, &shared).await;
                    return;
                }
                item = rx.recv() => item,
                _ = close.cancelled() => { closing = true; continue; }
            }
        };
        let Some(first) = first else {
            // Closed: the client is gone (no goodbye to send), or, when
            // closing, every result has been written.
            if closing {
                break;
            }
            return;
        };
        // Nothing but messages (an `accepted`): let the tasks woken with it
        // run first, so that the batch it answers is on its way to a worker
        // before this write; the client gains nothing from hearing sooner.
        if first.results() == 0 && !closing {
            tokio::task::yield_now().await;
        }
        // Take what else is queued, up to about a frame's worth of results
        // and of bytes: what is taken counts as queued until written, so a
        // turn that took more would count results the client already has.
        let mut taken = first.results();
        let mut taken_bytes = first.weight();
        items.push(first);
        while taken < crate::limits::BATCH_TASKS_MAX && taken_bytes < WRITE_TURN_BYTES_MAX {
            match rx.try_recv() {
                Ok(item) => {
                    taken += item.results().max(1);
                    taken_bytes += item.weight();
                    items.push(item);
                }
                Err(_) => break,
            }
        }
        // A cancel's report stands for its tasks' `cancelled` results, as an
        // `accepted` for its batch's records: stored first.
        let carries_acks = journal.is_some()
            && items.iter().any(|i| {
                matches!(
                    i,
                    ClientOut::Results(..)
                        | ClientOut::Msg(ToClient::Accepted(_) | ToClient::CancelReport(_))
                )
            });
        if let (Some(j), true) = (&journal, carries_acks) {
            // Everything taken was appended before it was queued here.
            if let Err(why) = j.wait_stored(j.appended()).await {
                let _ = write
                    .send(ToClient::Error(ErrorMsg::new(
                        ErrorCode::JOURNAL_FAILED,
                        format!("the master cannot write its journal ({why}); batches it has not acknowledged may or may not have been accepted"),
                    )))
                    .await;
                too_slow.cancel();
                return;
            }
        }
        // Writing starts now: a stall counts from here, not from the last
        // write, which may be long ago for a client that was idle.
        outbox.wrote.set(Instant::now());
        // What was taken stays counted as queued until it is written.
        let mut taken_weight = 0;
        let mut broken = false;
        let mut pending = items.drain(..);
        for item in pending.by_ref() {
            match item {
                ClientOut::Results(r, weight) => {
                    taken_weight += weight;
                    if results.is_empty() {
                        results = r;
                    } else {
                        results.extend(r);
                    }
                }
                ClientOut::Msg(m) => {
                    if !flush_results(&mut write, &mut results, &outbox).await
                        || write.feed(m).await.is_err()
                    {
                        broken = true;
                        break;
                    }
                }
            }
        }
        if broken
            || !flush_results(&mut write, &mut results, &outbox).await
            || write.flush().await.is_err()
        {
            // The connection broke: the results not yet handed to it are
            // kept for a fetch, as are those still queued.
            shared.keep_unsent(std::mem::take(&mut results));
            for item in pending {
                if let ClientOut::Results(r, _) = item {
                    shared.keep_unsent(r);
                }
            }
            client_gone(&mut write, rx, &shared).await;
            return;
        }
        drop(pending);
        outbox.wrote.set(Instant::now());
        outbox
            .queued_bytes
            .fetch_sub(taken_weight, Ordering::Relaxed);
    }
    let _ = write
        .send(ToClient::Goodbye(Goodbye {
            reason: Text::from_static("master shutting down"),
        }))
        .await;
}

/// The client has gone (or is being let go after bad input): closes its
/// queue, so results from now on are kept for a fetch, and keeps those
/// already queued, which it never received. The messages queued with them
/// (an `error` saying why it is let go) are written if the connection still
/// takes them.
async fn client_gone(
    write: &mut Writer<ToClient, FromClient>,
    mut rx: mpsc::UnboundedReceiver<ClientOut>,
    shared: &Shared,
) {
    rx.close();
    let mut messages = Vec::new();
    while let Ok(item) = rx.try_recv() {
        match item {
            ClientOut::Results(r, _) => shared.keep_unsent(r),
            ClientOut::Msg(m) => messages.push(m),
        }
    }
    let _ = tokio::time::timeout(GONE_WRITE_TIMEOUT, async {
        for m in messages {
            write.feed(m).await?;
        }
        write.flush().await
    })
    .await;
}

/// How long a client that is gone, or being let go, gets to take its last
/// messages.
const GONE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most result bytes a client's writer takes from its queue in one turn.
const WRITE_TURN_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Writes `results` in frames within the protocol's limits. False if the
/// connection broke; `results` then holds those not handed to it. Those
/// handed to it (the frame being written when it broke, and frames written
/// before it and perhaps never read) are in the outbox's `unacked` until
/// the client acknowledges them.
async fn flush_results(
    write: &mut Writer<ToClient, FromClient>,
    results: &mut Vec<TaskResult>,
    outbox: &Outbox,
) -> bool {
    // Each frame taken by the connection is progress (a large result set
    // takes a while).
    let mut batches = crate::proto::batches(std::mem::take(results)).into_iter();
    for batch in batches.by_ref() {
        let heavy = batch.len() == 1
            && crate::proto::BatchWeight::batch_weight(&batch[0]) > crate::proto::BATCH_BYTES_MAX;
        let (fed, batch) = if heavy {
            (feed_heavy(write, batch[0].clone()).await, batch)
        } else {
            // By reference: the batch stays here, to be kept until the
            // client acknowledges it, without a copy.
            let msg = ToClient::Results(Results { results: batch });
            let fed = feed_ref(write, &msg).await;
            let ToClient::Results(Results { results: batch }) = msg else {
                unreachable!("built above")
            };
            (fed, batch)
        };
        // Tracked even if the write failed: part of it may have gone out.
        if let Some(u) = &outbox.unacked {
            u.lock().unwrap_or_else(|e| e.into_inner()).track(batch);
        }
        if fed.is_err() {
            results.extend(batches.flatten());
            return false;
        }
        outbox.wrote.set(Instant::now());
    }
    true
}

/// `write.feed(msg)`, by reference: flushes first if the buffer is past its
/// boundary, then encodes into it.
async fn feed_ref(
    write: &mut Writer<ToClient, FromClient>,
    msg: &ToClient,
) -> Result<(), ProtoError> {
    if write.write_buffer().len() >= write.backpressure_boundary() {
        write.flush().await?;
    }
    let wire = write.encoder().wire().unwrap_or(Wire::Json);
    WireCodec::<ToClient, FromClient>::new(wire).encode_ref(msg, write.write_buffer_mut())
}

/// Feeds one result that may not fit in a frame as it is: a result may
/// carry 101 attempt errors of 64 KiB each, which JSON, writing a control
/// character in 6 bytes, can make larger than a frame. Rather than lose it
/// (the connection would have been dropped over it), its reasons are cut,
/// further at each try, until it fits; the cut reasons say so.
async fn feed_heavy(
    write: &mut Writer<ToClient, FromClient>,
    result: TaskResult,
) -> Result<(), ProtoError> {
    for cut in [None, Some(4096), Some(256), Some(0)] {
        let mut r = result.clone();
        if let Some(max) = cut {
            cut_reasons(&mut r, max);
        }
        match write
            .feed(ToClient::Results(Results { results: vec![r] }))
            .await
        {
            Err(ProtoError::FrameTooLarge { len, .. }) => {
                tracing::debug!(
                    task = result.id,
                    frame_bytes = len,
                    "result too large for one frame; cutting its reasons"
                );
            }
            fed => {
                if cut.is_some() && fed.is_ok() {
                    tracing::warn!(task = result.id, "the task's result did not fit in one frame on this client's wire; its attempts' reasons were cut to fit");
                }
                return fed;
            }
        }
    }
    Err(ProtoError::Invalid(format!(
        "the result of task {} does not fit in one frame even without its reasons",
        result.id
    )))
}

/// Cuts each attempt's reason to `max` bytes, saying so; with `max` 0,
/// keeps only the last attempt's, cut to 256 bytes.
fn cut_reasons(r: &mut TaskResult, max: usize) {
    let (max, dropped) = if max == 0 {
        let n = r.errors.len().saturating_sub(1);
        r.errors.drain(..n);
        (256, n)
    } else {
        (max, 0)
    };
    for e in &mut r.errors {
        let reason = e.reason.as_str();
        if reason.len() <= max && dropped == 0 {
            continue;
        }
        let mut end = max.min(reason.len());
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let cut = if end < reason.len() {
            format!("… (cut from {} bytes", reason.len())
        } else {
            " (".to_string()
        };
        e.reason = Text::from(format!(
            "{}{cut}{}: the result did not fit in one frame)",
            &reason[..end],
            if dropped > 0 {
                format!("; the errors of the {dropped} attempts before this one were left out")
            } else {
                String::new()
            }
        ));
    }
}

pub(crate) fn status_report(shared: &Shared, histograms: bool) -> StatusReport {
    let now = Instant::now();
    let now_ms = shared.millis(now);
    let workers = {
        let reg = shared.registry();
        let mut v: Vec<WorkerInfo> = reg
            .workers()
            .iter()
            .map(|(id, w)| WorkerInfo {
                id: id.clone(),
                addr: Text::from(w.addr.to_string()),
                slots: w.slots,
                in_flight: w.stats.in_flight.load(Ordering::Relaxed),
                done: w.stats.done.load(Ordering::Relaxed),
                failed: w.stats.failed.load(Ordering::Relaxed),
                rtt_us: w.stats.rtt_us.load(Ordering::Relaxed),
                silent_ms: now_ms.saturating_sub(w.stats.last_heard_ms.load(Ordering::Relaxed)),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    let t = &shared.totals;
    StatusReport {
        workers,
        queues: queue_depths(shared),
        submitted: t.submitted.load(Ordering::Relaxed),
        completed: t.completed.load(Ordering::Relaxed),
        failed: t.failed.load(Ordering::Relaxed),
        retried: t.retried.load(Ordering::Relaxed),
        running: t.running.load(Ordering::Relaxed),
        histograms: if histograms {
            shared.histograms().summaries()
        } else {
            Vec::new()
        },
    }
}

/// A worker registered within this many of the master's heartbeats is live:
/// a second worker with its node id is refused rather than taking its place
/// (two processes started with one `--id` would otherwise replace each other
/// at every scan, each time re-queuing what the other held).
const LIVE_WORKER_HEARTBEATS: u32 = 3;

/// How a worker session went, for the scan that found the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registration {
    /// It registered and has since ended.
    Served,
    /// It never registered: the worker refused this master (it serves
    /// another), the master refused it, or it said nothing in time.
    Refused,
}

/// Runs a worker's session: registration, dispatch, results, heartbeats,
/// and on departure hands every attempt it held back to the queue.
pub(crate) async fn worker_session(
    shared: Arc<Shared>,
    mut read: Reader<ToWorker, FromWorker>,
    mut write: Writer<ToWorker, FromWorker>,
    peer: Peer,
    addr: SocketAddr,
) -> Registration {
    let node = peer.node.clone();
    let reg = match tokio::time::timeout(shared.cfg.handshake_timeout, read.next()).await {
        Ok(Some(Ok(FromWorker::Register(r)))) => r,
        Ok(Some(Ok(FromWorker::Error(e)))) => {
            tracing::info!(%addr, worker = %node, "the worker refused this master: {} ({})", e.message.loggable(LOGGED_REASON_BYTES), e.code.name());
            return Registration::Refused;
        }
        other => {
            let (code, why) = match other {
                Err(_) => (ErrorCode::UNEXPECTED, "no register in time".to_string()),
                Ok(None) => (
                    ErrorCode::UNEXPECTED,
                    "closed before registering".to_string(),
                ),
                // Malformed, too large, invalid: the frame's own fault.
                Ok(Some(Err(e))) => (e.code(), e.to_string()),
                Ok(Some(Ok(m))) => (
                    ErrorCode::UNEXPECTED,
                    format!("sent {} before register", m.name()),
                ),
            };
            tracing::info!(%addr, worker = %node, "worker not registered: {why}");
            let _ = write.send(ToWorker::Error(ErrorMsg::new(code, why))).await;
            return Registration::Refused;
        }
    };
    if node.is_empty() || node.chars().any(crate::proto::unprintable) {
        let _ = write
            .send(ToWorker::Error(ErrorMsg::new(
                ErrorCode::INVALID,
                if node.is_empty() {
                    "a worker needs a node id: its hello's node is empty"
                } else {
                    "a worker's node id may not hold control or invisible characters"
                },
            )))
            .await;
        return Registration::Refused;
    }
    let live_for = shared.cfg.heartbeat * LIVE_WORKER_HEARTBEATS;
    let taken = shared.registry().workers().get(&node).and_then(|w| {
        let now_ms = shared.millis(Instant::now());
        let silent = now_ms.saturating_sub(w.stats.last_heard_ms.load(Ordering::Relaxed));
        (u128::from(silent) < live_for.as_millis()).then_some((w.addr, silent))
    });
    if let Some((other, silent)) = taken {
        tracing::warn!(worker = %node, %addr, registered = %other, "refused a second worker with a registered node id");
        let why = format!(
            "a worker named {node} is already registered from {other} and was heard from {silent} ms ago: give each worker its own --id"
        );
        let _ = write
            .send(ToWorker::Error(ErrorMsg::new(
                ErrorCode::DUPLICATE_NODE,
                why,
            )))
            .await;
        return Registration::Refused;
    }
    let listen = reg.listen.parse::<SocketAddr>().ok().map(|mut l| {
        if l.ip().is_unspecified() {
            l.set_ip(addr.ip());
        }
        l
    });
    let session_id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let kick = shared.shutdown.child_token();
    let stats = Arc::new(LinkStats::default());
    let cancel = Arc::new(tokio::sync::Notify::new());
    // Every orphaned attempt noted so far is news to a new session.
    let mut orphans_sent = 0;
    if !shared.orphans().is_empty() {
        cancel.notify_one();
    }
    // What this worker ran when it was last let go, if it may run it still.
    let mut lost_attempts = shared.lost_attempts().take(&node);
    if !lost_attempts.is_empty() {
        tracing::info!(worker = %node, attempts = lost_attempts.len(), "stopping the attempts the worker held when it was let go: they were given out again");
        cancel.notify_one();
    }
    stats
        .last_heard_ms
        .store(shared.millis(Instant::now()), Ordering::Relaxed);
    let mut kinds = reg.kinds.clone();
    kinds.sort_unstable();
    kinds.dedup();
    let kinds: Arc<[Text]> = kinds.into();
    {
        let mut r = shared.registry();
        let (old, gone) = r.add_worker(
            node.clone(),
            WorkerEntry {
                addr,
                listen,
                slots: reg.slots,
                session: session_id,
                kick: kick.clone(),
                stats: stats.clone(),
                cancel: cancel.clone(),
                kinds: kinds.clone(),
            },
        );
        if let Some(old) = old {
            tracing::warn!(worker = %node, old = %old.addr, new = %addr, "worker reconnected; replacing its old session");
            old.kick.cancel();
        }
        unpark(&shared, &mut r, &gone);
        if let Some(l) = listen {
            r.probing.remove(&l);
        }
    }
    tracing::info!(worker = %node, %addr, slots = reg.slots, kinds = ?reg.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(), "worker registered");

    let timing = LinkTiming {
        heartbeat: shared.cfg.heartbeat,
        worker_timeout: shared.cfg.worker_timeout,
        timeout_grace: shared.cfg.timeout_grace,
    };
    let mut link: WorkerLink<Route> = WorkerLink::new(
        node.clone(),
        reg.slots,
        shared.cfg.prefetch,
        timing,
        shared.cfg.retry,
        Instant::now(),
    );
    // One timer per worker, woken when the link asks (its next ping, and a
    // silent worker's last chance to be let go within worker-timeout plus
    // one heartbeat): with thousands of workers the master's timer wake-ups
    // are a cost of their own.
    let wake = tokio::time::sleep_until(link.next_wake().into());
    tokio::pin!(wake);
    // Results finished in one turn, delivered together; kept to reuse its
    // allocation.
    let mut finished: Vec<(TaskResult, Route)> = Vec::new();
    // A worker that takes nothing written to it for a worker-timeout is
    // lost, like one not heard from: while a write to it waits, this loop
    // reads nothing and its timer does not run.
    let stall = shared.cfg.worker_timeout;
    // Messages for the worker from one turn, written together.
    let mut out: Vec<ToWorker> = Vec::new();

    let departure = loop {
        let notified = shared.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let sent = net::write_unless_stalled(
            dispatch(&shared, &mut link, &kinds, &mut write, &stats),
            read.get_ref().as_ref(),
            stall,
        );
        if let Err(e) = sent.await {
            break Departure::ConnectionClosed(e.to_string());
        }
        tokio::select! {
            biased;
            frame = read.next() => {
                let now = Instant::now();
                let msg = match frame {
                    None => break Departure::ConnectionClosed("closed by the worker".into()),
                    Some(Err(ProtoError::Io(e))) => break Departure::ConnectionClosed(format!("connection lost: {e}")),
                    Some(Err(e)) => {
                        let error = ToWorker::Error(ErrorMsg::new(e.code(), e.to_string()));
                        let _ = tokio::time::timeout(ERROR_SEND_TIMEOUT, write.send(error)).await;
                        break Departure::ConnectionClosed(format!("bad input: {e}"));
                    }
                    Some(Ok(m)) => m,
                };
                link.heard(now);
                if link.wants_mark(now) {
                    if let Some(a) = net::arrivals(read.get_ref().as_ref()) {
                        link.mark(a, now);
                    }
                }
                stats.last_heard_ms.store(shared.millis(now), Ordering::Relaxed);
                match msg {
                    FromWorker::Done(d) => {
                        // One lock per frame of results, not per result,
                        // and one hand-over to each client.
                        let mut hists = shared.hists();
                        for r in d.results {
                            let o = link.finish(r, now);
                            act(&shared, &node, o, &mut hists, now, &mut finished);
                        }
                        drop(hists);
                        shared.deliver_all(finished.drain(..));
                        stats.in_flight.store(link.in_flight() as u32, Ordering::Relaxed);
                        stats.done.store(link.done, Ordering::Relaxed);
                        stats.failed.store(link.failed, Ordering::Relaxed);
                    }
                    FromWorker::Ping(p) => {
                        let pong = write.send(ToWorker::Pong(Pong { seq: p.seq }));
                        if let Err(e) = net::write_unless_stalled(pong, read.get_ref().as_ref(), stall).await {
                            break Departure::ConnectionClosed(e.to_string());
                        }
                    }
                    FromWorker::Pong(p) => {
                        if let Some(rtt) = link.pong(p.seq, now) {
                            stats.rtt_us.store(rtt.as_micros() as u64, Ordering::Relaxed);
                            shared.hists().record(Metric::HeartbeatRtt, rtt);
                        }
                    }
                    FromWorker::Goodbye(g) => break Departure::Goodbye(g.reason.loggable(LOGGED_REASON_BYTES).into_owned()),
                    FromWorker::Error(e) => {
                        break Departure::ConnectionClosed(format!("worker sent error: {} ({})", e.message.loggable(LOGGED_REASON_BYTES), e.code.name()))
                    }
                    other => {
                        let why = format!("{} after registration", other.name());
                        let error = ToWorker::Error(ErrorMsg::new(ErrorCode::UNEXPECTED, why.clone()));
                        let _ = tokio::time::timeout(ERROR_SEND_TIMEOUT, write.send(error)).await;
                        break Departure::ConnectionClosed(why);
                    }
                }
            }
            _ = &mut notified, if link.credit() > 0 => {}
            _ = cancel.notified() => {
                // Attempts out here whose task a client cancelled, or that
                // an attempt from before a restart has finished meanwhile.
                let taken: Vec<(Cancel, Option<(TaskResult, Route)>)> = {
                    let st = shared.store();
                    let cancels = shared.cancels();
                    let restored = shared.restored_below;
                    link.cancel(|id| cancels.contains(id) || (id < restored && st.done.contains(id)))
                        .into_iter()
                        .map(|(c, record)| match cancels.reason(record.id) {
                            Some(why) => (c, Some(record.cancelled_on(why, node.clone()))),
                            None => (c, None),
                        })
                        .collect()
                };
                shared.totals.running.fetch_sub(taken.len() as u64, Ordering::Relaxed);
                for (c, done) in taken {
                    match done {
                        Some(result) => {
                            tracing::info!(worker = %node, task = c.task_id, attempt = c.attempt, "task cancelled by a client; stopping its attempt");
                            finished.push(result);
                        }
                        None => tracing::info!(worker = %node, task = c.task_id, attempt = c.attempt, "task finished by an attempt from before the restart; stopping this one"),
                    }
                    // A failed write ends the session below; the result
                    // stands either way.
                    out.push(ToWorker::Cancel(c));
                }
                shared.deliver_all(finished.drain(..));
                // Attempts from before the restart that a worker may still
                // run: this one is told of each (it ignores those it lacks).
                let orphans = shared.orphans().since(&mut orphans_sent);
                out.extend(orphans.into_iter().map(ToWorker::Cancel));
                out.extend(lost_attempts.drain(..).map(ToWorker::Cancel));
                stats.in_flight.store(link.in_flight() as u32, Ordering::Relaxed);
                if let Err(e) = net::write_unless_stalled(write_all(&mut write, &mut out), read.get_ref().as_ref(), stall).await {
                    break Departure::ConnectionClosed(e.to_string());
                }
            }
            _ = &mut wake => {
                let now = Instant::now();
                if link.wants_transport(now) {
                    if let Some(a) = net::arrivals(read.get_ref().as_ref()) {
                        link.transport(a, now);
                    }
                }
                let t = link.tick(now);
                if let Some(silent) = t.held_up {
                    tracing::info!(worker = %node, silent_ms = silent.as_millis() as u64, "worker silent past its timeout, but data from it is still arriving (a frame larger than the link moves in a heartbeat, or frames held up while TCP repairs a lost segment); keeping it");
                }
                wake.as_mut().reset(link.next_wake().max(now + TICK_MIN).into());
                if let Some(lost) = t.lost {
                    break lost;
                }
                for c in t.cancels {
                    tracing::warn!(worker = %node, task = c.task_id, attempt = c.attempt, "attempt overdue; cancelling it");
                    out.push(ToWorker::Cancel(c));
                }
                for o in t.outcomes {
                    act(&shared, &node, o, &mut shared.hists(), now, &mut finished);
                }
                shared.deliver_all(finished.drain(..));
                out.extend(t.ping.map(ToWorker::Ping));
                if let Err(e) = net::write_unless_stalled(write_all(&mut write, &mut out), read.get_ref().as_ref(), stall).await {
                    break Departure::ConnectionClosed(e.to_string());
                }
            }
            _ = kick.cancelled() => {
                if shared.shutdown.is_cancelled() {
                    if shared.journal.is_none() {
                        // Its clients hear that these tasks were cancelled:
                        // they must not run on. (With a journal they run
                        // again after the restart, and the worker keeps
                        // running them for the next master.)
                        for (c, record) in link.cancel(|_| true) {
                            out.push(ToWorker::Cancel(c));
                            shared.totals.running.fetch_sub(1, Ordering::Relaxed);
                            let why = Text::from_static("master shut down while the task was running; stopped on its worker");
                            let (result, reply) = record.cancelled_on(why, node.clone());
                            shared.deliver(result, &reply);
                        }
                    }
                    out.push(ToWorker::Goodbye(Goodbye { reason: Text::from_static("master shutting down") }));
                    let _ = net::write_unless_stalled(write_all(&mut write, &mut out), read.get_ref().as_ref(), stall).await;
                    break Departure::Shutdown;
                }
                break Departure::Replaced;
            }
        }
    };
    let held = link.in_flight();
    if !matches!(
        departure,
        Departure::Shutdown | Departure::Goodbye(_) | Departure::Replaced
    ) {
        shared
            .hists()
            .record(Metric::FailureDetection, link.silent_for(Instant::now()));
    }
    match &departure {
        Departure::Shutdown => {
            tracing::info!(worker = %node, "told worker the master is shutting down")
        }
        d => tracing::warn!(worker = %node, %addr, attempts = held, "worker removed: {d}"),
    }
    if matches!(
        departure,
        Departure::HeartbeatLost(_) | Departure::ConnectionClosed(_) | Departure::Replaced
    ) && held > 0
    {
        // The worker may still run these (cut off, or reconnected): see
        // `LostAttempts`.
        shared
            .lost_attempts()
            .note(&node, link.held_attempts(), Instant::now());
    }
    let now = Instant::now();
    let outcomes = link.depart(&departure, now);
    if !outcomes.is_empty() && departure != Departure::Shutdown {
        tracing::info!(worker = %node, attempts = outcomes.len(), "the lost worker's attempts go back to the queue (those with no retries left fail)");
    }
    for o in outcomes {
        match o {
            Outcome::Requeue { record, .. } if departure == Departure::Shutdown => {
                shared.totals.running.fetch_sub(1, Ordering::Relaxed);
                shared.abandon(record, "master shut down while the task was running");
            }
            o => act(&shared, &node, o, &mut shared.hists(), now, &mut finished),
        }
    }
    shared.deliver_all(finished.drain(..));
    {
        let mut r = shared.registry();
        let gone = r.remove_worker(&node, session_id);
        unpark(&shared, &mut r, &gone);
    }
    Registration::Served
}

/// Writes `out` (emptied) and flushes; nothing to write is no write.
async fn write_all(
    write: &mut Writer<ToWorker, FromWorker>,
    out: &mut Vec<ToWorker>,
) -> Result<(), ProtoError> {
    if out.is_empty() {
        return Ok(());
    }
    for m in out.drain(..) {
        write.feed(m).await?;
    }
    write.flush().await
}

/// How long an `error` to a peer being dropped may take to write.
const ERROR_SEND_TIMEOUT: Duration = Duration::from_millis(crate::limits::ERROR_SEND_TIMEOUT_MS);

/// Tasks waiting per priority, highest first: queued and parked alike.
fn queue_depths(shared: &Shared) -> Vec<QueueDepth> {
    let mut depth: std::collections::BTreeMap<u8, usize> =
        shared.queue.depths().into_iter().collect();
    for (p, n) in shared.parked.depths() {
        *depth.entry(p).or_default() += n;
    }
    depth
        .into_iter()
        .rev()
        .map(|(priority, depth)| QueueDepth {
            priority,
            depth: depth as u64,
        })
        .collect()
}

/// The last worker of each of `kinds` has left (`r` is the registry, locked):
/// their parked tasks wait [`super::MasterConfig::kind_grace`] for another
/// (a restarted worker, found again by the next scan), then go back to the
/// queue: handed to a worker without the kind, each ends failed with its
/// reason after its retries, instead of waiting for a worker that may
/// never come.
fn unpark(shared: &Arc<Shared>, r: &mut super::Registry, kinds: &[Text]) {
    if kinds.is_empty() || shared.shutdown.is_cancelled() {
        return;
    }
    let at = Instant::now();
    r.kinds_left(kinds, at);
    for kind in kinds {
        if shared.parked.len() > 0 {
            tracing::warn!(kind = %kind, grace_s = shared.cfg.kind_grace.as_secs_f64(), "the last worker that runs this kind left; its waiting tasks wait for another this long");
        }
        let (shared, kind) = (shared.clone(), kind.clone());
        let grace = shared.cfg.kind_grace;
        shared.tracker.clone().spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = shared.shutdown.cancelled() => return,
            }
            let mut r = shared.registry();
            if r.still_gone(&kind, at) {
                give_up_waiting(&shared, &[kind]);
            }
        });
    }
}

/// The parked tasks of `kinds` go back to the queue (under the registry's
/// lock, so that none of these kinds is parked meanwhile).
fn give_up_waiting(shared: &Arc<Shared>, kinds: &[Text]) {
    for kind in kinds {
        let back = shared.parked.take_kind(kind);
        if !back.is_empty() {
            tracing::warn!(kind = %kind, tasks = back.len(), "no worker runs this kind any more; its waiting tasks go back to the queue");
            for record in back {
                shared.queue.push_again(record.spec.priority, record);
            }
            shared.work.notify_waiters();
        }
    }
}

/// Fills the worker's credit from the queue, in one `run` frame. Tasks of
/// kinds the worker does not run (`kinds`, sorted) are parked for the
/// workers that do, if any is registered; parked tasks of its kinds come
/// before the queue's of the same or a lower priority.
async fn dispatch(
    shared: &Shared,
    link: &mut WorkerLink<Route>,
    kinds: &[Text],
    write: &mut Writer<ToWorker, FromWorker>,
    stats: &LinkStats,
) -> Result<(), ProtoError> {
    if shared.shutdown.is_cancelled() {
        return Ok(());
    }
    let credit = link.credit().min(crate::limits::BATCH_TASKS_MAX);
    if credit == 0 {
        return Ok(());
    }
    let now = Instant::now();
    let mut tasks = Vec::new();
    let mut cancelled = Vec::new();
    let runs = |kind: &Text| kinds.binary_search(kind).is_ok();
    // The last kind seen to run here: a frame's tasks are mostly of one.
    let mut runs_last: Option<Text> = None;
    let mut parked = 0;
    {
        // The master runs on one thread: this lock is never contended; it is
        // taken once per frame, not per task.
        let mut hists = shared.hists();
        let mut bytes_left = link.byte_credit();
        while tasks.len() < credit && bytes_left > 0 && parked < PARK_PER_ROUND_MAX {
            let waiting = if shared.parked.len() > 0 {
                shared.parked.take(runs, shared.queue.top_priority())
            } else {
                None
            };
            let record = match waiting {
                Some(record) => record,
                None => match shared.queue.pop() {
                    Some((_, record)) => record,
                    None => break,
                },
            };
            if record.id < shared.restored_below && shared.store().done.contains(record.id) {
                // Restored, then finished by a result reported from before
                // the restart: nothing left to run.
                continue;
            }
            // Popped here while a cancel swept the queue (a runtime on
            // more than one thread).
            let mut record = match shared.cancelled(record) {
                Ok(done) => {
                    cancelled.push(done);
                    continue;
                }
                Err(record) => record,
            };
            if runs_last.as_ref() != Some(&record.spec.kind) {
                if runs(&record.spec.kind) {
                    runs_last = Some(record.spec.kind.clone());
                } else {
                    match shared.park_for_others(record) {
                        Ok(()) => {
                            parked += 1;
                            continue;
                        }
                        // No worker runs it: it goes here, to fail with this
                        // worker's reason.
                        Err(r) => record = r,
                    }
                }
            }
            hists.record(
                Metric::QueueWait,
                now.saturating_duration_since(record.queued_at()),
            );
            match record.requeued.take() {
                Some(Requeued::WorkerLost(at)) => hists.record(
                    Metric::Recovery,
                    now.saturating_duration_since(at.instant()),
                ),
                Some(Requeued::Failed(at)) => hists.record(
                    Metric::RetryDelay,
                    now.saturating_duration_since(at.instant()),
                ),
                None => {}
            }
            let a = link.assign(record, now);
            bytes_left = bytes_left.saturating_sub(crate::proto::BatchWeight::batch_weight(&a));
            tasks.push(a);
        }
    }
    if !cancelled.is_empty() {
        shared.deliver_all(cancelled);
    }
    if parked > 0 {
        // The workers that run them, and this session again if it stopped
        // at the bound with more of the queue to look at.
        shared.work.notify_waiters();
    }
    if tasks.is_empty() {
        return Ok(());
    }
    if let Some(j) = &shared.journal {
        j.append(crate::journal::Entry::Dispatched(&tasks));
        // No id goes to a worker that a restarted master could hand out
        // again (`reserve.rs`).
        if let Some(r) = &shared.reservation {
            let max_id = tasks.iter().map(|a| a.task_id).max().unwrap_or(0);
            r.cover(j, max_id).await;
        }
    }
    shared
        .totals
        .running
        .fetch_add(tasks.len() as u64, Ordering::Relaxed);
    stats
        .in_flight
        .store(link.in_flight() as u32, Ordering::Relaxed);
    for tasks in crate::proto::batches(tasks) {
        write.feed(ToWorker::Run(Run { tasks })).await?;
    }
    write.flush().await
}

/// Acts on how an attempt ended (at `now`); a finished task's result joins
/// `finished`, for the caller to deliver with the others of its turn.
fn act(
    shared: &Arc<Shared>,
    worker: &Text,
    o: Outcome<Route>,
    hists: &mut Histograms,
    now: Instant,
    finished: &mut Vec<(TaskResult, Route)>,
) {
    match o {
        Outcome::Finished {
            result,
            reply,
            ran,
            accepted_at,
        } => {
            hists.record(Metric::DispatchToResult, ran);
            hists.record(Metric::EndToEnd, now.saturating_duration_since(accepted_at));
            shared.totals.running.fetch_sub(1, Ordering::Relaxed);
            if result.status != TaskStatus::Ok {
                // A log line, not the result: each reason to a line's worth
                // (a reason may be 64 KiB of output), and of many attempts
                // the first and the last few.
                let reason = |e: &AttemptError| {
                    format!(
                        "attempt {} on {}: {}",
                        e.attempt,
                        e.worker,
                        e.reason.loggable(LOGGED_REASON_BYTES)
                    )
                };
                let n = result.errors.len();
                let reasons: Vec<String> = if n <= 2 * LOGGED_REASONS_EACH_END {
                    result.errors.iter().map(reason).collect()
                } else {
                    let (first, last) = (
                        &result.errors[..LOGGED_REASONS_EACH_END],
                        &result.errors[n - LOGGED_REASONS_EACH_END..],
                    );
                    first
                        .iter()
                        .map(reason)
                        .chain(std::iter::once(format!(
                            "({} more)",
                            n - 2 * LOGGED_REASONS_EACH_END
                        )))
                        .chain(last.iter().map(reason))
                        .collect()
                };
                tracing::warn!(
                    task = result.id,
                    "task failed after {} attempt{}: {}",
                    result.attempts,
                    if result.attempts == 1 { "" } else { "s" },
                    reasons.join("; ")
                );
            }
            finished.push((result, reply));
        }
        Outcome::Requeue { record, delay, ran } => {
            if let Some(ran) = ran {
                hists.record(Metric::DispatchToResult, ran);
            }
            shared.totals.running.fetch_sub(1, Ordering::Relaxed);
            if let (Some(j), Some(e)) = (&shared.journal, record.errors.last()) {
                if e.attempt == record.attempt {
                    j.append(crate::journal::Entry::AttemptFailed {
                        id: record.id,
                        error: e,
                    });
                }
            }
            log_retry(worker, &record, delay);
            shared.totals.retried.fetch_add(1, Ordering::Relaxed);
            shared.enqueue(record, delay);
        }
        Outcome::Stale { result: r } => {
            let (task, attempt) = (r.task_id, r.attempt);
            if task < shared.restored_below && r.status == AttemptStatus::Ok {
                // Handed out before a restart, finished while the master
                // was away: it counts, unless the task finished meanwhile.
                let result = TaskResult {
                    id: task,
                    status: TaskStatus::Ok,
                    output: r.output,
                    attempts: attempt,
                    worker: worker.clone(),
                    errors: Vec::new(),
                };
                if shared.deliver(result, &shared.detached) {
                    tracing::info!(worker = %worker, task, attempt, "result of an attempt from before the restart accepted");
                    return;
                }
            }
            tracing::info!(worker = %worker, task, attempt, "late result for an attempt no longer assigned here; dropped");
        }
    }
}

fn log_retry(worker: &Text, record: &Record, delay: Duration) {
    match record.errors.last() {
        Some(e) if e.attempt == record.attempt => tracing::info!(
            task = record.id,
            attempt = record.attempt,
            worker = %worker,
            "attempt failed: {}; retrying in {} ms",
            e.reason,
            delay.as_millis()
        ),
        _ => {
            tracing::info!(task = record.id, attempt = record.attempt, worker = %worker, "attempt handed back; re-queued")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::codec::WireCodec;
    use crate::proto::Wire;
    use tokio_util::codec::{FramedRead, FramedWrite};

    /// A client writer on `wire` and the client's end of its connection.
    async fn client_pipe(wire: Wire) -> (Writer<ToClient, FromClient>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        let (_, w) = ours.into_split();
        let mut codec = WireCodec::<ToClient, FromClient>::new(wire);
        codec.handshake_complete();
        (FramedWrite::new(w, codec), theirs)
    }

    /// The accounting of a writer with no journal and nothing tracked.
    fn no_outbox() -> Outbox {
        Outbox {
            queued_bytes: Default::default(),
            wrote: Arc::new(crate::instant::AtomicInstant::new(Instant::now())),
            unacked: None,
        }
    }

    /// Results handed to a client's writer together (two workers' frames,
    /// say) may exceed the protocol's limit per frame: they go out in
    /// several frames, each within it, none lost.
    #[tokio::test]
    async fn results_beyond_a_frame_go_out_in_frames_within_the_limit() {
        let (mut write, theirs) = client_pipe(Wire::Bincode).await;
        let max = crate::limits::BATCH_TASKS_MAX;
        let total = 2 * max + 7;
        let mut results: Vec<TaskResult> = (1..=total as u64)
            .map(super::super::results::unknown)
            .collect();
        let outbox = no_outbox();
        assert!(flush_results(&mut write, &mut results, &outbox).await);
        write.flush().await.unwrap();
        assert!(results.is_empty());

        let mut codec = WireCodec::<FromClient, ToClient>::new(Wire::Bincode);
        codec.handshake_complete();
        let mut read = FramedRead::new(theirs, codec);
        let mut ids = Vec::new();
        let mut frames = 0;
        while ids.len() < total {
            match read.next().await {
                Some(Ok(ToClient::Results(r))) => {
                    assert!(r.results.len() <= max);
                    ids.extend(r.results.iter().map(|r| r.id));
                    frames += 1;
                }
                other => panic!("expected results, got {other:?}"),
            }
        }
        assert_eq!(frames, 3);
        assert_eq!(ids, (1..=total as u64).collect::<Vec<_>>());
    }

    /// A result whose attempts' reasons are made of control characters is
    /// more than a frame as a JSON line (6 bytes each): it still goes out,
    /// its reasons cut and saying so, rather than break the connection and
    /// be lost.
    #[tokio::test]
    async fn a_result_too_large_for_a_json_line_goes_out_with_its_reasons_cut() {
        let (mut write, theirs) = client_pipe(Wire::Json).await;
        let reason = Text::from("\u{1}".repeat(crate::limits::TEXT_BYTES_MAX));
        let heavy = TaskResult {
            status: TaskStatus::Failed,
            attempts: 45,
            errors: (1..=45)
                .map(|attempt| AttemptError {
                    attempt,
                    worker: Text::from_static("w1"),
                    reason: reason.clone(),
                })
                .collect(),
            ..super::super::results::unknown(7)
        };
        let outbox = no_outbox();
        let reader = tokio::spawn(async move {
            let mut codec = WireCodec::<FromClient, ToClient>::new(Wire::Json);
            codec.handshake_complete();
            FramedRead::new(theirs, codec).next().await
        });
        let mut results = vec![heavy];
        assert!(flush_results(&mut write, &mut results, &outbox).await);
        write.flush().await.unwrap();
        match reader.await.unwrap() {
            Some(Ok(ToClient::Results(r))) => {
                let r = &r.results[0];
                assert_eq!(
                    (r.id, r.status, r.errors.len()),
                    (7, TaskStatus::Failed, 45)
                );
                assert!(r.errors[0]
                    .reason
                    .as_str()
                    .contains("did not fit in one frame"));
            }
            other => panic!("expected the result, got {other:?}"),
        }
    }
}
