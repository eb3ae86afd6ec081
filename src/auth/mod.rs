//! Who is calling: an in-memory directory of live credentials (web sessions and API
//! keys) and the state of every account, plus the extractors that are the one place
//! where requests are authenticated and authorised.
//!
//! The directory is a cache of what `accounts` and `keys` keep in storage: those
//! services write first and then update it, and fill it at start-up. Authenticating a
//! request therefore never touches the disk. Last-use times change in memory and are
//! written back in batches by [`Directory::dirty_sessions`]/[`Directory::dirty_keys`].

mod extract;

pub use extract::{
    AdminRead, AdminSession, AnySession, CSRF_HEADER, Caller, ClientInfo, Identified, NeedScope,
    SESSION_COOKIE, Scoped, Session, Via, csrf_token_for, need,
};

use crate::crypto;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use utoipa::ToSchema;

/// What an account may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Member,
}

/// Whether an account may sign in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Disabled,
    PendingDeletion,
}

/// What an API key may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    AltText,
    Chat,
    Images,
    Skills,
    Assets,
    AdminRead,
}

impl Scope {
    /// Every scope, in display order.
    pub const ALL: [Scope; 6] = [
        Scope::AltText,
        Scope::Chat,
        Scope::Images,
        Scope::Skills,
        Scope::Assets,
        Scope::AdminRead,
    ];

    /// The scope's name as written in the API.
    pub fn name(self) -> &'static str {
        match self {
            Scope::AltText => "alt_text",
            Scope::Chat => "chat",
            Scope::Images => "images",
            Scope::Skills => "skills",
            Scope::Assets => "assets",
            Scope::AdminRead => "admin_read",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes. A key created without scopes gets every scope but `admin_read`,
/// which is only ever given on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ScopeSet(u8);

impl ScopeSet {
    /// The scopes of a key created without a list.
    pub fn default_for_keys() -> Self {
        Self::from_scopes(
            Scope::ALL
                .iter()
                .copied()
                .filter(|s| *s != Scope::AdminRead),
        )
    }
    /// A set from a list.
    pub fn from_scopes(scopes: impl IntoIterator<Item = Scope>) -> Self {
        ScopeSet(scopes.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
    /// Whether the set holds `scope`.
    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
    /// The scopes as a list.
    pub fn to_vec(self) -> Vec<Scope> {
        Scope::ALL.into_iter().filter(|s| self.has(*s)).collect()
    }
}

/// What the directory knows of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountState {
    pub role: Role,
    pub status: Status,
    /// Set by an admin reset: the person must choose a new password before anything else.
    pub must_change_password: bool,
}

/// A live web session. Only the SHA-256 of its token is known.
#[derive(Debug)]
pub struct SessionEntry {
    /// Public id, for listing and revoking.
    pub id: String,
    pub token_hash: [u8; 32],
    pub account: String,
    pub created_ms: u64,
    /// Absolute end.
    pub expires_ms: u64,
    last_seen: AtomicU64,
    saved_seen: AtomicU64,
}

impl SessionEntry {
    /// A session as stored.
    pub fn new(
        id: String,
        token_hash: [u8; 32],
        account: String,
        created_ms: u64,
        expires_ms: u64,
        last_seen_ms: u64,
    ) -> Self {
        SessionEntry {
            id,
            token_hash,
            account,
            created_ms,
            expires_ms,
            last_seen: AtomicU64::new(last_seen_ms),
            saved_seen: AtomicU64::new(last_seen_ms),
        }
    }
    /// When the session was last used.
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }
}

/// An API key as stored, for [`Directory::put_key`]. Only the SHA-256 of its secret
/// is known.
#[derive(Debug, Clone)]
pub struct KeyFacts {
    /// Public id, the part of the key shown in lists.
    pub id: String,
    pub account: String,
    pub secret_hash: [u8; 32],
    pub scopes: ScopeSet,
    pub expires_ms: Option<u64>,
    /// Requests per minute allowed, if limited.
    pub rpm: Option<u32>,
    /// Credits this key may spend in all, if limited (the ledger enforces it).
    pub credit_budget: Option<u64>,
}

/// A live API key: what is stored, plus its per-minute window and last use.
#[derive(Debug)]
pub struct KeyEntry {
    pub key: KeyFacts,
    window: Mutex<(u64, u32)>,
    last_used: AtomicU64,
    saved_used: AtomicU64,
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("the API key is not valid: it was revoked, mistyped or never issued")]
    BadKey,
    #[error("the API key is not shaped like an Easel key (easel_sk_<id>_<secret>)")]
    MalformedKey,
    #[error("this API key expired; create a new one under API keys")]
    ExpiredKey,
    #[error("the session has ended; sign in again")]
    BadSession,
    #[error("this account is disabled; ask an admin")]
    Disabled,
    #[error("this key allows {limit} requests per minute; wait {retry_after_s} s")]
    RateLimited { limit: u32, retry_after_s: u64 },
}

/// Session lifetimes, from `[auth]`.
#[derive(Clone, Copy, Debug)]
pub struct SessionTimes {
    pub idle_ms: u64,
    pub max_ms: u64,
}

/// The in-memory view of accounts and credentials (see the module doc).
pub struct Directory {
    accounts: RwLock<HashMap<String, AccountState>>,
    sessions: RwLock<HashMap<[u8; 32], Arc<SessionEntry>>>,
    keys: RwLock<HashMap<String, Arc<KeyEntry>>>,
    times: RwLock<SessionTimes>,
}

/// The prefix of every API key.
pub const KEY_PREFIX: &str = "easel_sk_";
/// Hex characters in a key's public id.
pub const KEY_ID_LEN: usize = 16;
/// Hex characters in a key's secret.
pub const KEY_SECRET_LEN: usize = 64;

/// Splits `easel_sk_<id>_<secret>` into its id and secret.
pub fn split_key(token: &str) -> Result<(&str, &str), AuthError> {
    let rest = token
        .strip_prefix(KEY_PREFIX)
        .ok_or(AuthError::MalformedKey)?;
    let (id, secret) = rest.split_once('_').ok_or(AuthError::MalformedKey)?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(id, KEY_ID_LEN) || !hex(secret, KEY_SECRET_LEN) {
        return Err(AuthError::MalformedKey);
    }
    Ok((id, secret))
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Directory {
    /// An empty directory.
    pub fn new(times: SessionTimes) -> Self {
        Directory {
            accounts: RwLock::default(),
            sessions: RwLock::default(),
            keys: RwLock::default(),
            times: RwLock::new(times),
        }
    }

    /// Applies new session lifetimes (config reload).
    pub fn set_times(&self, times: SessionTimes) {
        *write(&self.times) = times;
    }

    /// Records an account's state.
    pub fn put_account(&self, id: &str, state: AccountState) {
        write(&self.accounts).insert(id.to_string(), state);
    }

    /// Forgets an erased account (its sessions and keys went before).
    pub fn remove_account(&self, id: &str) {
        write(&self.accounts).remove(id);
    }

    /// An account's state.
    pub fn account(&self, id: &str) -> Option<AccountState> {
        read(&self.accounts).get(id).copied()
    }

    /// Number of accounts.
    pub fn account_count(&self) -> usize {
        read(&self.accounts).len()
    }

    /// Ids of active admins.
    pub fn active_admins(&self) -> Vec<String> {
        read(&self.accounts)
            .iter()
            .filter(|(_, s)| s.role == Role::Admin && s.status == Status::Active)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Adds a session.
    pub fn put_session(&self, entry: SessionEntry) {
        write(&self.sessions).insert(entry.token_hash, Arc::new(entry));
    }

    /// Removes sessions by token hash.
    pub fn remove_sessions(&self, hashes: &[[u8; 32]]) {
        let mut map = write(&self.sessions);
        for h in hashes {
            map.remove(h);
        }
    }

    /// Every session of an account, newest first.
    pub fn sessions_of(&self, account: &str) -> Vec<Arc<SessionEntry>> {
        let mut out: Vec<_> = read(&self.sessions)
            .values()
            .filter(|s| s.account == account)
            .cloned()
            .collect();
        out.sort_by_key(|x| std::cmp::Reverse(x.created_ms));
        out
    }

    /// Sessions that ended by time (idle or absolute), as (account, token hash), for
    /// removal from storage.
    pub fn ended_sessions(&self, now_ms: u64) -> Vec<(String, [u8; 32])> {
        let times = *read(&self.times);
        read(&self.sessions)
            .values()
            .filter(|s| !Self::session_alive(s, times, now_ms))
            .map(|s| (s.account.clone(), s.token_hash))
            .collect()
    }

    fn session_alive(s: &SessionEntry, times: SessionTimes, now_ms: u64) -> bool {
        now_ms < s.expires_ms && now_ms.saturating_sub(s.last_seen_ms()) < times.idle_ms
    }

    /// The session lifetimes in force.
    pub fn times(&self) -> SessionTimes {
        *read(&self.times)
    }

    /// Finds the live session of a cookie token and marks it used.
    pub fn authenticate_session(
        &self,
        token: &str,
        now_ms: u64,
    ) -> Result<(Arc<SessionEntry>, AccountState), AuthError> {
        let hash = crypto::sha256(token.as_bytes());
        let entry = read(&self.sessions)
            .get(&hash)
            .cloned()
            .ok_or(AuthError::BadSession)?;
        if !Self::session_alive(&entry, self.times(), now_ms) {
            return Err(AuthError::BadSession);
        }
        let state = self.account(&entry.account).ok_or(AuthError::BadSession)?;
        if state.status != Status::Active {
            return Err(AuthError::Disabled);
        }
        entry.last_seen.fetch_max(now_ms, Ordering::Relaxed);
        Ok((entry, state))
    }

    /// Adds or replaces a key, last used at `last_used_ms` as stored.
    pub fn put_key(&self, key: KeyFacts, last_used_ms: Option<u64>) {
        let used = last_used_ms.unwrap_or(0);
        let id = key.id.clone();
        let entry = KeyEntry {
            key,
            window: Mutex::new((0, 0)),
            last_used: AtomicU64::new(used),
            saved_used: AtomicU64::new(used),
        };
        write(&self.keys).insert(id, Arc::new(entry));
    }

    /// Removes every key of an account.
    pub fn remove_keys_of(&self, account: &str) {
        write(&self.keys).retain(|_, k| k.key.account != account);
    }

    /// Removes keys by public id.
    pub fn remove_keys(&self, ids: &[String]) {
        let mut map = write(&self.keys);
        for id in ids {
            map.remove(id);
        }
    }

    /// When a key was last used, as the directory knows it (newer than storage).
    pub fn key_last_used(&self, id: &str) -> Option<u64> {
        read(&self.keys)
            .get(id)
            .map(|k| k.last_used.load(Ordering::Relaxed))
            .filter(|t| *t > 0)
    }

    /// Checks an API key. This is the hot path of every API call: a map lookup, one
    /// SHA-256 and a constant-time comparison, no disk and no allocation.
    pub fn authenticate_key(
        &self,
        token: &str,
        now_ms: u64,
    ) -> Result<(Arc<KeyEntry>, AccountState), AuthError> {
        let (id, secret) = split_key(token)?;
        let entry = read(&self.keys).get(id).cloned().ok_or(AuthError::BadKey)?;
        let hash = crypto::sha256(secret.as_bytes());
        if !crypto::ct_eq(&hash, &entry.key.secret_hash) {
            return Err(AuthError::BadKey);
        }
        // Only someone holding the secret learns that it expired.
        if entry.key.expires_ms.is_some_and(|t| now_ms >= t) {
            return Err(AuthError::ExpiredKey);
        }
        let state = self.account(&entry.key.account).ok_or(AuthError::BadKey)?;
        if state.status != Status::Active {
            return Err(AuthError::Disabled);
        }
        if let Some(limit) = entry.key.rpm {
            let minute = now_ms / 60_000;
            let mut w = entry.window.lock().unwrap_or_else(|e| e.into_inner());
            if w.0 != minute {
                *w = (minute, 0);
            }
            if w.1 >= limit {
                let retry_after_s = (60_000 - now_ms % 60_000).div_ceil(1000);
                return Err(AuthError::RateLimited {
                    limit,
                    retry_after_s,
                });
            }
            w.1 += 1;
        }
        entry.last_used.fetch_max(now_ms, Ordering::Relaxed);
        Ok((entry, state))
    }

    /// Sessions whose last use changed since it was last saved, as (account, token
    /// hash, last seen); they count as saved from now on.
    pub fn dirty_sessions(&self) -> Vec<(String, [u8; 32], u64)> {
        read(&self.sessions)
            .values()
            .filter_map(|s| {
                let seen = s.last_seen_ms();
                (s.saved_seen.swap(seen, Ordering::Relaxed) != seen)
                    .then(|| (s.account.clone(), s.token_hash, seen))
            })
            .collect()
    }

    /// Keys whose last use changed since it was last saved, as (account, id, last used).
    pub fn dirty_keys(&self) -> Vec<(String, String, u64)> {
        read(&self.keys)
            .values()
            .filter_map(|k| {
                let used = k.last_used.load(Ordering::Relaxed);
                (k.saved_used.swap(used, Ordering::Relaxed) != used)
                    .then(|| (k.key.account.clone(), k.key.id.clone(), used))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        let d = Directory::new(SessionTimes {
            idle_ms: 1000,
            max_ms: 10_000,
        });
        d.put_account(
            "a",
            AccountState {
                role: Role::Member,
                status: Status::Active,
                must_change_password: false,
            },
        );
        d
    }

    fn key(d: &Directory, rpm: Option<u32>, expires_ms: Option<u64>) -> String {
        let secret = "ab".repeat(32);
        d.put_key(
            KeyFacts {
                id: "0123456789abcdef".into(),
                account: "a".into(),
                secret_hash: crypto::sha256(secret.as_bytes()),
                scopes: ScopeSet::default_for_keys(),
                expires_ms,
                rpm,
                credit_budget: None,
            },
            None,
        );
        format!("easel_sk_0123456789abcdef_{secret}")
    }

    #[test]
    fn a_key_is_checked_by_id_then_secret_then_expiry() {
        let d = dir();
        let token = key(&d, None, Some(5_000));
        assert!(d.authenticate_key(&token, 1_000).is_ok());
        let wrong = format!("{}{}", &token[..token.len() - 2], "cd");
        assert_eq!(
            d.authenticate_key(&wrong, 1_000).err(),
            Some(AuthError::BadKey)
        );
        assert_eq!(
            d.authenticate_key("easel_sk_nothex_x", 1_000).err(),
            Some(AuthError::MalformedKey)
        );
        assert_eq!(
            d.authenticate_key(&token, 5_000).err(),
            Some(AuthError::ExpiredKey)
        );
        assert_eq!(
            d.dirty_keys(),
            vec![("a".to_string(), "0123456789abcdef".to_string(), 1_000)]
        );
        assert!(d.dirty_keys().is_empty(), "saved once, then clean");
    }

    #[test]
    fn a_rate_limited_key_refuses_past_its_limit_until_the_next_minute() {
        let d = dir();
        let token = key(&d, Some(2), None);
        assert!(d.authenticate_key(&token, 60_000).is_ok());
        assert!(d.authenticate_key(&token, 60_001).is_ok());
        assert!(matches!(
            d.authenticate_key(&token, 60_002),
            Err(AuthError::RateLimited { limit: 2, .. })
        ));
        assert!(d.authenticate_key(&token, 120_000).is_ok());
    }

    #[test]
    fn an_idle_session_ends() {
        let d = dir();
        let token = "t".repeat(10);
        d.put_session(SessionEntry::new(
            "s".into(),
            crypto::sha256(token.as_bytes()),
            "a".into(),
            0,
            10_000,
            0,
        ));
        assert!(d.authenticate_session(&token, 900).is_ok());
        assert!(
            d.authenticate_session(&token, 1_800).is_ok(),
            "use renews it"
        );
        assert_eq!(
            d.authenticate_session(&token, 2_900).err(),
            Some(AuthError::BadSession)
        );
        assert_eq!(d.ended_sessions(2_900).len(), 1);
    }
}
