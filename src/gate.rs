//! The gate: from a directory of database files to a verdict, in the order
//! of docs/ARCHITECTURE.md's data flow (files, format, known, sanity,
//! canary, corpus). Cheap checks run first; a candidate that fails one is
//! never loaded into a canary. Promotes nothing: the caller decides.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::canary::{Canary, CanaryError, CanaryRun, CanaryStats};
use crate::candidate::{self, Manifest, Snapshot, SnapshotError};
use crate::clamd::process::StartError;
use crate::corpus::{self, Corpus, SampleResult, Verdicts};
use crate::managed::Managed;
use crate::memguard::{Deferral, Room, Sample};
use crate::policy::Policy;
use crate::reason::{Code, Reason};
use crate::status::Status;
use crate::validate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    Pass,
    Reject,
}

impl Verdict {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Reject => "reject",
        }
    }
}

/// The gate's steps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Step {
    Files,
    Format,
    Known,
    Sanity,
    Canary,
    Corpus,
}

impl Step {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Step::Files => "files",
            Step::Format => "format",
            Step::Known => "known",
            Step::Sanity => "sanity",
            Step::Canary => "canary",
            Step::Corpus => "corpus",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One step's line in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Check {
    pub(crate) step: Step,
    pub(crate) status: Status,
    pub(crate) detail: String,
}

/// The release a candidate would replace: what it is compared with.
#[derive(Debug, Clone)]
pub(crate) struct Baseline {
    /// A directory clamd can load (a release directory).
    pub(crate) dir: PathBuf,
    pub(crate) manifest: Manifest,
    /// The baseline's verdicts on this corpus, if already known; scanned once
    /// per baseline and corpus, then cached by the caller.
    pub(crate) verdicts: Option<Verdicts>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) verdict: Verdict,
    /// Candidate id (manifest digest prefix); absent when nothing was copied.
    pub(crate) candidate: Option<String>,
    pub(crate) source: PathBuf,
    pub(crate) reasons: Vec<Reason>,
    pub(crate) warnings: Vec<Reason>,
    pub(crate) checks: Vec<Check>,
    pub(crate) manifest: Option<Manifest>,
    pub(crate) ignored: Vec<String>,
    pub(crate) canary: Option<CanaryStats>,
    pub(crate) baseline: Option<String>,
    pub(crate) samples: Vec<SampleResult>,
    /// Baseline verdicts computed during this run, for the caller to cache.
    #[serde(skip)]
    pub(crate) new_baseline_verdicts: Option<Verdicts>,
    /// The canary clamd's output, for the quarantine.
    #[serde(skip)]
    pub(crate) canary_log: Option<String>,
    /// The snapshot directory holding the checked copy of the files.
    #[serde(skip)]
    pub(crate) snapshot_dir: Option<PathBuf>,
    /// Managed mode: the passed canary, kept running (its managed name).
    #[serde(skip)]
    pub(crate) kept: Option<String>,
    /// A passed canary's verdicts: the release's own under the canary's
    /// config (production's, in managed mode), cached as the baseline of
    /// the next candidate, so the next update needs no baseline canary.
    #[serde(skip)]
    pub(crate) kept_verdicts: Option<Verdicts>,
}

/// Our own failure, not the candidate's: the caller retries later and
/// production is untouched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GateError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot start a canary clamd: {0}")]
    Canary(StartError),
    /// Not enough memory for the canary now: checked again later.
    #[error("{0}")]
    Deferred(Deferral),
    #[error("cannot assemble a reduced set in {dir}: {source}")]
    Assemble {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The caller could not record what attribution held back.
    #[error("cannot record the held files: {0}")]
    Held(crate::store::StoreError),
}

/// Says why a manifest is not to be checked again, if it is not.
pub(crate) type KnownCheck<'a> = &'a (dyn Fn(&Manifest) -> Option<Reason> + Sync);

#[derive(Clone, Copy)]
pub(crate) struct Gate<'a> {
    pub(crate) policy: &'a Policy,
    pub(crate) clamd_binary: &'a Path,
    pub(crate) corpus: &'a Corpus,
    /// Stops the run before any canary when it returns a reason: the daemon
    /// uses it so a quarantined digest (or the live one) is not canaried again.
    pub(crate) known: Option<KnownCheck<'a>>,
    /// Asked before each canary (the daemon's memory guard); `None` runs unguarded.
    pub(crate) room: Option<&'a dyn Room>,
    /// Managed mode: canaries from the operator's clamd.conf.
    pub(crate) managed: Option<&'a Managed>,
    /// Managed mode: a candidate that passes keeps its canary running, to
    /// become production (`Report::kept`). Off for bisection probes.
    pub(crate) keep: bool,
}

impl Report {
    fn new(src: &Path, baseline: Option<&Baseline>) -> Report {
        Report {
            verdict: Verdict::Reject,
            candidate: None,
            source: src.to_path_buf(),
            reasons: Vec::new(),
            warnings: Vec::new(),
            checks: Vec::new(),
            manifest: None,
            ignored: Vec::new(),
            canary: None,
            baseline: baseline.map(|b| b.manifest.id.clone()),
            samples: Vec::new(),
            new_baseline_verdicts: None,
            canary_log: None,
            snapshot_dir: None,
            kept: None,
            kept_verdicts: None,
        }
    }

    fn check(&mut self, step: Step, status: Status, detail: impl Into<String>) {
        self.checks.push(Check { step, status, detail: detail.into() });
    }

    fn pass_or_fail(&mut self, step: Step, ok: bool, detail: String) {
        self.check(step, if ok { Status::Pass } else { Status::Fail }, detail);
    }
}

impl Gate<'_> {
    /// The file rules: a private copy of `src` under `work/snapshot` (`work`
    /// must not exist), and the report's first step. [`Gate::check_snapshot`]
    /// goes on from there; `isolate::run` ties the two.
    pub(crate) fn snapshot(&self, src: &Path, work: &Path, baseline: Option<&Baseline>) -> Result<(Report, Snapshot), GateError> {
        std::fs::create_dir_all(work).map_err(|source| SnapshotError::Write { file: work.to_path_buf(), source })?;
        let mut r = Report::new(src, baseline);
        let snap = candidate::snapshot(src, &work.join("snapshot"), self.policy)?;
        self.files(&mut r, src, &snap);
        Ok((r, snap))
    }

    /// The whole gate on a set assembled from files that passed the file
    /// rules already (per-file isolation); its canary works under `work`.
    pub(crate) async fn check_set(&self, src: &Path, set: &Snapshot, work: &Path, baseline: Option<&Baseline>) -> Result<Report, GateError> {
        let mut r = Report::new(src, baseline);
        self.files(&mut r, src, set);
        self.check_snapshot(r, set, work, baseline).await
    }

    /// Every step after the file rules, on the files in `snap`. The format
    /// checks (container MD5s, every text line) run while the canary loads,
    /// off the critical path; the report reads as if they ran first, and a
    /// candidate they reject has its canary killed, never judged.
    pub(crate) async fn check_snapshot(&self, mut r: Report, snap: &Snapshot, work: &Path, baseline: Option<&Baseline>) -> Result<Report, GateError> {
        // Names, sizes and hashes are the id: known or not is settled before any canary.
        if let Some(reason) = self.known.and_then(|known| known(&Manifest::new(snap.files.clone()))) {
            let (manifest, _) = self.format(&mut r, snap);
            r.check(Step::Known, Status::Fail, reason.message.clone());
            r.reasons.push(reason);
            r.manifest = Some(manifest);
            return Ok(r);
        }
        let canary = Canary { binary: self.clamd_binary, policy: self.policy, managed: self.managed };
        let room = if self.room.is_some() { self.room_for(validate::signature_hint(&snap.dir, &snap.files)) } else { Ok(()) };
        let may_load = room.is_ok() && r.reasons.is_empty();
        let (dir, files) = (snap.dir.clone(), snap.files.clone());
        let mut inspecting = tokio::task::spawn_blocking(move || validate::inspect_all(&dir, files));
        let mut loading = std::pin::pin!(async {
            match may_load {
                true => Some(canary.run(&snap.dir, &work.join("canary"), self.corpus, self.keep).await),
                false => None,
            }
        });
        let mut loaded = None;
        let inspected = tokio::select! {
            i = &mut inspecting => i,
            l = &mut loading => {
                loaded = Some(l);
                (&mut inspecting).await
            }
        }
        .expect("inspecting files does not panic");
        let (manifest, format_ok) = self.record_format(&mut r, inspected);
        self.sanity(&mut r, &manifest, format_ok, baseline);
        r.manifest = Some(manifest);
        if !r.reasons.is_empty() {
            // Returning drops `loading`, and with it kills its clamd.
            r.check(Step::Canary, Status::Skipped, "static checks failed");
            r.check(Step::Corpus, Status::Skipped, "static checks failed");
            return Ok(r);
        }
        room?;
        let result = match loaded {
            Some(l) => l,
            None => loading.await,
        };
        let result = result.expect("a canary runs when there is room and no reason");
        let Some(mut run) = self.canary(&mut r, result)? else { return Ok(r) };
        let baseline_verdicts = self.baseline_verdicts(&mut r, &canary, baseline, work).await?;
        self.corpus(&mut r, &run, baseline_verdicts.as_ref());
        if r.reasons.is_empty() {
            r.verdict = Verdict::Pass;
            r.kept_verdicts = Some(run.verdicts.clone());
            self.keep(&mut r, &mut run);
        }
        Ok(r)
    }

    /// Managed mode: the canary that passed stays running, recorded as
    /// holding the candidate; a failure to record it only costs a load.
    fn keep(&self, r: &mut Report, run: &mut CanaryRun) {
        let (Some(m), Some((name, p)), Some(id)) = (self.managed, run.running.take(), r.manifest.as_ref().map(|m| m.id.clone())) else { return };
        match m.keep(&name, p, &id) {
            Ok(()) => r.kept = Some(name),
            Err(e) => tracing::warn!(candidate = id, "cannot keep the canary: {e}; production will load the release itself"),
        }
    }

    /// File rules: what the snapshot refused.
    fn files(&self, r: &mut Report, src: &Path, snap: &Snapshot) {
        r.snapshot_dir = Some(snap.dir.clone());
        r.ignored = snap.ignored.clone();
        r.reasons.extend(snap.rejected.iter().cloned());
        if snap.files.is_empty() && snap.rejected.is_empty() {
            r.reasons.push(Reason::new(Code::CandidateEmpty, None, format!("{} holds no database files", src.display())));
        }
        let detail = format!("{} database files, {} ignored", snap.files.len(), snap.ignored.len());
        r.pass_or_fail(Step::Files, r.reasons.is_empty(), detail);
    }

    /// Container headers and text database lines; the manifest follows.
    fn format(&self, r: &mut Report, snap: &Snapshot) -> (Manifest, bool) {
        self.record_format(r, validate::inspect_all(&snap.dir, snap.files.clone()))
    }

    /// The format step's line and the manifest, from the inspected files.
    fn record_format(&self, r: &mut Report, (files, reasons): (Vec<crate::candidate::DbFile>, Vec<Reason>)) -> (Manifest, bool) {
        let before = r.reasons.len();
        r.reasons.extend(reasons);
        let manifest = Manifest::new(files);
        r.candidate = (!manifest.files.is_empty()).then(|| manifest.id.clone());
        let ok = r.reasons.len() == before;
        let detail = if ok { format!("{} signatures", manifest.total_signatures()) } else { format!("{} files malformed", r.reasons.len() - before) };
        r.pass_or_fail(Step::Format, ok, detail);
        (manifest, ok)
    }

    /// Against the live release: versions, counts, databases present.
    fn sanity(&self, r: &mut Report, manifest: &Manifest, format_ok: bool, baseline: Option<&Baseline>) {
        match baseline {
            // A file that failed its format check counts no signatures: a
            // "signature drop" on top of "truncated" would only mislead.
            Some(_) if !format_ok => r.check(Step::Sanity, Status::Skipped, "format checks failed"),
            Some(b) => {
                let found = validate::sanity::check(manifest, &b.manifest, self.policy);
                r.pass_or_fail(Step::Sanity, found.is_empty(), format!("against release {}", b.manifest.id));
                r.reasons.extend(found);
            }
            None => r.check(Step::Sanity, Status::Skipped, "no live release to compare with"),
        }
    }

    /// What the candidate's canary (load, corpus scan) came to; `None`
    /// when the candidate failed there (the report says why).
    fn canary(&self, r: &mut Report, result: Result<CanaryRun, CanaryError>) -> Result<Option<CanaryRun>, GateError> {
        let signatures = r.manifest.as_ref().map_or(0, Manifest::total_signatures);
        let run = match result {
            Ok(mut run) => {
                run.stats.signatures = Some(signatures);
                self.ran(&run.stats);
                run
            }
            Err(CanaryError::Environment(e)) => return Err(GateError::Canary(e)),
            Err(CanaryError::Rejected { reason, stats, log }) => {
                r.check(Step::Canary, Status::Fail, reason.message.clone());
                r.check(Step::Corpus, Status::Skipped, "canary failed");
                r.reasons.push(reason);
                r.canary = Some(stats);
                r.canary_log = Some(log);
                return Ok(None);
            }
        };
        let peak = run.stats.peak_rss_bytes.map(crate::settings::human_size).unwrap_or_else(|| "unknown".into());
        r.check(Step::Canary, Status::Pass, format!("loaded in {} ms, peak memory {peak}", run.stats.load_ms.unwrap_or_default()));
        r.canary = Some(run.stats.clone());
        r.canary_log = Some(run.log.clone());
        Ok(Some(run))
    }

    /// The live release's verdicts on this corpus: cached, or scanned once
    /// now in a canary of their own.
    async fn baseline_verdicts(&self, r: &mut Report, canary: &Canary<'_>, baseline: Option<&Baseline>, work: &Path) -> Result<Option<Verdicts>, GateError> {
        let Some(b) = baseline else { return Ok(None) };
        if let Some(v) = &b.verdicts {
            return Ok(Some(v.clone()));
        }
        // Managed mode: the clamd serving the live release runs production's
        // config, as the canary does; its verdicts cost no engine load.
        if let Some(client) = self.managed.and_then(|m| m.serving(&b.manifest.id, self.policy.scan_timeout)) {
            let verdicts = corpus::scan(&client, self.corpus, self.policy.scan_parallelism, self.policy.scan_timeout).await;
            // Production busy or gone: a canary of the baseline, as in RELOAD mode.
            if verdicts.values().all(|v| !matches!(v, corpus::Outcome::Timeout | corpus::Outcome::Unreachable(_))) {
                r.new_baseline_verdicts = Some(verdicts.clone());
                return Ok(Some(verdicts));
            }
        }
        let signatures = b.manifest.total_signatures();
        self.room_for(signatures)?;
        Ok(match canary.run(&b.dir, &work.join("baseline-canary"), self.corpus, false).await {
            Ok(mut run) => {
                run.stats.signatures = Some(signatures);
                self.ran(&run.stats);
                r.new_baseline_verdicts = Some(run.verdicts.clone());
                Some(run.verdicts)
            }
            Err(e) => {
                let message = format!("the live release {} did not load in a canary, verdicts not compared: {e}", b.manifest.id);
                r.warnings.push(Reason::new(Code::CanaryLoadFailed, None, message));
                None
            }
        })
    }

    /// The memory guard's word before a canary on `signatures`.
    fn room_for(&self, signatures: u64) -> Result<(), GateError> {
        self.room.map_or(Ok(()), |room| room.before_canary(signatures)).map_err(GateError::Deferred)
    }

    /// A canary's size, for the memory guard's next estimate.
    fn ran(&self, stats: &CanaryStats) {
        if let (Some(room), Some(signatures), Some(peak_bytes)) = (self.room, stats.signatures, stats.peak_rss_bytes) {
            room.after_canary(Sample { signatures, peak_bytes });
        }
    }

    /// The corpus verdicts against expectations and the live release.
    fn corpus(&self, r: &mut Report, run: &CanaryRun, baseline: Option<&Verdicts>) {
        let j = corpus::judge(self.corpus, &run.verdicts, baseline, self.policy);
        let detected = j.samples.iter().filter(|s| s.outcome.detected()).count();
        let as_expected = j.samples.iter().filter(|s| s.ok).count();
        let compared = if baseline.is_some() { ", compared with the live release" } else { "" };
        let detail = format!("{} samples, {detected} detected, {as_expected} as expected{compared}", j.samples.len());
        let status = match (j.reasons.is_empty(), j.warnings.is_empty()) {
            (false, _) => Status::Fail,
            (true, false) => Status::Warn,
            (true, true) => Status::Pass,
        };
        r.check(Step::Corpus, status, detail);
        r.reasons.extend(j.reasons);
        r.warnings.extend(j.warnings);
        r.samples = j.samples;
    }
}
