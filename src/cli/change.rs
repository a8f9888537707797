//! Commands that change what is live: `rollback`, `promote`, `pin`,
//! `unpin`. Each takes the state lock (waiting briefly for the daemon or
//! another command), and makes production run the result with the same
//! verification and automatic undo as the daemon's promotion.

use std::time::{Duration, SystemTime};

use clap::Args;

use super::{CliError, ConfigArg, Exit};
use crate::context::Context;
use crate::journal::Event;
use crate::production::Verified;
use crate::promote::{Activation, Activator, MarkBad, Outcome};
use crate::store::{Pin, StateLock, Store, StoreError};

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
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Release id or unique prefix (see `clamgate releases`).
    pub(crate) id: String,
    /// Promote even a release marked bad.
    #[arg(long)]
    pub(crate) force: bool,
}

fn lock(store: &Store) -> Result<StateLock, CliError> {
    let wait = lock_wait();
    store.lock(wait).map_err(|e| match e {
        StoreError::Locked(_) => CliError::refused("state.locked", format!("{e} (waited {wait:?})")),
        e => CliError::environment("state.unreadable", e),
    })
}

fn store_err(e: impl std::fmt::Display) -> CliError {
    CliError::environment("state.unreadable", e)
}

fn operator() -> String {
    std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| format!("uid {}", rustix::process::getuid().as_raw()))
}

/// Reports an activation; 0 only when the target is live and verified or
/// production is down (it will load `current` when it starts).
fn report(outcome: Outcome, id: &str, verb: &str) -> Result<Exit, CliError> {
    match outcome {
        Outcome::Live(Verified::Scanning { database }) => {
            let db = database.map(|d| format!(", database version {d}")).unwrap_or_default();
            println!("{verb} {id}: production clamd reloaded and scans as expected{db}");
            Ok(Exit::Ok)
        }
        Outcome::Live(Verified::Down(e)) => {
            println!("{verb} {id}: current points at it; production clamd is down ({e}) and will load it when it starts");
            Ok(Exit::Ok)
        }
        Outcome::RolledBack { reason, to } => {
            Err(CliError::refused("production.verify_failed", format!("{id} failed in production ({reason}); went back to {to} and marked {id} bad")))
        }
        Outcome::Broken { reason } => Err(CliError::refused("production.broken", format!("production needs attention: {reason}"))),
    }
}

fn activator<'a>(c: &'a Context, lock: &'a StateLock) -> Activator<'a> {
    Activator { store: &c.store, lock, prod: &c.production }
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
    if matches!(outcome, Outcome::Live(_)) {
        // Marking is the activation's best effort: say so if it failed,
        // since the daemon could otherwise promote `live` again.
        if c.store.quarantined(&live).is_none() {
            let _ = report(outcome, &target, "rolled back to");
            return Err(store_err(format!("rolled back to {target}, but could not mark {live} bad (see the log); `clamgate pin` keeps it from coming back")));
        }
        c.store.journal().append(Event::ReleaseMarkedBad { id: live.clone(), by: operator() }).map_err(store_err)?;
        println!("marked {live} bad: the daemon will not promote it again");
    }
    report(outcome, &target, "rolled back to")
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

pub(crate) async fn promote(args: PromoteArgs) -> Result<Exit, CliError> {
    let c = args.config.context()?;
    let lock = lock(&c.store)?;
    let id = c.store.resolve(&args.id).map_err(|e| CliError::refused("promote.no_such_release", format!("{e}; see `clamgate releases`")))?;
    if c.store.current().map_err(store_err)?.as_deref() == Some(id.as_str()) {
        return Err(CliError::refused("promote.already_live", format!("{id} is already live")));
    }
    if let Some(q) = c.store.quarantined(&id) {
        let why: Vec<String> = q.reasons.iter().map(|r| r.to_string()).collect();
        if !args.force {
            return Err(CliError::refused(
                "promote.quarantined",
                format!("{id} is marked bad ({}: {}); pass --force to promote it anyway", q.source, why.join("; ")),
            ));
        }
        eprintln!("warning: promoting {id} although it is marked bad ({})", why.join("; "));
    }
    let outcome = activator(&c, &lock).activate(Activation::Promotion, &id, None).await.map_err(store_err)?;
    if matches!(outcome, Outcome::Live(_)) && c.store.quarantined(&id).is_some() {
        c.store.unquarantine(&lock, &id).map_err(store_err)?;
        c.store.journal().append(Event::ReleaseUnmarkedBad { id: id.clone(), by: operator() }).map_err(store_err)?;
    }
    report(outcome, &id, "promoted")
}

pub(crate) async fn pin(args: ConfigArg) -> Result<Exit, CliError> {
    let c = args.context()?;
    let lock = lock(&c.store)?;
    let live = c.store.current().map_err(store_err)?;
    let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let pin = Pin { id: live.clone(), by: operator(), at };
    c.store.pin(&lock, &pin).map_err(store_err)?;
    c.store.journal().append(Event::Pin { id: live.clone(), by: pin.by.clone() }).map_err(store_err)?;
    println!("pinned {}: candidates are still checked and kept, but not promoted until `clamgate unpin`", live.as_deref().unwrap_or("(no live release)"));
    Ok(Exit::Ok)
}

pub(crate) async fn unpin(args: ConfigArg) -> Result<Exit, CliError> {
    let c = args.context()?;
    let lock = lock(&c.store)?;
    if c.store.unpin(&lock).map_err(store_err)? {
        c.store.journal().append(Event::Unpin { by: operator() }).map_err(store_err)?;
        println!("unpinned: the next candidate that passes will be promoted (held ones: `clamgate promote ID`)");
    } else {
        println!("not pinned");
    }
    Ok(Exit::Ok)
}
