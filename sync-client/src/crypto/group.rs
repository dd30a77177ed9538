//! Group secret and the keys derived from it (docs/protocol.md "Blob payloads").
//!
//! - secret: 32 random bytes (or Argon2id of a passphrase and a 16-byte salt);
//! - `blake3::derive_key("0k-sync/1 group signing key", secret)` → Ed25519
//!   signing key; **group id = its verifying key**;
//! - `blake3::derive_key("0k-sync/1 blob key", secret)` → XChaCha20-Poly1305 key;
//! - membership proof = Ed25519 signature over
//!   [`sync_protocol::hello_proof_message`] (relay id ‖ device id).

use ed25519_dalek::{Signer, SigningKey};
use std::fmt;
use sync_protocol::{DeviceId, GroupId, Proof, hello_proof_message};
use zeroize::{Zeroize, ZeroizeOnDrop};

const SIGNING_CONTEXT: &str = "0k-sync/1 group signing key";
const BLOB_KEY_CONTEXT: &str = "0k-sync/1 blob key";

/// The 32-byte secret every member of a group holds. Zeroized on drop; its
/// `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct GroupSecret([u8; 32]);

impl fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GroupSecret(..)")
    }
}

/// Failure deriving a secret from a passphrase.
#[derive(Debug, thiserror::Error)]
#[error("passphrase key derivation failed: {0}")]
pub struct PassphraseError(String);

impl GroupSecret {
    /// A new random secret from the OS CSPRNG.
    pub fn generate() -> Self {
        GroupSecret(super::random_bytes())
    }

    /// The secret from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        GroupSecret(bytes)
    }

    /// The 32 bytes (for the invite and the group file only).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Argon2id(passphrase, salt) with OWASP's recommended parameters
    /// (19 MiB memory, 2 passes, 1 lane); `salt` is 16 random bytes that
    /// travel with the group. Errors: [`PassphraseError`].
    pub fn from_passphrase(passphrase: &str, salt: &[u8; 16]) -> Result<Self, PassphraseError> {
        let mut out = [0u8; 32];
        argon2::Argon2::default()
            .hash_password_into(passphrase.as_bytes(), salt, &mut out)
            .map_err(|e| PassphraseError(e.to_string()))?;
        Ok(GroupSecret(out))
    }

    /// Derive the group's keys.
    pub fn keys(&self) -> GroupKeys {
        let signing = SigningKey::from_bytes(&blake3::derive_key(SIGNING_CONTEXT, &self.0));
        GroupKeys {
            group_id: GroupId(signing.verifying_key().to_bytes()),
            signing,
            blob_key: blake3::derive_key(BLOB_KEY_CONTEXT, &self.0),
        }
    }
}

/// Keys derived from a [`GroupSecret`]. Zeroized on drop.
#[derive(Clone)]
pub struct GroupKeys {
    group_id: GroupId,
    signing: SigningKey,
    blob_key: [u8; 32],
}

impl Drop for GroupKeys {
    fn drop(&mut self) {
        self.blob_key.zeroize();
    }
}

impl fmt::Debug for GroupKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupKeys")
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}

impl GroupKeys {
    /// The group id (Ed25519 verifying key), public.
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The membership proof for `device` talking to `relay` (docs/protocol.md "Blob payloads").
    pub fn proof(&self, relay: &DeviceId, device: &DeviceId) -> Proof {
        Proof(
            self.signing
                .sign(&hello_proof_message(relay, device))
                .to_bytes(),
        )
    }

    /// The XChaCha20-Poly1305 key for blob envelopes.
    pub(crate) fn blob_key(&self) -> &[u8; 32] {
        &self.blob_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, VerifyingKey};

    #[test]
    fn derivation_is_deterministic_and_domain_separated() {
        let secret = GroupSecret::from_bytes([9; 32]);
        let a = secret.keys();
        let b = secret.keys();
        assert_eq!(a.group_id(), b.group_id());
        assert_eq!(a.blob_key(), b.blob_key());
        assert_ne!(&a.group_id().0, a.blob_key());
        let other = GroupSecret::from_bytes([8; 32]).keys();
        assert_ne!(a.group_id(), other.group_id());
    }

    #[test]
    fn proof_verifies_against_the_group_id() {
        let keys = GroupSecret::generate().keys();
        let (relay, device) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let proof = keys.proof(&relay, &device);
        let vk = VerifyingKey::from_bytes(&keys.group_id().0).unwrap();
        vk.verify_strict(
            &hello_proof_message(&relay, &device),
            &Signature::from_bytes(&proof.0),
        )
        .unwrap();
        assert!(
            vk.verify_strict(
                &hello_proof_message(&relay, &DeviceId([3; 32])),
                &Signature::from_bytes(&proof.0)
            )
            .is_err()
        );
    }

    #[test]
    fn passphrase_secret_depends_on_passphrase_and_salt() {
        let a = GroupSecret::from_passphrase("correct horse", &[1; 16]).unwrap();
        let b = GroupSecret::from_passphrase("correct horse", &[1; 16]).unwrap();
        let c = GroupSecret::from_passphrase("correct horse", &[2; 16]).unwrap();
        let d = GroupSecret::from_passphrase("battery staple", &[1; 16]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let secret = GroupSecret::from_bytes([0xab; 32]);
        assert!(!format!("{secret:?}").contains("ab"));
        assert!(!format!("{:?}", secret.keys()).contains("abab"));
    }
}
