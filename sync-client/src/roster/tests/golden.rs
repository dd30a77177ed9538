//! Golden vectors: fixed keys → exact bytes, for every entry and derivation.
//! Changing any of them breaks every existing roster: do it only with a new
//! entry version.

use super::*;
use crate::roster::build;
use crate::roster::wrap::{WrapContext, wrap_info, wrap_with_rng};

/// Device 1: node key `[1; 32]` (its Ed25519 public key is the well-known
/// one of that seed), HPKE seed `[101; 32]`.
const DEVICE_1: &str = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
const HPKE_1: &str = "5e5ac6728c564f1e3f515d65e4e6a0f13937c35a1c8026a5108a20bab3abfb10";
/// Keys of the epoch secret `[7; 32]`.
const GROUP_ID_7: &str = "cb0d1223f3486c97114ba99f65d64dd967e1f7e1c9509dca9a5f4e6318042813";
const BLOB_KEY_7: &str = "0e92589a8fed3db3f1e7bad23ce7e2e747fe1da50c33f86793dbf3f8e22edd04";
const GENESIS: &str = "00b801000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c00000000000003e8cb0d1223f3486c97114ba99f65d64dd967e1f7e1c9509dca9a5f4e63180428135e5ac6728c564f1e3f515d65e4e6a0f13937c35a1c8026a5108a20bab3abfb1005616c70686104dab9db7875e0068b512624de07e8221438db2788641dabb20eff37f2b0884821350e053b753235b1b2994e95c97dc4d70f8666a2f46249c3792d5febbd9005";
const GENESIS_ID: &str = "ccd730f376746467b96147321de63b88bf8df275b618306ab177ceb4d1d8db86";
const ADD: &str = "00b80101ccd730f376746467b96147321de63b88bf8df275b618306ab177ceb4d1d8db860000000000000000ccd730f376746467b96147321de63b88bf8df275b618306ab177ceb4d1d8db868a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c00000000000007d08139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394840e0eae611c970a92cea2e745c9f3f6ae69b67d75bac5eba11add350cd58f6805627261766fea237919ffe51c24637dedb0e52a06762838497f5556f53e232f4dfefc13dbb5d309c5eec182b15f6430c2496c8f30a947c26b0dfad115c1f37572fe3002110b";
const RENAME: &str = "00970102ccd730f376746467b96147321de63b88bf8df275b618306ab177ceb4d1d8db860000000000000000ccd730f376746467b96147321de63b88bf8df275b618306ab177ceb4d1d8db868139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b3940000000000000bb88a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c04616c6661d87847a8433ef84f842193203343450cdebf905b2442899887341e9b8ced3eee44fc1ce0d1a6876544c5a3076cca4874cd79e956cce1439b1f1a992a57379208";
const ROTATE: &str = "01740103ccd730f376746467b96147321de63b88bf8df275b618306ab177ceb4d1d8db860000000000000000ccd730f376746467b96147321de63b88bf8df275b618306ab177ceb4d1d8db868a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c00000000000013882c3d54306f566e4269a8b1e01593185f6d7122cfbddcdd5f1e28f5935e1e358e00028139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b39445f8be8bbbf9fd2b272fd87d2d71fa16fb1c9be0216766dc8606f7106522bc7da05687178b50351d0851566efb97dd68fbb092934b74233618bc526df94d675487007459af026a1d70423100094c80698a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c1c81437ea4d5a4ea8ffb19180a60bad3bac250a2ee794a1a5a8fea3f02acb528fc34fb7e60612cea1e651210e6864fd50292c924e2a9b03f445585b9977b56859fb6de824736c74e3a3c02b024ed995ccd82da8bd7e36aee09f64414520d71733e934bf29278b53b69d724c05321d11ea3f532aed486989e644d29ff51a47e0788929d6b9c5bab58b42f11885591310a";
/// HPKE `info` of the wrap to device 2 opening epoch 1 of that roster.
const INFO: &str = "306b2d73796e632f312065706f63682073656372657400ccd730f376746467b96147321de63b88bf8df275b618306ab177ceb4d1d8db8600000000000000012c3d54306f566e4269a8b1e01593185f6d7122cfbddcdd5f1e28f5935e1e358e8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394";
/// The secret `[40; 32]` wrapped to device 2 with HPKE's ephemeral key from
/// ChaCha20Rng seed `[1; 32]`: `enc`, then the ciphertext.
const WRAP_ENC: &str = "e9c83d33c3e2b9365202716a804433e131dbff85504166a86efb9c8e22fbf474";
const WRAP_CT: &str = "3d065ef4e57d2101b40d4206cce5de9223fc88ca8de3b999b287ab4201cc4bf1cccc66abc1f46aa54afb0d5243239a84";

fn decode(hex_text: &str) -> SignedEntry {
    SignedEntry::decode(&hex::decode(hex_text).unwrap()).unwrap()
}

#[test]
fn device_keys_and_epoch_keys_are_pinned() {
    let k1 = keys(1);
    assert_eq!(hex::encode(k1.device_id().0), DEVICE_1);
    assert_eq!(hex::encode(k1.hpke_public()), HPKE_1);
    // The device id is the iroh node id of the same secret key.
    let node = iroh::SecretKey::from_bytes(&[1; 32]);
    assert_eq!(*node.public().as_bytes(), k1.device_id().0);
    let gk = group_secret().keys();
    assert_eq!(hex::encode(gk.group_id().0), GROUP_ID_7);
    assert_eq!(hex::encode(gk.blob_key()), BLOB_KEY_7);
}

#[test]
fn every_entry_encodes_byte_for_byte() {
    let (k1, k2) = (keys(1), keys(2));
    let (g, s) = founded();
    assert_eq!(hex::encode(g.encode()), GENESIS);
    assert_eq!(g.id().to_string(), GENESIS_ID);
    let a = build::add(&s, &k1, k2.device_id(), k2.hpke_public(), "bravo", 2000).unwrap();
    assert_eq!(hex::encode(a.encode()), ADD);
    let s = fold_all(&g, std::slice::from_ref(&a));
    let r = build::rename(&s, &k2, k1.device_id(), "alfa", 3000).unwrap();
    assert_eq!(hex::encode(r.encode()), RENAME);
    let secret = crate::GroupSecret::from_bytes([40; 32]);
    let rot = build::rotate_with(&s, &k1, &[], &secret, 5000, &mut rng(40)).unwrap();
    assert_eq!(hex::encode(rot.encode()), ROTATE);
}

#[test]
fn pinned_entries_decode_verify_and_fold() {
    let g = decode(GENESIS);
    assert_eq!(g.id().to_string(), GENESIS_ID);
    let entries = [decode(ADD), decode(RENAME), decode(ROTATE)];
    assert!(matches!(entries[2].entry().kind, EntryKind::Rotate { .. }));
    let s = fold_all(&g, &entries);
    assert_eq!(s.epoch, 1);
    assert_eq!(s.members[&id(1)].name, "alfa");
    assert_eq!(s.members[&id(2)].name, "bravo");
    let secret = crate::GroupSecret::from_bytes([40; 32]);
    assert_eq!(s.epoch_secret(1, &keys(2)).unwrap(), secret);
    assert_eq!(s.epoch_secret(1, &keys(1)).unwrap(), secret);
}

#[test]
fn the_wrap_is_pinned_and_opens() {
    let k2 = keys(2);
    let secret = crate::GroupSecret::from_bytes([40; 32]);
    let ctx = WrapContext {
        roster: decode(GENESIS).id(),
        epoch: 1,
        group_id: secret.keys().group_id(),
    };
    assert_eq!(hex::encode(wrap_info(&ctx, &k2.device_id())), INFO);
    let w = wrap_with_rng(
        &secret,
        k2.device_id(),
        &k2.hpke_public(),
        &ctx,
        &mut rng(1),
    )
    .unwrap();
    assert_eq!(hex::encode(w.enc), WRAP_ENC);
    assert_eq!(hex::encode(w.ciphertext), WRAP_CT);
    assert_eq!(unwrap(&w, &k2, &ctx).unwrap(), secret);
    // Another epoch, roster or group id in the context: it does not open.
    for other in [
        WrapContext { epoch: 2, ..ctx },
        WrapContext {
            roster: EntryId([1; 32]),
            ..ctx
        },
        WrapContext {
            group_id: group_secret().keys().group_id(),
            ..ctx
        },
    ] {
        assert!(matches!(
            unwrap(&w, &k2, &other),
            Err(RosterError::Unwrap(_))
        ));
    }
    // A secret that does not derive the announced group id is refused.
    let liar = WrapContext {
        group_id: group_secret().keys().group_id(),
        ..ctx
    };
    let w = wrap_with_rng(
        &secret,
        k2.device_id(),
        &k2.hpke_public(),
        &liar,
        &mut rng(1),
    )
    .unwrap();
    let err = unwrap(&w, &k2, &liar).unwrap_err();
    assert!(err.to_string().contains("announced group id"), "{err}");
}
