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

pub use backup::{BackupReport, Carry, CompactReport, RestoreReport, compact, restore};
pub use migrate::{Migration, version_of};
pub use writer::{BATCH_BUCKETS, WriterStats};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use std::borrow::{Borrow, Cow};
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

/// What a key encodes to; bytes whose order is the order wanted in scans. Lookups take
/// any form a table's key type borrows as (`&str` for a `String` key, `&[u8]` for a
/// byte key), so finding a record needs no owned key and no copy of it.
pub trait KeyBytes {
    /// The key's bytes.
    fn bytes(&self) -> Cow<'_, [u8]>;
}

/// Says that `Self` encodes exactly as the record type `V` does: the same fields in the
/// same order, with `&str` where `V` has `String` (the codec writes both alike). Every
/// type does as itself; any other pair is declared by hand next to the record type,
/// with a test that the bytes agree.
pub trait EncodesAs<V> {}

impl<V> EncodesAs<V> for V {}

/// A key type of a table: encodes to bytes (see [`KeyBytes`]) and reads back.
pub trait Key: KeyBytes + Sized {
    /// Reads a key back.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl KeyBytes for str {
    fn bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl KeyBytes for String {
    fn bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
}

impl Key for String {
    fn decode(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl KeyBytes for [u8] {
    fn bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl KeyBytes for Vec<u8> {
    fn bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
}

impl Key for Vec<u8> {
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

impl KeyBytes for u64 {
    fn bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.to_be_bytes().to_vec())
    }
}

impl Key for u64 {
    fn decode(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(u64::from_be_bytes)
    }
}

/// The data class of the privacy policy a table's records belong to (SPEC.md's table).
/// Every table declares one; retention rules, erasure, export and the privacy report
/// are all per class.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Account,
    Credentials,
    ProviderKeys,
    Usage,
    AccessLog,
    AltText,
    Billing,
    Skills,
    Assets,
    Analytics,
    Audit,
    /// Not about any person: schema version, key checks, job bookkeeping, scratch data.
    System,
}

impl Class {
    /// Every class that holds records about people, in the policy's order.
    pub const PERSONAL: [Class; 11] = [
        Class::Account,
        Class::Credentials,
        Class::ProviderKeys,
        Class::Usage,
        Class::AccessLog,
        Class::AltText,
        Class::Billing,
        Class::Skills,
        Class::Assets,
        Class::Analytics,
        Class::Audit,
    ];

    /// The name used in the config's `[retention]` table and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Class::Account => "account",
            Class::Credentials => "credentials",
            Class::ProviderKeys => "provider_keys",
            Class::Usage => "usage",
            Class::AccessLog => "access_log",
            Class::AltText => "alt_text",
            Class::Billing => "billing",
            Class::Skills => "skills",
            Class::Assets => "assets",
            Class::Analytics => "analytics",
            Class::Audit => "audit",
            Class::System => "system",
        }
    }
}

/// A table's name and data class, as capabilities declare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decl {
    pub name: &'static str,
    pub class: Class,
    pub backups: InBackups,
}

/// How backups and restores treat a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InBackups {
    /// Written to backups; a restore brings back the backup's rows.
    Yes,
    /// Never written to a backup; a restore keeps the live database's rows. Data keys
    /// are kept out: a backup then holds nothing that opens sealed data, and
    /// destroying an account's key reaches every backup ever taken.
    KeptOut,
    /// Written to backups; a restore adds the live database's rows to the backup's
    /// (the record of erased accounts, so a restore re-applies erasures).
    Merged,
}

impl Decl {
    /// How many entries the table holds.
    pub fn count(&self, r: &impl Reader) -> Result<u64, StoreError> {
        r.raw_len(self.name)
    }
}

/// A typed table: keys of type `K`, records of type `V` stored with the versioned codec.
pub struct Table<K, V> {
    name: &'static str,
    class: Class,
    backups: InBackups,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Table<K, V> {
    /// Declares a table of a data class; it is created on first write.
    pub const fn new(name: &'static str, class: Class) -> Self {
        Table {
            name,
            class,
            backups: InBackups::Yes,
            _types: PhantomData,
        }
    }
    /// Leaves the table out of backups; a restore keeps the live rows ([`InBackups::KeptOut`]).
    pub const fn kept_out_of_backups(mut self) -> Self {
        self.backups = InBackups::KeptOut;
        self
    }
    /// Merges the live rows into a restored backup ([`InBackups::Merged`]).
    pub const fn merged_on_restore(mut self) -> Self {
        self.backups = InBackups::Merged;
        self
    }
    /// The table's name in the database.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Its name and class.
    pub const fn decl(&self) -> Decl {
        Decl {
            name: self.name,
            class: self.class,
            backups: self.backups,
        }
    }
}

/// A key `owner / time (big-endian ms) / 4 random bytes`: one owner's records form one
/// range, oldest first. The id shown to people is the hex of what follows `owner/`.
pub struct TimedKey {
    pub key: Vec<u8>,
    pub id: String,
    /// The time in the key.
    pub at_ms: u64,
}

impl TimedKey {
    /// A fresh key for a record of `owner` written at `at_ms`; four random bytes keep
    /// two records of the same millisecond apart. An owner never holds a `/`: a sweep
    /// finds where one owner's records end by it.
    pub fn new(owner: &str, at_ms: u64) -> Result<Self, StoreError> {
        if owner.contains('/') {
            return Err(StoreError::Db(format!(
                "a record owner cannot contain '/': {owner}"
            )));
        }
        let rand: [u8; 4] =
            crate::crypto::unique_bytes().map_err(|e| StoreError::Db(e.to_string()))?;
        let mut key = Self::prefix(owner);
        key.extend_from_slice(&at_ms.to_be_bytes());
        key.extend_from_slice(&rand);
        let id = crate::crypto::hex(&key[owner.len() + 1..]);
        Ok(TimedKey { key, id, at_ms })
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

/// The meta table (schema version, key check, job bookkeeping).
pub const META_TABLE: Decl = Decl {
    name: META,
    class: Class::System,
    backups: InBackups::Yes,
};

/// How the records of a table that expires are found by age, so a sweep removes the
/// oldest in bounded batches without an index beside the table.
#[derive(Clone, Copy)]
pub enum Expiry {
    /// Keys begin with the big-endian write time (audit, access log): the oldest
    /// records are the first keys.
    TimeKeyed { table: &'static str },
    /// Keys are [`TimedKey`]s (`owner/time/random`): each owner's records are one range,
    /// oldest first, so a sweep visits the owners in turn and removes the start of each
    /// range. A request's records are then written without a second, index row.
    Owned { table: &'static str },
}

/// Where the next batch of a sweep starts: a key of the table (the owners before it are
/// done). The first batch starts at the empty key.
pub type SweepFrom = Vec<u8>;

impl Expiry {
    /// A table keyed by time.
    pub const fn time_keyed<K, V>(t: &Table<K, V>) -> Self {
        Expiry::TimeKeyed { table: t.name }
    }

    /// A table of [`TimedKey`]s.
    pub const fn owned<K, V>(t: &Table<K, V>) -> Self {
        Expiry::Owned { table: t.name }
    }

    /// Removes up to `limit` records written before `cutoff_ms`, starting at `from`;
    /// returns how many went and where the next batch starts (`None`: nothing older is
    /// left). A batch only reads `from`, so running it again gives the same result.
    pub fn sweep(
        &self,
        tx: &WriteTx<'_>,
        cutoff_ms: u64,
        limit: usize,
        from: &[u8],
    ) -> Result<(u64, Option<SweepFrom>), StoreError> {
        let cutoff = cutoff_ms.to_be_bytes();
        match *self {
            Expiry::TimeKeyed { table } => {
                let n = tx.remove_range(table, None, Some(&cutoff), limit)?;
                Ok((n, (n == limit as u64).then(Vec::new)))
            }
            Expiry::Owned { table } => {
                let mut at = from.to_vec();
                let mut removed = 0u64;
                while let Some((prefix, _)) = next_owner(tx, table, &at)? {
                    let mut end = prefix.clone();
                    end.extend_from_slice(&cutoff);
                    let left = limit - removed as usize;
                    let n = tx.remove_range(table, Some(&prefix), Some(&end), left)?;
                    removed += n;
                    if n == left as u64 {
                        // This owner may have more: the next batch looks again.
                        return Ok((removed, Some(prefix)));
                    }
                    match prefix_end(&prefix) {
                        Some(next) => at = next,
                        None => break,
                    }
                }
                Ok((removed, None))
            }
        }
    }

    /// The write time of the oldest record, if any (for a table of [`TimedKey`]s, one
    /// look at each owner's first record).
    pub fn oldest(&self, r: &impl Reader) -> Result<Option<u64>, StoreError> {
        match *self {
            Expiry::TimeKeyed { table } => {
                let rows = r.raw_range(table, None, None, 1)?;
                Ok(rows.first().and_then(|(k, _)| u64::decode(k.get(..8)?)))
            }
            Expiry::Owned { table } => {
                let mut oldest: Option<u64> = None;
                let mut at = Vec::new();
                while let Some((prefix, first)) = next_owner(r, table, &at)? {
                    // The owner's first key is its oldest record.
                    if let Some(t) = first
                        .get(prefix.len()..prefix.len() + 8)
                        .and_then(u64::decode)
                    {
                        oldest = Some(oldest.map_or(t, |o| o.min(t)));
                    }
                    match prefix_end(&prefix) {
                        Some(next) => at = next,
                        None => break,
                    }
                }
                Ok(oldest)
            }
        }
    }

    /// Removes up to `limit` records of `owner` (a table of [`TimedKey`]s, whose keys
    /// begin with `owner/`); returns how many went.
    pub fn erase_owner(
        &self,
        tx: &WriteTx<'_>,
        owner: &str,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let Expiry::Owned { table } = *self else {
            return Ok(0);
        };
        tx.remove_prefix_in(table, &TimedKey::prefix(owner), limit)
    }
}

/// An owner's `owner/` prefix and its first key.
type OwnerStart = (Vec<u8>, Vec<u8>);

/// The first key at or after `at` in a table of [`TimedKey`]s, with its `owner/`
/// prefix; keys without a `/` (none are written) are stepped over.
fn next_owner(r: &impl Reader, table: &str, at: &[u8]) -> Result<Option<OwnerStart>, StoreError> {
    let mut at = at.to_vec();
    loop {
        let Some((key, _)) = r.raw_range(table, Some(&at), None, 1)?.pop() else {
            return Ok(None);
        };
        match key.iter().position(|&b| b == b'/') {
            Some(slash) => return Ok(Some((key[..=slash].to_vec(), key))),
            None => {
                at = key;
                at.push(0);
            }
        }
    }
}

/// One page of a person's records for an export, as JSON lines.
#[derive(Debug, Default)]
pub struct JsonPage {
    /// One JSON document per line.
    pub lines: Vec<u8>,
    pub records: u64,
    /// The last key read, when more may follow: the next page starts after it.
    pub next: Option<Vec<u8>>,
}

impl JsonPage {
    /// [`JsonPage::read`] over the records of `owner`: those keyed `owner/…` (as
    /// [`TimedKey`] makes them), each shown as `view` gives it.
    pub fn of_owner<K, V, S>(
        r: &impl Reader,
        t: &Table<K, V>,
        owner: &str,
        after: Option<&[u8]>,
        limit: usize,
        view: impl Fn(V) -> S,
    ) -> Result<JsonPage, StoreError>
    where
        V: DeserializeOwned,
        S: Serialize,
    {
        let prefix = TimedKey::prefix(owner);
        Self::read(r, t, &prefix, after, limit, |v| Some(view(v)))
    }

    /// Reads up to `limit` records of `t` whose keys start with `prefix` (empty: the
    /// whole table) and sort after `after`; `view` turns each into what is exported,
    /// or `None` to leave it out (a record of someone else in a shared table).
    pub fn read<K, V, S, F>(
        r: &impl Reader,
        t: &Table<K, V>,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        view: F,
    ) -> Result<JsonPage, StoreError>
    where
        V: DeserializeOwned,
        S: Serialize,
        F: Fn(V) -> Option<S>,
    {
        let start = after.map_or_else(|| prefix.to_vec(), successor);
        let end = prefix_end(prefix);
        let rows = r.raw_range(t.name, Some(&start), end.as_deref(), limit)?;
        let mut page = JsonPage {
            next: (rows.len() == limit)
                .then(|| rows.last().map(|(k, _)| k.clone()))
                .flatten(),
            ..JsonPage::default()
        };
        for (_, v) in rows {
            let Some(shown) = view(codec::decode(t.name, &v)?) else {
                continue;
            };
            serde_json::to_writer(&mut page.lines, &shown).map_err(|e| StoreError::Corrupt {
                table: t.name.to_string(),
                message: format!("cannot write as JSON: {e}"),
            })?;
            page.lines.push(b'\n');
            page.records += 1;
        }
        Ok(page)
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
    #[doc(hidden)]
    fn raw_count(&self, table: &str, start: &[u8], end: Option<&[u8]>) -> Result<u64, StoreError>;

    /// How many records have keys that start with `prefix` (counted, not read out).
    fn count_prefix<K, V>(&self, t: &Table<K, V>, prefix: &[u8]) -> Result<u64, StoreError> {
        self.raw_count(t.name, prefix, prefix_end(prefix).as_deref())
    }

    /// One record by key.
    fn get<K, Q, V>(&self, t: &Table<K, V>, key: &Q) -> Result<Option<V>, StoreError>
    where
        K: Key + Borrow<Q>,
        Q: KeyBytes + ?Sized,
        V: DeserializeOwned,
    {
        self.raw_get(t.name, &key.bytes())?
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
        let start = after.map(|k| successor(&k.bytes()));
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
        let end = before.map(KeyBytes::bytes);
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

/// The smallest key greater than `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
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

fn count_of<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    start: &[u8],
    end: Option<&[u8]>,
) -> Result<u64, StoreError> {
    use std::ops::Bound;
    let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
    let mut n = 0;
    for row in t.range::<&[u8]>((Bound::Included(start), hi))? {
        row?;
        n += 1;
    }
    Ok(n)
}

type RawTable<'a> = redb::Table<'a, &'static [u8], &'static [u8]>;

/// Values of one table written with [`WriteTx::insert_last`], by key.
type Latest = hashbrown::HashMap<Vec<u8>, Vec<u8>>;

/// A write transaction, lent to a closure run by the writer. Each table is opened
/// once per transaction and kept open for the other writes of the batch.
pub struct WriteTx<'a> {
    txn: &'a redb::WriteTransaction,
    open: std::cell::RefCell<Vec<(String, RawTable<'a>)>>,
    /// Writes held back until their table is used otherwise or the batch ends, so
    /// that a value many writes of a batch change is stored once.
    latest: std::cell::RefCell<Vec<(&'static str, Latest)>>,
}

impl<'a> WriteTx<'a> {
    pub(crate) fn new(txn: &'a redb::WriteTransaction) -> Self {
        WriteTx {
            txn,
            open: std::cell::RefCell::default(),
            latest: std::cell::RefCell::default(),
        }
    }

    /// Runs `f` on the table `name`, opening (or creating) it the first time; the
    /// writes held back for it are stored first.
    fn with<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut RawTable<'a>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.store_latest(Some(name))?;
        self.with_as_is(name, f)
    }

    /// [`WriteTx::with`] without storing the held-back writes (a read of a key they
    /// do not hold).
    fn with_as_is<T>(
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

    /// Stores the writes held back for `table` (for every table when `None`).
    fn store_latest(&self, table: Option<&str>) -> Result<(), StoreError> {
        let held: Vec<(&'static str, Latest)> = {
            let mut latest = self.latest.borrow_mut();
            if latest.is_empty() {
                return Ok(());
            }
            match table {
                None => std::mem::take(&mut *latest),
                Some(name) => match latest.iter().position(|(n, _)| *n == name) {
                    Some(i) => vec![latest.swap_remove(i)],
                    None => return Ok(()),
                },
            }
        };
        for (name, rows) in held {
            self.with_as_is(name, |t| {
                for (k, v) in &rows {
                    t.insert(k.as_slice(), v.as_slice())?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Stores every held-back write; the writer calls it before committing.
    pub(crate) fn finish(&self) -> Result<(), StoreError> {
        self.store_latest(None)
    }

    /// Inserts or replaces a record that other writes of the same batch are likely to
    /// replace again (a balance): only the last value is stored, once, when the batch
    /// ends or the table is next used for anything but reading this kind of write
    /// back. Reads in the transaction see it at once.
    pub fn insert_last<K, Q, V>(
        &self,
        t: &Table<K, V>,
        key: &Q,
        value: &V,
    ) -> Result<(), StoreError>
    where
        K: Key + Borrow<Q>,
        Q: KeyBytes + ?Sized,
        V: Serialize,
    {
        let bytes = codec::encode(t.name, value)?;
        let mut latest = self.latest.borrow_mut();
        let i = match latest.iter().position(|(n, _)| *n == t.name) {
            Some(i) => i,
            None => {
                latest.push((t.name, Latest::new()));
                latest.len() - 1
            }
        };
        // The usual case in a batch: the same balance again, replaced in place (its
        // key copied only the first time).
        latest[i].1.entry_ref(key.bytes().as_ref()).insert(bytes);
        Ok(())
    }

    /// A held-back value of `key` in `table`.
    fn held(&self, table: &str, key: &[u8]) -> Option<Vec<u8>> {
        let latest = self.latest.borrow();
        let (_, rows) = latest.iter().find(|(n, _)| *n == table)?;
        rows.get(key).cloned()
    }

    /// Inserts or replaces a record.
    pub fn insert<K, Q, V>(&self, t: &Table<K, V>, key: &Q, value: &V) -> Result<(), StoreError>
    where
        K: Key + Borrow<Q>,
        Q: KeyBytes + ?Sized,
        V: Serialize,
    {
        self.insert_as(t, key, value)
    }

    /// Inserts or replaces a record given in a form that encodes as the table's own
    /// (see [`EncodesAs`]): a record borrowed from its parts needs no owned copy.
    pub fn insert_as<K, Q, V, W>(
        &self,
        t: &Table<K, V>,
        key: &Q,
        value: &W,
    ) -> Result<(), StoreError>
    where
        K: Key + Borrow<Q>,
        Q: KeyBytes + ?Sized,
        W: Serialize + EncodesAs<V>,
    {
        let bytes = codec::encode(t.name, value)?;
        self.raw_insert(t.name, &key.bytes(), &bytes)
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
    pub fn remove<K, Q, V>(&self, t: &Table<K, V>, key: &Q) -> Result<bool, StoreError>
    where
        K: Key + Borrow<Q>,
        Q: KeyBytes + ?Sized,
    {
        self.raw_remove(t.name, &key.bytes())
    }

    /// Removes up to `limit` records whose keys start with `prefix` (one owner's
    /// records); returns how many went.
    pub fn remove_prefix<K, V>(
        &self,
        t: &Table<K, V>,
        prefix: &[u8],
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.remove_prefix_in(t.name, prefix, limit)
    }

    fn remove_prefix_in(
        &self,
        table: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<u64, StoreError> {
        let end = prefix_end(prefix);
        self.remove_range(table, Some(prefix), end.as_deref(), limit)
    }

    /// Removes up to `limit` of the first records with keys from `start` up to (not
    /// including) `end`; returns how many went.
    fn remove_range(
        &self,
        table: &str,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let rows = self.raw_range(table, start, end, limit)?;
        for (k, _) in &rows {
            self.raw_remove(table, k)?;
        }
        Ok(rows.len() as u64)
    }

    /// Deletes a table a newer schema no longer has, with everything in it.
    pub fn drop_table(&self, name: &str) -> Result<(), StoreError> {
        self.store_latest(None)?;
        self.open.borrow_mut().retain(|(n, _)| n != name);
        self.txn.delete_table(raw(name))?;
        Ok(())
    }

    /// [`WriteTx::remove_prefix`] over several tables in turn, up to `limit` records
    /// in all (an erasure batch over a capability's tables); returns how many went.
    pub fn remove_prefix_across(
        &self,
        tables: &[Decl],
        prefix: &[u8],
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut done = 0;
        for t in tables {
            if done >= limit as u64 {
                break;
            }
            done += self.remove_prefix_in(t.name, prefix, limit - done as usize)?;
        }
        Ok(done)
    }

    /// Removes every record of a (small) table for which `doomed` holds; returns them.
    pub fn remove_where<K: Key, V: DeserializeOwned>(
        &self,
        t: &Table<K, V>,
        mut doomed: impl FnMut(&V) -> bool,
    ) -> Result<Vec<(K, V)>, StoreError> {
        let mut gone = Vec::new();
        for (k, v) in self.scan_all(t)? {
            if doomed(&v) {
                self.remove(t, &k)?;
                gone.push((k, v));
            }
        }
        Ok(gone)
    }

    /// Sets a value in the meta table.
    pub fn set_meta<V: Serialize>(&self, key: &str, value: &V) -> Result<(), StoreError> {
        let bytes = codec::encode(META, value)?;
        self.raw_insert(META, key.as_bytes(), &bytes)
    }
}

impl Reader for WriteTx<'_> {
    fn raw_get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.held(table, key) {
            return Ok(Some(v));
        }
        self.with_as_is(table, |t| Ok(t.get(key)?.map(|v| v.value().to_vec())))
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
    fn raw_count(&self, table: &str, start: &[u8], end: Option<&[u8]>) -> Result<u64, StoreError> {
        self.with(table, |t| count_of(t, start, end))
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
    fn raw_count(&self, table: &str, start: &[u8], end: Option<&[u8]>) -> Result<u64, StoreError> {
        let Some(t) = self.table(table)? else {
            return Ok(0);
        };
        count_of(&t, start, end)
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
    /// Tables a backup leaves out ([`InBackups::KeptOut`]).
    pub kept_out_of_backups: Vec<&'static str>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 8 << 20,
            max_batch: 1024,
            background_delay: std::time::Duration::from_millis(10),
            kept_out_of_backups: Vec::new(),
        }
    }
}

struct Inner {
    /// Taken out by [`Store::close`]: from then on reads are refused, and the file is
    /// closed once the reads under way end, whoever still holds a `Store`.
    db: std::sync::RwLock<Option<Arc<redb::Database>>>,
    dir: PathBuf,
    writer: writer::Writer,
    kept_out_of_backups: Vec<&'static str>,
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
                db: std::sync::RwLock::new(Some(db)),
                dir: dir.to_path_buf(),
                writer,
                kept_out_of_backups: opts.kept_out_of_backups.clone(),
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

    /// Like [`Store::write_background`], for a caller that does not wait at all:
    /// `done` gets the outcome once the commit is durable (or failed). It runs on the
    /// writer thread, so it must be quick and must not block; in exchange the write
    /// costs its caller no task, no channel and no thread wake-up.
    pub fn write_detached<T, E, F, D>(&self, op: F, done: D)
    where
        F: FnMut(&WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        D: FnOnce(Result<T, E>) + Send + 'static,
    {
        self.inner.writer.submit_detached(op, done);
    }

    /// Returns once every background write queued so far (usage records, their
    /// charges, alt text records) is durable, so that a read which follows sees them.
    /// Free when none is pending; otherwise it ends the writer's wait for company.
    /// For listings of a person's own recent records, not for every read: under load
    /// background writes are always pending, and each call costs a commit.
    pub async fn settled(&self) {
        self.inner.writer.settle().await;
    }

    /// Runs `op` on a read snapshot on the blocking thread pool.
    pub async fn read<T, E, F>(&self, op: F) -> Result<T, E>
    where
        F: FnOnce(&ReadTx) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let db = self.db()?;
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

    /// Writes every table (but those kept out of backups) into a new database file at
    /// `dest` from one read snapshot, so writes go on while it runs.
    pub async fn backup_to(&self, dest: &Path) -> Result<BackupReport, StoreError> {
        let db = self.db()?;
        let dest = dest.to_path_buf();
        let skip = self.inner.kept_out_of_backups.clone();
        tokio::task::spawn_blocking(move || backup::write_backup(&db, &dest, &skip))
            .await
            .map_err(|e| StoreError::Db(format!("backup task failed: {e}")))?
    }

    /// The open database, for a read; `Closed` after [`Store::close`].
    fn db(&self) -> Result<Arc<redb::Database>, StoreError> {
        self.inner
            .db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// Stops accepting writes, commits what is queued, waits for the writer to end and
    /// for the reads under way (up to 10 s), and closes the file: once this returns,
    /// `easel compact` or a restore can open it, even while some task that has not
    /// been dropped yet still holds a `Store`.
    pub async fn close(&self) {
        self.inner.writer.shutdown().await;
        let taken = self
            .inner
            .db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(db) = taken {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Arc::strong_count(&db) > 1 && std::time::Instant::now() < until {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            if Arc::strong_count(&db) > 1 {
                tracing::warn!("a read was still under way when the database closed");
            }
        }
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

/// The time the privacy engine's jobs go by: the system clock, which tests move
/// forward to see windows pass and deadlines fall due. Cheap to clone; clones share
/// one offset.
#[derive(Clone, Default)]
pub struct Clock {
    ahead_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Clock {
    /// Milliseconds since the Unix epoch, as this clock tells it.
    pub fn now_ms(&self) -> u64 {
        now_ms() + self.ahead_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves this clock (and its clones) forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.ahead_ms
            .fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Names of the tables in the database, for checks that every one is declared.
pub async fn table_names(store: &Store) -> Result<Vec<String>, StoreError> {
    let db = store.db()?;
    tokio::task::spawn_blocking(move || {
        use redb::TableHandle;
        let txn = db.begin_read()?;
        Ok(txn.list_tables()?.map(|h| h.name().to_string()).collect())
    })
    .await
    .map_err(|e| StoreError::Db(format!("read task failed: {e}")))?
}

/// The schema version the given migrations bring a database to.
pub fn latest_version(migrations: &[Migration]) -> u32 {
    migrations.iter().map(|m| m.version).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEMS: Table<String, u32> = Table::new("items", Class::System);
    const OTHER: Table<u64, String> = Table::new("other", Class::System);

    fn open(dir: &Path) -> Store {
        Store::open(dir, &StoreOptions::default(), &[]).expect("opens")
    }

    /// Keeps the writer busy for 300 ms, so the writes queued meanwhile form one batch.
    async fn hold_writer(store: &Store) -> tokio::task::JoinHandle<Result<(), StoreError>> {
        let s = store.clone();
        let gate = tokio::spawn(async move {
            s.write(|_| {
                std::thread::sleep(std::time::Duration::from_millis(300));
                Ok::<_, StoreError>(())
            })
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        gate
    }

    #[tokio::test]
    async fn a_failing_write_leaves_nothing_and_does_not_sink_its_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        // The next 50 writes queue up and land in one batch.
        let gate = hold_writer(&store).await;
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

    #[tokio::test]
    async fn a_value_a_batch_keeps_changing_reads_back_and_is_stored_once_right() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let gate = hold_writer(&store).await;
        // 30 writes in one batch each add their number to a running total; every
        // seventh is refused after adding, so its addition must vanish.
        let total = "total".to_string();
        let mut tasks = Vec::new();
        for i in 1..=30u32 {
            let (s, total) = (store.clone(), total.clone());
            tasks.push(tokio::spawn(async move {
                s.write(move |tx| {
                    let now = tx.get(&ITEMS, &total)?.unwrap_or(0);
                    tx.insert_last(&ITEMS, &total, &(now + i))?;
                    if i % 7 == 0 {
                        return Err(StoreError::Refused("no".into()));
                    }
                    // Another table in between leaves the held value alone.
                    tx.insert(&OTHER, &u64::from(i), &"x".to_string())?;
                    Ok(())
                })
                .await
            }));
        }
        for t in tasks {
            let _ = t.await.expect("joins");
        }
        gate.await.expect("joins").expect("gate write");
        let expected: u32 = (1..=30).filter(|i| i % 7 != 0).sum();
        let got = store
            .read(move |r| r.get(&ITEMS, &total))
            .await
            .expect("reads");
        assert_eq!(got, Some(expected));

        // Anything else done with the table first stores what is held, so a scan in
        // the same transaction sees it, and a later plain insert wins.
        let rows = store
            .write(|tx| {
                tx.insert_last(&ITEMS, &"a".to_string(), &1)?;
                tx.insert_last(&ITEMS, &"b".to_string(), &2)?;
                let rows = tx.scan_all(&ITEMS)?;
                tx.insert_last(&ITEMS, &"b".to_string(), &3)?;
                tx.insert(&ITEMS, &"b".to_string(), &4)?;
                Ok::<_, StoreError>(rows)
            })
            .await
            .expect("writes");
        assert_eq!(
            rows,
            vec![
                ("a".to_string(), 1),
                ("b".to_string(), 2),
                ("total".to_string(), expected)
            ]
        );
        let b = store
            .read(|r| r.get(&ITEMS, &"b".to_string()))
            .await
            .expect("reads");
        assert_eq!(b, Some(4));
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
    async fn detached_writes_report_after_their_commit_and_a_failed_one_keeps_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_with_delay(dir.path(), 20);
        let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut rx = detached_writes(&store, 10, Some(3), &applied);
        let outcomes = reports(&mut rx, 10).await;
        assert!(rx.recv().await.is_none(), "every write reported once");
        for (i, ok) in outcomes {
            assert_eq!(ok, i != 3, "write {i}");
        }
        let (count, half) = store
            .read(|r| Ok::<_, StoreError>((r.count(&ITEMS)?, r.get(&ITEMS, &"s003".to_string())?)))
            .await
            .expect("reads");
        assert_eq!(count, 9, "the nine good writes are stored");
        assert_eq!(half, None, "the failed write left nothing");
        store.close().await;
        let (tx, rx) = std::sync::mpsc::channel();
        store.write_detached(
            |w| w.insert(&ITEMS, &"late".to_string(), &0),
            move |r: Result<(), StoreError>| {
                let _ = tx.send(matches!(r, Err(StoreError::Closed)));
            },
        );
        assert_eq!(rx.recv().ok(), Some(true), "a closed store says so at once");
    }

    #[tokio::test]
    async fn settling_makes_held_background_writes_durable_and_costs_nothing_without_them() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().expect("tempdir");
        // A window far longer than the test may take.
        let store = open_with_delay(dir.path(), 600_000);
        tokio::time::timeout(std::time::Duration::from_secs(30), store.settled())
            .await
            .expect("nothing pending: at once");
        assert_eq!(store.writer_stats().commits.load(Relaxed), 0, "no commit");

        let (tx, rx) = tokio::sync::oneshot::channel();
        store.write_detached(
            |w| w.insert(&ITEMS, &"charge".to_string(), &7),
            move |r: Result<(), StoreError>| {
                let _ = tx.send(r.is_ok());
            },
        );
        tokio::time::timeout(std::time::Duration::from_secs(30), store.settled())
            .await
            .expect("the held write is not held for the window");
        let seen = store
            .read(|r| r.get(&ITEMS, &"charge".to_string()))
            .await
            .expect("reads");
        assert_eq!(seen, Some(7), "a read after settling sees the write");
        assert_eq!(rx.await.ok(), Some(true));
        assert_eq!(store.writer_stats().commits.load(Relaxed), 1);
        tokio::time::timeout(std::time::Duration::from_secs(30), store.settled())
            .await
            .expect("settled already");
        assert_eq!(
            store.writer_stats().commits.load(Relaxed),
            1,
            "no more commits"
        );
        store.close().await;
    }

    /// Reports of detached writes: (index, stored).
    type Reports = tokio::sync::mpsc::UnboundedReceiver<(usize, bool)>;

    /// Queues `n` detached writes of `s{i}`; the one numbered `failing` is refused after
    /// inserting. `applied` counts every run of a write's closure.
    fn detached_writes(
        store: &Store,
        n: usize,
        failing: Option<usize>,
        applied: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> Reports {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..n {
            let (tx, applied) = (tx.clone(), applied.clone());
            store.write_detached(
                move |w| {
                    applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    w.insert(&ITEMS, &format!("s{i:03}"), &(i as u32))?;
                    if Some(i) == failing {
                        return Err(StoreError::Refused("no".into()));
                    }
                    Ok(())
                },
                move |r: Result<(), StoreError>| {
                    let _ = tx.send((i, r.is_ok()));
                },
            );
        }
        rx
    }

    async fn reports(rx: &mut Reports, n: usize) -> Vec<(usize, bool)> {
        let mut got = Vec::new();
        while got.len() < n {
            let next = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
                .await
                .expect("reported without waiting out the window");
            got.push(next.expect("a report"));
        }
        got.sort();
        got
    }

    #[tokio::test]
    async fn held_background_writes_are_applied_a_step_at_a_time_and_commit_together() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().expect("tempdir");
        // A window far longer than the test may take.
        let store = open_with_delay(dir.path(), 600_000);
        let step = writer::STEP;
        let (total, failing) = (3 * step + 5, 2 * step + 1);
        let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut rx = detached_writes(&store, total, Some(failing), &applied);
        // Whole steps go into the open transaction as they come, before any commit;
        // the last few writes wait for a step or the commit.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while applied.load(Relaxed) < 3 * step {
            assert!(
                std::time::Instant::now() < deadline,
                "held writes are applied a step at a time"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let stats = store.writer_stats();
        assert_eq!(stats.commits.load(Relaxed), 0, "nothing committed yet");
        // The refused write in the third step is answered at once and leaves the
        // others in the batch, which wait for their commit.
        assert_eq!(rx.try_recv().ok(), Some((failing, false)));
        assert!(rx.try_recv().is_err(), "the rest waits for its commit");

        // Settling commits them all at once.
        tokio::time::timeout(std::time::Duration::from_secs(30), store.settled())
            .await
            .expect("settles");
        let got = reports(&mut rx, total - 1).await;
        assert!(got.iter().all(|(i, ok)| *ok && *i != failing), "{got:?}");
        assert_eq!(stats.commits.load(Relaxed), 1, "one commit");
        assert_eq!(stats.rejected.load(Relaxed), 1);
        let (count, refused) = store
            .read(move |r| {
                Ok::<_, StoreError>((r.count(&ITEMS)?, r.get(&ITEMS, &format!("s{failing:03}"))?))
            })
            .await
            .expect("reads");
        assert_eq!(count, (total - 1) as u64);
        assert_eq!(refused, None, "the refused write left nothing");
        store.close().await;
    }

    #[tokio::test]
    async fn a_held_batch_commits_as_soon_as_it_is_full() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StoreOptions {
            max_batch: 40,
            background_delay: std::time::Duration::from_secs(600),
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), &opts, &[]).expect("opens");
        let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut rx = detached_writes(&store, 100, None, &applied);
        // Two full batches of 40 are committed without waiting out the window.
        let got = reports(&mut rx, 80).await;
        assert!(got.iter().all(|(_, ok)| *ok));
        let stats = store.writer_stats();
        assert_eq!(stats.commits.load(Relaxed), 2);
        assert_eq!(stats.writes.load(Relaxed), 80);
        // The last 20 are held until something ends the wait.
        assert!(rx.try_recv().is_err(), "the rest is held");
        tokio::time::timeout(std::time::Duration::from_secs(30), store.settled())
            .await
            .expect("settles");
        reports(&mut rx, 20).await;
        assert_eq!(stats.commits.load(Relaxed), 3);
        let count = store.read(|r| r.count(&ITEMS)).await.expect("reads");
        assert_eq!(count, 100);
        store.close().await;
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

    const RECS: Table<Vec<u8>, u64> = Table::new("recs", Class::System);
    const EXPIRY: Expiry = Expiry::owned(&RECS);

    async fn times_left(store: &Store) -> Vec<(String, u64)> {
        let rows = store.read(|r| r.scan_all(&RECS)).await.expect("reads");
        rows.into_iter()
            .map(|(k, at)| {
                let owner = k.split(|b| *b == b'/').next().unwrap_or_default();
                (String::from_utf8_lossy(owner).into_owned(), at)
            })
            .collect()
    }

    #[tokio::test]
    async fn expiry_sweeps_what_is_older_than_a_cutoff_and_erases_an_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store
            .write(|tx| {
                let all = [("a", 300u64), ("a", 100), ("b", 200), ("b", 400), ("c", 50)];
                for (owner, at) in all {
                    let k = TimedKey::new(owner, at)?;
                    tx.insert(&RECS, &k.key, &at)?;
                }
                // A key no TimedKey makes is stepped over, never removed.
                tx.insert(&RECS, &b"stray".to_vec(), &1)?;
                Ok::<_, StoreError>(())
            })
            .await
            .expect("writes");
        let oldest = store.read(|r| EXPIRY.oldest(r)).await.expect("reads");
        assert_eq!(
            oldest,
            Some(50),
            "owners a, b and c; the stray key is not a record"
        );
        assert!(
            TimedKey::new("x/y", 1).is_err(),
            "an owner with a / would hide its records from sweeps"
        );

        // Batches of one: each resumes where the last one stopped.
        let mut from = Vec::new();
        let mut batches = Vec::new();
        loop {
            let f = from.clone();
            let (n, next) = store
                .write(move |tx| EXPIRY.sweep(tx, 300, 1, &f))
                .await
                .expect("sweeps");
            batches.push(n);
            match next {
                Some(next) => from = next,
                None => break,
            }
        }
        assert_eq!(batches.iter().sum::<u64>(), 3, "{batches:?}");
        assert!(batches.len() <= 5, "{batches:?}");
        let mut left = times_left(&store).await;
        left.sort();
        assert_eq!(
            left,
            [
                ("a".to_string(), 300),
                ("b".to_string(), 400),
                ("stray".to_string(), 1)
            ],
            "everything before 300 went, owner by owner; 300 is not before the cutoff"
        );
        let oldest = store.read(|r| EXPIRY.oldest(r)).await.expect("reads");
        assert_eq!(oldest, Some(300));

        // A second sweep in one batch finds nothing more.
        let again = store
            .write(|tx| EXPIRY.sweep(tx, 300, 10, &[]))
            .await
            .expect("sweeps");
        assert_eq!(again, (0, None));

        // Erasing an owner takes all of its records and no one else's.
        let erased = store
            .write(|tx| EXPIRY.erase_owner(tx, "b", 10))
            .await
            .expect("erases");
        assert_eq!(erased, 1);
        let mut left = times_left(&store).await;
        left.sort();
        assert_eq!(left, [("a".to_string(), 300), ("stray".to_string(), 1)]);
    }

    /// A fresh store in a temporary dir, with one item written through the writer.
    async fn open_with_one_item() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store
            .write(|tx| tx.insert(&ITEMS, &"k".to_string(), &1))
            .await
            .expect("writes");
        (dir, store)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_writer_thread_runs_below_request_threads() {
        // Kept open while the thread is looked at.
        let (_dir, _store) = open_with_one_item().await;
        // Field 19 of /proc/…/stat is the nice value; the thread's name is in field 2.
        let mut nices = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .flatten()
        {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            if let Some((_, after_name)) = stat.split_once("(easel-writer) ") {
                let nice = after_name.split(' ').nth(16).expect("nice field");
                nices.push(nice.parse::<i32>().expect("a number"));
            }
        }
        assert!(!nices.is_empty(), "a writer thread runs");
        assert!(nices.iter().all(|n| *n == writer::WRITER_NICE), "{nices:?}");
    }

    #[tokio::test]
    async fn close_frees_the_file_while_a_clone_of_the_store_is_still_held() {
        let (dir, store) = open_with_one_item().await;
        let lingering = store.clone();
        store.close().await;
        // What `easel compact` and a restore do first.
        let db = redb::Database::open(dir.path().join(DB_FILE));
        assert!(db.is_ok(), "the file is still locked: {:?}", db.err());
        drop(db);
        let read = lingering.read(|r| r.get(&ITEMS, &"k".to_string())).await;
        assert!(matches!(read, Err(StoreError::Closed)), "{read:?}");
    }

    #[tokio::test]
    async fn a_dropped_table_is_gone_with_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store
            .write(|tx| tx.insert(&OTHER, &1, &"x".to_string()))
            .await
            .expect("writes");
        store
            .write(|tx| {
                // Used earlier in the same transaction: still dropped.
                let _ = tx.get(&OTHER, &1)?;
                tx.drop_table("other")
            })
            .await
            .expect("drops");
        let (rows, len) = store
            .read(|r| Ok::<_, StoreError>((r.scan_all(&OTHER)?, r.raw_len("other")?)))
            .await
            .expect("reads");
        assert!(rows.is_empty());
        assert_eq!(len, 0);
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
