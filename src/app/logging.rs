//! Tracing output on stderr, pretty or JSON, with a filter that a reload can change.
//!
//! Access lines (target `easel::http`, info and below) are gathered in memory and
//! written within [`GATHER_MS`] ms of the first one gathered, or at [`GATHER_BYTES`],
//! so a busy server makes one write for many requests instead of one each; an idle
//! one's log thread sleeps until there is something to write. Every other line is written
//! at once, after what was gathered, so lines keep their order; a clean shutdown
//! writes the rest ([`flush`]).

mod access;

use crate::config::{LogConfig, LogFormat};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
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

/// Longest an access line waits in memory.
pub const GATHER_MS: u64 = 50;
/// Bytes of access lines that are written as soon as they are gathered.
const GATHER_BYTES: usize = 16 * 1024;

/// Access lines not yet written.
static GATHERED: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// The flusher thread runs: only then are lines gathered.
static FLUSHING: AtomicBool = AtomicBool::new(false);
/// The flusher thread, parked while nothing is gathered (an idle server never wakes it).
static FLUSHER: OnceLock<std::thread::Thread> = OnceLock::new();

fn gathered() -> MutexGuard<'static, Vec<u8>> {
    // Only ever appended to and drained: consistent under any panic.
    GATHERED.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        // Nowhere to report a failed write of the log itself.
        let _ = std::io::stderr().lock().write_all(buf);
        buf.clear();
    }
}

/// Writes every gathered access line now.
pub fn flush() {
    write_out(&mut gathered());
}

/// Chooses, per line, whether it is gathered or written at once.
struct Sink;

/// One line on its way to stderr.
struct Line {
    gather: bool,
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { gather: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            gather: meta.target() == access::TARGET
                && *meta.level() >= Level::INFO
                && FLUSHING.load(Ordering::Acquire),
        }
    }
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = gathered();
        if self.gather {
            if buf.is_empty()
                && let Some(flusher) = FLUSHER.get()
            {
                flusher.unpark();
            }
            buf.extend_from_slice(data);
            if buf.len() >= GATHER_BYTES {
                write_out(&mut buf);
            }
        } else {
            write_out(&mut buf);
            std::io::stderr().lock().write_all(data)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts the thread that writes gathered lines out [`GATHER_MS`] ms after the first of
/// them arrived, once.
fn start_flusher() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("easel-log".into())
            .spawn(|| {
                loop {
                    std::thread::park();
                    std::thread::sleep(Duration::from_millis(GATHER_MS));
                    flush();
                }
            });
        match spawned {
            Ok(handle) => {
                let _ = FLUSHER.set(handle.thread().clone());
                FLUSHING.store(true, Ordering::Release);
                // A panic's message goes straight to stderr: what came before it first.
                let previous = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    // try_lock: never wait on a lock this thread may hold.
                    if let Ok(mut buf) = GATHERED.try_lock() {
                        write_out(&mut buf);
                    }
                    previous(info);
                }));
            }
            Err(_) => {
                eprintln!("cannot start the log thread; access lines are written as they come")
            }
        }
    });
}

/// The time in front of each line, as tracing's own clock writes it
/// (`2026-12-06T04:28:59.339947Z`), with the date and time of day worked out once a
/// second per thread rather than for every line.
#[derive(Clone)]
struct Clock;

/// One thread's last second, written out: `2026-12-06T04:28:59.`.
struct Second {
    unix: u64,
    text: String,
}

thread_local! {
    static SECOND: std::cell::RefCell<Option<Second>> = const { std::cell::RefCell::new(None) };
}

impl Clock {
    /// `unix` seconds as `YYYY-MM-DDTHH:MM:SS.`, UTC.
    fn second(unix: u64) -> String {
        let t = i64::try_from(unix)
            .ok()
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

impl tracing_subscriber::fmt::time::FormatTime for Clock {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let unix = now.as_secs();
        SECOND.with_borrow_mut(|cached| {
            let second = match cached {
                Some(s) if s.unix == unix => s,
                _ => cached.insert(Second {
                    unix,
                    text: Clock::second(unix),
                }),
            };
            write!(w, "{}{:06}Z", second.text, now.subsec_micros())
        })
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
            .with_timer(Clock)
            .with_writer(Sink)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .event_format(access::Text::new(Clock))
            .with_writer(Sink)
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        start_flusher();
    }
    LogHandle(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::FormatTime;

    #[test]
    fn the_clock_writes_what_tracings_own_clock_writes() {
        let stamp = |t: &dyn FormatTime| {
            let mut text = String::new();
            t.format_time(&mut Writer::new(&mut text)).expect("formats");
            text
        };
        // Taken twice each way, so the second of ours comes from the cache.
        for _ in 0..2 {
            let before = stamp(&tracing_subscriber::fmt::time::SystemTime);
            let ours = stamp(&Clock);
            let after = stamp(&tracing_subscriber::fmt::time::SystemTime);
            assert_eq!(ours.len(), before.len(), "{ours} / {before}");
            assert!(
                before <= ours && ours <= after,
                "{before} <= {ours} <= {after}"
            );
            assert!(ours.ends_with('Z') && ours.as_bytes()[10] == b'T', "{ours}");
        }
        assert_eq!(Clock::second(0), "1970-01-01T00:00:00.");
        assert_eq!(Clock::second(1_796_531_339), "2026-12-06T04:28:59.");
    }
}
