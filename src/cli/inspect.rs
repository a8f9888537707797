//! `clamgate show ID`: one release or quarantined candidate in one place:
//! its files, the verdict with every reason, the canary's log, and what it
//! changes against the live release. Read-only, no lock, like `status`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::show::{Bad, ShowArgs, journal};
use super::{CliError, Exit, when};
use crate::candidate::Manifest;
use crate::diff::{Compared, DatabaseDiff, Side};
use crate::gate::{Check, Verdict};
use crate::journal::{Entry, Event};
use crate::reason::Reason;
use crate::store::{Store, StoreError};

/// Lines of the canary's log shown; the whole log is in the quarantine dir.
const LOG_TAIL: usize = 20;

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub(crate) show: ShowArgs,
    /// Release or quarantined candidate: full id or unique prefix.
    pub(crate) id: String,
}

/// What the id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Release,
    /// Quarantined by the gate, never a release.
    Candidate,
}

/// What `show` prints; `--json` prints it as it is.
#[derive(Debug, Serialize)]
struct View {
    id: String,
    kind: Kind,
    live: bool,
    files: Vec<FileView>,
    signatures: u64,
    /// The gate's verdict, from the journal (absent if it was rotated away).
    verdict: Option<VerdictView>,
    /// Why it is in quarantine, if it is.
    bad: Option<Bad>,
    /// The last lines of the canary clamd's log, when one was kept.
    canary_log: Vec<String>,
    diff: DiffView,
}

#[derive(Debug, Serialize)]
struct FileView {
    name: String,
    size: u64,
    sha256: String,
    version: Option<u64>,
    signatures: u64,
}

#[derive(Debug, Serialize)]
struct VerdictView {
    verdict: Verdict,
    at: String,
    reasons: Vec<Reason>,
    warnings: Vec<Reason>,
    checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
struct DiffView {
    /// The live release compared with.
    against: Option<String>,
    databases: Vec<DatabaseDiff>,
    /// Why there is no diff (no live release, it is the live release, files not kept).
    unavailable: Option<String>,
}

pub(crate) async fn show(args: InspectArgs) -> Result<Exit, CliError> {
    let (_, store) = args.show.config.store()?;
    let id = store.resolve_any(&args.id).map_err(|e| match e {
        StoreError::NoRelease(_) | StoreError::Ambiguous { .. } => {
            CliError::refused("show.no_such_id", format!("{e}; see `clamgate releases` and `clamgate history`"))
        }
        e => CliError::environment("state.unreadable", e),
    })?;
    let view = view(&store, &id)?;
    let mut o = std::io::stdout().lock();
    let _ = if args.show.json { writeln!(o, "{}", serde_json::to_string_pretty(&view).expect("serializes")) } else { print(&mut o, &view) };
    Ok(Exit::Ok)
}

fn view(store: &Store, id: &str) -> Result<View, CliError> {
    let unreadable = |e: StoreError| CliError::environment("state.unreadable", e);
    let is_release = store.release_dir(id).join("manifest.json").exists();
    let (kind, manifest, dir) = if is_release {
        (Kind::Release, store.manifest(id).map_err(unreadable)?, Some(store.release_dir(id)))
    } else {
        (Kind::Candidate, store.quarantined_manifest(id).map_err(unreadable)?, store.quarantined_files(id))
    };
    let live = store.current().map_err(unreadable)?;
    let bad = store.quarantined(id).map(|q| Bad { source: q.source, at: q.at, reasons: q.reasons });
    let log = store.canary_log(id).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    Ok(View {
        id: id.to_string(),
        kind,
        live: live.as_deref() == Some(id),
        files: files(&manifest),
        signatures: manifest.total_signatures(),
        verdict: verdict(&journal(store)?, id),
        bad,
        canary_log: lines[lines.len().saturating_sub(LOG_TAIL)..].iter().map(|l| l.to_string()).collect(),
        diff: diff(store, live.as_deref(), id, &manifest, dir),
    })
}

fn files(m: &Manifest) -> Vec<FileView> {
    let file = |f: &crate::candidate::DbFile| FileView {
        name: f.name.clone(),
        size: f.size,
        sha256: f.sha256.clone(),
        version: f.header.as_ref().map(|h| h.version),
        signatures: f.signatures,
    };
    m.files.iter().map(file).collect()
}

/// The last time the gate checked these files.
fn verdict(entries: &[Entry], id: &str) -> Option<VerdictView> {
    entries.iter().rev().find_map(|e| match &e.event {
        Event::CandidateChecked(c) if c.id.as_deref() == Some(id) => Some(VerdictView {
            verdict: c.verdict,
            at: e.ts.clone(),
            reasons: c.reasons.clone(),
            warnings: c.details.as_ref().map(|d| d.warnings.clone()).unwrap_or_default(),
            checks: c.details.as_ref().map(|d| d.checks.clone()).unwrap_or_default(),
        }),
        _ => None,
    })
}

fn diff(store: &Store, live: Option<&str>, id: &str, manifest: &Manifest, dir: Option<PathBuf>) -> DiffView {
    let none = |why: String| DiffView { against: live.map(str::to_string), databases: Vec::new(), unavailable: Some(why) };
    let Some(live) = live else { return none("no release is live to compare with".into()) };
    if live == id {
        return none("this is the live release".into());
    }
    let Some(dir) = dir else { return none("the candidate's files were not kept, only its manifest".into()) };
    let live_manifest = match store.manifest(live) {
        Ok(m) => m,
        Err(e) => return none(format!("the live release is unreadable: {e}")),
    };
    let (a, b) = (Side { dir: &store.release_dir(live), manifest: &live_manifest }, Side { dir: &dir, manifest });
    match crate::diff::diff(a, b) {
        Ok(databases) => DiffView { against: Some(live.to_string()), databases, unavailable: None },
        Err(e) => none(e.to_string()),
    }
}

fn print(o: &mut impl Write, v: &View) -> std::io::Result<()> {
    let what = match (v.kind, v.live, &v.bad) {
        (_, true, _) => "the live release".to_string(),
        (Kind::Release, false, None) => "a kept release".to_string(),
        (Kind::Release, false, Some(b)) => format!("a kept release, marked bad by the {} {}", b.source, when(&b.at)),
        (Kind::Candidate, _, b) => {
            format!("a quarantined candidate, not a release{}", b.as_ref().map(|b| format!(" (by the {} {})", b.source, when(&b.at))).unwrap_or_default())
        }
    };
    writeln!(o, "id        {}  {what}", v.id)?;
    let width = v.files.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for (i, f) in v.files.iter().enumerate() {
        let name = match f.version {
            Some(ver) => format!("{:<width$} v{ver}", f.name),
            None => format!("{:<width$}", f.name),
        };
        let size = crate::settings::human_size(f.size);
        writeln!(o, "{}{name}  {} signatures  {size}  sha256 {}", if i == 0 { "files     " } else { "          " }, f.signatures, f.sha256)?;
    }
    writeln!(o, "          {} signatures in all", v.signatures)?;
    match &v.verdict {
        Some(c) => {
            writeln!(o, "verdict   {} {}", c.verdict.as_str(), when(&c.at))?;
            for ch in &c.checks {
                writeln!(o, "          {:<7} {:<5} {}", ch.step, ch.status.as_str(), ch.detail)?;
            }
        }
        None => writeln!(o, "verdict   not in the journal")?,
    }
    let reasons = v.bad.as_ref().map(|b| &b.reasons).or(v.verdict.as_ref().map(|c| &c.reasons));
    for (i, r) in reasons.into_iter().flatten().enumerate() {
        writeln!(o, "{}{r}", if i == 0 { "reasons   " } else { "          " })?;
        writeln!(o, "            hint: {}", r.reason.hint())?;
    }
    for w in v.verdict.iter().flat_map(|c| &c.warnings) {
        writeln!(o, "warning   {w}")?;
    }
    if !v.canary_log.is_empty() {
        writeln!(o, "canary    the last {} lines of its clamd's log:", v.canary_log.len())?;
        for l in &v.canary_log {
            writeln!(o, "          | {l}")?;
        }
    }
    print_diff(o, &v.diff)?;
    if v.bad.is_some() && !v.live {
        writeln!(o, "next      `clamgate promote {} --force` accepts it after a false alarm; `clamgate recheck {}` has the daemon check it again", v.id, v.id)?;
    }
    Ok(())
}

fn print_diff(o: &mut impl Write, d: &DiffView) -> std::io::Result<()> {
    if let Some(why) = &d.unavailable {
        return writeln!(o, "diff      none: {why}");
    }
    writeln!(o, "diff      against the live release {}", d.against.as_deref().unwrap_or("-"))?;
    for db in &d.databases {
        let change = match (db.compared, &db.live_file, &db.file) {
            (Compared::Identical, _, _) => "identical".to_string(),
            (Compared::HashOnly, _, _) => "changed (this format is compared by hash only)".to_string(),
            (_, None, _) => format!("+{} -{} (new database)", db.added, db.removed),
            (_, _, None) => format!("+{} -{} (not in this one)", db.added, db.removed),
            _ => format!("+{} -{}", db.added, db.removed),
        };
        writeln!(o, "          {:<16} {change}", db.database)?;
        let more = |shown: usize, all: u64| if all > shown as u64 { format!(" … and {} more", all - shown as u64) } else { String::new() };
        if !db.added_names.is_empty() {
            writeln!(o, "            + {}{}", db.added_names.join(", "), more(db.added_names.len(), db.added))?;
        }
        if !db.removed_names.is_empty() {
            writeln!(o, "            - {}{}", db.removed_names.join(", "), more(db.removed_names.len(), db.removed))?;
        }
        if let Some(note) = &db.note {
            writeln!(o, "            note: {note}")?;
        }
    }
    Ok(())
}
