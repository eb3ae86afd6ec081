//! Admin commands, executed the same way whether they arrive through the admin socket
//! of a running server or from the CLI on a stopped one.

use super::Services;
use crate::accounts::{Actor, NewAccount};
use crate::auth::Role;
use crate::control::{Reply, Request};
use crate::crypto::Keyring;
use crate::keys::NewKey;
use crate::store::Store;

/// Runs admin commands against one open store.
#[derive(Clone)]
pub struct Admin {
    pub store: Store,
    pub keyring: Option<Keyring>,
    /// Accounts and keys; present when the master key is loaded.
    pub services: Option<Services>,
}

impl Admin {
    /// Executes one command.
    pub async fn execute(&self, req: Request) -> Reply {
        match req {
            Request::Ping => Reply::ok(format!("easel {} is running", env!("CARGO_PKG_VERSION"))),
            Request::Backup { path } => match self.store.backup_to(&path).await {
                Ok(r) => {
                    tracing::info!(
                        tables = r.tables,
                        records = r.records,
                        "online backup written"
                    );
                    Reply::ok(format!(
                        "backup written to {} ({} tables, {} records, {} bytes)",
                        r.path.display(),
                        r.tables,
                        r.records,
                        r.bytes
                    ))
                }
                Err(e) => Reply::fail(format!("backup failed: {e}")),
            },
            // Only a running server receives this: the CLI restores a stopped one itself.
            Request::Restore { .. } => Reply::fail(
                "restore refused: the server is running and holds the database; stop it, then run `easel restore FILE` again",
            ),
            // Only a running server receives this: the CLI compacts a stopped one itself.
            Request::Compact => Reply::fail(
                "compaction refused: the server is running and holds the database; stop it, then run `easel compact` again",
            ),
            Request::RotateMaster => match &self.keyring {
                None => Reply::fail("no master key is loaded"),
                Some(ring) => match ring.rotate_master(&self.store).await {
                    Ok(r) => {
                        tracing::warn!(old = %r.old_key_id, new = %r.new_key_id, data_keys = r.data_keys, "master key rotated");
                        Reply::ok(format!(
                            "master key rotated: {} data keys re-sealed; key id {} -> {}. Back up the new key file now.",
                            r.data_keys, r.old_key_id, r.new_key_id
                        ))
                    }
                    Err(e) => Reply::fail(format!("rotation failed: {e}")),
                },
            },
            Request::UserCreate {
                email,
                name,
                admin,
                password,
            } => {
                let Some(s) = &self.services else {
                    return Reply::fail("no master key is loaded");
                };
                let name = name.unwrap_or_else(|| email.split('@').next().unwrap_or("").into());
                let role = if admin { Role::Admin } else { Role::Member };
                let new = NewAccount {
                    email,
                    name,
                    company: None,
                    password,
                    role,
                    adult: false,
                    must_change_password: false,
                };
                match s.accounts.create(new, Actor::Cli).await {
                    Ok(a) => Reply::ok(format!(
                        "created {} account {} (id {})",
                        if admin { "admin" } else { "member" },
                        a.email,
                        a.id
                    )),
                    Err(e) => Reply::fail(format!("cannot create the account: {e}")),
                }
            }
            Request::UserResetPassword { email, password } => {
                let Some(s) = &self.services else {
                    return Reply::fail("no master key is loaded");
                };
                let result = match s.accounts.find_by_email(&email).await {
                    Ok(a) => s.accounts.reset_password(&a.id, password, Actor::Cli).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(a) => Reply::ok(format!(
                        "password of {} reset; every session ended, and a new password is due at next sign-in",
                        a.email
                    )),
                    Err(e) => Reply::fail(format!("cannot reset the password: {e}")),
                }
            }
            Request::KeyCreate {
                email,
                name,
                expires_days,
            } => {
                let Some(s) = &self.services else {
                    return Reply::fail("no master key is loaded");
                };
                let account = match s.accounts.find_by_email(&email).await {
                    Ok(a) => a,
                    Err(e) => return Reply::fail(format!("cannot create the key: {e}")),
                };
                if expires_days == Some(0) {
                    return Reply::fail("--expires-days must be at least 1");
                }
                let new = NewKey {
                    name,
                    expires_ms: expires_days
                        .map(|d| crate::store::now_ms() + u64::from(d) * 86_400_000),
                    ..NewKey::default()
                };
                match s.keys.create(&account.id, account.role, new, None).await {
                    Ok((_, secret)) => Reply::ok(secret.expose().clone()),
                    Err(e) => Reply::fail(format!("cannot create the key: {e}")),
                }
            }
            Request::CreditsGrant {
                email,
                amount,
                note,
            } => {
                let Some(s) = &self.services else {
                    return Reply::fail("no master key is loaded");
                };
                let account = match s.accounts.find_by_email(&email).await {
                    Ok(a) => a,
                    Err(e) => return Reply::fail(format!("cannot grant credits: {e}")),
                };
                let micro = match crate::ledger::from_credits(amount) {
                    Ok(m) if m > 0 => m,
                    Ok(_) => return Reply::fail("--amount must be more than zero"),
                    Err(e) => return Reply::fail(format!("cannot grant credits: {e}")),
                };
                let posting = crate::ledger::Posting {
                    note: note.unwrap_or_else(|| "granted with the easel CLI".into()),
                    ..Default::default()
                };
                match s
                    .ledger
                    .post(&account.id, crate::ledger::EntryKind::Grant, micro, posting)
                    .await
                {
                    Ok(e) => Reply::ok(format!(
                        "granted {} credits to {}; the balance is now {}",
                        crate::ledger::to_credits(e.amount),
                        account.email,
                        crate::ledger::to_credits(e.balance_after)
                    )),
                    Err(e) => Reply::fail(format!("cannot grant credits: {e}")),
                }
            }
            Request::Export { email, path } => {
                let Some(s) = &self.services else {
                    return Reply::fail("no master key is loaded");
                };
                let account = match s.accounts.find_by_email(&email).await {
                    Ok(a) => a,
                    Err(e) => return Reply::fail(format!("cannot export: {e}")),
                };
                let now = crate::store::now_ms();
                let export = crate::privacy::export::record(
                    &self.store,
                    None,
                    &account.id,
                    now,
                    "written by the easel CLI",
                );
                if let Err(e) = export.await {
                    return Reply::fail(format!("cannot export: {e}"));
                }
                match crate::privacy::export::to_file(
                    &self.store,
                    &s.library,
                    account.id,
                    now,
                    &path,
                )
                .await
                {
                    Ok(summary) => {
                        let records: u64 = summary.files.iter().map(|(_, n)| n).sum();
                        Reply::ok(format!(
                            "exported {records} records of {} to {}",
                            account.email,
                            path.display()
                        ))
                    }
                    Err(e) => Reply::fail(format!("cannot export: {e}")),
                }
            }
            Request::LibraryVerify => {
                let Some(s) = &self.services else {
                    return Reply::fail("no master key is loaded");
                };
                match s.library.verify().await {
                    Ok(r) if r.problems.is_empty() => Reply::ok(format!(
                        "{} asset blobs read whole ({} bytes): every one opens and matches its address; {} files belong to no asset (the library_gc job removes them)",
                        r.checked, r.bytes, r.orphans
                    )),
                    Ok(r) => Reply::fail(format!(
                        "{} of {} asset blobs have problems:\n{}",
                        r.problems.len(),
                        r.checked,
                        r.problems.join("\n")
                    )),
                    Err(e) => Reply::fail(format!("cannot verify the library: {e}")),
                }
            }
        }
    }
}
