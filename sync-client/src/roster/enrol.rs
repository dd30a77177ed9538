//! Enrolment requests (docs/security.md "Devices, roster and key epochs",
//! "Enrolment requests in the group", "Invites as one-time enrolment
//! credentials"): a device asks to be added to the roster. In the group, a
//! device that holds the epoch secret without being a member (a group from
//! before rosters, a version-1 invite) posts one; in an invite's mailbox,
//! the joiner does, signed over the mailbox's group id. The request travels
//! as a blob of kind [`crate::crypto::envelope::BlobKind::Enrolment`]:
//!
//! ```text
//! request   = hpke_key [32] ‖ name_len u8 (1..=32) ‖ name ‖ signature [64]
//! signature = Ed25519(device key, "0k-sync/1 enrolment request" ‖ 0x00
//!             ‖ group id [32] ‖ device [32] ‖ hpke_key ‖ name_len ‖ name)
//! ```
//!
//! The device is the blob's sealed sender; the signature (by the device's
//! node key) binds its HPKE key and name to it and to the group it was
//! posted in, so a member cannot make another device's request with an HPKE
//! key of its own choosing (which would let it read that device's wraps).

use super::RosterError;
use super::codec::{Reader, Writer};
use super::device::DeviceKeys;
use super::entry::HpkePublicKey;
use crate::crypto::envelope::{MAX_DEVICE_NAME_LEN, validate_device_name};
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use sync_protocol::{DeviceId, GroupId};

/// Domain prefix of the request's signature.
pub const ENROLMENT_CONTEXT: &[u8] = b"0k-sync/1 enrolment request";

/// A verified enrolment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// The device asking to be added (the blob's sender).
    pub device: DeviceId,
    /// Its HPKE public key.
    pub hpke_key: HpkePublicKey,
    /// The name it asks for.
    pub name: String,
}

fn signed_message(group: &GroupId, device: &DeviceId, hpke_key: &[u8], name: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(ENROLMENT_CONTEXT);
    w.u8(0);
    w.bytes(&group.0);
    w.bytes(&device.0);
    w.bytes(hpke_key);
    w.short_str(name);
    w.finish()
}

impl Enrolment {
    /// The request of `keys`' device, named `name`, for group `group`.
    /// Errors: [`RosterError::Malformed`] for an invalid name.
    pub fn encode(keys: &DeviceKeys, group: &GroupId, name: &str) -> Result<Vec<u8>, RosterError> {
        validate_device_name(name)
            .map_err(|why| RosterError::Malformed(format!("device name: {why}")))?;
        let hpke = keys.hpke_public();
        let sig = keys
            .signing_key()
            .sign(&signed_message(group, &keys.device_id(), &hpke, name));
        let mut w = Writer::default();
        w.bytes(&hpke);
        w.short_str(name);
        w.bytes(&sig.to_bytes());
        Ok(w.finish())
    }

    /// Decode and verify a request sent by `device` in group `group`.
    /// Errors: [`RosterError::Truncated`], [`RosterError::TrailingBytes`],
    /// [`RosterError::TooLong`], [`RosterError::Malformed`] (name),
    /// [`RosterError::BadSignature`] (not signed by `device` for `group`).
    pub fn decode(device: DeviceId, group: &GroupId, bytes: &[u8]) -> Result<Self, RosterError> {
        let mut r = Reader::new(bytes);
        let hpke_key: [u8; 32] = r.array("HPKE key")?;
        let name = r.short_str(MAX_DEVICE_NAME_LEN, "name")?;
        let sig: [u8; 64] = r.array("signature")?;
        r.end()?;
        validate_device_name(&name)
            .map_err(|why| RosterError::Malformed(format!("device name: {why}")))?;
        let key = VerifyingKey::from_bytes(&device.0).map_err(|_| RosterError::BadSignature)?;
        key.verify_strict(
            &signed_message(group, &device, &hpke_key, &name),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| RosterError::BadSignature)?;
        Ok(Enrolment {
            device,
            hpke_key,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u8) -> DeviceKeys {
        DeviceKeys::from_parts(&[n; 32], &[n + 100; 32])
    }

    #[test]
    fn a_request_verifies_only_for_its_device_and_group() {
        let k = keys(1);
        let group = GroupId([9; 32]);
        let bytes = Enrolment::encode(&k, &group, "laptop").unwrap();
        let e = Enrolment::decode(k.device_id(), &group, &bytes).unwrap();
        assert_eq!(e.hpke_key, k.hpke_public());
        assert_eq!(e.name, "laptop");
        // Another sender (a member relabelling it), another group, or an
        // altered key: refused.
        let other = keys(2).device_id();
        assert_eq!(
            Enrolment::decode(other, &group, &bytes),
            Err(RosterError::BadSignature)
        );
        assert_eq!(
            Enrolment::decode(k.device_id(), &GroupId([8; 32]), &bytes),
            Err(RosterError::BadSignature)
        );
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert_eq!(
            Enrolment::decode(k.device_id(), &group, &bad),
            Err(RosterError::BadSignature)
        );
        assert!(matches!(
            Enrolment::decode(k.device_id(), &group, &bytes[..40]),
            Err(RosterError::Truncated(_))
        ));
    }

    /// Golden bytes of a request (docs/security.md "Enrolment requests in
    /// the group").
    #[test]
    fn request_bytes_are_stable() {
        let bytes = Enrolment::encode(&keys(1), &GroupId([9; 32]), "pc").unwrap();
        assert_eq!(hex::encode(&bytes), ENROLMENT);
    }

    const ENROLMENT: &str = "5e5ac6728c564f1e3f515d65e4e6a0f13937c35a1c8026a5108a20bab3abfb100270635b5214e68c959098e0335978ae9895bff473f5f3004094bb2a255cd8c6124f15574099672caa3aae8fce95d572a69d8d43644e975e5beaffc376d95704412703";
}
