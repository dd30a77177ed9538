//! All of 0k-sync's cryptography (docs/protocol.md "Blob payloads"); the relay never sees a key or
//! a plaintext byte. Only well-kept crates are used: BLAKE3 for key
//! derivation and file hashes, Ed25519 (ed25519-dalek) for membership proofs,
//! XChaCha20-Poly1305 (RustCrypto) for blobs, Argon2id for passphrases.

pub mod envelope;
pub mod group;
pub mod padding;
pub mod view;

pub use envelope::{
    BlobHeader, BlobKind, Compression, EnvelopeError, FileChunk, FileEnd, FileVersion, OpenedBlob,
};
pub use group::{GroupKeys, GroupSecret};
pub use view::{GroupView, ViewEntry};

/// Fill `buf` from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // getrandom fails only where the OS has no entropy source at all.
    getrandom::fill(&mut buf).expect("operating system random number generator");
    buf
}
