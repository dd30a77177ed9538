//! Wrapping an epoch secret to one device (docs/security.md "Devices,
//! roster and key epochs", "Key schedule"), with HPKE (RFC 9180, crate
//! `hpke`) in base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305.
//!
//! ```text
//! info = "0k-sync/1 epoch secret" ‖ 0x00 ‖ roster [32] ‖ epoch u64 BE
//!        ‖ new group id [32] ‖ recipient device [32]
//! (enc, ciphertext) = SealBase(recipient's HPKE key, info, aad = "", secret)
//! ```
//!
//! `info` binds a wrap to its roster, the epoch it opens, that epoch's group
//! id and its recipient, so it cannot be replayed elsewhere. The sender is
//! authenticated by the signature over the rotation entry that carries the
//! wraps, not by HPKE's auth mode. [`unwrap`] also checks that the secret
//! derives the announced group id, so a rotation cannot hand different
//! members different secrets under one group id.

use super::RosterError;
use super::device::DeviceKeys;
use super::entry::{EntryId, HpkePublicKey, WRAP_CIPHERTEXT_LEN, WrappedSecret};
use crate::crypto::GroupSecret;
use hpke::rand_core::CryptoRng;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use sync_protocol::{DeviceId, GroupId};
use zeroize::Zeroize;

/// The HPKE KEM used for wraps.
pub type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// Where a wrap belongs: the rotation's roster, the epoch it opens and that
/// epoch's group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapContext {
    /// The roster.
    pub roster: EntryId,
    /// The epoch the secret opens (the rotation's epoch + 1).
    pub epoch: u64,
    /// That epoch's group id.
    pub group_id: GroupId,
}

/// The HPKE `info` for a wrap to `device` (see the module docs).
pub fn wrap_info(ctx: &WrapContext, device: &DeviceId) -> Vec<u8> {
    let mut info = Vec::with_capacity(super::WRAP_CONTEXT.len() + 1 + 32 + 8 + 32 + 32);
    info.extend_from_slice(super::WRAP_CONTEXT);
    info.push(0);
    info.extend_from_slice(&ctx.roster.0);
    info.extend_from_slice(&ctx.epoch.to_be_bytes());
    info.extend_from_slice(&ctx.group_id.0);
    info.extend_from_slice(&device.0);
    info
}

/// Seal `secret` to `device`, whose HPKE public key is `key`, with the OS
/// random generator. Errors: [`RosterError::Wrap`] for an invalid public
/// key (one that is not a valid X25519 point encoding yields an all-zero
/// shared secret, which HPKE refuses).
pub fn wrap(
    secret: &GroupSecret,
    device: DeviceId,
    key: &HpkePublicKey,
    ctx: &WrapContext,
) -> Result<WrappedSecret, RosterError> {
    let pk = public_key(key)?;
    let sealed = hpke::single_shot_seal::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &pk,
        &wrap_info(ctx, &device),
        secret.as_bytes(),
        b"",
    );
    to_wrapped(device, sealed)
}

/// True when secrets can be wrapped to `key`: HPKE refuses public keys of
/// small order (their Diffie-Hellman output is all zero, RFC 9180 §7.1.4),
/// so a member with such a key would block every rotation. Costs one
/// throwaway encapsulation.
pub fn usable_key(key: &HpkePublicKey) -> bool {
    let Ok(pk) = public_key(key) else {
        return false;
    };
    hpke::single_shot_seal::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, b"", b"", b"").is_ok()
}

/// [`wrap`] with a caller's random generator (golden vectors use a seeded one).
pub fn wrap_with_rng(
    secret: &GroupSecret,
    device: DeviceId,
    key: &HpkePublicKey,
    ctx: &WrapContext,
    rng: &mut impl CryptoRng,
) -> Result<WrappedSecret, RosterError> {
    let pk = public_key(key)?;
    let sealed = hpke::single_shot_seal_with_rng::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &pk,
        &wrap_info(ctx, &device),
        secret.as_bytes(),
        b"",
        rng,
    );
    to_wrapped(device, sealed)
}

fn public_key(key: &HpkePublicKey) -> Result<<Kem as hpke::Kem>::PublicKey, RosterError> {
    <Kem as hpke::Kem>::PublicKey::from_bytes(key)
        .map_err(|e| RosterError::Wrap(format!("recipient key: {e}")))
}

type Sealed = Result<(<Kem as hpke::Kem>::EncappedKey, Vec<u8>), hpke::HpkeError>;

fn to_wrapped(device: DeviceId, sealed: Sealed) -> Result<WrappedSecret, RosterError> {
    let (enc, ct) = sealed.map_err(|e| RosterError::Wrap(e.to_string()))?;
    let ciphertext: [u8; WRAP_CIPHERTEXT_LEN] = ct
        .as_slice()
        .try_into()
        .map_err(|_| RosterError::Wrap("unexpected ciphertext length".into()))?;
    let mut enc_bytes = [0u8; 32];
    enc_bytes.copy_from_slice(&enc.to_bytes());
    Ok(WrappedSecret {
        device,
        enc: enc_bytes,
        ciphertext,
    })
}

/// Open a wrap addressed to this device. Errors: [`RosterError::Unwrap`]
/// when it is not addressed to `keys`' device, does not open (another
/// recipient, another context, damaged), or opens to a secret whose group id
/// is not `ctx.group_id`.
pub fn unwrap(
    wrapped: &WrappedSecret,
    keys: &DeviceKeys,
    ctx: &WrapContext,
) -> Result<GroupSecret, RosterError> {
    if wrapped.device != keys.device_id() {
        return Err(RosterError::Unwrap(
            "the secret is wrapped to another device".into(),
        ));
    }
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&wrapped.enc)
        .map_err(|e| RosterError::Unwrap(format!("encapsulated key: {e}")))?;
    let mut plain = hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        keys.hpke_private(),
        &enc,
        &wrap_info(ctx, &wrapped.device),
        &wrapped.ciphertext,
        b"",
    )
    .map_err(|_| {
        RosterError::Unwrap("does not open with this device's key in this context".into())
    })?;
    let bytes: Option<[u8; 32]> = plain.as_slice().try_into().ok();
    plain.zeroize();
    let secret = GroupSecret::from_bytes(
        bytes.ok_or_else(|| RosterError::Unwrap("the secret is not 32 bytes".into()))?,
    );
    if secret.keys().group_id() != ctx.group_id {
        return Err(RosterError::Unwrap(
            "the secret does not derive the epoch's announced group id".into(),
        ));
    }
    Ok(secret)
}
