//! Request extractors: the one place where a request is tied to an account and where
//! roles, scopes and CSRF are checked. A handler states what it needs by the type it
//! takes ([`Session`], [`AnySession`], [`AdminSession`], [`AdminRead`], [`Caller`],
//! [`Scoped`]) and never checks credentials itself.

use super::{AccountState, AuthError, Directory, Role, Scope, ScopeSet};
use crate::config::Live;
use crate::crypto;
use crate::http::ApiError;
use actix_web::dev::Payload;
use actix_web::http::Method;
use actix_web::{FromRequest, HttpRequest, web::Data};
use std::future::{Ready, ready};
use std::marker::PhantomData;

/// The one cookie Easel sets: the session token (HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "easel_session";
/// The header the UI sends with every state-changing request.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How the caller proved who they are.
#[derive(Clone, Debug)]
pub enum Via {
    /// A browser session (cookie).
    Session {
        id: String,
        token_hash: [u8; 32],
        csrf_token: String,
    },
    /// An API key (bearer token), with its credit budget in whole credits.
    Key {
        id: String,
        scopes: ScopeSet,
        budget: Option<u64>,
    },
}

/// An authenticated caller: an active account, by session or API key.
#[derive(Clone, Debug)]
pub struct Caller {
    pub account: String,
    pub role: Role,
    pub via: Via,
    pub must_change_password: bool,
}

impl Caller {
    /// The API key's public id and credit budget when called with a key.
    pub fn key(&self) -> Option<(&str, Option<u64>)> {
        match &self.via {
            Via::Key { id, budget, .. } => Some((id, *budget)),
            Via::Session { .. } => None,
        }
    }

    /// The session's id when signed in through the browser.
    pub fn session_id(&self) -> Option<&str> {
        match &self.via {
            Via::Session { id, .. } => Some(id),
            Via::Key { .. } => None,
        }
    }

    /// Whether this caller may use `scope` (a session may use all but admin_read,
    /// which needs an admin).
    pub fn allows(&self, scope: Scope) -> Result<(), ApiError> {
        let ok = match &self.via {
            Via::Key { scopes, .. } => scopes.has(scope),
            Via::Session { .. } => scope != Scope::AdminRead || self.role == Role::Admin,
        };
        if ok {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "missing_scope",
                format!(
                    "this API key lacks the `{}` scope; create a key with it under API keys",
                    scope.name()
                ),
            ))
        }
    }
}

/// The CSRF token of a session: derived from the session token, so only a page that
/// can read Easel's own responses learns it.
pub fn csrf_token_for(session_token: &str) -> String {
    let mac = crypto::sha256(format!("easel/csrf/v1/{session_token}").as_bytes());
    crypto::hex(&mac[..16])
}

fn now_ms() -> u64 {
    crate::store::now_ms()
}

fn directory(req: &HttpRequest) -> Result<&Directory, ApiError> {
    req.app_data::<Data<Directory>>()
        .map(|d| d.get_ref())
        .ok_or_else(|| ApiError::internal("the credential directory is not registered"))
}

fn auth_error(e: AuthError) -> ApiError {
    let msg = e.to_string();
    match e {
        AuthError::Missing => ApiError::unauthorized(
            "unauthenticated",
            "sign in, or send an API key as `Authorization: Bearer easel_sk_...`",
        ),
        AuthError::BadKey | AuthError::MalformedKey => {
            ApiError::unauthorized("invalid_api_key", msg)
        }
        AuthError::ExpiredKey => ApiError::unauthorized("expired_api_key", msg),
        AuthError::BadSession => ApiError::unauthorized("session_ended", msg),
        AuthError::Disabled => ApiError::forbidden("account_disabled", msg),
        AuthError::RateLimited { retry_after_s, .. } => ApiError::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            msg,
        )
        .retry_after(retry_after_s),
    }
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?;
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn state_changing(req: &HttpRequest) -> bool {
    !matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn from_session(req: &HttpRequest) -> Result<Option<Caller>, ApiError> {
    let Some(cookie) = req.cookie(SESSION_COOKIE) else {
        return Ok(None);
    };
    let token = cookie.value();
    let (entry, state) = directory(req)?
        .authenticate_session(token, now_ms())
        .map_err(auth_error)?;
    let csrf_token = csrf_token_for(token);
    if state_changing(req) {
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !crypto::ct_eq(sent.as_bytes(), csrf_token.as_bytes()) {
            return Err(ApiError::forbidden(
                "csrf_failed",
                "this request did not carry the page's X-CSRF-Token header; reload Easel and try again",
            ));
        }
    }
    Ok(Some(caller(
        &entry.account,
        state,
        Via::Session {
            id: entry.id.clone(),
            token_hash: entry.token_hash,
            csrf_token,
        },
    )))
}

fn from_key(req: &HttpRequest) -> Result<Option<Caller>, ApiError> {
    let Some(token) = bearer(req) else {
        return Ok(None);
    };
    let (entry, state) = directory(req)?
        .authenticate_key(token, now_ms())
        .map_err(auth_error)?;
    Ok(Some(caller(
        &entry.key.account,
        state,
        Via::Key {
            id: entry.key.id.clone(),
            scopes: entry.key.scopes,
            budget: entry.key.credit_budget,
        },
    )))
}

fn caller(account: &str, state: AccountState, via: Via) -> Caller {
    Caller {
        account: account.to_string(),
        role: state.role,
        via,
        must_change_password: state.must_change_password,
    }
}

fn password_gate(c: Caller) -> Result<Caller, ApiError> {
    if c.must_change_password && c.session_id().is_some() {
        return Err(ApiError::forbidden(
            "password_change_required",
            "an admin reset your password: choose a new one under Account before going on",
        ));
    }
    Ok(c)
}

/// An API key in the `Authorization` header wins over a session cookie.
fn any_caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    if let Some(c) = from_key(req)? {
        return Ok(c);
    }
    from_session(req)?.ok_or_else(|| auth_error(AuthError::Missing))
}

fn session_only(req: &HttpRequest) -> Result<Caller, ApiError> {
    match from_session(req)? {
        Some(c) => Ok(c),
        None if bearer(req).is_some() => Err(ApiError::forbidden(
            "session_required",
            "this is managed from a signed-in browser session (or the `easel` CLI); API keys cannot change accounts or keys",
        )),
        None => Err(auth_error(AuthError::Missing)),
    }
}

macro_rules! extractor {
    ($t:ty, |$req:ident| $body:expr) => {
        impl FromRequest for $t {
            type Error = ApiError;
            type Future = Ready<Result<Self, ApiError>>;
            fn from_request($req: &HttpRequest, _: &mut Payload) -> Self::Future {
                ready($body)
            }
        }
    };
}

extractor!(Caller, |req| any_caller(req).and_then(password_gate));

/// Any valid credential, even a session that owes a password change (for reading
/// one's own account).
pub struct Identified(pub Caller);
extractor!(Identified, |req| any_caller(req).map(Identified));

/// A signed-in person in the browser, who owes no password change.
pub struct Session(pub Caller);
extractor!(Session, |req| session_only(req)
    .and_then(password_gate)
    .map(Session));

/// A signed-in person in the browser, even one who must change their password first
/// (for the account page, the password change and sign-out).
pub struct AnySession(pub Caller);
extractor!(AnySession, |req| session_only(req).map(AnySession));

fn admin(c: Caller) -> Result<Caller, ApiError> {
    if c.role == Role::Admin {
        Ok(c)
    } else {
        Err(ApiError::forbidden(
            "admin_only",
            "only an admin can do this; ask an admin of this Easel",
        ))
    }
}

/// An admin in the browser: the only caller who changes users, roles and invites.
pub struct AdminSession(pub Caller);
extractor!(AdminSession, |req| session_only(req)
    .and_then(password_gate)
    .and_then(admin)
    .map(AdminSession));

/// An admin in the browser, or an admin's API key with the `admin_read` scope.
pub struct AdminRead(pub Caller);
extractor!(AdminRead, |req| any_caller(req)
    .and_then(password_gate)
    .and_then(admin)
    .and_then(|c| c.allows(Scope::AdminRead).map(|()| c))
    .map(AdminRead));

/// Names the scope a [`Scoped`] extractor needs.
pub trait NeedScope {
    const SCOPE: Scope;
}

/// Scope markers for [`Scoped`].
pub mod need {
    use super::{NeedScope, Scope};
    macro_rules! need {
        ($($name:ident => $scope:expr),*) => {$(
            #[doc = concat!("Needs the `", stringify!($name), "` scope.")]
            pub struct $name;
            impl NeedScope for $name {
                const SCOPE: Scope = $scope;
            }
        )*};
    }
    need!(AltText => Scope::AltText, Chat => Scope::Chat, Images => Scope::Images, Skills => Scope::Skills, Assets => Scope::Assets);
}

/// A caller allowed to use one feature: a session, or a key with the scope `N` names.
pub struct Scoped<N: NeedScope>(pub Caller, PhantomData<N>);
impl<N: NeedScope> FromRequest for Scoped<N> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            any_caller(req)
                .and_then(password_gate)
                .and_then(|c| c.allows(N::SCOPE).map(|()| c))
                .map(|c| Scoped(c, PhantomData)),
        )
    }
}

/// The client's address and user agent, for the `access_log` class only.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub ip: String,
    pub user_agent: String,
}

fn client_info(req: &HttpRequest) -> ClientInfo {
    let header = req
        .app_data::<Data<Live>>()
        .map(|l| l.get().auth.client_ip_header.clone())
        .unwrap_or_default();
    let forwarded = (!header.is_empty())
        .then(|| req.headers().get(header.as_str()))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let ip = forwarded
        .or_else(|| req.peer_addr().map(|a| a.ip().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let user_agent = req
        .headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    ClientInfo { ip, user_agent }
}

extractor!(ClientInfo, |req| Ok(client_info(req)));
