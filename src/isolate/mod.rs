//! Per-file isolation (policy `isolation = "file"`): a candidate that fails
//! the gate for its content holds back only the files behind the failure.
//! Suspects are the files that differ from the live release; attribution
//! goes cheapest first ([`attribute`], then [`bisect`] by canary runs); the
//! reduced set (each culprit at its live version, or left out) goes through
//! the whole gate again and is promoted only if it passes. Canary sets are
//! hard links into the snapshot and the live release, never copies, and
//! the live release's verdicts are scanned at most once.

pub(crate) mod attribute;
mod bisect;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::candidate::{DbFile, HeldFile, Manifest, Snapshot};
use crate::corpus::Verdicts;
use crate::failpoint::{self, Point};
use crate::gate::{Baseline, Gate, GateError, Report, Verdict};
use crate::policy::Isolation as Policy;
use bisect::{Found, Probe};

/// How a candidate run ended under isolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// The whole candidate's verdict stands: it passed, or isolation does
    /// not apply (policy `set`, a structural problem, a known candidate).
    Whole,
    /// A reduced set passed the whole gate.
    Reduced,
    /// What is left once the held files are out is the live release (or
    /// nothing): there is nothing to promote.
    NothingLeft,
    /// Even the reduced set fails, for a reason no suspect explains.
    Rejected,
}

#[derive(Debug, Serialize)]
pub(crate) struct Isolated {
    pub(crate) outcome: Outcome,
    /// The candidate's id (all of its files).
    pub(crate) candidate: String,
    /// The whole candidate's report; absent when files held before let it
    /// skip straight to its reduced set.
    pub(crate) full: Option<Report>,
    pub(crate) held: Vec<HeldFile>,
    /// The last reduced set's report.
    pub(crate) reduced: Option<Report>,
    /// Canary runs spent on bisection.
    pub(crate) bisect_runs: u32,
    /// The candidate's files, inspected (headers, signature counts) also
    /// when the full run was skipped.
    #[serde(skip)]
    pub(crate) manifest: Manifest,
    /// The candidate's private copy: what a quarantine keeps, so that
    /// `promote --force` works also on a candidate whose whole check was skipped.
    #[serde(skip)]
    pub(crate) snapshot_dir: PathBuf,
    /// Live release verdicts scanned during this run, for the caller to cache.
    #[serde(skip)]
    pub(crate) new_baseline_verdicts: Option<Verdicts>,
}

/// Told the held files (and the bisection runs so far) each time the list
/// grows, before the reduced set's run: the daemon journals and records
/// them there, so a restart skips what was already attributed.
pub(crate) type OnHeld<'a> = &'a (dyn Fn(&str, &[HeldFile], u32) -> Result<(), GateError> + Sync);

/// Gates the files in `src` under the policy's isolation. `held_before` is
/// what earlier runs held: a file with the same name and content is held
/// again without being checked.
pub(crate) async fn run(
    gate: &Gate<'_>,
    src: &Path,
    work: &Path,
    baseline: Option<&Baseline>,
    held_before: &[HeldFile],
    on_held: OnHeld<'_>,
) -> Result<Isolated, GateError> {
    let (r, snap) = gate.snapshot(src, work, baseline)?;
    let candidate = Manifest::new(snap.files.clone());
    let mut baseline = baseline.cloned();
    let file_mode = gate.policy.isolation == Policy::File && snap.rejected.is_empty();
    let known = gate.known.and_then(|k| k(&candidate)).is_some();
    let pre: Vec<HeldFile> = if file_mode && !known {
        held_before.iter().filter(|h| snap.files.iter().any(|f| f.name == h.name && f.sha256 == h.sha256)).cloned().collect()
    } else {
        Vec::new()
    };
    let mut iso = Isolated {
        outcome: Outcome::Whole,
        candidate: candidate.id.clone(),
        full: None,
        held: pre,
        reduced: None,
        bisect_runs: 0,
        manifest: candidate,
        snapshot_dir: snap.dir.clone(),
        new_baseline_verdicts: None,
    };
    let mut failing = None;
    if iso.held.is_empty() {
        let full = gate.check_snapshot(r, &snap, work, baseline.as_ref()).await?;
        iso.new_baseline_verdicts = full.new_baseline_verdicts.clone();
        if let Some(m) = &full.manifest {
            iso.manifest = m.clone();
        }
        let whole = full.verdict == Verdict::Pass || !file_mode || !attribute::isolable(&full);
        if whole {
            iso.full = Some(full);
            return Ok(iso);
        }
        failing = Some(full.clone());
        iso.full = Some(full);
    } else {
        iso.manifest = inspected(&snap);
    }
    if let (Some(b), Some(v)) = (baseline.as_mut(), &iso.new_baseline_verdicts) {
        b.verdicts = Some(v.clone());
    }
    let mut reducer = Reducer { gate: *gate, src, work, snap: &snap, baseline: baseline.as_ref(), sets: 0 };
    let suspects = attribute::suspects(&snap.files, baseline.as_ref().map(|b| &b.manifest));
    loop {
        if let Some(last) = failing.take() {
            reducer.attribute(&mut iso, &last, &suspects).await?;
        }
        on_held(&iso.candidate, &iso.held, iso.bisect_runs)?;
        failpoint::hit(Point::IsolateReduced);
        let held: BTreeSet<String> = iso.held.iter().map(|h| h.name.clone()).collect();
        let set = reducer.assemble(&held)?;
        let same_as_live = reducer.baseline.is_some_and(|b| b.manifest.id == Manifest::new(set.files.clone()).id);
        if same_as_live || set.files.is_empty() {
            iso.outcome = Outcome::NothingLeft;
            return Ok(iso);
        }
        let report = reducer.check(&set, *gate).await?;
        let left = suspects.iter().any(|s| !held.contains(s));
        if report.verdict == Verdict::Pass {
            iso.outcome = Outcome::Reduced;
        } else if !left || !attribute::isolable(&report) {
            iso.outcome = Outcome::Rejected;
        } else {
            failing = Some(report.clone());
        }
        iso.reduced = Some(report);
        if iso.outcome != Outcome::Whole {
            return Ok(iso);
        }
    }
}

/// The snapshot's manifest with headers and signature counts, as the
/// format step fills them in; a file it cannot read keeps none (the
/// reduced set's own check reports it).
fn inspected(snap: &Snapshot) -> Manifest {
    let mut files = snap.files.clone();
    for f in &mut files {
        let _ = crate::validate::inspect(&snap.dir, f);
    }
    Manifest::new(files)
}

/// Assembles and checks sets of the candidate with some files held back.
struct Reducer<'a> {
    gate: Gate<'a>,
    src: &'a Path,
    work: &'a Path,
    snap: &'a Snapshot,
    baseline: Option<&'a Baseline>,
    sets: u32,
}

impl Reducer<'_> {
    /// Adds to `iso.held` the suspects behind `failed`: named by its
    /// reasons if any are, else found by bisection; what the bisection
    /// cannot narrow down within `max_bisect_runs` is all held.
    async fn attribute(&mut self, iso: &mut Isolated, failed: &Report, suspects: &BTreeSet<String>) -> Result<(), GateError> {
        let held: BTreeSet<String> = iso.held.iter().map(|h| h.name.clone()).collect();
        let open: BTreeSet<String> = suspects.difference(&held).cloned().collect();
        let live = self.baseline.map(|b| &b.manifest);
        let mut direct = attribute::direct(failed, &open, &self.snap.files, &self.snap.dir, live);
        direct.retain(|h| !held.contains(&h.name));
        if !direct.is_empty() {
            iso.held.extend(direct);
            return Ok(());
        }
        let first = failed.reasons.first().expect("a failed report has a reason");
        let budget = self.gate.policy.max_bisect_runs.saturating_sub(iso.bisect_runs);
        let mut probe = SetProbe { reducer: self, held: &held, open: &open };
        let (found, runs) = bisect::bisect(&mut probe, &open, budget).await?;
        iso.bisect_runs += runs;
        let why = match &first.file {
            Some(f) => format!("{f}: {}", first.message),
            None => first.message.clone(),
        };
        let (names, together) = match found {
            Found::Culprits(c) => (c, true),
            Found::OutOfRuns => (open, false),
        };
        for name in &names {
            let others: Vec<&str> = names.iter().filter(|n| *n != name).map(String::as_str).collect();
            let detail = match (together, others.is_empty()) {
                (true, true) => why.clone(),
                (true, false) => format!("fails only together with {}: {why}", others.join(", ")),
                (false, _) => format!("not narrowed down within max_bisect_runs: {why}"),
            };
            let sha256 = self.sha256(name);
            iso.held.push(HeldFile { name: name.clone(), sha256, reason: first.reason, detail: attribute::one_line(&detail) });
        }
        Ok(())
    }

    fn sha256(&self, name: &str) -> String {
        self.snap.files.iter().find(|f| f.name == name).map(|f| f.sha256.clone()).unwrap_or_default()
    }

    /// The candidate with each `held` file at its live version (left out
    /// when it has none), as hard links in a fresh directory.
    fn assemble(&mut self, held: &BTreeSet<String>) -> Result<Snapshot, GateError> {
        self.sets += 1;
        let dir = self.work.join(format!("set-{}", self.sets)).join("files");
        let io = |source| GateError::Assemble { dir: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let live = self.baseline.map(|b| &b.manifest);
        let mut files: Vec<(PathBuf, DbFile)> = Vec::new();
        for f in &self.snap.files {
            if !held.contains(&f.name) {
                files.push((self.snap.dir.join(&f.name), f.clone()));
            } else if let (Some(b), Some(old)) = (self.baseline, attribute::live_version(live, &f.name)) {
                files.push((b.dir.join(&old.name), old.clone()));
            }
        }
        // A held database the candidate lost comes back at its live version.
        for name in held.iter().filter(|n| !self.snap.files.iter().any(|f| &f.name == *n)) {
            if let (Some(b), Some(old)) = (self.baseline, attribute::live_version(live, name))
                && !files.iter().any(|(_, f)| f.database() == old.database())
            {
                files.push((b.dir.join(&old.name), old.clone()));
            }
        }
        for (from, f) in &files {
            share(from, &dir.join(&f.name)).map_err(io)?;
        }
        let files = files.into_iter().map(|(_, f)| DbFile { signatures: 0, header: None, ..f }).collect();
        Ok(Snapshot { dir, files, rejected: Vec::new(), ignored: Vec::new() })
    }

    async fn check(&self, set: &Snapshot, gate: Gate<'_>) -> Result<Report, GateError> {
        let work = set.dir.parent().expect("a set dir has a parent");
        gate.check_set(self.src, set, work, self.baseline).await
    }
}

/// A hard link (clamd reads it as the file it is); a copy only where the
/// two are on different filesystems.
fn share(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(from, to) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => std::fs::copy(from, to).map(drop),
        r => r,
    }
}

/// One bisection probe: the candidate with the `open` suspects not loaded
/// (and every held file) at their live version.
struct SetProbe<'a, 'b> {
    reducer: &'a mut Reducer<'b>,
    held: &'a BTreeSet<String>,
    open: &'a BTreeSet<String>,
}

impl Probe for SetProbe<'_, '_> {
    type Error = GateError;

    async fn fails(&mut self, loaded: &BTreeSet<String>) -> Result<bool, GateError> {
        failpoint::hit(Point::IsolateBisect);
        let out: BTreeSet<String> = self.open.difference(loaded).chain(self.held).cloned().collect();
        let set = self.reducer.assemble(&out)?;
        // A probe is never "known": only its verdict matters.
        // A probe's canary is never production: not kept.
        let gate = Gate { known: None, keep: false, ..self.reducer.gate };
        let report = self.reducer.check(&set, gate).await?;
        tracing::debug!(loaded = loaded.len(), verdict = report.verdict.as_str(), "bisection probe");
        Ok(report.verdict == Verdict::Reject)
    }
}
