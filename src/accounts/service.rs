//! The accounts service: sign-up, sign-in, sessions, profile and password changes,
//! invites and what admins do to users. Every change is one durable write that also
//! carries its audit entry; the credential directory is updated after the write.

use super::error::AccountError;
use super::model::{Account, Invite, StoredSession};
use super::passwords;
use super::throttle::{Limits, Throttle, Verdict};
use crate::audit;
use crate::auth::{ClientInfo, Directory, Role, SessionEntry, Status, csrf_token_for};
use crate::config::{Live, SignupMode};
use crate::crypto::{self, Keyring, PasswordParams, Secret};
use crate::store::{Class, Reader, Store, Table, WriteTx, now_ms};
use std::sync::Arc;

pub(super) const ACCOUNTS: Table<String, Account> = Table::new("accounts", Class::Account);
pub(super) const EMAILS: Table<String, String> = Table::new("account_emails", Class::Account);
/// Keyed by `account id / SHA-256 of the token` (see [`session_key`]).
pub(super) const SESSIONS: Table<Vec<u8>, StoredSession> =
    Table::new("sessions", Class::Credentials);
pub(super) const INVITES: Table<Vec<u8>, Invite> = Table::new("invites", Class::Credentials);

const MAX_NAME: usize = 100;

/// An account to create.
pub struct NewAccount {
    pub email: String,
    pub name: String,
    pub company: Option<String>,
    pub password: Secret<String>,
    pub role: Role,
    /// The person confirmed being 18 or older.
    pub adult: bool,
    pub must_change_password: bool,
}

/// A sign-up request from the web.
pub struct Signup {
    pub email: String,
    pub name: String,
    pub company: Option<String>,
    pub password: Secret<String>,
    pub adult: bool,
    pub invite: Option<String>,
}

/// A session just opened: the token goes into the cookie and nowhere else.
pub struct NewSession {
    pub token: Secret<String>,
    pub csrf_token: String,
    pub max_age_s: u64,
}

/// Who asked for a change, for the audit log.
#[derive(Clone, Debug)]
pub enum Actor {
    /// A signed-in account.
    Account(String),
    /// The `easel` command line on this machine.
    Cli,
    /// The person signing up.
    SelfService,
}

impl Actor {
    /// The acting account, when an account acted.
    pub fn id(&self) -> Option<&str> {
        match self {
            Actor::Account(id) => Some(id),
            _ => None,
        }
    }
    fn via(&self) -> &'static str {
        match self {
            Actor::Account(_) => "by an admin",
            Actor::Cli => "from the command line",
            Actor::SelfService => "by sign-up",
        }
    }
}

/// Changes an admin makes to a user.
#[derive(Default)]
pub struct AdminChange {
    pub role: Option<Role>,
    /// `Active` or `Disabled`.
    pub status: Option<Status>,
}

/// The accounts service; cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    keyring: Keyring,
    directory: Arc<Directory>,
    live: Arc<Live>,
    throttle: Throttle,
    dummy_hash: tokio::sync::OnceCell<String>,
}

/// Normalises an email: trimmed, lower-case, one `@` with text on both sides.
pub fn normalize_email(raw: &str) -> Result<String, AccountError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(AccountError::InvalidEmail(raw.chars().take(80).collect()))
    }
}

fn clean_name(raw: &str, field: &str, required: bool) -> Result<Option<String>, AccountError> {
    let v = raw.trim();
    if v.is_empty() {
        return if required {
            Err(AccountError::Invalid(format!("{field} must not be empty")))
        } else {
            Ok(None)
        };
    }
    if v.chars().count() > MAX_NAME || v.chars().any(char::is_control) {
        return Err(AccountError::Invalid(format!(
            "{field} must be at most {MAX_NAME} characters of plain text"
        )));
    }
    Ok(Some(v.to_string()))
}

fn check_password(password: &Secret<String>, email: &str) -> Result<(), AccountError> {
    match passwords::problem(password.expose(), email) {
        Some(p) => Err(AccountError::WeakPassword(p)),
        None => Ok(()),
    }
}

fn new_id() -> Result<String, AccountError> {
    Ok(crypto::random_hex::<8>()?)
}

/// Sessions are stored under `account id / token hash`, so an account's sessions are
/// one prefix scan.
fn session_prefix(account: &str) -> Vec<u8> {
    let mut k = account.as_bytes().to_vec();
    k.push(b'/');
    k
}

fn session_key(account: &str, token_hash: &[u8; 32]) -> Vec<u8> {
    let mut k = session_prefix(account);
    k.extend_from_slice(token_hash);
    k
}

/// The token hash at the end of a session key.
pub(super) fn token_hash_of(key: &[u8]) -> Option<[u8; 32]> {
    key.get(key.len().checked_sub(32)?..)?.try_into().ok()
}

/// Removes the stored sessions of an account (all, or the one with public id `only`)
/// inside a write; returns their token hashes for the directory.
pub(super) fn end_sessions(
    tx: &WriteTx<'_>,
    account: &str,
    only: Option<&str>,
) -> Result<Vec<[u8; 32]>, AccountError> {
    let mut ended = Vec::new();
    for (key, s) in tx.scan_prefix(&SESSIONS, &session_prefix(account), usize::MAX)? {
        if only.is_none_or(|id| id == s.id) {
            tx.remove(&SESSIONS, &key)?;
            ended.extend(token_hash_of(&key));
        }
    }
    Ok(ended)
}

/// A fresh session token, ready to store.
struct Opening {
    token: Secret<String>,
    hash: [u8; 32],
    stored: StoredSession,
}

impl Opening {
    /// The storage key of the session.
    fn key(&self) -> Vec<u8> {
        session_key(&self.stored.account, &self.hash)
    }
}

impl Inner {
    fn params(&self) -> PasswordParams {
        let a = &self.live.get().auth;
        PasswordParams {
            memory_kib: a.argon2_memory_kib,
            iterations: a.argon2_iterations,
            parallelism: a.argon2_parallelism,
        }
    }

    async fn hash(&self, password: &Secret<String>) -> Result<String, AccountError> {
        Ok(crypto::hash_password(Secret::new(password.expose().clone()), self.params()).await?)
    }

    async fn verify(&self, password: &Secret<String>, phc: String) -> Result<bool, AccountError> {
        Ok(crypto::verify_password(Secret::new(password.expose().clone()), phc).await?)
    }

    fn opening(&self, account: &str, now: u64) -> Result<Opening, AccountError> {
        let token = crypto::random_hex::<32>()?;
        let hash = crypto::sha256(token.as_bytes());
        let max_ms = self.directory.times().max_ms;
        Ok(Opening {
            token: Secret::new(token),
            hash,
            stored: StoredSession {
                id: new_id()?,
                account: account.to_string(),
                created_ms: now,
                expires_ms: now + max_ms,
                last_seen_ms: now,
            },
        })
    }

    /// Puts a session opened in a successful write into the directory.
    fn opened(&self, o: Opening) -> NewSession {
        let s = &o.stored;
        self.directory.put_session(SessionEntry::new(
            s.id.clone(),
            o.hash,
            s.account.clone(),
            s.created_ms,
            s.expires_ms,
            s.last_seen_ms,
        ));
        NewSession {
            csrf_token: csrf_token_for(o.token.expose()),
            max_age_s: (s.expires_ms - s.created_ms) / 1000,
            token: o.token,
        }
    }

    /// One change to a stored account in one write. `change` edits the account and may
    /// write more in the same transaction (audit entries, ended sessions, whose token
    /// hashes it returns); the directory follows once the write is durable.
    async fn update<F>(&self, id: &str, change: F) -> Result<Account, AccountError>
    where
        F: FnMut(&WriteTx<'_>, &mut Account, u64) -> Result<Vec<[u8; 32]>, AccountError>
            + Send
            + 'static,
    {
        self.update_at(id, now_ms(), change).await
    }

    async fn update_at<F>(&self, id: &str, now: u64, mut change: F) -> Result<Account, AccountError>
    where
        F: FnMut(&WriteTx<'_>, &mut Account, u64) -> Result<Vec<[u8; 32]>, AccountError>
            + Send
            + 'static,
    {
        let id = id.to_string();
        let (account, ended) = self
            .store
            .write(move |tx| {
                let mut a = tx
                    .get(&ACCOUNTS, &id)?
                    .ok_or(AccountError::NotFound("account"))?;
                let ended = change(tx, &mut a, now)?;
                tx.insert(&ACCOUNTS, &id, &a)?;
                Ok::<_, AccountError>((a, ended))
            })
            .await?;
        self.directory.remove_sessions(&ended);
        self.directory.put_account(&account.id, account.state());
        Ok(account)
    }

    async fn get(&self, id: &str) -> Result<Account, AccountError> {
        let id = id.to_string();
        self.store
            .read(move |r| {
                r.get(&ACCOUNTS, &id)?
                    .ok_or(AccountError::NotFound("account"))
            })
            .await
    }
}

impl Accounts {
    pub(super) async fn update_at<F>(
        &self,
        id: &str,
        now: u64,
        change: F,
    ) -> Result<Account, AccountError>
    where
        F: FnMut(&WriteTx<'_>, &mut Account, u64) -> Result<Vec<[u8; 32]>, AccountError>
            + Send
            + 'static,
    {
        self.inner.update_at(id, now, change).await
    }

    pub(super) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(super) fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    /// The service over one store; call [`Accounts::load`] before serving.
    pub fn new(store: Store, keyring: Keyring, directory: Arc<Directory>, live: Arc<Live>) -> Self {
        Accounts {
            inner: Arc::new(Inner {
                store,
                keyring,
                directory,
                live,
                throttle: Throttle::default(),
                dummy_hash: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// Fills the directory with every account and live session; ended sessions are
    /// removed from storage on the way.
    pub async fn load(&self) -> Result<(), AccountError> {
        let i = &self.inner;
        let (accounts, sessions) = i
            .store
            .read(|r| {
                let accounts = r.scan_all(&ACCOUNTS)?;
                let sessions = r.scan_all(&SESSIONS)?;
                Ok::<_, AccountError>((accounts, sessions))
            })
            .await?;
        for (_, a) in &accounts {
            i.directory.put_account(&a.id, a.state());
        }
        for (k, s) in sessions {
            if let Some(hash) = token_hash_of(&k) {
                i.directory.put_session(SessionEntry::new(
                    s.id,
                    hash,
                    s.account,
                    s.created_ms,
                    s.expires_ms,
                    s.last_seen_ms,
                ));
            }
        }
        self.flush().await?;
        Ok(())
    }

    /// Saves session last-use times and removes ended sessions (run every minute and
    /// at shutdown).
    pub async fn flush(&self) -> Result<(), AccountError> {
        let i = &self.inner;
        let dirty = i.directory.dirty_sessions();
        let ended = i.directory.ended_sessions(now_ms());
        if dirty.is_empty() && ended.is_empty() {
            return Ok(());
        }
        let gone = ended.clone();
        i.store
            .write(move |tx| {
                for (account, hash, seen) in &dirty {
                    let key = session_key(account, hash);
                    if let Some(mut s) = tx.get(&SESSIONS, &key)? {
                        s.last_seen_ms = *seen;
                        tx.insert(&SESSIONS, &key, &s)?;
                    }
                }
                for (account, hash) in &gone {
                    tx.remove(&SESSIONS, &session_key(account, hash))?;
                }
                Ok::<_, AccountError>(())
            })
            .await?;
        let ended: Vec<[u8; 32]> = ended.into_iter().map(|(_, h)| h).collect();
        i.directory.remove_sessions(&ended);
        Ok(())
    }

    /// Checks the password of `id` (a deletion request asks for it again).
    pub async fn confirm_password(
        &self,
        id: &str,
        password: &Secret<String>,
    ) -> Result<(), AccountError> {
        let a = self.inner.get(id).await?;
        if self.inner.verify(password, a.password_hash).await? {
            Ok(())
        } else {
            Err(AccountError::WrongPassword)
        }
    }

    /// One account by id.
    pub async fn get(&self, id: &str) -> Result<Account, AccountError> {
        self.inner.get(id).await
    }

    /// One account by email.
    pub async fn find_by_email(&self, email: &str) -> Result<Account, AccountError> {
        let email = normalize_email(email)?;
        self.inner
            .store
            .read(move |r| {
                let id = r
                    .get(&EMAILS, &email)?
                    .ok_or(AccountError::NotFound("account"))?;
                r.get(&ACCOUNTS, &id)?
                    .ok_or(AccountError::NotFound("account"))
            })
            .await
    }

    /// Every account, by id.
    pub async fn list(&self) -> Result<Vec<Account>, AccountError> {
        self.inner
            .store
            .read(|r| Ok(r.scan_all(&ACCOUNTS)?.into_iter().map(|(_, a)| a).collect()))
            .await
    }

    /// Creates an account (admin, CLI). Sign-up from the web goes through [`Accounts::signup`].
    pub async fn create(&self, new: NewAccount, actor: Actor) -> Result<Account, AccountError> {
        self.create_inner(new, actor, None, None)
            .await
            .map(|(a, _)| a)
    }

    async fn create_inner(
        &self,
        new: NewAccount,
        actor: Actor,
        invite_hash: Option<[u8; 32]>,
        session: Option<ClientInfo>,
    ) -> Result<(Account, Option<NewSession>), AccountError> {
        let i = &self.inner;
        let email = normalize_email(&new.email)?;
        let name = clean_name(&new.name, "name", true)?.unwrap_or_default();
        let company = match &new.company {
            Some(c) => clean_name(c, "company", false)?,
            None => None,
        };
        check_password(&new.password, &email)?;
        let now = now_ms();
        let account = Account {
            id: new_id()?,
            email,
            name,
            company,
            password_hash: i.hash(&new.password).await?,
            role: new.role,
            status: Status::Active,
            created_ms: now,
            adult_attested_ms: new.adult.then_some(now),
            must_change_password: new.must_change_password,
            password_changed_ms: now,
        };
        let opening = match &session {
            Some(_) => Some(i.opening(&account.id, now)?),
            None => None,
        };
        let stored_session = opening.as_ref().map(|o| (o.key(), o.stored.clone()));
        let keyring = i.keyring.clone();
        let created = i
            .store
            .write(move |tx| {
                let mut a = account.clone();
                if tx.get(&EMAILS, &a.email)?.is_some() {
                    return Err(AccountError::EmailTaken);
                }
                if let Some(h) = &invite_hash {
                    let key = h.to_vec();
                    let inv = tx
                        .get(&INVITES, &key)?
                        .filter(|inv| inv.expires_ms > now)
                        .ok_or(AccountError::InviteInvalid)?;
                    if inv.email.as_ref().is_some_and(|e| *e != a.email) {
                        return Err(AccountError::InviteEmailMismatch);
                    }
                    a.role = inv.role;
                    tx.remove(&INVITES, &key)?;
                }
                tx.insert(&ACCOUNTS, &a.id, &a)?;
                tx.insert(&EMAILS, &a.email, &a.id)?;
                keyring.create_data_key(tx, &a.id)?;
                let via = if invite_hash.is_some() {
                    "by sign-up with an invite"
                } else {
                    actor.via()
                };
                let role = match a.role {
                    Role::Admin => "admin",
                    Role::Member => "member",
                };
                audit::record(
                    tx,
                    now,
                    actor.id(),
                    "account_created",
                    Some(&a.id),
                    &format!("{role} account created {via}"),
                )?;
                if let (Some((key, s)), Some(client)) = (&stored_session, &session) {
                    tx.insert(&SESSIONS, key, s)?;
                    audit::record(
                        tx,
                        now,
                        Some(&a.id),
                        "sign_in",
                        Some(&a.id),
                        "signed in after sign-up",
                    )?;
                    audit::access(tx, now, client, "sign_up", Some(&a.id))?;
                }
                Ok(a)
            })
            .await?;
        i.directory.put_account(&created.id, created.state());
        let session = opening.map(|o| i.opened(o));
        tracing::info!(account = %created.id, "account created");
        Ok((created, session))
    }

    /// Sign-up from the web, as `[signup] mode` allows; signs the new person in.
    pub async fn signup(
        &self,
        s: Signup,
        client: ClientInfo,
    ) -> Result<(Account, NewSession), AccountError> {
        let mode = self.inner.live.get().signup.mode;
        let invite = s.invite.as_deref().map(str::trim).filter(|t| !t.is_empty());
        let invite_hash = match (mode, invite) {
            (SignupMode::Closed, _) => return Err(AccountError::SignupClosed),
            (SignupMode::Invite, None) => return Err(AccountError::InviteRequired),
            (_, Some(token)) => {
                let hash = crypto::sha256(token.as_bytes());
                let key = hash.to_vec();
                let now = now_ms();
                let found = self
                    .inner
                    .store
                    .read(move |r| r.get(&INVITES, &key))
                    .await?
                    .filter(|inv| inv.expires_ms > now);
                if found.is_none() {
                    return Err(AccountError::InviteInvalid);
                }
                Some(hash)
            }
            (SignupMode::Open, None) => None,
        };
        if !s.adult {
            return Err(AccountError::AdultRequired);
        }
        let new = NewAccount {
            email: s.email,
            name: s.name,
            company: s.company,
            password: s.password,
            role: Role::Member,
            adult: true,
            must_change_password: false,
        };
        let (account, session) = self
            .create_inner(new, Actor::SelfService, invite_hash, Some(client))
            .await?;
        let session = session.ok_or(AccountError::NotFound("session"))?;
        Ok((account, session))
    }

    async fn dummy_hash(&self) -> Result<String, AccountError> {
        let i = &self.inner;
        let hash = i
            .dummy_hash
            .get_or_try_init(|| async {
                let filler = Secret::new(crypto::random_hex::<16>()?);
                i.hash(&filler).await
            })
            .await?;
        Ok(hash.clone())
    }

    /// Signs a person in. An unknown email and a wrong password get the same answer
    /// after the same work (a real Argon2 verification either way). The flag says
    /// whether signing in cancelled a pending deletion request.
    pub async fn login(
        &self,
        email: &str,
        password: Secret<String>,
        client: ClientInfo,
    ) -> Result<(Account, NewSession, bool), AccountError> {
        let i = &self.inner;
        let cfg = i.live.get();
        let email = normalize_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
        let now = now_ms();
        let email_key = format!("email:{email}");
        let ip_key = format!("ip:{}", client.ip);
        for key in [&email_key, &ip_key] {
            match i.throttle.check(key, now) {
                Verdict::Go => {}
                Verdict::Wait(s) => return Err(AccountError::Throttled(s)),
                Verdict::Locked(s) => return Err(AccountError::Locked(s)),
            }
        }
        // The stand-in hash for unknown emails is made by the first sign-in of any
        // kind, so that first attempt costs the same whether the email exists or not
        // (and start-up does not pay for it).
        let stand_in = self.dummy_hash().await?;
        let lookup = email.clone();
        let account = i
            .store
            .read(move |r| match r.get(&EMAILS, &lookup)? {
                Some(id) => Ok::<_, AccountError>(r.get(&ACCOUNTS, &id)?),
                None => Ok(None),
            })
            .await?;
        let phc = match &account {
            Some(a) => a.password_hash.clone(),
            None => stand_in,
        };
        let verified = i.verify(&password, phc).await?;
        let account = match account {
            Some(a) if verified => a,
            found => {
                let lock_for = cfg.auth.lock_for.get().as_millis() as u64;
                // An address shared by many people (an office, a proxy) gets more room
                // before delays start than a single email does.
                let email_limits = Limits {
                    free: 3,
                    lock_after: cfg.auth.lock_after,
                    lock_for_ms: lock_for,
                };
                let ip_limits = Limits {
                    free: cfg.auth.ip_lock_after / 2,
                    lock_after: cfg.auth.ip_lock_after,
                    lock_for_ms: lock_for,
                };
                let email_locked = i.throttle.fail(&email_key, now, email_limits);
                let ip_locked = i.throttle.fail(&ip_key, now, ip_limits);
                let target = found.map(|a| a.id);
                let minutes = lock_for / 60_000;
                let (lock_after, ip_lock_after) = (cfg.auth.lock_after, cfg.auth.ip_lock_after);
                i.store
                    .write(move |tx| {
                        let target = target.as_deref();
                        audit::access(tx, now, &client, "sign_in_failed", target)?;
                        if email_locked {
                            let whose = if target.is_some() { "this account" } else { "an email without an account" };
                            audit::record(tx, now, None, "sign_in_locked", target, &format!("sign-in for {whose} locked for {minutes} min after {lock_after} failed attempts"))?;
                        }
                        if ip_locked {
                            audit::record(tx, now, None, "sign_in_locked", None, &format!("a client address locked for {minutes} min after {ip_lock_after} failed attempts (the address is in the access log)"))?;
                            audit::access(tx, now, &client, "address_locked", None)?;
                        }
                        Ok::<_, AccountError>(())
                    })
                    .await?;
                if email_locked || ip_locked {
                    tracing::warn!("sign-in locked after repeated failures");
                }
                return Err(AccountError::InvalidCredentials);
            }
        };
        // Signing in during the recovery window cancels a pending deletion.
        let cancels = match account.status {
            Status::Active => false,
            Status::Disabled => return Err(AccountError::Disabled),
            Status::PendingDeletion => true,
        };
        i.throttle.succeed(&email_key);
        let opening = i.opening(&account.id, now)?;
        let (key, stored) = (opening.key(), opening.stored.clone());
        let id = account.id.clone();
        let read = account;
        let account = i
            .store
            .write(move |tx| {
                let mut account = read.clone();
                // Only a cancellation changes the account, and it re-reads it inside
                // the write; an ordinary sign-in uses the one read above.
                if cancels {
                    account = tx
                        .get(&ACCOUNTS, &id)?
                        .ok_or(AccountError::NotFound("account"))?;
                    super::deletion::cancel_in(
                        tx,
                        &mut account,
                        now,
                        Some(&id),
                        "deletion cancelled by the person signing in",
                    )
                    .map_err(|_| AccountError::PendingDeletion)?;
                    tx.insert(&ACCOUNTS, &id, &account)?;
                }
                tx.insert(&SESSIONS, &key, &stored)?;
                audit::record(
                    tx,
                    now,
                    Some(&id),
                    "sign_in",
                    Some(&id),
                    "signed in with a password",
                )?;
                audit::access(tx, now, &client, "sign_in", Some(&id))?;
                Ok::<_, AccountError>(account)
            })
            .await?;
        if cancels {
            i.directory.put_account(&account.id, account.state());
        }
        Ok((account, i.opened(opening), cancels))
    }

    /// Ends sessions of an account: one by id, or all of them. Says how many ended.
    pub async fn revoke_sessions(
        &self,
        account: &str,
        only: Option<&str>,
        actor: Actor,
    ) -> Result<usize, AccountError> {
        let i = &self.inner;
        let owner = account.to_string();
        let only = only.map(str::to_string);
        let now = now_ms();
        let removed = i
            .store
            .write(move |tx| {
                let removed = end_sessions(tx, &owner, only.as_deref())?;
                if only.is_some() && removed.is_empty() {
                    return Err(AccountError::NotFound("session"));
                }
                let what = if only.is_some() {
                    "one session ended"
                } else {
                    "every session ended"
                };
                audit::record(tx, now, actor.id(), "sessions_revoked", Some(&owner), what)?;
                Ok(removed)
            })
            .await?;
        i.directory.remove_sessions(&removed);
        Ok(removed.len())
    }

    /// Ends the session with this token hash (sign-out).
    pub async fn sign_out(&self, account: &str, token_hash: [u8; 32]) -> Result<(), AccountError> {
        let i = &self.inner;
        let owner = account.to_string();
        let now = now_ms();
        i.store
            .write(move |tx| {
                tx.remove(&SESSIONS, &session_key(&owner, &token_hash))?;
                audit::record(
                    tx,
                    now,
                    Some(&owner),
                    "sign_out",
                    Some(&owner),
                    "signed out",
                )?;
                Ok::<_, AccountError>(())
            })
            .await?;
        i.directory.remove_sessions(&[token_hash]);
        Ok(())
    }

    /// Corrects name and company (`Some("")` clears the company).
    pub async fn update_profile(
        &self,
        id: &str,
        name: Option<String>,
        company: Option<String>,
    ) -> Result<Account, AccountError> {
        let name = match name {
            Some(n) => clean_name(&n, "name", true)?,
            None => None,
        };
        let company = match company {
            Some(c) => Some(clean_name(&c, "company", false)?),
            None => None,
        };
        self.inner
            .update(id, move |tx, a, now| {
                if let Some(n) = &name {
                    a.name = n.clone();
                }
                if let Some(c) = &company {
                    a.company = c.clone();
                }
                audit::record(
                    tx,
                    now,
                    Some(&a.id),
                    "profile_updated",
                    Some(&a.id),
                    "name or company corrected",
                )?;
                Ok(Vec::new())
            })
            .await
    }

    /// Changes the sign-in email; needs the current password.
    pub async fn change_email(
        &self,
        id: &str,
        new_email: &str,
        password: Secret<String>,
    ) -> Result<Account, AccountError> {
        let i = &self.inner;
        let email = normalize_email(new_email)?;
        let current = i.get(id).await?;
        if !i.verify(&password, current.password_hash.clone()).await? {
            return Err(AccountError::WrongPassword);
        }
        i.update(id, move |tx, a, now| {
            if a.email == email {
                return Ok(Vec::new());
            }
            if tx.get(&EMAILS, &email)?.is_some() {
                return Err(AccountError::EmailTaken);
            }
            tx.remove(&EMAILS, &a.email)?;
            tx.insert(&EMAILS, &email, &a.id)?;
            a.email = email.clone();
            audit::record(
                tx,
                now,
                Some(&a.id),
                "email_changed",
                Some(&a.id),
                "sign-in email changed",
            )?;
            Ok(Vec::new())
        })
        .await
    }

    /// Changes the password: every session ends, and the caller gets a fresh one.
    /// `adult` records the 18+ confirmation of an account an admin made.
    pub async fn change_password(
        &self,
        id: &str,
        current: Secret<String>,
        new: Secret<String>,
        adult: bool,
    ) -> Result<NewSession, AccountError> {
        let i = &self.inner;
        let account = i.get(id).await?;
        if !i.verify(&current, account.password_hash.clone()).await? {
            return Err(AccountError::WrongPassword);
        }
        if account.adult_attested_ms.is_none() && !adult {
            return Err(AccountError::AdultRequired);
        }
        check_password(&new, &account.email)?;
        if current.expose() == new.expose() {
            return Err(AccountError::WeakPassword(
                "the new password must differ from the current one".into(),
            ));
        }
        let hash = i.hash(&new).await?;
        let opening = i.opening(id, now_ms())?;
        let (key, stored) = (opening.key(), opening.stored.clone());
        i.update(id, move |tx, a, now| {
            a.password_hash = hash.clone();
            a.must_change_password = false;
            a.password_changed_ms = now;
            if a.adult_attested_ms.is_none() {
                a.adult_attested_ms = Some(now);
            }
            let ended = end_sessions(tx, &a.id, None)?;
            tx.insert(&SESSIONS, &key, &stored)?;
            audit::record(
                tx,
                now,
                Some(&a.id),
                "password_changed",
                Some(&a.id),
                "password changed; every session ended",
            )?;
            Ok(ended)
        })
        .await?;
        Ok(i.opened(opening))
    }

    /// Sets a new password chosen by an admin; its owner must change it at next sign-in,
    /// and every session of the account ends.
    pub async fn reset_password(
        &self,
        id: &str,
        password: Secret<String>,
        actor: Actor,
    ) -> Result<Account, AccountError> {
        let i = &self.inner;
        let account = i.get(id).await?;
        check_password(&password, &account.email)?;
        let hash = i.hash(&password).await?;
        i.update(id, move |tx, a, now| {
            a.password_hash = hash.clone();
            a.must_change_password = true;
            a.password_changed_ms = now;
            let detail = format!(
                "password reset {}; a change is due at next sign-in",
                actor.via()
            );
            audit::record(tx, now, actor.id(), "password_reset", Some(&a.id), &detail)?;
            end_sessions(tx, &a.id, None)
        })
        .await
    }

    /// Changes a user's role or status (admins). Easel always keeps one active admin;
    /// disabling ends the user's sessions.
    pub async fn admin_change(
        &self,
        id: &str,
        change: AdminChange,
        actor: Actor,
    ) -> Result<Account, AccountError> {
        let i = &self.inner;
        if change.status == Some(Status::PendingDeletion) {
            return Err(AccountError::Invalid(
                "status can be set to active or disabled; deletion is requested by the person"
                    .into(),
            ));
        }
        let admins = i.directory.active_admins();
        i.update(id, move |tx, a, now| {
            let before = a.clone();
            if before.status == Status::PendingDeletion && change.status.is_some() {
                return Err(AccountError::Invalid(
                    "this account has a pending deletion request: cancel the request instead"
                        .into(),
                ));
            }
            if let Some(r) = change.role {
                a.role = r;
            }
            if let Some(s) = change.status {
                a.status = s;
            }
            let was_admin = before.role == Role::Admin && before.status == Status::Active;
            let still_admin = a.role == Role::Admin && a.status == Status::Active;
            if was_admin && !still_admin && admins.iter().all(|x| *x == a.id) {
                return Err(AccountError::LastAdmin);
            }
            if before.role != a.role {
                let detail = format!("role {:?} -> {:?}", before.role, a.role).to_lowercase();
                audit::record(tx, now, actor.id(), "role_changed", Some(&a.id), &detail)?;
            }
            if before.status == a.status {
                return Ok(Vec::new());
            }
            let action = match a.status {
                Status::Disabled => "account_disabled",
                _ => "account_enabled",
            };
            audit::record(
                tx,
                now,
                actor.id(),
                action,
                Some(&a.id),
                "status changed by an admin",
            )?;
            if a.status == Status::Disabled {
                end_sessions(tx, &a.id, None)
            } else {
                Ok(Vec::new())
            }
        })
        .await
    }

    /// Makes a single-use invite link token; only its hash is stored.
    pub async fn create_invite(
        &self,
        actor: &str,
        email: Option<&str>,
        role: Role,
    ) -> Result<(Invite, Secret<String>), AccountError> {
        let i = &self.inner;
        let email = match email.map(str::trim).filter(|e| !e.is_empty()) {
            Some(e) => Some(normalize_email(e)?),
            None => None,
        };
        let token = crypto::random_hex::<32>()?;
        let key = crypto::sha256(token.as_bytes()).to_vec();
        let now = now_ms();
        let ttl = i.live.get().signup.invite_ttl.get().as_millis() as u64;
        let invite = Invite {
            id: new_id()?,
            created_by: actor.to_string(),
            email,
            role,
            created_ms: now,
            expires_ms: now + ttl,
        };
        let stored = invite.clone();
        let actor = actor.to_string();
        i.store
            .write(move |tx| {
                tx.insert(&INVITES, &key, &stored)?;
                audit::record(
                    tx,
                    now,
                    Some(&actor),
                    "invite_created",
                    Some(&stored.id),
                    "single-use invite link created",
                )?;
                Ok::<_, AccountError>(())
            })
            .await?;
        Ok((invite, Secret::new(token)))
    }

    /// Invites not yet used, newest first.
    pub async fn list_invites(&self) -> Result<Vec<Invite>, AccountError> {
        let mut all: Vec<Invite> = self
            .inner
            .store
            .read(|r| Ok::<_, AccountError>(r.scan_all(&INVITES)?))
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        all.sort_by_key(|x| std::cmp::Reverse(x.created_ms));
        Ok(all)
    }

    /// Withdraws an invite by id.
    pub async fn revoke_invite(&self, actor: &str, id: &str) -> Result<(), AccountError> {
        let id = id.to_string();
        let actor = actor.to_string();
        let now = now_ms();
        self.inner
            .store
            .write(move |tx| {
                let found = tx
                    .scan_all(&INVITES)?
                    .into_iter()
                    .find(|(_, inv)| inv.id == id)
                    .ok_or(AccountError::NotFound("invite"))?;
                tx.remove(&INVITES, &found.0)?;
                audit::record(
                    tx,
                    now,
                    Some(&actor),
                    "invite_revoked",
                    Some(&id),
                    "invite link withdrawn",
                )?;
                Ok(())
            })
            .await
    }

    /// Whether any account exists (the sign-in page explains the first step otherwise).
    pub fn any_account(&self) -> bool {
        self.inner.directory.account_count() > 0
    }
}
