//! `journal.jsonl`: the append-only history of everything clamgate decided,
//! one JSON object a line, fsynced, so the 3 a.m. operator can see what
//! happened and in which order, even after a crash.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
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

/// One journal line: when, what, and the event's own fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub ts: String,
    pub event: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Entry {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    pub fn time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.ts).ok()
    }
}

#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(path: impl Into<PathBuf>) -> Journal {
        Journal { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event and fsyncs. `fields` must be a JSON object.
    pub fn append(&self, event: &str, fields: Value) -> Result<(), JournalError> {
        let io = |source| JournalError::Io { file: self.path.clone(), source };
        let mut map = match fields {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => Map::from_iter([("value".to_string(), other)]),
        };
        map.remove("ts");
        map.remove("event");
        let entry = Entry { ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(), event: event.into(), fields: map };
        let mut line = serde_json::to_vec(&entry).expect("journal entries serialize");
        line.push(b'\n');
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
        f.sync_data().map_err(io)?;
        Ok(())
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
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Entry>(&line) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!("{} line {}: skipped unreadable entry: {e}", self.path.display(), n + 1),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn appends_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("journal.jsonl"));
        j.append("promotion.done", json!({"id": "abc", "ts": "ignored"})).unwrap();
        std::fs::OpenOptions::new().append(true).open(j.path()).unwrap().write_all(b"{\"ts\":\"2026").unwrap();
        j.append("after.crash", json!({})).unwrap();
        let entries = j.read().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].event, "after.crash");
        assert_eq!(entries[0].event, "promotion.done");
        assert_eq!(entries[0].get("id"), Some("abc"));
        assert!(entries[0].time().is_some());
    }
}
