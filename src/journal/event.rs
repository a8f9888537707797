//! What the journal's lines say: `Event`, one variant per kind of line, and
//! the payloads several of them share. The serde names are the on-disk
//! contract (`history`, `RELIABILITY.md` and other tools read them).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::canary::CanaryStats;
use crate::candidate::HeldFile;
use crate::gate::{Check, Verdict};
use crate::promote::Activation;
use crate::reason::Reason;

/// Everything clamgate journals. The serde names are the on-disk contract.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event")]
pub(crate) enum Event {
    #[serde(rename = "daemon.started")]
    DaemonStarted { pid: u32, incoming: PathBuf },
    #[serde(rename = "daemon.stopped")]
    DaemonStopped { pid: u32 },
    /// `clamgate recheck FILE`: a held file is checked again.
    #[serde(rename = "held.cleared")]
    HeldCleared { name: String, sha256: String, by: String },
    /// SIGHUP: the config and policy read again and applied; `restart`
    /// names the changed keys that only a restart applies.
    #[serde(rename = "daemon.reloaded")]
    DaemonReloaded { config: Option<PathBuf>, restart: Vec<String> },
    /// SIGHUP with a config or policy that does not load: the running one is kept.
    #[serde(rename = "daemon.reload_failed")]
    DaemonReloadFailed { error: String },
    #[serde(rename = "candidate.started")]
    CandidateStarted { live: Option<String> },
    /// incoming changed while the candidate was checked; it starts over.
    #[serde(rename = "candidate.cancelled")]
    CandidateCancelled { why: String },
    /// Our own failure (disk full, no clamd): retried later.
    #[serde(rename = "candidate.error")]
    CandidateError { error: String },
    #[serde(rename = "candidate.checked")]
    CandidateChecked(Checked),
    /// The memory guard found too little room for the canary; the
    /// candidate is checked again a rescan interval later.
    #[serde(rename = "candidate.deferred")]
    CandidateDeferred(crate::memguard::Deferral),
    /// A candidate quarantined before came back; not checked again.
    #[serde(rename = "candidate.known_bad")]
    CandidateKnownBad { id: String, reasons: Vec<Reason> },
    #[serde(rename = "candidate.quarantined")]
    CandidateQuarantined { id: String },
    /// Per-file isolation named the files behind a candidate's failure;
    /// its reduced set is checked next.
    #[serde(rename = "candidate.isolated")]
    CandidateIsolated { id: String, held: Vec<HeldFile>, bisect_runs: u32 },
    /// What came of the reduced set: `id` is the set promoted or rejected,
    /// absent when nothing was left to promote.
    #[serde(rename = "candidate.reduced")]
    CandidateReduced { id: Option<String>, from: String, outcome: crate::isolate::Outcome, held: Vec<HeldFile> },
    /// It passed, but a pin holds the live release.
    #[serde(rename = "candidate.held")]
    CandidateHeld { id: String, pinned_by: String },
    #[serde(rename = "release.created")]
    ReleaseCreated { id: String, signatures: u64 },
    #[serde(rename = "release.pruned")]
    ReleasePruned { ids: Vec<String> },
    #[serde(rename = "release.marked_bad")]
    ReleaseMarkedBad { id: String, by: String },
    #[serde(rename = "release.unmarked_bad")]
    ReleaseUnmarkedBad { id: String, by: String },
    /// An operator promoted what the gate or production had refused
    /// (`promote --force`); `reasons` are the ones overridden.
    #[serde(rename = "release.forced")]
    ReleaseForced { id: String, by: String, reasons: Vec<Reason> },
    /// An operator cleared a quarantine (`recheck`): the daemon checks
    /// those files again.
    #[serde(rename = "quarantine.cleared")]
    QuarantineCleared { id: String, by: String },
    #[serde(rename = "pin")]
    Pin { id: Option<String>, by: String },
    #[serde(rename = "unpin")]
    Unpin { by: String },
    #[serde(rename = "promotion.begin")]
    PromotionBegin(Begin),
    #[serde(rename = "promotion.done")]
    PromotionDone(Done),
    #[serde(rename = "promotion.failed")]
    PromotionFailed(Failed),
    /// A crash came before `current` moved: production never heard of it.
    #[serde(rename = "promotion.interrupted")]
    PromotionInterrupted(Interrupted),
    #[serde(rename = "rollback.begin")]
    RollbackBegin(Begin),
    #[serde(rename = "rollback.done")]
    RollbackDone(Done),
    #[serde(rename = "rollback.failed")]
    RollbackFailed(Failed),
    #[serde(rename = "rollback.interrupted")]
    RollbackInterrupted(Interrupted),
    /// The gate has a new live release: the rollout starts with the first ring.
    #[serde(rename = "rollout.started")]
    RolloutStarted { release: String },
    /// A ring's pointer now names the rollout's release.
    #[serde(rename = "rollout.advanced")]
    RolloutAdvanced { release: String, ring: String },
    #[serde(rename = "rollout.completed")]
    RolloutCompleted { release: String },
    /// A host failed, rejected, rolled back or did not take the release:
    /// its ring went back to `to`; later rings never got it.
    #[serde(rename = "rollout.halted")]
    RolloutHalted { release: String, ring: String, host: Option<String>, reason: crate::fleet::rollout::HaltReason, detail: String, to: Option<String> },
    #[serde(rename = "rollout.paused")]
    RolloutPaused { ring: String, by: String },
    #[serde(rename = "rollout.resumed")]
    RolloutResumed { ring: String, by: String },
    /// An operator's `rollout revert`, or the gate going back (`by` = "gate").
    #[serde(rename = "rollout.reverted")]
    RolloutReverted { ring: String, to: Option<String>, by: String },
    /// A release copied into the publish tree and signed.
    #[serde(rename = "release.published")]
    ReleasePublished { id: String, manifest_sha256: String },
    /// A fleet host accepted a ring pointer naming `id`.
    #[serde(rename = "source.followed")]
    SourceFollowed { id: String, ring: String, generation: u64 },
    /// A fleet host refused something the gate's tree served.
    #[serde(rename = "source.refused")]
    SourceRefused { file: String, reason: crate::fleet::source::Refusal, message: String },
    /// A line written by a newer clamgate: kept readable, never acted on.
    #[serde(other)]
    Unknown,
}

/// A candidate's verdict. `details` is absent when incoming held nothing
/// usable (no manifest, no canary).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Checked {
    pub(crate) id: Option<String>,
    pub(crate) verdict: Verdict,
    pub(crate) reasons: Vec<Reason>,
    #[serde(flatten)]
    pub(crate) details: Option<CheckDetails>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct CheckDetails {
    pub(crate) warnings: Vec<Reason>,
    pub(crate) baseline: Option<String>,
    pub(crate) canary: Option<CanaryStats>,
    pub(crate) checks: Vec<Check>,
}

/// The start of an activation: a crash after this line is resumed from it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Begin {
    pub(crate) id: String,
    pub(crate) from: Option<String>,
    /// A release to mark bad once `id` is live (a rollback's reason to be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mark_bad: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// Set on the rollback that follows a failed promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) automatic: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Done {
    pub(crate) id: String,
    pub(crate) from: Option<String>,
    /// `scanning`, or `down: …` when production was not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) production: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) automatic: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Failed {
    pub(crate) id: String,
    pub(crate) reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rolled_back: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Interrupted {
    pub(crate) id: String,
    pub(crate) live: Option<String>,
}

/// Where an activation stands, as its journal lines say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Begin,
    Done,
    Failed,
    Interrupted,
}

impl Event {
    pub(crate) fn begin(kind: Activation, b: Begin) -> Event {
        match kind {
            Activation::Promotion => Event::PromotionBegin(b),
            Activation::Rollback => Event::RollbackBegin(b),
        }
    }

    pub(crate) fn done(kind: Activation, d: Done) -> Event {
        match kind {
            Activation::Promotion => Event::PromotionDone(d),
            Activation::Rollback => Event::RollbackDone(d),
        }
    }

    pub(crate) fn failed(kind: Activation, f: Failed) -> Event {
        match kind {
            Activation::Promotion => Event::PromotionFailed(f),
            Activation::Rollback => Event::RollbackFailed(f),
        }
    }

    pub(crate) fn interrupted(kind: Activation, i: Interrupted) -> Event {
        match kind {
            Activation::Promotion => Event::PromotionInterrupted(i),
            Activation::Rollback => Event::RollbackInterrupted(i),
        }
    }

    /// Which activation this event is a step of, and which step.
    pub(crate) fn activation(&self) -> Option<(Activation, Phase)> {
        use Activation::{Promotion, Rollback};
        Some(match self {
            Event::PromotionBegin(_) => (Promotion, Phase::Begin),
            Event::PromotionDone(_) => (Promotion, Phase::Done),
            Event::PromotionFailed(_) => (Promotion, Phase::Failed),
            Event::PromotionInterrupted(_) => (Promotion, Phase::Interrupted),
            Event::RollbackBegin(_) => (Rollback, Phase::Begin),
            Event::RollbackDone(_) => (Rollback, Phase::Done),
            Event::RollbackFailed(_) => (Rollback, Phase::Failed),
            Event::RollbackInterrupted(_) => (Rollback, Phase::Interrupted),
            _ => return None,
        })
    }

    /// The `.begin` of an activation, if this is one.
    pub(crate) fn as_begin(&self) -> Option<(Activation, &Begin)> {
        match self {
            Event::PromotionBegin(b) => Some((Activation::Promotion, b)),
            Event::RollbackBegin(b) => Some((Activation::Rollback, b)),
            _ => None,
        }
    }

    /// The `.done` of an activation, if this is one.
    pub(crate) fn as_done(&self) -> Option<&Done> {
        match self {
            Event::PromotionDone(d) | Event::RollbackDone(d) => Some(d),
            _ => None,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Event::DaemonStarted { .. } => "daemon.started",
            Event::DaemonStopped { .. } => "daemon.stopped",
            Event::CandidateStarted { .. } => "candidate.started",
            Event::CandidateCancelled { .. } => "candidate.cancelled",
            Event::CandidateDeferred(_) => "candidate.deferred",
            Event::CandidateError { .. } => "candidate.error",
            Event::CandidateChecked(_) => "candidate.checked",
            Event::CandidateKnownBad { .. } => "candidate.known_bad",
            Event::CandidateQuarantined { .. } => "candidate.quarantined",
            Event::CandidateHeld { .. } => "candidate.held",
            Event::CandidateIsolated { .. } => "candidate.isolated",
            Event::CandidateReduced { .. } => "candidate.reduced",
            Event::ReleaseCreated { .. } => "release.created",
            Event::ReleasePruned { .. } => "release.pruned",
            Event::ReleaseMarkedBad { .. } => "release.marked_bad",
            Event::ReleaseUnmarkedBad { .. } => "release.unmarked_bad",
            Event::ReleaseForced { .. } => "release.forced",
            Event::QuarantineCleared { .. } => "quarantine.cleared",
            Event::HeldCleared { .. } => "held.cleared",
            Event::DaemonReloaded { .. } => "daemon.reloaded",
            Event::DaemonReloadFailed { .. } => "daemon.reload_failed",
            Event::Pin { .. } => "pin",
            Event::Unpin { .. } => "unpin",
            Event::PromotionBegin(_) => "promotion.begin",
            Event::PromotionDone(_) => "promotion.done",
            Event::PromotionFailed(_) => "promotion.failed",
            Event::PromotionInterrupted(_) => "promotion.interrupted",
            Event::RollbackBegin(_) => "rollback.begin",
            Event::RollbackDone(_) => "rollback.done",
            Event::RollbackFailed(_) => "rollback.failed",
            Event::RollbackInterrupted(_) => "rollback.interrupted",
            Event::RolloutStarted { .. } => "rollout.started",
            Event::RolloutAdvanced { .. } => "rollout.advanced",
            Event::RolloutCompleted { .. } => "rollout.completed",
            Event::RolloutHalted { .. } => "rollout.halted",
            Event::RolloutPaused { .. } => "rollout.paused",
            Event::RolloutResumed { .. } => "rollout.resumed",
            Event::RolloutReverted { .. } => "rollout.reverted",
            Event::ReleasePublished { .. } => "release.published",
            Event::SourceFollowed { .. } => "source.followed",
            Event::SourceRefused { .. } => "source.refused",
            Event::Unknown => "unknown",
        }
    }

    pub(crate) fn id(&self) -> Option<&str> {
        match self {
            Event::CandidateChecked(c) => c.id.as_deref(),
            Event::CandidateKnownBad { id, .. }
            | Event::CandidateQuarantined { id }
            | Event::CandidateHeld { id, .. }
            | Event::CandidateIsolated { id, .. }
            | Event::ReleaseCreated { id, .. }
            | Event::ReleaseMarkedBad { id, .. }
            | Event::ReleaseUnmarkedBad { id, .. }
            | Event::ReleaseForced { id, .. }
            | Event::QuarantineCleared { id, .. }
            | Event::ReleasePublished { id, .. }
            | Event::SourceFollowed { id, .. } => Some(id),
            Event::RolloutStarted { release }
            | Event::RolloutAdvanced { release, .. }
            | Event::RolloutCompleted { release }
            | Event::RolloutHalted { release, .. } => Some(release),
            Event::Pin { id, .. } | Event::CandidateReduced { id, .. } => id.as_deref(),
            Event::PromotionBegin(b) | Event::RollbackBegin(b) => Some(&b.id),
            Event::PromotionDone(d) | Event::RollbackDone(d) => Some(&d.id),
            Event::PromotionFailed(f) | Event::RollbackFailed(f) => Some(&f.id),
            Event::PromotionInterrupted(i) | Event::RollbackInterrupted(i) => Some(&i.id),
            _ => None,
        }
    }
}
