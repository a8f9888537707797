//! Read-only commands for the operator: `status`, `history`, `releases`.
//! They read the state dir directly, so they work with the daemon down.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::{CliError, ConfigArg, Exit, Plugin, when};
use crate::candidate::Manifest;
use crate::clamd::{Client, Version};
use crate::context::ContextError;
use crate::gate::Verdict;
use crate::journal::{Entry, Event};
use crate::milter::readiness::ReadinessCache;
use crate::production::Production;
use crate::reason::Reason;
use crate::status::Status;
use crate::store::{Pin, ReleaseInfo, Source, Store};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub(crate) show: ShowArgs,
    /// Print only the monitoring-plugin line (`CLAMGATE OK - … | age=…s`).
    #[arg(long, conflicts_with = "json")]
    pub(crate) check: bool,
}

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

pub(super) fn journal(store: &Store) -> Result<Vec<Entry>, CliError> {
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
    /// Files per-file isolation holds back from the live release, with why;
    /// each is held until its content changes.
    held: Vec<crate::candidate::HeldFile>,
    last_candidate: Option<LastCandidate>,
    health: ProductionHealth,
    /// What the daemon's own `/readyz` says; what the exit code follows.
    daemon: DaemonHealth,
    state_dir: std::path::PathBuf,
}

#[derive(Debug, Serialize)]
struct DaemonHealth {
    /// `OK`, `WARNING`, `CRITICAL` or `UNKNOWN`.
    state: Plugin,
    /// The plugin line `status --check` prints.
    summary: String,
    /// Age of the live daily database, as the daemon last saw it.
    database_age_seconds: Option<u64>,
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
    /// `pass`, `reject`, or `known_bad` (quarantined before: seen again,
    /// not checked again).
    verdict: &'static str,
    /// For `known_bad`, the reasons it was first rejected for.
    reasons: Vec<Reason>,
    at: String,
    /// For `known_bad`: when it was first rejected, and by what.
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<FirstRejected>,
}

#[derive(Debug, Serialize)]
struct FirstRejected {
    at: String,
    /// Absent when only the journal remembers it.
    source: Option<Source>,
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

/// `status`: exits as a monitoring plugin would, so Nagios, Icinga or Sensu
/// can run it as it is. Anything that stops it from telling is UNKNOWN.
pub(crate) async fn status(args: StatusArgs) -> Result<Exit, CliError> {
    let view = match status_view(&args.show.config).await {
        Ok(v) => v,
        Err(e) if args.check => {
            println!("CLAMGATE UNKNOWN - {}", e.message);
            return Ok(Exit::Plugin(Plugin::Unknown));
        }
        Err(e) => return Err(CliError { exit: Exit::Plugin(Plugin::Unknown), ..e }),
    };
    let mut o = std::io::stdout().lock();
    let _ = if args.check {
        writeln!(o, "{}", view.daemon.summary)
    } else if args.show.json {
        writeln!(o, "{}", serde_json::to_string_pretty(&view).expect("serializes"))
    } else {
        print_status(&mut o, &view)
    };
    Ok(Exit::Plugin(view.daemon.state))
}

async fn status_view(args: &ConfigArg) -> Result<StatusView, CliError> {
    let (config, store) = args.store()?;
    let entries = journal(&store)?;
    let pinned = store.pinned();
    Ok(StatusView {
        live: live(&store, &entries)?,
        waiting: waiting(&entries, pinned.as_ref()),
        held: store.held(),
        pinned,
        last_candidate: last_candidate(&store, &entries),
        health: production_health(&config).await,
        daemon: daemon_health(&config).await,
        state_dir: config.state_dir.clone(),
    })
}

/// The daemon's `/readyz`, as a plugin state and line.
async fn daemon_health(config: &crate::config::Config) -> DaemonHealth {
    let url = readyz_url(&config.health.listen);
    let answer = match ReadinessCache::new(&url, Duration::ZERO, Duration::from_secs(5)) {
        Ok(cache) => cache.get().await,
        Err(e) => return DaemonHealth { state: Plugin::Unknown, summary: format!("CLAMGATE UNKNOWN - {e}"), database_age_seconds: None },
    };
    let (state, why) = match answer.status {
        None => (Plugin::Unknown, format!("the daemon does not answer: {}", answer.detail)),
        Some(Status::Pass) => (Plugin::Ok, format!("production clamd scans (release {})", answer.release.as_deref().unwrap_or("none"))),
        Some(Status::Warn) => (Plugin::Warning, answer.output.clone().unwrap_or_else(|| "warn".into())),
        Some(_) => (Plugin::Critical, format!("production clamd cannot scan: {}", answer.output.as_deref().unwrap_or("no reason given"))),
    };
    let perf = answer.database_age.map(|a| format!(" | age={a}s")).unwrap_or_default();
    DaemonHealth { state, summary: format!("CLAMGATE {} - {why}{perf}", state.as_str()), database_age_seconds: answer.database_age }
}

/// Where to ask the daemon: its `health.listen`, with a wildcard address
/// asked on loopback.
fn readyz_url(listen: &str) -> String {
    let addr = match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_string(),
    };
    format!("http://{addr}/readyz")
}

fn live(store: &Store, entries: &[Entry]) -> Result<Option<Live>, CliError> {
    let unreadable = |e| CliError::environment("state.unreadable", e);
    let Some(id) = store.current().map_err(unreadable)? else { return Ok(None) };
    let m = store.manifest(&id).map_err(unreadable)?;
    let since = entries.iter().rev().find(|e| e.event.as_done().is_some_and(|d| d.id == id)).map(|e| e.ts.clone());
    Ok(Some(Live { databases: databases(&m), signatures: m.total_signatures(), since, id }))
}

fn last_candidate(store: &Store, entries: &[Entry]) -> Option<LastCandidate> {
    entries.iter().rev().find_map(|e| {
        let (id, verdict, reasons) = match &e.event {
            Event::CandidateChecked(c) => (c.id.clone(), if c.verdict == Verdict::Pass { "pass" } else { "reject" }, c.reasons.clone()),
            Event::CandidateKnownBad { id, reasons } => {
                // Its own reason only says "known bad": show why it was rejected.
                let (reasons, rejected) = first_rejection(store, entries, id).unwrap_or_else(|| (reasons.clone(), None));
                return Some(LastCandidate { id: Some(id.clone()), verdict: "known_bad", reasons, at: e.ts.clone(), rejected });
            }
            _ => return None,
        };
        Some(LastCandidate { id, verdict, reasons, at: e.ts.clone(), rejected: None })
    })
}

/// Why a candidate seen again was quarantined: the quarantine record, else
/// the journal's last rejection of it.
fn first_rejection(store: &Store, entries: &[Entry], id: &str) -> Option<(Vec<Reason>, Option<FirstRejected>)> {
    if let Some(q) = store.quarantined(id) {
        return Some((q.reasons, Some(FirstRejected { at: q.at, source: Some(q.source) })));
    }
    entries.iter().rev().find_map(|e| match &e.event {
        Event::CandidateChecked(c) if c.id.as_deref() == Some(id) && c.verdict == Verdict::Reject => {
            Some((c.reasons.clone(), Some(FirstRejected { at: e.ts.clone(), source: None })))
        }
        _ => None,
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
    for h in &v.held {
        writeln!(o, "held      {}: {} [{}] (held back until it changes)", h.name, h.detail, h.reason)?;
    }
    match &v.last_candidate {
        Some(l) => {
            let reasons: Vec<String> = l.reasons.iter().map(|r| format!("{} [{}]", r.message, r.reason)).collect();
            let reasons = if reasons.is_empty() { String::new() } else { format!(": {}", reasons.join("; ")) };
            let again = match &l.rejected {
                Some(r) => {
                    let by = r.source.map(|s| format!(" by the {s}")).unwrap_or_default();
                    format!(" (seen again, not checked again; rejected{by} {})", when(&r.at))
                }
                None => String::new(),
            };
            writeln!(o, "last      {}  {} {}{again}{reasons}", l.id.as_deref().unwrap_or("(none)"), l.verdict, when(&l.at))?;
        }
        None => writeln!(o, "last      no candidate checked yet")?,
    }
    writeln!(o, "health    {}", v.health.summary)?;
    writeln!(o, "daemon    {}", v.daemon.summary)
}

/// A direct look at production: VERSION and a real scan of the smoke samples.
async fn production_health(config: &crate::config::Config) -> ProductionHealth {
    let client = Client::new(config.clamd.production_endpoint(), std::time::Duration::from_secs(5));
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
        // As written: a newer version's events and fields come through whole.
        let lines: Vec<Value> = newest.iter().map(|e| e.as_written()).collect();
        let _ = writeln!(o, "{}", serde_json::to_string_pretty(&lines).expect("serializes"));
        return Ok(Exit::Ok);
    }
    let _ = writeln!(o, "{:<34} {:<22} {:<12} DETAIL", "WHEN", "EVENT", "ID");
    for e in newest {
        let fields = e.as_written();
        let id = fields.get("id").and_then(Value::as_str).unwrap_or("-");
        let _ = writeln!(o, "{:<34} {:<22} {:<12} {}", when(&e.ts), e.written_name(), id, detail(&fields));
    }
    Ok(Exit::Ok)
}

/// The fields an operator scans a history line for, as `key=value`.
fn detail(fields: &Value) -> String {
    let mut detail = Vec::new();
    for key in ["verdict", "outcome", "from", "production", "reason", "by", "pinned_by", "why", "error", "ring", "host", "to", "file", "generation"] {
        if let Some(v) = fields.get(key).filter(|v| !v.is_null()) {
            detail.push(format!("{key}={}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())));
        }
    }
    if let Some(held) = fields.get("held").and_then(Value::as_array).filter(|h| !h.is_empty()) {
        let files: Vec<String> = held.iter().map(|h| format!("{}({})", h["name"].as_str().unwrap_or("?"), h["reason"].as_str().unwrap_or("?"))).collect();
        detail.push(format!("held={}", files.join(",")));
    }
    if let Some(runs) = fields.get("bisect_runs").and_then(Value::as_u64) {
        detail.push(format!("bisect_runs={runs}"));
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
pub(super) struct Bad {
    pub(super) source: Source,
    pub(super) at: String,
    pub(super) reasons: Vec<Reason>,
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
