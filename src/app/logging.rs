//! Tracing output on stderr, pretty or JSON, with a filter that a reload can change.

use crate::config::{LogConfig, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

impl LogHandle {
    /// Applies a new filter such as `debug` or `easel=debug,info`.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = level.parse::<EnvFilter>().map_err(|e| e.to_string())?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber. A second call (tests that start several servers in
/// one process) keeps the first subscriber and returns a handle that changes nothing.
pub fn init(cfg: &LogConfig) -> LogHandle {
    let filter = cfg
        .level
        .parse::<EnvFilter>()
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt: Box<dyn Layer<_> + Send + Sync> = match cfg.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
    LogHandle(handle)
}
