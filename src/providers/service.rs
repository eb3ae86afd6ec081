//! Provider connections: the organisation's (from the config file, or entered by an
//! admin and sealed with the organisation's data key) and each person's own (sealed
//! with their account's data key). Keys are opened once into memory and never leave
//! it: lists show only their last four characters.

use super::client;
use super::upstream::{self, Breaker, Connection, Owner, PRIVATE_HINT, UpstreamError};
use crate::config::{self, Live, ProviderKind};
use crate::crypto::{CryptoError, Keyring, Secret};
use crate::http::ApiError;
use crate::http::net::{Allowlist, Unreached};
use crate::store::{Class, Reader, Store, StoreError, Table, now_ms};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Keyed by `owner / name`; the owner is an account id or [`ORG`].
const PROVIDER_KEYS: Table<String, StoredProvider> =
    Table::new("provider_keys", Class::ProviderKeys);
/// The owner of connections an admin enters for the organisation (not hex, so never
/// an account id).
const ORG: &str = "~org";
/// Time allowed to connections entered in the UI.
const UI_TIMEOUT: Duration = Duration::from_secs(60);

/// The tables of this capability and their classes.
pub const TABLES: [crate::store::Decl; 1] = [PROVIDER_KEYS.decl()];

/// How many personal connections `account` has.
pub fn count_of(r: &impl Reader, account: &str) -> Result<u64, StoreError> {
    r.count_prefix(&PROVIDER_KEYS, owner_prefix(account).as_bytes())
}

/// Removes every personal connection of `account`; returns how many went.
pub fn erase_in(tx: &crate::store::WriteTx<'_>, account: &str) -> Result<u64, StoreError> {
    tx.remove_prefix(&PROVIDER_KEYS, owner_prefix(account).as_bytes(), usize::MAX)
}

/// A connection entered in the UI, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredProvider {
    pub name: String,
    pub owner: String,
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    /// The API key, sealed with the owner's data key.
    pub sealed_key: Vec<u8>,
    pub key_hint: String,
    pub privacy_options: bool,
    pub created_ms: u64,
}

/// One page of `account`'s own provider connections for an export: never the key, only
/// its last four characters.
pub fn export_page(
    r: &crate::store::ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    let prefix = owner_prefix(account);
    crate::store::JsonPage::read(
        r,
        &PROVIDER_KEYS,
        prefix.as_bytes(),
        after,
        limit,
        |p: StoredProvider| {
            Some(serde_json::json!({
                "name": p.name,
                "kind": p.kind,
                "base_url": p.base_url,
                "key_hint": p.key_hint,
                "privacy_options": p.privacy_options,
                "created_at": crate::http::rfc3339(p.created_ms),
            }))
        },
    )
}

/// A connection to add.
pub struct NewProvider {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    pub api_key: Secret<String>,
    pub privacy_options: bool,
}

/// What can go wrong with provider connections.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    Invalid(String),
    #[error("a provider connection named `{0}` already exists")]
    Exists(String),
    #[error("`{0}` comes from the config file; remove it there")]
    FromConfig(String),
    #[error("no provider connection named `{0}`")]
    NotFound(String),
    #[error("this account's data key is gone; its connections cannot be opened")]
    NoDataKey,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let msg = e.to_string();
        match e {
            ProviderError::Invalid(_) => ApiError::bad_request("invalid_field", msg),
            ProviderError::Exists(_) | ProviderError::FromConfig(_) => {
                ApiError::conflict("provider_exists", msg)
            }
            ProviderError::NotFound(_) => ApiError::not_found(msg),
            ProviderError::NoDataKey => ApiError::forbidden("account_erased", msg),
            ProviderError::Store(e) => e.into(),
            ProviderError::Crypto(e) => ApiError::internal(e),
        }
    }
}

type Map = HashMap<String, Arc<Connection>>;

/// Clients are shared by endpoint, timeout and what they may reach: the
/// organisation's (`None`), or a person's under the `[gateway] private_hosts` in force
/// when they were built (a reload that changes it opens new ones).
type ClientsKey = (String, u64, Option<Vec<String>>);

struct Inner {
    store: Store,
    keyring: Keyring,
    live: Arc<Live>,
    org: ArcSwap<Map>,
    personal: RwLock<HashMap<String, Arc<Map>>>,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    clients: Mutex<HashMap<ClientsKey, client::Clients>>,
}

/// The provider connections; cheap to clone.
#[derive(Clone)]
pub struct Providers {
    inner: Arc<Inner>,
}

/// What every storage key of `owner`'s connections starts with.
fn owner_prefix(owner: &str) -> String {
    format!("{owner}/")
}

fn storage_key(owner: &str, name: &str) -> String {
    format!("{owner}/{name}")
}

fn aad(owner: &str, name: &str) -> Vec<u8> {
    format!("easel/provider_key/v1/{owner}/{name}").into_bytes()
}

fn key_hint(key: &str) -> String {
    let n = key.chars().count();
    key.chars().skip(n.saturating_sub(4)).collect()
}

/// Reads a config connection's key from its environment variable or file.
fn config_key(name: &str, p: &config::ProviderConfig) -> Option<Secret<String>> {
    if let Some(var) = &p.api_key_env {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => return Some(Secret::new(v.trim().to_string())),
            _ => {
                tracing::warn!(provider = name, var = %var, "the provider's key variable is not set; its routes are skipped");
                return None;
            }
        }
    }
    if let Some(file) = &p.api_key_file {
        match std::fs::read_to_string(file) {
            Ok(v) if !v.trim().is_empty() => return Some(Secret::new(v.trim().to_string())),
            Ok(_) => {
                tracing::warn!(provider = name, file = %file.display(), "the provider's key file is empty")
            }
            Err(e) => {
                tracing::warn!(provider = name, file = %file.display(), error = %e, "cannot read the provider's key file")
            }
        }
    }
    None
}

impl Providers {
    /// The service; call [`Providers::load`] before serving.
    pub fn new(store: Store, keyring: Keyring, live: Arc<Live>) -> Self {
        Providers {
            inner: Arc::new(Inner {
                store,
                keyring,
                live,
                org: ArcSwap::from_pointee(Map::new()),
                personal: RwLock::default(),
                breakers: Mutex::default(),
                clients: Mutex::default(),
            }),
        }
    }

    fn breaker(&self, owner: &str, name: &str) -> Arc<Breaker> {
        let mut map = self
            .inner
            .breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(storage_key(owner, name)).or_default().clone()
    }

    /// One set of pooled clients per endpoint, timeout and reach (see [`ClientsKey`]).
    fn client(
        &self,
        base_url: &str,
        timeout: Duration,
        personal: bool,
    ) -> Result<client::Clients, ProviderError> {
        let allowed = personal.then(|| self.inner.live.get().gateway.private_hosts.clone());
        let mut map = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        let k = (base_url.to_string(), timeout.as_millis() as u64, allowed);
        if let Some(c) = map.get(&k) {
            return Ok(c.clone());
        }
        let reach =
            k.2.as_deref()
                .map(Allowlist::parse)
                .transpose()
                .map_err(ProviderError::Invalid)?;
        let c = client::Clients::new(timeout, reach).map_err(ProviderError::Invalid)?;
        // Personal clients built under an allowlist since replaced are not used again.
        if k.2.is_some() {
            map.retain(|(b, t, a), _| !(a.is_some() && *b == k.0 && *t == k.1));
        }
        map.insert(k, c.clone());
        Ok(c)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        name: &str,
        kind: ProviderKind,
        base_url: Option<&str>,
        key: Option<Secret<String>>,
        privacy: bool,
        timeout: Duration,
        retries: u32,
        owner: Owner,
    ) -> Result<Connection, ProviderError> {
        let base = base_url
            .or(upstream::default_base_url(kind))
            .ok_or_else(|| ProviderError::Invalid(format!("`{name}` needs a base_url")))?
            .trim_end_matches('/')
            .to_string();
        let breaker_owner = match &owner {
            Owner::Account(a) => a.as_str(),
            Owner::Config | Owner::Organisation => ORG,
        };
        Ok(Connection::new(
            name.to_string(),
            kind,
            base.clone(),
            key,
            privacy,
            timeout,
            retries,
            owner.clone(),
            self.client(&base, timeout, matches!(owner, Owner::Account(_)))?,
            self.breaker(breaker_owner, name),
        ))
    }

    fn open(&self, r: &impl Reader, p: &StoredProvider) -> Result<Secret<String>, ProviderError> {
        let dk = self
            .inner
            .keyring
            .data_key(r, &p.owner)?
            .ok_or(ProviderError::NoDataKey)?;
        let plain = dk.open(&aad(&p.owner, &p.name), &p.sealed_key)?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| ProviderError::Invalid("a stored key is not text".into()))?;
        Ok(Secret::new(text))
    }

    fn open_stored(
        &self,
        r: &impl Reader,
        p: &StoredProvider,
        owner: Owner,
    ) -> Result<Connection, ProviderError> {
        let key = self.open(r, p)?;
        self.build(
            &p.name,
            p.kind,
            p.base_url.as_deref(),
            Some(key),
            p.privacy_options,
            UI_TIMEOUT,
            1,
            owner,
        )
    }

    /// Builds the organisation's connections from the config and storage (at start-up
    /// and after a config reload).
    pub async fn load(&self) -> Result<(), ProviderError> {
        let config = self.inner.live.get();
        let mut map = Map::new();
        for (name, p) in &config.providers {
            let conn = self.build(
                name,
                p.kind,
                p.base_url.as_deref(),
                config_key(name, p),
                p.privacy_options,
                p.timeout.get(),
                p.retries,
                Owner::Config,
            )?;
            map.insert(name.clone(), Arc::new(conn));
        }
        let me = self.clone();
        let stored = self
            .inner
            .store
            .read(move |r| {
                let rows = r.scan_prefix(&PROVIDER_KEYS, format!("{ORG}/").as_bytes(), usize::MAX)?;
                let mut out = Vec::new();
                for (_, p) in rows {
                    match me.open_stored(r, &p, Owner::Organisation) {
                        Ok(c) => out.push(c),
                        Err(e) => tracing::error!(provider = %p.name, error = %e, "cannot open a stored provider connection"),
                    }
                }
                Ok::<_, ProviderError>(out)
            })
            .await?;
        for c in stored {
            // The config file wins over a same-named connection entered in the UI.
            map.entry(c.name.clone()).or_insert_with(|| Arc::new(c));
        }
        self.inner.org.store(Arc::new(map));
        self.inner
            .personal
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    /// The organisation's connections.
    pub fn organisation(&self) -> Arc<Map> {
        self.inner.org.load_full()
    }

    /// A person's own connections (opened on first use, then kept in memory).
    pub async fn personal(&self, account: &str) -> Result<Arc<Map>, ProviderError> {
        if let Some(m) = self
            .inner
            .personal
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(account)
        {
            return Ok(m.clone());
        }
        let me = self.clone();
        let owner = account.to_string();
        let map = self
            .inner
            .store
            .read(move |r| {
                let rows =
                    r.scan_prefix(&PROVIDER_KEYS, owner_prefix(&owner).as_bytes(), usize::MAX)?;
                let mut map = Map::new();
                for (_, p) in rows {
                    let c = me.open_stored(r, &p, Owner::Account(owner.clone()))?;
                    map.insert(p.name.clone(), Arc::new(c));
                }
                Ok::<_, ProviderError>(map)
            })
            .await?;
        let map = Arc::new(map);
        self.inner
            .personal
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account.to_string(), map.clone());
        Ok(map)
    }

    /// Drops the cached personal connections of an account.
    pub fn forget(&self, account: &str) {
        self.inner
            .personal
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(account);
    }

    async fn check_base_url(&self, url: &str, personal: bool) -> Result<(), ProviderError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|_| ProviderError::Invalid(format!("`{url}` is not a URL")))?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() {
            return Err(ProviderError::Invalid(
                "base_url must be an http:// or https:// URL without a user name".into(),
            ));
        }
        if !personal {
            return Ok(());
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| ProviderError::Invalid("base_url has no host".into()))?;
        let port = parsed.port_or_known_default().unwrap_or(443);
        let allowed = Allowlist::parse(&self.inner.live.get().gateway.private_hosts)
            .map_err(ProviderError::Invalid)?;
        match allowed.resolve(host, port).await {
            Ok(_) => Ok(()),
            Err(Unreached::Lookup(why)) => Err(ProviderError::Invalid(why)),
            Err(Unreached::Refused(why)) => {
                Err(ProviderError::Invalid(format!("{why}; {PRIVATE_HINT}")))
            }
        }
    }

    /// Adds a connection for `account`, or for the organisation when `account` is `None`.
    pub async fn add(
        &self,
        account: Option<&str>,
        new: NewProvider,
    ) -> Result<StoredProvider, ProviderError> {
        if !config::is_connection_name(&new.name) {
            return Err(ProviderError::Invalid(
                "`name` uses lowercase letters, digits, - and _ (at most 40)".into(),
            ));
        }
        let key = new.api_key.expose().trim().to_string();
        if key.is_empty() && new.kind != ProviderKind::OpenaiCompatible {
            return Err(ProviderError::Invalid("`api_key` is required".into()));
        }
        if key.len() > 4096 || key.chars().any(char::is_control) {
            return Err(ProviderError::Invalid("`api_key` is not a key".into()));
        }
        if new.kind == ProviderKind::OpenaiCompatible && new.base_url.is_none() {
            return Err(ProviderError::Invalid(
                "`base_url` is required for openai-compatible (for example https://openrouter.ai/api/v1)".into(),
            ));
        }
        if let Some(url) = &new.base_url {
            self.check_base_url(url, account.is_some()).await?;
        }
        if account.is_none() && self.inner.live.get().providers.contains_key(&new.name) {
            return Err(ProviderError::FromConfig(new.name));
        }
        let owner = account.unwrap_or(ORG).to_string();
        let key = Secret::new(key);
        let ring = self.inner.keyring.clone();
        let stored = {
            let owner = owner.clone();
            let new_name = new.name.clone();
            let (kind, base_url, privacy) = (new.kind, new.base_url.clone(), new.privacy_options);
            self.inner
                .store
                .write(move |tx| {
                    let k = storage_key(&owner, &new_name);
                    if tx.get(&PROVIDER_KEYS, &k)?.is_some() {
                        return Err(ProviderError::Exists(new_name.clone()));
                    }
                    let dk = match ring.data_key(tx, &owner)? {
                        Some(dk) => dk,
                        None if owner == ORG => ring.create_data_key(tx, ORG)?,
                        None => return Err(ProviderError::NoDataKey),
                    };
                    let sealed_key = dk.seal(&aad(&owner, &new_name), key.expose().as_bytes())?;
                    let p = StoredProvider {
                        name: new_name.clone(),
                        owner: owner.clone(),
                        kind,
                        base_url: base_url.clone(),
                        sealed_key,
                        key_hint: key_hint(key.expose()),
                        privacy_options: privacy,
                        created_ms: now_ms(),
                    };
                    tx.insert(&PROVIDER_KEYS, &k, &p)?;
                    let actor = (owner != ORG).then_some(owner.as_str());
                    crate::audit::record(
                        tx,
                        p.created_ms,
                        actor,
                        "provider_added",
                        Some(&new_name),
                        "",
                    )?;
                    Ok(p)
                })
                .await?
        };
        match account {
            Some(a) => self.forget(a),
            None => self.load().await?,
        }
        Ok(stored)
    }

    /// Removes a connection entered in the UI.
    pub async fn remove(&self, account: Option<&str>, name: &str) -> Result<(), ProviderError> {
        if account.is_none() && self.inner.live.get().providers.contains_key(name) {
            return Err(ProviderError::FromConfig(name.to_string()));
        }
        let owner = account.unwrap_or(ORG).to_string();
        let n = name.to_string();
        self.inner
            .store
            .write(move |tx| {
                if !tx.remove(&PROVIDER_KEYS, &storage_key(&owner, &n))? {
                    return Err(ProviderError::NotFound(n.clone()));
                }
                let actor = (owner != ORG).then_some(owner.as_str());
                crate::audit::record(tx, now_ms(), actor, "provider_removed", Some(&n), "")?;
                Ok(())
            })
            .await?;
        match account {
            Some(a) => self.forget(a),
            None => self.load().await?,
        }
        Ok(())
    }

    /// Tries a connection with a cheap listing call.
    pub async fn test(
        &self,
        account: Option<&str>,
        name: &str,
    ) -> Result<TestResult, ProviderError> {
        let conn = match account {
            Some(a) => self.personal(a).await?.get(name).cloned(),
            None => self.organisation().get(name).cloned(),
        }
        .ok_or_else(|| ProviderError::NotFound(name.to_string()))?;
        if !conn.usable() {
            return Ok(TestResult {
                ok: false,
                latency_ms: 0,
                message: "no API key is set for this connection".into(),
            });
        }
        let started = std::time::Instant::now();
        let result = conn.test().await;
        let latency_ms = started.elapsed().as_millis() as u64;
        Ok(match result {
            Ok(()) => TestResult {
                ok: true,
                latency_ms,
                message: format!("{} answered and accepted the key", conn.name),
            },
            Err(e) => TestResult {
                ok: false,
                latency_ms,
                message: describe(&e),
            },
        })
    }

    /// The connections `account` can route through, read once per request.
    pub async fn reachable(&self, account: &str) -> Result<Reachable, ProviderError> {
        Ok(Reachable {
            personal: self.personal(account).await?,
            organisation: self.organisation(),
        })
    }
}

/// The connections one person can use: their own and the organisation's.
pub struct Reachable {
    pub personal: Arc<Map>,
    pub organisation: Arc<Map>,
}

impl Reachable {
    /// The connection a route naming `provider` uses: the person's own connection of
    /// that name replaces the organisation's.
    pub fn route(&self, provider: &str) -> Option<&Arc<Connection>> {
        self.personal
            .get(provider)
            .or_else(|| self.organisation.get(provider))
    }
}

/// A "test connection" outcome.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestResult {
    pub ok: bool,
    pub latency_ms: u64,
    pub message: String,
}

/// A failure in words for a person, with what to do.
pub fn describe(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Status {
            status: 401 | 403,
            provider,
            ..
        } => {
            format!("{provider} refused the key (check that it is current and has access)")
        }
        other => other.to_string(),
    }
}
