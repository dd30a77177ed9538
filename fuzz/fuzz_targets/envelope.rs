//! Blob envelope: the inner-plaintext decoder (headers, lengths, padding,
//! zstd) on any bytes, and the opener on any payload (which must never
//! authenticate). Every refusal must be the documented one for its cause.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sync_client::crypto::envelope::{
    ENVELOPE_OVERHEAD, ENVELOPE_V1, ENVELOPE_VERSION, EnvelopeError, decode_inner, open,
};

fuzz_target!(|data: &[u8]| {
    // The decoder only ever refuses an inner plaintext as malformed.
    if let Err(e) = decode_inner(data) {
        assert!(matches!(e, EnvelopeError::Malformed(_)), "{e:?}");
    }
    let keys = sync_client::GroupSecret::from_bytes([7; 32]).keys();
    let expected = if data.len() < ENVELOPE_OVERHEAD {
        EnvelopeError::TooShort(data.len())
    } else if data[0] != ENVELOPE_VERSION && data[0] != ENVELOPE_V1 {
        EnvelopeError::UnsupportedVersion(data[0])
    } else {
        EnvelopeError::Authentication
    };
    assert_eq!(
        open(&keys, &sync_protocol::BlobId([1; 16]), data).err(),
        Some(expected)
    );
});
