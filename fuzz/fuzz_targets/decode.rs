//! Feeds arbitrary bytes to every direction's decoder, on both wires and with
//! wire detection, whole and split in two at a byte the input chooses. A
//! panic, a hang or an allocation past the limits is a finding.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use runner::proto::{FromClient, FromWorker, Message, ToClient, ToWorker, Wire, WireCodec};
use tokio_util::codec::Decoder;

fn drain<M: Message>(wire: Option<Wire>, data: &[u8], cut: usize) {
    let mut codec = match wire {
        Some(w) => WireCodec::<M, M>::new(w),
        None => WireCodec::<M, M>::detect(),
    };
    codec.handshake_complete();
    let mut buf = BytesMut::new();
    for part in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, data)) = data.split_first() else { return };
    let cut = c as usize % (data.len() + 1);
    for wire in [None, Some(Wire::Bincode), Some(Wire::Json)] {
        drain::<FromClient>(wire, data, cut);
        drain::<ToClient>(wire, data, cut);
        drain::<ToWorker>(wire, data, cut);
        drain::<FromWorker>(wire, data, cut);
    }
});
