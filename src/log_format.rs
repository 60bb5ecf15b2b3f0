//! The text log format: tracing-subscriber's full format, byte for byte,
//! with the access line (one per request, `dashcache::access`) written by a
//! formatter of its own.
//!
//! The generic formatter paints every field name and `=` through
//! nu_ansi_term even with colours off, escapes every string value one
//! character at a time through `Debug`, and pads each field through
//! `core::fmt`: about a third of the access line's cost on a cache hit
//! (docs/performance.md, "Access logging"). [`TextLines`] writes the same
//! bytes directly: plain values are copied, and only a value with a
//! character that needs escaping goes through the same `Debug` (and the
//! message through the same control-character escaping) as before.
//! Coloured output (a terminal) and events inside spans keep the generic
//! formatter.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The access line's target.
pub const ACCESS_TARGET: &str = "dashcache::access";

/// tracing-subscriber's full text format, with the access line's fast path.
#[derive(Default)]
pub struct TextLines {
    generic: Format<Full, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for TextLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET
            || writer.has_ansi_escapes()
            || !writer.sanitizes_ansi_escapes()
            || ctx.event_scope().is_some()
        {
            return self.generic.format_event(ctx, writer, event);
        }
        if SystemTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(level_column(*meta.level()))?;
        writer.write_str(ACCESS_TARGET)?;
        writer.write_str(": ")?;
        let mut fields = AccessFields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The space after the timestamp, the level as the generic format pads it,
/// and the space after it.
fn level_column(level: Level) -> &'static str {
    match level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    }
}

/// Writes an event's fields as tracing-subscriber's `DefaultVisitor` does:
/// the message as written, then ` name=value` with strings quoted.
struct AccessFields<'w, 'a> {
    writer: &'w mut Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl AccessFields<'_, '_> {
    /// `name=` after a space, or nothing before the first field.
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        self.writer.write_str(field.name())?;
        self.writer.write_char('=')
    }

    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| value(self.writer));
        }
    }

    /// The message, with the generic format's escaping.
    fn message(&mut self, text: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.writer.write_char(' ');
        }
        self.result = self
            .result
            .and_then(|()| Sanitizing(&mut *self.writer).write_fmt(text));
    }
}

impl Visit for AccessFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message(format_args!("{value}"));
        } else {
            self.field(field, |w| write_quoted(w, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, |w| write!(w, "{value:?}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            // `format_args!`, whose `Debug` is its text.
            self.message(format_args!("{value:?}"));
        } else {
            self.field(field, |w| write!(w, "{value:?}"));
        }
    }
}

/// A string field as `Debug` quotes it; plain printable ASCII is copied.
fn write_quoted(w: &mut Writer<'_>, value: &str) -> fmt::Result {
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        w.write_char('"')?;
        w.write_str(value)?;
        w.write_char('"')
    } else {
        write!(w, "{value:?}")
    }
}

/// Writes text with the terminal control characters the generic format
/// escapes in a message (ESC, BEL, BS, FF, DEL and the C1 range) as escapes.
struct Sanitizing<'w, 'a>(&'w mut Writer<'a>);

impl Write for Sanitizing<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return self.0.write_str(text);
        }
        for ch in text.chars() {
            match ch {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        /// The lines, each without its timestamp (the first word).
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| l.split_once(' ').unwrap().1.to_owned())
                .collect()
        }
    }

    /// Emits the same access events under the generic format and ours.
    fn both(emit: impl Fn()) -> (Vec<String>, Vec<String>) {
        let run = |fast: bool| {
            let out = Captured::default();
            let builder = tracing_subscriber::fmt()
                .with_writer(out.clone())
                .with_ansi(false);
            if fast {
                let subscriber = builder.event_format(TextLines::default()).finish();
                tracing::subscriber::with_default(subscriber, &emit);
            } else {
                tracing::subscriber::with_default(builder.finish(), &emit);
            }
            out.lines()
        };
        (run(false), run(true))
    }

    #[test]
    fn access_lines_are_byte_for_byte_the_generic_formats() {
        let (generic, fast) = both(|| {
            let route = "get_metrics";
            let key = Some("25713d9ff79ae9dd");
            tracing::info!(
                target: "dashcache::access",
                client = %std::net::IpAddr::from([127, 0, 0, 1]),
                method = %http::Method::GET,
                path = "/api/metrics",
                status = 200u16,
                cache = "HIT",
                route,
                key = key.map(tracing::field::display),
                upstream_ms = 0.0,
                saved_ms = Some(9.522),
                duration_ms = 0.001,
                request_id = "a985bc42366500000006da81",
                error = None::<&str>,
                "Cache {} for {route}", "HIT"
            );
            tracing::warn!(
                target: "dashcache::access",
                path = "/q\"uo\\te\u{1b}[31m",
                status = 502u16,
                upstream_ms = 2500.25,
                saved_ms = None::<f64>,
                duration_ms = 12.5,
                error = "upstream: connection refused",
                "Cache MISS for r\u{1b}[2Jo\u{85}ute - forwarding upstream"
            );
            tracing::info!(target: "dashcache::access", big = 1e20, negative = -3i64, ok = true, "admin request");
        });
        assert_eq!(fast.len(), 3, "{fast:#?}");
        assert_eq!(fast, generic);
        assert!(fast[0]
            .starts_with(" INFO dashcache::access: Cache HIT for get_metrics client=127.0.0.1"));
    }

    #[test]
    fn other_events_keep_the_generic_format() {
        let (generic, fast) = both(|| {
            tracing::info!(target: "dashcache::server", listen = "127.0.0.1:8080", "dashcache listening");
            let span = tracing::info_span!("reload", generation = 2);
            tracing::info!(target: "dashcache::access", parent: &span, status = 201u16, "a child");
            let _inside = span.enter();
            tracing::info!(target: "dashcache::access", status = 200u16, "inside a span");
        });
        assert_eq!(fast, generic);
        assert!(
            fast[1].contains("reload{generation=2}: dashcache::access"),
            "{fast:#?}"
        );
    }
}
