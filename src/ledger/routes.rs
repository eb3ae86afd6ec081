//! HTTP routes of credits: a person's balance and ledger; admins' balances, grants
//! and adjustments.

use super::service::{Entry, EntryKind, Ledger, Posting};
use super::{from_credits, to_credits};
use crate::auth::{AdminRead, AdminSession, Directory, Identified};
use crate::http::{ApiError, rfc3339};
use actix_web::{get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(my_credits)
        .service(all_balances)
        .service(account_ledger)
        .service(post_credits);
}

/// A ledger entry as shown.
#[derive(Serialize, ToSchema)]
pub struct EntryView {
    pub id: String,
    pub kind: EntryKind,
    /// Credits; negative when spent.
    pub amount: f64,
    pub balance_after: f64,
    pub key: Option<String>,
    pub model: Option<String>,
    pub note: String,
    pub at: String,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        EntryView {
            id: e.id,
            kind: e.kind,
            amount: to_credits(e.amount),
            balance_after: to_credits(e.balance_after),
            key: e.key,
            model: e.model,
            note: e.note,
            at: rfc3339(e.at_ms),
        }
    }
}

/// A balance.
#[derive(Serialize, ToSchema)]
pub struct Balance {
    pub account: String,
    pub balance: f64,
    /// Held by requests in flight.
    pub held: f64,
    /// What new requests may use.
    pub available: f64,
}

impl Balance {
    fn new(account: String, balance: i64, held: i64) -> Self {
        Balance {
            account,
            balance: to_credits(balance),
            held: to_credits(held),
            available: to_credits(balance - held),
        }
    }
}

fn balance_of(ledger: &Ledger, account: &str) -> Balance {
    let (balance, held) = ledger.balance(account);
    Balance::new(account.to_string(), balance, held)
}

/// A page of ledger entries, newest first.
#[derive(Serialize, ToSchema)]
pub struct LedgerPage {
    pub balance: Balance,
    pub entries: Vec<EntryView>,
    /// Pass as `before` for the next page; absent on the last one.
    pub next: Option<String>,
}

/// Paging through a ledger.
#[derive(Deserialize, IntoParams)]
pub struct Page {
    pub before: Option<String>,
    /// Entries per page (default 50, at most 500).
    pub limit: Option<usize>,
}

async fn page_of(ledger: &Ledger, account: &str, page: &Page) -> Result<LedgerPage, ApiError> {
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let entries = ledger
        .entries(account, page.before.as_deref(), limit)
        .await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    Ok(LedgerPage {
        balance: balance_of(ledger, account),
        entries: entries.into_iter().map(Into::into).collect(),
        next,
    })
}

/// The caller's balance and latest ledger entries.
#[utoipa::path(tag = "credits", params(Page), responses((status = 200, body = LedgerPage)))]
#[get("/api/credits")]
async fn my_credits(
    who: Identified,
    ledger: web::Data<Ledger>,
    page: web::Query<Page>,
) -> Result<web::Json<LedgerPage>, ApiError> {
    Ok(web::Json(page_of(&ledger, &who.0.account, &page).await?))
}

/// Every account's balance (admins; keys need `admin_read`).
#[utoipa::path(tag = "admin", responses((status = 200, body = Vec<Balance>)))]
#[get("/api/admin/credits")]
async fn all_balances(_admin: AdminRead, ledger: web::Data<Ledger>) -> web::Json<Vec<Balance>> {
    let list = ledger
        .balances()
        .into_iter()
        .map(|(account, balance, held)| Balance::new(account, balance, held))
        .collect();
    web::Json(list)
}

/// One account's ledger (admins; keys need `admin_read`).
#[utoipa::path(tag = "admin", params(Page), responses((status = 200, body = LedgerPage), (status = 404)))]
#[get("/api/admin/credits/{account}")]
async fn account_ledger(
    _admin: AdminRead,
    ledger: web::Data<Ledger>,
    directory: web::Data<Directory>,
    account: web::Path<String>,
    page: web::Query<Page>,
) -> Result<web::Json<LedgerPage>, ApiError> {
    if directory.account(&account).is_none() {
        return Err(ApiError::not_found("no such account"));
    }
    Ok(web::Json(page_of(&ledger, &account, &page).await?))
}

/// Credits to add or take.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostBody {
    pub account: String,
    /// Credits; negative only for an `adjustment`.
    pub amount: f64,
    /// `grant` (default), `purchase`, `refund` or `adjustment`.
    pub kind: Option<EntryKind>,
    pub note: Option<String>,
}

/// Grants, records a purchase or refund, or adjusts an account's credits (admins).
#[utoipa::path(tag = "admin", request_body = PostBody, responses((status = 200, body = EntryView), (status = 400), (status = 402), (status = 404)))]
#[post("/api/admin/credits")]
async fn post_credits(
    admin: AdminSession,
    ledger: web::Data<Ledger>,
    directory: web::Data<Directory>,
    body: web::Json<PostBody>,
) -> Result<web::Json<EntryView>, ApiError> {
    let body = body.into_inner();
    if directory.account(&body.account).is_none() {
        return Err(ApiError::not_found("no such account"));
    }
    let kind = body.kind.unwrap_or(EntryKind::Grant);
    let amount = from_credits(body.amount)?;
    check_posting(kind, amount)?;
    let note = body.note.unwrap_or_default();
    if note.chars().count() > 500 {
        return Err(ApiError::bad_request(
            "invalid_field",
            "`note` is longer than 500 characters",
        ));
    }
    let posting = Posting {
        note,
        actor: Some(admin.0.account.clone()),
        ..Posting::default()
    };
    let entry = ledger.post(&body.account, kind, amount, posting).await?;
    Ok(web::Json(entry.into()))
}

/// Only adjustments may take credits away; usage is charged by requests alone.
pub fn check_posting(kind: EntryKind, amount: i64) -> Result<(), ApiError> {
    match kind {
        EntryKind::Usage => Err(ApiError::bad_request(
            "invalid_field",
            "`kind` usage is charged by requests; use grant, purchase, refund or adjustment",
        )),
        EntryKind::Adjustment if amount != 0 => Ok(()),
        _ if amount > 0 => Ok(()),
        _ => Err(ApiError::bad_request(
            "invalid_field",
            "`amount` must be more than zero (only an adjustment may be negative)",
        )),
    }
}
