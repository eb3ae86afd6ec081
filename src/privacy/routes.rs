//! HTTP routes of the privacy engine: what is held about me and my deletion request;
//! for admins, deletion requests and legal holds on users, the privacy report and
//! running a job now.

use super::jobs::{next_after, records, window_ms};
use super::{Job, JobRun, Privacy};
use crate::accounts::{Accounts, Actor, cleared_cookie};
use crate::auth::{AdminRead, AdminSession, Identified, Session};
use crate::config::Live;
use crate::crypto::Secret;
use crate::http::{ApiError, rfc3339};
use crate::store::{Class, Store};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.route("/privacy", web::get().to(policy_page))
        .service(policy_json)
        .service(my_data)
        .service(export_mine)
        .service(admin_export)
        .service(request_own_deletion)
        .service(admin_request_deletion)
        .service(admin_cancel_deletion)
        .service(set_hold)
        .service(lift_hold)
        .service(report)
        .service(run_job);
}

/// The privacy policy: the version in effect, one waiting for its notice period, and
/// every version with what changed. Anyone may read it.
#[utoipa::path(tag = "privacy", responses((status = 200, body = super::policy::PolicyState)))]
#[get("/api/privacy/policy")]
async fn policy_json(
    privacy: web::Data<Privacy>,
) -> Result<web::Json<super::policy::PolicyState>, ApiError> {
    Ok(web::Json(privacy.policy().await?))
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<u64>,
}

/// The policy as a page (`?version=N` for another version).
async fn policy_page(
    privacy: web::Data<Privacy>,
    q: web::Query<VersionQuery>,
) -> Result<HttpResponse, ApiError> {
    let state = privacy.policy().await?;
    let shown = match q.version {
        None => state.in_effect.clone(),
        Some(n) => state
            .versions
            .iter()
            .find(|v| v.number == n)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("there is no policy version {n}")))?,
    };
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .body(super::policy::render(&state, &shown, "/static/app.css")))
}

/// A deletion request as shown.
#[derive(Serialize, ToSchema)]
pub struct DeletionView {
    pub requested_at: String,
    /// When the account is erased unless the request is cancelled (by signing in, or
    /// by an admin) or held.
    pub erase_at: String,
    pub by_admin: bool,
}

impl From<&crate::accounts::DeletionRequest> for DeletionView {
    fn from(d: &crate::accounts::DeletionRequest) -> Self {
        DeletionView {
            requested_at: rfc3339(d.requested_ms),
            erase_at: rfc3339(d.deadline_ms),
            by_admin: d.by_admin,
        }
    }
}

/// How many records of one class are held about the caller.
#[derive(Serialize, ToSchema)]
pub struct HeldCount {
    pub class: Class,
    pub records: u64,
    /// The class's rule: a window such as `90d`, `while_active` or `until_deleted`.
    pub kept: String,
}

/// What Easel holds about the caller.
#[derive(Serialize, ToSchema)]
pub struct MyData {
    pub email: String,
    pub name: String,
    pub company: Option<String>,
    pub created_at: String,
    pub held: Vec<HeldCount>,
    pub deletion: Option<DeletionView>,
}

/// What Easel holds about the caller, per data class.
#[utoipa::path(tag = "privacy", responses((status = 200, body = MyData)))]
#[get("/api/privacy/me")]
async fn my_data(
    who: Identified,
    accounts: web::Data<Accounts>,
    store: web::Data<Store>,
    live: web::Data<Live>,
) -> Result<web::Json<MyData>, ApiError> {
    let me = who.0.account.clone();
    let account = accounts.get(&me).await?;
    let deletion = accounts.deletion_request(&me).await?;
    let owner = me.clone();
    let counts = store
        .read(move |r| {
            Ok::<_, ApiError>([
                (Class::Usage, crate::usage::count_of(r, &owner)?),
                (Class::AltText, crate::alt_text::count_of(r, &owner)?),
                (Class::Assets, crate::library::count_of(r, &owner)?),
                (Class::Skills, crate::skills::count_of(r, &owner)?),
                (Class::Billing, crate::ledger::count_of(r, &owner)?),
                (Class::ProviderKeys, crate::providers::count_of(r, &owner)?),
                (Class::Credentials, crate::keys::count_of(r, &owner)?),
            ])
        })
        .await?;
    let cfg = live.get();
    let held = counts
        .into_iter()
        .map(|(class, records)| HeldCount {
            class,
            records,
            kept: super::rule(&cfg.retention, class)
                .map(|r| r.to_string())
                .unwrap_or_default(),
        })
        .collect();
    Ok(web::Json(MyData {
        email: account.email,
        name: account.name,
        company: account.company,
        created_at: rfc3339(account.created_ms),
        held,
        deletion: deletion.as_ref().map(Into::into),
    }))
}

/// Answers with the export of `account` as a ZIP download, recording it in the audit log.
async fn export_response(
    store: &Store,
    privacy: &Privacy,
    actor: &str,
    account: &str,
) -> Result<HttpResponse, ApiError> {
    let now = privacy.clock().now_ms();
    super::export::record(store, Some(actor), account, now, "downloaded").await?;
    let library = &privacy.parts().library;
    Ok(HttpResponse::Ok()
        .content_type("application/zip")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}\"", super::export::file_name(now)),
        ))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .streaming(super::export::stream(
            store,
            library,
            account.to_string(),
            now,
        )))
}

/// Downloads everything Easel holds about the caller: one ZIP of JSON files
/// (`account.json`, `usage.jsonl`, `alt_text.jsonl`, `ledger.jsonl`, API-key metadata,
/// consent history, …), streamed as it is written. Browser sessions only.
#[utoipa::path(tag = "privacy", responses((status = 200, content_type = "application/zip", description = "the export")))]
#[get("/api/privacy/export")]
async fn export_mine(
    s: Session,
    store: web::Data<Store>,
    privacy: web::Data<Privacy>,
) -> Result<HttpResponse, ApiError> {
    let me = &s.0.account;
    export_response(&store, &privacy, me, me).await
}

/// Downloads everything Easel holds about a user (admins; an access request made on
/// their behalf). Recorded in the audit log.
#[utoipa::path(tag = "admin", responses((status = 200, content_type = "application/zip", description = "the export"), (status = 404)))]
#[get("/api/admin/users/{id}/export")]
async fn admin_export(
    a: AdminSession,
    accounts: web::Data<Accounts>,
    store: web::Data<Store>,
    privacy: web::Data<Privacy>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    accounts.get(&id).await?;
    export_response(&store, &privacy, &a.0.account, &id).await
}

/// The password, asked again before a deletion request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    #[schema(value_type = String)]
    pub password: Secret<String>,
}

/// Requests deletion of the caller's own account. It is disabled at once (every
/// session ends, API keys are revoked) and erased after the recovery window; signing
/// in again before then cancels the request.
#[utoipa::path(tag = "privacy", request_body = ConfirmBody, responses((status = 202, body = DeletionView), (status = 403, description = "wrong password")))]
#[post("/api/privacy/deletion")]
async fn request_own_deletion(
    req: HttpRequest,
    s: Session,
    privacy: web::Data<Privacy>,
    accounts: web::Data<Accounts>,
    body: web::Json<ConfirmBody>,
) -> Result<HttpResponse, ApiError> {
    let me = s.0.account.clone();
    accounts.confirm_password(&me, &body.password).await?;
    let request = privacy
        .request_deletion(&me, Actor::Account(me.clone()))
        .await?;
    Ok(HttpResponse::Accepted()
        .cookie(cleared_cookie(&req))
        .json(DeletionView::from(&request)))
}

/// Requests deletion of a user's account (admins): disabled at once, erased after
/// the recovery window unless cancelled.
#[utoipa::path(tag = "admin", responses((status = 202, body = DeletionView)))]
#[post("/api/admin/users/{id}/deletion")]
async fn admin_request_deletion(
    a: AdminSession,
    privacy: web::Data<Privacy>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let request = privacy
        .request_deletion(&id, Actor::Account(a.0.account.clone()))
        .await?;
    Ok(HttpResponse::Accepted().json(DeletionView::from(&request)))
}

/// Cancels a pending deletion request (admins); the account is active again.
#[utoipa::path(tag = "admin", responses((status = 204), (status = 404)))]
#[delete("/api/admin/users/{id}/deletion")]
async fn admin_cancel_deletion(
    a: AdminSession,
    accounts: web::Data<Accounts>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    accounts
        .cancel_deletion(&id, Actor::Account(a.0.account.clone()))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Why an account is held.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    /// Shown in the privacy report (1 to 500 characters).
    pub reason: String,
}

/// Puts a legal hold on an account (admins): its erasure waits until the hold is lifted.
#[utoipa::path(tag = "admin", request_body = HoldBody, responses((status = 204)))]
#[put("/api/admin/users/{id}/hold")]
async fn set_hold(
    a: AdminSession,
    accounts: web::Data<Accounts>,
    id: web::Path<String>,
    body: web::Json<HoldBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    accounts
        .set_hold(&id, Some(body.reason), Actor::Account(a.0.account.clone()))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Lifts a legal hold (admins).
#[utoipa::path(tag = "admin", responses((status = 204), (status = 404)))]
#[delete("/api/admin/users/{id}/hold")]
async fn lift_hold(
    a: AdminSession,
    accounts: web::Data<Accounts>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    accounts
        .set_hold(&id, None, Actor::Account(a.0.account.clone()))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// One data class in the report.
#[derive(Serialize, ToSchema)]
pub struct ClassReport {
    pub class: Class,
    /// The rule from `[retention]`.
    pub rule: String,
    pub records: u64,
    /// When the oldest record was written (classes kept for a window).
    pub oldest_at: Option<String>,
    pub oldest_age_seconds: Option<u64>,
    pub window_seconds: Option<u64>,
    /// The oldest record is inside its window (true for classes without one).
    pub within_window: bool,
}

/// One job in the report.
#[derive(Serialize, ToSchema)]
pub struct JobReport {
    pub job: Job,
    /// `None`: the job is off (backup without `[backup] dir`).
    pub schedule: Option<String>,
    pub last_run: Option<JobRun>,
    pub last_run_at: Option<String>,
    pub next_run_at: Option<String>,
}

/// A pending deletion in the report.
#[derive(Serialize, ToSchema)]
pub struct PendingDeletion {
    pub account: String,
    pub requested_at: String,
    pub erase_at: String,
    pub by_admin: bool,
    /// The legal hold's reason, when erasure waits for one.
    pub held: Option<String>,
}

/// A legal hold in the report.
#[derive(Serialize, ToSchema)]
pub struct HoldView {
    pub account: String,
    pub reason: String,
    pub by: Option<String>,
    pub since: String,
}

/// The proof that the policy holds.
#[derive(Serialize, ToSchema)]
pub struct Report {
    pub generated_at: String,
    pub classes: Vec<ClassReport>,
    pub jobs: Vec<JobReport>,
    pub deletions: Vec<PendingDeletion>,
    pub holds: Vec<HoldView>,
}

/// The privacy report (admins; keys need `admin_read`): per class the records held
/// and the age of the oldest against its window, the last and next run of each job,
/// pending deletion requests with their deadlines, and legal holds.
#[utoipa::path(tag = "admin", responses((status = 200, body = Report)))]
#[get("/api/admin/privacy/report")]
async fn report(
    _a: AdminRead,
    privacy: web::Data<Privacy>,
    accounts: web::Data<Accounts>,
    store: web::Data<Store>,
    live: web::Data<Live>,
) -> Result<web::Json<Report>, ApiError> {
    let cfg = live.get();
    let now = privacy.clock().now_ms();
    let stats = store
        .read(|r| {
            let mut out = Vec::new();
            for class in Class::PERSONAL {
                let oldest = super::expiring()
                    .into_iter()
                    .find(|(c, _)| *c == class)
                    .map(|(_, e)| e.oldest(r))
                    .transpose()?
                    .flatten();
                out.push((class, records(r, class)?, oldest));
            }
            Ok::<_, ApiError>(out)
        })
        .await?;
    let classes = stats
        .into_iter()
        .map(|(class, records, oldest)| {
            let rule = super::rule(&cfg.retention, class);
            let window = window_ms(rule);
            let age = oldest.map(|t| now.saturating_sub(t));
            ClassReport {
                class,
                rule: rule.map(|r| r.to_string()).unwrap_or_default(),
                records,
                oldest_at: oldest.map(rfc3339),
                oldest_age_seconds: age.map(|a| a / 1000),
                window_seconds: window.map(|w| w / 1000),
                within_window: match (age, window) {
                    (Some(a), Some(w)) => a <= w,
                    _ => true,
                },
            }
        })
        .collect();
    let runs = privacy.last_runs().await?;
    let jobs = Job::ALL
        .into_iter()
        .map(|job| {
            let schedule = job.schedule(&cfg);
            let last_run = runs.iter().find(|r| r.job == job).cloned();
            JobReport {
                last_run_at: last_run.as_ref().map(|r| rfc3339(r.started_ms)),
                next_run_at: schedule
                    .as_deref()
                    .and_then(|s| next_after(s, now))
                    .map(rfc3339),
                schedule,
                last_run,
                job,
            }
        })
        .collect();
    let holds = accounts.holds().await?;
    let deletions = accounts
        .deletion_requests()
        .await?
        .into_iter()
        .map(|d| PendingDeletion {
            held: holds
                .iter()
                .find(|h| h.account == d.account)
                .map(|h| h.reason.clone()),
            requested_at: rfc3339(d.requested_ms),
            erase_at: rfc3339(d.deadline_ms),
            by_admin: d.by_admin,
            account: d.account,
        })
        .collect();
    Ok(web::Json(Report {
        generated_at: rfc3339(now),
        classes,
        jobs,
        deletions,
        holds: holds
            .into_iter()
            .map(|h| HoldView {
                account: h.account,
                reason: h.reason,
                by: h.by,
                since: rfc3339(h.at_ms),
            })
            .collect(),
    }))
}

/// Runs a job now (admins): `retention_sweep`, `deletion_requests`, `expiry` or
/// `backup`. Answers with the run as recorded.
#[utoipa::path(tag = "admin", responses((status = 200, body = JobRun), (status = 404), (status = 409, description = "the job is running")))]
#[post("/api/admin/jobs/{job}/run")]
async fn run_job(
    _a: AdminSession,
    privacy: web::Data<Privacy>,
    job: web::Path<String>,
) -> Result<web::Json<JobRun>, ApiError> {
    let job = Job::parse(&job).ok_or_else(|| {
        ApiError::not_found("no such job: use retention_sweep, deletion_requests, expiry or backup")
    })?;
    Ok(web::Json(privacy.run(job).await?))
}
