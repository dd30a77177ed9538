//! Signed roster entries (docs/security.md "Devices, roster and key
//! epochs", "Who signs what"):
//!
//! ```text
//! signed  = body_len u16 BE ‖ body ‖ signature [64]
//! signature = Ed25519(author's node key, "0k-sync/1 roster entry" ‖ 0x00 ‖ body)
//! ```
//!
//! The author is named in the body, so decoding verifies the signature
//! (`verify_strict`: no small-order keys, no malleable signatures) before
//! anything else trusts the entry. Whether the author may make the entry
//! (is a member, was not removed, belongs to this roster) is the fold's
//! business ([`super::fold`]).

use super::RosterError;
use super::entry::{Entry, EntryId, MAX_BODY_LEN, entry_id};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Most bytes of an encoded [`SignedEntry`].
pub const MAX_SIGNED_LEN: usize = 2 + MAX_BODY_LEN + 64;

/// A decoded entry whose signature has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEntry {
    entry: Entry,
    body: Vec<u8>,
    signature: [u8; 64],
    id: EntryId,
}

/// The message an entry's signature covers.
pub fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(super::SIGNATURE_CONTEXT.len() + 1 + body.len());
    msg.extend_from_slice(super::SIGNATURE_CONTEXT);
    msg.push(0);
    msg.extend_from_slice(body);
    msg
}

impl SignedEntry {
    /// Sign `entry` with the author's key. Errors:
    /// [`RosterError::WrongSigner`] when `key` is not `entry.author`'s, and
    /// those of [`Entry::encode`].
    pub fn sign(entry: Entry, key: &SigningKey) -> Result<SignedEntry, RosterError> {
        if key.verifying_key().to_bytes() != entry.author.0 {
            return Err(RosterError::WrongSigner);
        }
        let body = entry.encode()?;
        let signature = key.sign(&signed_message(&body)).to_bytes();
        let id = entry_id(&body);
        Ok(SignedEntry {
            entry,
            body,
            signature,
            id,
        })
    }

    /// The entry.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Its id (a hash of its body; the signature is not part of it).
    pub fn id(&self) -> EntryId {
        self.id
    }

    /// The canonical bytes (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.body.len() + 64);
        // Bodies are at most MAX_BODY_LEN < 65,536 bytes (checked when encoded).
        out.extend_from_slice(&(self.body.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decode and verify. Errors: [`RosterError::Truncated`],
    /// [`RosterError::TrailingBytes`], [`RosterError::TooLong`], any body
    /// error of [`Entry::decode`], [`RosterError::BadSignature`].
    pub fn decode(bytes: &[u8]) -> Result<SignedEntry, RosterError> {
        if bytes.len() > MAX_SIGNED_LEN {
            return Err(RosterError::TooLong {
                what: "signed entry",
                len: bytes.len(),
                max: MAX_SIGNED_LEN,
            });
        }
        let (entry, rest) = SignedEntry::decode_prefix(bytes)?;
        if !rest.is_empty() {
            return Err(RosterError::TrailingBytes(rest.len()));
        }
        Ok(entry)
    }

    /// Decode and verify the entry at the start of `bytes` (entries are
    /// self-delimiting); returns it and the bytes after it. Errors: those of
    /// [`SignedEntry::decode`] but trailing bytes.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(SignedEntry, &[u8]), RosterError> {
        let (len, rest) = bytes
            .split_first_chunk::<2>()
            .ok_or(RosterError::Truncated("entry length"))?;
        let len = u16::from_be_bytes(*len) as usize;
        if len > MAX_BODY_LEN {
            return Err(RosterError::TooLong {
                what: "entry body",
                len,
                max: MAX_BODY_LEN,
            });
        }
        if rest.len() < len + 64 {
            return Err(RosterError::Truncated("entry body and signature"));
        }
        let (body, rest) = rest.split_at(len);
        let (sig, rest) = rest.split_at(64);
        let entry = Entry::decode(body)?;
        let signature: [u8; 64] = sig
            .try_into()
            .map_err(|_| RosterError::Truncated("signature"))?;
        let key =
            VerifyingKey::from_bytes(&entry.author.0).map_err(|_| RosterError::BadSignature)?;
        key.verify_strict(&signed_message(body), &Signature::from_bytes(&signature))
            .map_err(|_| RosterError::BadSignature)?;
        let signed = SignedEntry {
            id: entry_id(body),
            body: body.to_vec(),
            entry,
            signature,
        };
        Ok((signed, rest))
    }
}
