//! Where log lines go and which are kept. Under systemd (stderr is the
//! stream `JOURNAL_STREAM` names) they are native journal entries: a
//! priority from the level and each field as `CLAMGATE_<NAME>`
//! (`CLAMGATE_RELEASE`, `CLAMGATE_REASON`, `CLAMGATE_QUEUE_ID`, …).
//! Elsewhere, text (or JSON with `--log-json`) on stderr. `CLAMGATE_LOG`
//! picks the level; INFO is the lifecycle only (see [`spell`]).

pub(crate) mod spell;

use std::ffi::OsStr;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The prefix tracing-journald puts before every field but the message:
/// `release` is written as `CLAMGATE_RELEASE`.
pub(crate) const JOURNAL_FIELD_PREFIX: &str = "CLAMGATE";

/// How many lines a command writes unless `CLAMGATE_LOG` says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// The lifecycle (started, verdicts, promotions, spells) and problems.
    Lifecycle,
    /// Errors only: the demo prints its own story.
    Quiet,
}

impl Verbosity {
    /// Our own crate at the level; the libraries below only when they warn.
    fn directives(self) -> &'static str {
        match self {
            Verbosity::Lifecycle => "warn,clamgate=info",
            Verbosity::Quiet => "error",
        }
    }
}

/// Where the lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Journal,
    Json,
    Text,
}

/// Journal when stderr is still the journal stream systemd gave us (a
/// redirected stderr under a unit gets text); `--log-json` wins. Pure.
fn sink(json: bool, journal_stream: Option<&OsStr>, stderr: Option<(u64, u64)>) -> Sink {
    if json {
        return Sink::Json;
    }
    let named = journal_stream.and_then(OsStr::to_str).and_then(|s| s.split_once(':')).and_then(|(d, i)| Some((d.parse().ok()?, i.parse().ok()?)));
    match (named, stderr) {
        (Some(named), Some(actual)) if named == actual => Sink::Journal,
        _ => Sink::Text,
    }
}

/// stderr's device and inode, as `JOURNAL_STREAM` spells them.
fn stderr_id() -> Option<(u64, u64)> {
    let st = rustix::fs::fstat(std::io::stderr()).ok()?;
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// `CLAMGATE_LOG`, unless unset or empty; an invalid one is reported once
/// logging works, and the default used.
fn filter(verbosity: Verbosity) -> (EnvFilter, Option<String>) {
    match std::env::var("CLAMGATE_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(verbosity.directives()), Some(format!("CLAMGATE_LOG={v:?} is not a log filter ({e}); using the default"))),
        },
        _ => (EnvFilter::new(verbosity.directives()), None),
    }
}

/// Installs the global subscriber; called once, by `main`.
pub fn init(verbosity: Verbosity, json: bool) {
    let (filter, bad_filter) = filter(verbosity);
    let sink = sink(json, std::env::var_os("JOURNAL_STREAM").as_deref(), stderr_id());
    let mut journal_error = None;
    let journal = match sink {
        // The socket is gone but stderr still reaches the journal: text then.
        Sink::Journal => tracing_journald::layer().map_err(|e| journal_error = Some(e)).ok(),
        Sink::Json | Sink::Text => None,
    };
    if let Some(layer) = journal {
        let layer = layer.with_field_prefix(Some(JOURNAL_FIELD_PREFIX.into())).with_syslog_identifier("clamgate".into());
        tracing_subscriber::registry().with(filter).with(layer).init();
    } else {
        // No colour codes in a log file; NO_COLOR is honoured too.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
        let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
        if sink == Sink::Json { logs.json().init() } else { logs.init() }
    }
    if let Some(e) = journal_error {
        tracing::warn!("cannot write to journald ({e}); logging text to stderr");
    }
    if let Some(why) = bad_filter {
        tracing::warn!("{why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_only_when_stderr_is_the_stream_systemd_named() {
        let s = |v: &str| Some(OsStr::new(v).to_owned());
        for (json, stream, stderr, want) in [
            (false, s("8:1234"), Some((8, 1234)), Sink::Journal),
            // Under a unit, but stderr redirected (`clamgate status > f 2>&1`).
            (false, s("8:1234"), Some((8, 99)), Sink::Text),
            (false, s("8:1234"), None, Sink::Text),
            (false, s("garbage"), Some((8, 1234)), Sink::Text),
            (false, None, Some((8, 1234)), Sink::Text),
            (true, s("8:1234"), Some((8, 1234)), Sink::Json),
        ] {
            assert_eq!(sink(json, stream.as_deref(), stderr), want, "{stream:?} {stderr:?}");
        }
    }
}
