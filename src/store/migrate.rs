//! Schema versions and the migration runner, run at open.

use super::{META, StoreError, WriteTx, codec, raw};
use redb::ReadableDatabase;

const VERSION_KEY: &str = "schema_version";

/// One step of the schema, applied in its own transaction together with the version bump.
pub struct Migration {
    /// The schema version this step brings the database to.
    pub version: u32,
    /// What it does, for the log.
    pub description: &'static str,
    /// The step itself.
    pub apply: fn(&WriteTx<'_>) -> Result<(), StoreError>,
}

fn current(db: &redb::Database) -> Result<u32, StoreError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(raw(META)) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    match table.get(VERSION_KEY.as_bytes())? {
        Some(v) => codec::decode(META, v.value()),
        None => Ok(0),
    }
}

/// Brings the database up to the newest version in `migrations`.
pub(super) fn run(db: &redb::Database, migrations: &[Migration]) -> Result<u32, StoreError> {
    let mut version = current(db)?;
    let known = super::latest_version(migrations);
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    let mut steps: Vec<&Migration> = migrations.iter().filter(|m| m.version > version).collect();
    steps.sort_by_key(|m| m.version);
    for m in steps {
        let txn = db.begin_write()?;
        {
            let w = WriteTx::new(&txn);
            (m.apply)(&w)?;
            w.set_meta(VERSION_KEY, &m.version)?;
            w.finish()?;
        }
        txn.commit()?;
        tracing::info!(
            version = m.version,
            migration = m.description,
            "database migrated"
        );
        version = m.version;
    }
    Ok(version)
}

/// Reads the schema version of an open database through a transaction.
pub fn version_of(r: &impl super::Reader) -> Result<u32, StoreError> {
    Ok(r.meta::<u32>(VERSION_KEY)?.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::super::{Reader, Store, StoreOptions, Table};
    use super::*;

    const NOTES: Table<String, String> = Table::new("notes", crate::store::Class::System);

    fn v1(tx: &WriteTx<'_>) -> Result<(), StoreError> {
        tx.insert(&NOTES, &"welcome".to_string(), &"v1".to_string())
    }
    fn v2(tx: &WriteTx<'_>) -> Result<(), StoreError> {
        let old: Option<String> = tx.get(&NOTES, &"welcome".to_string())?;
        tx.insert(
            &NOTES,
            &"welcome".to_string(),
            &format!("{}+v2", old.unwrap_or_default()),
        )
    }

    const STEP1: Migration = Migration {
        version: 1,
        description: "notes",
        apply: v1,
    };
    const STEP2: Migration = Migration {
        version: 2,
        description: "upgrade notes",
        apply: v2,
    };

    #[tokio::test]
    async fn a_database_made_by_the_previous_version_is_migrated_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path(), &StoreOptions::default(), &[STEP1]).expect("v1");
            s.close().await;
        }
        for _ in 0..2 {
            let s = Store::open(dir.path(), &StoreOptions::default(), &[STEP1, STEP2]).expect("v2");
            let (note, version) = s
                .read(|r| {
                    Ok::<_, StoreError>((r.get(&NOTES, &"welcome".to_string())?, version_of(r)?))
                })
                .await
                .expect("reads");
            assert_eq!(note.as_deref(), Some("v1+v2"));
            assert_eq!(version, 2);
            s.close().await;
        }
    }

    #[tokio::test]
    async fn a_database_from_a_newer_release_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        Store::open(dir.path(), &StoreOptions::default(), &[STEP1, STEP2])
            .expect("v2")
            .close()
            .await;
        let err = Store::open(dir.path(), &StoreOptions::default(), &[STEP1])
            .err()
            .expect("refused");
        assert!(
            matches!(err, StoreError::TooNew { found: 2, known: 1 }),
            "{err}"
        );
    }
}
