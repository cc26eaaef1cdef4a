//! Feeds the sans-IO handshake one of the crate's five setups (our role,
//! side and accepted roles), with or without the secret, and a peer's
//! messages: hellos, auths, errors and liveness messages from fuzzer-chosen
//! fields, proofs made by honest handshakes over a chosen key and context,
//! and raw bytes decoded by a `WireCodec` as `handshake::run` would. Findings:
//! a panic; success with our secret set unless the deciding auth is the proof
//! an honest holder of the secret makes for this very connection (the proof
//! function is private: honest proofs come from two `Handshake`s run
//! together); a proof from us before the peer proved, or a wrong one; a peer
//! we do not accept; `authenticated` disagreeing with our secret; a third
//! message accepted, or any after success. `receive` takes no time: no clock.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use runner::proto::handshake::{Handshake, Identity, Secret, Side, Step};
use runner::proto::*;
use tokio_util::codec::Decoder;

const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
const ALL: &[Role] = &[Role::Client, Role::Worker, Role::Master];

/// Who we are, as the callers of `net::connect` and `net::accept` set it up.
#[derive(Arbitrary, Debug)]
enum Us { MasterAccepts, WorkerAccepts, ClientConnects, WorkerConnects, MasterScans }

#[derive(Arbitrary, Debug)]
enum PeerMsg {
    /// `nonce: None` echoes ours (a reflection attempt).
    Hello { role: u8, min: u8, max: u8, node: String, auth: bool, nonce: Option<[u8; 32]> },
    Auth([u8; 32]),
    /// A proof by honest handshakes holding `key` (None: the real secret);
    /// each other `None` is this connection's true context.
    Proof { key: Option<[u8; 32]>, reflect: bool, role: Option<u8>, nonce: Option<[u8; 32]>,
            our_role: Option<u8>, our_nonce: Option<[u8; 32]> },
    Error { code: u16, message: String },
    /// Ping, pong or goodbye, by `kind`.
    Other { kind: u8, seq: u64, reason: String },
    /// Bytes for the connection's codec: any number of messages, or garbage.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Scenario { us: Us, secret: bool, nonce: [u8; 32], json: bool, msgs: Vec<PeerMsg> }

fn role(b: u8) -> Role {
    ALL[b as usize % 3]
}

/// The proof `prover` sends, made the only public way: two honest handshakes
/// holding `key`, with these (role, nonce) pairs, run until `prover` proves.
fn proof(key: &[u8], prover: Side, p: (Role, [u8; 32]), v: (Role, [u8; 32])) -> Bytes32 {
    let ((ir, i_nonce), (ar, a_nonce)) = if prover == Side::Initiator { (p, v) } else { (v, p) };
    let secret = Some(Secret::new(key).unwrap());
    let id = |role| Identity { role, node: Text::from_static("honest"), secret: secret.clone() };
    let mut i = Handshake::new(id(ir), Side::Initiator, ALL, Bytes32(i_nonce));
    let mut a = Handshake::new(id(ar), Side::Acceptor, ALL, Bytes32(a_nonce));
    let Ok(Step::Continue(Some(hello))) = a.receive(Common::Hello(i.hello())) else { panic!() };
    let Ok(Step::Continue(Some(Common::Auth(pi)))) = i.receive(hello) else { panic!() };
    let Ok(Step::Done(Some(Common::Auth(pa)), _)) = a.receive(Common::Auth(pi.clone())) else {
        panic!("two honest handshakes sharing a secret did not complete")
    };
    if prover == Side::Initiator { pi.proof } else { pa.proof }
}

/// Our handshake; the peer's accepted hello; messages accepted; success.
struct Conn { hs: Handshake, ours: Hello, side: Side, accept: &'static [Role], secret: bool,
              peer: Option<Hello>, accepted: u32, done: bool }

impl Conn {
    /// The message `m` (not `Raw`) stands for, and whether it is the honest proof.
    fn message(&self, m: PeerMsg) -> (Common, bool) {
        let (me, nonce) = (self.ours.role, self.ours.nonce);
        let msg = match m {
            PeerMsg::Hello { role: r, min, max, node, auth, nonce: n } => Common::Hello(Hello {
                role: role(r), min_version: min, max_version: max, node: Text::from(node), auth,
                nonce: n.map_or(nonce, Bytes32),
            }),
            PeerMsg::Auth(p) => Common::Auth(Auth { proof: Bytes32(p) }),
            PeerMsg::Proof { key, reflect, role: r, nonce: n, our_role, our_nonce } => {
                let key = key.unwrap_or(*SECRET);
                let truth = self.peer.as_ref().map_or((me, [0; 32]), |h| (h.role, h.nonce.0));
                let p = (r.map_or(truth.0, role), n.unwrap_or(truth.1));
                let v = (our_role.map_or(me, role), our_nonce.unwrap_or(nonce.0));
                // The peer's side proves, or ours when reflecting.
                let initiator = reflect == (self.side == Side::Initiator);
                let prover = if initiator { Side::Initiator } else { Side::Acceptor };
                let honest = self.peer.is_some() && key == *SECRET && !reflect
                    && p == truth && v == (me, nonce.0);
                return (Common::Auth(Auth { proof: proof(&key, prover, p, v) }), honest);
            }
            PeerMsg::Error { code, message } => {
                Common::Error(ErrorMsg { code: ErrorCode(code), message: Text::from(message) })
            }
            PeerMsg::Other { kind: 0, seq, .. } => Common::Ping(Ping { seq }),
            PeerMsg::Other { kind: 1, seq, .. } => Common::Pong(Pong { seq }),
            PeerMsg::Other { reason, .. } => Common::Goodbye(Goodbye { reason: reason.into() }),
            PeerMsg::Raw(_) => unreachable!(),
        };
        (msg, false)
    }

    /// Feeds one message and checks the step; false when the connection ends.
    fn feed(&mut self, msg: Common, honest: bool) -> bool {
        let was_auth = matches!(msg, Common::Auth(_));
        let hello = if let Common::Hello(h) = &msg { Some(h.clone()) } else { None };
        let result = self.hs.receive(msg);
        if self.done {
            assert!(result.is_err(), "accepted a message after success: {result:?}");
            return true;
        }
        let Ok(step) = result else { return false }; // `run` refuses and closes.
        self.accepted += 1;
        assert!(self.accepted <= 2, "a third message accepted");
        self.peer = hello.or(self.peer.take());
        let h = self.peer.clone().expect("accepted a message before any hello");
        let (side, secret, ours) = (self.side, self.secret, &self.ours);
        let our_proof = || proof(SECRET, side, (ours.role, ours.nonce.0), (h.role, h.nonce.0));
        let (reply, hello_due) = match step {
            Step::Continue(reply) => {
                assert!(secret && !was_auth, "continued without a secret, or after an auth");
                (reply, true)
            }
            Step::Done(reply, peer) => {
                assert!(self.accept.contains(&peer.role), "accepted a {}", peer.role);
                assert_eq!((peer.role, &peer.node), (h.role, &h.node));
                let lo = h.min_version.max(PROTOCOL_VERSION_MIN);
                let hi = h.max_version.min(PROTOCOL_VERSION_MAX);
                assert!((lo..=hi).contains(&peer.version), "version {}", peer.version);
                assert_eq!(peer.authenticated, secret, "authenticated disagrees with our secret");
                assert!(!secret || (was_auth && honest), "authenticated by a forged proof");
                self.done = true;
                (reply, !secret)
            }
        };
        // An acceptor answers a hello with its own, and proves only once the
        // peer has: never in the same step as a hello.
        match (side, reply) {
            (Side::Acceptor, Some(Common::Hello(r))) if hello_due => assert_eq!(&r, ours),
            (Side::Acceptor, Some(Common::Auth(a))) if !hello_due => {
                assert_eq!(a.proof, our_proof())
            }
            (Side::Initiator, Some(Common::Auth(a))) if !self.done => {
                assert_eq!(a.proof, our_proof())
            }
            (Side::Initiator, None) if self.done => {}
            (_, r) => panic!("{side:?} replied {r:?} (done: {})", self.done),
        }
        true
    }
}

fn run<M: Message>(s: Scenario, me: Role, side: Side, accept: &'static [Role]) {
    let secret = s.secret.then(|| Secret::new(SECRET).unwrap());
    let id = Identity { role: me, node: Text::from_static("us"), secret };
    let hs = Handshake::new(id, side, accept, Bytes32(s.nonce));
    let ours = hs.hello();
    assert!(ours.auth == s.secret && ours.nonce.0 == s.nonce && ours.role == me);
    let mut conn = Conn { hs, ours, side, accept, secret: s.secret, peer: None, accepted: 0,
                          done: false };
    let wire = if s.json { Wire::Json } else { Wire::Bincode };
    let mut codec = match side {
        Side::Acceptor => WireCodec::<M, M>::detect(),
        Side::Initiator => WireCodec::new(wire),
    };
    let mut buf = BytesMut::new();
    for m in s.msgs.into_iter().take(64) {
        let bytes = match m {
            PeerMsg::Raw(bytes) => bytes,
            m => {
                let (msg, honest) = conn.message(m);
                if conn.feed(msg, honest) { continue } else { return }
            }
        };
        // As in `run`: a decode error or a message outside the handshake ends it.
        buf.extend_from_slice(&bytes);
        loop {
            let msg = match codec.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(msg)) => msg.into_common(),
                Err(_) => return,
            };
            if !msg.is_ok_and(|msg| conn.feed(msg, false)) {
                return;
            }
        }
    }
}

fuzz_target!(|s: Scenario| {
    const MASTER_ACCEPTS: &[Role] = &[Role::Client, Role::Worker];
    match s.us {
        Us::MasterAccepts => run::<FromClient>(s, Role::Master, Side::Acceptor, MASTER_ACCEPTS),
        Us::WorkerAccepts => run::<ToWorker>(s, Role::Worker, Side::Acceptor, &[Role::Master]),
        Us::ClientConnects => run::<ToClient>(s, Role::Client, Side::Initiator, &[Role::Master]),
        Us::WorkerConnects => run::<ToWorker>(s, Role::Worker, Side::Initiator, &[Role::Master]),
        Us::MasterScans => run::<FromWorker>(s, Role::Master, Side::Initiator, &[Role::Worker]),
    }
});
