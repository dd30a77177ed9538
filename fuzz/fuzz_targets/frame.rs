//! Frame reader: any byte stream, any limit: frames are refused or read,
//! never a panic, and never more memory than the bytes that arrived justify,
//! whatever length they claim. Memory is counted by a global allocator; the
//! bound is the one `sync-protocol/tests/frame_memory.rs` checks in CI.
//!
//! Input: a big-endian `u16` selecting the limit, then the stream. Below
//! 0x8000 it is the limit itself; from 0x8000 its low two bits pick the
//! relay's default frame limit (1 MiB blobs + slack), the protocol's
//! ceiling (32 MiB), `u32::MAX` (capped at the ceiling by the reader), or
//! the relay's default again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use peak_alloc::PeakAlloc;
use sync_protocol::limits::{
    DEFAULT_MAX_BLOB_SIZE, FRAME_HEADER_LEN, MAX_FRAME_CEILING, max_frame_for_blob_size,
};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Bytes the reader may hold per byte that arrived (a buffer growing by
/// doubling, old and new live while it grows, and the decoded copy).
const PER_ARRIVED_BYTE: usize = 4;
/// The reader's first body buffer (`INITIAL_BODY_CAPACITY` in frame.rs).
const INITIAL_BODY: usize = 16 * 1024;
/// Fixed cost of a read beyond the body.
const OVERHEAD: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((limit, stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let limit = u16::from_be_bytes(*limit);
    let relay = max_frame_for_blob_size(DEFAULT_MAX_BLOB_SIZE);
    let max = match limit {
        0..0x8000 => u32::from(limit),
        _ => [relay, MAX_FRAME_CEILING, u32::MAX, relay][usize::from(limit & 3)],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    ALLOC.reset_peak_usage();
    let base = ALLOC.current_usage();
    rt.block_on(async {
        let mut r = stream;
        while let Ok(Some(_)) = sync_protocol::read_message(&mut r, max).await {}
    });
    let peak = ALLOC.peak_usage().saturating_sub(base);
    let arrived = stream
        .len()
        .min(max.min(MAX_FRAME_CEILING) as usize + FRAME_HEADER_LEN);
    let bound = INITIAL_BODY + PER_ARRIVED_BYTE * arrived + OVERHEAD;
    assert!(
        peak <= bound,
        "{} bytes with limit {max} cost {peak} bytes (bound {bound})",
        stream.len()
    );
});
