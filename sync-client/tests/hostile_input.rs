//! Smoke versions of the fuzz targets in `fuzz/` (run in CI with the
//! tests): arbitrary and mutated input never panics the envelope decoder or
//! the invite parser, is refused with the documented error kind, and never
//! decodes into something it was not. Every result is checked: an input is
//! either refused with the right error or its decoding is shown faithful to
//! the bytes.

use proptest::prelude::*;
use sync_client::crypto::envelope::{
    BlobHeader, BlobKind, Compression, ENVELOPE_OVERHEAD, ENVELOPE_V1, ENVELOPE_VERSION,
    EnvelopeError, FileChunk, OpenedBlob, decode_inner, open, seal,
};
use sync_client::relpath::validate_path;
use sync_client::{ClientError, GroupSecret, Invite};
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
        view: Default::default(),
    }
}

/// Bytes of zero padding after the body in [`inner`].
const PADDING: usize = 7;

/// A valid inner plaintext (as `open` would see after decryption), and the
/// offset where its body starts.
fn inner(body: &[u8]) -> (Vec<u8>, usize) {
    let mut h = header();
    h.body_len = body.len() as u32;
    let hb = postcard::to_allocvec(&h).unwrap();
    let mut out = (hb.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&hb);
    let start = out.len();
    out.extend_from_slice(body);
    out.extend_from_slice(&[0; PADDING]);
    (out, start)
}

/// The decoder only ever refuses an inner plaintext as malformed.
fn assert_malformed(result: &Result<OpenedBlob, EnvelopeError>) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(result, Err(EnvelopeError::Malformed(_))),
        "refused with the wrong kind: {result:?}"
    );
    Ok(())
}

/// What `decode_inner` accepted is what the bytes say, read independently
/// here: the header at the declared length, the body at `body_len` after
/// it (decompressed to exactly `raw_len` for zstd), zero padding to the
/// end, a valid file name (a relative path, docs/client.md "Directories").
fn assert_faithful(bytes: &[u8], opened: &OpenedBlob) -> Result<(), TestCaseError> {
    let header_len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    let header: BlobHeader = postcard::from_bytes(&bytes[4..4 + header_len]).unwrap();
    prop_assert_eq!(&header, &opened.header);
    let start = 4 + header_len;
    let end = start + header.body_len as usize;
    let stored = &bytes[start..end];
    prop_assert!(
        bytes[end..].iter().all(|&b| b == 0),
        "non-zero padding accepted"
    );
    match header.compression {
        Compression::None => prop_assert_eq!(opened.body.as_slice(), stored),
        Compression::Zstd { raw_len } => {
            let raw = zstd::decode_all(stored).unwrap();
            prop_assert_eq!(raw.len(), raw_len as usize);
            prop_assert_eq!(opened.body.as_slice(), &raw[..]);
        }
    }
    if let Some((chunk, _)) = header.kind.chunk() {
        prop_assert!(validate_path(&chunk.name).is_ok(), "{:?}", chunk.name);
    }
    Ok(())
}

/// The decoder refuses `bytes` as malformed, or decodes them faithfully.
fn assert_refused_or_faithful(bytes: &[u8]) -> Result<Option<OpenedBlob>, TestCaseError> {
    match decode_inner(bytes) {
        Ok(opened) => {
            assert_faithful(bytes, &opened)?;
            Ok(Some(opened))
        }
        refused => {
            assert_malformed(&refused)?;
            Ok(None)
        }
    }
}

/// An invite is refused as invalid input, saying so, or decodes to an
/// invite that survives its own round trip.
fn assert_invite_refused_or_consistent(text: &str) -> Result<Option<Invite>, TestCaseError> {
    match Invite::decode(text) {
        Err(ClientError::InvalidInput(msg)) => {
            prop_assert!(msg.starts_with("invalid invite: "), "{msg}");
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!("wrong error kind: {other:?}"))),
        Ok(invite) => {
            prop_assert_eq!(&Invite::decode(&invite.encode()).unwrap(), &invite);
            Ok(Some(invite))
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_inner_plaintext_is_refused_or_read_faithfully(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        assert_refused_or_faithful(&bytes)?;
    }

    #[test]
    fn mutated_inner_plaintext_is_refused_or_read_faithfully(body in prop::collection::vec(any::<u8>(), 0..200), idx in any::<usize>(), b in any::<u8>()) {
        let (mut bytes, start) = inner(&body);
        let original = decode_inner(&bytes).unwrap();
        prop_assert_eq!(original.body.as_slice(), &body[..]);
        let i = idx % bytes.len();
        let changed = bytes[i] != b;
        bytes[i] = b;
        let decoded = assert_refused_or_faithful(&bytes)?;
        if !changed {
            prop_assert_eq!(decoded.as_ref(), Some(&original));
        } else if i >= start + body.len() {
            // Padding must stay zero.
            prop_assert!(decoded.is_none(), "non-zero padding at {i} accepted");
        } else if i >= start {
            // A body byte: read back as changed, header untouched.
            let decoded = decoded.expect("a changed body byte still decodes");
            prop_assert_eq!(&decoded.header, &original.header);
            prop_assert_eq!(decoded.body.as_slice()[i - start], b);
        }
    }

    #[test]
    fn arbitrary_payloads_never_open(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let keys = GroupSecret::from_bytes([3; 32]).keys();
        let result = open(&keys, &BlobId([4; 16]), &bytes);
        // Each refusal is the documented one for its cause.
        let expected = if bytes.len() < ENVELOPE_OVERHEAD {
            EnvelopeError::TooShort(bytes.len())
        } else if bytes[0] != ENVELOPE_VERSION && bytes[0] != ENVELOPE_V1 {
            EnvelopeError::UnsupportedVersion(bytes[0])
        } else {
            EnvelopeError::Authentication
        };
        prop_assert_eq!(result, Err(expected));
    }

    #[test]
    fn arbitrary_invite_strings_are_refused(s in ".{0,300}") {
        // A random string passes the 32-bit checksum with odds of 2^-32:
        // anything that decodes must at least be self-consistent.
        assert_invite_refused_or_consistent(&s)?;
        assert_invite_refused_or_consistent(&format!("0ksync1-{s}"))?;
        assert_invite_refused_or_consistent(&format!("0ksync2-{s}"))?;
    }

    #[test]
    fn mutated_invites_are_refused_or_intact(idx in any::<usize>(), c in "[A-Za-z0-9_-]") {
        let invite = Invite {
            relays: vec!["1d3c2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65@127.0.0.1:4433".into()],
            roster: sync_client::roster::EntryId([4; 32]),
            enrolment_secret: [5; 32],
            expires_at: 2_000_000_000,
            group_name: Some("g".into()),
        };
        let text = invite.encode();
        let mut chars: Vec<char> = text.chars().collect();
        let i = 8 + idx % (chars.len() - 8);
        chars[i] = c.chars().next().unwrap();
        let mutated: String = chars.into_iter().collect();
        let decoded = assert_invite_refused_or_consistent(&mutated)?;
        if mutated == text {
            prop_assert_eq!(decoded, Some(invite));
        } else {
            // Any changed character is caught (checksum, or base64 trailing bits).
            prop_assert_eq!(decoded, None, "{} decoded", mutated);
        }
    }
}

/// Hand-made hostile inner plaintexts, each refused with its own reason.
#[test]
fn hostile_inner_plaintexts_are_refused_for_the_right_reason() {
    let (good, start) = inner(b"hello");
    let header_len = start - 4;
    let malformed = |bytes: &[u8]| match decode_inner(bytes) {
        Err(EnvelopeError::Malformed(reason)) => reason,
        other => panic!("not refused as malformed: {other:?}"),
    };
    assert_eq!(malformed(&good[..3]), "no header length");
    let mut long_header = good.clone();
    long_header[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(malformed(&long_header), "header length beyond the blob");
    // Body length past the end: the header claims 5 + 7 + 1 bytes.
    let mut h = header();
    h.body_len = 5 + PADDING as u32 + 1;
    let hb = postcard::to_allocvec(&h).unwrap();
    assert_eq!(hb.len(), header_len);
    let mut long_body = good.clone();
    long_body[4..start].copy_from_slice(&hb);
    assert_eq!(malformed(&long_body), "body length beyond the blob");
    let mut padded = good.clone();
    *padded.last_mut().unwrap() = 1;
    assert_eq!(malformed(&padded), "non-zero padding");
    // A file name that would escape the output directory.
    let mut h = header();
    h.body_len = 0;
    if let BlobKind::FileChunk(c) = &mut h.kind {
        c.name = "../x".into();
    }
    let hb = postcard::to_allocvec(&h).unwrap();
    let mut escaping = (hb.len() as u32).to_be_bytes().to_vec();
    escaping.extend_from_slice(&hb);
    assert!(malformed(&escaping).contains(". or .. component"));
    // A zstd bomb: a tiny frame declaring more than the 32 MiB limit.
    let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
    let mut h = header();
    h.compression = Compression::Zstd { raw_len: u32::MAX };
    h.body_len = bomb.len() as u32;
    let hb = postcard::to_allocvec(&h).unwrap();
    let mut bombed = (hb.len() as u32).to_be_bytes().to_vec();
    bombed.extend_from_slice(&hb);
    bombed.extend_from_slice(&bomb);
    assert_eq!(malformed(&bombed), "declared body size over the limit");
    // The same frame declaring fewer bytes than it holds.
    let mut h = header();
    h.compression = Compression::Zstd { raw_len: 1000 };
    h.body_len = bomb.len() as u32;
    let hb = postcard::to_allocvec(&h).unwrap();
    let mut short = (hb.len() as u32).to_be_bytes().to_vec();
    short.extend_from_slice(&hb);
    short.extend_from_slice(&bomb);
    assert!(
        malformed(&short).starts_with("zstd"),
        "{}",
        malformed(&short)
    );
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
