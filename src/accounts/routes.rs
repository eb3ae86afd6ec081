//! HTTP routes of accounts: sign-up, sign-in and out, the person's own account and
//! sessions, and the admin's users and invites pages.

use super::model::{Account, Invite};
use super::service::{Accounts, Actor, AdminChange, NewAccount, NewSession, Signup};
use crate::auth::{
    AdminRead, AdminSession, AnySession, ClientInfo, Directory, Identified, Role, SESSION_COOKIE,
    Session, Status, Via,
};
use crate::config::{Live, SignupMode};
use crate::crypto::Secret;
use crate::http::{ApiError, Shared, rfc3339};
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieAge};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(auth_options)
        .service(current_session)
        .service(sign_up)
        .service(login)
        .service(logout)
        .service(own_account)
        .service(update_me)
        .service(change_email)
        .service(change_password)
        .service(list_sessions)
        .service(revoke_session)
        .service(revoke_all_sessions)
        .service(list_users)
        .service(create_user)
        .service(update_user)
        .service(reset_user_password)
        .service(list_invites)
        .service(create_invite)
        .service(revoke_invite);
}

/// An account as its owner and admins see it (never the password hash).
#[derive(Serialize, ToSchema)]
pub struct AccountView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub company: Option<String>,
    pub role: Role,
    pub status: Status,
    pub created_at: String,
    /// When the person confirmed being 18 or older.
    pub adult_attested_at: Option<String>,
    pub must_change_password: bool,
}

impl From<Account> for AccountView {
    fn from(a: Account) -> Self {
        AccountView {
            id: a.id,
            email: a.email,
            name: a.name,
            company: a.company,
            role: a.role,
            status: a.status,
            created_at: rfc3339(a.created_ms),
            adult_attested_at: a.adult_attested_ms.map(rfc3339),
            must_change_password: a.must_change_password,
        }
    }
}

/// The signed-in account, and the token the page sends back as `X-CSRF-Token`.
#[derive(Serialize, ToSchema)]
pub struct SignedIn {
    pub account: AccountView,
    /// Present for browser sessions only.
    pub csrf_token: Option<String>,
    /// Set when this sign-in cancelled a pending deletion request.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deletion_cancelled: bool,
}

/// How a browser session is set: one cookie, HttpOnly, SameSite=Strict, Secure when
/// Easel is reached over TLS (directly or through a proxy named in `server.public_url`).
fn session_cookie(req: &HttpRequest, session: &NewSession) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, session.token.expose().clone())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure(req))
        .max_age(CookieAge::seconds(session.max_age_s as i64))
        .finish()
}

fn secure(req: &HttpRequest) -> bool {
    let tls = req.app_data::<web::Data<Shared>>().is_some_and(|s| s.tls);
    let public_https = req.app_data::<web::Data<Live>>().is_some_and(|l| {
        l.get()
            .server
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    });
    tls || public_https
}

/// The session cookie, removed (sign-out, and a deletion request, which ends every session).
pub fn cleared_cookie(req: &HttpRequest) -> Cookie<'static> {
    let mut c = Cookie::build(SESSION_COOKIE, "")
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure(req))
        .finish();
    c.make_removal();
    c
}

fn signed_in(
    req: &HttpRequest,
    status: StatusCode,
    account: Account,
    session: NewSession,
    deletion_cancelled: bool,
) -> HttpResponse {
    HttpResponse::build(status)
        .cookie(session_cookie(req, &session))
        .json(SignedIn {
            account: account.into(),
            csrf_token: Some(session.csrf_token),
            deletion_cancelled,
        })
}

/// What the sign-in page needs to know before anyone signs in.
#[derive(Serialize, ToSchema)]
pub struct AuthOptions {
    /// `open`, `invite` or `closed`.
    pub signup: String,
    /// No account exists yet: the first admin is made with `easel user create --admin`.
    pub setup_needed: bool,
}

/// Sign-up mode and whether the first admin still has to be created.
#[utoipa::path(tag = "accounts", responses((status = 200, body = AuthOptions)))]
#[get("/api/auth/options")]
async fn auth_options(
    live: web::Data<Live>,
    accounts: web::Data<Accounts>,
) -> web::Json<AuthOptions> {
    let signup = match live.get().signup.mode {
        SignupMode::Open => "open",
        SignupMode::Invite => "invite",
        SignupMode::Closed => "closed",
    };
    web::Json(AuthOptions {
        signup: signup.into(),
        setup_needed: !accounts.any_account(),
    })
}

/// Whether this browser is signed in (always 200, so a page can ask quietly).
#[derive(Serialize, ToSchema)]
pub struct SessionState {
    pub signed_in: bool,
    pub account: Option<AccountView>,
    pub csrf_token: Option<String>,
}

/// The browser's session, if any: what the web UI asks when it loads.
#[utoipa::path(tag = "accounts", responses((status = 200, body = SessionState)))]
#[get("/api/auth/session")]
async fn current_session(
    session: Option<AnySession>,
    accounts: web::Data<Accounts>,
) -> Result<web::Json<SessionState>, ApiError> {
    let Some(AnySession(caller)) = session else {
        return Ok(web::Json(SessionState {
            signed_in: false,
            account: None,
            csrf_token: None,
        }));
    };
    let account = accounts.get(&caller.account).await?;
    let csrf_token = match caller.via {
        Via::Session { csrf_token, .. } => Some(csrf_token),
        Via::Key { .. } => None,
    };
    Ok(web::Json(SessionState {
        signed_in: true,
        account: Some(account.into()),
        csrf_token,
    }))
}

/// A sign-up form.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupBody {
    pub email: String,
    pub name: String,
    pub company: Option<String>,
    #[schema(value_type = String)]
    pub password: Secret<String>,
    /// The person confirms being 18 or older.
    #[serde(default)]
    pub adult: bool,
    /// The token of an invite link.
    pub invite: Option<String>,
}

/// Creates an account (as `[signup] mode` allows) and signs it in.
#[utoipa::path(tag = "accounts", request_body = SignupBody, responses((status = 201, body = SignedIn), (status = 400), (status = 403), (status = 409)))]
#[post("/api/auth/signup")]
async fn sign_up(
    req: HttpRequest,
    accounts: web::Data<Accounts>,
    client: ClientInfo,
    body: web::Json<SignupBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let (account, session) = accounts
        .signup(
            Signup {
                email: b.email,
                name: b.name,
                company: b.company,
                password: b.password,
                adult: b.adult,
                invite: b.invite,
            },
            client,
        )
        .await?;
    Ok(signed_in(
        &req,
        StatusCode::CREATED,
        account,
        session,
        false,
    ))
}

/// A sign-in form.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub email: String,
    #[schema(value_type = String)]
    pub password: Secret<String>,
}

/// Signs in with email and password; sets the session cookie.
#[utoipa::path(tag = "accounts", request_body = LoginBody, responses((status = 200, body = SignedIn), (status = 401), (status = 429)))]
#[post("/api/auth/login")]
async fn login(
    req: HttpRequest,
    accounts: web::Data<Accounts>,
    client: ClientInfo,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let (account, session, cancelled) = accounts.login(&b.email, b.password, client).await?;
    Ok(signed_in(&req, StatusCode::OK, account, session, cancelled))
}

/// Ends this browser session.
#[utoipa::path(tag = "accounts", responses((status = 204)))]
#[post("/api/auth/logout")]
async fn logout(
    req: HttpRequest,
    s: AnySession,
    accounts: web::Data<Accounts>,
) -> Result<HttpResponse, ApiError> {
    if let Via::Session { token_hash, .. } = &s.0.via {
        accounts.sign_out(&s.0.account, *token_hash).await?;
    }
    Ok(HttpResponse::NoContent()
        .cookie(cleared_cookie(&req))
        .finish())
}

/// The caller's own account (a session, or any API key).
#[utoipa::path(tag = "accounts", responses((status = 200, body = SignedIn), (status = 401)))]
#[get("/api/account")]
async fn own_account(
    who: Identified,
    accounts: web::Data<Accounts>,
) -> Result<web::Json<SignedIn>, ApiError> {
    let account = accounts.get(&who.0.account).await?;
    let csrf_token = match &who.0.via {
        Via::Session { csrf_token, .. } => Some(csrf_token.clone()),
        Via::Key { .. } => None,
    };
    Ok(web::Json(SignedIn {
        account: account.into(),
        csrf_token,
        deletion_cancelled: false,
    }))
}

/// A correction of name and company.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    pub name: Option<String>,
    /// An empty text removes the company.
    pub company: Option<String>,
}

/// Corrects the caller's name and company.
#[utoipa::path(tag = "accounts", request_body = ProfileBody, responses((status = 200, body = AccountView)))]
#[patch("/api/account")]
async fn update_me(
    s: Session,
    accounts: web::Data<Accounts>,
    body: web::Json<ProfileBody>,
) -> Result<web::Json<AccountView>, ApiError> {
    let b = body.into_inner();
    let a = accounts
        .update_profile(&s.0.account, b.name, b.company)
        .await?;
    Ok(web::Json(a.into()))
}

/// A new sign-in email, confirmed with the password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailBody {
    pub email: String,
    #[schema(value_type = String)]
    pub password: Secret<String>,
}

/// Changes the caller's sign-in email (needs the current password).
#[utoipa::path(tag = "accounts", request_body = EmailBody, responses((status = 200, body = AccountView), (status = 403), (status = 409)))]
#[post("/api/account/email")]
async fn change_email(
    s: Session,
    accounts: web::Data<Accounts>,
    body: web::Json<EmailBody>,
) -> Result<web::Json<AccountView>, ApiError> {
    let b = body.into_inner();
    let a = accounts
        .change_email(&s.0.account, &b.email, b.password)
        .await?;
    Ok(web::Json(a.into()))
}

/// A password change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    #[schema(value_type = String)]
    pub current_password: Secret<String>,
    #[schema(value_type = String)]
    pub new_password: Secret<String>,
    /// Confirms being 18 or older (asked once of accounts an admin made).
    #[serde(default)]
    pub adult: bool,
}

/// The new CSRF token after a password change.
#[derive(Serialize, ToSchema)]
pub struct CsrfToken {
    pub csrf_token: String,
}

/// Changes the caller's password. Every session ends; this browser gets a new one.
#[utoipa::path(tag = "accounts", request_body = PasswordBody, responses((status = 200, body = CsrfToken), (status = 400), (status = 403)))]
#[post("/api/account/password")]
async fn change_password(
    req: HttpRequest,
    s: AnySession,
    accounts: web::Data<Accounts>,
    body: web::Json<PasswordBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let session = accounts
        .change_password(&s.0.account, b.current_password, b.new_password, b.adult)
        .await?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&req, &session))
        .json(CsrfToken {
            csrf_token: session.csrf_token,
        }))
}

/// A web session as listed to its owner.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub expires_at: String,
    /// This is the session making the request.
    pub current: bool,
}

/// The caller's browser sessions, newest first.
#[utoipa::path(tag = "accounts", responses((status = 200, body = Vec<SessionView>)))]
#[get("/api/account/sessions")]
async fn list_sessions(s: Session, directory: web::Data<Directory>) -> web::Json<Vec<SessionView>> {
    let current = s.0.session_id().unwrap_or_default();
    let idle_ms = directory.times().idle_ms;
    let list = directory
        .sessions_of(&s.0.account)
        .into_iter()
        .map(|e| SessionView {
            current: e.id == current,
            created_at: rfc3339(e.created_ms),
            last_seen_at: rfc3339(e.last_seen_ms()),
            expires_at: rfc3339(e.expires_ms.min(e.last_seen_ms() + idle_ms)),
            id: e.id.clone(),
        })
        .collect();
    web::Json(list)
}

/// Ends one of the caller's sessions.
#[utoipa::path(tag = "accounts", responses((status = 204), (status = 404)))]
#[delete("/api/account/sessions/{id}")]
async fn revoke_session(
    req: HttpRequest,
    s: Session,
    accounts: web::Data<Accounts>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let me = s.0.account.clone();
    accounts
        .revoke_sessions(&me, Some(&id), Actor::Account(me.clone()))
        .await?;
    let mut res = HttpResponse::NoContent();
    if s.0.session_id() == Some(id.as_str()) {
        res.cookie(cleared_cookie(&req));
    }
    Ok(res.finish())
}

/// Signs out everywhere: ends every session of the caller, this one included.
#[utoipa::path(tag = "accounts", responses((status = 204)))]
#[delete("/api/account/sessions")]
async fn revoke_all_sessions(
    req: HttpRequest,
    s: AnySession,
    accounts: web::Data<Accounts>,
) -> Result<HttpResponse, ApiError> {
    let me = s.0.account.clone();
    accounts
        .revoke_sessions(&me, None, Actor::Account(me.clone()))
        .await?;
    Ok(HttpResponse::NoContent()
        .cookie(cleared_cookie(&req))
        .finish())
}

/// Every account (admins; keys need `admin_read`).
#[utoipa::path(tag = "admin", responses((status = 200, body = Vec<AccountView>), (status = 403)))]
#[get("/api/admin/users")]
async fn list_users(
    _a: AdminRead,
    accounts: web::Data<Accounts>,
) -> Result<web::Json<Vec<AccountView>>, ApiError> {
    let mut all = accounts.list().await?;
    all.sort_by(|a, b| a.email.cmp(&b.email));
    Ok(web::Json(all.into_iter().map(Into::into).collect()))
}

/// An account made by an admin.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    pub email: String,
    pub name: String,
    pub company: Option<String>,
    #[serde(default = "member")]
    pub role: Role,
    /// A first password; its owner must change it at first sign-in.
    #[schema(value_type = String)]
    pub password: Secret<String>,
}

fn member() -> Role {
    Role::Member
}

/// Creates an account (admins).
#[utoipa::path(tag = "admin", request_body = NewUserBody, responses((status = 201, body = AccountView), (status = 409)))]
#[post("/api/admin/users")]
async fn create_user(
    a: AdminSession,
    accounts: web::Data<Accounts>,
    body: web::Json<NewUserBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let created = accounts
        .create(
            NewAccount {
                email: b.email,
                name: b.name,
                company: b.company,
                password: b.password,
                role: b.role,
                adult: false,
                must_change_password: true,
            },
            Actor::Account(a.0.account.clone()),
        )
        .await?;
    Ok(HttpResponse::Created().json(AccountView::from(created)))
}

/// A change to a user's role or status.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChangeBody {
    pub role: Option<Role>,
    /// `active` or `disabled`.
    pub status: Option<Status>,
}

/// Changes a user's role or status (admins). Disabling ends the user's sessions and
/// stops their keys at once.
#[utoipa::path(tag = "admin", request_body = UserChangeBody, responses((status = 200, body = AccountView), (status = 404), (status = 409)))]
#[patch("/api/admin/users/{id}")]
async fn update_user(
    a: AdminSession,
    accounts: web::Data<Accounts>,
    id: web::Path<String>,
    body: web::Json<UserChangeBody>,
) -> Result<web::Json<AccountView>, ApiError> {
    let b = body.into_inner();
    let updated = accounts
        .admin_change(
            &id,
            AdminChange {
                role: b.role,
                status: b.status,
            },
            Actor::Account(a.0.account.clone()),
        )
        .await?;
    Ok(web::Json(updated.into()))
}

/// A password set by an admin.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    #[schema(value_type = String)]
    pub password: Secret<String>,
}

/// Resets a user's password (admins); the user must change it at next sign-in.
#[utoipa::path(tag = "admin", request_body = ResetBody, responses((status = 200, body = AccountView), (status = 404)))]
#[post("/api/admin/users/{id}/password")]
async fn reset_user_password(
    a: AdminSession,
    accounts: web::Data<Accounts>,
    id: web::Path<String>,
    body: web::Json<ResetBody>,
) -> Result<web::Json<AccountView>, ApiError> {
    let updated = accounts
        .reset_password(
            &id,
            body.into_inner().password,
            Actor::Account(a.0.account.clone()),
        )
        .await?;
    Ok(web::Json(updated.into()))
}

/// An invite as listed to admins (the link itself is shown once, at creation).
#[derive(Serialize, ToSchema)]
pub struct InviteView {
    pub id: String,
    pub email: Option<String>,
    pub role: Role,
    pub created_at: String,
    pub expires_at: String,
    pub expired: bool,
}

impl From<Invite> for InviteView {
    fn from(i: Invite) -> Self {
        InviteView {
            expired: i.expires_ms <= crate::store::now_ms(),
            id: i.id,
            email: i.email,
            role: i.role,
            created_at: rfc3339(i.created_ms),
            expires_at: rfc3339(i.expires_ms),
        }
    }
}

/// Unused invites (admins; keys need `admin_read`).
#[utoipa::path(tag = "admin", responses((status = 200, body = Vec<InviteView>)))]
#[get("/api/admin/invites")]
async fn list_invites(
    _a: AdminRead,
    accounts: web::Data<Accounts>,
) -> Result<web::Json<Vec<InviteView>>, ApiError> {
    let all = accounts.list_invites().await?;
    Ok(web::Json(all.into_iter().map(Into::into).collect()))
}

/// What an invite is for.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    /// Only this email may use it (optional).
    pub email: Option<String>,
    #[serde(default = "member")]
    pub role: Role,
}

/// A new invite, with its link (shown this once).
#[derive(Serialize, ToSchema)]
pub struct NewInvite {
    pub invite: InviteView,
    pub token: String,
    pub url: String,
}

/// Creates a single-use invite link that expires after `[signup] invite_ttl` (admins).
#[utoipa::path(tag = "admin", request_body = InviteBody, responses((status = 201, body = NewInvite)))]
#[post("/api/admin/invites")]
async fn create_invite(
    req: HttpRequest,
    a: AdminSession,
    accounts: web::Data<Accounts>,
    live: web::Data<Live>,
    body: web::Json<InviteBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let (invite, token) = accounts
        .create_invite(&a.0.account, b.email.as_deref(), b.role)
        .await?;
    let base = match &live.get().server.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let info = req.connection_info();
            format!("{}://{}", info.scheme(), info.host())
        }
    };
    let url = format!("{base}/#/signup?invite={}", token.expose());
    Ok(HttpResponse::Created().json(NewInvite {
        invite: invite.into(),
        token: token.expose().clone(),
        url,
    }))
}

/// Withdraws an unused invite (admins).
#[utoipa::path(tag = "admin", responses((status = 204), (status = 404)))]
#[delete("/api/admin/invites/{id}")]
async fn revoke_invite(
    a: AdminSession,
    accounts: web::Data<Accounts>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    accounts.revoke_invite(&a.0.account, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}
