//! Read-only commands for the operator: `status`, `history`, `releases`.
//! They read the state dir directly, so they work with the daemon down.

use std::io::Write;

use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::{CliError, ConfigArg, Exit, when};
use crate::candidate::Manifest;
use crate::clamd::{Client, Version};
use crate::context::ContextError;
use crate::gate::Verdict;
use crate::journal::{Entry, Event};
use crate::production::Production;
use crate::reason::Reason;
use crate::status::Status;
use crate::store::{Pin, ReleaseInfo, Source, Store};

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub(crate) show: ShowArgs,
    /// How many entries, newest first.
    #[arg(short = 'n', default_value_t = 20)]
    pub(crate) n: usize,
}

fn databases(m: &Manifest) -> Vec<Database> {
    m.files.iter().map(|f| Database { name: f.name.clone(), version: f.header.as_ref().map(|h| h.version), signatures: f.signatures }).collect()
}

/// `daily v27000`, or the file name when it has no CVD header.
fn database_label(d: &Database) -> String {
    match d.version {
        Some(ver) => format!("{} v{ver}", crate::candidate::database_of(&d.name)),
        None => d.name.clone(),
    }
}

fn journal(store: &Store) -> Result<Vec<Entry>, CliError> {
    store.journal().read().map_err(|e| CliError::environment("state.unreadable", e))
}

/// What `status` shows; `--json` prints it as it is.
#[derive(Debug, Serialize)]
struct StatusView {
    live: Option<Live>,
    /// `false`, or who pinned what.
    #[serde(serialize_with = "pin_or_false")]
    pinned: Option<Pin>,
    /// Releases that passed while pinned, waiting for `promote`.
    waiting: Vec<String>,
    last_candidate: Option<LastCandidate>,
    health: ProductionHealth,
    state_dir: std::path::PathBuf,
}

#[derive(Debug, Serialize)]
struct Live {
    id: String,
    databases: Vec<Database>,
    signatures: u64,
    since: Option<String>,
}

#[derive(Debug, Serialize)]
struct Database {
    name: String,
    version: Option<u64>,
    signatures: u64,
}

#[derive(Debug, Serialize)]
struct LastCandidate {
    id: Option<String>,
    /// `pass`, `reject`, or `known_bad`.
    verdict: &'static str,
    reasons: Vec<Reason>,
    at: String,
}

#[derive(Debug, Serialize)]
struct ProductionHealth {
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<Version>,
    summary: String,
}

fn pin_or_false<S: serde::Serializer>(pin: &Option<Pin>, s: S) -> Result<S::Ok, S::Error> {
    match pin {
        Some(p) => p.serialize(s),
        None => s.serialize_bool(false),
    }
}

pub(crate) async fn status(args: ShowArgs) -> Result<Exit, CliError> {
    let (config, store) = args.config.store()?;
    let entries = journal(&store)?;
    let pinned = store.pinned();
    let view = StatusView {
        live: live(&store, &entries)?,
        waiting: waiting(&entries, pinned.as_ref()),
        pinned,
        last_candidate: last_candidate(&entries),
        health: production_health(&config).await,
        state_dir: config.state_dir.clone(),
    };
    let mut o = std::io::stdout().lock();
    let _ = if args.json { writeln!(o, "{}", serde_json::to_string_pretty(&view).expect("serializes")) } else { print_status(&mut o, &view) };
    Ok(Exit::Ok)
}

fn live(store: &Store, entries: &[Entry]) -> Result<Option<Live>, CliError> {
    let unreadable = |e| CliError::environment("state.unreadable", e);
    let Some(id) = store.current().map_err(unreadable)? else { return Ok(None) };
    let m = store.manifest(&id).map_err(unreadable)?;
    let since = entries.iter().rev().find(|e| e.event.as_done().is_some_and(|d| d.id == id)).map(|e| e.ts.clone());
    Ok(Some(Live { databases: databases(&m), signatures: m.total_signatures(), since, id }))
}

fn last_candidate(entries: &[Entry]) -> Option<LastCandidate> {
    entries.iter().rev().find_map(|e| {
        let (id, verdict, reasons) = match &e.event {
            Event::CandidateChecked(c) => (c.id.clone(), if c.verdict == Verdict::Pass { "pass" } else { "reject" }, c.reasons.clone()),
            Event::CandidateKnownBad { id, reasons } => (Some(id.clone()), "known_bad", reasons.clone()),
            _ => return None,
        };
        Some(LastCandidate { id, verdict, reasons, at: e.ts.clone() })
    })
}

fn waiting(entries: &[Entry], pin: Option<&Pin>) -> Vec<String> {
    let Some(pin) = pin else { return Vec::new() };
    let since = humantime::parse_rfc3339(&pin.at).ok();
    let held = |e: &Entry| match &e.event {
        Event::CandidateHeld { id, .. } if e.time() >= since => Some(id.clone()),
        _ => None,
    };
    entries.iter().filter_map(held).collect()
}

fn print_status(o: &mut impl Write, v: &StatusView) -> std::io::Result<()> {
    match &v.live {
        Some(l) => {
            let dbs: Vec<String> = l.databases.iter().map(database_label).collect();
            let since = l.since.as_deref().map(|t| format!(", live since {}", when(t))).unwrap_or_default();
            writeln!(o, "live      {}  {} ({} signatures){since}", l.id, dbs.join(", "), l.signatures)?;
        }
        None => writeln!(o, "live      none (no release promoted yet)")?,
    }
    match &v.pinned {
        Some(p) => writeln!(o, "pinned    yes, by {} {}", p.by, when(&p.at))?,
        None => writeln!(o, "pinned    no")?,
    }
    if !v.waiting.is_empty() {
        writeln!(o, "waiting   {} (passed, held by the pin; `clamgate promote ID`)", v.waiting.join(", "))?;
    }
    match &v.last_candidate {
        Some(l) => {
            let reasons: Vec<String> = l.reasons.iter().map(|r| format!("{} [{}]", r.message, r.reason)).collect();
            let reasons = if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join("; ")) };
            writeln!(o, "last      {}  {} {}{reasons}", l.id.as_deref().unwrap_or("(none)"), l.verdict, when(&l.at))?;
        }
        None => writeln!(o, "last      no candidate checked yet")?,
    }
    writeln!(o, "health    {}", v.health.summary)
}

/// A direct look at production: VERSION and a real scan of the smoke samples.
async fn production_health(config: &crate::config::Config) -> ProductionHealth {
    let client = Client::new(config.clamd.endpoint.clone(), std::time::Duration::from_secs(5));
    let health = |status, version, summary| ProductionHealth { status, version, summary };
    let version = match client.version().await {
        Ok(v) => v,
        Err(e) => return health(Status::Fail, None, format!("fail: production clamd unreachable: {e}")),
    };
    let prod = match crate::corpus::Corpus::load(&config.corpus_dir).map_err(ContextError::from).and_then(|c| crate::context::production(config, &c)) {
        Ok(p) => Production { client, ..p },
        Err(e) => return health(Status::Warn, Some(version), format!("warn: clamd answers, smoke scan skipped: {e}")),
    };
    match prod.smoke().await {
        Ok(()) => {
            let daily = version.database.map(|d| format!(" (daily {d})")).unwrap_or_default();
            let summary = format!("pass: production clamd {} scans{daily}", version.engine);
            health(Status::Pass, Some(version), summary)
        }
        Err(e) => health(Status::Fail, Some(version), format!("fail: {e}")),
    }
}

pub(crate) async fn history(args: HistoryArgs) -> Result<Exit, CliError> {
    let (_, store) = args.show.config.store()?;
    let entries = journal(&store)?;
    let newest: Vec<&Entry> = entries.iter().rev().take(args.n).collect();
    let mut o = std::io::stdout().lock();
    if args.show.json {
        let _ = writeln!(o, "{}", serde_json::to_string_pretty(&newest).expect("serializes"));
        return Ok(Exit::Ok);
    }
    let _ = writeln!(o, "{:<34} {:<22} {:<12} DETAIL", "WHEN", "EVENT", "ID");
    for e in newest {
        let _ = writeln!(o, "{:<34} {:<22} {:<12} {}", when(&e.ts), e.name(), e.id().unwrap_or("-"), detail(&e.event));
    }
    Ok(Exit::Ok)
}

/// The fields an operator scans a history line for, as `key=value`.
fn detail(event: &Event) -> String {
    let fields = serde_json::to_value(event).unwrap_or(Value::Null);
    let mut detail = Vec::new();
    for key in ["verdict", "from", "production", "reason", "by", "pinned_by", "why", "error"] {
        if let Some(v) = fields.get(key).filter(|v| !v.is_null()) {
            detail.push(format!("{key}={}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())));
        }
    }
    if let Some(reasons) = fields.get("reasons").and_then(Value::as_array).filter(|r| !r.is_empty()) {
        let codes: Vec<&str> = reasons.iter().filter_map(|r| r["reason"].as_str()).collect();
        detail.push(format!("reasons={}", codes.join(",")));
    }
    detail.join(" ")
}

/// One line of `releases`.
#[derive(Debug, Serialize)]
struct ReleaseRow {
    id: String,
    live: bool,
    created: Option<String>,
    databases: Vec<Database>,
    signatures: u64,
    /// Why it is marked bad, if it is.
    bad: Option<Bad>,
}

#[derive(Debug, Serialize)]
struct Bad {
    source: Source,
    at: String,
    reasons: Vec<Reason>,
}

pub(crate) async fn releases(args: ShowArgs) -> Result<Exit, CliError> {
    let (_, store) = args.config.store()?;
    let list = store.releases().map_err(|e| CliError::environment("state.unreadable", e))?;
    let rows: Vec<ReleaseRow> = list.into_iter().map(|r| release_row(&store, r)).collect();
    let mut o = std::io::stdout().lock();
    // Through `Value`, which sorts keys: the JSON keeps the key order scripts already see.
    let json = || serde_json::to_string_pretty(&serde_json::to_value(&rows).expect("serializes")).expect("serializes");
    let _ = if args.json { writeln!(o, "{}", json()) } else { print_releases(&mut o, &rows) };
    Ok(Exit::Ok)
}

fn release_row(store: &Store, r: ReleaseInfo) -> ReleaseRow {
    let bad = store.quarantined(&r.id).map(|q| Bad { source: q.source, at: q.at, reasons: q.reasons });
    ReleaseRow { databases: databases(&r.manifest), signatures: r.manifest.total_signatures(), id: r.id, live: r.live, created: r.created, bad }
}

fn print_releases(o: &mut impl Write, rows: &[ReleaseRow]) -> std::io::Result<()> {
    writeln!(o, "  {:<12}  {:<34}  {:>10}  {:<24}  STATUS", "ID", "CREATED", "SIGS", "DATABASES")?;
    for r in rows {
        let dbs: Vec<String> = r.databases.iter().map(database_label).collect();
        let status = if r.live {
            "live".to_string()
        } else if let Some(b) = &r.bad {
            format!("bad ({})", b.source)
        } else {
            "kept".to_string()
        };
        writeln!(
            o,
            "{} {:<12}  {:<34}  {:>10}  {:<24}  {status}",
            if r.live { "*" } else { " " },
            r.id,
            r.created.as_deref().map(when).unwrap_or_default(),
            r.signatures,
            dbs.join(", "),
        )?;
    }
    Ok(())
}
