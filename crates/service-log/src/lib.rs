//! Log output shared by the project's binaries (`provision`, `mqtt-ingest`):
//! every one takes `--log-format text|json` and writes its log to standard
//! error the same way.
//!
//! - [`LogFormat::Text`]: one line an event, coloured only for a person at a
//!   terminal who did not set `NO_COLOR` (no-color.org); a log file or the
//!   journal gets plain text.
//! - [`LogFormat::Json`]: one JSON object a line, for a log shipper:
//!   `time` (RFC 3339, UTC), `level`, `target`, `message`, `fields` (the
//!   event's other fields), and `spans` (the names of the spans it is in,
//!   outermost first) when there are any.
//!
//! `RUST_LOG` chooses what is logged (`tracing-subscriber`'s `EnvFilter`);
//! without it, the binary's default.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines (colour only at a terminal without `NO_COLOR`).
    #[default]
    Text,
    /// One JSON object a line: time, level, target, message, fields.
    Json,
}

/// What can go wrong setting up the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `RUST_LOG` is set but is not a filter `tracing-subscriber` reads.
    #[error("RUST_LOG={value:?} is not a log filter: {reason}")]
    Filter {
        /// The value given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// This process has a logger already.
    #[error("the log was set up twice: {0}")]
    AlreadySet(String),
}

/// Whether text log lines may carry colour: standard error is a terminal
/// and `NO_COLOR` is unset or empty.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Sends this process's `tracing` events to standard error in `format`,
/// filtered by `RUST_LOG` or else by `default_filter` (such as `"info"`).
///
/// # Errors
/// [`Error::Filter`] for a `RUST_LOG` that does not parse (it used to be
/// ignored silently), [`Error::AlreadySet`] when called twice.
pub fn init(format: LogFormat, default_filter: &str) -> Result<(), Error> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => {
            tracing_subscriber::EnvFilter::try_new(&value).map_err(|e| Error::Filter {
                value,
                reason: e.to_string(),
            })?
        }
        _ => tracing_subscriber::EnvFilter::new(default_filter),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let set = match format {
        LogFormat::Text => builder.with_ansi(colour()).try_init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).try_init(),
    };
    set.map_err(|e| Error::AlreadySet(e.to_string()))
}

/// Says why the program stops, as its log does: a JSON line at level
/// ERROR (target `main`) in [`LogFormat::Json`], else `error: MESSAGE` on
/// standard error, so that a journal of JSON lines stays JSON to the end.
pub fn fatal(format: LogFormat, message: &str) {
    match format {
        LogFormat::Json => tracing::error!(target: "main", "{message}"),
        LogFormat::Text => eprintln!("error: {message}"),
    }
}

/// The JSON line format (see the crate's documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
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
        writeln!(writer, "{}", json_line(ctx, event))
    }
}

fn json_line<S, N>(ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> serde_json::Value
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let mut time = String::new();
    // SystemTime writes RFC 3339 in UTC; a clock that cannot be read
    // leaves the field empty rather than losing the event.
    let _ = SystemTime.format_time(&mut Writer::new(&mut time));
    let mut fields = Fields::default();
    event.record(&mut fields);
    let meta = event.metadata();
    let mut line = serde_json::Map::new();
    line.insert("time".into(), time.into());
    line.insert("level".into(), meta.level().as_str().into());
    line.insert("target".into(), meta.target().into());
    line.insert("message".into(), fields.message.unwrap_or_default().into());
    line.insert("fields".into(), fields.others.into());
    if let Some(scope) = ctx.event_scope() {
        let spans: Vec<serde_json::Value> =
            scope.from_root().map(|span| span.name().into()).collect();
        line.insert("spans".into(), spans.into());
    }
    line.into()
}

/// An event's fields: `message` apart, the others by name.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    others: serde_json::Map<String, serde_json::Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.others.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_json_line_has_time_level_target_message_and_fields() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || out.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("worker");
            let _in = span.enter();
            tracing::warn!(target: "ingest::writer", rows = 3_u64, ok = true, topic = "a/\"b\"", "stored {} rows", 3);
            tracing::info!("second\nline");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "one object a line, newlines escaped: {text}"
        );
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["target"], "ingest::writer");
        assert_eq!(first["message"], "stored 3 rows");
        assert_eq!(first["fields"]["rows"], 3);
        assert_eq!(first["fields"]["ok"], true);
        assert_eq!(first["fields"]["topic"], "a/\"b\"");
        assert_eq!(first["spans"][0], "worker");
        let time = first["time"].as_str().unwrap();
        assert!(
            time.len() >= 20 && time.ends_with('Z') && time.contains('T'),
            "{time}"
        );
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["message"], "second\nline");
        assert_eq!(second["fields"], serde_json::json!({}));
    }
}
