//! Making a release live: swap `current`, have production load and prove it
//! ([`Production::verify`]); on failure swap back, verify the old release,
//! and quarantine the new one. Shared by the daemon and the CLI. Every step
//! is journaled first, so a crash anywhere is finished by
//! [`Activator::resume`] (docs/ARCHITECTURE.md, "Crash safety").

use std::fmt;

use crate::candidate::Manifest;
use crate::failpoint::{self, Point};
use crate::journal::{Begin, Done, Event, Failed, Interrupted, JournalError};
use crate::managed::Managed;
use crate::production::{Production, Verified, VerifyError};
use crate::reason::{Code, Reason};
use crate::store::{Source, StateLock, Store, StoreError};

/// Why `current` moves: the journal's event names and the crash points
/// follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Promotion,
    Rollback,
}

impl Activation {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Activation::Promotion => "promotion",
            Activation::Rollback => "rollback",
        }
    }

    fn swapped(self) -> Point {
        match self {
            Activation::Promotion => Point::PromotionSwapped,
            Activation::Rollback => Point::RollbackSwapped,
        }
    }

    fn reloaded(self) -> Point {
        match self {
            Activation::Promotion => Point::PromotionReloaded,
            Activation::Rollback => Point::RollbackReloaded,
        }
    }

    /// Managed mode: right after the production socket was renamed.
    fn renamed(self) -> Point {
        match self {
            Activation::Promotion => Point::ManagedSocketRenamed,
            Activation::Rollback => Point::ManagedRollbackRenamed,
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an activation ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The release is live and verified (or production is down and will
    /// load it when it starts).
    Live(Verified),
    /// It failed in production and the previous release is live again.
    RolledBack { reason: String, to: String },
    /// It failed, and so did going back: production needs a human.
    Broken { reason: String },
}

/// The state dir could not record a step: production keeps what it runs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PromoteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What moving `current` needs: the state, proof that we hold its lock, and
/// the production clamd that must run the result.
pub(crate) struct Activator<'a> {
    pub(crate) store: &'a Store,
    pub(crate) lock: &'a StateLock,
    pub(crate) prod: &'a Production,
    /// How production gets the release: `None`, RELOAD; managed mode, the
    /// production socket handed to a clamd that runs it.
    pub(crate) managed: Option<&'a Managed>,
}

/// A release to mark bad once the activation's target is live (the one an
/// operator rolls back from), and why.
#[derive(Debug, Clone)]
pub(crate) struct MarkBad {
    pub(crate) id: String,
    pub(crate) why: String,
}

/// One move of `current`: to `id`, from `from`, and where to go back if
/// production cannot run it (`None`: nowhere).
struct Switch<'a> {
    kind: Activation,
    id: &'a str,
    from: Option<String>,
    fallback: Option<String>,
    /// Recorded in the `.begin` entry and carried out once `id` is live, so
    /// a crash halfway still marks it on resume (an operator's rollback must
    /// not be undone by the daemon promoting that release again).
    mark_bad: Option<MarkBad>,
    /// The daemon's rollback after a failed promotion, finished on resume:
    /// journaled as such, so it counts as automatic, not an operator's.
    automatic: bool,
}

impl Activator<'_> {
    /// Makes `id` live; if production does not scan it, it is quarantined
    /// (source `production`) and the previous release made live again.
    pub(crate) async fn activate(&self, kind: Activation, id: &str, mark_bad: Option<MarkBad>) -> Result<Outcome, PromoteError> {
        let from = self.store.current()?;
        self.switch(Switch { kind, id, fallback: from.clone(), from, mark_bad, automatic: false }).await
    }

    /// Finishes an activation that a crash interrupted, from its `.begin`
    /// entry: if `current` already moved, production is verified on it,
    /// with the release it came from as the way back (a rollback has none:
    /// where it came from is quarantined); if it had not moved, a promotion
    /// is dropped (production never heard of it; the candidate is checked
    /// again from incoming) and a rollback is done again.
    pub(crate) async fn resume(&self, kind: Activation, begin: &Begin) -> Result<Option<Outcome>, PromoteError> {
        let target = begin.id.as_str();
        let current = self.store.current()?;
        tracing::warn!(release = target, "the last {kind} of {target} was interrupted (live: {current:?}); finishing it");
        if let Some(bad) = begin.mark_bad.as_deref() {
            let why = begin.reason.clone().unwrap_or_else(|| "rolled back; interrupted".into());
            self.mark_bad(bad, begin.automatic == Some(true), &why);
        }
        if current.as_deref() == Some(target) {
            let fallback = match kind {
                Activation::Rollback => None,
                Activation::Promotion => begin.from.clone().filter(|f| f != target),
            };
            let s = Switch { kind, id: target, from: begin.from.clone(), fallback, mark_bad: None, automatic: begin.automatic == Some(true) };
            return self.switch(s).await.map(Some);
        }
        if kind == Activation::Rollback {
            let s = Switch { kind, id: target, from: current, fallback: None, mark_bad: None, automatic: begin.automatic == Some(true) };
            return self.switch(s).await.map(Some);
        }
        self.store.journal().append(Event::interrupted(kind, Interrupted { id: target.to_string(), live: current }))?;
        Ok(None)
    }

    /// Marks the release a rollback left bad, unless it already is: the one
    /// that failed in production (`automatic`), or an operator's. Best
    /// effort: a full disk must not stop the rollback.
    fn mark_bad(&self, bad: &str, automatic: bool, why: &str) {
        if self.store.quarantined(bad).is_some() {
            return;
        }
        let (source, code) = if automatic { (Source::Production, Code::ProductionFailed) } else { (Source::Operator, Code::OperatorRollback) };
        if let Ok(m) = self.store.manifest(bad)
            && let Err(e) = self.store.quarantine(self.lock, &m, &[Reason::new(code, None, why)], source, None, None)
        {
            tracing::error!(release = bad, "cannot mark {bad} bad: {e}");
        }
    }

    async fn switch(&self, s: Switch<'_>) -> Result<Outcome, PromoteError> {
        let (kind, id) = (s.kind, s.id);
        let manifest = self.store.manifest(id)?;
        let (mark_bad, reason) = s.mark_bad.as_ref().map(|m| (m.id.clone(), m.why.clone())).unzip();
        let automatic = s.automatic.then_some(true);
        let begin = Begin { id: id.to_string(), from: s.from.clone(), mark_bad, reason, automatic };
        self.store.journal().append(Event::begin(kind, begin))?;
        tracing::info!(release = id, from = ?s.from, "{kind}: making {id} live");
        self.store.set_current(self.lock, id)?;
        failpoint::hit(kind.swapped());
        let (verified, before) = self.make_live(&manifest, kind.reloaded(), kind.renamed()).await;
        let why = match verified {
            Ok(v) => {
                if let Some(m) = &s.mark_bad {
                    self.mark_bad(&m.id, false, &m.why);
                }
                let outcome = self.live(kind, id, s.from, automatic, v);
                self.retire(before).await;
                return outcome;
            }
            Err(e) => e.to_string(),
        };
        tracing::error!(release = id, reason = Code::ProductionFailed.as_str(), "{kind}: {id} failed in production: {why}");
        match s.fallback.filter(|p| p != id) {
            Some(prev) => self.go_back(&manifest, prev, why).await,
            None => {
                self.mark_failed(&manifest, &why);
                let failed = Failed { id: id.to_string(), reason: why.clone(), from: None, rolled_back: Some(false) };
                self.store.journal().append(Event::failed(kind, failed))?;
                Ok(Outcome::Broken { reason: format!("{why}; there is no previous release to go back to") })
            }
        }
    }

    fn live(&self, kind: Activation, id: &str, from: Option<String>, automatic: Option<bool>, v: Verified) -> Result<Outcome, PromoteError> {
        let production = match &v {
            Verified::Scanning { .. } => {
                tracing::info!(release = id, "{kind}: production runs {id} and scans");
                "scanning".to_string()
            }
            Verified::Down(e) => {
                tracing::warn!(release = id, "{kind}: production clamd is down ({e}); it will load {id} when it starts");
                format!("down: {e}")
            }
        };
        let done = Done { id: id.to_string(), from, production: Some(production), reason: None, automatic };
        self.store.journal().append(Event::done(kind, done))?;
        Ok(Outcome::Live(v))
    }

    /// The automatic rollback after `failed` did not run in production.
    async fn go_back(&self, failed: &Manifest, prev: String, why: String) -> Result<Outcome, PromoteError> {
        let journal = self.store.journal();
        let id = failed.id.as_str();
        // Journaled before anything else, so a crash from here on is resumed
        // as this rollback (which marks `id` bad), never as the promotion again.
        let begin = Begin { id: prev.clone(), from: Some(id.into()), mark_bad: Some(id.into()), reason: Some(why.clone()), automatic: Some(true) };
        journal.append(Event::RollbackBegin(begin))?;
        failpoint::hit(Point::RollbackBegun);
        self.mark_failed(failed, &why);
        self.store.set_current(self.lock, &prev)?;
        failpoint::hit(Point::RollbackSwapped);
        let prev_manifest = self.store.manifest(&prev)?;
        let (verified, failed_clamd) = self.make_live(&prev_manifest, Point::RollbackReloaded, Point::ManagedRollbackRenamed).await;
        match verified {
            Ok(_) => {
                tracing::warn!(release = prev, reason = Code::ProductionFailed.as_str(), "rolled back from {id} to {prev}");
                let done = Done { id: prev.clone(), from: Some(id.into()), production: None, reason: Some(why.clone()), automatic: Some(true) };
                journal.append(Event::RollbackDone(done))?;
                self.retire(failed_clamd).await;
                Ok(Outcome::RolledBack { reason: why, to: prev })
            }
            Err(again) => {
                tracing::error!(release = prev, "rollback to {prev} failed too: {again}");
                let failed = Failed { id: prev.clone(), reason: again.to_string(), from: Some(id.into()), rolled_back: None };
                journal.append(Event::RollbackFailed(failed))?;
                Ok(Outcome::Broken { reason: format!("{why}; rolling back to {prev} failed too: {again}") })
            }
        }
    }

    /// Production gets `m`: RELOAD and verify, or in managed mode the
    /// production socket handed to a clamd running it (kept from the
    /// canary, still running, or started now) and verified without RELOAD.
    /// Also returns the managed clamd that served before, which keeps
    /// running until the caller has journaled the outcome.
    async fn make_live(&self, m: &Manifest, reloaded: Point, renamed: Point) -> (Result<Verified, VerifyError>, Option<String>) {
        let Some(managed) = self.managed else { return (self.prod.verify(m, reloaded).await, None) };
        match managed.serve(self.store, &m.id, renamed).await {
            Ok(served) => (self.prod.verify_served(m).await, served.from),
            Err(e) => (Err(e.into()), None),
        }
    }

    /// The managed clamd that served before a verified handover drains and
    /// stops.
    async fn retire(&self, before: Option<String>) {
        if let (Some(managed), Some(name)) = (self.managed, before) {
            managed.retire(&name).await;
        }
    }

    /// Quarantines a release that failed in production. Best effort: a full
    /// or read-only disk must not keep production on it; going back matters more.
    fn mark_failed(&self, manifest: &Manifest, why: &str) {
        let reason = Reason::new(Code::ProductionFailed, None, why.to_string());
        if let Err(e) = self.store.quarantine(self.lock, manifest, std::slice::from_ref(&reason), Source::Production, None, None) {
            tracing::error!(release = manifest.id, "cannot quarantine {}: {e}", manifest.id);
        }
    }
}
