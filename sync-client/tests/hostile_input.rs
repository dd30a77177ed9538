//! Smoke versions of the fuzz targets in `fuzz/` (run in CI with the
//! tests): arbitrary and mutated input never panics the envelope decoder or
//! the invite parser, and never decodes into something it was not.

use proptest::prelude::*;
use sync_client::crypto::envelope::{
    BlobHeader, BlobKind, Compression, FileChunk, decode_inner, open, seal,
};
use sync_client::{GroupSecret, Invite};
use sync_protocol::{BlobId, DeviceId};

fn header() -> BlobHeader {
    BlobHeader {
        kind: BlobKind::FileChunk(FileChunk {
            file_id: [1; 16],
            name: "a.txt".into(),
            mode: 0o644,
            index: 0,
            offset: 0,
            size_hint: None,
            end: None,
        }),
        sender: DeviceId([2; 32]),
        seq: 1,
        created_at_ms: 0,
        compression: Compression::None,
        body_len: 0,
    }
}

/// A valid inner plaintext (as `open` would see after decryption).
fn inner(body: &[u8]) -> Vec<u8> {
    let mut h = header();
    h.body_len = body.len() as u32;
    let hb = postcard::to_allocvec(&h).unwrap();
    let mut out = (hb.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&hb);
    out.extend_from_slice(body);
    out.extend_from_slice(&[0; 7]);
    out
}

proptest! {
    #[test]
    fn arbitrary_inner_plaintext_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_inner(&bytes);
    }

    #[test]
    fn mutated_inner_plaintext_never_panics(body in prop::collection::vec(any::<u8>(), 0..200), idx in any::<usize>(), b in any::<u8>()) {
        let mut bytes = inner(&body);
        let decoded = decode_inner(&bytes).unwrap();
        prop_assert_eq!(decoded.body.as_slice(), &body[..]);
        let i = idx % bytes.len();
        bytes[i] = b;
        let _ = decode_inner(&bytes);
    }

    #[test]
    fn arbitrary_payloads_never_open(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let keys = GroupSecret::from_bytes([3; 32]).keys();
        prop_assert!(open(&keys, &BlobId([4; 16]), &bytes).is_err());
    }

    #[test]
    fn arbitrary_invite_strings_never_panic(s in ".{0,300}") {
        let _ = Invite::decode(&s);
        let _ = Invite::decode(&format!("0ksync1-{s}"));
    }

    #[test]
    fn mutated_invites_are_refused_or_intact(idx in any::<usize>(), c in "[A-Za-z0-9_-]") {
        let invite = Invite {
            relays: vec!["1d3c2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65@127.0.0.1:4433".into()],
            secret: GroupSecret::from_bytes([5; 32]),
            expires_at: 2_000_000_000,
            group_name: Some("g".into()),
        };
        let text = invite.encode();
        let mut chars: Vec<char> = text.chars().collect();
        let i = 8 + idx % (chars.len() - 8);
        chars[i] = c.chars().next().unwrap();
        let mutated: String = chars.into_iter().collect();
        if let Ok(decoded) = Invite::decode(&mutated) {
            prop_assert_eq!(decoded, invite); // only when nothing changed
        }
    }
}

#[test]
fn a_sealed_blob_round_trips_through_decode_inner_parts() {
    let keys = GroupSecret::from_bytes([3; 32]).keys();
    let sealed = seal(&keys, &BlobId([4; 16]), header(), b"hello", 1 << 20).unwrap();
    assert_eq!(
        open(&keys, &BlobId([4; 16]), &sealed)
            .unwrap()
            .body
            .as_slice(),
        b"hello"
    );
}
