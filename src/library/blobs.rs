//! The blob store: sealed files in `<data dir>/blobs`, one folder per account.
//!
//! A blob's name is its address: the keyed hash of its plaintext under a key derived
//! from the account's data key, so the same file in two accounts has two unrelated
//! names, and a name says nothing about the content. A blob is sealed as a stream
//! ([`crate::crypto::stream`]) with the account and the blob's kind as associated
//! data, so a file moved to another account or swapped with its thumbnail does not
//! open. It is written to a temporary file, synced, and only then renamed into place.
//!
//! Layout: `blobs/<account>/<first 2 hex>/<address hex>` for the original and
//! `<address hex>.thumb` beside it; `blobs/.tmp/` holds uploads in flight.

use crate::crypto::stream::{CHUNK, HEADER, KeyedHash, Opener, SEALED_CHUNK, Sealer, plain_len};
use crate::crypto::{CryptoError, DataKey};
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Which file of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Original,
    Thumbnail,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Original => "original",
            Kind::Thumbnail => "thumbnail",
        }
    }
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Crypto(#[from] CryptoError),
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The associated data that binds a sealed blob to its account and kind.
fn aad(account: &str, kind: Kind) -> Vec<u8> {
    format!("easel/blob/v1/{account}/{}", kind.name()).into_bytes()
}

/// The keyed hash that names blobs of one account.
pub fn address_hasher(key: &DataKey) -> KeyedHash {
    key.keyed_hash("blob-address")
}

/// Temporary files being written now, which the upkeep job must leave alone however
/// old they are.
type InFlight = Arc<Mutex<HashSet<PathBuf>>>;

/// The blob folder of a data dir.
#[derive(Clone, Debug)]
pub struct Blobs {
    root: PathBuf,
    in_flight: InFlight,
}

impl Blobs {
    /// The blob store under `data_dir`.
    pub fn new(data_dir: &Path) -> Blobs {
        Blobs {
            root: data_dir.join("blobs"),
            in_flight: InFlight::default(),
        }
    }

    /// Whether `path` is a temporary file an upload is writing now.
    pub fn in_flight(&self, path: &Path) -> bool {
        self.in_flight
            .lock()
            .map(|set| set.contains(path))
            .unwrap_or(true)
    }

    /// The folder of every blob.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where uploads in flight are written.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    /// The folder of one account's blobs. Account ids are hex made by Easel; anything
    /// else is refused rather than joined into a path.
    pub fn account_dir(&self, account: &str) -> Result<PathBuf, BlobError> {
        if account.is_empty()
            || !account
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BlobError::Invalid(format!(
                "`{account}` is not an account id"
            )));
        }
        Ok(self.root.join(account))
    }

    /// The path of one file of the blob `address` (hex).
    pub fn path(&self, account: &str, address: &str, kind: Kind) -> Result<PathBuf, BlobError> {
        if address.len() != 64 || !address.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BlobError::Invalid(format!(
                "`{address}` is not a blob address"
            )));
        }
        let dir = self.account_dir(account)?.join(&address[..2]);
        Ok(match kind {
            Kind::Original => dir.join(address),
            Kind::Thumbnail => dir.join(format!("{address}.thumb")),
        })
    }

    /// Starts writing a new blob of `account`, sealed with `key`.
    pub fn writer(
        &self,
        key: &DataKey,
        account: &str,
        kind: Kind,
    ) -> Result<BlobWriter, BlobError> {
        let tmp_dir = self.tmp_dir();
        crate::store::create_private_dir(&tmp_dir)
            .map_err(|e| BlobError::Invalid(e.to_string()))?;
        let name = crate::crypto::random_hex::<12>()?;
        let tmp = tmp_dir.join(format!("{name}.part"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        if let Ok(mut set) = self.in_flight.lock() {
            set.insert(tmp.clone());
        }
        let staged = Staged {
            path: tmp.clone(),
            in_flight: Some(self.in_flight.clone()),
        };
        let mut file = opts.open(&tmp).map_err(io(&tmp))?;
        let sealer = key.sealer(&aad(account, kind))?;
        file.write_all(sealer.header()).map_err(io(&tmp))?;
        Ok(BlobWriter {
            file: std::io::BufWriter::with_capacity(SEALED_CHUNK, file),
            tmp: staged,
            sealer,
            hash: address_hasher(key),
            buf: Vec::with_capacity(SEALED_CHUNK),
            bytes: 0,
        })
    }

    /// Seals `bytes` whole into a staged blob (a thumbnail, a generated image).
    pub fn write_all(
        &self,
        key: &DataKey,
        account: &str,
        kind: Kind,
        bytes: &[u8],
    ) -> Result<Written, BlobError> {
        let mut w = self.writer(key, account, kind)?;
        w.write(bytes)?;
        w.finish()
    }

    /// Moves a staged file into place as `kind` of `address`, unless that file is
    /// there already (the same content). The folder is synced, so once this returns
    /// the name is durable. Run it inside the write that records the reference, so a
    /// reference never names a file that is not there.
    pub fn place(
        &self,
        staged: &Path,
        account: &str,
        address: &str,
        kind: Kind,
    ) -> Result<(), BlobError> {
        let dest = self.path(account, address, kind)?;
        if dest.exists() {
            return Ok(());
        }
        let dir = dest
            .parent()
            .ok_or_else(|| BlobError::Invalid("a blob path without a folder".into()))?;
        crate::store::create_private_dir(dir).map_err(|e| BlobError::Invalid(e.to_string()))?;
        std::fs::rename(staged, &dest).map_err(io(staged))?;
        sync_dir(dir)
    }

    /// Removes both files of a blob; returns the bytes freed on disk.
    pub fn remove(&self, account: &str, address: &str) -> Result<u64, BlobError> {
        let mut freed = 0;
        for kind in [Kind::Original, Kind::Thumbnail] {
            freed += remove_file(&self.path(account, address, kind)?)?.unwrap_or(0);
        }
        Ok(freed)
    }

    /// Removes an account's folder and everything in it.
    pub fn remove_account(&self, account: &str) -> Result<(), BlobError> {
        let dir = self.account_dir(account)?;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// Opens one file of a blob for reading.
    pub fn open(
        &self,
        key: &DataKey,
        account: &str,
        address: &str,
        kind: Kind,
    ) -> Result<BlobReader, BlobError> {
        let path = self.path(account, address, kind)?;
        BlobReader::open(&path, key, &aad(account, kind))
    }

    /// Opens a staged (not yet placed) file for reading, to decode it.
    pub fn open_staged(
        &self,
        key: &DataKey,
        account: &str,
        staged: &Path,
        kind: Kind,
    ) -> Result<BlobReader, BlobError> {
        BlobReader::open(staged, key, &aad(account, kind))
    }

    /// Every file under the store: `(account, file name, path, age)`; temporary
    /// files have the account `.tmp`.
    pub fn walk(&self) -> Result<Vec<Found>, BlobError> {
        let mut out = Vec::new();
        let accounts = match std::fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&self.root)(e)),
        };
        for account in accounts {
            let account = account.map_err(io(&self.root))?;
            let name = account.file_name().to_string_lossy().into_owned();
            let dir = account.path();
            if !dir.is_dir() {
                continue;
            }
            let mut files = Vec::new();
            collect_files(&dir, &mut files)?;
            for path in files {
                let age = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                let file = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push(Found {
                    account: name.clone(),
                    file,
                    path,
                    age,
                });
            }
        }
        Ok(out)
    }
}

/// A file found by [`Blobs::walk`].
#[derive(Debug)]
pub struct Found {
    pub account: String,
    pub file: String,
    pub path: PathBuf,
    pub age: std::time::Duration,
}

/// Removes a file; its size, or `None` when it was not there.
pub fn remove_file(path: &Path) -> Result<Option<u64>, BlobError> {
    match std::fs::metadata(path) {
        Ok(m) => {
            std::fs::remove_file(path).map_err(io(path))?;
            Ok(Some(m.len()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BlobError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// A temporary file, removed when dropped if it was not placed.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    in_flight: Option<InFlight>,
}

impl Staged {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Gone already once placed (renamed); removed here when it was not needed.
        let _ = std::fs::remove_file(&self.path);
        if let Some(set) = &self.in_flight
            && let Ok(mut set) = set.lock()
        {
            set.remove(&self.path);
        }
    }
}

/// A blob being written: plaintext goes in, sealed chunks go to a temporary file.
pub struct BlobWriter {
    file: std::io::BufWriter<File>,
    tmp: Staged,
    sealer: Sealer,
    hash: KeyedHash,
    buf: Vec<u8>,
    bytes: u64,
}

/// A blob written to a temporary file and synced, ready to be placed.
#[derive(Debug)]
pub struct Written {
    /// The temporary file (removed when this is dropped, unless placed).
    pub staged: Staged,
    /// The address (hex).
    pub address: String,
    /// Plaintext bytes.
    pub bytes: u64,
}

impl BlobWriter {
    /// Adds plaintext.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), BlobError> {
        self.hash.update(data);
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                self.sealer.seal_chunk(&mut self.buf, false)?;
                self.file.write_all(&self.buf).map_err(io(&self.tmp.path))?;
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// Plaintext bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Seals the last chunk and syncs the file.
    pub fn finish(mut self) -> Result<Written, BlobError> {
        self.sealer.seal_chunk(&mut self.buf, true)?;
        let path = self.tmp.path.clone();
        self.file.write_all(&self.buf).map_err(io(&path))?;
        let file = self
            .file
            .into_inner()
            .map_err(|e| io(&path)(e.into_error()))?;
        file.sync_all().map_err(io(&path))?;
        Ok(Written {
            staged: self.tmp,
            address: crate::crypto::hex(&self.hash.finish()),
            bytes: self.bytes,
        })
    }
}

/// Reads a sealed blob as plaintext; seeks by opening the chunk a position falls in.
pub struct BlobReader {
    file: File,
    path: PathBuf,
    opener: Opener,
    file_len: u64,
    len: u64,
    pos: u64,
    chunk_index: Option<u64>,
    chunk: Vec<u8>,
}

impl BlobReader {
    fn open(path: &Path, key: &DataKey, aad: &[u8]) -> Result<BlobReader, BlobError> {
        let mut file = File::open(path).map_err(io(path))?;
        let file_len = file.metadata().map_err(io(path))?.len();
        let mut header = [0u8; HEADER];
        file.read_exact(&mut header).map_err(io(path))?;
        let opener = key.opener(aad, &header)?;
        let len = plain_len(file_len).ok_or_else(|| {
            BlobError::Crypto(CryptoError::Malformed(format!(
                "{} is cut short ({file_len} bytes)",
                path.display()
            )))
        })?;
        Ok(BlobReader {
            file,
            path: path.to_path_buf(),
            opener,
            file_len,
            len,
            pos: 0,
            chunk_index: None,
            chunk: Vec::with_capacity(SEALED_CHUNK),
        })
    }

    /// Plaintext bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Opens chunk `index` into a buffer of the caller's (which is cleared first).
    pub fn read_chunk(&mut self, index: u64, out: &mut Vec<u8>) -> Result<(), BlobError> {
        let (n, piece) = self.read_run(index, 1, 1)?;
        if n == 0 {
            return Err(BlobError::Invalid(format!("chunk {index} is past the end")));
        }
        *out = piece;
        Ok(())
    }

    /// Opens up to `count` chunks from chunk `from` into one buffer of plaintext: they
    /// lie side by side on disk, so they are read at once, opened in place on
    /// `threads` threads (decryption is the cost of a download: one core opens about
    /// 1 GB/s), and closed up over their tags. Returns the chunks opened and the bytes.
    pub fn read_run(
        &mut self,
        from: u64,
        count: usize,
        threads: usize,
    ) -> Result<(usize, Vec<u8>), BlobError> {
        let n = (self.chunks().saturating_sub(from) as usize).min(count);
        let offset = HEADER as u64 + from * SEALED_CHUNK as u64;
        if n == 0 || offset >= self.file_len {
            return Ok((0, Vec::new()));
        }
        let size = (self.file_len - offset).min((n * SEALED_CHUNK) as u64) as usize;
        let mut buf = vec![0u8; size];
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(io(&self.path))?;
        self.file.read_exact(&mut buf).map_err(io(&self.path))?;
        let ends = offset + size as u64 == self.file_len;
        let opener = &self.opener;
        let open_run = |t: usize, per: usize, run: &mut [u8]| -> Vec<Result<usize, BlobError>> {
            run.chunks_mut(SEALED_CHUNK)
                .enumerate()
                .map(|(j, chunk)| {
                    let i = (t * per + j) as u64;
                    let last = ends && chunk.len() < SEALED_CHUNK;
                    Ok(opener.open_slice(from + i, chunk, last)?)
                })
                .collect()
        };
        let threads = threads.clamp(1, n);
        let per = n.div_ceil(threads);
        let lens: Vec<Result<usize, BlobError>> = if threads == 1 {
            // One chunk or one thread: no thread to start.
            open_run(0, n, &mut buf)
        } else {
            std::thread::scope(|scope| {
                let open_run = &open_run;
                let handles: Vec<_> = buf
                    .chunks_mut(per * SEALED_CHUNK)
                    .enumerate()
                    .map(|(t, run)| scope.spawn(move || open_run(t, per, run)))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| {
                        h.join().unwrap_or_else(|_| {
                            vec![Err(BlobError::Invalid("a decryption thread failed".into()))]
                        })
                    })
                    .collect()
            })
        };
        let mut filled = 0;
        for (i, len) in lens.into_iter().enumerate() {
            let len = len?;
            let start = i * SEALED_CHUNK;
            buf.copy_within(start..start + len, filled);
            filled += len;
        }
        buf.truncate(filled);
        Ok((n, buf))
    }

    /// How many chunks the blob has.
    pub fn chunks(&self) -> u64 {
        self.len / CHUNK as u64 + 1
    }
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let index = self.pos / CHUNK as u64;
        if self.chunk_index != Some(index) {
            let mut buf = std::mem::take(&mut self.chunk);
            let read = self.read_chunk(index, &mut buf);
            self.chunk = buf;
            read.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            self.chunk_index = Some(index);
        }
        let at = (self.pos % CHUNK as u64) as usize;
        let n = (self.chunk.len() - at).min(out.len());
        out[..n].copy_from_slice(&self.chunk[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BlobReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a seek before the start")
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey(crate::crypto::SymKey::generate().expect("key"))
    }

    #[test]
    fn a_blob_reads_back_whole_and_by_seeking() {
        let dir = tempfile::tempdir().expect("dir");
        let blobs = Blobs::new(dir.path());
        let k = key();
        let data: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
        let w = blobs
            .write_all(&k, "acct1", Kind::Original, &data)
            .expect("writes");
        blobs
            .place(w.staged.path(), "acct1", &w.address, Kind::Original)
            .expect("placed");
        drop(w.staged);
        let on_disk =
            std::fs::read(blobs.path("acct1", &w.address, Kind::Original).unwrap()).expect("file");
        assert!(!on_disk.windows(64).any(|win| win == &data[1000..1064]));
        let mut r = blobs
            .open(&k, "acct1", &w.address, Kind::Original)
            .expect("opens");
        let mut back = Vec::new();
        r.read_to_end(&mut back).expect("reads");
        assert_eq!(back, data);
        r.seek(SeekFrom::Start(CHUNK as u64 * 2 + 5))
            .expect("seeks");
        let mut five = [0u8; 5];
        r.read_exact(&mut five).expect("reads");
        assert_eq!(&five, &data[2 * CHUNK + 5..2 * CHUNK + 10]);
        // The same bytes in another account get another address, and a file moved
        // there does not open.
        let other = blobs
            .write_all(&key(), "acct2", Kind::Original, &data)
            .expect("writes");
        assert_ne!(other.address, w.address);
        let placed = blobs.path("acct1", &w.address, Kind::Original).unwrap();
        let mut moved = blobs
            .open_staged(&k, "acct2", &placed, Kind::Original)
            .expect("the header is read");
        assert!(moved.read_to_end(&mut Vec::new()).is_err());
        let mut as_thumb = blobs
            .open_staged(&k, "acct1", &placed, Kind::Thumbnail)
            .expect("the header is read");
        assert!(as_thumb.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn runs_opened_on_several_threads_give_the_plaintext_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let blobs = Blobs::new(dir.path());
        let k = key();
        for len in [0, 10, CHUNK, 5 * CHUNK, 7 * CHUNK + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let w = blobs
                .write_all(&k, "acct1", Kind::Original, &data)
                .expect("writes");
            for (run, threads) in [(1, 1), (3, 2), (16, 4)] {
                let mut r = blobs
                    .open_staged(&k, "acct1", w.staged.path(), Kind::Original)
                    .expect("opens");
                let (mut got, mut next) = (Vec::new(), 0);
                while next < r.chunks() {
                    let (n, piece) = r.read_run(next, run, threads).expect("reads");
                    got.extend_from_slice(&piece);
                    next += n as u64;
                }
                assert_eq!(got, data, "{len} bytes, runs of {run} on {threads} threads");
            }
        }
    }

    #[test]
    fn hostile_ids_never_become_paths() {
        let blobs = Blobs::new(Path::new("/data"));
        assert!(blobs.account_dir("../etc").is_err());
        assert!(blobs.account_dir("").is_err());
        assert!(blobs.path("a", "../../x", Kind::Original).is_err());
        assert!(blobs.path("a", &"g".repeat(64), Kind::Original).is_err());
    }
}
