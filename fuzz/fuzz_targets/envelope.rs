//! Blob envelope: the inner-plaintext decoder (headers, lengths, padding,
//! zstd) on any bytes, and the opener on any payload (which must never
//! authenticate).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sync_client::crypto::envelope::{decode_inner, open};

fuzz_target!(|data: &[u8]| {
    let _ = decode_inner(data);
    let keys = sync_client::GroupSecret::from_bytes([7; 32]).keys();
    assert!(open(&keys, &sync_protocol::BlobId([1; 16]), data).is_err());
});
