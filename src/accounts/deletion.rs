//! Deletion requests and legal holds (class `account`). A request disables the account
//! at once and starts a recovery window; the person (by signing in) or an admin can
//! cancel it until the deadline, when the privacy engine erases the account. A legal
//! hold, set by an admin, postpones erasure and gives its reason in the report.

use super::error::AccountError;
use super::model::Account;
use super::service::{ACCOUNTS, Accounts, Actor, EMAILS, INVITES, SESSIONS, end_sessions};
use crate::audit;
use crate::auth::Status;
use crate::store::{Class, Reader, StoreError, Table, TimedKey, WriteTx};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub(super) const DELETIONS: Table<String, DeletionRequest> =
    Table::new("deletion_requests", Class::Account);
pub(super) const HOLDS: Table<String, LegalHold> = Table::new("legal_holds", Class::Account);

/// Whether an account with this id exists.
pub fn exists_in(r: &impl Reader, account: &str) -> Result<bool, StoreError> {
    Ok(r.get(&ACCOUNTS, account)?.is_some())
}

/// `account.json` of an export: the account (never its password hash), with its
/// pending deletion request; `None` when there is no such account.
pub fn export_account(
    r: &crate::store::ReadTx,
    account: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    let Some(a) = r.get(&ACCOUNTS, account)? else {
        return Ok(None);
    };
    let deletion = r.get(&DELETIONS, account)?;
    let mut v = serde_json::to_value(super::routes::AccountView::from(a))
        .map_err(|e| StoreError::Db(e.to_string()))?;
    v["deletion_requested"] = serde_json::json!(deletion.map(|d| serde_json::json!({
        "requested_at": crate::http::rfc3339(d.requested_ms),
        "erase_at": crate::http::rfc3339(d.deadline_ms),
        "by_admin": d.by_admin,
    })));
    Ok(Some(v))
}

/// One page of `account`'s web sessions (never their tokens) for an export.
pub fn export_sessions_page(
    r: &crate::store::ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    crate::store::JsonPage::of_owner(
        r,
        &SESSIONS,
        account,
        after,
        limit,
        |s: super::StoredSession| {
            serde_json::json!({
                "id": s.id,
                "created_at": crate::http::rfc3339(s.created_ms),
                "last_seen_at": crate::http::rfc3339(s.last_seen_ms),
                "expires_at": crate::http::rfc3339(s.expires_ms),
            })
        },
    )
}

/// A pending deletion request, keyed by account id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeletionRequest {
    pub account: String,
    pub requested_ms: u64,
    /// When the erasure runs, unless cancelled or held.
    pub deadline_ms: u64,
    /// An admin asked for it (otherwise the person did).
    pub by_admin: bool,
    /// The id the account's billing entries are kept under after erasure.
    pub pseudonym: String,
    /// Erasure has begun: the request can no longer be cancelled.
    #[serde(default)]
    pub erasing: bool,
}

/// A legal hold on an account, keyed by account id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LegalHold {
    pub account: String,
    pub reason: String,
    pub by: Option<String>,
    pub at_ms: u64,
}

/// The tables of this capability and their classes.
pub const TABLES: [crate::store::Decl; 6] = [
    ACCOUNTS.decl(),
    EMAILS.decl(),
    DELETIONS.decl(),
    HOLDS.decl(),
    SESSIONS.decl(),
    INVITES.decl(),
];

/// Removes up to `limit` sessions, and the invites, of `account` (class `credentials`).
pub fn erase_credentials(tx: &WriteTx<'_>, account: &str, limit: usize) -> Result<u64, StoreError> {
    let sessions = tx.remove_prefix(&SESSIONS, &TimedKey::prefix(account), limit)?;
    let invites = tx.remove_where(&INVITES, |inv| inv.created_by == account)?;
    Ok(sessions + invites.len() as u64)
}

/// Removes the account record, its email, its deletion request and any hold (class
/// `account`); the last step of an erasure.
pub fn erase_account(tx: &WriteTx<'_>, account: &str) -> Result<u64, StoreError> {
    let id = account.to_string();
    let mut n = 0;
    if let Some(a) = tx.get(&ACCOUNTS, &id)? {
        tx.remove(&EMAILS, &a.email)?;
        tx.remove(&ACCOUNTS, &id)?;
        n += 2;
    }
    n += u64::from(tx.remove(&DELETIONS, &id)?);
    n += u64::from(tx.remove(&HOLDS, &id)?);
    Ok(n)
}

/// Invites whose time is up, removed (class `credentials`, swept by the expiry job).
pub fn expire_invites(tx: &WriteTx<'_>, now: u64) -> Result<u64, StoreError> {
    Ok(tx
        .remove_where(&INVITES, |inv| inv.expires_ms <= now)?
        .len() as u64)
}

/// Sessions past their end (idle or maximum lifetime as stored), removed; returns
/// their token hashes for the directory.
pub fn expire_sessions_in(tx: &WriteTx<'_>, now: u64) -> Result<Vec<[u8; 32]>, StoreError> {
    let gone = tx.remove_where(&SESSIONS, |s| s.expires_ms <= now)?;
    Ok(gone
        .iter()
        .filter_map(|(k, _)| super::service::token_hash_of(k))
        .collect())
}

impl Accounts {
    /// Drops ended sessions from the directory after a write removed them.
    pub fn forget_sessions(&self, hashes: &[[u8; 32]]) {
        self.directory().remove_sessions(hashes);
    }

    /// Disables `id` at once and stores a deletion request with its deadline: every
    /// session ends, and `also` runs in the same write (the privacy engine revokes the
    /// API keys there). Refused while a request is pending.
    pub async fn request_deletion<F>(
        &self,
        id: &str,
        actor: Actor,
        now: u64,
        deadline_ms: u64,
        mut also: F,
    ) -> Result<(Account, DeletionRequest), AccountError>
    where
        F: FnMut(&WriteTx<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        let pseudonym = format!("erased-{}", crate::crypto::random_hex::<8>()?);
        // Anyone but the person themselves: an admin, or the command line.
        let by_admin = actor.id() != Some(id);
        let request = DeletionRequest {
            account: id.to_string(),
            requested_ms: now,
            deadline_ms,
            by_admin,
            pseudonym,
            erasing: false,
        };
        let req = request.clone();
        let account = self
            .update_at(id, now, move |tx, a, now| {
                if a.status == Status::PendingDeletion {
                    return Err(AccountError::Invalid(
                        "a deletion request for this account is already pending".into(),
                    ));
                }
                a.status = Status::PendingDeletion;
                tx.insert(&DELETIONS, &a.id, &req)?;
                also(tx)?;
                audit::record(
                    tx,
                    now,
                    actor.id(),
                    "deletion_requested",
                    Some(&a.id),
                    if req.by_admin {
                        "deletion requested by an admin; account disabled"
                    } else {
                        "deletion requested by the person; account disabled"
                    },
                )?;
                end_sessions(tx, &a.id, None)
            })
            .await?;
        Ok((account, request))
    }

    /// Cancels a pending deletion request: the account is active again.
    pub async fn cancel_deletion(&self, id: &str, actor: Actor) -> Result<Account, AccountError> {
        self.update_at(id, crate::store::now_ms(), move |tx, a, now| {
            cancel_in(tx, a, now, actor.id(), "deletion cancelled by an admin")?;
            Ok(Vec::new())
        })
        .await
    }

    /// Pending deletion requests, by account id.
    pub async fn deletion_requests(&self) -> Result<Vec<DeletionRequest>, AccountError> {
        self.store()
            .read(|r| {
                Ok(r.scan_all(&DELETIONS)?
                    .into_iter()
                    .map(|(_, d)| d)
                    .collect())
            })
            .await
    }

    /// The pending deletion request of one account.
    pub async fn deletion_request(
        &self,
        id: &str,
    ) -> Result<Option<DeletionRequest>, AccountError> {
        let id = id.to_string();
        self.store()
            .read(move |r| Ok(r.get(&DELETIONS, &id)?))
            .await
    }

    /// Legal holds, by account id.
    pub async fn holds(&self) -> Result<Vec<LegalHold>, AccountError> {
        self.store()
            .read(|r| Ok(r.scan_all(&HOLDS)?.into_iter().map(|(_, h)| h).collect()))
            .await
    }

    /// Puts a legal hold on an account (`Some(reason)`) or lifts it (`None`).
    pub async fn set_hold(
        &self,
        id: &str,
        reason: Option<String>,
        actor: Actor,
    ) -> Result<(), AccountError> {
        let reason = match reason.map(|r| r.trim().to_string()) {
            Some(r) if r.is_empty() || r.chars().count() > 500 => {
                return Err(AccountError::Invalid(
                    "a legal hold needs a reason of 1 to 500 characters".into(),
                ));
            }
            other => other,
        };
        self.update_at(id, crate::store::now_ms(), move |tx, a, now| {
            let id = a.id.clone();
            match &reason {
                Some(reason) => {
                    let h = LegalHold {
                        account: id.clone(),
                        reason: reason.clone(),
                        by: actor.id().map(str::to_string),
                        at_ms: now,
                    };
                    tx.insert(&HOLDS, &id, &h)?;
                    audit::record(
                        tx,
                        now,
                        actor.id(),
                        "legal_hold_set",
                        Some(&id),
                        "legal hold set",
                    )?;
                }
                None => {
                    if !tx.remove(&HOLDS, &id)? {
                        return Err(AccountError::NotFound("legal hold"));
                    }
                    audit::record(
                        tx,
                        now,
                        actor.id(),
                        "legal_hold_lifted",
                        Some(&id),
                        "legal hold lifted",
                    )?;
                }
            }
            Ok(Vec::new())
        })
        .await
        .map(|_| ())
    }

    /// Ids of the active admins.
    pub fn active_admins(&self) -> Vec<String> {
        self.directory().active_admins()
    }

    /// Marks a pending request as being erased: from here on it cannot be cancelled.
    /// `None` when it was cancelled or is held meanwhile.
    pub async fn start_erasure(&self, id: &str) -> Result<Option<DeletionRequest>, AccountError> {
        let id = id.to_string();
        self.store()
            .write(move |tx| {
                if tx.get(&HOLDS, &id)?.is_some() {
                    return Ok(None);
                }
                let Some(mut req) = tx.get(&DELETIONS, &id)? else {
                    return Ok(None);
                };
                req.erasing = true;
                tx.insert(&DELETIONS, &id, &req)?;
                Ok(Some(req))
            })
            .await
    }

    /// Forgets an erased account in the credential directory.
    pub fn forget(&self, id: &str) {
        self.directory().remove_account(id);
    }
}

/// Cancels the request of `a` inside a write (an admin, or the person signing in).
pub(super) fn cancel_in(
    tx: &WriteTx<'_>,
    a: &mut Account,
    now: u64,
    actor: Option<&str>,
    detail: &str,
) -> Result<(), AccountError> {
    let pending = tx.get(&DELETIONS, &a.id)?;
    if a.status != Status::PendingDeletion || pending.is_none() {
        return Err(AccountError::NotFound("pending deletion request"));
    }
    if pending.is_some_and(|r| r.erasing) {
        return Err(AccountError::Invalid(
            "this account is being erased; it can no longer be cancelled".into(),
        ));
    }
    tx.remove(&DELETIONS, &a.id)?;
    a.status = Status::Active;
    audit::record(tx, now, actor, "deletion_cancelled", Some(&a.id), detail)?;
    Ok(())
}
