//! Memory bounds of the frame reader, measured with a counting global
//! allocator (`peak_alloc`): reading frames costs memory in proportion to
//! the bytes that actually arrive, never to the length a peer claims, and a
//! length over the limit is refused with nothing allocated for it. Checked
//! at the relay's real frame limit (1 MiB blobs + slack), at the protocol's
//! ceiling, with claims up to 4 GiB, and on arbitrary streams.
//!
//! The allocator counts the whole process, so every test here holds
//! [`serial`] for its whole run (input generation included): no other test
//! of this binary allocates while one measures.

use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};
use std::sync::{Mutex, MutexGuard};
use sync_protocol::limits::{
    DEFAULT_MAX_BLOB_SIZE, FRAME_HEADER_LEN, MAX_FRAME_CEILING, max_frame_for_blob_size,
};
use sync_protocol::{BlobId, FrameError, Message, Push, PushItem, encode_frame, read_message};
use tokio::runtime::Runtime;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Bytes the reader may hold per byte that arrived: the body buffer grows
/// by doubling (capacity < 2× the body; while it grows the old and the new
/// buffer are both live), and the decoded message copies the payload.
const PER_ARRIVED_BYTE: usize = 4;

/// The reader's first body buffer (`INITIAL_BODY_CAPACITY` in
/// `sync-protocol/src/frame.rs`): allocated for any frame of at least that
/// claimed length, before its bytes arrive.
const INITIAL_BODY: usize = 16 * 1024;

/// Fixed cost of one read beyond the body: the future, an error's
/// message, the runtime's bookkeeping.
const OVERHEAD: usize = 16 * 1024;

/// The relay's frame limit with its default configuration (what
/// `RelayContext::max_frame` announces): 1 MiB + 64 KiB.
fn relay_max_frame() -> u32 {
    max_frame_for_blob_size(DEFAULT_MAX_BLOB_SIZE)
}

static SERIAL: Mutex<()> = Mutex::new(());

/// One measurement at a time (see the module docs).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a stream of frames ended, without allocating to say so.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Clean end of stream after this many frames.
    Clean(usize),
    /// A length prefix over the limit.
    TooLarge { len: u64 },
    /// The stream ended inside a frame.
    Truncated,
    /// A body that is not a message.
    Decode,
}

/// Read every frame of `stream` with limit `max` (as the relay and the
/// client do), returning how it ended and the peak bytes allocated above
/// what was live before.
fn read_all(rt: &Runtime, stream: &[u8], max: u32) -> (End, usize) {
    ALLOC.reset_peak_usage();
    let base = ALLOC.current_usage();
    let end = rt.block_on(async {
        let mut r = stream;
        let mut frames = 0;
        loop {
            match read_message(&mut r, max).await {
                Ok(Some(_)) => frames += 1,
                Ok(None) => return End::Clean(frames),
                Err(FrameError::TooLarge { len, .. }) => return End::TooLarge { len },
                Err(FrameError::Truncated { .. }) => return End::Truncated,
                Err(FrameError::Decode(_)) => return End::Decode,
                Err(other) => panic!("a byte slice cannot fail: {other}"),
            }
        }
    });
    (end, ALLOC.peak_usage().saturating_sub(base))
}

/// The bound for a stream of `arrived` bytes read with limit `max`:
/// proportional to the bytes that arrived, and never more than the limit
/// allows, plus fixed costs. Nothing for bytes only claimed.
fn bound(arrived: usize, max: u32) -> usize {
    let body = arrived.min(max.min(MAX_FRAME_CEILING) as usize + FRAME_HEADER_LEN);
    INITIAL_BODY + PER_ARRIVED_BYTE * body + OVERHEAD
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A `Push` frame whose body is exactly `body_len` bytes.
fn push_frame(body_len: usize) -> Vec<u8> {
    let frame = |payload: usize| {
        encode_frame(&Message::Push(Push {
            items: vec![PushItem {
                blob_id: BlobId([7; 16]),
                payload: vec![0xa5; payload],
                ttl_s: None,
            }],
        }))
    };
    // The encoding adds a few bytes (tag, count, id, varint length).
    let extra = frame(body_len).len() - FRAME_HEADER_LEN - body_len;
    let mut out = frame(body_len - extra);
    if out.len() - FRAME_HEADER_LEN < body_len {
        // The payload's varint length got one byte shorter.
        out = frame(body_len - extra + 1);
    }
    assert_eq!(out.len() - FRAME_HEADER_LEN, body_len);
    out
}

/// A frame header claiming `len` bytes, followed by `arrived` bytes.
fn claim(len: u32, arrived: usize) -> Vec<u8> {
    let mut out = len.to_be_bytes().to_vec();
    out.resize(FRAME_HEADER_LEN + arrived, 0x5a);
    out
}

#[test]
fn a_full_frame_at_the_relay_limit_costs_a_few_times_its_size() {
    let _serial = serial();
    let rt = runtime();
    let max = relay_max_frame();
    let frame = push_frame(max as usize);
    let (end, peak) = read_all(&rt, &frame, max);
    assert_eq!(end, End::Clean(1));
    assert!(
        peak <= bound(frame.len(), max),
        "reading one {max}-byte frame peaked at {peak} bytes (bound {})",
        bound(frame.len(), max)
    );
    // One byte more is refused before its body is read.
    let (end, peak) = read_all(&rt, &push_frame(max as usize + 1), max);
    assert_eq!(
        end,
        End::TooLarge {
            len: u64::from(max) + 1
        }
    );
    assert!(peak <= OVERHEAD, "a refused frame cost {peak} bytes");
}

#[test]
fn claims_above_the_limit_allocate_nothing_for_the_claim() {
    let _serial = serial();
    let rt = runtime();
    for max in [relay_max_frame(), MAX_FRAME_CEILING, u32::MAX] {
        // The reader caps any limit at the protocol's ceiling.
        let limit = max.min(MAX_FRAME_CEILING);
        for len in [limit + 1, limit.saturating_mul(2), u32::MAX - 1, u32::MAX] {
            for arrived in [0, 100, 64 * 1024] {
                let (end, peak) = read_all(&rt, &claim(len, arrived), max);
                assert_eq!(end, End::TooLarge { len: len.into() }, "{len} over {max}");
                assert!(
                    peak <= OVERHEAD,
                    "a claim of {len} bytes over a limit of {max} cost {peak} bytes"
                );
            }
        }
    }
}

#[test]
fn truncated_claims_cost_what_arrived() {
    let _serial = serial();
    let rt = runtime();
    for max in [relay_max_frame(), MAX_FRAME_CEILING] {
        for arrived in [0, 1, 1000, 64 * 1024, 256 * 1024] {
            let stream = claim(max, arrived);
            let (end, peak) = read_all(&rt, &stream, max);
            assert_eq!(end, End::Truncated);
            assert!(
                peak <= bound(stream.len(), max),
                "{arrived} bytes of a claimed {max} cost {peak} bytes (bound {})",
                bound(stream.len(), max)
            );
        }
    }
}

/// A stream of frames: honest lengths, lengths near or over the limit,
/// random lengths and 4 GiB claims, each followed by up to 2 KiB of body
/// (usually fewer bytes than claimed), or raw random bytes.
fn stream(max: u32) -> impl Strategy<Value = Vec<u8>> {
    let piece = (
        prop_oneof![
            Just(None),
            (max.saturating_sub(2)..=max.saturating_add(2)).prop_map(Some),
            any::<u32>().prop_map(Some),
            Just(Some(u32::MAX)),
        ],
        proptest::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(len, body)| {
            let len = len.unwrap_or(body.len() as u32);
            let mut out = len.to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            out
        });
    prop_oneof![
        proptest::collection::vec(piece, 1..4).prop_map(|p| p.concat()),
        proptest::collection::vec(any::<u8>(), 1..2048),
    ]
}

/// Limits: small ones, the relay's, the ceiling, and any (capped at the
/// ceiling by the reader).
fn limit() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..4096,
        Just(relay_max_frame()),
        Just(MAX_FRAME_CEILING),
        any::<u32>(),
    ]
}

#[test]
fn arbitrary_streams_stay_within_the_memory_bound() {
    let _serial = serial();
    let rt = runtime();
    let mut runner = TestRunner::new(Config::default());
    let result = runner.run(
        &limit().prop_flat_map(|max| (Just(max), stream(max))),
        |(max, bytes)| {
            let (_, peak) = read_all(&rt, &bytes, max);
            prop_assert!(
                peak <= bound(bytes.len(), max),
                "{} bytes with limit {max} cost {peak} bytes (bound {})",
                bytes.len(),
                bound(bytes.len(), max)
            );
            Ok(())
        },
    );
    match result {
        Ok(()) => {}
        // The input can be 8 KiB: show its start only.
        Err(TestError::Fail(why, (max, bytes))) => panic!(
            "{why}; minimal input: limit {max}, {} bytes starting {:02x?}",
            bytes.len(),
            &bytes[..bytes.len().min(16)]
        ),
        Err(abort) => panic!("{abort}"),
    }
}
