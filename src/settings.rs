//! Reading the operator's TOML files (config and policy) into checked values.
//!
//! The files are parsed into a raw table first, then each known key is taken
//! and validated; every problem is collected, so one run reports all bad keys
//! at once, each by name and by `file:line:column`, and any key left over is
//! reported as unknown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// Problems found in one settings file, each naming its key and, when the
/// file has it, where: `file:line:column: key: what`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.lines().join("; "))]
pub struct SettingsError {
    pub(crate) file: PathBuf,
    pub(crate) problems: Vec<Problem>,
}

impl SettingsError {
    /// One line per problem, each with the file and position, for printing
    /// them one under the other (`clamgate config check`).
    pub fn lines(&self) -> Vec<String> {
        self.problems.iter().map(|p| p.located(&self.file)).collect()
    }
}

/// One bad key or value; `at` is its line and column (1-based), when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) at: Option<(usize, usize)>,
    /// `key: what is wrong`.
    pub(crate) text: String,
}

impl Problem {
    pub(crate) fn new(at: Option<(usize, usize)>, text: impl Into<String>) -> Problem {
        Problem { at, text: text.into() }
    }

    fn located(&self, file: &Path) -> String {
        match self.at {
            Some((line, col)) => format!("{}:{line}:{col}: {}", file.display(), self.text),
            None => format!("{}: {}", file.display(), self.text),
        }
    }
}

/// Where each key of a file was written: the dotted path, as a list so a key
/// with a dot in it (`"infected/clam.exe"`) stays one segment.
#[derive(Debug, Default)]
struct Spans {
    keys: HashMap<Vec<String>, usize>,
    /// Byte offset where each line starts.
    lines: Vec<usize>,
}

impl Spans {
    fn of(text: &str) -> Spans {
        let mut spans = Spans { keys: HashMap::new(), lines: line_starts(text) };
        if let Ok(doc) = toml::de::DeTable::parse(text) {
            spans.collect(doc.get_ref(), &mut Vec::new());
        }
        spans
    }

    fn collect(&mut self, table: &toml::de::DeTable<'_>, path: &mut Vec<String>) {
        for (k, v) in table.iter() {
            path.push(k.get_ref().to_string());
            self.keys.insert(path.clone(), k.span().start);
            if let toml::de::DeValue::Table(t) = v.get_ref() {
                self.collect(t, path);
            }
            path.pop();
        }
    }

    fn at(&self, path: &[String]) -> Option<(usize, usize)> {
        self.keys.get(path).map(|&offset| line_col(&self.lines, offset))
    }
}

/// Where the key at `path` (`["clamd", "binary"]`) is set in `text`, as
/// 1-based line and column; `None` when the file does not set it.
pub(crate) fn position(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    Spans::of(text).at(&path)
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect()
}

/// 1-based line and column (in bytes) of a byte offset.
fn line_col(lines: &[usize], offset: usize) -> (usize, usize) {
    let line = lines.partition_point(|&start| start <= offset).max(1);
    (line, offset - lines[line - 1] + 1)
}

/// Takes keys out of a TOML table, recording problems instead of stopping.
pub(crate) struct Fields {
    prefix: String,
    path: Vec<String>,
    spans: Rc<Spans>,
    table: toml::Table,
    problems: Vec<Problem>,
}

impl Fields {
    pub(crate) fn parse(file: &Path, text: &str) -> Result<Fields, SettingsError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e.span().map(|s| line_col(&line_starts(text), s.start));
            SettingsError { file: file.to_path_buf(), problems: vec![Problem::new(at, format!("not valid TOML: {}", e.message().trim_end()))] }
        })?;
        Ok(Fields { prefix: String::new(), path: Vec::new(), spans: Rc::new(Spans::of(text)), table, problems: Vec::new() })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn take(&mut self, key: &str) -> Option<toml::Value> {
        self.table.remove(key)
    }

    /// Where `key` of this table was written, if it was.
    fn at(&self, key: &str) -> Option<(usize, usize)> {
        let mut path = self.path.clone();
        path.push(key.to_string());
        self.spans.at(&path)
    }

    /// Records a problem with `key`, at the line where the file sets it.
    pub(crate) fn problem(&mut self, key: &str, what: impl std::fmt::Display) {
        let p = Problem::new(self.at(key), format!("{}: {what}", self.key(key)));
        self.problems.push(p);
    }

    /// A `[section]`: its keys are checked by `f` with `section.` in messages.
    pub(crate) fn section<T>(&mut self, key: &str, f: impl FnOnce(&mut Fields) -> T) -> T {
        let table = match self.take(key) {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                self.problem(key, "must be a table");
                toml::Table::new()
            }
        };
        let mut path = self.path.clone();
        path.push(key.to_string());
        let mut sub = Fields { prefix: format!("{}{key}.", self.prefix), path, spans: self.spans.clone(), table, problems: Vec::new() };
        let out = f(&mut sub);
        sub.finish_into(&mut self.problems);
        out
    }

    /// Whether the table sets `key` (an optional `[section]`).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// An array of tables (`[[key]]`), each checked by `f` with `key[i].` in messages.
    pub(crate) fn tables<T>(&mut self, key: &str, mut f: impl FnMut(&mut Fields) -> T) -> Vec<T> {
        let items = match self.take(key) {
            None => return Vec::new(),
            Some(toml::Value::Array(a)) => a,
            Some(_) => {
                self.problem(key, "must be a list of tables ([[...]])");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let toml::Value::Table(table) = item else {
                self.problem(key, "must be a list of tables ([[...]])");
                continue;
            };
            let mut path = self.path.clone();
            path.push(key.to_string());
            let mut sub = Fields { prefix: format!("{}{key}[{i}].", self.prefix), path, spans: self.spans.clone(), table, problems: Vec::new() };
            out.push(f(&mut sub));
            sub.finish_into(&mut self.problems);
        }
        out
    }

    /// A duration that may be zero (`soak = "0s"`).
    pub(crate) fn span(&mut self, key: &str, default: &str) -> Duration {
        let fallback = parse_duration(default).expect("default durations are valid");
        let Some(text) = self.opt_string(key) else { return fallback };
        parse_duration(&text).unwrap_or_else(|e| {
            self.problem(key, e);
            fallback
        })
    }

    pub(crate) fn string(&mut self, key: &str, default: &str) -> String {
        self.opt_string(key).unwrap_or_else(|| default.to_string())
    }

    pub(crate) fn opt_string(&mut self, key: &str) -> Option<String> {
        match self.take(key)? {
            toml::Value::String(s) => Some(s),
            other => {
                self.problem(key, format_args!("expected a string, found {}", other.type_str()));
                None
            }
        }
    }

    /// One of a fixed set of spellings (`mode = "scan"`), parsed into its
    /// enum; a value that is none of them is a problem naming the key.
    pub(crate) fn choice<T: std::str::FromStr>(&mut self, key: &str, default: T) -> T
    where
        T::Err: std::fmt::Display,
    {
        let Some(text) = self.opt_string(key) else { return default };
        text.parse().unwrap_or_else(|e| {
            self.problem(key, e);
            default
        })
    }

    /// A list of strings (`key = ["a", "b"]`), `None` when the key is not set.
    pub(crate) fn opt_strings(&mut self, key: &str) -> Option<Vec<String>> {
        Some(match self.take(key)? {
            toml::Value::Array(a) => {
                let out: Vec<String> = a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
                if out.len() != a.len() {
                    self.problem(key, "expected a list of strings");
                }
                out
            }
            other => {
                self.problem(key, format_args!("expected a list of strings, found {}", other.type_str()));
                return None;
            }
        })
    }

    pub(crate) fn path(&mut self, key: &str, default: &str) -> PathBuf {
        PathBuf::from(self.string(key, default))
    }

    pub(crate) fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.take(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => b,
            Some(other) => {
                self.problem(key, format_args!("expected true or false, found {}", other.type_str()));
                default
            }
        }
    }

    /// An integer within `range` (inclusive).
    pub(crate) fn int(&mut self, key: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
        match self.take(key) {
            None => default,
            Some(toml::Value::Integer(i)) if i >= 0 && range.contains(&(i as u64)) => i as u64,
            Some(toml::Value::Integer(i)) => {
                self.problem(key, format_args!("{i} is out of range {}..={}", range.start(), range.end()));
                default
            }
            Some(other) => {
                self.problem(key, format_args!("expected an integer, found {}", other.type_str()));
                default
            }
        }
    }

    pub(crate) fn float(&mut self, key: &str, default: f64, range: std::ops::RangeInclusive<f64>) -> f64 {
        let v = match self.take(key) {
            None => return default,
            Some(toml::Value::Float(f)) => f,
            Some(toml::Value::Integer(i)) => i as f64,
            Some(other) => {
                self.problem(key, format_args!("expected a number, found {}", other.type_str()));
                return default;
            }
        };
        if range.contains(&v) {
            v
        } else {
            self.problem(key, format_args!("{v} is out of range {}..={}", range.start(), range.end()));
            default
        }
    }

    /// A duration written like `"500ms"`, `"10s"`, `"5m"`, `"7d"`.
    pub(crate) fn duration(&mut self, key: &str, default: &str) -> Duration {
        let fallback = parse_duration(default).expect("default durations are valid");
        let Some(text) = self.opt_string(key) else { return fallback };
        match parse_duration(&text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(key, "must be longer than zero");
                fallback
            }
            Err(e) => {
                self.problem(key, e);
                fallback
            }
        }
    }

    /// A byte size written like `"512MiB"`, `"2GiB"`, `"100MB"` or a bare number.
    pub(crate) fn size(&mut self, key: &str, default: &str) -> u64 {
        let fallback = parse_size(default).expect("default sizes are valid");
        let text = match self.take(key) {
            None => return fallback,
            Some(toml::Value::String(s)) => s,
            Some(toml::Value::Integer(i)) if i > 0 => return i as u64,
            Some(other) => {
                self.problem(key, format_args!("expected a size like \"512MiB\", found {other}"));
                return fallback;
            }
        };
        match parse_size(&text) {
            Ok(0) => {
                self.problem(key, "must be larger than zero");
                fallback
            }
            Ok(n) => n,
            Err(e) => {
                self.problem(key, e);
                fallback
            }
        }
    }

    fn finish_into(mut self, problems: &mut Vec<Problem>) {
        let left: Vec<String> = self.table.keys().cloned().collect();
        for key in left {
            self.problem(&key, "unknown key");
        }
        problems.extend(self.problems);
    }

    /// Reports every problem, unknown keys included, or nothing.
    pub(crate) fn finish(self, file: &Path) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        self.finish_into(&mut problems);
        if problems.is_empty() { Ok(()) } else { Err(SettingsError { file: file.to_path_buf(), problems }) }
    }
}

/// A value that does not parse, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

impl From<String> for BadValue {
    fn from(s: String) -> Self {
        BadValue(s)
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, BadValue> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration {text:?} ({e}; write it like \"500ms\", \"10s\", \"5m\")").into())
}

pub fn parse_size(text: &str) -> Result<u64, BadValue> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num.parse().map_err(|_| format!("invalid size {text:?} (write it like \"512MiB\")"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(format!("invalid size unit {u:?} in {text:?} (use B, KiB, MiB, GiB, KB, MB, GB)").into()),
    };
    num.checked_mul(mult).ok_or_else(|| format!("size {text:?} is too large").into())
}

/// Formats bytes for people: `178.0 MiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (t, want) in [("1", Ok(1)), ("512MiB", Ok(512 << 20)), ("2 GiB", Ok(2 << 30)), ("100MB", Ok(100_000_000))] {
            assert_eq!(parse_size(t), want, "{t}");
        }
        for t in ["", "MiB", "12 parsecs", "-1", "99999999999999999999GiB", "1.5GiB"] {
            assert!(parse_size(t).is_err(), "{t}");
        }
        assert_eq!(human_size(178 << 20), "178.0 MiB");
        assert_eq!(human_size(12), "12 B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn collects_every_problem_with_its_key() {
        let file = Path::new("p.toml");
        let mut f = Fields::parse(file, "a = \"x\"\nb = -3\nc = true\nzz = 1\n[s]\nd = 5\nq = 1\n").unwrap();
        f.duration("a", "1s");
        f.int("b", 1, 0..=10);
        f.string("c", "");
        f.section("s", |s| s.duration("d", "1s"));
        let err = f.finish(file).unwrap_err();
        let msg = err.to_string();
        for want in ["a: invalid duration", "b: -3 is out of range", "c: expected a string", "s.d: expected a string", "s.q: unknown key", "zz: unknown key"] {
            assert!(msg.contains(want), "{want:?} missing in {msg}");
        }
        assert!(msg.starts_with("p.toml:1:1: a: invalid duration"), "{msg}");
        for want in ["p.toml:2:1: b:", "p.toml:4:1: zz: unknown key", "p.toml:6:1: s.d:", "p.toml:7:1: s.q: unknown key"] {
            assert!(msg.contains(want), "{want:?} missing in {msg}");
        }
    }

    /// An operator's typo must point at the line to fix, not only the key.
    #[test]
    fn positions_are_line_and_column() {
        let file = Path::new("c.toml");
        let mut f = Fields::parse(file, "# comment\n\n[milter]\n  lisen = \"x\"\n").unwrap();
        f.section("milter", |s| s.string("listen", ""));
        assert_eq!(f.finish(file).unwrap_err().lines(), ["c.toml:4:3: milter.lisen: unknown key"]);
        let err = Fields::parse(file, "a = 1\nb = \n").err().unwrap();
        assert!(err.to_string().starts_with("c.toml:2:"), "{err}");
        assert_eq!(line_col(&line_starts("ab\ncd"), 4), (2, 2));
    }
}
