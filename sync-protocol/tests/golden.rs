//! Golden byte vectors: the exact bytes of every message (`docs/protocol.md`).
//! A change here is a wire-format change and needs a new protocol version.

use sync_protocol::*;

fn hello() -> Message {
    Message::Hello(Hello {
        version: 1,
        group_id: GroupId([0x11; 32]),
        proof: Proof([0x22; 64]),
        device_name: Some("laptop".into()),
    })
}

fn samples() -> Vec<(&'static str, Message)> {
    vec![
        ("hello", hello()),
        (
            "hello_unnamed",
            Message::Hello(Hello {
                version: 1,
                group_id: GroupId([0x11; 32]),
                proof: Proof([0x22; 64]),
                device_name: None,
            }),
        ),
        (
            "hello_with_token",
            Message::HelloWithToken(HelloWithToken {
                hello: Hello {
                    version: 1,
                    group_id: GroupId([0x11; 32]),
                    proof: Proof([0x22; 64]),
                    device_name: Some("laptop".into()),
                },
                access_token: AccessToken([0x77; 32]),
            }),
        ),
        (
            "welcome",
            Message::Welcome(Welcome {
                version: 1,
                relay_id: DeviceId([0x33; 32]),
                head_cursor: 300,
                max_blob_size: 1 << 20,
                max_frame: (1 << 20) + (64 << 10),
                max_batch: 256,
                default_ttl_s: 604_800,
                max_ttl_s: 2_592_000,
            }),
        ),
        (
            "push",
            Message::Push(Push {
                items: vec![
                    PushItem {
                        blob_id: BlobId([0x44; 16]),
                        payload: vec![0xde, 0xad, 0xbe, 0xef],
                        ttl_s: None,
                    },
                    PushItem {
                        blob_id: BlobId([0x55; 16]),
                        payload: vec![],
                        ttl_s: Some(3600),
                    },
                ],
            }),
        ),
        (
            "push_ok",
            Message::PushOk(PushOk {
                results: vec![
                    PushResult {
                        blob_id: BlobId([0x44; 16]),
                        cursor: 1,
                        duplicate: false,
                    },
                    PushResult {
                        blob_id: BlobId([0x55; 16]),
                        cursor: 128,
                        duplicate: true,
                    },
                ],
                head: 128,
            }),
        ),
        (
            "pull",
            Message::Pull(Pull {
                after: 127,
                limit: 1000,
            }),
        ),
        (
            "pull_batch",
            Message::PullBatch(PullBatch {
                blobs: vec![PulledBlob {
                    cursor: 128,
                    blob_id: BlobId([0x55; 16]),
                    sender: DeviceId([0x66; 32]),
                    created_at: 1_700_000_000_000,
                    payload: vec![1, 2, 3],
                }],
                head: 128,
                more: false,
            }),
        ),
        // Version 2 (docs/protocol.md "Version 2: no echo"): the same
        // messages; a `Hello`/`Welcome` saying 2, and the no-echo marker (a
        // `PulledBlob` of the pulling device with an empty payload).
        (
            "hello_v2",
            Message::Hello(Hello {
                version: 2,
                group_id: GroupId([0x11; 32]),
                proof: Proof([0x22; 64]),
                device_name: None,
            }),
        ),
        (
            "welcome_v2",
            Message::Welcome(Welcome {
                version: 2,
                relay_id: DeviceId([0x33; 32]),
                head_cursor: 300,
                max_blob_size: 1 << 20,
                max_frame: (1 << 20) + (64 << 10),
                max_batch: 256,
                default_ttl_s: 604_800,
                max_ttl_s: 2_592_000,
            }),
        ),
        (
            "pull_batch_no_echo_marker",
            Message::PullBatch(PullBatch {
                blobs: vec![PulledBlob {
                    cursor: 128,
                    blob_id: BlobId([0x55; 16]),
                    sender: DeviceId([0x66; 32]),
                    created_at: 1_700_000_000_000,
                    payload: vec![],
                }],
                head: 128,
                more: false,
            }),
        ),
        ("ack", Message::Ack(Ack { cursor: 300 })),
        ("ack_ok", Message::AckOk(AckOk { cursor: 300 })),
        ("notify", Message::Notify(Notify { head: 1 })),
        (
            "error",
            Message::Error(
                ErrorMsg::new(ErrorCode::RateLimited, "slow down").with_retry_after(250),
            ),
        ),
        (
            "error_storage_unavailable",
            Message::Error(
                ErrorMsg::new(ErrorCode::StorageUnavailable, "db away").with_retry_after(5000),
            ),
        ),
        (
            "close_group",
            Message::CloseGroup(CloseGroup {
                keep: KeepList::new(vec![DeviceId([0x99; 32]), DeviceId([0x66; 32])])
                    .expect("two ids"),
            }),
        ),
        (
            "close_group_keep_none",
            Message::CloseGroup(CloseGroup {
                keep: KeepList::default(),
            }),
        ),
        (
            "close_group_ok",
            Message::CloseGroupOk(CloseGroupOk {
                closed_at: 1_700_000_000_000,
                grace_until: 1_702_592_000_000,
                keep: KeepList::new(vec![DeviceId([0x66; 32])]).expect("one id"),
                applied: true,
            }),
        ),
        (
            "error_group_closed",
            Message::Error(ErrorMsg::new(ErrorCode::GroupClosed, "closed")),
        ),
        (
            "hello_v3",
            Message::Hello(Hello {
                version: 3,
                group_id: GroupId([0x11; 32]),
                proof: Proof([0x22; 64]),
                device_name: None,
            }),
        ),
        (
            "deliver",
            Message::Deliver(Deliver {
                after: 127,
                blobs: vec![PulledBlob {
                    cursor: 128,
                    blob_id: BlobId([0x55; 16]),
                    sender: DeviceId([0x66; 32]),
                    created_at: 1_700_000_000_000,
                    payload: vec![1, 2, 3],
                }],
                head: 128,
            }),
        ),
        (
            "deliver_no_echo_marker",
            Message::Deliver(Deliver {
                after: 5,
                blobs: vec![PulledBlob {
                    cursor: 7,
                    blob_id: BlobId([0x55; 16]),
                    sender: DeviceId([0x66; 32]),
                    created_at: 1_700_000_000_000,
                    payload: vec![],
                }],
                head: 7,
            }),
        ),
    ]
}

/// Prints every sample's bytes in the form of [`GOLDEN`] (and of the table
/// in docs/protocol.md). Re-run it after a change of the message list (the
/// lead renumbers appended variants at merge):
/// `SYNC_GOLDEN_PRINT=1 cargo test -p sync-protocol --test golden print_golden -- --nocapture`
#[test]
fn print_golden_vectors_on_request() {
    if std::env::var_os("SYNC_GOLDEN_PRINT").is_none() {
        return;
    }
    for (name, msg) in samples() {
        let hex = hex::encode(encode_body(&msg));
        let chunks: Vec<&str> = hex
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        println!(
            "    (\n        \"{name}\",\n        \"{}\",\n    ),",
            chunks.join("\\\n         ")
        );
    }
}

const GOLDEN: &[(&str, &str)] = &[
    (
        "hello",
        "0001111111111111111111111111111111111111111111111111111111111111\
         1111222222222222222222222222222222222222222222222222222222222222\
         2222222222222222222222222222222222222222222222222222222222222222\
         222201066c6170746f70",
    ),
    (
        "hello_unnamed",
        "0001111111111111111111111111111111111111111111111111111111111111\
         1111222222222222222222222222222222222222222222222222222222222222\
         2222222222222222222222222222222222222222222222222222222222222222\
         222200",
    ),
    (
        "hello_with_token",
        "0a01111111111111111111111111111111111111111111111111111111111111\
         1111222222222222222222222222222222222222222222222222222222222222\
         2222222222222222222222222222222222222222222222222222222222222222\
         222201066c6170746f7077777777777777777777777777777777777777777777\
         77777777777777777777",
    ),
    (
        "welcome",
        "0101333333333333333333333333333333333333333333333333333333333333\
         3333ac02808040808044800280f524809a9e01",
    ),
    (
        "push",
        "02024444444444444444444444444444444404deadbeef005555555555555555\
         55555555555555550001901c",
    ),
    (
        "push_ok",
        "0302444444444444444444444444444444440100555555555555555555555555\
         555555558001018001",
    ),
    ("pull", "047fe807"),
    (
        "pull_batch",
        "0501800155555555555555555555555555555555666666666666666666666666\
         666666666666666666666666666666666666666680d095ffbc31030102038001\
         00",
    ),
    (
        "hello_v2",
        "0002111111111111111111111111111111111111111111111111111111111111\
         1111222222222222222222222222222222222222222222222222222222222222\
         2222222222222222222222222222222222222222222222222222222222222222\
         222200",
    ),
    (
        "welcome_v2",
        "0102333333333333333333333333333333333333333333333333333333333333\
         3333ac02808040808044800280f524809a9e01",
    ),
    (
        "pull_batch_no_echo_marker",
        "0501800155555555555555555555555555555555666666666666666666666666\
         666666666666666666666666666666666666666680d095ffbc31008001\
         00",
    ),
    ("ack", "06ac02"),
    ("ack_ok", "07ac02"),
    ("notify", "0801"),
    ("error", "09d00f09736c6f7720646f776e01fa01"),
    ("error_storage_unavailable", "09bb170764622061776179018827"),
    (
        "close_group",
        "0b02666666666666666666666666666666666666666666666666666666666666\
         6666999999999999999999999999999999999999999999999999999999999999\
         9999",
    ),
    ("close_group_keep_none", "0b00"),
    (
        "close_group_ok",
        "0c80d095ffbc3180e090d3c63101666666666666666666666666666666666666\
         666666666666666666666666666601",
    ),
    ("error_group_closed", "09ee0706636c6f73656400"),
    (
        "hello_v3",
        "0003111111111111111111111111111111111111111111111111111111111111\
         1111222222222222222222222222222222222222222222222222222222222222\
         2222222222222222222222222222222222222222222222222222222222222222\
         222200",
    ),
    (
        "deliver",
        "0d7f018001555555555555555555555555555555556666666666666666666666\
         66666666666666666666666666666666666666666680d095ffbc310301020380\
         01",
    ),
    (
        "deliver_no_echo_marker",
        "0d05010755555555555555555555555555555555666666666666666666666666\
         666666666666666666666666666666666666666680d095ffbc310007",
    ),
];

fn golden(name: &str) -> Vec<u8> {
    let hex: String = GOLDEN
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no golden vector for {name}"))
        .1
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    hex::decode(hex).expect("golden vector is hex")
}

#[test]
fn every_message_kind_has_a_golden_vector() {
    let kinds: std::collections::HashSet<_> = samples().iter().map(|(_, m)| m.kind()).collect();
    assert_eq!(kinds.len(), MessageKind::COUNT as usize);
    assert_eq!(samples().len(), GOLDEN.len());
}

#[test]
fn messages_encode_to_their_golden_bytes() {
    for (name, msg) in samples() {
        let body = encode_body(&msg);
        assert_eq!(
            hex::encode(&body),
            hex::encode(golden(name)),
            "encoding of {name} changed"
        );
    }
}

#[test]
fn golden_bytes_decode_to_their_messages() {
    for (name, msg) in samples() {
        assert_eq!(decode_body(&golden(name)).unwrap(), msg, "{name}");
    }
}

/// A keep list out of order, with a duplicate, or of 65 ids is malformed:
/// one list has one encoding, and the count is refused before allocation.
#[test]
fn close_group_keep_lists_are_canonical_and_capped() {
    let mut unsorted = golden("close_group");
    // Swap the two ids (0x66… ↔ 0x99…).
    let (a, b) = unsorted[2..].split_at_mut(32);
    a.swap_with_slice(b);
    assert!(matches!(
        decode_body(&unsorted),
        Err(DecodeError::Malformed {
            kind: MessageKind::CloseGroup,
            ..
        })
    ));
    let mut dup = golden("close_group");
    let first: Vec<u8> = dup[2..34].to_vec();
    dup[34..66].copy_from_slice(&first);
    assert!(decode_body(&dup).is_err());
    for n in [64u8, 65] {
        let mut body = vec![11u8, n];
        for i in 0..n {
            body.extend_from_slice(&[i; 32]);
        }
        assert_eq!(decode_body(&body).is_ok(), n == 64, "{n} ids");
    }
}

#[test]
fn frames_carry_a_big_endian_length() {
    let frame = encode_frame(&Message::Ack(Ack { cursor: 300 }));
    assert_eq!(frame, vec![0, 0, 0, 3, 0x06, 0xac, 0x02]);
}
