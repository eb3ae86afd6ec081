//! Sealing a large file a chunk at a time, so it never has to fit in memory, and a
//! keyed hash to address content without revealing it.
//!
//! A sealed stream is a header `[magic "ESS1"][key id: 8][nonce prefix: 16]` and then
//! chunks of [`CHUNK`] plaintext bytes, each sealed on its own with XChaCha20-Poly1305
//! (ciphertext + 16-byte tag). Chunk `i` uses the nonce `prefix ‖ i` (big-endian), so
//! chunks cannot be reordered, and its associated data is the record's identity plus a
//! flag that is set on the last chunk only, so a stream cut short at a chunk boundary
//! does not open. Every chunk but the last is full; the last is shorter (possibly
//! empty), which is how a reader knows it is last.

use super::{CryptoError, DataKey, SymKey, random_bytes};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// Plaintext bytes in a chunk.
pub const CHUNK: usize = 64 * 1024;
/// Bytes a chunk's tag adds.
pub const TAG: usize = 16;
/// Bytes of a sealed chunk of [`CHUNK`] plaintext bytes.
pub const SEALED_CHUNK: usize = CHUNK + TAG;
const MAGIC: &[u8; 4] = b"ESS1";
const PREFIX: usize = 16;
/// Bytes of the stream header.
pub const HEADER: usize = MAGIC.len() + 8 + PREFIX;

/// The bytes a sealed stream of `plain` bytes takes.
pub fn sealed_len(plain: u64) -> u64 {
    let chunks = plain / CHUNK as u64 + 1;
    HEADER as u64 + plain + chunks * TAG as u64
}

/// The plaintext bytes of a sealed stream of `sealed` bytes, or `None` when no
/// stream has that length.
pub fn plain_len(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER as u64)?;
    let full = body / SEALED_CHUNK as u64;
    let last = (body % SEALED_CHUNK as u64).checked_sub(TAG as u64)?;
    Some(full * CHUNK as u64 + last)
}

fn cipher(key: &SymKey) -> Result<XChaCha20Poly1305, CryptoError> {
    XChaCha20Poly1305::new_from_slice(key.expose().as_slice())
        .map_err(|e| CryptoError::Internal(e.to_string()))
}

fn nonce(prefix: &[u8; PREFIX], index: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[..PREFIX].copy_from_slice(prefix);
    n[PREFIX..].copy_from_slice(&index.to_be_bytes());
    XNonce::from(n)
}

/// Associated data of one chunk: the record's identity and whether it is the last.
fn chunk_aad(buf: &mut Vec<u8>, aad: &[u8], last: bool) {
    buf.clear();
    buf.extend_from_slice(aad);
    buf.push(u8::from(last));
}

/// Seals a stream chunk by chunk; see the module doc for the format.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    header: [u8; HEADER],
    prefix: [u8; PREFIX],
    aad: Vec<u8>,
    scratch: Vec<u8>,
    index: u64,
    done: bool,
}

impl Sealer {
    /// The header to write before the first chunk.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Seals `chunk` in place (appending its tag). Every chunk but the last must hold
    /// exactly [`CHUNK`] bytes; the last holds fewer and sets `last`.
    pub fn seal_chunk(&mut self, chunk: &mut Vec<u8>, last: bool) -> Result<(), CryptoError> {
        if self.done {
            return Err(CryptoError::Internal(
                "the stream was already finished".into(),
            ));
        }
        if (last && chunk.len() >= CHUNK) || (!last && chunk.len() != CHUNK) {
            return Err(CryptoError::Internal(format!(
                "a {} chunk of {} bytes",
                if last { "last" } else { "middle" },
                chunk.len()
            )));
        }
        chunk_aad(&mut self.scratch, &self.aad, last);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &nonce(&self.prefix, self.index),
                &self.scratch,
                chunk.as_mut_slice().into(),
            )
            .map_err(|_| CryptoError::Internal("encryption failed".into()))?;
        chunk.extend_from_slice(tag.as_slice());
        self.index += 1;
        self.done = last;
        Ok(())
    }
}

/// Opens the chunks of a sealed stream, in any order (so a reader can seek).
pub struct Opener {
    cipher: XChaCha20Poly1305,
    prefix: [u8; PREFIX],
    aad: Vec<u8>,
}

impl Opener {
    /// Opens chunk `index` in place; the plaintext is the first bytes of it, and their
    /// count is returned (the tag's bytes after them are left as they are). `last` says
    /// whether it is the stream's last chunk (the one shorter than [`SEALED_CHUNK`]).
    pub fn open_slice(
        &self,
        index: u64,
        chunk: &mut [u8],
        last: bool,
    ) -> Result<usize, CryptoError> {
        let Some(body) = chunk.len().checked_sub(TAG) else {
            return Err(CryptoError::Malformed(
                "a chunk shorter than its tag".into(),
            ));
        };
        let (msg, tag) = chunk.split_at_mut(body);
        let tag = Tag::try_from(&*tag).map_err(|_| CryptoError::Tampered)?;
        let mut aad = Vec::with_capacity(self.aad.len() + 1);
        chunk_aad(&mut aad, &self.aad, last);
        self.cipher
            .decrypt_inout_detached(&nonce(&self.prefix, index), &aad, msg.into(), &tag)
            .map_err(|_| CryptoError::Tampered)?;
        Ok(body)
    }
}

impl DataKey {
    /// Starts sealing a stream that belongs to the record `aad` names.
    pub fn sealer(&self, aad: &[u8]) -> Result<Sealer, CryptoError> {
        let prefix: [u8; PREFIX] = random_bytes()?;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(MAGIC);
        header[4..12].copy_from_slice(&self.0.id);
        header[12..].copy_from_slice(&prefix);
        Ok(Sealer {
            cipher: cipher(&self.0)?,
            header,
            prefix,
            aad: aad.to_vec(),
            scratch: Vec::with_capacity(aad.len() + 1),
            index: 0,
            done: false,
        })
    }

    /// Reads a stream's header and returns what opens its chunks.
    pub fn opener(&self, aad: &[u8], header: &[u8]) -> Result<Opener, CryptoError> {
        if header.len() < HEADER || &header[..4] != MAGIC {
            return Err(CryptoError::Malformed("not a sealed stream".into()));
        }
        if header[4..12] != self.0.id {
            return Err(CryptoError::WrongKey {
                found: super::hex(&header[4..12]),
                expected: self.0.id_hex(),
            });
        }
        let mut prefix = [0u8; PREFIX];
        prefix.copy_from_slice(&header[12..HEADER]);
        Ok(Opener {
            cipher: cipher(&self.0)?,
            prefix,
            aad: aad.to_vec(),
        })
    }

    /// A keyed hash (HMAC-SHA-256) under a key derived from this data key for
    /// `purpose`: equal content gives equal output for this owner only, and the output
    /// says nothing about the content to anyone without the key.
    pub fn keyed_hash(&self, purpose: &str) -> KeyedHash {
        let derived: [u8; 32] = Sha256::new()
            .chain_update(b"easel/keyed-hash/v1/")
            .chain_update(purpose.as_bytes())
            .chain_update(self.0.expose())
            .finalize()
            .into();
        KeyedHash::new(&derived)
    }
}

/// HMAC-SHA-256 (RFC 2104), fed in pieces.
pub struct KeyedHash {
    inner: Sha256,
    outer: Sha256,
}

impl KeyedHash {
    fn new(key: &[u8; 32]) -> Self {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        KeyedHash {
            inner: Sha256::new().chain_update(ipad),
            outer: Sha256::new().chain_update(opad),
        }
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
    }

    /// The hash of everything added.
    pub fn finish(self) -> [u8; 32] {
        let inner = self.inner.finalize();
        self.outer.chain_update(inner).finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey(SymKey::generate().expect("key"))
    }

    fn seal_all(k: &DataKey, aad: &[u8], data: &[u8]) -> Vec<u8> {
        let mut s = k.sealer(aad).expect("sealer");
        let mut out = s.header().to_vec();
        let mut chunks = data.chunks(CHUNK).peekable();
        loop {
            let piece = chunks.next().unwrap_or(&[]);
            let last = piece.len() < CHUNK;
            let mut buf = piece.to_vec();
            s.seal_chunk(&mut buf, last).expect("seals");
            out.extend_from_slice(&buf);
            if last {
                break;
            }
        }
        out
    }

    fn open_all(k: &DataKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let o = k.opener(aad, &sealed[..HEADER.min(sealed.len())])?;
        let body = &sealed[HEADER..];
        let mut out = Vec::new();
        let pieces: Vec<&[u8]> = body.chunks(SEALED_CHUNK).collect();
        let n = pieces.len();
        // A body that is a whole number of full chunks lacks its short last chunk.
        let ends_short = !body.len().is_multiple_of(SEALED_CHUNK);
        for (i, p) in pieces.into_iter().enumerate() {
            let mut buf = p.to_vec();
            let len = o.open_slice(i as u64, &mut buf, i + 1 == n && ends_short)?;
            buf.truncate(len);
            out.extend_from_slice(&buf);
        }
        if !ends_short {
            return Err(CryptoError::Tampered);
        }
        Ok(out)
    }

    #[test]
    fn streams_of_every_boundary_size_come_back_whole() {
        let k = key();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let sealed = seal_all(&k, b"blob:a", &data);
            assert_eq!(sealed.len() as u64, sealed_len(len as u64), "{len}");
            assert_eq!(plain_len(sealed.len() as u64), Some(len as u64), "{len}");
            assert_eq!(
                open_all(&k, b"blob:a", &sealed).expect("opens"),
                data,
                "{len}"
            );
        }
    }

    #[test]
    fn a_cut_reordered_altered_or_moved_stream_does_not_open() {
        let k = key();
        let data = vec![9u8; 2 * CHUNK + 10];
        let sealed = seal_all(&k, b"blob:a", &data);
        // Cut at a chunk boundary: the new last chunk was not sealed as last.
        let cut = &sealed[..HEADER + 2 * SEALED_CHUNK];
        assert!(open_all(&k, b"blob:a", cut).is_err());
        let cut = &sealed[..HEADER + SEALED_CHUNK + 100];
        assert!(open_all(&k, b"blob:a", cut).is_err());
        // Two chunks swapped.
        let mut swapped = sealed.clone();
        let (a, b) = (HEADER, HEADER + SEALED_CHUNK);
        let first = sealed[a..b].to_vec();
        swapped[a..b].copy_from_slice(&sealed[b..b + SEALED_CHUNK]);
        swapped[b..b + SEALED_CHUNK].copy_from_slice(&first);
        assert!(matches!(
            open_all(&k, b"blob:a", &swapped),
            Err(CryptoError::Tampered)
        ));
        let mut flipped = sealed.clone();
        flipped[HEADER + 5] ^= 1;
        assert!(matches!(
            open_all(&k, b"blob:a", &flipped),
            Err(CryptoError::Tampered)
        ));
        assert!(matches!(
            open_all(&k, b"blob:b", &sealed),
            Err(CryptoError::Tampered)
        ));
        assert!(matches!(
            open_all(&key(), b"blob:a", &sealed),
            Err(CryptoError::WrongKey { .. })
        ));
    }

    #[test]
    fn the_keyed_hash_is_hmac_and_differs_between_owners() {
        // RFC 4231 test case 2 checks the HMAC construction itself.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mut h = KeyedHash::new(&key);
        h.update(b"what do ya want ");
        h.update(b"for nothing?");
        assert_eq!(
            super::super::hex(&h.finish()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let (a, b) = (key_hash(&self::key()), key_hash(&self::key()));
        assert_ne!(a, b);
    }

    fn key_hash(k: &DataKey) -> [u8; 32] {
        let mut h = k.keyed_hash("blob-address");
        h.update(b"same file");
        h.finish()
    }
}
