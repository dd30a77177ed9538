//! Property tests: every message round-trips, and no input panics the
//! decoder (the frame reader's memory bounds are in `frame_memory.rs`).

use proptest::prelude::*;
use sync_protocol::limits::{BATCH_OVERHEAD, PULLED_BLOB_OVERHEAD, PUSH_ITEM_OVERHEAD};
use sync_protocol::*;

fn blob_id() -> impl Strategy<Value = BlobId> {
    any::<[u8; 16]>().prop_map(BlobId)
}

fn push_item() -> impl Strategy<Value = PushItem> {
    (
        blob_id(),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<Option<u32>>(),
    )
        .prop_map(|(blob_id, payload, ttl_s)| PushItem {
            blob_id,
            payload,
            ttl_s,
        })
}

fn pulled_blob() -> impl Strategy<Value = PulledBlob> {
    (
        any::<u64>(),
        blob_id(),
        any::<[u8; 32]>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(cursor, blob_id, sender, created_at, payload)| PulledBlob {
                cursor,
                blob_id,
                sender: DeviceId(sender),
                created_at,
                payload,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u16>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            proptest::option::of("[a-z]{0,64}")
        )
            .prop_map(|(version, g, p, device_name)| {
                let mut proof = [0u8; 64];
                proof[..32].copy_from_slice(&p);
                Message::Hello(Hello {
                    version,
                    group_id: GroupId(g),
                    proof: Proof(proof),
                    device_name,
                })
            }),
        (
            any::<u16>(),
            any::<[u8; 32]>(),
            proptest::option::of("[a-z]{0,64}"),
            any::<[u8; 32]>()
        )
            .prop_map(|(version, g, device_name, t)| {
                Message::HelloWithToken(HelloWithToken {
                    hello: Hello {
                        version,
                        group_id: GroupId(g),
                        proof: Proof([7; 64]),
                        device_name,
                    },
                    access_token: AccessToken(t),
                })
            }),
        (any::<[u8; 32]>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(r, head, a, b)| Message::Welcome(Welcome {
                version: 1,
                relay_id: DeviceId(r),
                head_cursor: head,
                max_blob_size: a,
                max_frame: b,
                max_batch: a ^ b,
                default_ttl_s: a,
                max_ttl_s: b,
            })
        ),
        proptest::collection::vec(push_item(), 0..8)
            .prop_map(|items| Message::Push(Push { items })),
        (
            proptest::collection::vec(
                (blob_id(), any::<u64>(), any::<bool>()).prop_map(
                    |(blob_id, cursor, duplicate)| {
                        PushResult {
                            blob_id,
                            cursor,
                            duplicate,
                        }
                    }
                ),
                0..8
            ),
            any::<u64>()
        )
            .prop_map(|(results, head)| Message::PushOk(PushOk { results, head })),
        (any::<u64>(), any::<u32>())
            .prop_map(|(after, limit)| Message::Pull(Pull { after, limit })),
        (
            proptest::collection::vec(pulled_blob(), 0..8),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(blobs, head, more)| Message::PullBatch(PullBatch {
                blobs,
                head,
                more
            })),
        any::<u64>().prop_map(|cursor| Message::Ack(Ack { cursor })),
        any::<u64>().prop_map(|cursor| Message::AckOk(AckOk { cursor })),
        any::<u64>().prop_map(|head| Message::Notify(Notify { head })),
        (
            any::<u64>(),
            proptest::collection::vec(pulled_blob(), 0..8),
            any::<u64>()
        )
            .prop_map(|(after, blobs, head)| Message::Deliver(Deliver {
                after,
                blobs,
                head
            })),
        (any::<u16>(), ".{0,40}", any::<Option<u32>>()).prop_map(|(code, message, retry)| {
            Message::Error(ErrorMsg {
                code,
                message,
                retry_after_ms: retry,
            })
        }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in message()) {
        let body = encode_body(&msg);
        prop_assert_eq!(body.len(), sync_protocol::codec::encoded_len(&msg));
        prop_assert_eq!(decode_body(&body).unwrap(), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Whatever decodes is the one canonical encoding of its message.
        if let Ok(msg) = decode_body(&bytes) {
            prop_assert_eq!(encode_body(&msg), bytes);
        }
    }

    #[test]
    fn mutated_messages_never_panic_the_decoder(msg in message(), idx in any::<usize>(), byte in any::<u8>()) {
        let mut body = encode_body(&msg);
        if !body.is_empty() {
            let i = idx % body.len();
            body[i] = byte;
        }
        if let Ok(decoded) = decode_body(&body) {
            prop_assert_eq!(encode_body(&decoded), body);
        }
    }

    #[test]
    fn overhead_bounds_hold(items in proptest::collection::vec(push_item(), 1..8),
                            blobs in proptest::collection::vec(pulled_blob(), 1..8)) {
        let payload: usize = items.iter().map(|i| i.payload.len()).sum();
        let n = items.len();
        let push = Message::Push(Push { items });
        prop_assert!(encode_body(&push).len() <= BATCH_OVERHEAD + n * PUSH_ITEM_OVERHEAD + payload);
        let payload: usize = blobs.iter().map(|b| b.payload.len()).sum();
        let n = blobs.len();
        let batch = Message::PullBatch(PullBatch { blobs, head: u64::MAX, more: true });
        prop_assert!(encode_body(&batch).len() <= BATCH_OVERHEAD + n * PULLED_BLOB_OVERHEAD + payload);
    }
}
