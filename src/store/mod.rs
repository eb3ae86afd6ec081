//! Embedded storage on redb. No redb type leaves this module: capabilities declare
//! typed [`Table`]s and work inside [`WriteTx`]/[`ReadTx`] closures.
//!
//! Every write goes through one writer thread that folds concurrent writes into one
//! durable commit (group commit) and answers each caller only after that commit.
//! Reads run on the blocking pool, off the async runtime.

mod backup;
pub mod burst;
pub mod codec;
mod migrate;
mod writer;

pub use backup::{BackupReport, RestoreReport, restore};
pub use migrate::Migration;
pub use writer::{BATCH_BUCKETS, WriterStats};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "easel.redb";
const META: &str = "meta";

/// Raw key/value rows, in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;
type RawReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

fn raw(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

/// A storage failure, with a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database.
    #[error(
        "the database {0} is in use by another process; stop `easel serve` or use the admin socket"
    )]
    Locked(PathBuf),
    /// redb reported an error.
    #[error("storage error: {0}")]
    Db(String),
    /// A stored record does not decode.
    #[error("a record in table `{table}` is unreadable: {message}")]
    Corrupt { table: String, message: String },
    /// The file was written by a newer release.
    #[error(
        "the database has schema version {found}, newer than this build ({known}); upgrade Easel"
    )]
    TooNew { found: u32, known: u32 },
    /// The writer has shut down.
    #[error("the store is shut down")]
    Closed,
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An operation was refused for a reason the message gives.
    #[error("{0}")]
    Refused(String),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::from(redb::Error::from(e)) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A key type that encodes to bytes whose order is the order wanted in scans.
pub trait Key: Sized {
    /// The key's bytes.
    fn encode(&self) -> Vec<u8>;
    /// Reads a key back.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl Key for String {
    fn encode(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl Key for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

impl Key for u64 {
    fn encode(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(u64::from_be_bytes)
    }
}

/// A typed table: keys of type `K`, records of type `V` stored with the versioned codec.
pub struct Table<K, V> {
    name: &'static str,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Table<K, V> {
    /// Declares a table; it is created on first write.
    pub const fn new(name: &'static str) -> Self {
        Table {
            name,
            _types: PhantomData,
        }
    }
    /// The table's name in the database.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// A key `owner / time (big-endian ms) / 4 random bytes`: one owner's records form one
/// range, oldest first. The id shown to people is the hex of what follows `owner/`.
pub struct TimedKey {
    pub key: Vec<u8>,
    pub id: String,
}

impl TimedKey {
    /// A fresh key for a record of `owner` written at `at_ms`; four random bytes keep
    /// two records of the same millisecond apart.
    pub fn new(owner: &str, at_ms: u64) -> Result<Self, StoreError> {
        let rand: [u8; 4] =
            crate::crypto::random_bytes().map_err(|e| StoreError::Db(e.to_string()))?;
        let mut key = Self::prefix(owner);
        key.extend_from_slice(&at_ms.to_be_bytes());
        key.extend_from_slice(&rand);
        let id = crate::crypto::hex(&key[owner.len() + 1..]);
        Ok(TimedKey { key, id })
    }

    /// `owner/`: what every key of `owner` starts with.
    pub fn prefix(owner: &str) -> Vec<u8> {
        let mut p = Vec::with_capacity(owner.len() + 13);
        p.extend_from_slice(owner.as_bytes());
        p.push(b'/');
        p
    }

    /// The key of the record `id` names (a paging cursor); `None` when `id` is not hex.
    pub fn of_id(owner: &str, id: &str) -> Option<Vec<u8>> {
        let raw = crate::crypto::unhex(id)?;
        let mut k = Self::prefix(owner);
        k.extend_from_slice(&raw);
        Some(k)
    }
}

/// An index of `(timestamp_be, id)` keys for data that expires, so finding what is
/// older than a cutoff is a range scan from the start.
pub struct TimeIndex {
    name: &'static str,
}

impl TimeIndex {
    /// Declares a time index table.
    pub const fn new(name: &'static str) -> Self {
        TimeIndex { name }
    }

    fn key(at_ms: u64, id: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(8 + id.len());
        k.extend_from_slice(&at_ms.to_be_bytes());
        k.extend_from_slice(id);
        k
    }

    /// Records that `id` was written at `at_ms` (milliseconds since the epoch).
    pub fn insert(&self, tx: &WriteTx<'_>, at_ms: u64, id: &[u8]) -> Result<(), StoreError> {
        tx.raw_insert(self.name, &Self::key(at_ms, id), &[])
    }

    /// Forgets an entry.
    pub fn remove(&self, tx: &WriteTx<'_>, at_ms: u64, id: &[u8]) -> Result<(), StoreError> {
        tx.raw_remove(self.name, &Self::key(at_ms, id)).map(|_| ())
    }

    /// Up to `limit` entries written before `cutoff_ms`, oldest first.
    pub fn before(
        &self,
        r: &impl Reader,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let end = cutoff_ms.to_be_bytes();
        r.raw_range(self.name, None, Some(&end), limit).map(|rows| {
            rows.into_iter()
                .filter_map(|(k, _)| {
                    let (ts, id) = k.split_at_checked(8)?;
                    Some((u64::decode(ts)?, id.to_vec()))
                })
                .collect()
        })
    }

    /// The time of the oldest entry, if any.
    pub fn oldest(&self, r: &impl Reader) -> Result<Option<u64>, StoreError> {
        let rows = r.raw_range(self.name, None, None, 1)?;
        Ok(rows.first().and_then(|(k, _)| u64::decode(k.get(..8)?)))
    }
}

/// Read access shared by read and write transactions.
pub trait Reader {
    #[doc(hidden)]
    fn raw_get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    #[doc(hidden)]
    fn raw_range(
        &self,
        table: &str,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError>;
    #[doc(hidden)]
    fn raw_range_rev(
        &self,
        table: &str,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError>;
    #[doc(hidden)]
    fn raw_len(&self, table: &str) -> Result<u64, StoreError>;

    /// One record by key.
    fn get<K: Key, V: DeserializeOwned>(
        &self,
        t: &Table<K, V>,
        key: &K,
    ) -> Result<Option<V>, StoreError> {
        self.raw_get(t.name, &key.encode())?
            .map(|b| codec::decode(t.name, &b))
            .transpose()
    }

    /// Up to `limit` records with keys strictly after `after` (or from the start), in key order.
    fn scan<K: Key, V: DeserializeOwned>(
        &self,
        t: &Table<K, V>,
        after: Option<&K>,
        limit: usize,
    ) -> Result<Vec<(K, V)>, StoreError> {
        let start = after.map(|k| {
            let mut b = k.encode();
            b.push(0); // the smallest key greater than `k`
            b
        });
        let rows = self.raw_range(t.name, start.as_deref(), None, limit)?;
        decode_rows(t, rows)
    }

    /// Every record of a table, in key order (for tables small enough to hold in memory).
    fn scan_all<K: Key, V: DeserializeOwned>(
        &self,
        t: &Table<K, V>,
    ) -> Result<Vec<(K, V)>, StoreError> {
        self.scan(t, None, usize::MAX)
    }

    /// Up to `limit` records whose keys start with `prefix`, in key order.
    fn scan_prefix<K: Key, V: DeserializeOwned>(
        &self,
        t: &Table<K, V>,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(K, V)>, StoreError> {
        let end = prefix_end(prefix);
        let rows = self.raw_range(t.name, Some(prefix), end.as_deref(), limit)?;
        decode_rows(t, rows)
    }

    /// Up to `limit` records with keys strictly before `before` (or from the end),
    /// newest key first.
    fn scan_rev<K: Key, V: DeserializeOwned>(
        &self,
        t: &Table<K, V>,
        before: Option<&K>,
        limit: usize,
    ) -> Result<Vec<(K, V)>, StoreError> {
        let end = before.map(Key::encode);
        let rows = self.raw_range_rev(t.name, end.as_deref(), limit)?;
        decode_rows(t, rows)
    }

    /// Up to `limit` records whose keys start with `prefix` and sort before `before`
    /// (or every such record), newest key first.
    fn scan_prefix_rev<K: Key, V: DeserializeOwned>(
        &self,
        t: &Table<K, V>,
        prefix: &[u8],
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(K, V)>, StoreError> {
        let end = match before {
            Some(b) => Some(b.to_vec()),
            None => prefix_end(prefix),
        };
        let mut rows = self.raw_range_rev(t.name, end.as_deref(), limit)?;
        // Keys before the prefix come only after all of the prefix's keys.
        rows.retain(|(k, _)| k.starts_with(prefix));
        decode_rows(t, rows)
    }

    /// Number of records in a table.
    fn count<K, V>(&self, t: &Table<K, V>) -> Result<u64, StoreError> {
        self.raw_len(t.name)
    }

    /// A value from the meta table.
    fn meta<V: DeserializeOwned>(&self, key: &str) -> Result<Option<V>, StoreError> {
        self.raw_get(META, key.as_bytes())?
            .map(|b| codec::decode(META, &b))
            .transpose()
    }
}

fn decode_rows<K: Key, V: DeserializeOwned>(
    t: &Table<K, V>,
    rows: Rows,
) -> Result<Vec<(K, V)>, StoreError> {
    rows.into_iter()
        .map(|(k, v)| {
            let key = K::decode(&k).ok_or_else(|| StoreError::Corrupt {
                table: t.name.to_string(),
                message: "undecodable key".into(),
            })?;
            Ok((key, codec::decode(t.name, &v)?))
        })
        .collect()
}

/// The smallest key after every key that starts with `prefix` (`None`: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn range_rev_of<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Rows, StoreError> {
    use std::ops::Bound;
    let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for row in t.range::<&[u8]>((Bound::Unbounded, hi))?.rev().take(limit) {
        let (k, v) = row?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

fn range_of<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    start: Option<&[u8]>,
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Rows, StoreError> {
    use std::ops::Bound;
    let lo = start.map_or(Bound::Unbounded, Bound::Included);
    let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for row in t.range::<&[u8]>((lo, hi))?.take(limit) {
        let (k, v) = row?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

type RawTable<'a> = redb::Table<'a, &'static [u8], &'static [u8]>;

/// A write transaction, lent to a closure run by the writer. Each table is opened
/// once per transaction and kept open for the other writes of the batch.
pub struct WriteTx<'a> {
    txn: &'a redb::WriteTransaction,
    open: std::cell::RefCell<Vec<(String, RawTable<'a>)>>,
}

impl<'a> WriteTx<'a> {
    pub(crate) fn new(txn: &'a redb::WriteTransaction) -> Self {
        WriteTx {
            txn,
            open: std::cell::RefCell::default(),
        }
    }

    /// Runs `f` on the table `name`, opening (or creating) it the first time.
    fn with<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut RawTable<'a>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut open = self.open.borrow_mut();
        let i = match open.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                let t = self.txn.open_table(raw(name))?;
                open.push((name.to_string(), t));
                open.len() - 1
            }
        };
        f(&mut open[i].1)
    }

    /// Inserts or replaces a record.
    pub fn insert<K: Key, V: Serialize>(
        &self,
        t: &Table<K, V>,
        key: &K,
        value: &V,
    ) -> Result<(), StoreError> {
        let bytes = codec::encode(t.name, value)?;
        self.raw_insert(t.name, &key.encode(), &bytes)
    }

    fn raw_insert(&self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.with(table, |t| {
            t.insert(key, value)?;
            Ok(())
        })
    }

    fn raw_remove(&self, table: &str, key: &[u8]) -> Result<bool, StoreError> {
        self.with(table, |t| Ok(t.remove(key)?.is_some()))
    }

    /// Removes a record; says whether it existed.
    pub fn remove<K: Key, V>(&self, t: &Table<K, V>, key: &K) -> Result<bool, StoreError> {
        self.raw_remove(t.name, &key.encode())
    }

    /// Sets a value in the meta table.
    pub fn set_meta<V: Serialize>(&self, key: &str, value: &V) -> Result<(), StoreError> {
        let bytes = codec::encode(META, value)?;
        self.raw_insert(META, key.as_bytes(), &bytes)
    }
}

impl Reader for WriteTx<'_> {
    fn raw_get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(table, |t| Ok(t.get(key)?.map(|v| v.value().to_vec())))
    }
    fn raw_range(
        &self,
        table: &str,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        self.with(table, |t| range_of(t, start, end, limit))
    }
    fn raw_range_rev(
        &self,
        table: &str,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        self.with(table, |t| range_rev_of(t, end, limit))
    }
    fn raw_len(&self, table: &str) -> Result<u64, StoreError> {
        self.with(table, |t| Ok(t.len()?))
    }
}

/// A consistent read snapshot.
pub struct ReadTx {
    txn: redb::ReadTransaction,
}

impl ReadTx {
    fn table(&self, name: &str) -> Result<Option<RawReadTable>, StoreError> {
        match self.txn.open_table(raw(name)) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Reader for ReadTx {
    fn raw_get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(t) = self.table(table)? else {
            return Ok(None);
        };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }
    fn raw_range(
        &self,
        table: &str,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let Some(t) = self.table(table)? else {
            return Ok(Vec::new());
        };
        range_of(&t, start, end, limit)
    }
    fn raw_range_rev(
        &self,
        table: &str,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let Some(t) = self.table(table)? else {
            return Ok(Vec::new());
        };
        range_rev_of(&t, end, limit)
    }
    fn raw_len(&self, table: &str) -> Result<u64, StoreError> {
        let Some(t) = self.table(table)? else {
            return Ok(0);
        };
        Ok(t.len()?)
    }
}

/// How the store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Page cache in bytes.
    pub cache_bytes: usize,
    /// Most writes folded into one commit; 1 makes every write its own commit.
    pub max_batch: usize,
    /// How long a batch of background writes alone may wait for more to share its commit.
    pub background_delay: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 8 << 20,
            max_batch: 1024,
            background_delay: std::time::Duration::from_millis(10),
        }
    }
}

struct Inner {
    db: Arc<redb::Database>,
    dir: PathBuf,
    writer: writer::Writer,
}

/// A handle to the open database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (or creates) the database in `dir`, runs pending migrations and starts the writer.
    pub fn open(
        dir: &Path,
        opts: &StoreOptions,
        migrations: &[Migration],
    ) -> Result<Store, StoreError> {
        create_private_dir(dir)?;
        let path = dir.join(DB_FILE);
        let db = open_db(&path, opts.cache_bytes)?;
        migrate::run(&db, migrations)?;
        let db = Arc::new(db);
        let writer = writer::Writer::start(db.clone(), opts.max_batch, opts.background_delay)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                dir: dir.to_path_buf(),
                writer,
            }),
        })
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Runs `op` inside the next group commit and returns once that commit is durable.
    /// When `op` fails, nothing it wrote is kept and the other writes in the batch
    /// go ahead without it; `op` may therefore be run more than once.
    pub async fn write<T, E, F>(&self, op: F) -> Result<T, E>
    where
        F: FnMut(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.inner.writer.submit(false, op).await
    }

    /// Like [`Store::write`], for a write nobody is waiting on (a request's usage
    /// record and charge): its commit may wait up to the background delay so that
    /// more writes share it. Returns once that commit is durable.
    pub async fn write_background<T, E, F>(&self, op: F) -> Result<T, E>
    where
        F: FnMut(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.inner.writer.submit(true, op).await
    }

    /// Runs `op` on a read snapshot on the blocking thread pool.
    pub async fn read<T, E, F>(&self, op: F) -> Result<T, E>
    where
        F: FnOnce(&ReadTx) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(StoreError::from)?;
            op(&ReadTx { txn })
        })
        .await
        .map_err(|e| E::from(StoreError::Db(format!("read task failed: {e}"))))?
    }

    /// Counters of the group-commit writer.
    pub fn writer_stats(&self) -> &WriterStats {
        self.inner.writer.stats()
    }

    /// Writes every table into a new database file at `dest` from one read snapshot,
    /// so writes go on while it runs.
    pub async fn backup_to(&self, dest: &Path) -> Result<BackupReport, StoreError> {
        let db = self.inner.db.clone();
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || backup::write_backup(&db, &dest))
            .await
            .map_err(|e| StoreError::Db(format!("backup task failed: {e}")))?
    }

    /// Stops accepting writes, commits what is queued and waits for the writer to end.
    pub async fn close(&self) {
        self.inner.writer.shutdown().await;
    }
}

fn open_db(path: &Path, cache_bytes: usize) -> Result<redb::Database, StoreError> {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(cache_bytes);
    builder.create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_path_buf()),
        other => other.into(),
    })
}

/// Creates a folder readable by its owner only (the data dir holds the admin socket).
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StoreError::io(dir, e))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| StoreError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(StoreError::Refused(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::io(dir, e))?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch: the timestamp of every stored record.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The schema version the given migrations bring a database to.
pub fn latest_version(migrations: &[Migration]) -> u32 {
    migrations.iter().map(|m| m.version).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEMS: Table<String, u32> = Table::new("items");
    const BY_TIME: TimeIndex = TimeIndex::new("items_by_time");

    fn open(dir: &Path) -> Store {
        Store::open(dir, &StoreOptions::default(), &[]).expect("opens")
    }

    #[tokio::test]
    async fn a_failing_write_leaves_nothing_and_does_not_sink_its_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        // Hold the writer busy so the next 50 writes queue up and land in one batch.
        let gate = {
            let s = store.clone();
            tokio::spawn(async move {
                s.write(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    Ok::<_, StoreError>(())
                })
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.write(move |tx| {
                    tx.insert(&ITEMS, &format!("k{i:02}"), &i)?;
                    if i % 10 == 3 {
                        return Err(StoreError::Refused("no".into()));
                    }
                    Ok(())
                })
                .await
            }));
        }
        let mut failed = 0;
        for t in tasks {
            if t.await.expect("joins").is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 5);
        gate.await.expect("joins").expect("gate write");
        let stats = store.writer_stats();
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(
            stats.commits.load(Relaxed),
            2,
            "the gate, then one batch of the 45 good writes"
        );
        assert_eq!(stats.writes.load(Relaxed), 46);
        assert_eq!(stats.rejected.load(Relaxed), 5);
        let (count, missing) = store
            .read(|r| Ok::<_, StoreError>((r.count(&ITEMS)?, r.get(&ITEMS, &"k13".to_string())?)))
            .await
            .expect("reads");
        assert_eq!(count, 45);
        assert_eq!(missing, None);
    }

    fn open_with_delay(dir: &Path, ms: u64) -> Store {
        let opts = StoreOptions {
            background_delay: std::time::Duration::from_millis(ms),
            ..StoreOptions::default()
        };
        Store::open(dir, &opts, &[]).expect("opens")
    }

    fn background(store: &Store, i: u32) -> tokio::task::JoinHandle<Result<(), StoreError>> {
        let s = store.clone();
        tokio::spawn(async move {
            s.write_background(move |tx| tx.insert(&ITEMS, &format!("b{i:02}"), &i))
                .await
        })
    }

    #[tokio::test]
    async fn background_writes_share_one_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Spread over ~100 ms: without the wait, each would find the writer idle and
        // get a commit of its own.
        let store = open_with_delay(dir.path(), 500);
        let mut tasks = Vec::new();
        for i in 0..20 {
            tasks.push(background(&store, i));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for t in tasks {
            t.await.expect("joins").expect("written");
        }
        use std::sync::atomic::Ordering::Relaxed;
        let stats = store.writer_stats();
        assert_eq!(stats.writes.load(Relaxed), 20);
        assert_eq!(
            stats.commits.load(Relaxed),
            1,
            "20 background writes, one commit"
        );
        let count = store.read(|r| r.count(&ITEMS)).await.expect("reads");
        assert_eq!(count, 20);
    }

    #[tokio::test]
    async fn a_waited_for_write_ends_the_background_wait_and_shutdown_commits_held_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A window far longer than the test may take.
        let store = open_with_delay(dir.path(), 600_000);
        let held = background(&store, 1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !held.is_finished(),
            "a lone background write waits for company"
        );
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            store.write(|tx| tx.insert(&ITEMS, &"urgent".to_string(), &0)),
        )
        .await
        .expect("a waited-for write is not held for the window")
        .expect("written");
        tokio::time::timeout(std::time::Duration::from_secs(30), held)
            .await
            .expect("the held write went with it")
            .expect("joins")
            .expect("written");
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(store.writer_stats().commits.load(Relaxed), 1);

        // Held again, then a clean close: committed, not dropped.
        let late = background(&store, 2);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        tokio::time::timeout(std::time::Duration::from_secs(30), store.close())
            .await
            .expect("close does not wait out the window");
        late.await.expect("joins").expect("committed at close");
        drop(store);
        let reopened = open(dir.path());
        let got = reopened
            .read(|r| r.get(&ITEMS, &"b02".to_string()))
            .await
            .expect("reads");
        assert_eq!(got, Some(2));
    }

    #[tokio::test]
    async fn time_index_finds_entries_older_than_a_cutoff_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store
            .write(|tx| {
                for (at, id) in [(300u64, "c"), (100, "a"), (200, "b")] {
                    BY_TIME.insert(tx, at, id.as_bytes())?;
                }
                BY_TIME.remove(tx, 200, b"b")
            })
            .await
            .expect("writes");
        let (old, oldest) = store
            .read(|r| Ok::<_, StoreError>((BY_TIME.before(r, 300, 10)?, BY_TIME.oldest(r)?)))
            .await
            .expect("reads");
        assert_eq!(old, vec![(100, b"a".to_vec())]);
        assert_eq!(oldest, Some(100));
    }

    #[tokio::test]
    async fn scan_pages_through_keys_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store
            .write(|tx| {
                for i in 0..5u32 {
                    tx.insert(&ITEMS, &format!("k{i}"), &i)?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .expect("writes");
        let page = store
            .read(|r| r.scan(&ITEMS, Some(&"k1".to_string()), 2))
            .await
            .expect("reads");
        assert_eq!(page, vec![("k2".to_string(), 2), ("k3".to_string(), 3)]);
    }

    #[tokio::test]
    async fn prefix_and_reverse_scans_stay_inside_their_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store
            .write(|tx| {
                for k in ["a/1", "a/2", "a~", "b/1", "b/2"] {
                    tx.insert(&ITEMS, &k.to_string(), &1)?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .expect("writes");
        let (a, rev) = store
            .read(|r| {
                Ok::<_, StoreError>((
                    r.scan_prefix(&ITEMS, b"a/", 10)?,
                    r.scan_rev(&ITEMS, Some(&"b/2".to_string()), 2)?,
                ))
            })
            .await
            .expect("reads");
        let keys = |v: Vec<(String, u32)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(a), ["a/1", "a/2"]);
        assert_eq!(keys(rev), ["b/1", "a~"]);
        assert_eq!(prefix_end(&[1, 255, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255]), None);
    }

    #[test]
    fn a_second_open_of_a_live_database_says_it_is_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = open(dir.path());
        let err = Store::open(dir.path(), &StoreOptions::default(), &[])
            .err()
            .expect("refused");
        assert!(matches!(err, StoreError::Locked(_)), "{err}");
    }
}
