//! Creating, listing and revoking API keys, and keeping the credential directory in
//! step with storage.

use crate::audit;
use crate::auth::{Directory, KEY_PREFIX, KeyFacts, Role, Scope, ScopeSet};
use crate::crypto::{self, Secret};
use crate::http::ApiError;
use crate::store::{Class, Reader, Store, StoreError, Table, WriteTx, now_ms};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Keyed by `account id / public id` (see [`storage_key`]): an account's keys are one
/// prefix scan, and another account's key is simply not there.
const KEYS: Table<String, ApiKey> = Table::new("api_keys", Class::Credentials);
/// Most keys one account may hold.
pub const MAX_KEYS_PER_ACCOUNT: usize = 100;

/// An API key as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub account: String,
    pub name: String,
    pub secret_hash: [u8; 32],
    pub scopes: Vec<Scope>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub credit_budget: Option<u64>,
    pub rpm: Option<u32>,
    pub last_used_ms: Option<u64>,
}

impl ApiKey {
    fn facts(&self) -> KeyFacts {
        KeyFacts {
            id: self.id.clone(),
            account: self.account.clone(),
            secret_hash: self.secret_hash,
            scopes: ScopeSet::from_scopes(self.scopes.iter().copied()),
            expires_ms: self.expires_ms,
            rpm: self.rpm,
            credit_budget: self.credit_budget,
        }
    }
}

/// One page of `account`'s API keys (metadata, never a secret or its hash) for an export.
pub fn export_page(
    r: &crate::store::ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    let prefix = account_prefix(account);
    crate::store::JsonPage::read(r, &KEYS, prefix.as_bytes(), after, limit, |k: ApiKey| {
        Some(super::routes::KeyView::from(k))
    })
}

/// A key to create.
#[derive(Default)]
pub struct NewKey {
    pub name: String,
    pub expires_ms: Option<u64>,
    /// `None`: every scope but `admin_read`.
    pub scopes: Option<Vec<Scope>>,
    pub credit_budget: Option<u64>,
    pub rpm: Option<u32>,
}

/// What can go wrong with keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("only admins can create keys with the admin_read scope")]
    AdminScope,
    #[error("this account already has {MAX_KEYS_PER_ACCOUNT} keys; revoke some first")]
    TooMany,
    #[error("API key not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        let msg = e.to_string();
        match e {
            KeyError::Invalid(_) => ApiError::bad_request("invalid_field", msg),
            KeyError::AdminScope => ApiError::forbidden("admin_only", msg),
            KeyError::TooMany => ApiError::conflict("too_many_keys", msg),
            KeyError::NotFound => ApiError::not_found(msg),
            KeyError::Store(e) => e.into(),
            KeyError::Crypto(e) => ApiError::internal(e),
        }
    }
}

/// The keys service; cheap to clone.
#[derive(Clone)]
pub struct Keys {
    store: Store,
    directory: Arc<Directory>,
}

fn all_keys(r: &impl Reader) -> Result<Vec<ApiKey>, StoreError> {
    Ok(r.scan_all(&KEYS)?.into_iter().map(|(_, v)| v).collect())
}

fn account_prefix(account: &str) -> String {
    format!("{account}/")
}

fn storage_key(account: &str, id: &str) -> String {
    format!("{account}/{id}")
}

fn keys_of(r: &impl Reader, account: &str) -> Result<Vec<ApiKey>, StoreError> {
    let rows = r.scan_prefix(&KEYS, account_prefix(account).as_bytes(), usize::MAX)?;
    Ok(rows.into_iter().map(|(_, v)| v).collect())
}

/// The tables of this capability and their classes.
pub const TABLES: [crate::store::Decl; 1] = [KEYS.decl()];

/// How many API keys `account` has.
pub fn count_of(r: &impl Reader, account: &str) -> Result<u64, StoreError> {
    r.count_prefix(&KEYS, account_prefix(account).as_bytes())
}

/// Removes every key of `account` inside a write (a deletion request, an erasure);
/// returns how many went.
pub fn revoke_all_in(tx: &WriteTx<'_>, account: &str) -> Result<u64, StoreError> {
    tx.remove_prefix(&KEYS, account_prefix(account).as_bytes(), usize::MAX)
}

/// Removes keys whose expiry time has passed; returns their ids.
pub fn expire_in(tx: &WriteTx<'_>, now: u64) -> Result<Vec<String>, StoreError> {
    let gone = tx.remove_where(&KEYS, |k| k.expires_ms.is_some_and(|e| e <= now))?;
    Ok(gone.into_iter().map(|(_, k)| k.id).collect())
}

impl Keys {
    /// Drops keys from the directory after a write removed them.
    pub fn forget(&self, ids: &[String]) {
        self.directory.remove_keys(ids);
    }

    /// Drops every key of an account from the directory.
    pub fn forget_account(&self, account: &str) {
        self.directory.remove_keys_of(account);
    }

    /// The service over one store; call [`Keys::load`] before serving.
    pub fn new(store: Store, directory: Arc<Directory>) -> Self {
        Keys { store, directory }
    }

    /// Puts every stored key into the directory.
    pub async fn load(&self) -> Result<usize, KeyError> {
        let keys = self.store.read(all_keys).await?;
        for k in &keys {
            self.directory.put_key(k.facts(), k.last_used_ms);
        }
        Ok(keys.len())
    }

    /// Saves last-use times that changed (run every minute and at shutdown), so no
    /// request pays for a write.
    pub async fn flush(&self) -> Result<(), KeyError> {
        let dirty = self.directory.dirty_keys();
        if dirty.is_empty() {
            return Ok(());
        }
        self.store
            .write(move |tx| {
                for (account, id, used) in &dirty {
                    let key = storage_key(account, id);
                    if let Some(mut k) = tx.get(&KEYS, &key)? {
                        k.last_used_ms = Some(*used);
                        tx.insert(&KEYS, &key, &k)?;
                    }
                }
                Ok::<_, KeyError>(())
            })
            .await
    }

    /// Creates a key for `account`; returns it with the full key text, shown once.
    pub async fn create(
        &self,
        account: &str,
        role: Role,
        new: NewKey,
        actor: Option<&str>,
    ) -> Result<(ApiKey, Secret<String>), KeyError> {
        let name = new.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(KeyError::Invalid(
                "name must be 1 to 100 characters of plain text".into(),
            ));
        }
        let now = now_ms();
        if new.expires_ms.is_some_and(|t| t <= now) {
            return Err(KeyError::Invalid("the expiry must be in the future".into()));
        }
        if new.rpm == Some(0) {
            return Err(KeyError::Invalid(
                "rpm must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        let scopes = match new.scopes {
            Some(s) if s.is_empty() => {
                return Err(KeyError::Invalid(
                    "scopes must name at least one scope (leave it out for the default)".into(),
                ));
            }
            Some(s) => ScopeSet::from_scopes(s).to_vec(),
            None => ScopeSet::default_for_keys().to_vec(),
        };
        if scopes.contains(&Scope::AdminRead) && role != Role::Admin {
            return Err(KeyError::AdminScope);
        }
        let id = crypto::random_hex::<8>()?;
        let secret = crypto::random_hex::<32>()?;
        let key = ApiKey {
            id: id.clone(),
            account: account.to_string(),
            name,
            secret_hash: crypto::sha256(secret.as_bytes()),
            scopes,
            created_ms: now,
            expires_ms: new.expires_ms,
            credit_budget: new.credit_budget,
            rpm: new.rpm,
            last_used_ms: None,
        };
        let stored = key.clone();
        let actor = actor.map(str::to_string);
        self.store
            .write(move |tx| {
                let owned = keys_of(tx, &stored.account)?;
                if owned.len() >= MAX_KEYS_PER_ACCOUNT {
                    return Err(KeyError::TooMany);
                }
                if owned.iter().any(|k| k.id == stored.id) {
                    return Err(KeyError::Invalid("key id collision; try again".into()));
                }
                tx.insert(&KEYS, &storage_key(&stored.account, &stored.id), &stored)?;
                let scopes: Vec<&str> = stored.scopes.iter().map(|s| s.name()).collect();
                let detail = format!("API key created with scopes {}", scopes.join(", "));
                audit::record(
                    tx,
                    now,
                    actor.as_deref().or(Some(&stored.account)),
                    "key_created",
                    Some(&stored.id),
                    &detail,
                )?;
                Ok(())
            })
            .await?;
        self.directory.put_key(key.facts(), None);
        let token = format!("{KEY_PREFIX}{id}_{secret}");
        Ok((key, Secret::new(token)))
    }

    /// The keys of an account, newest first, with last-use times as of now.
    pub async fn list(&self, account: &str) -> Result<Vec<ApiKey>, KeyError> {
        let owner = account.to_string();
        let mut keys: Vec<ApiKey> = self.store.read(move |r| keys_of(r, &owner)).await?;
        for k in &mut keys {
            if let Some(t) = self.directory.key_last_used(&k.id) {
                k.last_used_ms = Some(t);
            }
        }
        keys.sort_by_key(|x| std::cmp::Reverse(x.created_ms));
        Ok(keys)
    }

    /// Revokes a key of `account`: it stops working at once and is deleted. Another
    /// account's key is "not found".
    pub async fn revoke(&self, account: &str, id: &str) -> Result<(), KeyError> {
        let owner = account.to_string();
        let key_id = id.to_string();
        let now = now_ms();
        self.store
            .write(move |tx| {
                if !tx.remove(&KEYS, &storage_key(&owner, &key_id))? {
                    return Err(KeyError::NotFound);
                }
                audit::record(
                    tx,
                    now,
                    Some(&owner),
                    "key_revoked",
                    Some(&key_id),
                    "API key revoked",
                )?;
                Ok(())
            })
            .await?;
        self.directory.remove_keys(&[id.to_string()]);
        Ok(())
    }
}
