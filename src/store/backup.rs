//! Online backup through a read transaction, and offline restore.

use super::{DB_FILE, StoreError, raw};
use redb::{ReadableDatabase, ReadableTable, TableHandle};
use std::path::{Path, PathBuf};

/// What a backup wrote.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BackupReport {
    pub path: PathBuf,
    pub tables: usize,
    pub records: u64,
    pub bytes: u64,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub records: u64,
    /// Rows taken over from the replaced database (data keys, erased accounts).
    pub carried: u64,
    /// Where the database that was replaced was kept, if there was one.
    pub previous: Option<PathBuf>,
}

/// What a restore takes over from the database it replaces.
#[derive(Debug, Clone, Default)]
pub struct Carry {
    /// Tables whose live rows are written over the backup's.
    pub tables: Vec<&'static str>,
    /// Keys of the meta table (the master key check that goes with the data keys).
    pub meta: Vec<&'static str>,
}

/// What a compaction did.
#[derive(Debug, Clone)]
pub struct CompactReport {
    pub records: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Copies every table of one snapshot of `src` but those in `skip` into `dest` (which
/// must not exist yet). The copy is written to a temporary name and renamed into place
/// when complete.
pub(super) fn write_backup(
    src: &redb::Database,
    dest: &Path,
    skip: &[&str],
) -> Result<BackupReport, StoreError> {
    if dest.exists() {
        return Err(StoreError::Refused(format!(
            "{} already exists; choose a new file name for the backup",
            dest.display()
        )));
    }
    let snapshot = src.begin_read()?;
    let (tables, records) = copy_into(&snapshot, dest, skip)?;
    let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport {
        path: dest.to_path_buf(),
        tables,
        records,
        bytes,
    })
}

fn partial_name(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn copy_into(
    snapshot: &redb::ReadTransaction,
    dest: &Path,
    skip: &[&str],
) -> Result<(usize, u64), StoreError> {
    let tmp = partial_name(dest);
    let _ = std::fs::remove_file(&tmp);
    let out = redb::Database::create(&tmp)?;
    let mut tables = 0;
    let mut records = 0u64;
    let names: Vec<String> = snapshot
        .list_tables()?
        .map(|h| h.name().to_string())
        .filter(|n| !skip.contains(&n.as_str()))
        .collect();
    let txn = out.begin_write()?;
    for name in &names {
        let from = snapshot.open_table(raw(name))?;
        let mut to = txn.open_table(raw(name))?;
        for row in from.iter()? {
            let (k, v) = row?;
            to.insert(k.value(), v.value())?;
            records += 1;
        }
        tables += 1;
    }
    txn.commit()?;
    drop(out);
    std::fs::rename(&tmp, dest).map_err(|e| StoreError::io(dest, e))?;
    sync_parent(dest);
    Ok((tables, records))
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

/// Opens the live database of a stopped server; `Ok(None)` when there is none or it
/// does not open. Refused while `easel serve` holds it (redb's file lock).
fn open_stopped(live: &Path, doing: &str) -> Result<Option<redb::Database>, StoreError> {
    if !live.exists() {
        return Ok(None);
    }
    match redb::Database::open(live) {
        Ok(db) => Ok(Some(db)),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Refused(format!(
            "{} is open in a running server; stop it before {doing}",
            live.display()
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "the current database does not open");
            Ok(None)
        }
    }
}

/// Writes the `carry` rows of `from` over those of the database at `into`.
fn carry_over(from: &redb::Database, into: &Path, carry: &Carry) -> Result<u64, StoreError> {
    let snapshot = from.begin_read()?;
    let out = redb::Database::open(into)?;
    let txn = out.begin_write()?;
    let mut n = 0;
    for name in &carry.tables {
        let src = match snapshot.open_table(raw(name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut to = txn.open_table(raw(name))?;
        for row in src.iter()? {
            let (k, v) = row?;
            to.insert(k.value(), v.value())?;
            n += 1;
        }
    }
    if let Ok(src) = snapshot.open_table(raw(super::META)) {
        let mut to = txn.open_table(raw(super::META))?;
        for key in &carry.meta {
            if let Some(v) = src.get(key.as_bytes())? {
                to.insert(key.as_bytes(), v.value())?;
            }
        }
    }
    txn.commit()?;
    Ok(n)
}

/// Replaces the database in `data_dir` with the backup at `backup`. Refused while the
/// database is open in a running server. The rows `carry` names are taken over from
/// the database being replaced, which is kept beside it.
pub fn restore(
    backup: &Path,
    data_dir: &Path,
    known_version: u32,
    carry: &Carry,
) -> Result<RestoreReport, StoreError> {
    if !backup.is_file() {
        return Err(StoreError::Refused(format!(
            "{} is not a file",
            backup.display()
        )));
    }
    super::create_private_dir(data_dir)?;
    let live = data_dir.join(DB_FILE);
    let current = open_stopped(&live, "restoring")?;
    let source = redb::ReadOnlyDatabase::open(backup).map_err(|e| {
        StoreError::Refused(format!("{} is not an Easel backup: {e}", backup.display()))
    })?;
    let snapshot = source.begin_read()?;
    let version = super::migrate::version_of(&super::ReadTx { txn: snapshot })?;
    if version > known_version {
        return Err(StoreError::TooNew {
            found: version,
            known: known_version,
        });
    }
    let snapshot = source.begin_read()?;
    let staged = data_dir.join(format!("{DB_FILE}.restoring"));
    let _ = std::fs::remove_file(&staged);
    let (_, records) = copy_into(&snapshot, &staged, &[])?;
    let carried = match &current {
        Some(db) => carry_over(db, &staged, carry)?,
        None => 0,
    };
    drop(current);
    let previous = if live.exists() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = data_dir.join(format!("{DB_FILE}.before-restore-{secs}"));
        std::fs::rename(&live, &aside).map_err(|e| StoreError::io(&live, e))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&staged, &live).map_err(|e| StoreError::io(&live, e))?;
    sync_parent(&live);
    Ok(RestoreReport {
        records,
        carried,
        previous,
    })
}

/// Rewrites the database of a stopped server into a fresh file and puts it in place of
/// the old one, which is deleted: space freed by deletions is given back, and bytes of
/// erased records that redb's free pages still held are gone from the file.
pub fn compact(data_dir: &Path) -> Result<CompactReport, StoreError> {
    let live = data_dir.join(DB_FILE);
    let Some(db) = open_stopped(&live, "compacting")? else {
        return Err(StoreError::Refused(format!(
            "there is no database at {} to compact",
            live.display()
        )));
    };
    let bytes_before = std::fs::metadata(&live).map(|m| m.len()).unwrap_or(0);
    let staged = data_dir.join(format!("{DB_FILE}.compacting"));
    let _ = std::fs::remove_file(&staged);
    let snapshot = db.begin_read()?;
    let (_, records) = copy_into(&snapshot, &staged, &[])?;
    drop(snapshot);
    drop(db);
    std::fs::rename(&staged, &live).map_err(|e| StoreError::io(&live, e))?;
    sync_parent(&live);
    let bytes_after = std::fs::metadata(&live).map(|m| m.len()).unwrap_or(0);
    Ok(CompactReport {
        records,
        bytes_before,
        bytes_after,
    })
}
