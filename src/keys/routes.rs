//! HTTP routes of API keys: list, create (the secret is in this one answer only) and
//! revoke. Keys are managed from a browser session; the CLI makes them too.

use super::service::{ApiKey, Keys, NewKey};
use crate::auth::{KEY_PREFIX, Scope, Session};
use crate::http::{ApiError, rfc3339};
use crate::store::now_ms;
use actix_web::{HttpResponse, delete, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_keys)
        .service(create_key)
        .service(revoke_key);
}

/// An API key as listed (never its secret).
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// How the key starts, to recognise it.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub expired: bool,
    pub credit_budget: Option<u64>,
    pub rpm: Option<u32>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        KeyView {
            prefix: format!("{KEY_PREFIX}{}_", k.id),
            expired: k.expires_ms.is_some_and(|t| t <= now_ms()),
            id: k.id,
            name: k.name,
            scopes: k.scopes,
            created_at: rfc3339(k.created_ms),
            last_used_at: k.last_used_ms.map(rfc3339),
            expires_at: k.expires_ms.map(rfc3339),
            credit_budget: k.credit_budget,
            rpm: k.rpm,
        }
    }
}

/// The caller's API keys, newest first.
#[utoipa::path(tag = "keys", responses((status = 200, body = Vec<KeyView>)))]
#[get("/api/keys")]
async fn list_keys(s: Session, keys: web::Data<Keys>) -> Result<web::Json<Vec<KeyView>>, ApiError> {
    let list = keys.list(&s.0.account).await?;
    Ok(web::Json(list.into_iter().map(Into::into).collect()))
}

/// A key to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    pub name: String,
    /// Days until it expires (or give `expires_at`).
    pub expires_days: Option<u32>,
    /// When it expires, RFC 3339 (e.g. `2027-01-31T00:00:00Z`).
    pub expires_at: Option<String>,
    /// Leave out for every scope but `admin_read`.
    pub scopes: Option<Vec<Scope>>,
    /// Credits this key may spend in all.
    pub credit_budget: Option<u64>,
    /// Requests per minute allowed.
    pub rpm: Option<u32>,
}

/// A new key with its full text, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: KeyView,
    /// The whole key (`easel_sk_<id>_<secret>`); it cannot be shown again.
    pub secret: String,
}

/// Creates an API key for the caller.
#[utoipa::path(tag = "keys", request_body = NewKeyBody, responses((status = 201, body = CreatedKey), (status = 400)))]
#[post("/api/keys")]
async fn create_key(
    s: Session,
    keys: web::Data<Keys>,
    body: web::Json<NewKeyBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let expires_ms = match (b.expires_days, b.expires_at.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "give expires_days or expires_at, not both",
            ));
        }
        (Some(0), None) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "expires_days must be at least 1 (leave it out for a key that does not expire)",
            ));
        }
        (Some(d), None) => Some(now_ms() + u64::from(d) * 86_400_000),
        (None, Some(at)) => {
            let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid_field",
                        format!("expires_at `{at}` is not an RFC 3339 time ({e})"),
                    )
                })?;
            Some(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        }
        (None, None) => None,
    };
    let (key, secret) = keys
        .create(
            &s.0.account,
            s.0.role,
            NewKey {
                name: b.name,
                expires_ms,
                scopes: b.scopes,
                credit_budget: b.credit_budget,
                rpm: b.rpm,
            },
            None,
        )
        .await?;
    Ok(HttpResponse::Created().json(CreatedKey {
        key: key.into(),
        secret: secret.expose().clone(),
    }))
}

/// Revokes one of the caller's keys; it stops working at once.
#[utoipa::path(tag = "keys", responses((status = 204), (status = 404)))]
#[delete("/api/keys/{id}")]
async fn revoke_key(
    s: Session,
    keys: web::Data<Keys>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    keys.revoke(&s.0.account, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}
