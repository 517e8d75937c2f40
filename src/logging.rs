//! Log output: logfmt in the shape node_exporter (go-kit log, promlog) writes, or JSON.
//!
//! ```text
//! ts=2026-12-01T21:39:53.123Z level=info caller=daemon.rs:80 msg="serving metrics" address=[::]:9815
//! ```
//!
//! `ts` (UTC, milliseconds), `level` (lower case), `caller` (file:line of the call site,
//! file name only), `msg`, then the event's own fields in the order written. Keys and
//! quoting follow go-logfmt, the encoder behind go-kit: a value is quoted when it holds a
//! space, `=`, `"` or a control character, and escaped inside the quotes like a Go
//! string; an empty value is written `""` (as Go's slog does), never as a bare `key=`.
//! Every line is one line: a newline in a value is written `\n`.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Installs the process's logger: `level` and above, to stderr, in `format`.
pub fn init(level: Level, format: LogFormat) {
    init_with_writer(level, format, std::io::stderr);
}

/// `init` with another destination (tests).
pub fn init_with_writer<W>(level: Level, format: LogFormat, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_ansi(false);
    // A second logger (tests that install one each) is refused; the first one stays.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Logfmt => builder.event_format(Logfmt).try_init(),
    };
}

/// The logfmt line format (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events from the `log` crate (dependencies) carry their call site in fields.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let caller = match (metadata.file(), metadata.line()) {
            (Some(file), Some(line)) => {
                let name = file.rsplit(['/', '\\']).next().unwrap_or(file);
                format!("{name}:{line}")
            }
            _ => metadata.target().to_string(),
        };
        let mut fields = Fields::default();
        event.record(&mut fields);

        let mut line = String::with_capacity(128);
        line.push_str("ts=");
        line.push_str(&humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        line.push_str(" level=");
        line.push_str(level_name(*metadata.level()));
        push_pair(&mut line, "caller", &caller);
        push_pair(&mut line, "msg", &fields.message);
        if !fields.rest.is_empty() {
            line.push(' ');
            line.push_str(&fields.rest);
        }
        writeln!(writer, "{line}")
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// The message apart (it is written first), the other fields already encoded.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Fields {
    fn add(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            // tracing-log's call-site fields: already in `caller`.
            name if name.starts_with("log.") => {}
            name => push_pair(&mut self.rest, name, value),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.add(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too, wrapped so that Debug prints their Display.
        self.add(field, &format!("{value:?}"));
    }
}

/// Appends ` key=value`, the key reduced to what logfmt allows and the value quoted when
/// go-logfmt would quote it.
fn push_pair(line: &mut String, key: &str, value: &str) {
    if !line.is_empty() {
        line.push(' ');
    }
    let key_start = line.len();
    line.extend(key.chars().filter(|&c| !needs_quote(c)));
    if line.len() == key_start {
        line.push('_');
    }
    line.push('=');
    if value.is_empty() || value.chars().any(needs_quote) {
        push_quoted(line, value);
    } else {
        line.push_str(value);
    }
}

/// go-logfmt's `needsQuotedValueRune`: space and below, `=`, `"`, and the replacement
/// character; DEL and the C1 controls are added so that no raw control byte is written.
fn needs_quote(c: char) -> bool {
    c <= ' ' || c == '=' || c == '"' || c == '\u{fffd}' || c.is_control()
}

/// A Go-style quoted string, as go-logfmt writes it.
fn push_quoted(line: &mut String, value: &str) {
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{:04x}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, value: &str) -> String {
        let mut line = String::new();
        push_pair(&mut line, key, value);
        line
    }

    #[test]
    fn values_are_quoted_only_when_needed() {
        assert_eq!(pair("address", "[::]:9815"), "address=[::]:9815");
        assert_eq!(pair("msg", "serving metrics"), "msg=\"serving metrics\"");
        assert_eq!(pair("k", ""), "k=\"\"");
        assert_eq!(pair("k", "a=b"), "k=\"a=b\"");
        assert_eq!(
            pair("error", "unknown state \"close_wiat\" at C:\\x"),
            "error=\"unknown state \\\"close_wiat\\\" at C:\\\\x\""
        );
        assert_eq!(
            pair("k", "two\nlines\t\u{1b}"),
            "k=\"two\\nlines\\t\\u001b\""
        );
        assert_eq!(pair("k", "ünïcode"), "k=ünïcode");
    }

    #[test]
    fn keys_lose_what_logfmt_cannot_hold() {
        assert_eq!(pair("a key", "v"), "akey=v");
        assert_eq!(pair("=", "v"), "_=v");
    }

    #[test]
    fn a_line_has_the_node_exporter_shape() {
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .event_format(Logfmt)
            .finish();
        let call_line = line!() + 2;
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(address = %"[::]:9815", tls = false, count = 3, "serving metrics");
        });
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
        let (ts, rest) = text
            .strip_prefix("ts=")
            .and_then(|t| t.split_once(' '))
            .expect("starts with ts=");
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        assert!(ts.ends_with('Z') && ts.len() == "2026-12-01T21:39:53.123Z".len());
        let caller = format!("caller=logging.rs:{call_line}");
        assert_eq!(
            rest,
            format!(
                "level=warn {caller} msg=\"serving metrics\" address=[::]:9815 tls=false count=3\n"
            )
        );
    }
}
