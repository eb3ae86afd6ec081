//! Erasure of an account whose deletion deadline has passed. Large classes go in
//! bounded batches, each its own write, so requests keep flowing; every batch is
//! idempotent, so a crash part-way is finished by the next run. The last write
//! removes the account itself, destroys its data key (crypto-shredding) and records
//! an audit entry that holds counts only.

use super::Privacy;
use crate::accounts::DeletionRequest;
use crate::http::ApiError;
use crate::store::{Class, Reader, StoreError, Table, WriteTx};
use std::collections::BTreeMap;

/// Accounts erased, by id, with when: a restore keeps these rows, so an erased person
/// that a restored backup brings back is erased again at the next deletion run.
pub(super) const ERASED: Table<String, u64> =
    Table::new("erased_accounts", Class::System).merged_on_restore();

/// Records removed (or, for billing, detached) per class.
pub type Counts = BTreeMap<String, u64>;

/// What a job did: counts per class or kind for its record and the audit log, and
/// how many stored records it removed, for the metrics.
#[derive(Default)]
pub(super) struct Done {
    pub counts: Counts,
    pub removed: u64,
}

impl Done {
    /// Adds the counts of one erased account.
    fn add(&mut self, counts: Counts) {
        *self.counts.entry("accounts".into()).or_default() += 1;
        for (k, v) in counts {
            // Detached billing entries are kept, not removed.
            if k != "billing_detached" {
                self.removed += v;
            }
            *self.counts.entry(k).or_default() += v;
        }
    }
}

impl Privacy {
    /// Runs `step` in writes of at most `[scheduler] sweep_batch` records until it
    /// returns fewer, yielding between writes so requests keep flowing. Stops at a
    /// batch boundary when the server shuts down; every step is idempotent, so the
    /// next run resumes.
    pub(super) async fn in_batches<F>(&self, step: F) -> Result<u64, ApiError>
    where
        F: Fn(&WriteTx<'_>, usize) -> Result<u64, StoreError> + Send + Sync + Clone + 'static,
    {
        self.resumable(move |tx, limit, _| {
            let n = step(tx, limit)?;
            Ok((n, (n == limit as u64).then(Vec::new)))
        })
        .await
    }

    /// [`Privacy::in_batches`] for a step that says where the next batch starts (a
    /// sweep's [`crate::store::SweepFrom`]; the first starts at the empty key), until
    /// it says nothing is left. A batch only reads where it starts, so a write run
    /// again by the writer does the same.
    pub(super) async fn resumable<F>(&self, step: F) -> Result<u64, ApiError>
    where
        F: Fn(&WriteTx<'_>, usize, &[u8]) -> Result<(u64, Option<Vec<u8>>), StoreError>
            + Send
            + Sync
            + Clone
            + 'static,
    {
        let batch = self.parts().live.get().scheduler.sweep_batch;
        let mut total = 0;
        let mut from = Vec::new();
        loop {
            let (s, at) = (step.clone(), from.clone());
            let (n, next) = self
                .parts()
                .store
                .write(move |tx| s(tx, batch, &at))
                .await?;
            total += n;
            let Some(next) = next else {
                return Ok(total);
            };
            from = next;
            if self.stopping() {
                return Err(ApiError::new(
                    actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "stopped for shutdown at a batch boundary; the next run resumes",
                ));
            }
            tokio::task::yield_now().await;
        }
    }

    /// Erases every due, unheld deletion request; returns counts over all of them.
    pub(super) async fn process_deletions(&self, now: u64) -> Result<Done, ApiError> {
        let p = self.parts();
        let mut done = Done::default();
        // Erased before, and back from a restored backup: erased again, hold or not.
        // One read finds them.
        let back: Vec<String> = p
            .store
            .read(|r| {
                let mut back = Vec::new();
                for (account, _) in r.scan_all(&ERASED)? {
                    if crate::accounts::exists_in(r, &account)? {
                        back.push(account);
                    }
                }
                Ok::<_, StoreError>(back)
            })
            .await?;
        for account in back {
            tracing::warn!("an erased account came back with a restored backup; erasing it again");
            let req = DeletionRequest {
                account,
                requested_ms: now,
                deadline_ms: now,
                by_admin: true,
                pseudonym: format!(
                    "erased-{}",
                    crate::crypto::random_hex::<8>().map_err(|e| StoreError::Db(e.to_string()))?
                ),
                erasing: true,
            };
            done.add(self.erase(&req).await?);
        }
        let held: Vec<String> = p
            .accounts
            .holds()
            .await?
            .into_iter()
            .map(|h| h.account)
            .collect();
        for req in p.accounts.deletion_requests().await? {
            if req.deadline_ms > now || held.contains(&req.account) {
                continue;
            }
            let Some(req) = p.accounts.start_erasure(&req.account).await? else {
                continue;
            };
            done.add(self.erase(&req).await?);
        }
        Ok(done)
    }

    /// Erases one account: everything of it in every class; billing entries are kept
    /// under the request's pseudonym.
    pub(super) async fn erase(&self, req: &DeletionRequest) -> Result<Counts, ApiError> {
        let p = self.parts();
        let mut counts = Counts::new();
        let owner = req.account.clone();
        for (class, expiry) in [
            ("usage", crate::usage::EXPIRY),
            ("alt_text", crate::alt_text::EXPIRY),
        ] {
            let o = owner.clone();
            let n = self
                .in_batches(move |tx, limit| expiry.erase_owner(tx, &o, limit))
                .await?;
            counts.insert(class.into(), n);
        }
        let (o, pseudonym) = (owner.clone(), req.pseudonym.clone());
        let n = self
            .in_batches(move |tx, limit| crate::ledger::detach_in(tx, &o, &pseudonym, limit))
            .await?;
        counts.insert("billing_detached".into(), n);
        let o = owner.clone();
        let n = self
            .in_batches(move |tx, limit| crate::library::erase_batch(tx, &o, limit))
            .await?;
        counts.insert("assets".into(), n);
        let o = owner.clone();
        let n = self
            .in_batches(move |tx, limit| crate::skills::erase_batch(tx, &o, limit))
            .await?;
        counts.insert("skills".into(), n);

        let keyring = p.keyring.clone();
        let o = owner.clone();
        let now = p.clock.now_ms();
        let last = p
            .store
            .write(move |tx| {
                let mut c = counts.clone();
                c.insert("provider_keys".into(), crate::providers::erase_in(tx, &o)?);
                let credentials = crate::keys::revoke_all_in(tx, &o)?
                    + crate::accounts::erase_credentials(tx, &o, usize::MAX)?;
                c.insert("credentials".into(), credentials);
                c.insert("access_log".into(), crate::audit::erase_access_in(tx, &o)?);
                c.insert("consent".into(), crate::analytics::erase_in(tx, &o)?);
                let key = keyring
                    .destroy_data_key(tx, &o)
                    .map_err(|e| StoreError::Db(e.to_string()))?;
                c.insert(
                    "account".into(),
                    crate::accounts::erase_account(tx, &o)? + u64::from(key),
                );
                tx.insert(&ERASED, &o, &now)?;
                let detail = c
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                crate::audit::record(
                    tx,
                    crate::store::now_ms(),
                    None,
                    "account_erased",
                    None,
                    &format!("an account was erased after its recovery window: {detail}"),
                )?;
                Ok::<_, StoreError>(c)
            })
            .await?;
        p.accounts.forget(&owner);
        p.keys.forget_account(&owner);
        p.ledger.forget(&owner);
        p.providers.forget(&owner);
        p.analytics.forget(&owner);
        // The data key is gone, so the files open for no one; they go from the disk too.
        if let Err(e) = p.library.remove_account_files(&owner).await {
            tracing::warn!(error = %e, "cannot remove an erased account's asset files; the upkeep job will");
        }
        tracing::info!(pseudonym = %req.pseudonym, "an account was erased");
        Ok(last)
    }
}
