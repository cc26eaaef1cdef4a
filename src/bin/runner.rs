//! The `runner` command line. The cluster (master, worker, submit, status,
//! demo) arrives with the next milestone; this build speaks the protocol only.

fn main() {
    println!(
        "runner {}: protocol version {} (see proto-spec/PROTOCOL.md)",
        env!("CARGO_PKG_VERSION"),
        runner::proto::PROTOCOL_VERSION
    );
}
