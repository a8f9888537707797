//! `journal.jsonl`: the append-only history of everything clamgate decided,
//! one JSON object a line, fsynced, so the 3 a.m. operator can see what
//! happened and in which order, even after a crash.
//!
//! Every line is one [`Event`]: the `event` name and the fields of each kind
//! are a contract that operators' scripts read, so they only ever grow.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One journal line: when, and what happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub(crate) ts: String,
    #[serde(flatten)]
    pub(crate) event: Event,
    /// The line as written, when read from the journal: what `history`
    /// shows, so a newer version's events and fields are not lost on the way.
    #[serde(skip)]
    pub(crate) raw: Option<Map<String, Value>>,
}

impl Entry {
    pub(crate) fn time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.ts).ok()
    }

    /// The event's name as written (`promotion.done`).
    pub fn name(&self) -> &'static str {
        self.event.name()
    }

    /// The release or candidate the event is about, if any.
    pub fn id(&self) -> Option<&str> {
        self.event.id()
    }

    /// The name on the line as written: a newer version's event by its own name.
    pub(crate) fn written_name(&self) -> &str {
        self.raw.as_ref().and_then(|r| r.get("event")).and_then(Value::as_str).unwrap_or(self.name())
    }

    /// The line as written, or as it would be.
    pub(crate) fn as_written(&self) -> Value {
        match &self.raw {
            Some(raw) => Value::Object(raw.clone()),
            None => serde_json::to_value(self).expect("journal entries serialize"),
        }
    }

    /// A line read back: typed where it can be; a line whose event is
    /// unknown, or whose fields this version cannot read, stays readable
    /// as `Unknown` and is never acted on.
    fn parse(line: &[u8]) -> Result<Entry, serde_json::Error> {
        let raw: Map<String, Value> = serde_json::from_slice(line)?;
        let mut entry = match serde_json::from_value::<Entry>(Value::Object(raw.clone())) {
            Ok(e) => e,
            Err(e) => match raw.get("ts").and_then(Value::as_str) {
                Some(ts) if raw.get("event").is_some_and(Value::is_string) => {
                    tracing::debug!("journal entry read as unknown: {e}");
                    Entry { ts: ts.to_string(), event: Event::Unknown, raw: None }
                }
                _ => return Err(e),
            },
        };
        entry.raw = Some(raw);
        Ok(entry)
    }
}

mod event;
pub(crate) use event::*;

#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(path: impl Into<PathBuf>) -> Journal {
        Journal { path: path.into() }
    }

    /// Appends one event and fsyncs.
    pub(crate) fn append(&self, event: Event) -> Result<(), JournalError> {
        let entry = Entry { ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(), event, raw: None };
        let mut line = serde_json::to_vec(&entry).expect("journal entries serialize");
        line.push(b'\n');
        self.write_line(line)
    }

    fn write_line(&self, mut line: Vec<u8>) -> Result<(), JournalError> {
        let io = |source| JournalError::Io { file: self.path.clone(), source };
        let mut f = OpenOptions::new().create(true).read(true).append(true).open(&self.path).map_err(io)?;
        // After a crash mid-write the file may end in a torn line: start ours
        // on a fresh line so it stays readable.
        let len = f.metadata().map_err(io)?.len();
        let mut last = [b'\n'];
        if len > 0 {
            std::os::unix::fs::FileExt::read_at(&f, &mut last, len - 1).map_err(io)?;
        }
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
        // One write(2) of the whole line: O_APPEND keeps concurrent writers' lines whole.
        f.write_all(&line).map_err(io)?;
        f.sync_data().map_err(io)
    }

    /// Every entry, oldest first. A torn last line (crash mid-write) is
    /// skipped, never fatal: the journal must stay readable.
    pub fn read(&self) -> Result<Vec<Entry>, JournalError> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(JournalError::Io { file: self.path.clone(), source }),
        };
        let mut out = Vec::new();
        for (n, line) in BufReader::new(f).split(b'\n').enumerate() {
            let line = line.map_err(|source| JournalError::Io { file: self.path.clone(), source })?;
            self.push_parsed(&line, n + 1, &mut out);
        }
        Ok(out)
    }

    /// The entries of the complete lines after byte `offset`, and the offset
    /// to read from next time: a follower's incremental read. A line still
    /// being written is left for the next call; a journal shorter than
    /// `offset` (replaced) is read from its start.
    pub(crate) fn read_from(&self, offset: u64) -> Result<(Vec<Entry>, u64), JournalError> {
        use std::io::{Read, Seek, SeekFrom};
        let io = |source| JournalError::Io { file: self.path.clone(), source };
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(source) => return Err(io(source)),
        };
        let len = f.metadata().map_err(io)?.len();
        let offset = if len < offset { 0 } else { offset };
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut bytes = Vec::new();
        f.take(len - offset).read_to_end(&mut bytes).map_err(io)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut out = Vec::new();
        for line in bytes[..complete].split(|&b| b == b'\n') {
            self.push_parsed(line, 0, &mut out);
        }
        Ok((out, offset + complete as u64))
    }

    fn push_parsed(&self, line: &[u8], number: usize, out: &mut Vec<Entry>) {
        if line.is_empty() {
            return;
        }
        match Entry::parse(line) {
            Ok(e) => out.push(e),
            Err(e) if number > 0 => tracing::warn!("{} line {number}: skipped unreadable entry: {e}", self.path.display()),
            Err(e) => tracing::warn!("{}: skipped unreadable entry: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::HeldFile;
    use crate::gate::Verdict;
    use crate::promote::Activation;

    fn done(id: &str) -> Event {
        Event::PromotionDone(Done { id: id.into(), from: None, production: Some("scanning".into()), reason: None, automatic: None })
    }

    #[test]
    fn appends_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let j = Journal::new(&path);
        j.append(done("abc")).unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"ts\":\"2026").unwrap();
        j.append(Event::Unpin { by: "ops".into() }).unwrap();
        let entries = j.read().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name(), "unpin");
        assert_eq!(entries[0].name(), "promotion.done");
        assert_eq!(entries[0].id(), Some("abc"));
        assert!(entries[0].time().is_some());
    }

    #[test]
    fn follows_complete_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let j = Journal::new(&path);
        assert_eq!(j.read_from(0).unwrap().1, 0, "no journal yet");
        j.append(done("a")).unwrap();
        let (first, at) = j.read_from(0).unwrap();
        assert_eq!(first.len(), 1);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"ts\":\"2026").unwrap();
        let (none, same) = j.read_from(at).unwrap();
        assert!(none.is_empty(), "a torn line is not read");
        assert_eq!(same, at);
        j.append(done("b")).unwrap();
        let (next, end) = j.read_from(at).unwrap();
        assert_eq!(next.iter().map(|e| e.id()).collect::<Vec<_>>(), [Some("b")], "the torn line is skipped, the next one read");
        assert_eq!(end, std::fs::metadata(&path).unwrap().len());
        std::fs::write(&path, b"").unwrap();
        assert_eq!(j.read_from(end).unwrap(), (Vec::new(), 0), "a replaced journal is read from its start");
    }

    fn held() -> HeldFile {
        HeldFile { name: "feed.ndb".into(), sha256: "ab".into(), reason: crate::reason::Code::CorpusFalsePositive, detail: "Feed.Sig on clean/a".into() }
    }

    /// The names each variant writes are the ones operators' scripts match
    /// on; `name()` must say the same.
    #[test]
    fn names_are_the_serialized_tags() {
        let b = Begin { id: "r".into(), from: None, mark_bad: None, reason: None, automatic: None };
        let i = Interrupted { id: "r".into(), live: None };
        let f = Failed { id: "r".into(), reason: "x".into(), from: None, rolled_back: None };
        let events = [
            Event::DaemonStarted { pid: 1, incoming: "/in".into() },
            Event::DaemonStopped { pid: 1 },
            Event::DaemonReloaded { config: Some("/etc/clamgate/clamgate.toml".into()), restart: vec!["state_dir".into()] },
            Event::DaemonReloadFailed { error: "policy: bad".into() },
            Event::HeldCleared { name: "fp.hdb".into(), sha256: "ab".into(), by: "ops".into() },
            Event::CandidateStarted { live: None },
            Event::CandidateCancelled { why: "x".into() },
            Event::CandidateError { error: "x".into() },
            Event::CandidateDeferred(crate::memguard::Deferral {
                limit: crate::memguard::decide::Limit::Cgroup,
                signatures: 10,
                needed: 3,
                available: 2,
                canary_estimate: 3,
                second_engine: 0,
                reserve: 0,
                cgroup: Some("/sys/fs/cgroup/x".into()),
            }),
            Event::CandidateChecked(Checked { id: None, verdict: Verdict::Reject, reasons: vec![], details: None }),
            Event::CandidateKnownBad { id: "r".into(), reasons: vec![] },
            Event::CandidateQuarantined { id: "r".into() },
            Event::CandidateHeld { id: "r".into(), pinned_by: "ops".into() },
            Event::CandidateIsolated { id: "c".into(), held: vec![held()], bisect_runs: 2 },
            Event::CandidateReduced { id: Some("r".into()), from: "c".into(), outcome: crate::isolate::Outcome::Reduced, held: vec![held()] },
            Event::ReleaseCreated { id: "r".into(), signatures: 3 },
            Event::ReleasePruned { ids: vec![] },
            Event::ReleaseMarkedBad { id: "r".into(), by: "ops".into() },
            Event::ReleaseUnmarkedBad { id: "r".into(), by: "ops".into() },
            Event::ReleaseForced { id: "r".into(), by: "ops".into(), reasons: vec![] },
            Event::QuarantineCleared { id: "r".into(), by: "ops".into() },
            Event::Pin { id: None, by: "ops".into() },
            Event::Unpin { by: "ops".into() },
            Event::begin(Activation::Promotion, b.clone()),
            done("r"),
            Event::failed(Activation::Promotion, f.clone()),
            Event::interrupted(Activation::Promotion, i.clone()),
            Event::begin(Activation::Rollback, b),
            Event::done(Activation::Rollback, Done { id: "r".into(), from: None, production: None, reason: Some("x".into()), automatic: Some(true) }),
            Event::failed(Activation::Rollback, f),
            Event::interrupted(Activation::Rollback, i),
            Event::RolloutStarted { release: "r".into() },
            Event::RolloutAdvanced { release: "r".into(), ring: "all".into() },
            Event::RolloutCompleted { release: "r".into() },
            Event::RolloutHalted {
                release: "r".into(),
                ring: "canary".into(),
                host: Some("http://mx1:3311".into()),
                reason: crate::fleet::rollout::HaltReason::Rejected,
                detail: "x".into(),
                to: Some("q".into()),
            },
            Event::RolloutPaused { ring: "all".into(), by: "ops".into() },
            Event::RolloutResumed { ring: "all".into(), by: "ops".into() },
            Event::RolloutReverted { ring: "all".into(), to: Some("q".into()), by: "gate".into() },
            Event::ReleasePublished { id: "r".into(), manifest_sha256: "ab".into() },
            Event::SourceFollowed { id: "r".into(), ring: "canary".into(), generation: 3 },
            Event::SourceRefused { file: "rings/canary.json".into(), reason: crate::fleet::source::Refusal::BadSignature, message: "x".into() },
        ];
        for e in events {
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["event"], e.name(), "{v}");
            assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        }
    }

    /// A journal written by clamgate before the events were typed (the
    /// demo's, plus the operator commands' lines) must still read, every
    /// line as the event it was, none as Unknown.
    #[test]
    fn reads_a_journal_written_before_typed_events() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/journal-v0.1.jsonl");
        let entries = Journal::new(&path).read().unwrap();
        let lines = std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.is_empty()).count();
        assert_eq!(entries.len(), lines, "every line parses");
        for e in &entries {
            assert_ne!(e.event, Event::Unknown, "{e:?}");
            // Writing it back gives the same JSON object (key order aside).
            let again = serde_json::to_value(e).unwrap();
            let orig: serde_json::Value = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|v| v["ts"] == e.ts && v["event"] == e.name())
                .unwrap();
            assert_eq!(again, orig);
        }
        let names: std::collections::BTreeSet<&str> = entries.iter().map(Entry::name).collect();
        for want in ["candidate.checked", "promotion.done", "rollback.done", "candidate.quarantined", "pin", "unpin", "release.marked_bad"] {
            assert!(names.contains(want), "fixture lacks {want}: {names:?}");
        }
        let line = r#"{"ts":"2026-12-01T00:00:00Z","event":"fleet.rollout","ring":"all"}"#;
        let unknown = Entry::parse(line.as_bytes()).unwrap();
        assert_eq!(unknown.event, Event::Unknown);
        assert_eq!(unknown.written_name(), "fleet.rollout");
        assert_eq!(unknown.as_written(), serde_json::from_str::<Value>(line).unwrap(), "shown as written");
        // A known name with fields this version cannot read is not dropped
        // (nor acted on) either.
        let odd = Entry::parse(br#"{"ts":"2026-12-01T00:00:00Z","event":"promotion.done","id":7}"#).unwrap();
        assert_eq!((odd.event.clone(), odd.written_name()), (Event::Unknown, "promotion.done"));
        assert!(Entry::parse(b"{\"ts\":\"2026").is_err(), "a torn line is not an entry");
    }
}
