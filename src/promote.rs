//! Making a release live in production (DESIGN.md step 7): swap `current`,
//! RELOAD the production clamd, wait until it shows the release, smoke-scan
//! through it; on failure swap back, RELOAD, verify the old release, and
//! quarantine the new one. Shared by the daemon and the CLI.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::candidate::Manifest;
use crate::clamd::{Client, ScanVerdict};
use crate::corpus::{Corpus, Expect};
use crate::failpoint;
use crate::journal::Entry;
use crate::reason::{Code, Reason};
use crate::store::{StateLock, Store, StoreError};

/// How long to wait for VERSION to change before sending RELOAD again.
const RELOAD_AGAIN: Duration = Duration::from_secs(2);

/// A corpus sample scanned through production to prove it really scans.
#[derive(Debug, Clone)]
pub struct SmokeSample {
    pub name: String,
    pub path: PathBuf,
    pub expect: Expect,
}

/// Picks the configured smoke samples out of the corpus.
pub fn smoke_samples(corpus: &Corpus, names: &[String]) -> Result<Vec<SmokeSample>, String> {
    names
        .iter()
        .map(|n| {
            corpus
                .samples
                .iter()
                .find(|s| &s.name == n)
                .map(|s| SmokeSample { name: s.name.clone(), path: s.path.clone(), expect: s.expect })
                .ok_or_else(|| format!("smoke sample {n:?} is not in the corpus {}", corpus.dir.display()))
        })
        .collect()
}

/// The production clamd, as promotion sees it.
#[derive(Debug, Clone)]
pub struct Production {
    pub client: Client,
    pub reload_timeout: Duration,
    pub smoke: Vec<SmokeSample>,
}

/// What verification found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// Production runs the release and scans as expected.
    Scanning { database: Option<u64> },
    /// Production clamd is not running: it will load `current` when it starts.
    Down(String),
}

/// The database version VERSION will show once production runs `m`: the
/// `daily` container's, when the release has one.
pub fn expected_version(m: &Manifest) -> Option<u64> {
    m.files.iter().filter(|f| f.database() == "daily").filter_map(|f| f.header.as_ref().map(|h| h.version)).max()
}

impl Production {
    /// RELOAD, wait for the release to show, smoke-scan.
    pub async fn verify(&self, m: &Manifest, after_reload: &str) -> Result<Verified, String> {
        match self.client.reload().await {
            Ok(()) => {}
            Err(e) if e.is_unreachable() => return Ok(Verified::Down(e.to_string())),
            Err(e) => return Err(format!("RELOAD failed: {e}")),
        }
        failpoint::hit(after_reload);
        let deadline = Instant::now() + self.reload_timeout;
        let mut asked = Instant::now();
        let database = match expected_version(m) {
            Some(want) => loop {
                // clamd drops a RELOAD that arrives while it is reloading (a
                // crashed daemon's, or the promotion's just before a
                // rollback): ask again now and then until it shows `want`.
                let seen = self.client.version().await.map(|v| v.database);
                match &seen {
                    Ok(Some(v)) if *v == want => break Some(want),
                    // It took the RELOAD and died (OOM while holding two
                    // engines, or the database killed it): not a promotion
                    // that stands.
                    Err(e) if e.is_unreachable() => return Err(format!("production clamd went away after RELOAD: {e}")),
                    _ => {}
                }
                if asked.elapsed() >= RELOAD_AGAIN {
                    asked = Instant::now();
                    if let Err(e) = self.client.reload().await {
                        tracing::debug!("RELOAD again: {e}");
                    }
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "production clamd did not show database version {want} within {:?} after RELOAD (it shows {})",
                        self.reload_timeout,
                        match seen {
                            Ok(v) => format!("{v:?}"),
                            Err(e) => e.to_string(),
                        }
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
            None => {
                // Without a daily database VERSION cannot tell releases apart;
                // give the reload a moment before the smoke scan.
                tokio::time::sleep(Duration::from_millis(500).min(self.reload_timeout)).await;
                None
            }
        };
        failpoint::hit("smoke-scan");
        self.smoke().await?;
        Ok(Verified::Scanning { database })
    }

    /// Scans the smoke samples through production; every one must match.
    pub async fn smoke(&self) -> Result<(), String> {
        for s in &self.smoke {
            let got = self.client.scan_file(&s.path).await.map_err(|e| format!("smoke scan of {}: {e}", s.name))?;
            let ok = match (&got, s.expect) {
                (ScanVerdict::Infected(_), Expect::Infected) | (ScanVerdict::Clean, Expect::Clean) => true,
                _ => false,
            };
            if !ok {
                let want = if s.expect == Expect::Infected { "detected" } else { "clean" };
                return Err(format!("smoke scan of {} through production gave {got}, expected {want}", s.name));
            }
        }
        Ok(())
    }
}

/// How an activation ended.
#[derive(Debug)]
pub enum Outcome {
    /// The release is live and verified (or production is down and will
    /// load it when it starts).
    Live(Verified),
    /// It failed in production and the previous release is live again.
    RolledBack { reason: String, to: String },
    /// It failed, and so did going back: production needs a human.
    Broken { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::journal::JournalError> for PromoteError {
    fn from(e: crate::journal::JournalError) -> Self {
        PromoteError::Store(StoreError::Journal(e))
    }
}

/// Makes `id` live. `kind` names the journal events (`promotion`,
/// `rollback`); if production does not scan it, it is quarantined (source
/// `production`) and the previous release made live again.
pub async fn activate(store: &Store, lock: &StateLock, prod: &Production, id: &str, kind: &str) -> Result<Outcome, PromoteError> {
    activate_marking(store, lock, prod, id, kind, None).await
}

/// [`activate`], recording in the `.begin` entry a release to mark bad
/// once `id` is live, so that a crash halfway still marks it (an operator's
/// rollback must not be undone by the daemon promoting the release again).
pub async fn activate_marking(
    store: &Store,
    lock: &StateLock,
    prod: &Production,
    id: &str,
    kind: &str,
    mark_bad: Option<&str>,
) -> Result<Outcome, PromoteError> {
    let previous = store.current()?;
    let fallback = previous.clone();
    switch(store, lock, prod, id, kind, previous, fallback, mark_bad).await
}

/// Finishes a promotion or rollback that a crash interrupted, from its
/// `.begin` journal entry: if `current` already moved, production is
/// verified on it, with the release it came from as the way back (a
/// rollback has none: where it came from is quarantined); if it had not
/// moved, a promotion is dropped (production never heard of it; the
/// candidate is checked again from incoming) and a rollback is done again.
pub async fn resume(store: &Store, lock: &StateLock, prod: &Production, begin: &Entry) -> Result<Option<Outcome>, PromoteError> {
    let kind = begin.event.trim_end_matches(".begin");
    let target = begin.get("id").unwrap_or_default().to_string();
    let from = begin.get("from").map(str::to_string);
    let current = store.current()?;
    tracing::warn!(release = target, "the last {kind} of {target} was interrupted (live: {current:?}); finishing it");
    if let Some(bad) = begin.get("mark_bad").filter(|b| store.quarantined(b).is_none()) {
        let why = begin.get("reason").unwrap_or("rolled back; interrupted").to_string();
        let source = if begin.fields.get("automatic").and_then(|v| v.as_bool()) == Some(true) { "production" } else { "operator" };
        let code = if source == "production" { Code::ProductionFailed } else { Code::OperatorRollback };
        if let Ok(m) = store.manifest(bad) {
            if let Err(e) = store.quarantine(lock, &m, &[Reason::new(code, None, why)], source, None, None) {
                tracing::error!(release = bad, "cannot mark {bad} bad: {e}");
            }
        }
    }
    if current.as_deref() == Some(target.as_str()) {
        let fallback = if kind == "rollback" { None } else { from.clone().filter(|f| f != &target) };
        return switch(store, lock, prod, &target, kind, from, fallback, None).await.map(Some);
    }
    if kind == "rollback" {
        return switch(store, lock, prod, &target, kind, current.clone(), None, None).await.map(Some);
    }
    store.journal().append(&format!("{kind}.interrupted"), json!({ "id": target, "live": current }))?;
    Ok(None)
}

/// Quarantines a release that failed in production. Best effort: a full or
/// read-only disk must not keep production on it; going back matters more.
fn mark_failed(store: &Store, lock: &StateLock, manifest: &Manifest, why: &str) {
    let reason = Reason::new(Code::ProductionFailed, None, why.to_string());
    if let Err(e) = store.quarantine(lock, manifest, std::slice::from_ref(&reason), "production", None, None) {
        tracing::error!(release = manifest.id, "cannot quarantine {}: {e}", manifest.id);
    }
}

async fn switch(
    store: &Store,
    lock: &StateLock,
    prod: &Production,
    id: &str,
    kind: &str,
    previous: Option<String>,
    fallback: Option<String>,
    mark_bad: Option<&str>,
) -> Result<Outcome, PromoteError> {
    let journal = store.journal();
    let manifest = store.manifest(id)?;
    let mut begin = json!({ "id": id, "from": previous });
    if let Some(bad) = mark_bad {
        begin["mark_bad"] = json!(bad);
    }
    journal.append(&format!("{kind}.begin"), begin)?;
    tracing::info!(release = id, from = ?previous, "{kind}: making {id} live");
    store.set_current(lock, id)?;
    failpoint::hit(&format!("{kind}-swapped"));
    let why = match prod.verify(&manifest, &format!("{kind}-reloaded")).await {
        Ok(v) => {
            let production = match &v {
                Verified::Scanning { .. } => "scanning".to_string(),
                Verified::Down(e) => format!("down: {e}"),
            };
            if let Verified::Down(e) = &v {
                tracing::warn!(release = id, "{kind}: production clamd is down ({e}); it will load {id} when it starts");
            } else {
                tracing::info!(release = id, "{kind}: production runs {id} and scans");
            }
            journal.append(&format!("{kind}.done"), json!({ "id": id, "from": previous, "production": production }))?;
            return Ok(Outcome::Live(v));
        }
        Err(why) => why,
    };
    tracing::error!(release = id, "{kind}: {id} failed in production: {why}");
    let Some(prev) = fallback.filter(|p| p != id) else {
        mark_failed(store, lock, &manifest, &why);
        journal.append(&format!("{kind}.failed"), json!({ "id": id, "reason": why, "rolled_back": false }))?;
        return Ok(Outcome::Broken { reason: format!("{why}; there is no previous release to go back to") });
    };
    // Journaled before anything else, so a crash from here on is resumed as
    // this rollback (which marks `id` bad), never as the promotion again.
    journal.append("rollback.begin", json!({ "id": prev, "from": id, "reason": why, "automatic": true, "mark_bad": id }))?;
    failpoint::hit("rollback-begun");
    mark_failed(store, lock, &manifest, &why);
    store.set_current(lock, &prev)?;
    failpoint::hit("rollback-swapped");
    let prev_manifest = store.manifest(&prev)?;
    match prod.verify(&prev_manifest, "rollback-reloaded").await {
        Ok(_) => {
            tracing::warn!(release = prev, "rolled back from {id} to {prev}");
            journal.append("rollback.done", json!({ "id": prev, "from": id, "reason": why, "automatic": true }))?;
            Ok(Outcome::RolledBack { reason: why, to: prev })
        }
        Err(again) => {
            tracing::error!(release = prev, "rollback to {prev} failed too: {again}");
            journal.append("rollback.failed", json!({ "id": prev, "from": id, "reason": again }))?;
            Ok(Outcome::Broken { reason: format!("{why}; rolling back to {prev} failed too: {again}") })
        }
    }
}
