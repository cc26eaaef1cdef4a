//! The connection handshake (PROTOCOL.md, "Handshake and authentication"):
//! a sans-IO state machine, and [`run`], which drives it over a framed
//! connection under one deadline.
//!
//! ```text
//! initiator                         acceptor
//!   Hello{role, versions, node, auth, nonce_i} ->
//!                                <- Hello{..., nonce_a}      (or Error, close)
//!   -- only when both sides hold a secret (auth = true) --
//!   Auth{proof_i} ->                                         (acceptor verifies)
//!                                <- Auth{proof_a}            (or Error, close)
//!   (initiator verifies proof_a, or sends Error and closes)
//! ```
//! `proof_x = HMAC-SHA256(secret, "runner-auth-v1" | side_x | role_x |
//! role_peer | nonce_i | nonce_a)` with `side_x` = `I` or `A`: each proof is
//! bound to this connection's two fresh nonces, to its sender's side and to
//! both roles, so a recorded proof cannot be replayed and a reflected one
//! (sending a peer its own challenge) does not verify. The initiator proves
//! first, so an acceptor (a worker answering a scan) never runs a task for, or
//! gives a proof to, a peer that has not proved itself.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use super::codec::WireCodec;
use super::error::ProtoError;
use super::messages::{Auth, Common, ErrorCode, ErrorMsg, Hello, Role};
use super::types::{Bytes32, Text};
use super::{Message, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use crate::limits;

/// Domain separation for proofs: changes if the proof's inputs ever change.
const PROOF_LABEL: &[u8] = b"runner-auth-v1";

/// The cluster's shared secret. Never printed, never sent.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

/// The environment variable a node reads the shared secret from when it is
/// given no file. Never passed on to the programs of `exec` tasks.
pub const SECRET_ENV: &str = "RUNNER_SECRET";

impl Secret {
    /// A secret from raw bytes; at least [`limits::SECRET_BYTES_MIN`] of them.
    pub fn new(bytes: &[u8]) -> Result<Secret, SecretError> {
        if bytes.len() < limits::SECRET_BYTES_MIN {
            return Err(SecretError::TooShort {
                len: bytes.len(),
                min: limits::SECRET_BYTES_MIN,
            });
        }
        Ok(Secret(Arc::from(bytes)))
    }

    /// A secret from the contents of a secret file or variable: surrounding
    /// whitespace (a trailing newline from `echo`) is not part of it.
    pub fn from_text(text: &[u8]) -> Result<Secret, SecretError> {
        Secret::new(text.trim_ascii())
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A secret that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Too few bytes to resist guessing.
    #[error("the shared secret is {len} bytes; at least {min} are required (e.g. `head -c 32 /dev/urandom | base64 > secret`)")]
    TooShort {
        /// Bytes given.
        len: usize,
        /// Bytes required.
        min: usize,
    },
}

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We connected; we speak first.
    Initiator,
    /// We accepted; we answer.
    Acceptor,
}

impl Side {
    fn proof_byte(self) -> u8 {
        match self {
            Side::Initiator => b'I',
            Side::Acceptor => b'A',
        }
    }
    fn other(self) -> Side {
        match self {
            Side::Initiator => Side::Acceptor,
            Side::Acceptor => Side::Initiator,
        }
    }
}

/// Who we are, for the handshake.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Our role.
    pub role: Role,
    /// Our node id.
    pub node: Text,
    /// The cluster's secret, if one is configured.
    pub secret: Option<Secret>,
}

/// The peer, once the handshake succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// Its role.
    pub role: Role,
    /// Its node id.
    pub node: Text,
    /// The protocol version both sides speak on this connection.
    pub version: u8,
    /// Whether it proved it holds the secret.
    pub authenticated: bool,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// No common protocol version.
    #[error(
        "no common protocol version: peer speaks {peer_min}..={peer_max}, this node {min}..={max}"
    )]
    VersionMismatch {
        /// Peer's oldest.
        peer_min: u8,
        /// Peer's newest.
        peer_max: u8,
        /// Ours, oldest.
        min: u8,
        /// Ours, newest.
        max: u8,
    },
    /// We hold a secret and the peer does not.
    #[error("authentication required: this node has a shared secret and the peer offered none")]
    PeerHasNoSecret,
    /// The peer holds a secret and we do not.
    #[error("the peer requires authentication and this node has no shared secret (set --secret-file or RUNNER_SECRET)")]
    NoSecret,
    /// The peer's proof did not verify.
    #[error("the peer's proof did not verify: it does not hold this cluster's secret")]
    BadProof,
    /// The peer has a role we do not talk to here.
    #[error("peer is a {got}; expected {expected}")]
    WrongRole {
        /// Its role.
        got: Role,
        /// What we accept.
        expected: &'static str,
    },
    /// A message out of turn.
    #[error("unexpected {0} message during the handshake")]
    Unexpected(&'static str),
    /// The peer refused us.
    #[error("peer refused: {} ({})", .0.message, .0.code.name())]
    Refused(ErrorMsg),
    /// The deadline passed.
    #[error("handshake did not finish within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection.
    #[error("peer closed the connection during the handshake")]
    Closed,
    /// The connection broke or sent garbage.
    #[error(transparent)]
    Proto(#[from] ProtoError),
}

impl HandshakeError {
    /// The error to send the peer, when we (a node of role `us`) are the
    /// one refusing. Written for the peer that reads it: our own
    /// [`Display`](std::fmt::Display) text says "this node" of us, which the
    /// peer would print as if it were about itself.
    pub fn to_error_msg(&self, us: Role) -> Option<ErrorMsg> {
        let (code, message) = match self {
            HandshakeError::VersionMismatch {
                peer_min,
                peer_max,
                min,
                max,
            } => (
                ErrorCode::VERSION_MISMATCH,
                format!(
                    "no common protocol version: you speak {peer_min}..={peer_max}, this {us} speaks {min}..={max}"
                ),
            ),
            HandshakeError::PeerHasNoSecret => (
                ErrorCode::AUTH_FAILED,
                format!(
                    "authentication required: this {us} has the cluster's shared secret and you offered none (set --secret-file or RUNNER_SECRET)"
                ),
            ),
            HandshakeError::NoSecret => (
                ErrorCode::AUTH_FAILED,
                format!(
                    "this {us} has no shared secret, and you offered to authenticate: give both sides the same secret, or neither"
                ),
            ),
            HandshakeError::BadProof => (
                ErrorCode::AUTH_FAILED,
                format!("your proof did not verify: you do not hold the secret this {us} holds"),
            ),
            HandshakeError::WrongRole { got, expected } => (
                ErrorCode::WRONG_ROLE,
                format!("this node is a {us}: it takes connections from {expected}, not from a {got}"),
            ),
            HandshakeError::Unexpected(_) => (ErrorCode::UNEXPECTED, self.to_string()),
            HandshakeError::Timeout(_) => (ErrorCode::HANDSHAKE_TIMEOUT, self.to_string()),
            HandshakeError::Proto(ProtoError::Io(_)) => return None,
            HandshakeError::Proto(e) => (e.code(), self.to_string()),
            HandshakeError::Refused(_) | HandshakeError::Closed => return None,
        };
        Some(ErrorMsg::new(code, message))
    }
}

/// What to do after feeding the handshake a message.
#[derive(Debug)]
pub enum Step {
    /// Send this (if anything) and wait for the next message.
    Continue(Option<Common>),
    /// Send this (if anything); the handshake succeeded.
    Done(Option<Common>, Peer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitAuth,
    Finished,
}

/// The handshake of one connection, as a state machine over messages.
#[derive(Debug)]
pub struct Handshake {
    me: Identity,
    side: Side,
    accept: &'static [Role],
    nonce: Bytes32,
    peer: Option<(Hello, u8)>,
    state: State,
}

impl Handshake {
    /// A handshake for `side` of a connection, talking only to peers whose
    /// role is in `accept`; `nonce` must be fresh and random.
    pub fn new(me: Identity, side: Side, accept: &'static [Role], nonce: Bytes32) -> Handshake {
        Handshake {
            me,
            side,
            accept,
            nonce,
            peer: None,
            state: State::AwaitHello,
        }
    }

    /// A fresh random nonce.
    pub fn fresh_nonce() -> Bytes32 {
        Bytes32(rand::random())
    }

    /// Our hello.
    pub fn hello(&self) -> Hello {
        Hello {
            role: self.me.role,
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION_MAX,
            node: self.me.node.clone(),
            auth: self.me.secret.is_some(),
            nonce: self.nonce,
        }
    }

    /// Feeds the peer's next message.
    pub fn receive(&mut self, msg: Common) -> Result<Step, HandshakeError> {
        match (self.state, msg) {
            (_, Common::Error(e)) => Err(HandshakeError::Refused(e)),
            (State::AwaitHello, Common::Hello(h)) => self.on_hello(h),
            (State::AwaitAuth, Common::Auth(a)) => self.on_auth(a),
            (_, other) => Err(HandshakeError::Unexpected(common_name(&other))),
        }
    }

    fn on_hello(&mut self, h: Hello) -> Result<Step, HandshakeError> {
        let lo = h.min_version.max(PROTOCOL_VERSION_MIN);
        let hi = h.max_version.min(PROTOCOL_VERSION_MAX);
        if lo > hi {
            return Err(HandshakeError::VersionMismatch {
                peer_min: h.min_version,
                peer_max: h.max_version,
                min: PROTOCOL_VERSION_MIN,
                max: PROTOCOL_VERSION_MAX,
            });
        }
        if !self.accept.contains(&h.role) {
            return Err(HandshakeError::WrongRole {
                got: h.role,
                expected: roles_text(self.accept),
            });
        }
        let authenticate = match (&self.me.secret, h.auth) {
            (Some(_), true) => true,
            (None, false) => false,
            (Some(_), false) => return Err(HandshakeError::PeerHasNoSecret),
            (None, true) => return Err(HandshakeError::NoSecret),
        };
        let peer = Peer {
            role: h.role,
            node: h.node.clone(),
            version: hi,
            authenticated: authenticate,
        };
        self.peer = Some((h, hi));
        let reply_hello = (self.side == Side::Acceptor).then(|| Common::Hello(self.hello()));
        if !authenticate {
            self.state = State::Finished;
            return Ok(Step::Done(reply_hello, peer));
        }
        self.state = State::AwaitAuth;
        Ok(match self.side {
            Side::Acceptor => Step::Continue(reply_hello),
            Side::Initiator => Step::Continue(Some(Common::Auth(Auth {
                proof: self.proof(self.side),
            }))),
        })
    }

    fn on_auth(&mut self, a: Auth) -> Result<Step, HandshakeError> {
        let expected_side = self.side.other();
        if !self.verify(expected_side, &a.proof) {
            return Err(HandshakeError::BadProof);
        }
        self.state = State::Finished;
        let (h, version) = self
            .peer
            .as_ref()
            .ok_or(HandshakeError::Unexpected("auth"))?;
        let peer = Peer {
            role: h.role,
            node: h.node.clone(),
            version: *version,
            authenticated: true,
        };
        let reply = (self.side == Side::Acceptor).then(|| {
            Common::Auth(Auth {
                proof: self.proof(Side::Acceptor),
            })
        });
        Ok(Step::Done(reply, peer))
    }

    /// The nonces in proof order: initiator's, then acceptor's.
    fn nonces(&self) -> (Bytes32, Bytes32) {
        let theirs = self.peer.as_ref().map(|(h, _)| h.nonce).unwrap_or_default();
        match self.side {
            Side::Initiator => (self.nonce, theirs),
            Side::Acceptor => (theirs, self.nonce),
        }
    }

    fn proof_mac(&self, prover: Side) -> Option<Hmac<Sha256>> {
        let secret = self.me.secret.as_ref()?;
        let peer_role = self.peer.as_ref()?.0.role;
        let (prover_role, verifier_role) = if prover == self.side {
            (self.me.role, peer_role)
        } else {
            (peer_role, self.me.role)
        };
        let (ni, na) = self.nonces();
        let mut mac = secret.mac();
        mac.update(PROOF_LABEL);
        mac.update(&[
            prover.proof_byte(),
            prover_role.proof_byte(),
            verifier_role.proof_byte(),
        ]);
        mac.update(&ni.0);
        mac.update(&na.0);
        Some(mac)
    }

    fn proof(&self, prover: Side) -> Bytes32 {
        self.proof_mac(prover)
            .map(|m| Bytes32(m.finalize().into_bytes().into()))
            .unwrap_or_default()
    }

    /// Constant-time check of a proof said to come from `prover`.
    fn verify(&self, prover: Side, proof: &Bytes32) -> bool {
        self.proof_mac(prover)
            .is_some_and(|m| m.verify_slice(&proof.0).is_ok())
    }
}

fn common_name(c: &Common) -> &'static str {
    match c {
        Common::Hello(_) => "hello",
        Common::Auth(_) => "auth",
        Common::Error(_) => "error",
        Common::Ping(_) => "ping",
        Common::Pong(_) => "pong",
        Common::Goodbye(_) => "goodbye",
    }
}

fn roles_text(roles: &[Role]) -> &'static str {
    match roles {
        [Role::Master] => "a master",
        [Role::Worker] => "a worker",
        [Role::Client] => "a client",
        [Role::Client, Role::Worker] | [Role::Worker, Role::Client] => "a client or a worker",
        _ => "another role",
    }
}

/// Runs the handshake on `conn` within `timeout`. On failure the peer is sent
/// an [`ErrorMsg`] saying why (when the failure is ours to report) and the
/// caller should drop the connection. On success the codec's frame limit is
/// raised from the pre-authentication one.
pub async fn run<T, Tx, Rx>(
    conn: &mut Framed<T, WireCodec<Tx, Rx>>,
    mut hs: Handshake,
    timeout: Duration,
) -> Result<Peer, HandshakeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    Tx: Message + From<Common>,
    Rx: Message,
{
    let exchange = async {
        if hs.side == Side::Initiator {
            conn.send(Tx::from(Common::Hello(hs.hello()))).await?;
        }
        loop {
            let msg = match conn.next().await {
                None => return Err(HandshakeError::Closed),
                Some(Err(e)) => return Err(HandshakeError::Proto(e)),
                Some(Ok(m)) => m,
            };
            let common = msg
                .into_common()
                .map_err(|m| HandshakeError::Unexpected(m.name()))?;
            match hs.receive(common)? {
                Step::Continue(reply) => {
                    if let Some(m) = reply {
                        conn.send(Tx::from(m)).await?;
                    }
                }
                Step::Done(reply, peer) => {
                    if let Some(m) = reply {
                        conn.send(Tx::from(m)).await?;
                    }
                    return Ok(peer);
                }
            }
        }
    };
    let result = match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout(timeout)),
    };
    match result {
        Ok(peer) => {
            conn.codec_mut().handshake_complete();
            Ok(peer)
        }
        Err(e) => {
            if let Some(msg) = e.to_error_msg(hs.me.role) {
                // Best effort, bounded: the peer may be the reason we failed.
                let _ = tokio::time::timeout(
                    Duration::from_millis(limits::ERROR_SEND_TIMEOUT_MS),
                    conn.send(Tx::from(Common::Error(msg))),
                )
                .await;
            }
            Err(e)
        }
    }
}
