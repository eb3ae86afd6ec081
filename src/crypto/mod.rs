//! Sealing: XChaCha20-Poly1305 with the record's identity as associated data, an
//! envelope of per-owner data keys sealed by the master key, and password hashing.
//!
//! A sealed blob is `[version 1][key id: 8][nonce: 24][ciphertext + tag]`. The key id
//! says which key sealed it, so a wrong or rotated key gives a clear error instead of
//! a bare authentication failure.

mod keyring;
mod master;
mod password;
mod secret;
pub mod stream;

pub use keyring::{CHECK_META, Keyring, RotationReport, TABLES};
pub use master::{KeySource, MASTER_KEY_ENV, create_key_file, load_master_key, read_key_file};
pub use password::{PasswordParams, hash_password, verify_password};
pub use secret::{Secret, exposed};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Version byte of the sealed format.
pub const SEAL_V1: u8 = 1;
const ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + ID_LEN + NONCE_LEN;

/// A sealing failure. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The blob was sealed with another key.
    #[error("sealed with another key (key id {found}, this key is {expected})")]
    WrongKey { found: String, expected: String },
    /// The ciphertext or its associated data was changed.
    #[error("sealed data failed authentication: it was altered or belongs to another record")]
    Tampered,
    /// Not a sealed blob this build understands.
    #[error("not a sealed blob: {0}")]
    Malformed(String),
    /// The master key is missing, unreadable or unsafe.
    #[error("{0}")]
    MasterKey(String),
    /// An unexpected internal failure.
    #[error("crypto failure: {0}")]
    Internal(String),
}

/// Fills a buffer from the operating system's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| CryptoError::Internal(format!("no randomness: {e}")))?;
    Ok(buf)
}

/// Random bytes for what must be unique but is no secret (record and request ids):
/// served from a per-thread buffer of the operating system's randomness, refilled
/// 256 bytes at a time, so a request's ids cost no system call each. Keys, tokens and
/// nonces use [`random_bytes`].
pub fn unique_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    const POOL: usize = 256;
    thread_local! {
        static BUFFER: std::cell::RefCell<([u8; POOL], usize)> =
            const { std::cell::RefCell::new(([0; POOL], POOL)) };
    }
    if N > POOL {
        return random_bytes();
    }
    BUFFER.with(|cell| {
        let mut state = cell.borrow_mut();
        let (pool, used) = &mut *state;
        if *used + N > POOL {
            getrandom::fill(pool)
                .map_err(|e| CryptoError::Internal(format!("no randomness: {e}")))?;
            *used = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&pool[*used..*used + N]);
        *used += N;
        Ok(out)
    })
}

/// A 256-bit symmetric key with a public 8-byte id derived from it.
#[derive(Clone)]
pub struct SymKey {
    bytes: Zeroizing<[u8; 32]>,
    id: [u8; ID_LEN],
}

impl SymKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"easel/key-id/v1")
            .chain_update(bytes)
            .finalize();
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&digest[..ID_LEN]);
        SymKey {
            bytes: Zeroizing::new(bytes),
            id,
        }
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self::from_bytes(random_bytes()?))
    }

    /// The key's public id, as hex.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.bytes
    }

    fn cipher(&self) -> Result<XChaCha20Poly1305, CryptoError> {
        XChaCha20Poly1305::new_from_slice(self.bytes.as_slice())
            .map_err(|e| CryptoError::Internal(e.to_string()))
    }

    /// Seals `plaintext`, binding it to `aad` (the record's identity).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes()?;
        let nonce = XNonce::from(nonce_bytes);
        let ct = self
            .cipher()?
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Internal("encryption failed".into()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
        out.push(SEAL_V1);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a blob sealed by [`SymKey::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let found = sealed_key_id(sealed)?;
        if found != self.id {
            return Err(CryptoError::WrongKey {
                found: hex(&found),
                expected: self.id_hex(),
            });
        }
        let nonce_bytes: [u8; NONCE_LEN] = sealed[1 + ID_LEN..HEADER_LEN]
            .try_into()
            .map_err(|_| CryptoError::Malformed("short nonce".into()))?;
        let nonce = XNonce::from(nonce_bytes);
        self.cipher()?
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Tampered)
    }
}

/// The id of the key that sealed a blob.
pub fn sealed_key_id(sealed: &[u8]) -> Result<[u8; ID_LEN], CryptoError> {
    if sealed.len() < HEADER_LEN + 16 {
        return Err(CryptoError::Malformed(format!(
            "{} bytes is too short",
            sealed.len()
        )));
    }
    if sealed[0] != SEAL_V1 {
        return Err(CryptoError::Malformed(format!(
            "format version {} is not known to this build",
            sealed[0]
        )));
    }
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&sealed[1..1 + ID_LEN]);
    Ok(id)
}

/// The master key: seals data keys only, never records.
#[derive(Clone)]
pub struct MasterKey(pub(crate) SymKey);

/// A per-owner data key: seals that owner's provider keys and assets.
#[derive(Clone)]
pub struct DataKey(pub(crate) SymKey);

impl DataKey {
    /// Seals a record of this owner; `aad` names the record (table and id).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0.seal(aad, plaintext)
    }
    /// Opens a record of this owner.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.0.open(aad, sealed)
    }
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Result<Self, CryptoError> {
        SymKey::generate().map(MasterKey)
    }
    /// The key's public id, as hex (safe to log).
    pub fn id_hex(&self) -> String {
        self.0.id_hex()
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id {})", self.id_hex())
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey(id {})", self.0.id_hex())
    }
}

/// SHA-256 of some bytes (credential secrets are stored only as this).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares two byte strings in time that depends only on their length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `N` random bytes as lower-case hex (ids, tokens, secrets).
pub fn random_hex<const N: usize>() -> Result<String, CryptoError> {
    Ok(hex(&random_bytes::<N>()?))
}

/// Bytes from hex (either case); `None` if it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    // A table, not `write!`: ids are made on every gateway request.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_bytes_never_repeat_across_refills_or_threads() {
        let mine: Vec<[u8; 12]> = (0..1000).map(|_| unique_bytes().expect("random")).collect();
        let other: Vec<[u8; 12]> =
            std::thread::spawn(|| (0..1000).map(|_| unique_bytes().expect("random")).collect())
                .join()
                .expect("thread");
        let all: std::collections::HashSet<_> = mine.iter().chain(&other).collect();
        assert_eq!(
            all.len(),
            2000,
            "96-bit ids from 2 threads, over 90 refills, all distinct"
        );
        assert!(
            mine.iter().all(|b| b != &[0; 12]),
            "never the unfilled buffer"
        );
        let big: [u8; 300] = unique_bytes().expect("larger than the buffer");
        assert!(big.iter().any(|&b| b != 0));
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte_and_unhex_reverses_it() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&all)), Some(all));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    fn key() -> SymKey {
        SymKey::generate().expect("key")
    }

    #[test]
    fn sealed_data_opens_with_the_same_key_and_identity() {
        let k = key();
        let sealed = k.seal(b"asset:42", b"the plaintext").expect("seals");
        assert_eq!(sealed[0], SEAL_V1);
        assert!(!sealed.windows(13).any(|w| w == b"the plaintext"));
        assert_eq!(
            k.open(b"asset:42", &sealed).expect("opens").as_slice(),
            b"the plaintext"
        );
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_ciphertext_is_detected() {
        let k = key();
        let sealed = k.seal(b"id", b"some data worth protecting").expect("seals");
        for i in HEADER_LEN..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(k.open(b"id", &bad), Err(CryptoError::Tampered)),
                "byte {i}"
            );
        }
    }

    #[test]
    fn data_moved_to_another_record_does_not_open() {
        let k = key();
        let sealed = k.seal(b"provider_key:alice", b"sk-123").expect("seals");
        assert!(matches!(
            k.open(b"provider_key:mallory", &sealed),
            Err(CryptoError::Tampered)
        ));
    }

    #[test]
    fn another_key_is_named_as_the_wrong_key() {
        let sealed = key().seal(b"id", b"x").expect("seals");
        assert!(matches!(
            key().open(b"id", &sealed),
            Err(CryptoError::WrongKey { .. })
        ));
        assert!(matches!(
            key().open(b"id", &sealed[..10]),
            Err(CryptoError::Malformed(_))
        ));
    }
}
