//! Two data classes of security records: `audit` (who did what: sign-ins, locks, key and
//! role changes, admin actions; never a client address) and `access_log` (client
//! address and user agent of sign-in attempts, kept briefly). Both are keyed by
//! `(timestamp_be, random)`, so the key is its own time index for expiry sweeps.

use crate::auth::AdminRead;
use crate::http::{ApiError, rfc3339};
use crate::store::{Class, Reader, Store, StoreError, Table, WriteTx};
use actix_web::{get, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

/// One audit record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// The account that acted; `None` for the system or an unknown caller.
    pub actor: Option<String>,
    /// A stable code such as `sign_in` or `key_revoked`.
    pub action: String,
    /// The account or object acted on.
    pub target: Option<String>,
    /// Free text without personal data.
    pub detail: String,
}

/// One access-log record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AccessEntry {
    pub at_ms: u64,
    pub ip: String,
    pub user_agent: String,
    pub event: String,
    pub account: Option<String>,
}

const AUDIT: Table<Vec<u8>, AuditEntry> = Table::new("audit", Class::Audit);
const ACCESS: Table<Vec<u8>, AccessEntry> = Table::new("access_log", Class::AccessLog);

/// The tables of this capability and their classes.
pub const TABLES: [crate::store::Decl; 2] = [AUDIT.decl(), ACCESS.decl()];

/// Audit entries expire by age (`[retention] audit`).
pub const AUDIT_EXPIRY: crate::store::Expiry = crate::store::Expiry::time_keyed(&AUDIT);
/// Access-log entries expire by age (`[retention] access_log`, 24 hours by default).
pub const ACCESS_EXPIRY: crate::store::Expiry = crate::store::Expiry::time_keyed(&ACCESS);

/// Removes every access-log entry of `account` (client addresses are personal data);
/// returns how many went.
pub fn erase_access_in(tx: &WriteTx<'_>, account: &str) -> Result<u64, StoreError> {
    let gone = tx.remove_where(&ACCESS, |e| e.account.as_deref() == Some(account))?;
    Ok(gone.len() as u64)
}

/// One page of the access log's entries about `account` for an export.
pub fn export_access_page(
    r: &crate::store::ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    crate::store::JsonPage::read(r, &ACCESS, b"", after, limit, |e: AccessEntry| {
        (e.account.as_deref() == Some(account)).then(|| AccessView::from(e))
    })
}

/// One page of the audit entries `account` made or that name it, for an export.
pub fn export_audit_page(
    r: &crate::store::ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    crate::store::JsonPage::read(r, &AUDIT, b"", after, limit, |e: AuditEntry| {
        let mine = e.actor.as_deref() == Some(account) || e.target.as_deref() == Some(account);
        mine.then(|| AuditView::from(e))
    })
}

fn time_key(at_ms: u64) -> Result<Vec<u8>, StoreError> {
    let salt = crate::crypto::random_bytes::<4>().map_err(|e| StoreError::Db(e.to_string()))?;
    let mut k = at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(&salt);
    Ok(k)
}

/// Adds an audit entry inside the caller's write, so it lands with the change it records.
pub fn record(
    tx: &WriteTx<'_>,
    at_ms: u64,
    actor: Option<&str>,
    action: &str,
    target: Option<&str>,
    detail: &str,
) -> Result<(), StoreError> {
    let entry = AuditEntry {
        at_ms,
        actor: actor.map(str::to_string),
        action: action.to_string(),
        target: target.map(str::to_string),
        detail: detail.to_string(),
    };
    tx.insert(&AUDIT, &time_key(at_ms)?, &entry)
}

/// Adds an access-log entry inside the caller's write.
pub fn access(
    tx: &WriteTx<'_>,
    at_ms: u64,
    client: &crate::auth::ClientInfo,
    event: &str,
    account: Option<&str>,
) -> Result<(), StoreError> {
    let entry = AccessEntry {
        at_ms,
        ip: client.ip.clone(),
        user_agent: client.user_agent.clone(),
        event: event.to_string(),
        account: account.map(str::to_string),
    };
    tx.insert(&ACCESS, &time_key(at_ms)?, &entry)
}

/// Audit entries, newest first, before an optional cursor.
pub fn list(
    r: &impl Reader,
    before: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, AuditEntry)>, StoreError> {
    r.scan_rev(&AUDIT, before.map(<[u8]>::to_vec).as_ref(), limit)
}

/// Access-log entries, newest first.
pub fn list_access(r: &impl Reader, limit: usize) -> Result<Vec<AccessEntry>, StoreError> {
    Ok(r.scan_rev(&ACCESS, None, limit)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(audit_log).service(access_log);
}

/// Paging through the audit log.
#[derive(Deserialize, IntoParams)]
pub struct Page {
    /// The `next` cursor of the previous page.
    pub before: Option<String>,
    /// Entries per page (default 100, at most 500).
    pub limit: Option<usize>,
}

/// An audit entry as shown to admins.
#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub at: String,
    pub actor: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub detail: String,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        AuditView {
            at: rfc3339(e.at_ms),
            actor: e.actor,
            action: e.action,
            target: e.target,
            detail: e.detail,
        }
    }
}

/// A page of the audit log.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    /// Pass as `before` for the next page; absent on the last one.
    pub next: Option<String>,
}

/// The audit log, newest first (admins; keys need `admin_read`).
#[utoipa::path(tag = "admin", params(Page), responses((status = 200, body = AuditPage)))]
#[get("/api/admin/audit")]
async fn audit_log(
    _admin: AdminRead,
    store: web::Data<Store>,
    page: web::Query<Page>,
) -> Result<web::Json<AuditPage>, ApiError> {
    let limit = page.limit.unwrap_or(100).clamp(1, 500);
    let before = match &page.before {
        Some(c) => Some(crate::crypto::unhex(c).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "`before` is not a cursor from this list")
        })?),
        None => None,
    };
    let rows = store
        .read(move |r| list(r, before.as_deref(), limit))
        .await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|(k, _)| crate::crypto::hex(k)))
        .flatten();
    let entries = rows.into_iter().map(|(_, e)| AuditView::from(e)).collect();
    Ok(web::Json(AuditPage { entries, next }))
}

/// An access-log entry as shown to admins.
#[derive(Serialize, ToSchema)]
pub struct AccessView {
    pub at: String,
    pub ip: String,
    pub user_agent: String,
    /// `sign_in`, `sign_in_failed`, `sign_up` or `address_locked`.
    pub event: String,
    pub account: Option<String>,
}

impl From<AccessEntry> for AccessView {
    fn from(e: AccessEntry) -> Self {
        AccessView {
            at: rfc3339(e.at_ms),
            ip: e.ip,
            user_agent: e.user_agent,
            event: e.event,
            account: e.account,
        }
    }
}

/// Recent sign-in attempts with client address and user agent, newest first (admins;
/// keys need `admin_read`). Kept as long as `[retention] access_log` says.
#[utoipa::path(tag = "admin", params(Page), responses((status = 200, body = Vec<AccessView>)))]
#[get("/api/admin/access-log")]
async fn access_log(
    _admin: AdminRead,
    store: web::Data<Store>,
    page: web::Query<Page>,
) -> Result<web::Json<Vec<AccessView>>, ApiError> {
    let limit = page.limit.unwrap_or(100).clamp(1, 500);
    let rows = store.read(move |r| list_access(r, limit)).await?;
    Ok(web::Json(rows.into_iter().map(AccessView::from).collect()))
}
