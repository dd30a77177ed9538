//! Micro-benchmarks (criterion): the frame codec, the blob envelope, the
//! storage push path, and the roster (verify, rotate, fold). `cargo bench -p sync-bench --bench micro`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use sync_client::GroupSecret;
use sync_client::crypto::envelope::{BlobHeader, BlobKind, Compression, open, seal};
use sync_protocol::{BlobId, DeviceId, Message, Push, PushItem, decode_body, encode_frame};
use sync_relay::storage::{
    NewBlob, NewGroup, PushRequest, Quotas, SqliteStorage, SqliteStorageOptions, Storage,
};

fn payload(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    getrandom::fill(&mut v).unwrap();
    v
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame codec");
    for (n, len) in [(64usize, 1024usize), (1, 1 << 20)] {
        let msg = Message::Push(Push {
            items: (0..n)
                .map(|i| PushItem {
                    blob_id: BlobId([i as u8; 16]),
                    payload: payload(len),
                    ttl_s: None,
                })
                .collect(),
        });
        let frame = encode_frame(&msg);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(format!("encode push {n}x{len}B"), |b| {
            b.iter(|| encode_frame(black_box(&msg)))
        });
        g.bench_function(format!("decode push {n}x{len}B"), |b| {
            b.iter(|| decode_body(black_box(&frame[4..])).unwrap())
        });
    }
    g.finish();
}

fn envelope(c: &mut Criterion) {
    let keys = GroupSecret::from_bytes([1; 32]).keys();
    let header = || BlobHeader {
        kind: BlobKind::Message,
        sender: DeviceId([2; 32]),
        seq: 1,
        created_at_ms: 0,
        compression: Compression::None,
        body_len: 0,
        view: Default::default(),
    };
    let mut g = c.benchmark_group("envelope");
    for len in [1024usize, 1 << 20] {
        let body = payload(len);
        let sealed = seal(&keys, &BlobId([3; 16]), header(), &body, 2 << 20).unwrap();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("seal {len}B"), |b| {
            b.iter(|| seal(&keys, &BlobId([3; 16]), header(), black_box(&body), 2 << 20).unwrap())
        });
        g.bench_function(format!("open {len}B"), |b| {
            b.iter(|| open(&keys, &BlobId([3; 16]), black_box(&sealed)).unwrap())
        });
    }
    g.finish();
}

fn storage(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = rt
        .block_on(SqliteStorage::open(SqliteStorageOptions::new(
            dir.path().join("b.db"),
            Quotas::UNLIMITED,
        )))
        .unwrap();
    // Only sessions create groups: open the one the pushes go to.
    rt.block_on(s.open_session(
        sync_protocol::GroupId([9; 32]),
        DeviceId([8; 32]),
        0,
        NewGroup::Unowned,
    ))
    .unwrap();
    let body = payload(1024);
    let mut n = 0u64;
    let mut g = c.benchmark_group("storage");
    for batch in [1usize, 64] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("push batch of {batch} x 1 KiB"), |b| {
            b.iter(|| {
                let items = (0..batch)
                    .map(|_| {
                        n += 1;
                        let mut id = [0u8; 16];
                        id[..8].copy_from_slice(&n.to_be_bytes());
                        NewBlob {
                            blob_id: BlobId(id),
                            payload: body.clone(),
                            expires_at_ms: i64::MAX,
                        }
                    })
                    .collect();
                rt.block_on(s.push(PushRequest {
                    group: sync_protocol::GroupId([9; 32]),
                    sender: DeviceId([8; 32]),
                    items,
                    now_ms: 0,
                }))
                .unwrap()
            })
        });
    }
    g.finish();
    rt.block_on(s.close());
}

/// The roster at its limits: 64 members, 4,096 entries (docs/security.md
/// "Devices, roster and key epochs").
fn roster(c: &mut Criterion) {
    use sync_client::roster::{DeviceKeys, build, fold};
    let keys: Vec<DeviceKeys> = (0..64u8)
        .map(|i| DeviceKeys::from_parts(&[i + 1; 32], &[i + 101; 32]))
        .collect();
    let group_id = GroupSecret::from_bytes([7; 32]).keys().group_id();
    let genesis = build::genesis(&keys[0], group_id, "d0", 0).unwrap();
    let mut entries = vec![genesis.clone()];
    let mut state = fold(genesis.id(), &entries).unwrap();
    for (i, k) in keys.iter().enumerate().skip(1) {
        let name = format!("d{i}");
        entries
            .push(build::add(&state, &keys[0], k.device_id(), k.hpke_public(), &name, 0).unwrap());
        state = fold(genesis.id(), &entries).unwrap();
    }
    let mut t = 0;
    while entries.len() < sync_client::roster::MAX_ENTRIES - 1 {
        t += 1;
        let k = &keys[t % 64];
        entries.push(build::rename(&state, k, k.device_id(), "renamed", t as u64).unwrap());
    }
    let (rotation, _) = build::rotate(&state, &keys[0], &[keys[1].device_id()], 1).unwrap();
    entries.push(rotation.clone());
    let bytes = rotation.encode();
    let mut g = c.benchmark_group("roster");
    g.sample_size(10);
    g.bench_function("decode+verify rotate (63 wraps)", |b| {
        b.iter(|| sync_client::roster::SignedEntry::decode(black_box(&bytes)).unwrap())
    });
    g.bench_function("rotate 64 members", |b| {
        b.iter(|| build::rotate(black_box(&state), &keys[0], &[], 1).unwrap())
    });
    g.bench_function("fold 64 members, 4096 entries", |b| {
        b.iter(|| fold(genesis.id(), black_box(&entries)).unwrap())
    });
    // A hostile member's worst case: every entry but the adds is a
    // concurrent rotation of epoch 0 wrapping to 63 devices (the largest
    // entries), by 63 authors.
    let mut rotations = entries[..64].to_vec();
    let mut t = 0u64;
    while rotations.len() < sync_client::roster::MAX_ENTRIES {
        t += 1;
        let k = &keys[if t % 64 == 1 { 0 } else { (t % 64) as usize }];
        let mut en = rotation.entry().clone();
        en.author = k.device_id();
        en.created_at_ms = t;
        rotations.push(sync_client::roster::SignedEntry::sign(en, k.signing_key()).unwrap());
    }
    g.bench_function("fold 4032 concurrent rotations (63 wraps)", |b| {
        b.iter(|| {
            let s = fold(genesis.id(), black_box(&rotations)).unwrap();
            assert_eq!(s.epoch, 1);
        })
    });
    g.finish();
}

criterion_group!(micro, codec, envelope, storage, roster);
criterion_main!(micro);
