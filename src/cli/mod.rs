//! The admin command line (SPEC.md "The admin interface"). Commands that touch data
//! go through the admin socket when the server runs, and open the database otherwise;
//! each says which it used.

use crate::app::{self, Admin};
use crate::config::{self, Loaded};
use crate::control::{self, Reply, Request};
use crate::store::{self, Store};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use zeroize::Zeroize;

/// The config template written by `easel init`: the documented example, with its
/// sample providers and models left commented out.
const EXAMPLE: &str = include_str!("../../config.example.toml");
const SAMPLE_START: &str = "# >>> sample providers and models";
const SAMPLE_END: &str = "# <<< end of samples";

#[derive(Parser)]
#[command(
    name = "easel",
    version,
    about = "Self-hosted AI image gateway",
    propagate_version = true
)]
struct Cli {
    /// Config file (default: ./easel.toml if present, else built-in defaults).
    #[arg(long, global = true, env = "EASEL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a config file, a master key (mode 0600) and a data dir; never overwrites.
    Init {
        /// Folder to create them in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run the server.
    Serve,
    /// Check the config.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Write an online backup of the database to FILE.
    Backup { file: PathBuf },
    /// Replace the database with a backup (the server must be stopped).
    Restore { file: PathBuf },
    /// Rewrite the database into a fresh file (the server must be stopped): gives back
    /// space and leaves no bytes of erased records in the file.
    Compact,
    /// Print the version.
    Version,
    /// Manage the master key.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Manage credits.
    #[command(subcommand)]
    Credits(CreditsCmd),
    /// Write everything Easel holds about a person to a new ZIP file (an access request).
    Export {
        #[arg(long)]
        email: String,
        /// The file to create (never overwritten).
        #[arg(long, value_name = "FILE.zip")]
        out: PathBuf,
    },
    /// Download and list local captioning models.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Look after the asset library.
    #[command(subcommand)]
    Library(LibraryCmd),
    /// Tools for tests and benchmarks.
    #[command(subcommand, hide = true)]
    Debug(DebugCmd),
}

#[derive(Subcommand)]
enum LibraryCmd {
    /// Read every stored asset file: each must open with its owner's key and match its
    /// address. Exits non-zero when anything is wrong.
    Verify,
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Download a BLIP captioning model (blip-base or blip-large) from the model hub,
    /// checking every file's checksum.
    Pull {
        /// blip-base or blip-large.
        name: String,
        /// Convert the weights to quantised GGUF (q4k): smaller and faster on a CPU.
        #[arg(long)]
        quantized: bool,
        /// Folder to put it in (default: beside [local_model] dir, named NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the models in the models folder; * marks the one [local_model] dir names.
    List,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config and print the effective settings.
    Check {
        /// The file to check (default: --config, then ./easel.toml).
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Re-seal every data key under a new master key and replace the key file.
    RotateMaster,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account (the first admin is made this way).
    Create {
        #[arg(long)]
        email: String,
        /// Display name (default: the part of the email before @).
        #[arg(long)]
        name: Option<String>,
        /// Make the account an admin.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Set a new password; its owner must change it at next sign-in.
    ResetPassword {
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create an API key for an account and print it, alone, on standard output.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// Days until the key expires (default: never).
        #[arg(long)]
        expires_days: Option<u32>,
    },
}

#[derive(Subcommand)]
enum CreditsCmd {
    /// Add credits to an account's balance (a ledger entry of kind `grant`).
    Grant {
        #[arg(long)]
        email: String,
        /// Credits to add; fractions are allowed.
        #[arg(long)]
        amount: f64,
        /// Why, for the ledger and the audit log.
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Subcommand)]
enum DebugCmd {
    /// Write records from concurrent writers, printing `ack N` once each is durable.
    WriteBurst {
        #[arg(long, default_value_t = 16)]
        writers: usize,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
}

/// A failure with the exit status it should give: 2 for config and usage errors.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure { code: 1, error }
    }
}

impl From<config::ConfigError> for Failure {
    fn from(e: config::ConfigError) -> Self {
        Failure {
            code: 2,
            error: e.into(),
        }
    }
}

/// Runs the command line and returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = run(cli);
    crate::app::logging::flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Init { dir } => init(&dir).map_err(Failure::from),
        Command::Version => {
            println!(
                "easel {} (database schema {})",
                env!("CARGO_PKG_VERSION"),
                app::schema_version()
            );
            Ok(())
        }
        Command::Config(ConfigCmd::Check { file }) => check(file.or(cli.config).as_deref()),
        Command::Serve => {
            let loaded = config::load(cli.config.as_deref())?;
            actix_web::rt::System::new()
                .block_on(app::serve(loaded))
                .map_err(Failure::from)
        }
        Command::Backup { file } => {
            let loaded = config::load(cli.config.as_deref())?;
            let path = app::absolute(&file);
            let rt = runtime()?;
            rt.block_on(admin_command(&loaded, Request::Backup { path }, false))
        }
        Command::Restore { file } => {
            let loaded = config::load(cli.config.as_deref())?;
            let path = app::absolute(&file);
            runtime()?.block_on(restore(&loaded, &path))
        }
        Command::Compact => {
            let loaded = config::load(cli.config.as_deref())?;
            runtime()?.block_on(compact(&loaded))
        }
        Command::Keys(KeysCmd::RotateMaster) => {
            let loaded = config::load(cli.config.as_deref())?;
            runtime()?.block_on(admin_command(&loaded, Request::RotateMaster, true))
        }
        Command::User(UserCmd::Create {
            email,
            name,
            admin,
            password_stdin: _,
        }) => {
            let loaded = config::load(cli.config.as_deref())?;
            let password = read_password()?;
            let req = Request::UserCreate {
                email,
                name,
                admin,
                password,
            };
            runtime()?.block_on(admin_command(&loaded, req, true))
        }
        Command::User(UserCmd::ResetPassword {
            email,
            password_stdin: _,
        }) => {
            let loaded = config::load(cli.config.as_deref())?;
            let password = read_password()?;
            let req = Request::UserResetPassword { email, password };
            runtime()?.block_on(admin_command(&loaded, req, true))
        }
        Command::Key(KeyCmd::Create {
            email,
            name,
            expires_days,
        }) => {
            let loaded = config::load(cli.config.as_deref())?;
            let req = Request::KeyCreate {
                email,
                name,
                expires_days,
            };
            runtime()?.block_on(admin_command(&loaded, req, true))
        }
        Command::Credits(CreditsCmd::Grant {
            email,
            amount,
            note,
        }) => {
            let loaded = config::load(cli.config.as_deref())?;
            let req = Request::CreditsGrant {
                email,
                amount,
                note,
            };
            runtime()?.block_on(admin_command(&loaded, req, true))
        }
        Command::Export { email, out } => {
            let loaded = config::load(cli.config.as_deref())?;
            let path = app::absolute(&out);
            runtime()?.block_on(admin_command(
                &loaded,
                Request::Export { email, path },
                true,
            ))
        }
        Command::Models(ModelsCmd::Pull {
            name,
            quantized,
            dir,
        }) => {
            let loaded = config::load(cli.config.as_deref())?;
            runtime()?
                .block_on(models_pull(&loaded, &name, quantized, dir))
                .map_err(Failure::from)
        }
        Command::Library(LibraryCmd::Verify) => {
            let loaded = config::load(cli.config.as_deref())?;
            runtime()?.block_on(admin_command(&loaded, Request::LibraryVerify, true))
        }
        Command::Models(ModelsCmd::List) => {
            let loaded = config::load(cli.config.as_deref())?;
            models_list(&loaded);
            Ok(())
        }
        Command::Debug(DebugCmd::WriteBurst {
            writers,
            count,
            payload,
        }) => {
            let loaded = config::load(cli.config.as_deref())?;
            runtime()?
                .block_on(write_burst(&loaded, writers, count, payload))
                .map_err(Failure::from)
        }
    }
}

/// Reads a password from the first line of standard input.
fn read_password() -> Result<crate::crypto::Secret<String>, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = crate::crypto::Secret::new(line.trim_end_matches(['\r', '\n']).to_string());
    line.zeroize();
    if password.expose().is_empty() {
        return Err(anyhow::anyhow!(
            "no password on standard input; try: printf '%s\\n' \"$PASSWORD\" | easel user create ... --password-stdin"
        )
        .into());
    }
    Ok(password)
}

fn print_reply(reply: Reply, via: &str, bare: bool) -> Result<(), Failure> {
    if reply.ok && bare {
        // Only the answer on stdout, so `KEY=$(easel key create ...)` works.
        println!("{}", reply.message);
        eprintln!("({via})");
        Ok(())
    } else if reply.ok {
        println!("{} ({via})", reply.message);
        Ok(())
    } else {
        Err(anyhow::anyhow!("{} ({via})", reply.message).into())
    }
}

/// Sends `req` to the running server, or runs it on the database directly.
async fn admin_command(loaded: &Loaded, req: Request, needs_key: bool) -> Result<(), Failure> {
    let config = &loaded.config;
    let bare = matches!(req, Request::KeyCreate { .. });
    let socket = control::socket_path(&config.storage.data_dir);
    if let Some(reply) = control::call(&socket, &req)
        .await
        .with_context(|| format!("cannot talk to the admin socket {}", socket.display()))?
    {
        return print_reply(reply, "via the running server's admin socket", bare);
    }
    let store = app::open_store(config).await?;
    let keyring = if needs_key {
        // Creating the first account may also create the master key, as a first
        // `easel serve` would; every other command needs the existing one.
        let may_create = matches!(req, Request::UserCreate { .. });
        Some(app::unlock(config, &store, may_create).await?)
    } else {
        None
    };
    let services = keyring
        .as_ref()
        .map(|k| app::Services::new(&store, k, Arc::new(config::Live::new(loaded))));
    let admin = Admin {
        store: store.clone(),
        keyring,
        services,
    };
    let reply = admin.execute(req).await;
    store.close().await;
    print_reply(
        reply,
        "server not running: opened the database directly",
        bare,
    )
}

async fn compact(loaded: &Loaded) -> Result<(), Failure> {
    let config = &loaded.config;
    let socket = control::socket_path(&config.storage.data_dir);
    if let Some(reply) = control::call(&socket, &Request::Compact)
        .await
        .context("cannot talk to the admin socket")?
    {
        return print_reply(reply, "via the running server's admin socket", false);
    }
    let dir = config.storage.data_dir.clone();
    let report = tokio::task::spawn_blocking(move || store::compact(&dir))
        .await
        .context("the compaction task failed")?
        .map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "compacted {} records: {} bytes before, {} after (server not running: opened the database directly)",
        report.records, report.bytes_before, report.bytes_after
    );
    Ok(())
}

async fn restore(loaded: &Loaded, backup: &Path) -> Result<(), Failure> {
    let config = &loaded.config;
    let socket = control::socket_path(&config.storage.data_dir);
    let req = Request::Restore {
        path: backup.to_path_buf(),
    };
    if let Some(reply) = control::call(&socket, &req)
        .await
        .context("cannot talk to the admin socket")?
    {
        return print_reply(reply, "via the running server's admin socket", false);
    }
    let dir = config.storage.data_dir.clone();
    let from = backup.to_path_buf();
    let known = app::schema_version();
    let carry = crate::privacy::restore_carry();
    let report = tokio::task::spawn_blocking(move || store::restore(&from, &dir, known, &carry))
        .await
        .context("the restore task failed")?
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut kept = match &report.previous {
        Some(p) => format!(
            "; kept {} data keys and erasure records of the replaced database, which is kept at {}",
            report.carried,
            p.display()
        ),
        None => String::new(),
    };
    if report.previous.is_none() {
        kept.push_str(
            "; there was no database to take data keys from, so sealed data (provider keys) \
             cannot be opened: enter those keys again",
        );
    }
    println!(
        "restored {} records from {}{kept} (server not running: opened the database directly)",
        report.records,
        backup.display()
    );
    Ok(())
}

fn check(file: Option<&Path>) -> Result<(), Failure> {
    let loaded = config::load(file)?;
    let c = &loaded.config;
    println!("# config OK: {}", loaded.origin());
    for var in &loaded.env_overrides {
        println!("# overridden by environment: {var}");
    }
    println!("# master key: {}", master_key_status(c));
    for (name, p) in &c.providers {
        let key = match (&p.api_key_env, &p.api_key_file) {
            (Some(var), _) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => format!("{var} is set (********)"),
                _ => format!("{var} is NOT set"),
            },
            (_, Some(f)) if f.is_file() => format!("{} exists (********)", f.display()),
            (_, Some(f)) => format!("{} does NOT exist", f.display()),
            (None, None) => "no key configured".into(),
        };
        println!("# provider {name}: {key}");
    }
    println!();
    print!("{}", c.to_toml());
    Ok(())
}

fn master_key_status(c: &config::Config) -> String {
    // The same lookup `serve` does, so the answer cannot drift from what will happen.
    let file = &c.crypto.master_key_file;
    match crate::crypto::load_master_key(file, |k| std::env::var(k).ok()) {
        Ok(Some((key, source))) => format!("{source} (key id {})", key.id_hex()),
        Ok(None) => format!(
            "{} does not exist yet; `easel serve` creates it on first start",
            file.display()
        ),
        Err(e) => format!("PROBLEM: {e}"),
    }
}

/// The example config with its sample sections commented out.
pub fn init_template() -> String {
    let mut out = String::with_capacity(EXAMPLE.len() + 256);
    let mut in_samples = false;
    for line in EXAMPLE.lines() {
        if line.starts_with(SAMPLE_START) {
            in_samples = true;
        } else if line.starts_with(SAMPLE_END) {
            in_samples = false;
        } else if in_samples && !line.trim().is_empty() && !line.starts_with('#') {
            out.push_str("# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn init(dir: &Path) -> anyhow::Result<()> {
    let config_path = dir.join(config::DEFAULT_FILE);
    let key_path = dir.join("master.key");
    let data_dir = dir.join("easel-data");
    for p in [&config_path, &key_path, &data_dir] {
        if p.exists() {
            bail!(
                "{} already exists; `easel init` never overwrites anything",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&config_path)
        .with_context(|| format!("cannot create {}", config_path.display()))?;
    file.write_all(init_template().as_bytes())?;
    file.sync_all()?;
    crate::crypto::create_key_file(&key_path)?;
    store::create_private_dir(&data_dir).map_err(|e| anyhow::anyhow!(e))?;
    println!("created {} (config)", config_path.display());
    println!(
        "created {} (master key, mode 0600; back it up apart from the data)",
        key_path.display()
    );
    println!("created {} (data)", data_dir.display());
    println!("start with: easel --config {} serve", config_path.display());
    Ok(())
}

async fn write_burst(
    loaded: &Loaded,
    writers: usize,
    count: u64,
    payload: usize,
) -> anyhow::Result<()> {
    let store: Store = app::open_store(&loaded.config).await?;
    if crate::crypto::Keyring::database_is_sealed(&store).await? {
        store.close().await;
        bail!("write-burst only writes into a scratch data dir, and this one belongs to a server");
    }
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let ack: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |n| {
        if let Ok(mut o) = out.lock() {
            let _ = writeln!(o, "ack {n}");
            let _ = o.flush();
        }
    });
    store::burst::burst(&store, writers, count, payload, None, ack).await?;
    store.close().await;
    Ok(())
}

/// The folder models live in: the parent of `[local_model] dir`.
fn models_dir(config: &config::Config) -> PathBuf {
    config
        .local_model
        .dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

async fn models_pull(
    loaded: &Loaded,
    name: &str,
    quantized: bool,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let config = &loaded.config;
    let target = dir.unwrap_or_else(|| models_dir(config).join(name));
    let files =
        crate::local_model::pull::pull(&config.local_model.hub_url, name, &target, quantized)
            .await?;
    println!("{} is ready in {}", files.name(), target.display());
    if app::absolute(&target) != app::absolute(&config.local_model.dir) {
        println!(
            "to use it, set in the config:\n[local_model]\ndir = \"{}\"",
            target.display()
        );
    }
    Ok(())
}

fn models_list(loaded: &Loaded) {
    let config = &loaded.config;
    let listed = crate::local_model::pull::list(&models_dir(config), &config.local_model.dir);
    if listed.is_empty() {
        println!(
            "no local models in {}; `easel models pull blip-large` downloads one",
            models_dir(config).display()
        );
    }
    for m in listed {
        println!(
            "{} {:<20} {:<28} {:>8.1} MiB  {}",
            if m.in_use { "*" } else { " " },
            m.name,
            m.weights,
            m.bytes as f64 / f64::from(1 << 20),
            m.dir.display()
        );
    }
    let names: Vec<&str> = crate::local_model::pull::KNOWN
        .iter()
        .map(|(n, _)| *n)
        .collect();
    println!("can be pulled: {}", names.join(", "));
}
