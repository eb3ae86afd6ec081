//! The text format of log lines: tracing-subscriber's own ("full", without colours),
//! with a quicker path for access lines.
//!
//! An access line (target `easel::http`, with only the middleware's fields) was the
//! costliest step of a proxied request that Easel adds itself: about 9,500
//! instructions, most of them the general formatter's styling of every part (which
//! writes nothing without colours) and a float formatted for `ms`. This path writes
//! the same bytes directly; any other line, or any line when colours are on, goes
//! through tracing's formatter unchanged. A test formats the same lines both ways.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of access lines.
pub const TARGET: &str = "easel::http";

/// The fields an access line may have; a line with any other goes the general way.
const FIELDS: [&str; 5] = ["message", "method", "route", "status", "ms"];

/// The text format (see the module doc).
pub struct Text<T> {
    full: Format<Full, T>,
    timer: T,
}

impl<T: FormatTime + Clone> Text<T> {
    pub fn new(timer: T) -> Self {
        Text {
            full: Format::default().with_timer(timer.clone()),
            timer,
        }
    }
}

fn is_access_line(event: &Event<'_>) -> bool {
    let meta = event.metadata();
    meta.target() == TARGET && meta.fields().iter().all(|f| FIELDS.contains(&f.name()))
}

/// A level as the full format writes it: five characters, right-aligned.
fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

impl<S, N, T> FormatEvent<S, N> for Text<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if w.has_ansi_escapes() || !is_access_line(event) {
            return self.full.format_event(ctx, w, event);
        }
        if self.timer.format_time(&mut w).is_err() {
            w.write_str("<unknown time>")?;
        }
        w.write_char(' ')?;
        w.write_str(level(event.metadata().level()))?;
        w.write_char(' ')?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                w.write_str(span.metadata().name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    w.write_char('{')?;
                    w.write_str(fields)?;
                    w.write_char('}')?;
                }
                w.write_char(':')?;
                seen = true;
            }
            if seen {
                w.write_char(' ')?;
            }
        }
        w.write_str(TARGET)?;
        w.write_str(": ")?;
        let mut fields = Fields {
            w: &mut w,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_char('\n')
    }
}

/// Writes an access line's fields as tracing's default field formatter does.
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// The separator and `name=` (nothing for the message).
    fn start(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.w.write_char(' ')?;
        }
        if field.name() != "message" {
            self.w.write_str(field.name())?;
            self.w.write_char('=')?;
        }
        Ok(())
    }

    fn write(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.start(field).and_then(|()| value(self.w));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            // The message is written with control characters escaped, as tracing does.
            self.write(field, |w| write!(Escaping(w), "{value:?}"));
        } else {
            self.write(field, |w| write!(w, "{value:?}"));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, |w| Escaping(w).write_str(value));
        } else {
            self.write(field, |w| write!(w, "{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.write(field, |w| millis(w, value));
    }
}

/// Writes `value` as `{:?}` does; one with at most three decimals (a time in
/// milliseconds from whole microseconds) without formatting a float.
fn millis(w: &mut Writer<'_>, value: f64) -> fmt::Result {
    let thousandths = (value * 1000.0).round();
    // Below 1e9 each thousandth is far apart from the next float, so the shortest
    // text that reads back as `value` is the thousandths' own.
    if !(0.0..1e9).contains(&value) || value.is_sign_negative() || thousandths / 1000.0 != value {
        return write!(w, "{value:?}");
    }
    let thousandths = thousandths as u64;
    let (whole, mut frac) = (thousandths / 1000, thousandths % 1000);
    w.write_str(itoa::Buffer::new().format(whole))?;
    if frac == 0 {
        return w.write_str(".0");
    }
    let mut digits = 3;
    while frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    let mut buf = itoa::Buffer::new();
    let text = buf.format(frac);
    w.write_char('.')?;
    for _ in text.len()..digits {
        w.write_char('0')?;
    }
    w.write_str(text)
}

/// Escapes what could steer a terminal, as tracing-subscriber escapes a message.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let plain = |c: char| {
            !matches!(
                c,
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
            )
        };
        if s.chars().all(plain) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    /// A clock that always says the same.
    #[derive(Clone)]
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-06T07:00:00.000001Z")
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// Lines as both formats write them.
    fn both(lines: impl Fn()) -> (String, String) {
        let run = |quick: bool| {
            let out = Captured::default();
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(out.clone());
            let subscriber = tracing_subscriber::registry().with(if quick {
                layer.event_format(Text::new(Fixed)).boxed()
            } else {
                layer.with_timer(Fixed).boxed()
            });
            tracing::subscriber::with_default(
                subscriber.with(tracing_subscriber::filter::LevelFilter::TRACE),
                &lines,
            );
            let text = out.0.lock().expect("lock").clone();
            String::from_utf8(text).expect("utf-8")
        };
        (run(true), run(false))
    }

    #[test]
    fn access_lines_are_written_as_tracings_own_format_writes_them() {
        let (quick, full) = both(|| {
            let span = tracing::info_span!("request", request_id = %"4f2a9c");
            let _in = span.enter();
            for ms in [
                0.0,
                0.001,
                0.05,
                0.1,
                8.213,
                12.5,
                1000.0,
                86_400_000.0,
                1e12,
                -1.0,
            ] {
                tracing::info!(target: "easel::http", method = %"POST", route = %"/v1/chat/completions", status = 200u16, ms, "request");
            }
            tracing::debug!(target: "easel::http", method = %"GET", route = %"/healthz", status = 200u16, ms = 0.2, "request");
            // Not only the middleware's fields: the general way.
            tracing::warn!(target: "easel::http", method = %"GET", other = "x\"y", "request");
            // A message that could steer a terminal, and a string field.
            tracing::info!(target: "easel::http", route = "quoted \"route\"", "bell \x07 esc \x1b c1 \u{85}");
            let inner = tracing::info_span!("inner");
            let _in = inner.enter();
            tracing::info!(target: "easel::http", status = 404u16, "request");
        });
        assert_eq!(quick.lines().count(), 14, "{quick}");
        assert_eq!(quick, full);
        assert!(
            quick.contains(
                "  INFO request{request_id=4f2a9c}: easel::http: request method=POST route=/v1/chat/completions status=200 ms=8.213\n"
            ),
            "{quick}"
        );
        let (quick, full) = both(|| {
            tracing::info!(target: "easel::http", status = 200u16, "outside any span");
            tracing::info!(target: "easel::store", version = 1, "not an access line");
        });
        assert_eq!(quick, full);
        assert_eq!(quick.lines().count(), 2, "{quick}");
    }

    #[test]
    fn access_lines_take_the_direct_path_and_others_the_general_one() {
        // A general formatter that leaves out the target tells the two paths apart.
        let out = Captured::default();
        let text = Text {
            full: Format::default().with_timer(Fixed).with_target(false),
            timer: Fixed,
        };
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(out.clone())
            .event_format(text);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            // The middleware's access line, field for field.
            let (method, route, status, ms) = ("POST", "/v1/chat/completions", 200u16, 0.25);
            tracing::info!(target: "easel::http", %method, %route, status, ms, "request");
            tracing::info!(target: "easel::http", other = 1, "request");
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with(
                "easel::http: request method=POST route=/v1/chat/completions status=200 ms=0.25"
            ),
            "{text}"
        );
        assert!(!lines[1].contains("easel::http"), "{text}");
    }

    #[test]
    fn milliseconds_read_as_the_float_would() {
        let mut out = String::new();
        let micros = (0..300_000u64).chain([999_999, 1_000_001, 86_400_000_000, 123_456_789_012]);
        for us in micros {
            let v = us as f64 / 1000.0;
            out.clear();
            millis(&mut Writer::new(&mut out), v).expect("writes");
            assert_eq!(out, format!("{v:?}"), "{us} µs");
        }
        for v in [1e9, 1e16, 0.0001, 1.0 / 3.0, f64::NAN, -0.5, -0.0] {
            out.clear();
            millis(&mut Writer::new(&mut out), v).expect("writes");
            assert_eq!(out, format!("{v:?}"));
        }
    }
}
