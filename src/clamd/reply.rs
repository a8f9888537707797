//! Parsers for clamd's replies: pure functions over bytes, so every odd reply
//! a real clamd can send is a table row in the tests below, never a panic.

use std::fmt;

use serde::Serialize;

/// What clamd said about one scanned stream.
///
/// `Error` is a verdict, not a transport failure: clamd answered, but could not
/// scan (size limit, out of memory, engine not loaded). Callers must treat it
/// as "not scanned", never as clean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "snake_case")]
pub enum ScanVerdict {
    Clean,
    Infected(String),
    Error(String),
}

impl ScanVerdict {
    pub fn is_infected(&self) -> bool {
        matches!(self, ScanVerdict::Infected(_))
    }
}

impl fmt::Display for ScanVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanVerdict::Clean => f.write_str("clean"),
            ScanVerdict::Infected(sig) => write!(f, "infected ({sig})"),
            ScanVerdict::Error(text) => write!(f, "scan error ({text})"),
        }
    }
}

/// clamd's VERSION reply: `ClamAV 1.4.6/27000/Mon Nov 23 09:00:00 2026`.
///
/// The database part is absent when no `daily` database is loaded (custom
/// signature sets only); clamgate then identifies releases by its own id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// Engine version, e.g. `1.4.6`.
    pub engine: String,
    /// Version of the loaded `daily` database, if any.
    pub database: Option<u64>,
    /// Build date of that database as clamd prints it.
    pub(crate) database_date: Option<String>,
}

/// Why a reply could not be understood; carries the reply (shortened) so the
/// error line shows what clamd really sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {reply:?}")]
pub struct ReplyError {
    pub(crate) reason: &'static str,
    pub(crate) reply: String,
}

fn bad(reason: &'static str, reply: &str) -> ReplyError {
    let mut reply = reply.to_string();
    if reply.len() > 200 {
        let mut cut = 200;
        while !reply.is_char_boundary(cut) {
            cut -= 1;
        }
        reply.truncate(cut);
        reply.push('…');
    }
    ReplyError { reason, reply }
}

/// Strips the NUL (z-commands) or newline (n-commands) terminator.
///
/// A reply without terminator is truncated: clamd always terminates, so a
/// missing one means the connection was cut mid-reply.
pub(crate) fn text(raw: &[u8]) -> Result<&str, ReplyError> {
    let text = std::str::from_utf8(raw).map_err(|_| bad("reply is not UTF-8", &String::from_utf8_lossy(raw)))?;
    if text.is_empty() {
        return Err(bad("empty reply (clamd closed the connection)", text));
    }
    text.strip_suffix('\0').or_else(|| text.strip_suffix('\n')).ok_or_else(|| bad("truncated reply (no terminator)", text))
}

pub fn parse_ping(raw: &[u8]) -> Result<(), ReplyError> {
    let t = text(raw)?;
    if t == "PONG" { Ok(()) } else { Err(bad("expected PONG", t)) }
}

pub fn parse_reload(raw: &[u8]) -> Result<(), ReplyError> {
    let t = text(raw)?;
    if t == "RELOADING" { Ok(()) } else { Err(bad("expected RELOADING", t)) }
}

pub fn parse_version(raw: &[u8]) -> Result<Version, ReplyError> {
    let t = text(raw)?;
    let rest = t.strip_prefix("ClamAV ").ok_or_else(|| bad("VERSION reply does not start with 'ClamAV '", t))?;
    let mut parts = rest.splitn(3, '/');
    let engine = parts.next().unwrap_or_default().trim();
    if engine.is_empty() || !engine.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad("VERSION reply has no engine version", t));
    }
    let database = match parts.next() {
        None => None,
        Some(v) => Some(v.trim().parse::<u64>().map_err(|_| bad("VERSION reply has a non-numeric database version", t))?),
    };
    let database_date = match parts.next() {
        None if database.is_some() => return Err(bad("VERSION reply has a database version but no date", t)),
        None => None,
        Some(d) if d.trim().is_empty() => return Err(bad("VERSION reply has an empty database date", t)),
        Some(d) => Some(d.trim().to_string()),
    };
    Ok(Version { engine: engine.to_string(), database, database_date })
}

/// Parses an INSTREAM reply: `stream: OK`, `stream: NAME FOUND`, `… ERROR`.
pub fn parse_scan(raw: &[u8]) -> Result<ScanVerdict, ReplyError> {
    let t = text(raw)?;
    if let Some(body) = t.strip_suffix(" ERROR") {
        let body = body.strip_prefix("stream: ").unwrap_or(body);
        return Ok(ScanVerdict::Error(body.trim().to_string()));
    }
    let body = t.strip_prefix("stream: ").ok_or_else(|| bad("scan reply does not start with 'stream: '", t))?;
    if body == "OK" {
        return Ok(ScanVerdict::Clean);
    }
    if let Some(sig) = body.strip_suffix(" FOUND") {
        let sig = sig.trim();
        if sig.is_empty() {
            return Err(bad("scan reply says FOUND without a signature name", t));
        }
        return Ok(ScanVerdict::Infected(sig.to_string()));
    }
    Err(bad("unknown scan reply", t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_replies() {
        let ok: &[(&[u8], ScanVerdict)] = &[
            (b"stream: OK\0", ScanVerdict::Clean),
            (b"stream: OK\n", ScanVerdict::Clean),
            (b"stream: Eicar-Test-Signature FOUND\0", ScanVerdict::Infected("Eicar-Test-Signature".into())),
            (b"stream: Clamgate.Test.ClamExe.UNOFFICIAL FOUND\0", ScanVerdict::Infected("Clamgate.Test.ClamExe.UNOFFICIAL".into())),
            (b"INSTREAM size limit exceeded. ERROR\0", ScanVerdict::Error("INSTREAM size limit exceeded.".into())),
            (b"stream: Can't allocate memory ERROR\0", ScanVerdict::Error("Can't allocate memory".into())),
        ];
        for (raw, want) in ok {
            assert_eq!(&parse_scan(raw).unwrap(), want, "{:?}", String::from_utf8_lossy(raw));
        }
        // The substring trap: a clean file whose *name* contains "OK" must not
        // pass, and an "OK" that is not the whole verdict is not clean.
        let bad: &[&[u8]] = &[
            b"",
            b"\0",
            b"stream: OK",
            b"stream: FOUND\0",
            b"stream:  FOUND\0",
            b"OK\0",
            b"stream: OKAY\0",
            b"stream: Foo FOUNDX\0",
            b"\xff\xfe\0",
            b"PONG\0",
        ];
        for raw in bad {
            assert!(parse_scan(raw).is_err(), "{:?} must be an error", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn version_replies() {
        let v = parse_version(b"ClamAV 1.4.6/27000/Mon Nov 23 09:00:00 2026\0").unwrap();
        assert_eq!(v.engine, "1.4.6");
        assert_eq!(v.database, Some(27000));
        assert_eq!(v.database_date.as_deref(), Some("Mon Nov 23 09:00:00 2026"));
        let v = parse_version(b"ClamAV 1.4.6\0").unwrap();
        assert_eq!((v.engine.as_str(), v.database, v.database_date), ("1.4.6", None, None));
        for raw in [
            &b""[..],
            b"ClamAV 1.4.6/27000/Mon",
            b"ClamAV \0",
            b"ClamAV /1/x\0",
            b"Clam 1.4\0",
            b"ClamAV 1.4.6/abc/Mon Nov\0",
            b"ClamAV 1.4.6/27000\0",
            b"ClamAV 1.4.6/27000/\0",
            b"UNKNOWN COMMAND\0",
        ] {
            assert!(parse_version(raw).is_err(), "{:?} must be an error", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn ping_and_reload() {
        assert!(parse_ping(b"PONG\0").is_ok());
        assert!(parse_ping(b"PONG\n").is_ok());
        for raw in [&b""[..], b"PONG", b"PON\0", b"UNKNOWN COMMAND\0"] {
            assert!(parse_ping(raw).is_err());
        }
        assert!(parse_reload(b"RELOADING\0").is_ok());
        assert!(parse_reload(b"RELOAD\0").is_err());
        assert!(parse_reload(b"").is_err());
    }

    #[test]
    fn long_garbage_is_shortened_in_the_error() {
        let mut raw = vec![b'x'; 10_000];
        raw.push(0);
        let err = parse_scan(&raw).unwrap_err();
        assert!(err.to_string().len() < 300);
    }
}
