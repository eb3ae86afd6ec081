//! HTTP routes of analytics: a person's consent and its history; the counters for admins.

use super::{Analytics, ConsentEvent, Counter};
use crate::auth::{AdminRead, Identified, Session};
use crate::http::ApiError;
use crate::store::now_ms;
use actix_web::{get, put, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(get_consent)
        .service(put_consent)
        .service(counters);
}

/// A person's consent and every change of it.
#[derive(Serialize, ToSchema)]
pub struct ConsentView {
    /// Whether anonymous feature-use counting is allowed (off until the person turns it on).
    pub analytics: bool,
    /// Oldest first.
    pub history: Vec<ConsentEvent>,
}

async fn view(analytics: &Analytics, account: &str) -> Result<ConsentView, ApiError> {
    Ok(ConsentView {
        analytics: analytics.consents(account),
        history: analytics.history(account).await?,
    })
}

/// The caller's consent.
#[utoipa::path(tag = "privacy", responses((status = 200, body = ConsentView)))]
#[get("/api/privacy/consent")]
async fn get_consent(
    who: Identified,
    analytics: web::Data<Analytics>,
) -> Result<web::Json<ConsentView>, ApiError> {
    Ok(web::Json(view(&analytics, &who.0.account).await?))
}

/// A change of consent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentBody {
    pub analytics: bool,
}

/// Gives or withdraws the caller's analytics consent; it holds from the next request.
#[utoipa::path(tag = "privacy", request_body = ConsentBody, responses((status = 200, body = ConsentView)))]
#[put("/api/privacy/consent")]
async fn put_consent(
    s: Session,
    analytics: web::Data<Analytics>,
    body: web::Json<ConsentBody>,
) -> Result<web::Json<ConsentView>, ApiError> {
    analytics
        .set(&s.0.account, body.analytics, now_ms())
        .await?;
    Ok(web::Json(view(&analytics, &s.0.account).await?))
}

/// The anonymous feature-use counters, newest day first (admins).
#[utoipa::path(tag = "admin", responses((status = 200, body = Vec<Counter>)))]
#[get("/api/admin/analytics")]
async fn counters(
    _a: AdminRead,
    analytics: web::Data<Analytics>,
) -> Result<web::Json<Vec<Counter>>, ApiError> {
    Ok(web::Json(analytics.counters(1000).await?))
}
