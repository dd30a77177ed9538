//! A frame encoded without copying its large payloads (docs/protocol.md
//! "Framing"): the same bytes as [`crate::encode_frame`], held as a list of
//! parts — small encoded runs (tags, varints, ids) in one buffer, and
//! borrowed slices of the message's own payloads — so a writer can hand
//! each payload to the stream straight from the blob it belongs to instead
//! of first copying every byte into one frame buffer.
//!
//! How: the message is serialized with postcard through a flavor that,
//! when postcard writes a byte run that *is* one of the message's payloads
//! (the same address and length; postcard writes `serde_bytes` fields with
//! one call), records a reference to that payload instead of copying it.

use crate::limits::FRAME_HEADER_LEN;
use crate::message::{Message, MessageKind, PushItem};
use std::ops::Range;

/// Payloads shorter than this are copied into the encoded runs like every
/// other field (a separate write would cost more than the copy).
pub const SEGMENT_MIN_PAYLOAD: usize = 4096;

/// One part of an encoded frame, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part<'a> {
    /// Encoded bytes of [`FrameSegments::runs`] (header, tags, fields).
    Run(&'a [u8]),
    /// A payload of the message, borrowed.
    Payload(&'a [u8]),
}

/// An encoded frame whose payloads are borrowed from the message
/// ([`encode_frame_segments`]).
#[derive(Debug)]
pub struct FrameSegments<'a> {
    /// Length prefix and every encoded byte that is not a borrowed payload.
    runs: Vec<u8>,
    /// In order: a run of `runs`, or the index of a borrowed payload.
    order: Vec<Piece>,
    payloads: Vec<&'a [u8]>,
    len: usize,
}

#[derive(Debug, Clone)]
enum Piece {
    Run(Range<usize>),
    Payload(usize),
}

impl<'a> FrameSegments<'a> {
    /// Bytes of the whole frame, length prefix included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a frame has at least its length prefix.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame's parts in order; concatenated they are
    /// [`crate::encode_frame`] of the message.
    pub fn parts(&self) -> impl Iterator<Item = Part<'_>> + '_ {
        self.order.iter().map(|piece| match piece {
            Piece::Run(range) => Part::Run(&self.runs[range.clone()]),
            Piece::Payload(i) => Part::Payload(self.payloads[*i]),
        })
    }

    /// The whole frame as one buffer (copies every payload; for tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for part in self.parts() {
            match part {
                Part::Run(b) | Part::Payload(b) => out.extend_from_slice(b),
            }
        }
        out
    }
}

/// The payloads of `msg` of at least [`SEGMENT_MIN_PAYLOAD`] bytes.
fn large_payloads(msg: &Message) -> Vec<&[u8]> {
    let all: Vec<&[u8]> = match msg {
        Message::Push(p) => p.items.iter().map(|i| i.payload.as_slice()).collect(),
        Message::PullBatch(b) => b.blobs.iter().map(|b| b.payload.as_slice()).collect(),
        Message::Deliver(d) => d.blobs.iter().map(|b| b.payload.as_slice()).collect(),
        _ => Vec::new(),
    };
    all.into_iter()
        .filter(|p| p.len() >= SEGMENT_MIN_PAYLOAD)
        .collect()
}

/// postcard flavor that records the message's large payloads by reference.
struct Recorder<'a> {
    runs: Vec<u8>,
    run_start: usize,
    order: Vec<Piece>,
    payloads: Vec<&'a [u8]>,
    /// Index in `payloads` of the next payload expected (they are written
    /// in message order).
    next: usize,
    len: usize,
}

impl Recorder<'_> {
    fn close_run(&mut self) {
        if self.runs.len() > self.run_start {
            self.order.push(Piece::Run(self.run_start..self.runs.len()));
            self.run_start = self.runs.len();
        }
    }
}

impl<'a> postcard::ser_flavors::Flavor for Recorder<'a> {
    type Output = Recorder<'a>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.len += data.len();
        if let Some(payload) = self.payloads.get(self.next)
            && std::ptr::eq(payload.as_ptr(), data.as_ptr())
            && payload.len() == data.len()
        {
            self.close_run();
            self.order.push(Piece::Payload(self.next));
            self.next += 1;
        } else {
            self.runs.extend_from_slice(data);
        }
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.len += 1;
        self.runs.push(data);
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Recorder<'a>> {
        self.close_run();
        Ok(self)
    }
}

/// Encode `msg` as one frame (`u32` big-endian body length, then the body)
/// whose payloads of at least [`SEGMENT_MIN_PAYLOAD`] bytes are borrowed
/// from `msg`, not copied. The parts concatenated equal
/// [`crate::encode_frame`]`(msg)` byte for byte.
pub fn encode_frame_segments(msg: &Message) -> FrameSegments<'_> {
    segments_of(msg, large_payloads(msg)).unwrap_or_else(|| copied(crate::codec::encode_frame(msg)))
}

/// A `Push` frame of `items`, borrowed (no copy of the items or their
/// payloads): the same bytes as [`crate::encode_frame`] of
/// `Message::Push(Push { items: items.to_vec() })`.
pub fn encode_push_segments(items: &[PushItem]) -> FrameSegments<'_> {
    let payloads = items
        .iter()
        .map(|i| i.payload.as_slice())
        .filter(|p| p.len() >= SEGMENT_MIN_PAYLOAD)
        .collect();
    segments_of(&PushRef(items), payloads).unwrap_or_else(|| {
        copied(crate::codec::encode_frame(&Message::Push(crate::Push {
            items: items.to_vec(),
        })))
    })
}

/// `Message::Push` as serde sees it, over borrowed items: postcard writes
/// the variant's tag, then the `Push` struct (a sequence of items), which
/// is exactly how it writes an owned `Message::Push`.
struct PushRef<'a>(&'a [PushItem]);

impl serde::Serialize for PushRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Push<'a> {
            items: &'a [PushItem],
        }
        s.serialize_newtype_variant(
            "Message",
            MessageKind::Push as u32,
            "Push",
            &Push { items: self.0 },
        )
    }
}

fn copied(runs: Vec<u8>) -> FrameSegments<'static> {
    FrameSegments {
        len: runs.len(),
        order: vec![Piece::Run(0..runs.len())],
        runs,
        payloads: Vec::new(),
    }
}

/// `value` encoded as a frame with `payloads` (its large payloads, in the
/// order postcard writes them) borrowed. `None` only if postcard fails,
/// which it does not for these plain types.
fn segments_of<'a, T: serde::Serialize + ?Sized>(
    value: &T,
    payloads: Vec<&'a [u8]>,
) -> Option<FrameSegments<'a>> {
    let body_len = postcard::experimental::serialized_size(value).ok()?;
    let small = body_len.saturating_sub(payloads.iter().map(|p| p.len()).sum::<usize>());
    let mut runs = Vec::with_capacity(FRAME_HEADER_LEN + small);
    runs.extend_from_slice(&u32::try_from(body_len).ok()?.to_be_bytes());
    let recorder = Recorder {
        runs,
        run_start: 0,
        order: Vec::with_capacity(2 * payloads.len() + 1),
        payloads,
        next: 0,
        len: FRAME_HEADER_LEN,
    };
    let r = postcard::serialize_with_flavor(value, recorder).ok()?;
    Some(FrameSegments {
        runs: r.runs,
        order: r.order,
        payloads: r.payloads,
        len: r.len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_frame;
    use crate::message::{
        BlobId, Deliver, DeviceId, Notify, PullBatch, PulledBlob, Push, PushItem,
    };

    fn pulled(cursor: u64, len: usize, fill: u8) -> PulledBlob {
        PulledBlob {
            cursor,
            blob_id: BlobId([cursor as u8; 16]),
            sender: DeviceId([7; 32]),
            created_at: 1_700_000_000_000 + cursor,
            payload: vec![fill; len],
        }
    }

    fn messages() -> Vec<Message> {
        // Sizes around the threshold, empty payloads, equal contents at
        // different addresses, and varints of every width.
        let sizes = [0, 1, 4095, 4096, 4097, 70_000, 1 << 20];
        vec![
            Message::Push(Push {
                items: sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| PushItem {
                        blob_id: BlobId([i as u8; 16]),
                        payload: vec![0xab; len],
                        ttl_s: (i % 2 == 0).then_some(86_400 * i as u32),
                    })
                    .collect(),
            }),
            Message::PullBatch(PullBatch {
                blobs: sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| pulled(1 << (7 * i), len, 0xcd))
                    .collect(),
                head: u64::MAX,
                more: true,
            }),
            Message::PullBatch(PullBatch {
                blobs: Vec::new(),
                head: 0,
                more: false,
            }),
            Message::Deliver(Deliver {
                after: 300,
                blobs: vec![
                    pulled(301, 5000, 1),
                    pulled(302, 10, 2),
                    pulled(303, 5000, 1),
                ],
                head: 303,
            }),
            Message::Notify(Notify { head: 12 }),
        ]
    }

    #[test]
    fn segments_are_the_frame_byte_for_byte() {
        for msg in messages() {
            let segments = encode_frame_segments(&msg);
            let whole = encode_frame(&msg);
            assert_eq!(segments.to_vec(), whole, "{:?}", msg.kind());
            assert_eq!(segments.len(), whole.len(), "{:?}", msg.kind());
        }
    }

    #[test]
    fn large_payloads_are_borrowed_not_copied() {
        for msg in messages() {
            let segments = encode_frame_segments(&msg);
            let borrowed: Vec<*const u8> = segments
                .parts()
                .filter_map(|p| match p {
                    Part::Payload(b) => Some(b.as_ptr()),
                    Part::Run(_) => None,
                })
                .collect();
            let expected: Vec<*const u8> =
                large_payloads(&msg).iter().map(|p| p.as_ptr()).collect();
            assert_eq!(borrowed, expected, "{:?}", msg.kind());
            let copied: usize = segments
                .parts()
                .map(|p| match p {
                    Part::Run(b) => b.len(),
                    Part::Payload(_) => 0,
                })
                .sum();
            assert!(
                copied < FRAME_HEADER_LEN + 200 + SEGMENT_MIN_PAYLOAD * 4,
                "{:?}: {copied} bytes copied",
                msg.kind()
            );
        }
    }

    #[test]
    fn a_borrowed_push_is_the_owned_push_frame() {
        for msg in messages() {
            let Message::Push(push) = &msg else { continue };
            for n in 0..=push.items.len() {
                let items = &push.items[..n];
                let owned = encode_frame(&Message::Push(Push {
                    items: items.to_vec(),
                }));
                let borrowed = encode_push_segments(items);
                assert_eq!(borrowed.to_vec(), owned, "{n} items");
                let copied: usize = borrowed
                    .parts()
                    .map(|p| match p {
                        Part::Run(b) => b.len(),
                        Part::Payload(_) => 0,
                    })
                    .sum();
                assert!(copied < 4 * SEGMENT_MIN_PAYLOAD, "{copied} bytes copied");
            }
        }
    }

    #[tokio::test]
    async fn written_segments_read_back_as_the_message() {
        for msg in messages() {
            let mut buf = Vec::new();
            crate::frame::write_message(&mut buf, &msg, crate::limits::MAX_FRAME_CEILING)
                .await
                .unwrap();
            let mut r = &buf[..];
            let back = crate::frame::read_message(&mut r, crate::limits::MAX_FRAME_CEILING)
                .await
                .unwrap();
            assert_eq!(back.as_ref(), Some(&msg));
        }
    }
}
