//! Typed configuration: built-in defaults < TOML file < `EASEL_*` environment.
//!
//! Relative paths in a config file are resolved against the file's own folder, so a
//! service can be started from any working directory; without a file they are resolved
//! against the working directory.

mod duration;

pub use duration::{Rule, Span};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The file looked for in the working directory when no `--config` is given.
pub const DEFAULT_FILE: &str = "easel.toml";
/// Environment variables with this prefix and a `__` inside override config keys.
pub const ENV_PREFIX: &str = "EASEL_";

/// A config that could not be read or is not valid. The message names the file (or
/// environment variable), the line where there is one, and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// An `EASEL_*` variable could not be applied.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// The values parse but do not make sense together.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub crypto: CryptoConfig,
    pub log: LogConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub models: Vec<ModelConfig>,
    pub credits: CreditsConfig,
    pub gateway: GatewayConfig,
    pub alt_text: AltTextConfig,
    pub local_model: LocalModelConfig,
    pub library: LibraryConfig,
    pub skills: SkillsConfig,
    pub retention: RetentionConfig,
    pub scheduler: SchedulerConfig,
    pub backup: BackupConfig,
    pub privacy: PrivacyConfig,
    pub signup: SignupConfig,
    pub auth: AuthConfig,
}

/// `[server]`: the HTTP listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on (restart to change).
    pub listen: SocketAddr,
    /// HTTP worker threads; 0 means one per CPU core but one (the writer's and the
    /// background work's), and at least one (restart to change).
    pub workers: usize,
    /// The largest request body accepted, in bytes, uploads included.
    pub max_body_bytes: u64,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_timeout: Span,
    /// The address people use to reach Easel, for links (optional).
    pub public_url: Option<String>,
    /// HTTPS with rustls (restart to change).
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            max_body_bytes: 25 * 1024 * 1024,
            shutdown_timeout: Span::secs(30),
            public_url: None,
            tls: None,
        }
    }
}

/// `[server.tls]`: PEM certificate chain and private key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[storage]`: where the database lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Folder holding the database, the admin socket and blobs (restart to change).
    pub data_dir: PathBuf,
    /// Page cache of the database, in MiB (restart to change).
    pub cache_mib: u64,
    /// Most writes the writer folds into one durable commit (restart to change). The
    /// commit of a full batch of 1024 is about 1 ms of CPU in one unbroken run (its
    /// writes are applied before, a few at a time), which request threads woken on the
    /// same core wait out; smaller batches shorten that wait but cost more CPU a write
    /// (docs/benchmarks.md, 2026-12-06, fifth and sixth sittings).
    pub max_batch: usize,
    /// Milliseconds a commit of background writes only (usage records and their
    /// charges) may wait for more to share it; 0 commits at once (restart to change).
    /// A commit has a fixed cost (its fsync, the allocator state, a wake-up of the
    /// writer thread) of about half a millisecond of CPU: at 10 ms and one client that
    /// was 15-27 µs a request, at 100 ms 6-8 (docs/benchmarks.md).
    pub background_commit_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./easel-data"),
            cache_mib: 4,
            max_batch: 1024,
            background_commit_ms: 100,
        }
    }
}

/// `[crypto]`: where the master key comes from when neither `EASEL_MASTER_KEY` nor a
/// systemd credential provides it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    pub master_key_file: PathBuf,
}

impl Default for CryptoConfig {
    fn default() -> Self {
        CryptoConfig {
            master_key_file: PathBuf::from("./master.key"),
        }
    }
}

/// `[log]`: tracing output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `easel=debug,actix_web=info`.
    pub level: String,
    /// `pretty` for people, `json` for log collectors.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Pretty,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `[providers.NAME]`: an organisation-wide AI provider connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Name of the environment variable holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// File holding the API key (for example a systemd credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Endpoint; required for `openai-compatible`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Time allowed for one upstream request.
    #[serde(default = "default_provider_timeout")]
    pub timeout: Span,
    /// Send the provider's privacy options (OpenAI `store: false`, OpenRouter zero
    /// data retention) with every request.
    #[serde(default = "yes")]
    pub privacy_options: bool,
    /// Extra tries of the same route after a 429, 5xx, timeout or connection error,
    /// before the next route.
    #[serde(default = "one")]
    pub retries: u32,
}

fn one() -> u32 {
    1
}

/// Whether `name` can name a provider connection: 1 to 40 of `a-z 0-9 - _`.
pub fn is_connection_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn default_provider_timeout() -> Span {
    Span::secs(60)
}

fn yes() -> bool {
    true
}

/// Wire protocol of a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Openai,
    OpenaiCompatible,
    Gemini,
    Anthropic,
    Bfl,
}

/// `[[models]]`: one entry of the model catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub id: String,
    pub capabilities: Vec<Capability>,
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub price: PriceConfig,
    /// Overrides `[credits] per_usd` for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_per_usd: Option<f64>,
    /// Output cap reserved for when a request sets none (default `[gateway] max_output_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

/// What a model can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Chat,
    Vision,
    Image,
}

/// One upstream route of a model, tried in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub provider: String,
    pub model: String,
}

/// Prices in USD.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriceConfig {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub per_image: f64,
}

/// `[credits]`: how prices turn into credits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreditsConfig {
    pub per_usd: f64,
    /// Credits charged per request made on a person's own provider key.
    pub byok_fee: f64,
}

impl Default for CreditsConfig {
    fn default() -> Self {
        CreditsConfig {
            per_usd: 1000.0,
            byok_fee: 0.0,
        }
    }
}

/// `[gateway]`: how `/v1` requests are routed, retried and metered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Output tokens reserved for a request that sets no `max_tokens`; also the cap
    /// sent to providers that need one.
    pub max_output_tokens: u32,
    /// Input tokens reserved per image in a chat request.
    pub image_input_tokens: u32,
    /// First pause before a retry, in milliseconds; it doubles, with jitter.
    pub retry_backoff_ms: u64,
    /// Failures in a row that make a provider be skipped for `breaker_cooldown`.
    pub breaker_failures: u32,
    pub breaker_cooldown: Span,
    /// How long a generated image answered as `url` can be fetched.
    pub image_url_ttl: Span,
    /// Memory held for such images, in MiB; the oldest go first.
    pub image_cache_mib: u64,
    /// Largest image `/v1/images/edits` takes, in pixels (its bytes are bound by
    /// `server.max_body_bytes`).
    pub max_image_pixels: u64,
    /// Hosts, addresses or networks (CIDR) that personal connections may reach
    /// although they are not public (for example a team's own Ollama). Checked at every
    /// new connection, not only when the connection is added.
    pub private_hosts: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_output_tokens: 4096,
            image_input_tokens: 1500,
            retry_backoff_ms: 200,
            breaker_failures: 5,
            breaker_cooldown: Span::secs(30),
            image_url_ttl: Span::secs(600),
            image_cache_mib: 64,
            max_image_pixels: 50_000_000,
            private_hosts: Vec::new(),
        }
    }
}

/// `[alt_text]`: the alt text service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AltTextConfig {
    /// A catalog model id with vision, or `local` for the built-in candle model.
    pub model: String,
    pub default_language: String,
    pub max_chars: u32,
    pub max_image_bytes: u64,
    pub max_pixels: u64,
    /// Longest side an image is scaled down to before it is sent to a provider.
    pub downscale_to: u32,
    /// Hosts that URL fetches may reach even though they resolve to private addresses.
    pub url_allowlist: Vec<String>,
    pub url_timeout: Span,
    /// Images of one batch request described at once.
    pub batch_parallelism: usize,
}

impl Default for AltTextConfig {
    fn default() -> Self {
        AltTextConfig {
            model: "local".into(),
            default_language: "en".into(),
            max_chars: 125,
            max_image_bytes: 16 * 1024 * 1024,
            max_pixels: 50_000_000,
            downscale_to: 1024,
            url_allowlist: Vec::new(),
            url_timeout: Span::secs(10),
            batch_parallelism: 4,
        }
    }
}

/// `[local_model]`: the local alt text model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalModelConfig {
    pub dir: PathBuf,
    /// `cpu`, or `cuda` in a build with the `cuda` feature.
    pub device: String,
    /// Captions computed at once (each uses every CPU core).
    pub workers: usize,
    /// Requests allowed in at once (running or waiting for a worker); more are
    /// answered 503.
    pub queue: usize,
    /// Tokens a caption may have (the decoding step cap).
    pub max_tokens: usize,
    /// Where `easel models pull` downloads from (Hugging Face, or a mirror).
    pub hub_url: String,
}

impl Default for LocalModelConfig {
    fn default() -> Self {
        LocalModelConfig {
            dir: PathBuf::from("./easel-data/models/blip-large"),
            device: "cpu".into(),
            workers: 1,
            queue: 16,
            max_tokens: 30,
            hub_url: "https://huggingface.co".into(),
        }
    }
}

/// `[library]`: the asset library.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibraryConfig {
    /// Storage each account may use, in MiB (originals and thumbnails); 0: no limit.
    pub quota_mib: u64,
    /// Largest file accepted, in bytes (a request is also bound by `server.max_body_bytes`).
    pub max_file_bytes: u64,
    /// Files one upload request may carry.
    pub max_files: usize,
    /// Largest image accepted, in pixels (checked from the header before decoding).
    pub max_pixels: u64,
    /// Longest side of thumbnails, in pixels.
    pub thumbnail_size: u32,
    /// Orphaned blob files and abandoned uploads younger than this are left alone by
    /// the upkeep job.
    pub gc_grace: Span,
}

impl Default for LibraryConfig {
    fn default() -> Self {
        LibraryConfig {
            quota_mib: 1024,
            max_file_bytes: 25 * 1024 * 1024,
            max_files: 20,
            max_pixels: 100_000_000,
            thumbnail_size: 256,
            gc_grace: Span::secs(3600),
        }
    }
}

/// `[skills]`: the node-graph workflows and their engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SkillsConfig {
    /// How long one step may run unless its node sets `timeout_s`.
    pub node_timeout: Span,
    /// Most nodes in one skill.
    pub max_nodes: usize,
    /// Most steps of one run under way at once.
    pub max_parallel: usize,
    /// Largest image a run takes in or makes, in bytes.
    pub max_image_bytes: u64,
    /// Largest image a run takes in or makes, in pixels.
    pub max_pixels: u64,
    /// Run records (metadata only) kept per skill; older ones are removed.
    pub runs_kept: usize,
    /// Hosts the MCP endpoint answers besides IP addresses, `localhost` and the
    /// host of `server.public_url` (a guard against DNS rebinding).
    pub mcp_allowed_hosts: Vec<String>,
    /// Web origins allowed to call the MCP endpoint from a browser besides Easel's own.
    pub mcp_allowed_origins: Vec<String>,
}

impl Default for SkillsConfig {
    fn default() -> Self {
        SkillsConfig {
            node_timeout: Span::secs(120),
            max_nodes: 100,
            max_parallel: 8,
            max_image_bytes: 20 * 1024 * 1024,
            max_pixels: 40_000_000,
            runs_kept: 100,
            mcp_allowed_hosts: Vec::new(),
            mcp_allowed_origins: Vec::new(),
        }
    }
}

/// `[retention]`: how long each data class of the privacy policy is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub account: Rule,
    /// Time between a deletion request and erasure, during which it can be cancelled.
    pub deletion_recovery: Span,
    pub credentials: Rule,
    pub provider_keys: Rule,
    pub usage: Rule,
    pub access_log: Rule,
    pub alt_text: Rule,
    pub billing: Rule,
    pub skills: Rule,
    pub assets: Rule,
    pub analytics: Rule,
    pub audit: Rule,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            account: Rule::WhileActive,
            deletion_recovery: Span::days(30),
            credentials: Rule::UntilRevoked,
            provider_keys: Rule::UntilDeleted,
            usage: Rule::For(Span::days(90)),
            access_log: Rule::For(Span::secs(24 * 3600)),
            alt_text: Rule::For(Span::days(90)),
            billing: Rule::For(Span::days(7 * 365)),
            skills: Rule::UntilDeleted,
            assets: Rule::UntilDeleted,
            analytics: Rule::For(Span::days(90)),
            audit: Rule::For(Span::days(365)),
        }
    }
}

/// `[scheduler]`: when background jobs run (cron with seconds: `sec min hour day month weekday`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Removes records older than their class's window.
    pub retention_sweep: String,
    /// Erases accounts whose deletion deadline has passed.
    pub deletion_requests: String,
    /// Removes ended sessions, expired API keys and invites.
    pub expiry: String,
    /// Records a sweep removes per write, so requests keep flowing during a sweep.
    pub sweep_batch: usize,
    /// Removes asset blob files no asset refers to, and abandoned uploads.
    pub library_gc: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            retention_sweep: "0 0 * * * *".into(),
            deletion_requests: "0 30 * * * *".into(),
            expiry: "0 */10 * * * *".into(),
            sweep_batch: 100,
            library_gc: "0 15 4 * * *".into(),
        }
    }
}

/// Parses a schedule as the scheduler reads it: six fields, seconds first.
pub fn cron(pattern: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(pattern)
        .map_err(|e| {
            format!("`{pattern}` is not a schedule ({e}); write six fields, seconds first: `0 0 * * * *` is hourly")
        })
}

/// `[backup]`: scheduled online backups (off unless `dir` is set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    pub dir: Option<PathBuf>,
    pub schedule: String,
    pub keep: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: None,
            schedule: "0 0 3 * * *".into(),
            keep: 7,
        }
    }
}

/// `[privacy]`: who runs this instance, for the generated policy page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    pub operator: String,
    pub contact: String,
    /// A label of the operator's; changing it publishes a new policy version (for a
    /// change the program cannot see, such as wording).
    pub policy_version: String,
    /// Ignored: versions are dated when they are published (kept so older configs load).
    pub effective_date: String,
    /// How long after publication a changed policy takes effect; signed-in people see
    /// a notice meanwhile.
    pub notice_period: Span,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            operator: "The operator of this Easel instance".into(),
            contact: String::new(),
            policy_version: "1".into(),
            effective_date: String::new(),
            notice_period: Span::days(14),
        }
    }
}

/// `[signup]`: who may create an account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignupConfig {
    pub mode: SignupMode,
    pub invite_ttl: Span,
}

impl Default for SignupConfig {
    fn default() -> Self {
        SignupConfig {
            mode: SignupMode::Closed,
            invite_ttl: Span::days(7),
        }
    }
}

/// Sign-up policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignupMode {
    Open,
    Invite,
    Closed,
}

/// `[auth]`: web sessions, sign-in throttling and password hashing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A session unused this long ends.
    pub session_idle: Span,
    /// A session ends this long after sign-in, used or not.
    pub session_max: Span,
    /// Failed sign-ins for one email before it is locked for `lock_for`.
    pub lock_after: u32,
    /// Failed sign-ins from one client address before it is locked for `lock_for`.
    pub ip_lock_after: u32,
    /// How long a lock lasts.
    pub lock_for: Span,
    /// Header holding the client address when Easel sits behind a proxy
    /// (e.g. "X-Forwarded-For"; its last entry is used). Empty: the TCP peer address.
    pub client_ip_header: String,
    /// Argon2id memory per hash, in KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id passes.
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    pub argon2_parallelism: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            session_idle: Span::days(1),
            session_max: Span::days(30),
            lock_after: 10,
            ip_lock_after: 50,
            lock_for: Span::secs(15 * 60),
            client_ip_header: String::new(),
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
        }
    }
}

/// A loaded config and where it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// The `EASEL_*` variables that were applied.
    pub env_overrides: Vec<String>,
}

impl Loaded {
    /// Where this config came from, for messages.
    pub fn origin(&self) -> String {
        match &self.file {
            Some(p) => p.display().to_string(),
            None => "built-in defaults".into(),
        }
    }
}

/// Finds and loads the config: `explicit` (from `--config`/`EASEL_CONFIG`) must exist;
/// otherwise `./easel.toml` is used when present, else the built-in defaults.
pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    let file = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
    };
    load_from(file.as_deref(), std::env::vars())
}

/// Loads from one optional file and the given environment (testable without touching
/// the process environment).
pub fn load_from(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let (mut config, base) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let config = parse_str(&text).map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            })?;
            let base = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            (config, base)
        }
        None => (Config::default(), PathBuf::from(".")),
    };
    let env_overrides = apply_env(&mut config, env)?;
    let origin = file.map_or_else(|| "built-in defaults".into(), |p| p.display().to_string());
    config.validate(&origin)?;
    config.resolve_paths(&base);
    Ok(Loaded {
        config,
        file: file.map(Path::to_path_buf),
        env_overrides,
    })
}

/// Parses TOML text into a config; the error text carries line, column and key.
pub fn parse_str(text: &str) -> Result<Config, String> {
    toml::from_str::<Config>(text).map_err(|e| e.to_string().trim_end().to_string())
}

/// Applies `EASEL_SECTION__KEY=value` variables. Values are read as TOML (`8080`, `true`,
/// `["a","b"]`), falling back to a plain string.
fn apply_env(
    config: &mut Config,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    if vars.is_empty() {
        return Ok(Vec::new());
    }
    vars.sort();
    let mut tree = toml::Table::try_from(&*config).map_err(|e| ConfigError::Env {
        var: vars[0].0.clone(),
        message: e.to_string(),
    })?;
    for (var, raw) in &vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let value = parse_env_value(raw);
        set_path(&mut tree, &path, value).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    *config = Config::deserialize(tree).map_err(|e| ConfigError::Env {
        var: vars
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        message: e.to_string().trim_end().to_string(),
    })?;
    Ok(vars.into_iter().map(|(k, _)| k).collect())
}

fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut node = tree;
    for (i, seg) in parents.iter().enumerate() {
        // Optional sections (`server.tls`, `providers.x`) do not exist until set.
        let entry = node
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a section", path[..=i].join(".")))?;
    }
    node.insert(last.clone(), value);
    Ok(())
}

impl Config {
    /// Checks what serde cannot: references between sections and value ranges.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        };
        if self.server.max_body_bytes < 1024 {
            return Err(invalid(
                "server.max_body_bytes".into(),
                "must be at least 1024 bytes".into(),
            ));
        }
        if self.storage.background_commit_ms > 1000 {
            return Err(invalid(
                "storage.background_commit_ms".into(),
                "must be at most 1000: a crash loses the charges of requests answered in this window".into(),
            ));
        }
        if let Err(e) = crate::http::net::check_allowlist(&self.alt_text.url_allowlist) {
            return Err(invalid("alt_text.url_allowlist".into(), e));
        }
        if let Err(e) = crate::http::net::check_allowlist(&self.gateway.private_hosts) {
            return Err(invalid("gateway.private_hosts".into(), e));
        }
        if !(1..=16).contains(&self.alt_text.batch_parallelism) {
            return Err(invalid(
                "alt_text.batch_parallelism".into(),
                "must be between 1 and 16".into(),
            ));
        }
        if self.alt_text.max_chars == 0 || self.alt_text.max_chars > 1000 {
            return Err(invalid(
                "alt_text.max_chars".into(),
                "must be between 1 and 1000".into(),
            ));
        }
        if self.library.max_files == 0 || self.library.max_file_bytes == 0 {
            return Err(invalid(
                "library".into(),
                "max_files and max_file_bytes must be at least 1".into(),
            ));
        }
        if !(16..=1024).contains(&self.library.thumbnail_size) {
            return Err(invalid(
                "library.thumbnail_size".into(),
                "must be between 16 and 1024 pixels".into(),
            ));
        }
        if self.skills.max_nodes == 0 || self.skills.max_parallel == 0 || self.skills.runs_kept == 0
        {
            return Err(invalid(
                "skills".into(),
                "max_nodes, max_parallel and runs_kept must be at least 1".into(),
            ));
        }
        if self.local_model.workers == 0 || !(1..=200).contains(&self.local_model.max_tokens) {
            return Err(invalid(
                "local_model".into(),
                "workers must be at least 1 and max_tokens between 1 and 200".into(),
            ));
        }
        for (key, pattern) in [
            ("scheduler.retention_sweep", &self.scheduler.retention_sweep),
            (
                "scheduler.deletion_requests",
                &self.scheduler.deletion_requests,
            ),
            ("scheduler.expiry", &self.scheduler.expiry),
            ("scheduler.library_gc", &self.scheduler.library_gc),
            ("backup.schedule", &self.backup.schedule),
        ] {
            if let Err(e) = cron(pattern) {
                return Err(invalid(key.into(), e));
            }
        }
        if !(1..=100_000).contains(&self.scheduler.sweep_batch) {
            return Err(invalid(
                "scheduler.sweep_batch".into(),
                "must be between 1 and 100000".into(),
            ));
        }
        if self.backup.keep == 0 {
            return Err(invalid(
                "backup.keep".into(),
                "must be at least 1 (how many scheduled backups are kept)".into(),
            ));
        }
        if self.storage.max_batch == 0 {
            return Err(invalid(
                "storage.max_batch".into(),
                "must be at least 1".into(),
            ));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(invalid(
                "log.level".into(),
                format!(
                    "`{}` is not a log filter; try `info` or `easel=debug`",
                    self.log.level
                ),
            ));
        }
        let a = &self.auth;
        if a.session_idle.get().is_zero() || a.session_max < a.session_idle {
            return Err(invalid(
                "auth.session_idle".into(),
                "must be above 0 and not longer than auth.session_max".into(),
            ));
        }
        if a.lock_after < 3 || a.ip_lock_after < a.lock_after {
            return Err(invalid(
                "auth.lock_after".into(),
                "must be at least 3, and auth.ip_lock_after at least as large".into(),
            ));
        }
        if a.argon2_memory_kib < 8 * a.argon2_parallelism.max(1)
            || a.argon2_iterations == 0
            || a.argon2_parallelism == 0
        {
            return Err(invalid(
                "auth.argon2_memory_kib".into(),
                "argon2 needs at least 1 pass, 1 lane and 8 KiB per lane (OWASP: 19456 KiB, 2 passes, 1 lane)".into(),
            ));
        }
        for (name, p) in &self.providers {
            let key = |k: &str| format!("providers.{name}.{k}");
            if !is_connection_name(name) {
                return Err(invalid(
                    format!("providers.{name}"),
                    "a provider name uses lowercase letters, digits, - and _ (at most 40)".into(),
                ));
            }
            if p.api_key_env.is_some() && p.api_key_file.is_some() {
                return Err(invalid(
                    key("api_key_env"),
                    "set either api_key_env or api_key_file, not both".into(),
                ));
            }
            if p.kind == ProviderKind::OpenaiCompatible && p.base_url.is_none() {
                return Err(invalid(
                    key("base_url"),
                    "is required for kind = \"openai-compatible\" (for example \"http://127.0.0.1:11434/v1\")".into(),
                ));
            }
            if let Some(url) = &p.base_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(
                    key("base_url"),
                    format!("`{url}` must start with http:// or https://"),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if !seen.insert(m.id.as_str()) {
                return Err(invalid(
                    format!("models[{i}].id"),
                    format!("model `{}` is listed twice", m.id),
                ));
            }
            if m.routes.is_empty() {
                return Err(invalid(
                    format!("models[{i}].routes"),
                    format!("model `{}` needs at least one route", m.id),
                ));
            }
            // A route may name a connection that an admin or a person adds in the UI
            // later, so only the name's shape is checked here.
            for (j, r) in m.routes.iter().enumerate() {
                if !is_connection_name(&r.provider) {
                    return Err(invalid(
                        format!("models[{i}].routes[{j}].provider"),
                        format!(
                            "`{}` is not a provider name: use lowercase letters, digits, - and _ (a [providers.NAME] section, or a connection added in the UI)",
                            r.provider
                        ),
                    ));
                }
            }
            if m.credits_per_usd.is_some_and(|c| c <= 0.0) {
                return Err(invalid(
                    format!("models[{i}].credits_per_usd"),
                    "must be above 0".into(),
                ));
            }
        }
        if self.alt_text.model != "local"
            && !self.models.iter().any(|m| m.id == self.alt_text.model)
        {
            return Err(invalid(
                "alt_text.model".into(),
                format!(
                    "`{}` is not in [[models]]; use a catalog model with vision, or \"local\"",
                    self.alt_text.model
                ),
            ));
        }
        if self.credits.per_usd <= 0.0 {
            return Err(invalid("credits.per_usd".into(), "must be above 0".into()));
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() && base != Path::new(".") {
                *p = base.join(p.strip_prefix(".").unwrap_or(p));
            }
        };
        abs(&mut self.storage.data_dir);
        abs(&mut self.crypto.master_key_file);
        abs(&mut self.local_model.dir);
        if let Some(tls) = &mut self.server.tls {
            abs(&mut tls.cert_file);
            abs(&mut tls.key_file);
        }
        if let Some(dir) = &mut self.backup.dir {
            abs(dir);
        }
        for p in self.providers.values_mut() {
            if let Some(f) = &mut p.api_key_file {
                abs(f);
            }
        }
    }

    /// The effective config as TOML, for `easel config check`. Nothing secret is held
    /// in the config itself (keys come from files and the environment), so what is
    /// printed about them is only whether they are present.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// Keys whose change needs a restart, for a live reload.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.server.listen != new.server.listen {
            out.push("server.listen");
        }
        if self.server.workers != new.server.workers {
            out.push("server.workers");
        }
        if self.server.tls != new.server.tls {
            out.push("server.tls");
        }
        if self.storage != new.storage {
            out.push("storage");
        }
        if self.crypto != new.crypto {
            out.push("crypto.master_key_file");
        }
        if self.log.format != new.log.format {
            out.push("log.format");
        }
        out
    }
}

/// The config of a running server, replaced as a whole on reload.
pub struct Live {
    current: arc_swap::ArcSwap<Config>,
    /// The file to re-read on SIGHUP.
    pub file: Option<PathBuf>,
}

impl Live {
    /// Wraps a loaded config.
    pub fn new(loaded: &Loaded) -> Self {
        Live {
            current: arc_swap::ArcSwap::from_pointee(loaded.config.clone()),
            file: loaded.file.clone(),
        }
    }
    /// The config in force now.
    pub fn get(&self) -> std::sync::Arc<Config> {
        self.current.load_full()
    }
    /// Replaces the config in force.
    pub fn set(&self, config: Config) {
        self.current.store(std::sync::Arc::new(config));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_nested_keys_and_creates_optional_sections() {
        let loaded = load_from(
            None,
            env(&[
                ("EASEL_SERVER__LISTEN", "0.0.0.0:9000"),
                ("EASEL_RETENTION__USAGE", "30d"),
                ("EASEL_CONFIG", "ignored.toml"),
            ]),
        )
        .expect("loads");
        assert_eq!(loaded.config.server.listen.port(), 9000);
        assert_eq!(loaded.config.retention.usage, Rule::For(Span::days(30)));
        assert_eq!(loaded.env_overrides.len(), 2);
    }

    #[test]
    fn an_unknown_environment_key_is_named_in_the_error() {
        let err = load_from(None, env(&[("EASEL_SERVER__LISTN", "x")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("EASEL_SERVER__LISTN"), "{text}");
        assert!(text.contains("listn"), "{text}");
    }

    #[test]
    fn a_route_must_name_a_provider_by_a_valid_name() {
        let text = r#"
[[models]]
id = "m"
capabilities = ["chat"]
routes = [{ provider = "No Such!", model = "x" }]
"#;
        let config = parse_str(text).expect("parses");
        let err = config.validate("f.toml").unwrap_err().to_string();
        assert!(err.contains("models[0].routes[0].provider"), "{err}");
        // A well-formed name is accepted: an admin may add that connection in the UI.
        let later = parse_str(&text.replace("No Such!", "added-later")).expect("parses");
        later.validate("f.toml").expect("valid");
    }
}
