//! Commands that change what is live or what the daemon will check:
//! `rollback`, `promote`, `pin`, `unpin`, `recheck`. Each takes the state lock (waiting briefly for the daemon or
//! another command), and makes production run the result with the same
//! verification and automatic undo as the daemon's promotion.

use std::time::{Duration, SystemTime};

use clap::Args;
use serde::Serialize;

use super::{CliError, ConfigArg, Exit};
use crate::context::Context;
use crate::journal::Event;
use crate::production::Verified;
use crate::promote::{Activation, Activator, MarkBad, Outcome};
use crate::reason::Reason;
use crate::store::{Pin, QuarantineError, QuarantineRecord, Source, StateLock, Store, StoreError};

/// How long a command waits for the lock before giving up; the daemon
/// holds it while it promotes. `CLAMGATE_LOCK_WAIT` overrides (e.g. "1s").
fn lock_wait() -> Duration {
    std::env::var("CLAMGATE_LOCK_WAIT").ok().and_then(|v| crate::settings::parse_duration(&v).ok()).unwrap_or(Duration::from_secs(10))
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Release to go to (full id or unique prefix); default: the one before the live one.
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Print one JSON object: what happened and production's verification.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Release or quarantined candidate: full id or unique prefix (see `clamgate releases`, `clamgate show`).
    pub(crate) id: String,
    /// Promote even a release marked bad, or a candidate the gate rejected (a false alarm).
    #[arg(long)]
    pub(crate) force: bool,
    /// Print one JSON object: what happened and production's verification.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `pin`, `unpin`.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Print one JSON object: what happened.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub struct RecheckArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Quarantined candidate or release marked bad (full id or unique
    /// prefix), or the name of a file per-file isolation holds back (`fp.hdb`).
    pub(crate) id: String,
    /// Print one JSON object: what happened.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What a state-changing command did: `--json` prints it whole, text mode
/// its `message`. Field names are a contract for scripts (README, "JSON").
#[derive(Debug, Serialize)]
struct Changed {
    action: Action,
    /// False when there was nothing to do (`unpin` while not pinned).
    changed: bool,
    /// The release or candidate acted on.
    id: Option<String>,
    /// What was live before, for `rollback` and `promote`.
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    production: Option<ProductionCheck>,
    /// The release a rollback marked bad.
    #[serde(skip_serializing_if = "Option::is_none")]
    marked_bad: Option<String>,
    /// The quarantine record overridden (`promote --force`) or cleared (`recheck`).
    #[serde(skip_serializing_if = "Option::is_none")]
    overrode: Option<Overrode>,
    by: String,
    message: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Rollback,
    Promote,
    Pin,
    Unpin,
    Recheck,
}

/// Production's verification of what is now live.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
enum ProductionCheck {
    /// Reloaded, shows the release, and the smoke samples scan as expected.
    Scanning { database: Option<u64> },
    /// Not running: it loads `current` when it starts.
    Down { detail: String },
}

#[derive(Debug, Serialize)]
struct Overrode {
    source: Source,
    at: String,
    reasons: Vec<Reason>,
}

impl From<QuarantineRecord> for Overrode {
    fn from(q: QuarantineRecord) -> Self {
        Overrode { source: q.source, at: q.at, reasons: q.reasons }
    }
}

impl Changed {
    fn new(action: Action, id: Option<String>) -> Changed {
        Changed { action, changed: true, id, from: None, production: None, marked_bad: None, overrode: None, by: operator(), message: String::new() }
    }

    fn emit(self, json: bool) -> Result<Exit, CliError> {
        if json {
            println!("{}", serde_json::to_string(&self).expect("serializes"));
        } else {
            println!("{}", self.message);
        }
        Ok(Exit::Ok)
    }
}

pub(crate) fn lock(store: &Store) -> Result<StateLock, CliError> {
    let wait = lock_wait();
    store.lock(wait).map_err(|e| match e {
        StoreError::Locked(_) => CliError::refused("state.locked", format!("{e} (waited {wait:?})")),
        e => CliError::environment("state.unreadable", e),
    })
}

fn store_err(e: impl std::fmt::Display) -> CliError {
    CliError::environment("state.unreadable", e)
}

pub(crate) fn operator() -> String {
    std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| format!("uid {}", rustix::process::getuid().as_raw()))
}

/// An activation's verification; an error unless the target is live and
/// verified or production is down (it will load `current` when it starts).
fn verified(outcome: Outcome, id: &str, verb: &str) -> Result<(ProductionCheck, String), CliError> {
    match outcome {
        Outcome::Live(Verified::Scanning { database }) => {
            let db = database.map(|d| format!(", database version {d}")).unwrap_or_default();
            Ok((ProductionCheck::Scanning { database }, format!("{verb} {id}: production clamd reloaded and scans as expected{db}")))
        }
        Outcome::Live(Verified::Down(e)) => {
            let message = format!("{verb} {id}: current points at it; production clamd is down ({e}) and will load it when it starts");
            Ok((ProductionCheck::Down { detail: e }, message))
        }
        Outcome::RolledBack { reason, to } => {
            Err(CliError::refused("production.verify_failed", format!("{id} failed in production ({reason}); went back to {to} and marked {id} bad")))
        }
        Outcome::Broken { reason } => Err(CliError::refused("production.broken", format!("production needs attention: {reason}"))),
    }
}

fn activator<'a>(c: &'a Context, lock: &'a StateLock) -> Activator<'a> {
    Activator { store: &c.store, lock, prod: &c.production, managed: c.managed.as_ref() }
}

pub(crate) async fn rollback(args: RollbackArgs) -> Result<Exit, CliError> {
    let c = args.config.context()?;
    let lock = lock(&c.store)?;
    let live = c.store.current().map_err(store_err)?.ok_or_else(|| CliError::refused("rollback.nothing_live", "no release is live; nothing to roll back"))?;
    let target = match &args.to {
        Some(prefix) => c.store.resolve(prefix).map_err(|e| CliError::refused("rollback.no_such_release", format!("{e}; see `clamgate releases`")))?,
        None => previous_release(&c.store, &live)?,
    };
    if target == live {
        return Err(CliError::refused("rollback.already_live", format!("{target} is already live")));
    }
    // The release we leave must not come back through the daemon: the
    // activation marks it bad once the target is live, even after a crash.
    let mark = MarkBad { id: live.clone(), why: format!("rolled back by {} to {target}", operator()) };
    let outcome = activator(&c, &lock).activate(Activation::Rollback, &target, Some(mark)).await.map_err(store_err)?;
    let live_now = matches!(outcome, Outcome::Live(_));
    let (production, message) = verified(outcome, &target, "rolled back to")?;
    // Marking is the activation's best effort: say so if it failed,
    // since the daemon could otherwise promote `live` again.
    if live_now && c.store.quarantined(&live).is_none() {
        return Err(store_err(format!("{message}; but could not mark {live} bad (see the log); `clamgate pin` keeps it from coming back")));
    }
    c.store.journal().append(Event::ReleaseMarkedBad { id: live.clone(), by: operator() }).map_err(store_err)?;
    let mut out = Changed::new(Action::Rollback, Some(target));
    out.message = format!("marked {live} bad: the daemon will not promote it again\n{message}");
    (out.from, out.production, out.marked_bad) = (Some(live.clone()), Some(production), Some(live));
    out.emit(args.json)
}

/// The release that was live before `live`: from the journal, else the
/// newest other kept release that is not marked bad.
fn previous_release(store: &Store, live: &str) -> Result<String, CliError> {
    let entries = store.journal().read().map_err(store_err)?;
    let kept: Vec<String> = store.releases().map_err(store_err)?.into_iter().map(|r| r.id).collect();
    let from_journal = entries
        .iter()
        .rev()
        .filter_map(|e| e.event.as_done())
        .find(|d| d.id == live)
        .and_then(|d| d.from.as_deref())
        .filter(|id| kept.iter().any(|k| k == id) && store.quarantined(id).is_none())
        .map(str::to_string);
    from_journal
        .or_else(|| kept.into_iter().find(|id| id != live && store.quarantined(id).is_none()))
        .ok_or_else(|| CliError::refused("rollback.no_previous", format!("no release before {live} to roll back to; see `clamgate releases`")))
}

fn no_such(e: StoreError, code: &'static str) -> CliError {
    match e {
        StoreError::NoRelease(_) | StoreError::Ambiguous { .. } => CliError::refused(code, format!("{e}; see `clamgate releases` and `clamgate history`")),
        e => store_err(e),
    }
}

/// A kept release, or, with `--force`, a quarantined one or a candidate
/// the gate rejected: it becomes a release from its quarantined files.
/// Production verifies it either way.
pub(crate) async fn promote(args: PromoteArgs) -> Result<Exit, CliError> {
    let c = args.config.context()?;
    let lock = lock(&c.store)?;
    let id = c.store.resolve_any(&args.id).map_err(|e| no_such(e, "promote.no_such_release"))?;
    let from = c.store.current().map_err(store_err)?;
    if from.as_deref() == Some(id.as_str()) {
        return Err(CliError::refused("promote.already_live", format!("{id} is already live")));
    }
    let is_release = c.store.release_dir(&id).join("manifest.json").exists();
    let quarantined = c.store.quarantined(&id);
    if let Some(q) = &quarantined {
        let why: Vec<String> = q.reasons.iter().map(|r| r.to_string()).collect();
        let what = if is_release { format!("is marked bad ({}", q.source) } else { "is a candidate the gate rejected (".to_string() };
        if !args.force {
            return Err(CliError::refused("promote.quarantined", format!("{id} {what}: {}); pass --force to promote it anyway", why.join("; "))));
        }
        eprintln!("warning: promoting {id}, which {what}: {})", why.join("; "));
    }
    if !is_release {
        let m = c.store.release_from_quarantine(&lock, &id).map_err(|e| match e {
            QuarantineError::Store(e) => store_err(e),
            e => CliError::refused("promote.files_unusable", e),
        })?;
        c.store.journal().append(Event::ReleaseCreated { id: id.clone(), signatures: m.total_signatures() }).map_err(store_err)?;
    }
    // Journaled once the override can happen, before the activation that
    // might still fail in production: who overrode what stays on record.
    if let Some(q) = &quarantined {
        c.store.journal().append(Event::ReleaseForced { id: id.clone(), by: operator(), reasons: q.reasons.clone() }).map_err(store_err)?;
    }
    let outcome = activator(&c, &lock).activate(Activation::Promotion, &id, None).await.map_err(store_err)?;
    let live_now = matches!(outcome, Outcome::Live(_));
    let (production, message) = verified(outcome, &id, "promoted")?;
    if live_now && quarantined.is_some() {
        c.store.unquarantine(&lock, &id).map_err(store_err)?;
        c.store.journal().append(Event::ReleaseUnmarkedBad { id: id.clone(), by: operator() }).map_err(store_err)?;
    }
    let mut out = Changed::new(Action::Promote, Some(id));
    (out.from, out.production, out.overrode, out.message) = (from, Some(production), quarantined.map(Overrode::from), message);
    out.emit(args.json)
}

pub(crate) async fn pin(args: ChangeArgs) -> Result<Exit, CliError> {
    let c = args.config.context()?;
    let lock = lock(&c.store)?;
    let live = c.store.current().map_err(store_err)?;
    let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let pin = Pin { id: live.clone(), by: operator(), at };
    c.store.pin(&lock, &pin).map_err(store_err)?;
    c.store.journal().append(Event::Pin { id: live.clone(), by: pin.by.clone() }).map_err(store_err)?;
    let what = live.as_deref().unwrap_or("(no live release)");
    let mut out = Changed::new(Action::Pin, live.clone());
    out.message = format!("pinned {what}: candidates are still checked and kept, but not promoted until `clamgate unpin`");
    out.emit(args.json)
}

pub(crate) async fn unpin(args: ChangeArgs) -> Result<Exit, CliError> {
    let c = args.config.context()?;
    let lock = lock(&c.store)?;
    let mut out = Changed::new(Action::Unpin, c.store.current().map_err(store_err)?);
    if c.store.unpin(&lock).map_err(store_err)? {
        c.store.journal().append(Event::Unpin { by: operator() }).map_err(store_err)?;
        out.message = "unpinned: the next candidate that passes will be promoted (held ones: `clamgate promote ID`)".into();
    } else {
        (out.changed, out.message) = (false, "not pinned".into());
    }
    out.emit(args.json)
}

/// Clears a quarantine mark: the daemon checks those files again if
/// incoming still holds them (a release marked bad may be promoted again).
pub(crate) async fn recheck(args: RecheckArgs) -> Result<Exit, CliError> {
    let (_, store) = args.config.store()?;
    let lock = lock(&store)?;
    let mut held = store.held();
    if let Some(at) = held.iter().position(|h| h.name == args.id) {
        let file = held.remove(at);
        store.record_held(&lock, &held, &[]).map_err(store_err)?;
        store.journal().append(Event::HeldCleared { name: file.name.clone(), sha256: file.sha256.clone(), by: operator() }).map_err(store_err)?;
        let mut out = Changed::new(Action::Recheck, None);
        out.message = format!(
            "cleared the hold on {} ({}: {}): the daemon checks it again with incoming as it is, and holds it again if it still fails",
            file.name,
            file.reason.as_str(),
            file.detail
        );
        return out.emit(args.json);
    }
    let id = store.resolve_any(&args.id).map_err(|e| no_such(e, "recheck.no_such_id"))?;
    let Some(q) = store.quarantined(&id) else {
        return Err(CliError::refused("recheck.not_quarantined", format!("{id} is not marked bad; nothing to clear")));
    };
    store.unquarantine(&lock, &id).map_err(store_err)?;
    store.journal().append(Event::QuarantineCleared { id: id.clone(), by: operator() }).map_err(store_err)?;
    let codes: Vec<&str> = q.reasons.iter().map(|r| r.reason.as_str()).collect();
    let mut out = Changed::new(Action::Recheck, Some(id.clone()));
    out.message = format!("cleared {id}'s mark ({}: {}): the daemon checks those files again if incoming still holds them", q.source, codes.join(", "));
    out.overrode = Some(q.into());
    out.emit(args.json)
}
