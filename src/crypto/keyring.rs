//! Per-owner data keys, sealed by the master key and kept in the store.
//! Destroying an owner's data key makes everything sealed with it unreadable,
//! in the live database and in every backup (crypto-shredding).

use super::master::write_key_file;
use super::{CryptoError, DataKey, KeySource, MasterKey, SymKey, read_key_file};
use crate::store::{Class, Reader, Store, StoreError, Table, WriteTx};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Never in a backup (see [`crate::store::InBackups::KeptOut`]): a restore keeps the
/// live keys, so a key destroyed at erasure opens nothing in any backup.
const DATA_KEYS: Table<String, Vec<u8>> =
    Table::new("data_keys", Class::Account).kept_out_of_backups();
const CHECK: &str = "master_key_check";
/// The meta key of the master key check, which a restore keeps with the data keys.
pub const CHECK_META: &str = CHECK;
const CHECK_AAD: &[u8] = b"easel/master-key-check/v1";

/// The table of data keys: class `account`, erased with the account.
pub const TABLES: [crate::store::Decl; 1] = [DATA_KEYS.decl()];

fn aad(owner: &str) -> Vec<u8> {
    format!("easel/data-key/v1/{owner}").into_bytes()
}

impl From<StoreError> for CryptoError {
    fn from(e: StoreError) -> Self {
        CryptoError::Internal(e.to_string())
    }
}

/// What a master key rotation did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RotationReport {
    pub data_keys: usize,
    pub old_key_id: String,
    pub new_key_id: String,
}

/// The master key in use and the data keys it seals.
#[derive(Clone)]
pub struct Keyring {
    master: Arc<ArcSwap<MasterKey>>,
    source: KeySource,
}

fn staged(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

impl Keyring {
    /// Checks the master key against the database. The first start records a check
    /// value; later starts refuse a key that does not match. A rotation that was cut
    /// off after the database was re-sealed is finished here.
    pub async fn unlock(
        store: &Store,
        master: MasterKey,
        source: KeySource,
    ) -> Result<Keyring, CryptoError> {
        let check: Option<Vec<u8>> = store.read(|r| r.meta(CHECK)).await?;
        let master = match check {
            None => {
                let k = master.clone();
                store
                    .write(move |tx| {
                        tx.set_meta(CHECK, &k.0.seal(CHECK_AAD, b"easel")?)
                            .map_err(CryptoError::from)
                    })
                    .await?;
                master
            }
            Some(check) => match master.0.open(CHECK_AAD, &check) {
                Ok(_) => master,
                Err(e) => Self::finish_rotation(&source, &check).ok_or_else(|| {
                    CryptoError::MasterKey(format!(
                        "the master key from {source} does not match this database ({e}); \
                         use the key this data dir was created with"
                    ))
                })?,
            },
        };
        Ok(Keyring {
            master: Arc::new(ArcSwap::from_pointee(master)),
            source,
        })
    }

    fn finish_rotation(source: &KeySource, check: &[u8]) -> Option<MasterKey> {
        let KeySource::File(path) = source else {
            return None;
        };
        let next = staged(path);
        let key = read_key_file(&next).ok()?;
        key.0.open(CHECK_AAD, check).ok()?;
        std::fs::rename(&next, path).ok()?;
        tracing::warn!(key_file = %path.display(), "finished a master key rotation that was interrupted");
        Some(key)
    }

    /// Whether this database was ever unlocked with a master key (then only that key,
    /// or its rotated successor, opens it).
    pub async fn database_is_sealed(store: &Store) -> Result<bool, CryptoError> {
        let check: Option<Vec<u8>> = store.read(|r| r.meta(CHECK)).await?;
        Ok(check.is_some())
    }

    /// Where the master key came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The public id of the master key in use.
    pub fn master_id(&self) -> String {
        self.master.load().id_hex()
    }

    /// Makes and stores a new data key for `owner` inside the caller's write.
    pub fn create_data_key(&self, tx: &WriteTx<'_>, owner: &str) -> Result<DataKey, CryptoError> {
        let key = SymKey::generate()?;
        let sealed = self.master.load().0.seal(&aad(owner), key.expose())?;
        tx.insert(&DATA_KEYS, owner, &sealed)?;
        Ok(DataKey(key))
    }

    /// The data key of `owner`, or `None` once it has been destroyed.
    pub fn data_key(&self, r: &impl Reader, owner: &str) -> Result<Option<DataKey>, CryptoError> {
        let Some(sealed) = r.get(&DATA_KEYS, owner)? else {
            return Ok(None);
        };
        let bytes = self.master.load().0.open(&aad(owner), &sealed)?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed("a data key is not 32 bytes".into()))?;
        Ok(Some(DataKey(SymKey::from_bytes(arr))))
    }

    /// Destroys the data key of `owner`: what it sealed can no longer be opened.
    pub fn destroy_data_key(&self, tx: &WriteTx<'_>, owner: &str) -> Result<bool, CryptoError> {
        Ok(tx.remove(&DATA_KEYS, owner)?)
    }

    /// Replaces the master key: every data key is re-sealed in one commit, then the new
    /// key file replaces the old one. Only a key file can be rotated in place.
    pub async fn rotate_master(&self, store: &Store) -> Result<RotationReport, CryptoError> {
        let KeySource::File(path) = &self.source else {
            return Err(CryptoError::MasterKey(format!(
                "the master key comes from the {}; rotation writes a new key file, so move the key \
                 into crypto.master_key_file first",
                self.source
            )));
        };
        let next_path = staged(path);
        let _ = std::fs::remove_file(&next_path);
        let new = MasterKey::generate()?;
        write_key_file(&next_path, &new)?;
        let old = self.master.load_full();
        let (o, n) = (old.clone(), new.clone());
        let count = store
            .write(move |tx| {
                let rows = tx.scan(&DATA_KEYS, None, usize::MAX)?;
                for (owner, sealed) in &rows {
                    let key = o.0.open(&aad(owner), sealed)?;
                    tx.insert(&DATA_KEYS, owner, &n.0.seal(&aad(owner), &key)?)?;
                }
                tx.set_meta(CHECK, &n.0.seal(CHECK_AAD, b"easel")?)?;
                Ok::<_, CryptoError>(rows.len())
            })
            .await?;
        std::fs::rename(&next_path, path).map_err(|e| {
            CryptoError::MasterKey(format!(
                "re-sealed, but cannot replace {}: {e}; the new key is in {}",
                path.display(),
                next_path.display()
            ))
        })?;
        if let Some(dir) = path.parent().and_then(|p| std::fs::File::open(p).ok()) {
            let _ = dir.sync_all();
        }
        let report = RotationReport {
            data_keys: count,
            old_key_id: old.id_hex(),
            new_key_id: new.id_hex(),
        };
        self.master.store(Arc::new(new));
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::create_key_file;
    use crate::store::StoreOptions;

    #[tokio::test]
    async fn rotating_the_master_key_keeps_sealed_data_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("master.key");
        let master = create_key_file(&key_path).expect("key");
        let store =
            Store::open(&dir.path().join("data"), &StoreOptions::default(), &[]).expect("store");
        let ring = Keyring::unlock(&store, master, KeySource::File(key_path.clone()))
            .await
            .expect("unlock");
        let r = ring.clone();
        let dk = store
            .write(move |tx| r.create_data_key(tx, "acct-1"))
            .await
            .expect("data key");
        let sealed = dk.seal(b"asset:1", b"private bytes").expect("seal");

        let report = ring.rotate_master(&store).await.expect("rotates");
        assert_eq!(report.data_keys, 1);
        assert_ne!(report.old_key_id, report.new_key_id);

        // A fresh start reads the new key from disk and still opens the data.
        let reloaded = read_key_file(&key_path).expect("new key file");
        assert_eq!(reloaded.id_hex(), report.new_key_id);
        let ring2 = Keyring::unlock(&store, reloaded, KeySource::File(key_path))
            .await
            .expect("unlock again");
        let r2 = ring2.clone();
        let dk2 = store
            .read(move |tx| r2.data_key(tx, "acct-1"))
            .await
            .expect("reads")
            .expect("exists");
        assert_eq!(
            dk2.open(b"asset:1", &sealed).expect("opens").as_slice(),
            b"private bytes"
        );
    }

    #[tokio::test]
    async fn a_different_master_key_is_refused_at_unlock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &StoreOptions::default(), &[]).expect("store");
        Keyring::unlock(&store, MasterKey::generate().expect("k"), KeySource::Env)
            .await
            .expect("first");
        let err = Keyring::unlock(&store, MasterKey::generate().expect("k"), KeySource::Env)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[tokio::test]
    async fn a_destroyed_data_key_leaves_its_data_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &StoreOptions::default(), &[]).expect("store");
        let ring = Keyring::unlock(&store, MasterKey::generate().expect("k"), KeySource::Env)
            .await
            .expect("unlock");
        let r = ring.clone();
        store
            .write(move |tx| r.create_data_key(tx, "acct-2"))
            .await
            .expect("data key");
        let r = ring.clone();
        assert!(
            store
                .write(move |tx| r.destroy_data_key(tx, "acct-2"))
                .await
                .expect("destroys")
        );
        let r = ring.clone();
        assert!(
            store
                .read(move |tx| r.data_key(tx, "acct-2"))
                .await
                .expect("reads")
                .is_none()
        );
    }
}
