//! Relay frame decoding: what a peer relay (authenticated by certificate, but still another
//! program) puts on a QUIC stream. `frame::decode` must never panic, and a frame it accepts
//! must encode and decode back to itself (the format is canonical for what we send).
#![no_main]

use meridian_protocol::relay::{self as frame, FrameError};
use libfuzzer_sys::fuzz_target;

/// The default `limits.max_frame_bytes` is far below this; encoding must not refuse a frame
/// that decoded from fewer bytes.
const MAX_FRAME_BYTES: usize = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let decoded = match frame::decode(data) {
        Ok(decoded) => decoded,
        Err(error) => {
            assert!(error.is_protocol_violation() || matches!(error, FrameError::Io(_)));
            return;
        }
    };
    let encoded = frame::encode(&decoded, MAX_FRAME_BYTES).expect("a decoded frame encodes");
    let payload = &encoded[frame::LENGTH_PREFIX_BYTES..];
    let prefix: [u8; 4] = encoded[..frame::LENGTH_PREFIX_BYTES]
        .try_into()
        .expect("4-byte prefix");
    assert_eq!(u32::from_be_bytes(prefix) as usize, payload.len());
    let again = frame::decode(payload).expect("an encoded frame decodes");
    assert_eq!(decoded, again, "frame changed in a round trip");
});
