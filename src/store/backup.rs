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
    /// Where the database that was replaced was kept, if there was one.
    pub previous: Option<PathBuf>,
}

/// Copies every table of one snapshot of `src` into `dest` (which must not exist yet).
/// The copy is written to a temporary name and renamed into place when complete.
pub(super) fn write_backup(src: &redb::Database, dest: &Path) -> Result<BackupReport, StoreError> {
    if dest.exists() {
        return Err(StoreError::Refused(format!(
            "{} already exists; choose a new file name for the backup",
            dest.display()
        )));
    }
    let snapshot = src.begin_read()?;
    let (tables, records) = copy_into(&snapshot, dest)?;
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

fn copy_into(snapshot: &redb::ReadTransaction, dest: &Path) -> Result<(usize, u64), StoreError> {
    let tmp = partial_name(dest);
    let _ = std::fs::remove_file(&tmp);
    let out = redb::Database::create(&tmp)?;
    let mut tables = 0;
    let mut records = 0u64;
    let names: Vec<String> = snapshot
        .list_tables()?
        .map(|h| h.name().to_string())
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

/// Replaces the database in `data_dir` with the backup at `backup`. Refused while the
/// database is open in a running server. The replaced database is kept beside it.
pub fn restore(
    backup: &Path,
    data_dir: &Path,
    known_version: u32,
) -> Result<RestoreReport, StoreError> {
    if !backup.is_file() {
        return Err(StoreError::Refused(format!(
            "{} is not a file",
            backup.display()
        )));
    }
    super::create_private_dir(data_dir)?;
    let live = data_dir.join(DB_FILE);
    if live.exists() {
        // Opening takes redb's file lock: this fails while `easel serve` holds it.
        match redb::Database::open(&live) {
            Ok(db) => drop(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Refused(format!(
                    "{} is open in a running server; stop it before restoring",
                    live.display()
                )));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the current database does not open; it will be replaced")
            }
        }
    }
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
    let (_, records) = copy_into(&snapshot, &staged)?;
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
    Ok(RestoreReport { records, previous })
}
