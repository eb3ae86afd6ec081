//! Analytics consent and anonymous feature-use counters (data class `analytics`).
//!
//! Consent is per person, off by default and withdrawable; its history (class
//! `account`) is kept with the account, exported and erased with it. Counters hold a
//! day, a feature and a number, never who: a request adds one to its feature's counter
//! for the day only when its person consents at that moment, so with consent off no
//! analytics record of that person exists. Counters expire by age
//! (`[retention] analytics`).

mod routes;

pub use routes::routes;

use crate::store::{Class, JsonPage, Reader, Store, StoreError, Table, TimedKey, WriteTx};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use utoipa::ToSchema;

/// Keyed by [`TimedKey`] (`account/time/random`): every change of a person's consent.
const CONSENT: Table<Vec<u8>, ConsentEvent> = Table::new("consent", Class::Account);
/// Keyed by the day's first millisecond (big-endian) followed by the feature's name.
const COUNTERS: Table<Vec<u8>, u64> = Table::new("analytics", Class::Analytics);

const DAY_MS: u64 = 86_400_000;

/// The tables of this capability and their classes.
pub const TABLES: [crate::store::Decl; 2] = [CONSENT.decl(), COUNTERS.decl()];

/// Counters expire by age (`[retention] analytics`).
pub const EXPIRY: crate::store::Expiry = crate::store::Expiry::time_keyed(&COUNTERS);

/// One change of a person's consent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ConsentEvent {
    /// Whether anonymous feature-use counting is allowed from now on.
    pub analytics: bool,
    pub at_ms: u64,
}

/// One day's count of one feature.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Counter {
    /// The day (UTC), `YYYY-MM-DD`.
    pub day: String,
    pub feature: String,
    pub count: u64,
}

/// Adds one use of `feature` to today's counter, inside the caller's write. Call it
/// only for a person who consents ([`Analytics::consents`]).
pub fn count_in(tx: &WriteTx<'_>, at_ms: u64, feature: &str) -> Result<(), StoreError> {
    let mut key = (at_ms - at_ms % DAY_MS).to_be_bytes().to_vec();
    key.extend_from_slice(feature.as_bytes());
    let n: u64 = tx.get(&COUNTERS, &key)?.unwrap_or(0);
    tx.insert(&COUNTERS, &key, &(n + 1))
}

/// Removes the consent history of `account` (erasure); returns how many records went.
pub fn erase_in(tx: &WriteTx<'_>, account: &str) -> Result<u64, StoreError> {
    tx.remove_prefix(&CONSENT, &TimedKey::prefix(account), usize::MAX)
}

/// One page of `account`'s consent history for an export.
pub fn export_page(
    r: &crate::store::ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<JsonPage, StoreError> {
    JsonPage::of_owner(r, &CONSENT, account, after, limit, |c| c)
}

/// Who consents now, kept in memory so a metered request checks it with one atomic
/// load (no lock, no read); changes, which are rare, replace the whole set.
#[derive(Clone)]
pub struct Analytics {
    store: Store,
    consenting: Arc<ArcSwap<HashSet<String>>>,
    /// Serialises changes of the set.
    changing: Arc<Mutex<()>>,
}

impl Analytics {
    /// Nobody consents until [`Analytics::load`] reads the stored choices.
    pub fn new(store: Store) -> Self {
        Analytics {
            store,
            consenting: Arc::default(),
            changing: Arc::default(),
        }
    }

    /// Reads every person's latest choice.
    pub async fn load(&self) -> Result<usize, StoreError> {
        let rows = self.store.read(|r| r.scan_all(&CONSENT)).await?;
        // Keys sort by account, then time: the last event of an account wins.
        let mut latest: std::collections::HashMap<String, bool> = Default::default();
        for (key, event) in rows {
            if let Some(slash) = key.iter().position(|&b| b == b'/') {
                let account = String::from_utf8_lossy(&key[..slash]).into_owned();
                latest.insert(account, event.analytics);
            }
        }
        let set: HashSet<String> = latest
            .into_iter()
            .filter_map(|(a, on)| on.then_some(a))
            .collect();
        let n = set.len();
        self.consenting.store(Arc::new(set));
        Ok(n)
    }

    /// Replaces the set with `change` applied to a copy of it.
    fn change(&self, change: impl FnOnce(&mut HashSet<String>)) {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let mut set = HashSet::clone(&self.consenting.load());
        change(&mut set);
        self.consenting.store(Arc::new(set));
    }

    /// Whether `account` allows anonymous feature-use counting now.
    pub fn consents(&self, account: &str) -> bool {
        self.consenting.load().contains(account)
    }

    /// Records a choice of `account`; it holds for every request from now on.
    pub async fn set(
        &self,
        account: &str,
        analytics: bool,
        at_ms: u64,
    ) -> Result<ConsentEvent, StoreError> {
        let key = TimedKey::new(account, at_ms)?;
        let event = ConsentEvent { analytics, at_ms };
        let e = event.clone();
        self.store
            .write(move |tx| tx.insert(&CONSENT, &key.key, &e))
            .await?;
        self.change(|set| {
            if analytics {
                set.insert(account.to_string());
            } else {
                set.remove(account);
            }
        });
        Ok(event)
    }

    /// Every choice `account` made, oldest first.
    pub async fn history(&self, account: &str) -> Result<Vec<ConsentEvent>, StoreError> {
        let prefix = TimedKey::prefix(account);
        let rows = self
            .store
            .read(move |r| r.scan_prefix(&CONSENT, &prefix, usize::MAX))
            .await?;
        Ok(rows.into_iter().map(|(_, e)| e).collect())
    }

    /// Forgets an erased account.
    pub fn forget(&self, account: &str) {
        self.change(|set| {
            set.remove(account);
        });
    }

    /// The counters, newest day first, at most `limit`.
    pub async fn counters(&self, limit: usize) -> Result<Vec<Counter>, StoreError> {
        let rows = self
            .store
            .read(move |r| r.scan_rev(&COUNTERS, None, limit))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, count)| {
                let day = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
                Some(Counter {
                    day: crate::http::rfc3339(day).get(..10)?.to_string(),
                    feature: String::from_utf8_lossy(&key[8..]).into_owned(),
                    count,
                })
            })
            .collect())
    }
}
