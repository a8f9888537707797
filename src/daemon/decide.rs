//! What the daemon does with a checked candidate: journal the verdict and
//! feed the metrics, then quarantine it, promote it, or, after per-file
//! isolation, promote the reduced set or record what it held back.

use std::time::Duration;

use super::{Daemon, DaemonError, Known};
use crate::candidate::{HeldFile, Manifest};
use crate::failpoint::{self, Point};
use crate::gate::{Baseline, GateError, Report, Verdict};
use crate::isolate::{Isolated, Outcome as IsoOutcome};
use crate::journal::{CheckDetails, Checked, Event};
use crate::promote::{Activation, Outcome};
use crate::reason::{Code, Reason};
use crate::store::{Source, StateLock};

impl Daemon {
    /// Attribution found files to hold: recorded (under the state lock,
    /// keeping a `recheck FILE` made meanwhile) and journaled before the
    /// reduced set is checked, so a crash costs no second attribution.
    /// `held_before` is what this run started from. Not recorded (the lock
    /// not had in time, held.json not written) fails the run, which is
    /// retried: `candidate.isolated` is never journaled without the record.
    pub(super) fn attributed(&self, id: &str, held: &[HeldFile], bisect_runs: u32, held_before: &[HeldFile]) -> Result<(), GateError> {
        let names = |v: &[&HeldFile]| v.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ");
        let (old, new): (Vec<&HeldFile>, Vec<&HeldFile>) = held.iter().partition(|h| held_before.contains(h));
        if new.is_empty() {
            tracing::info!(candidate = id, "still holding back {}: unchanged since held, not checked again (`clamgate recheck FILE` to check it)", names(&old));
        } else {
            tracing::warn!(candidate = id, "holding back {}; checking the rest as a reduced set", names(&new));
        }
        // A short wait: a CLI command holds the lock for a decision, never a canary.
        let store = &self.cx.store;
        let record = || store.lock(super::LOCK_WAIT).and_then(|lock| store.record_held(&lock, held, held_before));
        // The lock's wait sleeps: off the runtime's worker where it can be.
        let multi = tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let kept = if multi { tokio::task::block_in_place(record) } else { record() }.map_err(GateError::Held)?;
        if kept.len() < held.len() {
            tracing::info!(candidate = id, "a hold was cleared during this run; incoming is checked again after it");
            self.held_cleared.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let event = Event::CandidateIsolated { id: id.to_string(), held: held.to_vec(), bisect_runs };
        store.journal().append(event).map_err(|e| GateError::Held(e.into()))
    }

    /// The decision after isolation: the whole candidate's as before, or
    /// the reduced set promoted, or nothing.
    pub(super) async fn decide_isolated(&self, iso: &Isolated, live: Option<&str>, baseline: Option<&Baseline>) -> Result<(), DaemonError> {
        let store = &self.cx.store;
        if let (Some(b), Some(v)) = (baseline, &iso.new_baseline_verdicts)
            && let Err(e) = store.cache_verdicts(&b.manifest.id, &self.cx.corpus.digest, v)
        {
            tracing::warn!("cannot cache the live release's verdicts: {e}");
        }
        if iso.outcome == IsoOutcome::Whole {
            let full = iso.full.as_ref().expect("a whole verdict has a report");
            if full.verdict == Verdict::Pass && !store.held().is_empty() {
                let lock = self.lock().await?;
                store.record_held(&lock, &[], &[])?;
            }
            return self.decide(full, live).await;
        }
        let reduced = iso.reduced.as_ref();
        let id = reduced.filter(|_| iso.outcome != IsoOutcome::NothingLeft).and_then(|r| r.manifest.as_ref()).map(|m| m.id.clone());
        // Both verdicts are journaled; the metrics count one candidate, by
        // its final outcome (the reduced set's when it ran).
        let reduced_ran = reduced.is_some() && id.is_some();
        if let Some(full) = &iso.full {
            self.record_verdict(full, &iso.candidate, !reduced_ran)?;
        }
        if let (Some(r), Some(id)) = (reduced, &id) {
            self.record_verdict(r, id, true)?;
        }
        let journal = store.journal();
        journal.append(Event::CandidateReduced { id: id.clone(), from: iso.candidate.clone(), outcome: iso.outcome, held: iso.held.clone() })?;
        let lock = self.lock().await?;
        match (iso.outcome, reduced) {
            (IsoOutcome::Reduced, Some(r)) => {
                let mut manifest = r.manifest.clone().expect("a passed set has a manifest");
                manifest.held = iso.held.clone();
                self.promote(&lock, r, &manifest, live).await
            }
            (IsoOutcome::Rejected, Some(r)) => {
                // The snapshot, also when the whole check was skipped: `promote --force` needs it.
                let files = Some(iso.snapshot_dir.as_path());
                let reasons: Vec<Reason> = iso.full.iter().chain([r]).flat_map(|x| x.reasons.clone()).collect();
                store.quarantine(&lock, &iso.manifest, &reasons, Source::Gate, r.canary_log.as_deref(), files)?;
                journal.append(Event::CandidateQuarantined { id: iso.candidate.clone() })?;
                // Remembered like any quarantine: a recheck makes it due again.
                *self.last_quarantined.lock().expect("not poisoned") = Some(iso.candidate.clone());
                Ok(())
            }
            _ if iso.full.is_none() => {
                tracing::info!(candidate = iso.candidate, "incoming is the live release plus files held before; nothing to promote");
                Ok(())
            }
            _ => {
                tracing::warn!(candidate = iso.candidate, "without its held files the candidate is the live release; nothing to promote");
                Ok(())
            }
        }
    }

    pub(super) async fn decide(&self, report: &Report, live: Option<&str>) -> Result<(), DaemonError> {
        let journal = self.cx.store.journal();
        let Some(manifest) = report.manifest.as_ref().filter(|m| !m.files.is_empty()) else {
            tracing::warn!(reason = codes(&report.reasons), "incoming holds no usable database files: {}", listed(&report.reasons));
            journal.append(Event::CandidateChecked(Checked { id: None, verdict: report.verdict, reasons: report.reasons.clone(), details: None }))?;
            return Ok(());
        };
        let id = manifest.id.as_str();
        match self.known(live, manifest) {
            Some(Known::Live) => {
                tracing::debug!(release = id, "incoming matches the live release");
                return Ok(());
            }
            Some(Known::Quarantined(_)) => {
                tracing::warn!(release = id, reason = Code::KnownBad.as_str(), "candidate {id} was quarantined before; not checked again");
                *self.last_quarantined.lock().expect("not poisoned") = Some(id.to_string());
                journal.append(Event::CandidateKnownBad { id: id.to_string(), reasons: report.reasons.clone() })?;
                return Ok(());
            }
            None => {}
        }
        self.record_verdict(report, id, true)?;
        let lock = self.lock().await?;
        if report.verdict == Verdict::Reject {
            let (log, files) = (report.canary_log.as_deref(), report.snapshot_dir.as_deref());
            self.cx.store.quarantine(&lock, manifest, &report.reasons, Source::Gate, log, files)?;
            *self.last_quarantined.lock().expect("not poisoned") = Some(id.to_string());
            journal.append(Event::CandidateQuarantined { id: id.to_string() })?;
            return Ok(());
        }
        self.promote(&lock, report, manifest, live).await
    }

    /// Journals the verdict and feeds the metrics.
    /// `count`: whether this verdict is the candidate's final one, the one
    /// the candidates metric counts.
    pub(super) fn record_verdict(&self, report: &Report, id: &str, count: bool) -> Result<(), DaemonError> {
        let details =
            CheckDetails { warnings: report.warnings.clone(), baseline: report.baseline.clone(), canary: report.canary.clone(), checks: report.checks.clone() };
        let checked = Checked { id: Some(id.to_string()), verdict: report.verdict, reasons: report.reasons.clone(), details: Some(details) };
        self.cx.store.journal().append(Event::CandidateChecked(checked))?;
        match report.verdict {
            Verdict::Reject => tracing::warn!(release = id, reason = codes(&report.reasons), "candidate {id} rejected: {}", listed(&report.reasons)),
            Verdict::Pass if report.warnings.is_empty() => tracing::info!(release = id, "candidate {id} passed"),
            Verdict::Pass => {
                tracing::info!(release = id, reason = codes(&report.warnings), "candidate {id} passed with warnings: {}", listed(&report.warnings))
            }
        }
        let m = &self.health.metrics;
        if count {
            m.candidate(report.verdict, report.reasons.first().map(|r| r.reason));
        }
        if let Some(c) = &report.canary {
            m.canary(c.load_ms.map(Duration::from_millis), c.peak_rss_bytes);
        }
        Ok(())
    }

    /// A passed candidate becomes a release, and live unless pinned.
    pub(super) async fn promote(&self, lock: &StateLock, report: &Report, manifest: &Manifest, live: Option<&str>) -> Result<(), DaemonError> {
        let (store, journal, id) = (&self.cx.store, self.cx.store.journal(), manifest.id.as_str());
        let snapshot = report.snapshot_dir.as_deref().expect("a passed candidate has a snapshot");
        store.add_release(lock, snapshot, manifest)?;
        failpoint::hit(Point::ReleaseWritten);
        journal.append(Event::ReleaseCreated { id: id.to_string(), signatures: manifest.total_signatures() })?;
        if let Some(v) = &report.kept_verdicts
            && let Err(e) = store.cache_verdicts(id, &self.cx.corpus.digest, v)
        {
            tracing::warn!("cannot cache the verdicts of release {id}: {e}");
        }
        if report.kept.is_some() {
            failpoint::hit(Point::ManagedCanaryKept);
        }
        if let Some(pin) = store.pinned() {
            tracing::warn!(release = id, "passed, but the live release is pinned by {} since {}; kept as release {id}", pin.by, pin.at);
            journal.append(Event::CandidateHeld { id: id.to_string(), pinned_by: pin.by })?;
            return Ok(());
        }
        let outcome = self.activator(lock).activate(Activation::Promotion, id, None).await?;
        self.health.metrics.follow(store);
        match outcome {
            Outcome::Live(_) => {
                let removed = store.prune(lock, self.policy.keep_releases, live)?;
                if !removed.is_empty() {
                    journal.append(Event::ReleasePruned { ids: removed })?;
                }
            }
            Outcome::RolledBack { reason, to } => tracing::error!(release = id, "rolled back to {to}: {reason}"),
            Outcome::Broken { reason } => tracing::error!(release = id, "production needs attention: {reason}"),
        }
        Ok(())
    }
}

/// The reasons' codes, for the `reason` field (`CLAMGATE_REASON`).
fn codes(reasons: &[Reason]) -> String {
    reasons.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>().join(",")
}

fn listed(reasons: &[Reason]) -> String {
    reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ")
}
