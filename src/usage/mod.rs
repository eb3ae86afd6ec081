//! Usage records (data class `usage`): one per metered request, with its time,
//! account, key, endpoint, model, provider, token and image counts, credits, status
//! and latency. Never the prompt, never the output.
//!
//! A record is written in the same transaction as the ledger entry that pays for it
//! (see [`crate::ledger::Hold::settle`]), through the group-commit writer.

mod routes;

pub use routes::routes;

use crate::store::{Class, EncodesAs, Reader, Store, StoreError, Table, TimedKey, WriteTx};
use serde::{Deserialize, Serialize};

/// Keyed by `account / time (big-endian) / 4 random bytes`: an account's records are
/// one range, oldest first, which is also how the retention sweep finds expired ones.
const USAGE: Table<Vec<u8>, UsageRecord> = Table::new("usage", Class::Usage);

/// The tables of this capability and their classes.
pub const TABLES: [crate::store::Decl; 1] = [USAGE.decl()];

/// Usage records expire by age (`[retention] usage`); an erasure removes an account's
/// records through the same description.
pub const EXPIRY: crate::store::Expiry = crate::store::Expiry::owned(&USAGE);

/// How many usage records `account` has.
pub fn count_of(r: &impl Reader, account: &str) -> Result<u64, StoreError> {
    r.count_prefix(&USAGE, &TimedKey::prefix(account))
}

/// One page of `account`'s usage records for an export, oldest first.
pub fn export_page(
    r: &crate::store::ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    crate::store::JsonPage::of_owner(r, &USAGE, account, after, limit, routes::UsageView::from)
}

/// One metered request. `UsageRecord<&str>` is the same record borrowed from its
/// parts, which stores the same bytes without copying them first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UsageRecord<S = String> {
    pub id: S,
    pub account: S,
    /// The API key's public id; `None` for a browser session.
    pub key: Option<S>,
    pub endpoint: S,
    pub model: S,
    /// The provider connection that answered (or was last tried).
    pub provider: S,
    /// Whether the person's own provider key was used.
    pub byok: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub images: u32,
    /// Micro-credits charged.
    pub credits: i64,
    /// The HTTP status answered.
    pub status: u16,
    pub latency_ms: u64,
    pub at_ms: u64,
}

impl EncodesAs<UsageRecord> for UsageRecord<&str> {}

/// Writes a record, owned or borrowed, inside the caller's transaction.
pub fn record<R>(tx: &WriteTx<'_>, key: &TimedKey, rec: &R) -> Result<(), StoreError>
where
    R: Serialize + EncodesAs<UsageRecord>,
{
    tx.insert_as(&USAGE, &key.key, rec)
}

/// Which records to read.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// From this time on (inclusive), ms.
    pub from_ms: Option<u64>,
    /// Before this time (exclusive), ms.
    pub to_ms: Option<u64>,
    pub model: Option<String>,
    pub key: Option<String>,
}

impl Filter {
    fn keeps(&self, r: &UsageRecord) -> bool {
        self.model.as_ref().is_none_or(|m| &r.model == m)
            && self.key.as_ref().is_none_or(|k| r.key.as_ref() == Some(k))
    }
}

/// Reading usage records; cheap to clone.
#[derive(Clone)]
pub struct Usage {
    store: Store,
}

impl Usage {
    /// Usage records over one store.
    pub fn new(store: Store) -> Self {
        Usage { store }
    }

    /// Up to `limit` records of an account matching `filter`, newest first, before the
    /// record id `before`; every request answered before the call is in it.
    pub async fn list(
        &self,
        account: &str,
        filter: Filter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        self.store.settled().await;
        let prefix = TimedKey::prefix(account);
        let mut end = match before.and_then(|id| TimedKey::of_id(account, id)) {
            Some(key) => key,
            None => {
                let to = filter.to_ms.unwrap_or(u64::MAX);
                [prefix.as_slice(), &to.to_be_bytes()].concat()
            }
        };
        self.store
            .read(move |r| {
                let mut out = Vec::new();
                // Read in pages so a narrow filter over a long history stays bounded in memory.
                loop {
                    let rows = r.scan_prefix_rev(&USAGE, &prefix, Some(&end), 512)?;
                    let Some((last, _)) = rows.last() else {
                        break;
                    };
                    end = last.clone();
                    let last_page = rows.len() < 512;
                    for (_, rec) in rows {
                        if filter.from_ms.is_some_and(|f| rec.at_ms < f) {
                            return Ok(out);
                        }
                        if filter.keeps(&rec) {
                            out.push(rec);
                            if out.len() >= limit {
                                return Ok(out);
                            }
                        }
                    }
                    if last_page {
                        break;
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Every record ever written for an account, oldest first (for tests).
    pub async fn all(&self, account: &str) -> Result<Vec<UsageRecord>, StoreError> {
        self.store.settled().await;
        let prefix = TimedKey::prefix(account);
        let rows = self
            .store
            .read(move |r| r.scan_prefix(&USAGE, &prefix, usize::MAX))
            .await?;
        Ok(rows.into_iter().map(|(_, v)| v).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec;

    #[test]
    fn a_borrowed_record_stores_the_same_bytes_as_the_owned_one() {
        let owned = UsageRecord {
            id: "0001".to_string(),
            account: "acct".to_string(),
            key: Some("key1".to_string()),
            endpoint: "chat".to_string(),
            model: "gpt-x".to_string(),
            provider: "openai".to_string(),
            byok: true,
            input_tokens: 100,
            output_tokens: 20,
            images: 1,
            credits: -5,
            status: 200,
            latency_ms: 7,
            at_ms: 1_700_000_000_000,
        };
        let borrowed = UsageRecord {
            id: owned.id.as_str(),
            account: &owned.account,
            key: owned.key.as_deref(),
            endpoint: &owned.endpoint,
            model: &owned.model,
            provider: &owned.provider,
            byok: owned.byok,
            input_tokens: owned.input_tokens,
            output_tokens: owned.output_tokens,
            images: owned.images,
            credits: owned.credits,
            status: owned.status,
            latency_ms: owned.latency_ms,
            at_ms: owned.at_ms,
        };
        let a = codec::encode("usage", &owned).expect("encodes");
        let b = codec::encode("usage", &borrowed).expect("encodes");
        assert_eq!(a, b);
        let back: UsageRecord = codec::decode("usage", &b).expect("decodes");
        assert_eq!(back, owned);
        let none = UsageRecord {
            key: None,
            ..borrowed
        };
        let back: UsageRecord =
            codec::decode("usage", &codec::encode("usage", &none).expect("encodes"))
                .expect("decodes");
        assert_eq!(back.key, None);
    }
}
