//! A device's roster keys (docs/security.md "Devices, roster and key
//! epochs", "Device keys"):
//!
//! - **signing**: the device's iroh node key (Ed25519, `device.key`), so the
//!   id in the roster is the node id the relay authenticates and the sender
//!   id sealed in every blob. Roster signatures are domain-separated
//!   (`"0k-sync/1 roster entry" ‖ 0x00 ‖ body`) from the TLS 1.3 handshake
//!   signatures iroh makes with the same key.
//! - **receiving**: an HPKE X25519 key pair derived with RFC 9180
//!   `DeriveKeyPair` from a 32-byte random seed kept in `device-hpke.key`
//!   (hex, mode 0600, written atomically), created on first use.

use super::RosterError;
use super::entry::HpkePublicKey;
use super::wrap::Kem;
use crate::util::{ensure_private_dir, write_atomic};
use ed25519_dalek::SigningKey;
use hpke::{Kem as _, Serializable};
use std::fmt;
use std::fs;
use std::path::Path;
use sync_protocol::DeviceId;
use zeroize::Zeroize;

/// File name of the HPKE seed in a device home.
pub const HPKE_KEY_FILE: &str = "device-hpke.key";

/// A device's signing key and HPKE key pair. Secrets are zeroized on drop
/// (by `ed25519-dalek` and `hpke`); `Debug` prints the public halves only.
#[derive(Clone)]
pub struct DeviceKeys {
    signing: SigningKey,
    hpke_private: <Kem as hpke::Kem>::PrivateKey,
    hpke_public: HpkePublicKey,
}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("device", &self.device_id())
            .field("hpke_public", &hex::encode(self.hpke_public))
            .finish_non_exhaustive()
    }
}

impl DeviceKeys {
    /// The keys of a device whose node key is `node_key` (the 32 secret
    /// bytes of its iroh `SecretKey`) and whose HPKE seed is `hpke_seed`.
    pub fn from_parts(node_key: &[u8; 32], hpke_seed: &[u8; 32]) -> DeviceKeys {
        let (hpke_private, public) = Kem::derive_keypair(hpke_seed);
        let mut hpke_public = [0u8; 32];
        hpke_public.copy_from_slice(&public.to_bytes());
        DeviceKeys {
            signing: SigningKey::from_bytes(node_key),
            hpke_private,
            hpke_public,
        }
    }

    /// Load the HPKE seed from `dir/device-hpke.key`, creating it (0600,
    /// random) when missing, and combine it with the node key.
    /// Errors: [`RosterError::Io`] for file failures, [`RosterError::Malformed`]
    /// for a file that is not 64 hex characters.
    pub fn load_or_create(
        dir: &Path,
        node_key: &iroh::SecretKey,
    ) -> Result<DeviceKeys, RosterError> {
        let path = dir.join(HPKE_KEY_FILE);
        let io = |e: std::io::Error| RosterError::Io(format!("{}: {e}", path.display()));
        let mut seed = match fs::read_to_string(&path) {
            Ok(mut text) => {
                let seed: Option<[u8; 32]> = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok());
                text.zeroize();
                seed.ok_or_else(|| {
                    RosterError::Malformed(format!("{}: not an HPKE key seed", path.display()))
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ensure_private_dir(dir).map_err(|e| RosterError::Io(e.to_string()))?;
                let seed: [u8; 32] = crate::crypto::random_bytes();
                let mut text = format!("{}\n", hex::encode(seed));
                let written = write_atomic(&path, text.as_bytes());
                text.zeroize();
                written.map_err(|e| RosterError::Io(e.to_string()))?;
                seed
            }
            Err(e) => return Err(io(e)),
        };
        let mut node = node_key.to_bytes();
        let keys = DeviceKeys::from_parts(&node, &seed);
        node.zeroize();
        seed.zeroize();
        Ok(keys)
    }

    /// The device id (node id): the Ed25519 verifying key.
    pub fn device_id(&self) -> DeviceId {
        DeviceId(self.signing.verifying_key().to_bytes())
    }

    /// The Ed25519 key that signs this device's roster entries.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The HPKE public key others wrap epoch secrets to.
    pub fn hpke_public(&self) -> HpkePublicKey {
        self.hpke_public
    }

    pub(crate) fn hpke_private(&self) -> &<Kem as hpke::Kem>::PrivateKey {
        &self.hpke_private
    }
}
