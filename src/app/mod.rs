//! The composition root: opens storage, unlocks the keyring, starts the HTTP server
//! and the admin socket, and handles signals (SIGTERM/SIGINT drain and stop, SIGHUP
//! reloads the config).

pub mod admin;
pub mod logging;

use crate::accounts::Accounts;
use crate::alt_text::AltText;
use crate::analytics::Analytics;
use crate::auth::{Directory, SessionTimes};
use crate::config::{self, Config, Live, Loaded};
use crate::control;
use crate::crypto::{self, KeySource, Keyring, MasterKey};
use crate::gateway::Gateway;
use crate::http::{self, Metrics, Shared};
use crate::keys::Keys;
use crate::ledger::Ledger;
use crate::library::Library;
use crate::local_model::LocalModel;
use crate::privacy::{Privacy, Scheduler};
use crate::providers::Providers;
use crate::skills::Skills;
use crate::store::{Clock, Migration, Store, StoreError, StoreOptions, WriteTx};
use crate::usage::Usage;
use actix_web::web;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub use admin::Admin;
pub use logging::LogHandle;

fn base_v1(tx: &WriteTx<'_>) -> Result<(), StoreError> {
    tx.set_meta("created_at", &crate::store::now_ms())
}

/// Sweeps find expired records by their `owner/time/…` keys now; the separate time
/// indexes (a row per record, holding the account and time) go with everything in them.
fn drop_time_indexes_v2(tx: &WriteTx<'_>) -> Result<(), StoreError> {
    for name in ["usage_by_time", "ledger_by_time", "alt_text_by_time"] {
        tx.drop_table(name)?;
    }
    Ok(())
}

/// How often last-use times of sessions and keys are saved, and ended sessions removed.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The services built at start-up and shared by the HTTP routes and admin commands.
#[derive(Clone)]
pub struct Services {
    pub directory: Arc<Directory>,
    pub accounts: Accounts,
    pub keys: Keys,
    pub ledger: Ledger,
    pub providers: Providers,
    pub usage: Usage,
    pub gateway: Gateway,
    pub analytics: Analytics,
    pub library: Library,
}

fn session_times(config: &Config) -> SessionTimes {
    SessionTimes {
        idle_ms: config.auth.session_idle.get().as_millis() as u64,
        max_ms: config.auth.session_max.get().as_millis() as u64,
    }
}

impl Services {
    /// Builds the services over an open store (nothing is loaded yet).
    pub fn new(store: &Store, keyring: &Keyring, live: Arc<Live>) -> Self {
        let directory = Arc::new(Directory::new(session_times(&live.get())));
        let ledger = Ledger::new(store.clone());
        let providers = Providers::new(store.clone(), keyring.clone(), live.clone());
        let analytics = Analytics::new(store.clone());
        Services {
            accounts: Accounts::new(
                store.clone(),
                keyring.clone(),
                directory.clone(),
                live.clone(),
            ),
            keys: Keys::new(store.clone(), directory.clone()),
            gateway: Gateway::new(
                providers.clone(),
                ledger.clone(),
                analytics.clone(),
                live.clone(),
            ),
            analytics,
            library: Library::new(store.clone(), keyring.clone(), live.clone()),
            usage: Usage::new(store.clone()),
            ledger,
            providers,
            directory,
        }
    }

    /// Fills the credential directory from storage.
    pub async fn load(&self) -> anyhow::Result<()> {
        self.accounts
            .load()
            .await
            .context("cannot load accounts and sessions")?;
        self.keys.load().await.context("cannot load API keys")?;
        self.ledger
            .load()
            .await
            .context("cannot load credit balances")?;
        self.providers
            .load()
            .await
            .context("cannot load provider connections")?;
        self.analytics
            .load()
            .await
            .context("cannot load analytics consent")?;
        Ok(())
    }

    /// Saves last-use times and removes ended sessions.
    pub async fn flush(&self) {
        if let Err(e) = self.accounts.flush().await {
            tracing::warn!(error = %e, "cannot save session activity");
        }
        if let Err(e) = self.keys.flush().await {
            tracing::warn!(error = %e, "cannot save API key activity");
        }
    }
}

/// Every schema migration of the program, in order. Capabilities add theirs here.
pub fn migrations() -> Vec<Migration> {
    vec![
        Migration {
            version: 1,
            description: "create the meta table",
            apply: base_v1,
        },
        Migration {
            version: 2,
            description: "drop the time indexes of usage, ledger and alt text records",
            apply: drop_time_indexes_v2,
        },
    ]
}

/// The schema version this build writes.
pub fn schema_version() -> u32 {
    crate::store::latest_version(&migrations())
}

/// Opens the store of a config (used by `serve` and by offline CLI commands).
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let dir = config.storage.data_dir.clone();
    let opts = StoreOptions {
        cache_bytes: (config.storage.cache_mib as usize) << 20,
        max_batch: config.storage.max_batch,
        background_delay: std::time::Duration::from_millis(config.storage.background_commit_ms),
        kept_out_of_backups: crate::privacy::kept_out_of_backups(),
    };
    tokio::task::spawn_blocking(move || Store::open(&dir, &opts, &migrations()))
        .await
        .context("the storage task failed")?
        .map_err(|e| anyhow::anyhow!(e))
}

/// Finds the master key and unlocks the keyring. A database that was never sealed gets
/// a new key file when `may_create` is set (first start of `easel serve`).
pub async fn unlock(config: &Config, store: &Store, may_create: bool) -> anyhow::Result<Keyring> {
    let key_file = &config.crypto.master_key_file;
    let found = crypto::load_master_key(key_file, |k| std::env::var(k).ok())?;
    let (key, source): (MasterKey, KeySource) = match found {
        Some(found) => found,
        None => {
            let sealed = Keyring::database_is_sealed(store).await?;
            if !may_create || sealed {
                let hint = if sealed {
                    "this data dir was sealed with a master key: put that key back (or restore it from your backup)"
                } else {
                    "run `easel serve` once (it creates the key) or `easel init`"
                };
                bail!(
                    "no master key found: looked in {}, $CREDENTIALS_DIRECTORY/master.key and {}; {hint}",
                    crypto::MASTER_KEY_ENV,
                    key_file.display()
                );
            }
            let key = crypto::create_key_file(key_file)?;
            tracing::warn!(
                key_file = %key_file.display(),
                "created a new master key; back this file up apart from the data dir: without it sealed data cannot be read"
            );
            (key, KeySource::File(key_file.clone()))
        }
    };
    let ring = Keyring::unlock(store, key, source).await?;
    tracing::info!(source = %ring.source(), key_id = %ring.master_id(), "master key loaded");
    Ok(ring)
}

/// A running server.
pub struct Running {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    control: tokio::task::JoinHandle<()>,
    socket: PathBuf,
    store: Store,
    live: Arc<Live>,
    shared: web::Data<Shared>,
    log: LogHandle,
    services: Services,
    alt_text: AltText,
    privacy: Privacy,
    scheduler: Scheduler,
    catch_up: Option<tokio::task::JoinHandle<()>>,
    flusher: tokio::task::JoinHandle<()>,
    mcp_sessions: crate::skills::mcp::Sessions,
}

/// Starts everything and returns once the server accepts connections.
pub async fn start(loaded: &Loaded, log: LogHandle) -> anyhow::Result<Running> {
    start_with_clock(loaded, log, Clock::default()).await
}

/// [`start`] with the clock the privacy engine's jobs go by (tests move it forward).
pub async fn start_with_clock(
    loaded: &Loaded,
    log: LogHandle,
    clock: Clock,
) -> anyhow::Result<Running> {
    let started = Instant::now();
    let config = &loaded.config;
    let store = open_store(config).await?;
    let keyring = unlock(config, &store, true).await?;

    let tls = match &config.server.tls {
        Some(t) => Some(http::tls_config(&t.cert_file, &t.key_file).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let listener = std::net::TcpListener::bind(config.server.listen)
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let shared = web::Data::new(Shared {
        metrics: metrics.clone(),
        max_body_bytes: config.server.max_body_bytes.into(),
        tls: tls.is_some(),
    });
    let live = Arc::new(Live::new(loaded));
    let services = Services::new(&store, &keyring, live.clone());
    services.load().await?;
    let local = LocalModel::new(live.clone());
    let alt_text = AltText::new(services.gateway.clone(), local.clone(), store.clone())
        .map_err(anyhow::Error::msg)?;
    if config.alt_text.model == "local" {
        local.preload();
    }
    let skills = Skills::new(
        store.clone(),
        services.gateway.clone(),
        alt_text.clone(),
        services.library.clone(),
        live.clone(),
    );
    let privacy = Privacy::new(crate::privacy::Parts {
        store: store.clone(),
        live: live.clone(),
        clock,
        accounts: services.accounts.clone(),
        keys: services.keys.clone(),
        ledger: services.ledger.clone(),
        providers: services.providers.clone(),
        analytics: services.analytics.clone(),
        library: services.library.clone(),
        keyring: keyring.clone(),
        metrics,
    });
    let mcp_sessions = crate::skills::mcp::Sessions::default();
    let routes = {
        let privacy = web::Data::new(privacy.clone());
        let alt_text = web::Data::new(alt_text.clone());
        let store = web::Data::new(store.clone());
        let keyring = web::Data::new(keyring.clone());
        let live = web::Data::from(live.clone());
        let started = web::Data::new(crate::system::Started(started));
        let directory = web::Data::from(services.directory.clone());
        let accounts = web::Data::new(services.accounts.clone());
        let keys = web::Data::new(services.keys.clone());
        let ledger = web::Data::new(services.ledger.clone());
        let providers = web::Data::new(services.providers.clone());
        let usage = web::Data::new(services.usage.clone());
        let gateway = web::Data::new(services.gateway.clone());
        let analytics = web::Data::new(services.analytics.clone());
        let library = web::Data::new(services.library.clone());
        let skills = web::Data::new(skills);
        let mcp_sessions = web::Data::new(mcp_sessions.clone());
        move |cfg: &mut utoipa_actix_web::service_config::ServiceConfig| {
            cfg.app_data(store.clone())
                .app_data(keyring.clone())
                .app_data(live.clone())
                .app_data(started.clone())
                .app_data(directory.clone())
                .app_data(accounts.clone())
                .app_data(keys.clone())
                .app_data(ledger.clone())
                .app_data(providers.clone())
                .app_data(usage.clone())
                .app_data(gateway.clone())
                .app_data(analytics.clone())
                .app_data(alt_text.clone())
                .app_data(privacy.clone())
                .app_data(library.clone())
                .app_data(skills.clone())
                .app_data(mcp_sessions.clone())
                // The router tries resources in order: the hot API paths go first.
                .configure(crate::gateway::routes)
                .configure(crate::alt_text::routes)
                .configure(crate::system::routes)
                .configure(crate::accounts::routes)
                .configure(crate::keys::routes)
                .configure(crate::audit::routes)
                .configure(crate::ledger::routes)
                .configure(crate::usage::routes)
                .configure(crate::providers::routes)
                .configure(crate::privacy::routes)
                .configure(crate::analytics::routes)
                .configure(crate::library::routes)
                .configure(crate::skills::routes)
                .configure(crate::web::routes);
        }
    };
    let server = http::start(
        http::Listen {
            listener,
            tls,
            workers: config.server.workers,
            shutdown_timeout: config.server.shutdown_timeout.get(),
        },
        shared.clone(),
        routes,
    )?;
    let handle = server.handle();
    let server = tokio::spawn(server);

    let socket = control::socket_path(&config.storage.data_dir);
    let admin = Admin {
        store: store.clone(),
        keyring: Some(keyring),
        services: Some(services.clone()),
    };
    let handler: control::Handler = Arc::new(move |req| {
        let admin = admin.clone();
        Box::pin(async move { admin.execute(req).await })
    });
    let control = control::serve(&socket, handler)
        .with_context(|| format!("cannot open the admin socket {}", socket.display()))?;

    let flusher = {
        let services = services.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                services.flush().await;
            }
        })
    };

    if let Err(e) = privacy.policy().await {
        tracing::warn!(error = %e, "cannot publish the privacy policy");
    }
    let scheduler = Scheduler::start(&privacy).await?;
    // Runs missed while Easel was stopped go first, off the start-up path.
    let catch_up = {
        let privacy = privacy.clone();
        tokio::spawn(async move { privacy.catch_up().await })
    };

    tracing::info!(
        %addr,
        tls = shared.tls,
        data_dir = %config.storage.data_dir.display(),
        config = %loaded.origin(),
        ms = started.elapsed().as_millis() as u64,
        "easel {} is ready",
        env!("CARGO_PKG_VERSION")
    );
    Ok(Running {
        addr,
        handle,
        server,
        control,
        socket,
        store,
        live,
        shared,
        log,
        services,
        alt_text,
        privacy,
        scheduler,
        catch_up: Some(catch_up),
        flusher,
        mcp_sessions,
    })
}

impl Running {
    /// The accounts and keys services (tests and embedders create the first admin here).
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The open store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits until the jobs missed while stopped have run (tests start from a quiet
    /// server this way; `serve` does not wait).
    pub async fn caught_up(&mut self) {
        if let Some(c) = self.catch_up.take() {
            let _ = c.await;
        }
    }

    /// The privacy engine (tests run its jobs and move its clock).
    pub fn privacy(&self) -> &Privacy {
        &self.privacy
    }

    /// Re-reads the config file. Live settings apply at once; settings that need a
    /// restart are logged and keep their running value; an invalid file is refused.
    pub fn reload(&self) -> bool {
        let loaded = match config::load_from(self.live.file.as_deref(), std::env::vars()) {
            Ok(l) => l,
            Err(e) => {
                self.shared
                    .metrics
                    .reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "config reload refused; the running config is kept");
                return false;
            }
        };
        let old = self.live.get();
        let mut new = loaded.config;
        for key in old.restart_only_changes(&new) {
            tracing::warn!(
                key,
                "changed in the config file, but takes effect only after a restart"
            );
        }
        new.server.listen = old.server.listen;
        new.server.workers = old.server.workers;
        new.server.tls = old.server.tls.clone();
        new.storage = old.storage.clone();
        new.crypto = old.crypto.clone();
        new.log.format = old.log.format;
        if let Err(e) = self.log.set_level(&new.log.level) {
            tracing::error!(error = %e, "cannot apply log.level");
        }
        self.shared
            .max_body_bytes
            .store(new.server.max_body_bytes, Ordering::Relaxed);
        self.services.directory.set_times(session_times(&new));
        if let Err(e) = self
            .alt_text
            .fetcher()
            .set_allowlist(&new.alt_text.url_allowlist)
        {
            tracing::error!(error = %e, "cannot apply alt_text.url_allowlist");
        }
        self.live.set(new);
        // Provider keys come from the environment and files: read them again.
        let providers = self.services.providers.clone();
        tokio::spawn(async move {
            if let Err(e) = providers.load().await {
                tracing::error!(error = %e, "cannot reload provider connections");
            }
        });
        self.shared
            .metrics
            .reloads_ok
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!("config reloaded");
        true
    }

    /// Stops accepting connections, lets in-flight requests finish, flushes the writer
    /// and closes the database.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: draining in-flight requests");
        // MCP event streams never end by themselves; end them so they do not hold up
        // the drain.
        self.mcp_sessions.close_all();
        self.handle.stop(true).await;
        let _ = self.server.await;
        self.control.abort();
        self.flusher.abort();
        self.privacy.stop();
        self.scheduler.stop().await;
        if let Some(c) = &self.catch_up {
            c.abort();
        }
        // A job part-way through finishes its current write and stops at the next
        // batch boundary; everything it does is idempotent, so the next run resumes.
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.privacy.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                "a privacy job was still running at shutdown; it resumes at the next start"
            );
        }
        // Charges of requests already answered go in before the database closes.
        self.services
            .gateway
            .drain(std::time::Duration::from_secs(10))
            .await;
        self.services.flush().await;
        let _ = std::fs::remove_file(&self.socket);
        self.store.close().await;
        tracing::info!("stopped; the database is closed");
        logging::flush();
    }
}

/// `easel serve`: runs until SIGTERM or SIGINT; SIGHUP reloads the config.
pub async fn serve(loaded: Loaded) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let log = logging::init(&loaded.config.log);
    // Handlers go in first: a SIGHUP during start-up must not kill the process.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let running = start(&loaded, log).await?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break; }
            _ = int.recv() => { tracing::info!("SIGINT received"); break; }
            _ = hup.recv() => { tracing::info!("SIGHUP received: reloading the config"); running.reload(); }
        }
    }
    running.shutdown().await;
    Ok(())
}

/// An absolute form of a path given on the command line.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::migrations;
    use crate::store::{Class, Reader, Store, StoreError, StoreOptions, Table, table_names};

    #[tokio::test]
    async fn version_2_drops_the_old_time_indexes_and_keeps_the_records() {
        const OLD: Table<Vec<u8>, u64> = Table::new("usage_by_time", Class::Usage);
        const KEPT: Table<Vec<u8>, u64> = Table::new("usage", Class::Usage);
        let dir = tempfile::tempdir().expect("tempdir");
        let all = migrations();
        let store = Store::open(dir.path(), &StoreOptions::default(), &all[..1]).expect("opens");
        store
            .write(|tx| {
                tx.insert(&OLD, &b"\0\0\0\0\0\0\0\x01a/x".to_vec(), &0)?;
                tx.insert(&KEPT, &b"a/x".to_vec(), &7)
            })
            .await
            .expect("writes");
        store.close().await;
        drop(store);

        let store = Store::open(dir.path(), &StoreOptions::default(), &all).expect("reopens");
        let names = table_names(&store).await.expect("lists");
        let (version, kept) = store
            .read(|r| {
                Ok::<_, StoreError>((
                    crate::store::version_of(r)?,
                    r.get(&KEPT, &b"a/x".to_vec())?,
                ))
            })
            .await
            .expect("reads");
        assert_eq!(version, 2);
        assert!(!names.iter().any(|n| n.ends_with("_by_time")), "{names:?}");
        assert!(names.iter().any(|n| n == "usage"), "{names:?}");
        assert_eq!(kept, Some(7));
    }
}
