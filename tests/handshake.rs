//! The handshake: versions, roles and mutual authentication, first as a state
//! machine fed messages by hand (attacks included), then over a real byte
//! stream with its deadline.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use runner::proto::handshake::{
    self, Handshake, HandshakeError, Identity, Peer, Secret, Side, Step,
};
use runner::proto::*;
use tokio_util::codec::Framed;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const MASTER_ACCEPTS: &[Role] = &[Role::Client, Role::Worker];
const ONLY_MASTER: &[Role] = &[Role::Master];

fn identity(role: Role, secret: Option<&[u8]>) -> Identity {
    Identity {
        role,
        node: Text::from_static("n"),
        secret: secret.map(|s| Secret::new(s).unwrap()),
    }
}

fn hs(role: Role, side: Side, secret: Option<&[u8]>, accept: &'static [Role]) -> Handshake {
    Handshake::new(
        identity(role, secret),
        side,
        accept,
        Handshake::fresh_nonce(),
    )
}

/// Plays a whole handshake between two state machines; returns what each
/// side concluded.
fn play(
    mut init: Handshake,
    mut acc: Handshake,
) -> (Result<Peer, HandshakeError>, Result<Peer, HandshakeError>) {
    let mut to_acc = Some(Common::Hello(init.hello()));
    let (mut init_done, mut acc_done) = (None, None);
    while let Some(msg) = to_acc.take() {
        let reply = match acc.receive(msg) {
            Ok(Step::Continue(r)) => r,
            Ok(Step::Done(r, p)) => {
                acc_done = Some(Ok(p));
                r
            }
            Err(e) => {
                acc_done = Some(Err(e));
                break;
            }
        };
        let Some(reply) = reply else { break };
        match init.receive(reply) {
            Ok(Step::Continue(next)) => to_acc = next,
            Ok(Step::Done(next, p)) => {
                init_done = Some(Ok(p));
                to_acc = next;
            }
            Err(e) => init_done = Some(Err(e)),
        }
    }
    (
        init_done.unwrap_or(Err(HandshakeError::Closed)),
        acc_done.unwrap_or(Err(HandshakeError::Closed)),
    )
}

#[test]
fn without_secrets_hellos_alone_complete_the_handshake() {
    let (i, a) = play(
        hs(Role::Client, Side::Initiator, None, ONLY_MASTER),
        hs(Role::Master, Side::Acceptor, None, MASTER_ACCEPTS),
    );
    let (i, a) = (i.unwrap(), a.unwrap());
    assert_eq!(
        (i.role, i.authenticated, i.version),
        (Role::Master, false, 1)
    );
    assert_eq!((a.role, a.authenticated), (Role::Client, false));
}

#[test]
fn with_the_same_secret_both_sides_authenticate() {
    let (i, a) = play(
        hs(Role::Master, Side::Initiator, Some(SECRET), &[Role::Worker]),
        hs(Role::Worker, Side::Acceptor, Some(SECRET), ONLY_MASTER),
    );
    assert!(i.unwrap().authenticated);
    assert!(a.unwrap().authenticated);
}

#[test]
fn a_wrong_secret_fails_at_the_acceptor_before_it_proves_anything() {
    let mut acc = hs(Role::Worker, Side::Acceptor, Some(SECRET), ONLY_MASTER);
    let mut init = hs(
        Role::Master,
        Side::Initiator,
        Some(b"another secret, 32 bytes long!!!"),
        &[Role::Worker],
    );
    let Step::Continue(Some(acc_hello)) = acc.receive(Common::Hello(init.hello())).unwrap() else {
        panic!()
    };
    let Step::Continue(Some(proof)) = init.receive(acc_hello).unwrap() else {
        panic!()
    };
    assert!(matches!(acc.receive(proof), Err(HandshakeError::BadProof)));
}

#[test]
fn an_acceptor_with_the_wrong_secret_is_caught_by_the_initiator() {
    // A rogue worker answering a master's scan: it cannot prove itself.
    let (i, a) = play(
        hs(Role::Master, Side::Initiator, Some(SECRET), &[Role::Worker]),
        hs(
            Role::Worker,
            Side::Acceptor,
            Some(b"rogue rogue rogue rogue rogue!!!"),
            ONLY_MASTER,
        ),
    );
    assert!(
        matches!(a, Err(HandshakeError::BadProof)),
        "the rogue cannot verify the master either"
    );
    assert!(matches!(i, Err(HandshakeError::Closed)));
}

#[test]
fn a_peer_without_a_secret_is_refused_by_one_that_has_one() {
    let (_, a) = play(
        hs(Role::Client, Side::Initiator, None, ONLY_MASTER),
        hs(Role::Master, Side::Acceptor, Some(SECRET), MASTER_ACCEPTS),
    );
    let err = a.unwrap_err();
    assert!(matches!(err, HandshakeError::PeerHasNoSecret));
    let msg = err.to_error_msg(Role::Master).unwrap();
    assert_eq!(msg.code, ErrorCode::AUTH_FAILED);
    assert!(
        msg.message
            .contains("this master has the cluster's shared secret and you offered none"),
        "worded for the client that reads it: {}",
        msg.message
    );

    let (_, a) = play(
        hs(Role::Client, Side::Initiator, Some(SECRET), ONLY_MASTER),
        hs(Role::Master, Side::Acceptor, None, MASTER_ACCEPTS),
    );
    assert!(matches!(a, Err(HandshakeError::NoSecret)));
}

#[test]
fn a_reflected_proof_does_not_verify() {
    // A rogue listener answers the master's scan. It has no secret, so it
    // echoes the master's own nonce and then the master's own proof back,
    // hoping the master accepts its own words. The proof names its side and
    // both roles, so the echo does not verify.
    let mut master = hs(Role::Master, Side::Initiator, Some(SECRET), &[Role::Worker]);
    let master_hello = master.hello();
    let mut rogue_hello = master_hello.clone();
    rogue_hello.role = Role::Worker;
    let Step::Continue(Some(Common::Auth(master_proof))) =
        master.receive(Common::Hello(rogue_hello)).unwrap()
    else {
        panic!("the master proves first")
    };
    let err = master.receive(Common::Auth(master_proof)).unwrap_err();
    assert!(matches!(err, HandshakeError::BadProof));
}

#[test]
fn a_replayed_proof_fails_against_a_fresh_nonce() {
    // Record a legitimate handshake...
    let master_nonce = Handshake::fresh_nonce();
    let mut w1 = hs(Role::Worker, Side::Acceptor, Some(SECRET), ONLY_MASTER);
    let mut m1 = Handshake::new(
        identity(Role::Master, Some(SECRET)),
        Side::Initiator,
        &[Role::Worker],
        master_nonce,
    );
    let Step::Continue(Some(wh)) = w1.receive(Common::Hello(m1.hello())).unwrap() else {
        panic!()
    };
    let Step::Continue(Some(recorded_proof)) = m1.receive(wh).unwrap() else {
        panic!()
    };
    // ...and replay it to a new worker session, which picks a new nonce.
    let mut w2 = hs(Role::Worker, Side::Acceptor, Some(SECRET), ONLY_MASTER);
    w2.receive(Common::Hello(m1.hello())).unwrap();
    assert!(matches!(
        w2.receive(recorded_proof),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn a_proof_for_another_role_does_not_verify() {
    // A client's proof replayed by a peer that claims to be the master fails,
    // because the prover's role is part of the proof.
    let nonce = Handshake::fresh_nonce();
    let mut w = Handshake::new(
        identity(Role::Worker, Some(SECRET)),
        Side::Acceptor,
        &[Role::Client, Role::Master],
        nonce,
    );
    let mut c = hs(Role::Client, Side::Initiator, Some(SECRET), &[Role::Worker]);
    let mut master_hello = c.hello();
    master_hello.role = Role::Master;
    let Step::Continue(Some(wh)) = w.receive(Common::Hello(master_hello)).unwrap() else {
        panic!()
    };
    let Step::Continue(Some(client_proof)) = c.receive(wh).unwrap() else {
        panic!()
    };
    assert!(matches!(
        w.receive(client_proof),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn disjoint_versions_are_refused_naming_both_ranges() {
    let mut acc = hs(Role::Master, Side::Acceptor, None, MASTER_ACCEPTS);
    let mut hello = common::hello(Role::Client);
    hello.auth = false;
    hello.min_version = 2;
    hello.max_version = 3;
    let err = acc.receive(Common::Hello(hello)).unwrap_err();
    let msg = err.to_error_msg(Role::Master).unwrap();
    assert_eq!(msg.code, ErrorCode::VERSION_MISMATCH);
    assert!(
        msg.message.contains("2..=3") && msg.message.contains("1..=1"),
        "{}",
        msg.message
    );
}

#[test]
fn a_worker_accepts_only_a_master() {
    let mut w = hs(Role::Worker, Side::Acceptor, None, ONLY_MASTER);
    let mut hello = common::hello(Role::Client);
    hello.auth = false;
    let err = w.receive(Common::Hello(hello)).unwrap_err();
    assert!(matches!(
        err,
        HandshakeError::WrongRole {
            got: Role::Client,
            ..
        }
    ));
    let msg = err.to_error_msg(Role::Worker).unwrap();
    assert_eq!(msg.code, ErrorCode::WRONG_ROLE);
    assert!(
        msg.message.contains("this node is a worker") && msg.message.contains("not from a client"),
        "tells a client it reached a worker: {}",
        msg.message
    );
}

#[test]
fn anything_but_hello_first_is_refused() {
    let mut acc = hs(Role::Master, Side::Acceptor, None, MASTER_ACCEPTS);
    let err = acc.receive(Common::Ping(Ping { seq: 1 })).unwrap_err();
    assert!(matches!(err, HandshakeError::Unexpected("ping")));
}

#[test]
fn the_secret_is_never_printed() {
    let s = Secret::new(SECRET).unwrap();
    assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    assert!(Secret::new(b"short").is_err());
    assert!(Secret::from_text(b"  0123456789abcdef0123456789abcdef\n").is_ok());
}

async fn over_stream(
    wire: Wire,
    client_secret: Option<&'static [u8]>,
    master_secret: Option<&'static [u8]>,
) -> (Result<Peer, HandshakeError>, Result<Peer, HandshakeError>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let mut client = Framed::new(a, WireCodec::<FromClient, ToClient>::new(wire));
    let mut master = Framed::new(b, WireCodec::<ToClient, FromClient>::detect());
    let t = Duration::from_secs(10);
    tokio::join!(
        handshake::run(
            &mut client,
            hs(Role::Client, Side::Initiator, client_secret, ONLY_MASTER),
            t
        ),
        handshake::run(
            &mut master,
            hs(Role::Master, Side::Acceptor, master_secret, MASTER_ACCEPTS),
            t
        ),
    )
}

#[tokio::test]
async fn handshake_completes_over_both_wires() {
    for wire in [Wire::Bincode, Wire::Json] {
        let (c, m) = over_stream(wire, Some(SECRET), Some(SECRET)).await;
        assert!(c.unwrap().authenticated, "{wire}");
        assert_eq!(m.unwrap().role, Role::Client, "{wire}");
    }
}

#[tokio::test]
async fn a_refused_peer_is_told_why() {
    for wire in [Wire::Bincode, Wire::Json] {
        let (c, m) = over_stream(wire, None, Some(SECRET)).await;
        assert!(matches!(m, Err(HandshakeError::PeerHasNoSecret)), "{wire}");
        match c {
            Err(HandshakeError::Refused(e)) => {
                assert_eq!(e.code, ErrorCode::AUTH_FAILED);
                assert!(
                    e.message.contains("authentication required"),
                    "{}",
                    e.message
                );
            }
            other => panic!("{wire}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out_and_is_told_so() {
    let (a, b) = tokio::io::duplex(4096);
    let mut master = Framed::new(b, WireCodec::<ToClient, FromClient>::detect());
    let mut silent = Framed::new(a, WireCodec::<FromClient, ToClient>::new(Wire::Json));
    let result = handshake::run(
        &mut master,
        hs(Role::Master, Side::Acceptor, None, MASTER_ACCEPTS),
        Duration::from_secs(10),
    )
    .await;
    assert!(matches!(result, Err(HandshakeError::Timeout(_))));
    match silent.next().await {
        Some(Ok(ToClient::Error(e))) => assert_eq!(e.code, ErrorCode::HANDSHAKE_TIMEOUT),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_bincode_frame_of_another_version_gets_an_error_naming_ours() {
    let (a, b) = tokio::io::duplex(4096);
    let mut master = Framed::new(b, WireCodec::<ToClient, FromClient>::detect());
    let mut peer = Framed::new(a, WireCodec::<FromClient, ToClient>::new(Wire::Bincode));
    let mut frame = common::encode(
        Wire::Bincode,
        &FromClient::Hello(common::hello(Role::Client)),
    );
    frame[2] = 9;
    use tokio::io::AsyncWriteExt;
    peer.get_mut().write_all(&frame).await.unwrap();
    let result = handshake::run(
        &mut master,
        hs(Role::Master, Side::Acceptor, None, MASTER_ACCEPTS),
        Duration::from_secs(10),
    )
    .await;
    assert!(matches!(
        result,
        Err(HandshakeError::Proto(ProtoError::UnsupportedVersion {
            got: 9,
            ..
        }))
    ));
    match peer.next().await {
        Some(Ok(ToClient::Error(e))) => {
            assert_eq!(e.code, ErrorCode::VERSION_MISMATCH);
            assert!(
                e.message.contains("version 9") && e.message.contains("1..=1"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    let _ = peer.send(FromClient::Ping(Ping { seq: 1 })).await;
}
