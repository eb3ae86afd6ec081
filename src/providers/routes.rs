//! HTTP routes of provider connections: everyone manages their own (bring your own
//! key); admins manage the organisation's. Keys are write-only: lists show the last
//! four characters.

use super::service::{NewProvider, Providers, TestResult};
use super::upstream::{Connection, Owner};
use crate::auth::{AdminSession, Role, Session};
use crate::config::ProviderKind;
use crate::crypto::Secret;
use crate::http::{ApiError, rfc3339};
use crate::store::now_ms;
use actix_web::{HttpResponse, delete, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_providers)
        .service(add_personal)
        .service(remove_personal)
        .service(test_personal)
        .service(add_org)
        .service(remove_org)
        .service(test_org);
}

/// A provider connection as listed.
#[derive(Serialize, ToSchema)]
pub struct ProviderView {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// `config` (the config file), `organisation` (entered by an admin) or `personal`.
    pub source: &'static str,
    /// Whether a key is set.
    pub key_set: bool,
    /// The key's last four characters (admins see them for organisation connections).
    pub key_hint: Option<String>,
    pub privacy_options: bool,
    /// Failures in a row.
    pub failures: u32,
    /// Skipped by the circuit breaker until then.
    pub skipped_until: Option<String>,
}

fn view(c: &Connection, show_hint: bool) -> ProviderView {
    let (failures, open_until) = c.breaker.state();
    ProviderView {
        name: c.name.clone(),
        kind: c.kind,
        base_url: c.base_url.clone(),
        source: match c.owner {
            Owner::Config => "config",
            Owner::Organisation => "organisation",
            Owner::Account(_) => "personal",
        },
        key_set: c.has_key(),
        key_hint: if show_hint { c.key_hint() } else { None },
        privacy_options: c.privacy,
        failures,
        skipped_until: (open_until > now_ms()).then(|| rfc3339(open_until)),
    }
}

/// Both lists.
#[derive(Serialize, ToSchema)]
pub struct ProviderLists {
    pub organisation: Vec<ProviderView>,
    pub personal: Vec<ProviderView>,
}

fn sorted(mut v: Vec<ProviderView>) -> Vec<ProviderView> {
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// The organisation's connections and the caller's own.
#[utoipa::path(tag = "providers", responses((status = 200, body = ProviderLists)))]
#[get("/api/providers")]
async fn list_providers(
    s: Session,
    providers: web::Data<Providers>,
) -> Result<web::Json<ProviderLists>, ApiError> {
    let admin = s.0.role == Role::Admin;
    let organisation = providers
        .organisation()
        .values()
        .map(|c| view(c, admin))
        .collect();
    let personal = providers
        .personal(&s.0.account)
        .await?
        .values()
        .map(|c| view(c, true))
        .collect();
    Ok(web::Json(ProviderLists {
        organisation: sorted(organisation),
        personal: sorted(personal),
    }))
}

/// A connection to add. The key is sealed at once and never shown again.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProviderBody {
    /// Lowercase letters, digits, - and _. A personal connection named like a catalog
    /// route's provider (e.g. `openai`) serves that route with your key.
    pub name: String,
    pub kind: ProviderKind,
    /// Required for `openai-compatible`; otherwise the provider's own endpoint.
    pub base_url: Option<String>,
    #[schema(value_type = String)]
    pub api_key: Secret<String>,
    /// Send the provider's privacy options (default true).
    pub privacy_options: Option<bool>,
}

impl From<NewProviderBody> for NewProvider {
    fn from(b: NewProviderBody) -> Self {
        NewProvider {
            name: b.name,
            kind: b.kind,
            base_url: b.base_url.filter(|u| !u.trim().is_empty()),
            api_key: b.api_key,
            privacy_options: b.privacy_options.unwrap_or(true),
        }
    }
}

async fn added(
    providers: &Providers,
    account: Option<&str>,
    name: &str,
) -> Result<HttpResponse, ApiError> {
    let conn = match account {
        Some(a) => providers.personal(a).await?.get(name).cloned(),
        None => providers.organisation().get(name).cloned(),
    }
    .ok_or_else(|| ApiError::internal("a connection just added is missing"))?;
    Ok(HttpResponse::Created().json(view(&conn, true)))
}

/// Adds one of your own provider keys.
#[utoipa::path(tag = "providers", request_body = NewProviderBody, responses((status = 201, body = ProviderView), (status = 400), (status = 409)))]
#[post("/api/providers")]
async fn add_personal(
    s: Session,
    providers: web::Data<Providers>,
    body: web::Json<NewProviderBody>,
) -> Result<HttpResponse, ApiError> {
    let new: NewProvider = body.into_inner().into();
    let name = new.name.clone();
    providers.add(Some(&s.0.account), new).await?;
    added(&providers, Some(&s.0.account), &name).await
}

/// Removes one of your own provider keys.
#[utoipa::path(tag = "providers", responses((status = 204), (status = 404)))]
#[delete("/api/providers/{name}")]
async fn remove_personal(
    s: Session,
    providers: web::Data<Providers>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    providers.remove(Some(&s.0.account), &name).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Tries one of your own connections with a cheap call.
#[utoipa::path(tag = "providers", responses((status = 200, body = TestResult), (status = 404)))]
#[post("/api/providers/{name}/test")]
async fn test_personal(
    s: Session,
    providers: web::Data<Providers>,
    name: web::Path<String>,
) -> Result<web::Json<TestResult>, ApiError> {
    Ok(web::Json(providers.test(Some(&s.0.account), &name).await?))
}

/// Adds an organisation connection (admins).
#[utoipa::path(tag = "admin", request_body = NewProviderBody, responses((status = 201, body = ProviderView), (status = 400), (status = 409)))]
#[post("/api/admin/providers")]
async fn add_org(
    _admin: AdminSession,
    providers: web::Data<Providers>,
    body: web::Json<NewProviderBody>,
) -> Result<HttpResponse, ApiError> {
    let new: NewProvider = body.into_inner().into();
    let name = new.name.clone();
    providers.add(None, new).await?;
    added(&providers, None, &name).await
}

/// Removes an organisation connection entered in the UI (admins).
#[utoipa::path(tag = "admin", responses((status = 204), (status = 404), (status = 409)))]
#[delete("/api/admin/providers/{name}")]
async fn remove_org(
    _admin: AdminSession,
    providers: web::Data<Providers>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    providers.remove(None, &name).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Tries an organisation connection (admins).
#[utoipa::path(tag = "admin", responses((status = 200, body = TestResult), (status = 404)))]
#[post("/api/admin/providers/{name}/test")]
async fn test_org(
    _admin: AdminSession,
    providers: web::Data<Providers>,
    name: web::Path<String>,
) -> Result<web::Json<TestResult>, ApiError> {
    Ok(web::Json(providers.test(None, &name).await?))
}
