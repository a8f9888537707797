//! The gate: DESIGN.md steps 2-6 in order, from a directory of database
//! files to a verdict. Cheap checks run first; a candidate that fails one is
//! never loaded into a canary. Promotes nothing: the caller decides.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::canary::{Canary, CanaryError, CanaryStats};
use crate::candidate::{self, Manifest, SnapshotError};
use crate::clamd::process::StartError;
use crate::corpus::{self, Corpus, SampleResult, Verdicts};
use crate::policy::Policy;
use crate::reason::{Code, Reason};
use crate::validate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skipped,
}

/// One step's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub step: &'static str,
    pub status: Status,
    pub detail: String,
}

/// The release a candidate would replace: what it is compared with.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// A directory clamd can load (a release directory).
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The baseline's verdicts on this corpus, if already known; scanned once
    /// per baseline and corpus, then cached by the caller.
    pub verdicts: Option<Verdicts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    /// Candidate id (manifest digest prefix); absent when nothing was copied.
    pub candidate: Option<String>,
    pub source: PathBuf,
    pub reasons: Vec<Reason>,
    pub warnings: Vec<Reason>,
    pub checks: Vec<Check>,
    pub manifest: Option<Manifest>,
    pub ignored: Vec<String>,
    pub canary: Option<CanaryStats>,
    pub baseline: Option<String>,
    pub samples: Vec<SampleResult>,
    /// Baseline verdicts computed during this run, for the caller to cache.
    #[serde(skip)]
    pub new_baseline_verdicts: Option<Verdicts>,
    /// The canary clamd's output when it failed, for the quarantine.
    #[serde(skip)]
    pub canary_log: Option<String>,
    /// The snapshot directory holding the checked copy of the files.
    #[serde(skip)]
    pub snapshot_dir: Option<PathBuf>,
}

/// Our own failure, not the candidate's: the caller retries later and
/// production is untouched.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot start a canary clamd: {0}")]
    Canary(StartError),
}

pub struct Gate<'a> {
    pub policy: &'a Policy,
    pub clamd_binary: &'a Path,
    pub corpus: &'a Corpus,
    /// Stops the run before any canary when it returns a reason: the daemon
    /// uses it so a quarantined digest (or the live one) is not canaried again.
    pub known: Option<&'a (dyn Fn(&Manifest) -> Option<Reason> + Sync)>,
}

impl Gate<'_> {
    /// Checks the database files in `src`. `work` must not exist; it is
    /// created and holds the snapshot and the canary's files.
    pub async fn check(&self, src: &Path, work: &Path, baseline: Option<&Baseline>) -> Result<Report, GateError> {
        std::fs::create_dir_all(work).map_err(|source| SnapshotError::Write { file: work.to_path_buf(), source })?;
        let mut r = Report {
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
        };
        let check = |r: &mut Report, step, status, detail: String| r.checks.push(Check { step, status, detail });

        // Step 2: files.
        let snap = candidate::snapshot(src, &work.join("snapshot"), self.policy)?;
        r.snapshot_dir = Some(snap.dir.clone());
        r.ignored = snap.ignored.clone();
        r.reasons.extend(snap.rejected.iter().cloned());
        if snap.files.is_empty() && snap.rejected.is_empty() {
            r.reasons.push(Reason::new(Code::CandidateEmpty, None, format!("{} holds no database files", src.display())));
        }
        let files_ok = r.reasons.is_empty();
        let detail = format!("{} database files, {} ignored", snap.files.len(), snap.ignored.len());
        check(&mut r, "files", if files_ok { Status::Pass } else { Status::Fail }, detail);

        // Step 3: format.
        let mut files = snap.files;
        let before = r.reasons.len();
        for f in &mut files {
            if let Err(reason) = validate::inspect(&snap.dir, f) {
                r.reasons.push(reason);
            }
        }
        let manifest = Manifest::new(files);
        r.candidate = (!manifest.files.is_empty()).then(|| manifest.id.clone());
        let format_ok = r.reasons.len() == before;
        let detail = if format_ok { format!("{} signatures", manifest.total_signatures()) } else { format!("{} files malformed", r.reasons.len() - before) };
        check(&mut r, "format", if format_ok { Status::Pass } else { Status::Fail }, detail);

        if let Some(reason) = self.known.and_then(|known| known(&manifest)) {
            check(&mut r, "known", Status::Fail, reason.message.clone());
            r.reasons.push(reason);
            r.manifest = Some(manifest);
            return Ok(r);
        }

        // Step 4: sanity against the live release.
        match baseline {
            // A file that failed its format check counts no signatures: a
            // "signature drop" on top of "truncated" would only mislead.
            Some(_) if !format_ok => check(&mut r, "sanity", Status::Skipped, "format checks failed".into()),
            Some(b) => {
                let found = validate::sanity::check(&manifest, &b.manifest, self.policy);
                let status = if found.is_empty() { Status::Pass } else { Status::Fail };
                check(&mut r, "sanity", status, format!("against release {}", b.manifest.id));
                r.reasons.extend(found);
            }
            None => check(&mut r, "sanity", Status::Skipped, "no live release to compare with".into()),
        }
        r.manifest = Some(manifest);
        if !r.reasons.is_empty() {
            check(&mut r, "canary", Status::Skipped, "static checks failed".into());
            check(&mut r, "corpus", Status::Skipped, "static checks failed".into());
            return Ok(r);
        }

        // Step 5: canary.
        let canary = Canary { binary: self.clamd_binary, policy: self.policy };
        let run = match canary.run(&snap.dir, &work.join("canary"), self.corpus).await {
            Ok(run) => run,
            Err(CanaryError::Environment(e)) => return Err(GateError::Canary(e)),
            Err(CanaryError::Rejected { reason, stats, log }) => {
                check(&mut r, "canary", Status::Fail, reason.message.clone());
                check(&mut r, "corpus", Status::Skipped, "canary failed".into());
                r.reasons.push(reason);
                r.canary = Some(stats);
                r.canary_log = Some(log);
                return Ok(r);
            }
        };
        let detail = format!(
            "loaded in {} ms, peak memory {}",
            run.stats.load_ms.unwrap_or_default(),
            run.stats.peak_rss_bytes.map(crate::settings::human_size).unwrap_or_else(|| "unknown".into())
        );
        check(&mut r, "canary", Status::Pass, detail);
        r.canary = Some(run.stats);

        // Step 6: corpus, against expectations and the live release.
        let mut baseline_verdicts = baseline.and_then(|b| b.verdicts.clone());
        if let (Some(b), None) = (baseline, &baseline_verdicts) {
            match canary.run(&b.dir, &work.join("baseline-canary"), self.corpus).await {
                Ok(run) => {
                    r.new_baseline_verdicts = Some(run.verdicts.clone());
                    baseline_verdicts = Some(run.verdicts);
                }
                Err(e) => r.warnings.push(Reason::new(
                    Code::CanaryLoadFailed,
                    None,
                    format!("the live release {} did not load in a canary, verdicts not compared: {e}", b.manifest.id),
                )),
            }
        }
        let j = corpus::judge(self.corpus, &run.verdicts, baseline_verdicts.as_ref(), self.policy);
        let detected = j.samples.iter().filter(|s| s.outcome.detected()).count();
        let detail = format!(
            "{} samples, {} detected, {} as expected{}",
            j.samples.len(),
            detected,
            j.samples.iter().filter(|s| s.ok).count(),
            if baseline_verdicts.is_some() { ", compared with the live release" } else { "" }
        );
        let status = if !j.reasons.is_empty() {
            Status::Fail
        } else if !j.warnings.is_empty() {
            Status::Warn
        } else {
            Status::Pass
        };
        check(&mut r, "corpus", status, detail);
        r.reasons.extend(j.reasons);
        r.warnings.extend(j.warnings);
        r.samples = j.samples;
        if r.reasons.is_empty() {
            r.verdict = Verdict::Pass;
        }
        Ok(r)
    }
}
