//! The network edge: port ranges and binding, typed connections (connect or
//! accept, then the handshake), durations on the command line.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, FramedRead, FramedWrite};

pub mod preauth;

use crate::proto::handshake::{self, Handshake, HandshakeError, Identity, Peer, Side};
use crate::proto::{Common, Message, ProtoError, Role, Wire, WireCodec};

/// A typed connection: sends `Tx`, receives `Rx`.
pub type Conn<Tx, Rx> = Framed<TcpStream, WireCodec<Tx, Rx>>;

/// An inclusive range of TCP ports, written `5000-5100` (or one port, `4999`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl PortRange {
    /// The ports, in order.
    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRange, String> {
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number (1-65535)"))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if first == 0 || first > last {
            return Err(format!(
                "bad port range {s:?}: expected FIRST-LAST with 1 <= FIRST <= LAST <= 65535"
            ));
        }
        Ok(PortRange { first, last })
    }
}

/// Parses `500ms`, `3s`, `1m`, `1m30s`: what every duration flag accepts.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 500ms, 3s or 1m"))
}

/// Parses a period or timeout that must be more than zero (a heartbeat, a
/// scan interval, a deadline): zero would be a busy loop or an instant
/// failure, never what was meant.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(d)
}

/// Why a listener could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Every port of the range is taken.
    #[error("{} on {host} in use; free one or choose another range", if .range.first == .range.last { format!("port {range} is") } else { format!("every port in {range} is") })]
    RangeExhausted {
        /// The address.
        host: IpAddr,
        /// The range tried.
        range: PortRange,
    },
    /// Binding failed for another reason (permissions, bad address).
    #[error("cannot listen on {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A listener on `addr` with a deep accept queue: a burst of connections
/// waits there to be accepted (and served or refused) instead of being
/// dropped by the kernel and retried a second later.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(crate::limits::LISTEN_BACKLOG)
}

/// Listens on the first free port of `range`: a port in use is skipped,
/// never fatal.
pub async fn bind_first_free(host: IpAddr, range: PortRange) -> Result<TcpListener, BindError> {
    for port in range.ports() {
        let addr = SocketAddr::new(host, port);
        match listen(addr) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::debug!(%addr, "port in use, trying the next");
            }
            Err(source) => return Err(BindError::Io { addr, source }),
        }
    }
    Err(BindError::RangeExhausted { host, range })
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Io {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TCP connect took too long.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The handshake failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: HandshakeError,
    },
}

/// Connects to `addr`, speaking `wire`, and runs the handshake as initiator,
/// accepting only a peer in `accept`.
pub async fn connect<Tx, Rx>(
    addr: SocketAddr,
    wire: Wire,
    me: Identity,
    accept: &'static [Role],
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<(Conn<Tx, Rx>, Peer), ConnectError>
where
    Tx: Message + From<Common>,
    Rx: Message,
{
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(ConnectError::Timeout {
                addr,
                timeout: connect_timeout,
            })
        }
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(stream, WireCodec::new(wire));
    let hs = Handshake::new(me, Side::Initiator, accept, Handshake::fresh_nonce());
    let peer = handshake::run(&mut conn, hs, handshake_timeout)
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    Ok((conn, peer))
}

/// Runs the handshake as acceptor on a freshly accepted stream; the wire is
/// told from the peer's first byte.
pub async fn accept<Tx, Rx>(
    stream: TcpStream,
    me: Identity,
    accept: &'static [Role],
    handshake_timeout: Duration,
) -> Result<(Conn<Tx, Rx>, Peer), HandshakeError>
where
    Tx: Message + From<Common>,
    Rx: Message,
{
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(stream, WireCodec::detect());
    let hs = Handshake::new(me, Side::Acceptor, accept, Handshake::fresh_nonce());
    let peer = handshake::run(&mut conn, hs, handshake_timeout).await?;
    Ok((conn, peer))
}

/// The two halves of a connection after its handshake, retyped to the
/// session's messages: reading and writing then proceed independently.
pub type Reader<Tx, Rx> = FramedRead<SessionRead, WireCodec<Tx, Rx>>;
/// See [`Reader`].
pub type Writer<Tx, Rx> = FramedWrite<OwnedWriteHalf, WireCodec<Tx, Rx>>;

/// First size of a session's read and write buffers. They grow to the frames
/// that pass (a batch of a thousand tasks takes tens of KiB), so this only
/// sets what an idle connection holds: with 10,000 workers on a master,
/// tokio-util's default of 8 KiB each was a third of its memory.
pub const SESSION_BUFFER_BYTES: usize = 1024;

/// Splits a handshaken connection into a reader and a writer typed for the
/// session, keeping any bytes already read.
pub fn split<Tx0, Rx0, Tx, Rx>(conn: Conn<Tx0, Rx0>) -> (Reader<Tx, Rx>, Writer<Tx, Rx>)
where
    Tx0: Message,
    Rx0: Message,
    Tx: Message,
    Rx: Message,
{
    let parts = conn.into_parts();
    let (r, w) = parts.io.into_split();
    let codec: WireCodec<Tx, Rx> = parts.codec.retype();
    let wire = codec.wire().unwrap_or_default();
    let read = SessionRead {
        early: parts.read_buf.freeze(),
        inner: r,
    };
    let reader = FramedRead::with_capacity(read, codec, SESSION_BUFFER_BYTES);
    let mut write_codec = WireCodec::<Tx, Rx>::new(wire);
    write_codec.handshake_complete();
    (
        reader,
        FramedWrite::with_capacity(w, write_codec, SESSION_BUFFER_BYTES),
    )
}

/// The read half of a session: first the bytes that came in with the
/// handshake, then the socket. A peer may send its first messages in the
/// same write as its hello (`printf ... | nc`), and the handshake's reader
/// then holds them. Put into a new `FramedRead`'s buffer they would wait
/// for the socket's next bytes, possibly forever: a `FramedRead` reads
/// before it decodes anything it did not read itself.
pub struct SessionRead {
    early: bytes::Bytes,
    inner: OwnedReadHalf,
}

impl tokio::io::AsyncRead for SessionRead {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.early.is_empty() {
            return std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.early.len().min(buf.remaining());
        buf.put_slice(&self.early.split_to(n));
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsRef<TcpStream> for SessionRead {
    fn as_ref(&self) -> &TcpStream {
        self.inner.as_ref()
    }
}

/// Offset of `tcpi_data_segs_in` in Linux's `struct tcp_info` (uapi
/// `linux/tcp.h`, since Linux 4.6): 8 bytes of `u8` fields, 24 `u32`, 4
/// `u64`, then `segs_out`, `segs_in`, `notsent_bytes`, `min_rtt`.
#[cfg(target_os = "linux")]
const TCPI_DATA_SEGS_IN: usize = 152;

/// Offset of `tcpi_bytes_acked` (since Linux 4.1): the third of the 4 `u64`
/// after the 8 bytes of `u8` fields and 24 `u32`.
#[cfg(target_os = "linux")]
const TCPI_BYTES_ACKED: usize = 120;

/// Offset of `tcpi_bytes_received` (since Linux 4.1): the fourth of those
/// `u64`.
#[cfg(target_os = "linux")]
const TCPI_BYTES_RECEIVED: usize = 128;

/// Offset of `tcpi_rcv_ooopack` (since Linux 5.4): after `delivered`,
/// `delivered_ce`, `bytes_sent`, `bytes_retrans`, `dsack_dups` and
/// `reord_seen`.
#[cfg(target_os = "linux")]
const TCPI_RCV_OOOPACK: usize = 224;

/// The connection's `struct tcp_info` as the kernel wrote it, and how many
/// bytes of it that is (older kernels write less); `None` where the kernel
/// does not say.
fn tcp_info(stream: &TcpStream) -> Option<([u8; 256], usize)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut info = [0u8; 256];
        let mut len = info.len() as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes, and the kernel writes
        // at most that many and says how many it wrote.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        (rc == 0).then_some((info, len as usize))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        None
    }
}

/// `N` bytes at `offset` of a `tcp_info` that is `len` bytes long.
fn field<const N: usize>(info: &[u8; 256], len: usize, offset: usize) -> Option<[u8; N]> {
    let end = offset + N;
    if len < end {
        return None;
    }
    info[offset..end].try_into().ok()
}

/// `N` bytes of the connection's `struct tcp_info` at `offset`; `None` where
/// the kernel does not say.
fn tcp_info_field<const N: usize>(stream: &TcpStream, offset: usize) -> Option<[u8; N]> {
    let (info, len) = tcp_info(stream)?;
    field(&info, len, offset)
}

/// What a connection's kernel has received from the peer, in TCP's own
/// counts: what arrives behind a lost segment is counted before the program
/// can read it. See [`crate::master::link::WorkerLink::transport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrivals {
    /// Data segments received, in order or not (`tcpi_data_segs_in`).
    pub data_segments: u32,
    /// Segments received out of order, that is behind a hole in the stream
    /// (`tcpi_rcv_ooopack`); `None` before Linux 5.4.
    pub out_of_order: Option<u32>,
    /// Bytes received in order (`tcpi_bytes_received`); `None` before
    /// Linux 4.1.
    pub bytes_received: Option<u64>,
}

/// The connection's [`Arrivals`], read with one system call; `None` where
/// the kernel does not say.
pub fn arrivals(stream: &TcpStream) -> Option<Arrivals> {
    #[cfg(target_os = "linux")]
    {
        let (info, len) = tcp_info(stream)?;
        Some(Arrivals {
            data_segments: u32::from_ne_bytes(field(&info, len, TCPI_DATA_SEGS_IN)?),
            out_of_order: field(&info, len, TCPI_RCV_OOOPACK).map(u32::from_ne_bytes),
            bytes_received: field(&info, len, TCPI_BYTES_RECEIVED).map(u64::from_ne_bytes),
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        None
    }
}

/// How many bytes the peer has acknowledged (`tcpi_bytes_acked`): it grows
/// while the peer takes what is written to it, and stops when the peer's
/// program stops reading (its receive window closes) or the peer is gone.
pub fn bytes_acked(stream: &TcpStream) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        tcp_info_field(stream, TCPI_BYTES_ACKED).map(u64::from_ne_bytes)
    }
    #[cfg(not(target_os = "linux"))]
    {
        tcp_info_field::<8>(stream, 0).map(u64::from_ne_bytes)
    }
}

/// Why a write to a peer was given up.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The write itself failed.
    #[error("write failed: {0}")]
    Failed(#[from] ProtoError),
    /// The peer took no byte of it for this long.
    #[error("the connection took nothing for {0:?} (the peer is not reading: stopped, or hung)")]
    Stalled(Duration),
}

/// Awaits `write`, a write to `stream`'s peer, unless the peer takes no
/// byte for `stall`: a peer that stopped reading (a stopped process whose
/// kernel still answers) would otherwise hold the writer forever, and with
/// it everything else the writer's task does. Where the kernel does not
/// count acknowledged bytes, `stall` bounds the whole write.
pub async fn write_unless_stalled<F>(
    write: F,
    stream: &TcpStream,
    stall: Duration,
) -> Result<(), WriteError>
where
    F: std::future::Future<Output = Result<(), ProtoError>>,
{
    tokio::pin!(write);
    // Most writes complete at once: no clock, timer or system call for
    // them.
    if let std::task::Poll::Ready(r) = futures::poll!(&mut write) {
        return r.map_err(WriteError::Failed);
    }
    let check = (stall / 4).max(Duration::from_millis(10));
    let mut acked = bytes_acked(stream);
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            r = &mut write => return r.map_err(WriteError::Failed),
            _ = tokio::time::sleep(check) => {
                let now = bytes_acked(stream);
                if now.is_some() && now != acked {
                    acked = now;
                    since = tokio::time::Instant::now();
                } else if since.elapsed() >= stall {
                    return Err(WriteError::Stalled(stall));
                }
            }
        }
    }
}

/// Resolves `host:port` (a name or an address) to its first address.
pub async fn resolve(target: &str) -> Result<SocketAddr, String> {
    match tokio::net::lookup_host(target).await {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{target:?} resolves to no address")),
        Err(e) => Err(format!(
            "cannot resolve {target:?} (expected HOST:PORT): {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_reject_nonsense() {
        assert_eq!(
            "5000-5100".parse(),
            Ok(PortRange {
                first: 5000,
                last: 5100
            })
        );
        assert_eq!(
            "4999".parse(),
            Ok(PortRange {
                first: 4999,
                last: 4999
            })
        );
        assert!("5100-5000".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("5000-70000".parse::<PortRange>().is_err());
        assert!("abc".parse::<PortRange>().is_err());
    }

    /// The count of data segments moves with what the peer sends, and only
    /// then; on a link that loses nothing, nothing arrives out of order.
    #[tokio::test]
    async fn arrivals_count_what_the_peer_sends() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut ours, _) = listener.accept().await.unwrap();
        let before = arrivals(&ours).expect("Linux reports tcp_info");
        // What we send does not count.
        ours.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(arrivals(&ours), Some(before));
        // What the peer sends does, before it is read (polled: the count
        // moves when the kernel has taken the segment in).
        peer.write_all(b"pong").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut after = before;
        while after == before && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
            after = arrivals(&ours).unwrap();
        }
        assert!(
            after.data_segments > before.data_segments,
            "{before:?} then {after:?}"
        );
        assert_eq!(
            after.out_of_order, before.out_of_order,
            "loopback reorders nothing"
        );
        assert_eq!(
            after
                .bytes_received
                .zip(before.bytes_received)
                .map(|(a, b)| a - b),
            Some(4),
            "the 4 bytes of the peer's pong"
        );
    }

    #[test]
    fn durations_accept_ms_s_and_m() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("-3s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
