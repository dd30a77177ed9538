//! Membership proof check (docs/protocol.md "Blob payloads"): the `Hello` proof must be an
//! Ed25519 signature by the group's key (the group id) over
//! [`sync_protocol::hello_proof_message`] for this relay and the device's
//! QUIC-authenticated node id.

use crate::session::state::HelloVerdict;
use ed25519_dalek::{Signature, VerifyingKey};
use sync_protocol::{DeviceId, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, hello_proof_message};

/// Check a `Hello` from `device` to the relay `relay`: a version in
/// `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION` (the session then speaks
/// that version) and a valid membership proof.
pub fn check_hello(hello: &Hello, relay: &DeviceId, device: &DeviceId) -> HelloVerdict {
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
        return HelloVerdict::UnsupportedVersion;
    }
    let Ok(key) = VerifyingKey::from_bytes(&hello.group_id.0) else {
        return HelloVerdict::Unauthorized;
    };
    let signature = Signature::from_bytes(&hello.proof.0);
    match key.verify_strict(&hello_proof_message(relay, device), &signature) {
        Ok(()) => HelloVerdict::Accepted,
        Err(_) => HelloVerdict::Unauthorized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use sync_protocol::{GroupId, Proof};

    fn hello(key: &SigningKey, relay: &DeviceId, device: &DeviceId) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            group_id: GroupId(key.verifying_key().to_bytes()),
            proof: Proof(key.sign(&hello_proof_message(relay, device)).to_bytes()),
            device_name: None,
        }
    }

    #[test]
    fn valid_proof_is_accepted_and_bound_to_both_node_ids() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let (relay, device) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let h = hello(&key, &relay, &device);
        assert_eq!(check_hello(&h, &relay, &device), HelloVerdict::Accepted);
        // Replayed by another device, or to another relay.
        assert_eq!(
            check_hello(&h, &relay, &DeviceId([3; 32])),
            HelloVerdict::Unauthorized
        );
        assert_eq!(
            check_hello(&h, &DeviceId([4; 32]), &device),
            HelloVerdict::Unauthorized
        );
    }

    #[test]
    fn forged_group_or_proof_is_unauthorized() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let (relay, device) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let mut h = hello(&key, &relay, &device);
        h.group_id = GroupId(SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes());
        assert_eq!(check_hello(&h, &relay, &device), HelloVerdict::Unauthorized);
        let mut h = hello(&key, &relay, &device);
        h.proof.0[10] ^= 1;
        assert_eq!(check_hello(&h, &relay, &device), HelloVerdict::Unauthorized);
        let mut h = hello(&key, &relay, &device);
        h.group_id = GroupId([0xff; 32]); // not a curve point
        assert_eq!(check_hello(&h, &relay, &device), HelloVerdict::Unauthorized);
    }

    #[test]
    fn versions_one_to_three_are_served_others_unsupported() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let (relay, device) = (DeviceId([1; 32]), DeviceId([2; 32]));
        for (version, verdict) in [
            (0, HelloVerdict::UnsupportedVersion),
            (1, HelloVerdict::Accepted),
            (2, HelloVerdict::Accepted),
            (3, HelloVerdict::Accepted),
            (4, HelloVerdict::UnsupportedVersion),
        ] {
            let mut h = hello(&key, &relay, &device);
            h.version = version;
            assert_eq!(
                check_hello(&h, &relay, &device),
                verdict,
                "version {version}"
            );
        }
    }
}
