//! The privacy engine: the policy of SPEC.md turned into behaviour. Every table
//! declares its data class ([`tables`] is the registry, and a test fails for a table
//! that is missing from it); scheduled jobs sweep records past their class's window,
//! expire sessions, keys and invites, erase accounts whose deletion deadline has
//! passed and rotate backups; the report shows per class what is held and how old it
//! is against its window.
//!
//! Jobs go by an injectable [`Clock`], so tests move time forward instead of waiting.

mod erase;
pub mod export;
mod jobs;
pub mod policy;
mod routes;

pub use jobs::{Job, JobRun, Scheduler};
pub use routes::routes;

use crate::accounts::{Accounts, Actor, DeletionRequest};
use crate::analytics::Analytics;
use crate::config::{Live, RetentionConfig, Rule};
use crate::crypto::Keyring;
use crate::http::{ApiError, Metrics};
use crate::keys::Keys;
use crate::ledger::Ledger;
use crate::providers::Providers;
use crate::store::{Carry, Class, Clock, Decl, Expiry, InBackups, Store};
use std::sync::Arc;

/// Every table of the program with its data class. A capability that adds a table
/// adds it here; `every_table_in_the_database_has_a_class` fails otherwise.
pub fn tables() -> Vec<Decl> {
    let mut t = vec![
        crate::store::META_TABLE,
        crate::store::burst::BURST.decl(),
        jobs::TABLES[0],
        erase::ERASED.decl(),
        policy::TABLES[0],
    ];
    t.extend(crate::accounts::TABLES);
    t.extend(crate::crypto::TABLES);
    t.extend(crate::keys::TABLES);
    t.extend(crate::providers::TABLES);
    t.extend(crate::usage::TABLES);
    t.extend(crate::ledger::TABLES);
    t.extend(crate::alt_text::TABLES);
    t.extend(crate::audit::TABLES);
    t.extend(crate::analytics::TABLES);
    t.extend(crate::library::TABLES);
    t.extend(crate::skills::TABLES);
    t
}

/// Tables a backup leaves out (data keys).
pub fn kept_out_of_backups() -> Vec<&'static str> {
    tables()
        .into_iter()
        .filter(|d| d.backups == InBackups::KeptOut)
        .map(|d| d.name)
        .collect()
}

/// What a restore takes over from the database it replaces: the data keys (never in a
/// backup) with the master key check they go with, and the record of erased accounts,
/// so a restored backup opens no erased person's sealed data and the next deletion run
/// erases again anyone it brought back.
pub fn restore_carry() -> Carry {
    Carry {
        tables: tables()
            .into_iter()
            .filter(|d| d.backups != InBackups::Yes)
            .map(|d| d.name)
            .collect(),
        meta: vec![crate::crypto::CHECK_META],
    }
}

/// The classes whose records expire by age, and how to find them by age.
pub fn expiring() -> [(Class, Expiry); 6] {
    [
        (Class::Usage, crate::usage::EXPIRY),
        (Class::AltText, crate::alt_text::EXPIRY),
        (Class::Billing, crate::ledger::EXPIRY),
        (Class::Audit, crate::audit::AUDIT_EXPIRY),
        (Class::AccessLog, crate::audit::ACCESS_EXPIRY),
        (Class::Analytics, crate::analytics::EXPIRY),
    ]
}

/// The rule `[retention]` sets for a class (`None` for [`Class::System`]).
pub fn rule(r: &RetentionConfig, class: Class) -> Option<Rule> {
    Some(match class {
        Class::Account => r.account,
        Class::Credentials => r.credentials,
        Class::ProviderKeys => r.provider_keys,
        Class::Usage => r.usage,
        Class::AccessLog => r.access_log,
        Class::AltText => r.alt_text,
        Class::Billing => r.billing,
        Class::Skills => r.skills,
        Class::Assets => r.assets,
        Class::Analytics => r.analytics,
        Class::Audit => r.audit,
        Class::System => return None,
    })
}

/// The services the engine acts through.
pub struct Parts {
    pub store: Store,
    pub live: Arc<Live>,
    pub clock: Clock,
    pub accounts: Accounts,
    pub keys: Keys,
    pub ledger: Ledger,
    pub providers: Providers,
    pub analytics: Analytics,
    pub library: crate::library::Library,
    pub keyring: Keyring,
    pub metrics: Arc<Metrics>,
}

/// The privacy engine; cheap to clone.
#[derive(Clone)]
pub struct Privacy {
    inner: Arc<Inner>,
}

/// See [`Privacy::downgrade`].
#[derive(Clone)]
struct WeakPrivacy(std::sync::Weak<Inner>);

impl WeakPrivacy {
    /// The engine, while it lives.
    fn upgrade(&self) -> Option<Privacy> {
        self.0.upgrade().map(|inner| Privacy { inner })
    }
}

struct Inner {
    p: Parts,
    /// One lock per job: a run that finds its job running is skipped.
    running: [tokio::sync::Mutex<()>; Job::ALL.len()],
    /// Set at shutdown: batch loops stop at their next boundary.
    stopping: std::sync::atomic::AtomicBool,
}

impl Privacy {
    /// The engine over the running services.
    pub fn new(parts: Parts) -> Self {
        Privacy {
            inner: Arc::new(Inner {
                p: parts,
                running: Default::default(),
                stopping: Default::default(),
            }),
        }
    }

    /// A handle that does not keep the engine (and the store) alive: the scheduler
    /// holds these, so a stopped server releases its database.
    fn downgrade(&self) -> WeakPrivacy {
        WeakPrivacy(Arc::downgrade(&self.inner))
    }

    fn parts(&self) -> &Parts {
        &self.inner.p
    }

    /// Asks running jobs to stop at their next batch boundary (shutdown).
    pub fn stop(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The clock jobs go by.
    pub fn clock(&self) -> &Clock {
        &self.inner.p.clock
    }

    /// The privacy policy now, publishing a new version first when the live config or
    /// the organisation's providers changed what it says.
    pub async fn policy(&self) -> Result<policy::PolicyState, ApiError> {
        let p = self.parts();
        let cfg = p.live.get();
        let facts = policy::facts(&cfg, &p.providers);
        let notice = cfg.privacy.notice_period.get().as_millis() as u64;
        Ok(policy::sync(&p.store, facts, notice, p.clock.now_ms()).await?)
    }

    /// Disables an account at once and schedules its erasure after the recovery
    /// window: sessions end and API keys are revoked in the same write; its provider
    /// keys can no longer be used because nothing of the account authenticates.
    pub async fn request_deletion(
        &self,
        account: &str,
        actor: Actor,
    ) -> Result<DeletionRequest, ApiError> {
        let p = self.parts();
        let admins = p.accounts.active_admins();
        if admins.len() == 1 && admins[0] == account {
            return Err(ApiError::conflict(
                "last_admin",
                "this is the only active admin: make another admin first, then request deletion",
            ));
        }
        let now = p.clock.now_ms();
        let window = p.live.get().retention.deletion_recovery.get().as_millis() as u64;
        let owner = account.to_string();
        let (_, request) = p
            .accounts
            .request_deletion(account, actor, now, now + window, move |tx| {
                crate::keys::revoke_all_in(tx, &owner).map(|_| ())
            })
            .await?;
        p.keys.forget_account(account);
        tracing::info!(deadline_ms = request.deadline_ms, "deletion requested");
        Ok(request)
    }
}
