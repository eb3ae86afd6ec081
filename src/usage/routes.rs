//! HTTP routes of usage: a filterable list (JSON or CSV) and daily totals per model.
//! People see their own usage; admins may name another account.

use super::{Filter, Usage, UsageRecord};
use crate::auth::{Caller, Directory, Identified, Role};
use crate::http::{ApiError, rfc3339};
use crate::ledger::to_credits;
use crate::store::now_ms;
use actix_web::{HttpResponse, get, web};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_usage).service(daily_usage);
}

/// A usage record as shown.
#[derive(Serialize, ToSchema)]
pub struct UsageView {
    pub id: String,
    pub at: String,
    pub key: Option<String>,
    pub endpoint: String,
    pub model: String,
    pub provider: String,
    pub byok: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub images: u32,
    pub credits: f64,
    pub status: u16,
    pub latency_ms: u64,
}

impl From<UsageRecord> for UsageView {
    fn from(r: UsageRecord) -> Self {
        UsageView {
            id: r.id,
            at: rfc3339(r.at_ms),
            key: r.key,
            endpoint: r.endpoint,
            model: r.model,
            provider: r.provider,
            byok: r.byok,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            images: r.images,
            credits: to_credits(r.credits),
            status: r.status,
            latency_ms: r.latency_ms,
        }
    }
}

/// Which usage to list.
#[derive(Deserialize, IntoParams)]
pub struct UsageQuery {
    /// From this day (`2026-11-01`) or time (RFC 3339), inclusive.
    pub from: Option<String>,
    /// Up to this day (inclusive) or time (exclusive).
    pub to: Option<String>,
    pub model: Option<String>,
    /// An API key's public id.
    pub key: Option<String>,
    /// The `next` cursor of the previous page.
    pub before: Option<String>,
    /// Records per page (default 100, at most 1000; CSV: at most 100 000).
    pub limit: Option<usize>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    /// Another account's id (admins only).
    pub account: Option<String>,
}

/// A page of usage records, newest first.
#[derive(Serialize, ToSchema)]
pub struct UsagePage {
    pub records: Vec<UsageView>,
    pub next: Option<String>,
}

fn parse_time(field: &str, text: &str, end_of_day: bool) -> Result<u64, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let bad = || {
        ApiError::bad_request(
            "invalid_query",
            format!("`{field}` must be a day like 2026-11-01 or an RFC 3339 time"),
        )
    };
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad());
    }
    let day = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| bad())?;
    let day = if end_of_day {
        day.next_day().ok_or_else(bad)?
    } else {
        day
    };
    let t = day.midnight().assume_utc();
    u64::try_from(t.unix_timestamp() * 1000).map_err(|_| bad())
}

/// Whose usage: the caller's, or for an admin the account named.
fn whose(caller: &Caller, asked: Option<&str>, directory: &Directory) -> Result<String, ApiError> {
    match asked {
        None => Ok(caller.account.clone()),
        Some(a) if a == caller.account => Ok(a.to_string()),
        Some(_) if caller.role != Role::Admin => Err(ApiError::forbidden(
            "admin_only",
            "only an admin can read another account's usage",
        )),
        Some(a) if directory.account(a).is_none() => Err(ApiError::not_found("no such account")),
        Some(a) => Ok(a.to_string()),
    }
}

fn csv_field(text: &str) -> String {
    // A leading = + - @ would make a spreadsheet run the cell as a formula.
    let safe = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if safe.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", safe.replace('"', "\"\""))
    } else {
        safe
    }
}

fn to_csv(records: &[UsageRecord]) -> String {
    let mut out = String::from(
        "time,key,endpoint,model,provider,byok,input_tokens,output_tokens,images,credits,status,latency_ms\n",
    );
    for r in records {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            rfc3339(r.at_ms),
            csv_field(r.key.as_deref().unwrap_or("")),
            csv_field(&r.endpoint),
            csv_field(&r.model),
            csv_field(&r.provider),
            r.byok,
            r.input_tokens,
            r.output_tokens,
            r.images,
            to_credits(r.credits),
            r.status,
            r.latency_ms
        ));
    }
    out
}

/// The caller's usage records, newest first, as JSON pages or one CSV file.
#[utoipa::path(tag = "usage", params(UsageQuery), responses((status = 200, body = UsagePage)))]
#[get("/api/usage")]
async fn list_usage(
    who: Identified,
    usage: web::Data<Usage>,
    directory: web::Data<Directory>,
    q: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let account = whose(&who.0, q.account.as_deref(), &directory)?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "`format` must be json or csv",
            ));
        }
    };
    let limit = if csv {
        q.limit.unwrap_or(100_000).clamp(1, 100_000)
    } else {
        q.limit.unwrap_or(100).clamp(1, 1000)
    };
    let filter = Filter {
        from_ms: q
            .from
            .as_deref()
            .map(|t| parse_time("from", t, false))
            .transpose()?,
        to_ms: q
            .to
            .as_deref()
            .map(|t| parse_time("to", t, true))
            .transpose()?,
        model: q.model.clone().filter(|m| !m.is_empty()),
        key: q.key.clone().filter(|k| !k.is_empty()),
    };
    let records = usage
        .list(&account, filter, q.before.as_deref(), limit)
        .await?;
    if csv {
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                "content-disposition",
                "attachment; filename=\"easel-usage.csv\"",
            ))
            .body(to_csv(&records)));
    }
    let next = (records.len() == limit)
        .then(|| records.last().map(|r| r.id.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(UsagePage {
        records: records.into_iter().map(Into::into).collect(),
        next,
    }))
}

/// Days of daily totals to show.
#[derive(Deserialize, IntoParams)]
pub struct DailyQuery {
    /// How many days back, today included (default 30, at most 366).
    pub days: Option<u32>,
    /// Another account's id (admins only).
    pub account: Option<String>,
}

/// One model's totals on one day (UTC).
#[derive(Serialize, ToSchema, Default)]
pub struct DailyTotal {
    pub day: String,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub images: u64,
    pub credits: f64,
}

/// Daily totals per model, oldest day first, for the usage chart.
#[utoipa::path(tag = "usage", params(DailyQuery), responses((status = 200, body = Vec<DailyTotal>)))]
#[get("/api/usage/daily")]
async fn daily_usage(
    who: Identified,
    usage: web::Data<Usage>,
    directory: web::Data<Directory>,
    q: web::Query<DailyQuery>,
) -> Result<web::Json<Vec<DailyTotal>>, ApiError> {
    let account = whose(&who.0, q.account.as_deref(), &directory)?;
    let days = u64::from(q.days.unwrap_or(30).clamp(1, 366));
    let today = now_ms() / 86_400_000;
    let from_ms = (today + 1 - days) * 86_400_000;
    let filter = Filter {
        from_ms: Some(from_ms),
        ..Filter::default()
    };
    let records = usage.list(&account, filter, None, usize::MAX).await?;
    let mut totals: BTreeMap<(u64, String), (DailyTotal, i64)> = BTreeMap::new();
    for r in records {
        let day = r.at_ms / 86_400_000;
        let (t, credits) = totals.entry((day, r.model.clone())).or_default();
        t.requests += 1;
        t.errors += u64::from(r.status >= 400);
        t.input_tokens += r.input_tokens;
        t.output_tokens += r.output_tokens;
        t.images += u64::from(r.images);
        *credits += r.credits;
    }
    let out = totals
        .into_iter()
        .map(|((day, model), (mut t, credits))| {
            t.day = rfc3339(day * 86_400_000)[..10].to_string();
            t.model = model;
            t.credits = to_credits(credits);
            t
        })
        .collect();
    Ok(web::Json(out))
}
