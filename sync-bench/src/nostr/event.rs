//! NIP-01 events: `id` = SHA-256 of the canonical serialization
//! `[0, pubkey, created_at, kind, tags, content]` (JSON, no whitespace,
//! NIP-01's escaping), `sig` = BIP-340 Schnorr signature of the 32-byte id
//! by the key whose x-only public key is `pubkey`.

use anyhow::{Context, Result, bail};
use k256::schnorr::{Signature, SigningKey, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A Nostr identity: a secp256k1 secret key and its x-only public key.
pub struct Keys {
    signing: SigningKey,
    pubkey_hex: String,
}

impl Keys {
    /// A fresh random key (OS randomness).
    pub fn generate() -> Keys {
        loop {
            let bytes = crate::env::random(32);
            // Out-of-range scalars (probability ~2^-128) are drawn again.
            if let Ok(keys) = Keys::from_secret(&bytes) {
                return keys;
            }
        }
    }

    /// The key whose secret scalar is `secret` (32 bytes, big-endian).
    /// Errors: zero or not below the curve order.
    pub fn from_secret(secret: &[u8]) -> Result<Keys> {
        let signing = SigningKey::from_bytes(secret).context("secp256k1 secret key")?;
        let pubkey_hex = hex::encode(signing.verifying_key().to_bytes());
        Ok(Keys {
            signing,
            pubkey_hex,
        })
    }

    /// The x-only public key, 64 lowercase hex characters.
    pub fn pubkey_hex(&self) -> &str {
        &self.pubkey_hex
    }
}

/// A signed event.
#[derive(Debug, Clone)]
pub struct Event {
    /// SHA-256 of [`canonical`], 64 lowercase hex characters.
    pub id: String,
    /// The author's x-only public key, 64 hex characters.
    pub pubkey: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Event kind (1 = text note).
    pub kind: u32,
    /// Tags, each a list of strings.
    pub tags: Vec<Vec<String>>,
    /// The content.
    pub content: String,
    /// BIP-340 signature of the id, 128 hex characters.
    pub sig: String,
}

/// NIP-01's canonical serialization of an event's signed fields.
pub fn canonical(
    pubkey: &str,
    created_at: u64,
    kind: u32,
    tags: &[Vec<String>],
    content: &str,
) -> String {
    // serde_json writes no whitespace and escapes exactly NIP-01's set
    // (", \, control characters) while leaving other UTF-8 as is.
    json!([0, pubkey, created_at, kind, tags, content]).to_string()
}

impl Event {
    /// Sign a new event by `keys` (fresh auxiliary randomness).
    pub fn sign(
        keys: &Keys,
        created_at: u64,
        kind: u32,
        tags: Vec<Vec<String>>,
        content: String,
    ) -> Result<Event> {
        let id: [u8; 32] = Sha256::digest(canonical(
            keys.pubkey_hex(),
            created_at,
            kind,
            &tags,
            &content,
        ))
        .into();
        let aux: [u8; 32] = crate::env::random(32)
            .try_into()
            .map_err(|_| anyhow::anyhow!("32 random bytes"))?;
        let sig = keys
            .signing
            .sign_raw(&id, &aux)
            .context("schnorr signature")?;
        Ok(Event {
            id: hex::encode(id),
            pubkey: keys.pubkey_hex().to_string(),
            created_at,
            kind,
            tags,
            content,
            sig: hex::encode(sig.to_bytes()),
        })
    }

    /// Check the id against the canonical serialization and the signature
    /// against the id and pubkey (what a relay checks before storing).
    pub fn verify(&self) -> Result<()> {
        let id: [u8; 32] = Sha256::digest(canonical(
            &self.pubkey,
            self.created_at,
            self.kind,
            &self.tags,
            &self.content,
        ))
        .into();
        if hex::encode(id) != self.id {
            bail!("event id is not the SHA-256 of its canonical serialization");
        }
        let key = VerifyingKey::from_bytes(&hex::decode(&self.pubkey)?).context("pubkey")?;
        let sig = Signature::try_from(hex::decode(&self.sig)?.as_slice()).context("sig")?;
        key.verify_raw(&id, &sig)
            .map_err(|_| anyhow::anyhow!("bad signature"))
    }

    /// The event as a JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "pubkey": self.pubkey,
            "created_at": self.created_at,
            "kind": self.kind,
            "tags": self.tags,
            "content": self.content,
            "sig": self.sig,
        })
    }

    /// The client message publishing it: `["EVENT", {…}]`.
    pub fn message(&self) -> String {
        json!(["EVENT", self.to_json()]).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event signed elsewhere (nostr-rs-relay's integration test; secret
    /// key 1, whose public key is the generator's x coordinate).
    fn known() -> Event {
        Event {
            id: "f3ce6798d70e358213ebbeba4886bbdfacf1ecfd4f65ee5323ef5f404de32b86".into(),
            pubkey: "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".into(),
            created_at: 1691239763,
            kind: 1,
            tags: vec![],
            content: "hello world".into(),
            sig: "30ca29e8581eeee75bf838171dec818af5e6de2b74f5337de940f5cc91186534c0b20d6cf7ad1043a2c51dbd60b979447720a471d346322103c83f6cb66e4e98".into(),
        }
    }

    #[test]
    fn an_event_signed_elsewhere_verifies_here() {
        known().verify().unwrap();
    }

    #[test]
    fn a_signed_event_matches_one_signed_elsewhere() {
        let mut one = [0u8; 32];
        one[31] = 1;
        let keys = Keys::from_secret(&one).unwrap();
        let e = Event::sign(&keys, 1691239763, 1, vec![], "hello world".into()).unwrap();
        assert_eq!(e.pubkey, known().pubkey);
        assert_eq!(e.id, known().id);
        e.verify().unwrap();
    }

    #[test]
    fn escapes_and_tags_are_covered_by_the_id() {
        let keys = Keys::generate();
        let tags = vec![vec!["t".to_string(), "a\"b".to_string()]];
        let e = Event::sign(&keys, 1, 1, tags, "line\n\"quoted\" \\ é".into()).unwrap();
        e.verify().unwrap();
        assert_eq!(
            canonical(&e.pubkey, 1, 1, &e.tags, &e.content),
            format!(
                r#"[0,"{}",1,1,[["t","a\"b"]],"line\n\"quoted\" \\ é"]"#,
                e.pubkey
            )
        );
        let mut changed = e.clone();
        changed.content.push(' ');
        assert!(changed.verify().is_err());
        let mut forged = e.clone();
        forged.sig = known().sig;
        assert!(forged.verify().is_err());
        // Fields and signature agree, the claimed id does not.
        let mut wrong_id = e.clone();
        wrong_id.id = known().id;
        assert!(wrong_id.verify().is_err());
    }
}
