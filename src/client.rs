//! [`Client`]: submit tasks to a master and read their results, over one
//! connection shared by every call.
//!
//! Every result is acknowledged to the master, which may then forget it,
//! once the program has taken it ([`Client::next_result`]): one received
//! but never taken (the program ended first) stays with a master that keeps
//! a journal, for a later fetch. With [`ClientOptions::reconnect`] set, a client that loses its
//! master (a crash, a restart on its journal) dials it again and fetches
//! every task it holds an id for and has no result of; a result it already
//! has is dropped if it comes again, so each arrives exactly once.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::net::{self, ConnectError};
use crate::proto::handshake::{Identity, Secret};
use crate::proto::*;

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Which wire to speak.
    pub wire: Wire,
    /// The cluster's secret, if any.
    pub secret: Option<Secret>,
    /// Our name, for the master's logs.
    pub name: String,
    /// Deadline for the TCP connect.
    pub connect_timeout: Duration,
    /// Deadline for the handshake.
    pub handshake_timeout: Duration,
    /// On losing the master, keep dialing it for this long, then fetch
    /// every result still due. `None`: a lost connection ends the client.
    pub reconnect: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            wire: Wire::Bincode,
            secret: None,
            name: format!("client-{}", std::process::id()),
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_millis(crate::limits::HANDSHAKE_TIMEOUT_MS),
            reconnect: None,
        }
    }
}

/// What can go wrong for a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The master refused a request (the connection may stay open: a batch
    /// rejected for its content is only that batch).
    #[error("master refused: {} ({})", .0.message, .0.code.name())]
    Refused(ErrorMsg),
    /// The connection is gone.
    #[error("connection to the master closed: {0}")]
    Closed(String),
    /// No master answered where one was looked for.
    #[error("{0}")]
    NoMaster(String),
    /// A batch too large for one message was accepted as several, and
    /// another client's batch came between them, so its ids are not one
    /// range: here they are ([`Client::submit_batches`] returns them so).
    #[error("the batch was accepted in {} parts whose ids are not consecutive: {:?}", .0.len(), .0)]
    NotConsecutive(Vec<Range<u64>>),
    /// A batch sent as several messages was accepted in part: `accepted`
    /// holds the ids of the parts that were (they run, and their results
    /// come), `unsure` how many tasks of the next part may or may not have
    /// been (the connection was lost before its answer), and `error` why
    /// the rest was not.
    #[error("{} of the batch's tasks were accepted (ids {:?}); {}the rest were not: {error}", .accepted.iter().map(|r| r.end - r.start).sum::<u64>(), .accepted, if *.unsure > 0 { format!("{} may or may not have been; ", .unsure) } else { String::new() })]
    Partial {
        /// Ids of the accepted parts, in order.
        accepted: Vec<Range<u64>>,
        /// Tasks of the part whose acceptance is unknown (0 if none).
        unsure: u64,
        /// Why the rest was not accepted.
        error: Box<ClientError>,
    },
}

enum Cmd {
    /// Tasks, whether detached, and who waits for the acceptance.
    Submit(
        Vec<NewTask>,
        bool,
        oneshot::Sender<Result<Accepted, ClientError>>,
    ),
    Status(bool, oneshot::Sender<StatusReport>),
    Fetch(Vec<u64>),
    /// Results the program has taken, to acknowledge.
    Ack(Vec<u64>),
    /// Ids (at most a message's worth), the reason, who waits for the report.
    Cancel(Vec<u64>, Text, oneshot::Sender<CancelReport>),
    Close,
}

/// A connection to a master. Cheap to share by reference; every call goes
/// over the same connection, and results arrive on [`Client::next_result`].
pub struct Client {
    cmds: mpsc::UnboundedSender<Cmd>,
    /// Whole `results` frames from the connection's task, with when each
    /// was read: one channel operation per frame, not per result.
    results: mpsc::UnboundedReceiver<(Instant, Vec<TaskResult>)>,
    /// The rest of the frame being handed out, and when it was read.
    ready: std::collections::VecDeque<TaskResult>,
    ready_at: Instant,
    /// Ids of the results of the frame being handed out that were taken:
    /// acknowledged together once the frame is.
    taken: Vec<u64>,
    closed: tokio::sync::watch::Receiver<Option<String>>,
    peer: String,
}

impl Client {
    /// Connects to the master at `addr` and runs the handshake.
    pub async fn connect(addr: SocketAddr, opts: ClientOptions) -> Result<Client, ClientError> {
        let me = Identity {
            role: Role::Client,
            node: Text::from(opts.name.clone()),
            secret: opts.secret.clone(),
        };
        let (conn, peer) = net::connect::<FromClient, ToClient>(
            addr,
            opts.wire,
            me,
            &[Role::Master],
            opts.connect_timeout,
            opts.handshake_timeout,
        )
        .await?;
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (res_tx, results) = mpsc::unbounded_channel();
        let (closed_tx, closed) = tokio::sync::watch::channel(None);
        let d = Driver {
            addr,
            opts,
            cmds: cmd_rx,
            results: res_tx,
            outstanding: HashSet::new(),
            acks: VecDeque::new(),
            statuses: VecDeque::new(),
            cancels: Default::default(),
            next_cancel: 1,
            recent_acks: RecentAcks::default(),
            pending_acks: Vec::new(),
        };
        tokio::spawn(d.run(conn, closed_tx));
        Ok(Client {
            cmds,
            results,
            ready: std::collections::VecDeque::new(),
            ready_at: Instant::now(),
            taken: Vec::new(),
            closed,
            peer: peer.node.to_string(),
        })
    }

    /// Finds a master on this machine without being told its port: it took
    /// the first free port from 4999, so the ports from 4999 up are tried in
    /// order until one completes the handshake as a master (workers on those
    /// ports refuse a client, and are skipped).
    pub async fn connect_local(opts: ClientOptions) -> Result<(Client, SocketAddr), ClientError> {
        let first = crate::master::PORT_DEFAULT;
        let last = first + crate::master::PORT_TRIES;
        let mut quick = opts.clone();
        quick.connect_timeout = Duration::from_millis(200);
        quick.handshake_timeout = quick.handshake_timeout.min(Duration::from_secs(2));
        let mut last_err = None;
        for port in first..=last {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match Client::connect(addr, quick.clone()).await {
                Ok(c) => return Ok((c, addr)),
                Err(ClientError::Connect(ConnectError::Handshake { source, .. }))
                    if !is_not_a_master(&source) =>
                {
                    // A master that refused us (wrong secret, version): say so.
                    last_err = Some(ClientError::Connect(ConnectError::Handshake {
                        addr,
                        source,
                    }));
                    break;
                }
                Err(_) => continue,
            }
        }
        Err(last_err.unwrap_or_else(|| {
            ClientError::NoMaster(format!(
                "no master found on 127.0.0.1 ports {first}-{last}; start one with `runner master`, or pass --master HOST:PORT"
            ))
        }))
    }

    /// The master's node id.
    pub fn master(&self) -> &str {
        &self.peer
    }

    fn closed_reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "connection ended".into())
    }

    /// Submits a batch; returns the ids the master gave its tasks, in order.
    /// A batch larger than one message (`BATCH_TASKS_MAX` tasks,
    /// `BATCH_BYTES_MAX` bytes) is sent as several, which get consecutive
    /// ids unless another client's batch comes between them; then the
    /// error [`ClientError::NotConsecutive`] holds every id (see
    /// [`Client::submit_batches`]).
    pub async fn submit_batch(&self, tasks: Vec<NewTask>) -> Result<Range<u64>, ClientError> {
        one_range(self.submit_batches(tasks, false).await?)
    }

    /// Submits a batch, in as many messages as it takes; returns the ids of
    /// each part, in order, consecutive parts merged. `detached`: see
    /// [`Client::submit_batch_detached`].
    pub async fn submit_batches(
        &self,
        tasks: Vec<NewTask>,
        detached: bool,
    ) -> Result<Vec<Range<u64>>, ClientError> {
        let never = std::pin::pin!(std::future::pending::<()>());
        Ok(self.submit_batches_until(tasks, detached, never).await?.0)
    }

    /// [`Client::submit_batches`], sending no further part once `stop` is
    /// ready (Ctrl-C, say). Returns the ids accepted and whether it stopped
    /// early; a part already sent is awaited, so that every id the master
    /// gave is known.
    pub async fn submit_batches_until(
        &self,
        tasks: Vec<NewTask>,
        detached: bool,
        mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<(Vec<Range<u64>>, bool), ClientError> {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for tasks in crate::proto::batches(tasks) {
            if futures::poll!(stop.as_mut()).is_ready() {
                return Ok((ranges, true));
            }
            let n = tasks.len() as u64;
            let acc = match self.send_batch_as(tasks, detached) {
                Ok(acc) => acc.await,
                Err(e) => Err(e),
            };
            let acc = match acc {
                Ok(acc) => acc,
                Err(e) if ranges.is_empty() => return Err(e),
                Err(error) => {
                    // A refusal answers this part; a lost connection leaves
                    // it unknown.
                    let unsure = if matches!(error, ClientError::Refused(_)) {
                        0
                    } else {
                        n
                    };
                    return Err(ClientError::Partial {
                        accepted: ranges,
                        unsure,
                        error: Box::new(error),
                    });
                }
            };
            let r = acc.first_id..acc.first_id + acc.count as u64;
            match ranges.last_mut() {
                Some(prev) if prev.end == r.start => prev.end = r.end,
                _ => ranges.push(r),
            }
        }
        Ok((ranges, false))
    }

    /// Submits a batch whose results this client will not take: the master
    /// keeps them (in memory, or with a journal until acknowledged) for a
    /// [`Client::fetch`] by this or any other client, later.
    pub async fn submit_batch_detached(
        &self,
        tasks: Vec<NewTask>,
    ) -> Result<Range<u64>, ClientError> {
        one_range(self.submit_batches(tasks, true).await?)
    }

    /// Sends a batch at once and returns a future for its acceptance, so a
    /// caller can keep many batches in flight (the load generator does).
    /// The batch must be within the protocol's batch limit.
    pub fn send_batch(
        &self,
        tasks: Vec<NewTask>,
    ) -> Result<impl std::future::Future<Output = Result<Accepted, ClientError>>, ClientError> {
        self.send_batch_as(tasks, false)
    }

    fn send_batch_as(
        &self,
        tasks: Vec<NewTask>,
        detached: bool,
    ) -> Result<impl std::future::Future<Output = Result<Accepted, ClientError>>, ClientError> {
        if tasks.len() > crate::limits::BATCH_TASKS_MAX {
            return Err(ClientError::Closed(format!(
                "a batch of {} tasks is above the limit of {}",
                tasks.len(),
                crate::limits::BATCH_TASKS_MAX
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Submit(tasks, detached, tx))
            .map_err(|_| ClientError::Closed(self.closed_reason()))?;
        let closed = self.closed.clone();
        Ok(async move {
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Closed(
                    closed
                        .borrow()
                        .clone()
                        .unwrap_or_else(|| "connection ended".into()),
                )),
            }
        })
    }

    /// Submits one task; returns its id.
    pub async fn submit(&self, task: NewTask) -> Result<u64, ClientError> {
        Ok(self.submit_batch(vec![task]).await?.start)
    }

    /// The next result, in completion order; `None` once the connection is
    /// closed and every result received has been returned.
    pub async fn next_result(&mut self) -> Option<TaskResult> {
        Some(self.next_received().await?.0)
    }

    /// The next result and when the frame that carried it was read off the
    /// connection: the instant a latency measurement should end at, rather
    /// than whenever the caller gets round to this result.
    pub async fn next_received(&mut self) -> Option<(TaskResult, Instant)> {
        loop {
            if let Some(r) = self.take_ready() {
                return Some((r, self.ready_at));
            }
            let (at, batch) = self.results.recv().await?;
            self.ready_at = at;
            self.ready.extend(batch);
        }
    }

    /// The next result of the frame being handed out, taken: it is
    /// acknowledged (with the frame's others, once all are taken).
    fn take_ready(&mut self) -> Option<TaskResult> {
        let r = self.ready.pop_front()?;
        self.taken.push(r.id);
        if self.ready.is_empty() {
            let _ = self.cmds.send(Cmd::Ack(std::mem::take(&mut self.taken)));
        }
        Some(r)
    }

    /// Results as a stream, in completion order; it ends when the connection
    /// is closed and every result received has been yielded.
    pub fn results(&mut self) -> impl futures::Stream<Item = TaskResult> + '_ {
        futures::stream::poll_fn(move |cx| loop {
            if let Some(r) = self.take_ready() {
                return std::task::Poll::Ready(Some(r));
            }
            match self.results.poll_recv(cx) {
                std::task::Poll::Ready(Some((at, batch))) => {
                    self.ready_at = at;
                    self.ready.extend(batch);
                }
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        })
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    /// Attaches to tasks by id (submitted earlier, perhaps by another
    /// client or before the master restarted): their results arrive on
    /// [`Client::next_result`], at once for finished ones, status `unknown`
    /// for ids the master does not know.
    pub fn fetch(&self, ids: Vec<u64>) -> Result<(), ClientError> {
        for chunk in ids.chunks(crate::limits::BATCH_TASKS_MAX) {
            self.cmds
                .send(Cmd::Fetch(chunk.to_vec()))
                .map_err(|_| ClientError::Closed(self.closed_reason()))?;
        }
        Ok(())
    }

    /// The master's state.
    pub async fn status(&self, histograms: bool) -> Result<StatusReport, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Status(histograms, tx))
            .map_err(|_| ClientError::Closed(self.closed_reason()))?;
        rx.await
            .map_err(|_| ClientError::Closed(self.closed_reason()))
    }

    /// Cancels tasks by id, with `reason` for their results: queued ones
    /// never run, running ones are stopped on their workers. Returns once
    /// every cancelled task's `cancelled` result is final; the report sorts
    /// the ids into cancelled, already finished and unknown.
    pub async fn cancel(&self, ids: Vec<u64>, reason: &str) -> Result<CancelReport, ClientError> {
        let mut waiting = Vec::new();
        for chunk in ids.chunks(crate::limits::BATCH_TASKS_MAX) {
            let (tx, rx) = oneshot::channel();
            self.cmds
                .send(Cmd::Cancel(
                    chunk.to_vec(),
                    Text::from(reason.to_string()),
                    tx,
                ))
                .map_err(|_| ClientError::Closed(self.closed_reason()))?;
            waiting.push(rx);
        }
        let mut all = CancelReport::default();
        for rx in waiting {
            let r = rx
                .await
                .map_err(|_| ClientError::Closed(self.closed_reason()))?;
            all.cancelled.extend(r.cancelled);
            all.finished.extend(r.finished);
            all.unknown.extend(r.unknown);
        }
        Ok(all)
    }

    /// Says goodbye and closes, in the background: see [`Client::shutdown`]
    /// for a caller about to exit.
    pub fn close(&self) {
        let _ = self.cmds.send(Cmd::Close);
    }

    /// Closes, and waits (at most [`SHUTDOWN_TIMEOUT`]) until the last
    /// acknowledgements and the goodbye are written. A process that exits
    /// right after [`Client::close`] ends its runtime before they go out,
    /// and the master then keeps results this client did receive.
    pub async fn shutdown(&self) {
        self.close();
        let mut closed = self.closed.clone();
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, closed.wait_for(Option::is_some)).await;
    }
}

/// The ids of a batch as one range, if they are.
fn one_range(mut ranges: Vec<Range<u64>>) -> Result<Range<u64>, ClientError> {
    match ranges.len() {
        0 => Ok(0..0),
        1 => Ok(ranges.remove(0)),
        _ => Err(ClientError::NotConsecutive(ranges)),
    }
}

/// A peer that is not a master (a worker on a nearby port): not an error
/// while looking for one.
fn is_not_a_master(e: &crate::proto::handshake::HandshakeError) -> bool {
    use crate::proto::handshake::HandshakeError as H;
    match e {
        H::WrongRole { .. } => true,
        H::Refused(m) => m.code == ErrorCode::WRONG_ROLE,
        _ => false,
    }
}

/// The connection's task: sends commands, routes replies, acknowledges
/// results, and with `reconnect` set survives the master's restarts.
struct Driver {
    addr: SocketAddr,
    opts: ClientOptions,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    results: mpsc::UnboundedSender<(Instant, Vec<TaskResult>)>,
    /// With `reconnect`: ids accepted or fetched whose result has not come.
    outstanding: HashSet<u64>,
    /// Who waits for each submit's acceptance, and whether it was detached.
    acks: VecDeque<(oneshot::Sender<Result<Accepted, ClientError>>, bool)>,
    statuses: VecDeque<oneshot::Sender<StatusReport>>,
    /// Who waits for each cancel's report, by request number.
    cancels: std::collections::HashMap<u64, oneshot::Sender<CancelReport>>,
    next_cancel: u64,
    /// With `reconnect`: acknowledgements sent lately, sent again after a
    /// reconnect.
    recent_acks: RecentAcks,
    /// Acknowledgements a lost connection did not send, for the next.
    pending_acks: Vec<u64>,
}

/// Acknowledgements sent within [`RECENT_ACKS_KEEP`] (at most
/// [`RECENT_ACK_IDS_MAX`] ids). A master that crashed before it stored one
/// would keep that result for good: the client has it, so never fetches it
/// again. Sent again after a reconnect (an `ack` of a result the master no
/// longer keeps is ignored).
#[derive(Default)]
struct RecentAcks {
    batches: VecDeque<(Instant, Vec<u64>)>,
    ids: usize,
}

/// How long an acknowledgement is kept to be sent again: far longer than a
/// master takes to store one (a sync within 10 ms), or than one spends on
/// its way.
const RECENT_ACKS_KEEP: Duration = Duration::from_secs(5);
/// Most acknowledged ids kept to be sent again.
const RECENT_ACK_IDS_MAX: usize = 1 << 20;

impl RecentAcks {
    fn note(&mut self, ids: &[u64], now: Instant) {
        self.batches.push_back((now, ids.to_vec()));
        self.ids += ids.len();
        self.prune(now);
    }

    fn prune(&mut self, now: Instant) {
        while let Some((at, ids)) = self.batches.front() {
            if now.duration_since(*at) <= RECENT_ACKS_KEEP && self.ids <= RECENT_ACK_IDS_MAX {
                break;
            }
            self.ids -= ids.len();
            self.batches.pop_front();
        }
    }

    /// Everything kept, to send again.
    fn take(&mut self) -> Vec<u64> {
        self.prune(Instant::now());
        self.ids = 0;
        self.batches.drain(..).flat_map(|(_, ids)| ids).collect()
    }
}

/// A session that lasted less than this ended "soon": the next reconnect
/// waits (see [`Driver::run`]).
const RECONNECT_STABLE: Duration = Duration::from_secs(2);
/// The first and the longest wait before reconnecting after sessions that
/// ended soon, doubling between.
const RECONNECT_PAUSE_MIN: Duration = Duration::from_millis(100);
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(5);

/// How a connection ended.
enum End {
    /// The client closed it.
    ByClient(String),
    /// It was lost.
    Lost(String),
}

impl Driver {
    async fn run(
        mut self,
        mut conn: net::Conn<FromClient, ToClient>,
        closed: tokio::sync::watch::Sender<Option<String>>,
    ) {
        // Sessions that end soon after they start (a master that takes the
        // connection, then drops it again: its journal cannot be written)
        // are retried ever more slowly, not in a loop.
        let mut pause = Duration::ZERO;
        loop {
            let began = Instant::now();
            let why = match self.session(&mut conn).await {
                End::ByClient(why) => {
                    let _ = closed.send(Some(why));
                    return;
                }
                End::Lost(why) => why,
            };
            // Whatever was waiting for an answer will not get one on this
            // connection: say so now rather than hang.
            for (tx, _) in self.acks.drain(..) {
                let _ = tx.send(Err(ClientError::Closed(format!(
                    "connection lost before the master acknowledged the batch ({why}); it may or may not have been accepted"
                ))));
            }
            self.statuses.clear();
            // A cancel lost with the connection may or may not have been
            // made: its caller hears that the connection closed.
            self.cancels.clear();
            let Some(limit) = self.opts.reconnect else {
                let _ = closed.send(Some(why));
                return;
            };
            pause = if began.elapsed() < RECONNECT_STABLE {
                (pause * 2).clamp(RECONNECT_PAUSE_MIN, RECONNECT_PAUSE_MAX)
            } else {
                Duration::ZERO
            };
            tracing::warn!(master = %self.addr, "lost the master ({why}); reconnecting for up to {} s{}", limit.as_secs(),
                if pause.is_zero() { String::new() } else { format!(", after {} ms", pause.as_millis()) });
            tokio::time::sleep(pause).await;
            match self.redial(limit).await {
                Some(c) => conn = c,
                None => {
                    let _ = closed.send(Some(format!(
                        "{why}; no master at {} within {} s",
                        self.addr,
                        limit.as_secs()
                    )));
                    return;
                }
            }
            // Acknowledgements the master may have lost with a crash,
            // before its fetches (which they do not concern).
            let mut again = self.recent_acks.take();
            if !again.is_empty() {
                tracing::debug!(master = %self.addr, ids = again.len(), "sending the latest acknowledgements again");
                let _ = send_acks(&mut conn, &mut again, 1, Some(&mut self.recent_acks)).await;
            }
            let ids: Vec<u64> = self.outstanding.iter().copied().collect();
            tracing::info!(master = %self.addr, tasks = ids.len(), "reconnected; fetching the results still due");
            for chunk in ids.chunks(crate::limits::BATCH_TASKS_MAX) {
                let fetch = FromClient::Fetch(Fetch {
                    ids: chunk.to_vec(),
                });
                if conn.feed(fetch).await.is_err() {
                    break;
                }
            }
            let _ = conn.flush().await;
        }
    }

    async fn redial(&self, limit: Duration) -> Option<net::Conn<FromClient, ToClient>> {
        let deadline = tokio::time::Instant::now() + limit;
        let me = Identity {
            role: Role::Client,
            node: Text::from(self.opts.name.clone()),
            secret: self.opts.secret.clone(),
        };
        while tokio::time::Instant::now() < deadline {
            match net::connect::<FromClient, ToClient>(
                self.addr,
                self.opts.wire,
                me.clone(),
                &[Role::Master],
                self.opts.connect_timeout,
                self.opts.handshake_timeout,
            )
            .await
            {
                Ok((conn, _)) => return Some(conn),
                Err(e) => tracing::debug!("redial failed: {e}"),
            }
            tokio::time::sleep(REDIAL_INTERVAL).await;
        }
        None
    }

    /// A session; acknowledgements it could not send wait for the next
    /// (after a reconnect), so that the master does not keep those results
    /// for good.
    async fn session(&mut self, conn: &mut net::Conn<FromClient, ToClient>) -> End {
        let mut unacked = std::mem::take(&mut self.pending_acks);
        let end = self.session_with(conn, &mut unacked).await;
        self.pending_acks = unacked;
        end
    }

    async fn session_with(
        &mut self,
        conn: &mut net::Conn<FromClient, ToClient>,
        unacked: &mut Vec<u64>,
    ) -> End {
        let tracking = self.opts.reconnect.is_some();
        // Acknowledgements wait a little to share a frame: one per result
        // frame would add a frame, and a wake-up of the master, per task
        // when tasks finish one at a time.
        let ack_due = tokio::time::sleep(ACK_DELAY);
        tokio::pin!(ack_due);
        loop {
            tokio::select! {
                _ = &mut ack_due, if !unacked.is_empty() => {
                    let recent = tracking.then_some(&mut self.recent_acks);
                    if let Err(e) = send_acks(conn, unacked, 1, recent).await {
                        return End::Lost(format!("write failed: {e}"));
                    }
                }
                cmd = self.cmds.recv() => match cmd {
                    None | Some(Cmd::Close) => {
                        let _ = send_acks(conn, unacked, 1, None).await;
                        let _ = conn.send(FromClient::Goodbye(Goodbye { reason: Text::from_static("client done") })).await;
                        return End::ByClient("closed by the client".to_string());
                    }
                    Some(Cmd::Submit(tasks, detached, tx)) => {
                        self.acks.push_back((tx, detached));
                        let msg = if detached { FromClient::SubmitDetached(SubmitDetached { tasks }) } else { FromClient::Submit(Submit { tasks }) };
                        if let Err(e) = conn.send(msg).await {
                            return End::Lost(format!("write failed: {e}"));
                        }
                    }
                    Some(Cmd::Status(histograms, tx)) => {
                        self.statuses.push_back(tx);
                        if let Err(e) = conn.send(FromClient::Status(StatusRequest { histograms })).await {
                            return End::Lost(format!("write failed: {e}"));
                        }
                    }
                    Some(Cmd::Cancel(ids, reason, tx)) => {
                        let request = self.next_cancel;
                        self.next_cancel += 1;
                        self.cancels.insert(request, tx);
                        if let Err(e) = conn.send(FromClient::CancelTasks(CancelTasks { request, ids, reason })).await {
                            return End::Lost(format!("write failed: {e}"));
                        }
                    }
                    Some(Cmd::Ack(ids)) => {
                        if unacked.is_empty() {
                            ack_due.as_mut().reset(tokio::time::Instant::now() + ACK_DELAY);
                        }
                        unacked.extend(ids);
                        let recent = tracking.then_some(&mut self.recent_acks);
                        if let Err(e) = send_acks(conn, unacked, crate::limits::BATCH_TASKS_MAX, recent).await {
                            return End::Lost(format!("write failed: {e}"));
                        }
                    }
                    Some(Cmd::Fetch(ids)) => {
                        if tracking {
                            self.outstanding.extend(ids.iter().copied());
                        }
                        if let Err(e) = conn.send(FromClient::Fetch(Fetch { ids })).await {
                            return End::Lost(format!("write failed: {e}"));
                        }
                    }
                },
                frame = conn.next() => match frame {
                    None => return End::Lost("closed by the master".into()),
                    Some(Err(ProtoError::Io(e))) => return End::Lost(format!("connection lost: {e}")),
                    Some(Err(e)) => return End::Lost(format!("bad input from the master: {e}")),
                    Some(Ok(msg)) => match msg {
                        ToClient::Accepted(a) => {
                            if let Some((tx, detached)) = self.acks.pop_front() {
                                // A detached batch's results never come here.
                                if tracking && !detached {
                                    self.outstanding.extend(a.first_id..a.first_id + a.count as u64);
                                }
                                let _ = tx.send(Ok(a));
                            }
                        }
                        ToClient::Results(mut r) => {
                            // Acknowledged once the program takes them
                            // (`Cmd::Ack`); a second copy, which it never
                            // sees, at once.
                            if tracking {
                                // A result fetched again after a reconnect
                                // may come twice: hand out the first only.
                                let before = unacked.len();
                                r.results.retain(|r| {
                                    let first = self.outstanding.remove(&r.id);
                                    if !first {
                                        unacked.push(r.id);
                                    }
                                    first
                                });
                                if before == 0 && !unacked.is_empty() {
                                    ack_due.as_mut().reset(tokio::time::Instant::now() + ACK_DELAY);
                                }
                            }
                            if !r.results.is_empty() {
                                let _ = self.results.send((Instant::now(), r.results));
                            }
                        }
                        ToClient::Status(s) => {
                            if let Some(tx) = self.statuses.pop_front() {
                                let _ = tx.send(s);
                            }
                        }
                        ToClient::CancelReport(r) => {
                            if let Some(tx) = self.cancels.remove(&r.request) {
                                let _ = tx.send(r);
                            }
                        }
                        ToClient::Ping(p) => {
                            let _ = conn.send(FromClient::Pong(Pong { seq: p.seq })).await;
                        }
                        ToClient::Error(e) if matches!(e.code, ErrorCode::INVALID | ErrorCode::SHUTTING_DOWN | ErrorCode::JOURNAL_FAILED | ErrorCode::BUSY) && !self.acks.is_empty() => {
                            if let Some((tx, _)) = self.acks.pop_front() {
                                let _ = tx.send(Err(ClientError::Refused(e)));
                            }
                        }
                        ToClient::Error(e) => return End::Lost(format!("master sent error: {} ({})", e.message.loggable(crate::proto::LOGGED_TEXT_BYTES), e.code.name())),
                        ToClient::Goodbye(g) => return End::Lost(format!("master said goodbye: {}", g.reason.loggable(crate::proto::LOGGED_TEXT_BYTES))),
                        ToClient::Pong(_) | ToClient::Hello(_) | ToClient::Auth(_) => {}
                    },
                },
            }
        }
    }
}

/// Sends the acknowledgements waiting in `unacked` while at least `min` wait,
/// in frames within the protocol's limit.
async fn send_acks(
    conn: &mut net::Conn<FromClient, ToClient>,
    unacked: &mut Vec<u64>,
    min: usize,
    mut recent: Option<&mut RecentAcks>,
) -> Result<(), ProtoError> {
    let mut sent = false;
    while !unacked.is_empty() && unacked.len() >= min {
        let n = unacked.len().min(crate::limits::BATCH_TASKS_MAX);
        let ids: Vec<u64> = unacked.drain(..n).collect();
        if let Some(r) = recent.as_deref_mut() {
            r.note(&ids, Instant::now());
        }
        conn.feed(FromClient::Ack(Ack { ids })).await?;
        sent = true;
    }
    if sent {
        conn.flush().await?;
    }
    Ok(())
}

/// How long a received result's acknowledgement may wait to share a frame
/// with others. An acknowledgement lost with the connection only means the
/// master keeps that result a little longer (a fetch sends it again, and the
/// client drops the copy).
const ACK_DELAY: Duration = Duration::from_millis(5);

/// Longest [`Client::shutdown`] waits for the connection to close.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between dials while reconnecting.
const REDIAL_INTERVAL: Duration = Duration::from_millis(200);
