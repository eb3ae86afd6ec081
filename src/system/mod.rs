//! Health, readiness, metrics, the OpenAPI document, the public status summary and
//! the CSP violation report sink.

use crate::http::{ApiError, Shared};
use crate::store::{Store, StoreError};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, post, web};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Instant;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

/// When the process started, for uptime.
#[derive(Clone, Copy)]
pub struct Started(pub Instant);

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(healthz)
        .service(readyz)
        .service(metrics)
        .service(openapi)
        .service(status)
        .service(csp_report);
}

/// Liveness answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: &'static str,
}

/// Public summary shown on the status page.
#[derive(Serialize, ToSchema)]
pub struct Status {
    pub version: &'static str,
    pub ready: bool,
    pub uptime_seconds: u64,
}

/// The process is up.
#[utoipa::path(tag = "system", responses((status = 200, body = Health)))]
#[get("/healthz")]
async fn healthz() -> web::Json<Health> {
    web::Json(Health { status: "ok" })
}

/// Proves storage is open and writable by making one durable write.
pub async fn check_ready(store: &Store) -> Result<(), StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    store
        .write(move |tx| tx.set_meta("ready_probe", &now))
        .await
}

/// Storage is open and accepts durable writes.
#[utoipa::path(tag = "system", responses((status = 200, body = Health), (status = 503, description = "storage unavailable")))]
#[get("/readyz")]
async fn readyz(store: web::Data<Store>) -> Result<web::Json<Health>, ApiError> {
    check_ready(&store).await?;
    Ok(web::Json(Health { status: "ready" }))
}

/// Prometheus metrics.
#[utoipa::path(tag = "system", responses((status = 200, content_type = "text/plain", body = String)))]
#[get("/metrics")]
async fn metrics(
    shared: web::Data<Shared>,
    store: web::Data<Store>,
    started: web::Data<Started>,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(
            shared
                .metrics
                .render(store.writer_stats(), started.0.elapsed()),
        )
}

/// This OpenAPI 3.1 document.
#[utoipa::path(tag = "system", responses((status = 200, content_type = "application/json", body = Object)))]
#[get("/openapi.json")]
async fn openapi(doc: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(doc.get_ref())
}

/// Version and readiness, for the status page.
#[utoipa::path(tag = "system", responses((status = 200, body = Status)))]
#[get("/api/status")]
async fn status(store: web::Data<Store>, started: web::Data<Started>) -> web::Json<Status> {
    web::Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        ready: check_ready(&store).await.is_ok(),
        uptime_seconds: started.0.elapsed().as_secs(),
    })
}

/// Browsers report Content-Security-Policy violations here; they are counted and logged.
#[utoipa::path(tag = "system", request_body(content = Object, content_type = "application/csp-report"), responses((status = 204)))]
#[post("/api/csp-report")]
async fn csp_report(shared: web::Data<Shared>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let report: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("a CSP report must be JSON: {e}"))
    })?;
    let r = report.get("csp-report").unwrap_or(&report);
    let field = |k: &str| {
        r.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>()
    };
    shared
        .metrics
        .csp_violations
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(directive = %field("violated-directive"), blocked = %field("blocked-uri"), "a browser reported a Content-Security-Policy violation");
    Ok(HttpResponse::build(StatusCode::NO_CONTENT).finish())
}
