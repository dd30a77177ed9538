//! What a hostile group *member* sends, for tests driving the fake relay
//! ([`crate::fake_relay`]) alone: blobs sealed with the group's keys (a
//! member has them; the relay does not), files of one chunk with any name,
//! and a `Pull` answered from a fixed list as a relay would.

use crate::Device;
use crate::fake_relay::{FakeRelay, Reply};
use sync_client::GroupKeys;
use sync_client::crypto::envelope::{
    BlobHeader, BlobKind, Compression, FileChunk, FileEnd, FileVersion, seal,
};
use sync_protocol::{BlobId, DeviceId, Message, PullBatch, PulledBlob};

/// A device of a new group (its home made before any relay exists, so a
/// script can seal blobs with the group's keys; point it at a relay with
/// `set_relay`), and the group's keys.
pub fn device_with_keys() -> (Device, GroupKeys) {
    let d = Device::new();
    let nowhere = format!("{}@127.0.0.1:9", iroh::SecretKey::generate().public());
    d.run(&["init", "--relay", &nowhere]);
    let keys = sync_client::Home::at(&d.home).secret().unwrap().keys();
    (d, keys)
}

/// A device of a new group whose relay is `fake`.
pub fn device_behind(fake: &FakeRelay) -> (Device, GroupKeys) {
    let (d, keys) = device_with_keys();
    d.set_relay(&fake.address);
    (d, keys)
}

/// One blob sealed by `sender` (a hostile member) at `cursor`.
pub fn sealed(
    keys: &GroupKeys,
    sender: DeviceId,
    cursor: u64,
    seq: u64,
    kind: BlobKind,
    body: &[u8],
) -> PulledBlob {
    let blob_id = BlobId(
        *blake3::hash(&[&sender.0[..], &seq.to_be_bytes(), &cursor.to_be_bytes()].concat())
            .as_bytes()
            .first_chunk::<16>()
            .unwrap(),
    );
    let header = BlobHeader {
        kind,
        sender,
        seq,
        created_at_ms: 1,
        compression: Compression::None,
        body_len: 0,
        view: Default::default(),
    };
    PulledBlob {
        cursor,
        blob_id,
        sender,
        created_at: 1,
        payload: seal(keys, &blob_id, header, body, 1 << 20).unwrap(),
    }
}

/// A whole one-chunk file `name` with `content` and permission bits `mode`.
pub fn file_kind(name: &str, content: &[u8], mode: u32, version: Option<FileVersion>) -> BlobKind {
    let chunk = FileChunk {
        file_id: *blake3::hash(name.as_bytes())
            .as_bytes()
            .first_chunk::<16>()
            .unwrap(),
        name: name.into(),
        mode,
        index: 0,
        offset: 0,
        size_hint: Some(content.len() as u64),
        end: Some(FileEnd {
            chunks: 1,
            size: content.len() as u64,
            blake3: *blake3::hash(content).as_bytes(),
        }),
    };
    match version {
        Some(version) => BlobKind::VersionedChunk { chunk, version },
        None => BlobKind::FileChunk(chunk),
    }
}

/// Answer a `Pull` from a fixed list of blobs as a relay would: those after
/// the cursor asked from, at most `limit`, 200 per frame, `head` = the last.
pub fn serve(blobs: &[PulledBlob], req: &Message) -> Reply {
    let Message::Pull(pull) = req else {
        return Reply::Forward;
    };
    let head = blobs.last().map_or(0, |b| b.cursor);
    let wanted: Vec<PulledBlob> = blobs
        .iter()
        .filter(|b| b.cursor > pull.after)
        .take(pull.limit as usize)
        .cloned()
        .collect();
    if wanted.is_empty() {
        return Reply::Answer(vec![Message::PullBatch(PullBatch {
            blobs: Vec::new(),
            head,
            more: false,
        })]);
    }
    let n = wanted.chunks(200).count();
    Reply::Answer(
        wanted
            .chunks(200)
            .enumerate()
            .map(|(i, c)| {
                Message::PullBatch(PullBatch {
                    blobs: c.to_vec(),
                    head,
                    more: i + 1 < n,
                })
            })
            .collect(),
    )
}
