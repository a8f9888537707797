//! `clamgate check DIR`: the whole gate, offline, on a directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, Exit};
use crate::candidate::{self, Manifest};
use crate::corpus::Corpus;
use crate::gate::{Baseline, Gate, GateError, Report, Verdict};
use crate::isolate::{self, Isolated, Outcome};
use crate::policy::Policy;
use crate::status::Status;
use crate::validate;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of database files (as freshclam writes them).
    pub(crate) dir: PathBuf,
    /// Config file whose corpus_dir, policy and clamd binary are used unless
    /// the flags below say otherwise (default: $CLAMGATE_CONFIG, else
    /// /etc/clamgate/clamgate.toml if present, else the built-in defaults).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Corpus directory with clean/ and infected/ (default: the config's corpus_dir).
    #[arg(long)]
    pub(crate) corpus: Option<PathBuf>,
    /// The release the candidate would replace (a release directory or any
    /// directory of database files): versions, counts and verdicts are compared.
    #[arg(long)]
    pub(crate) baseline: Option<PathBuf>,
    /// Policy file (default: the config's policy).
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
    /// clamd binary started for the canary (default: the config's clamd.binary).
    #[arg(long)]
    pub(crate) clamd: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep the work directory (snapshot, canary config and log) and print its path.
    #[arg(long)]
    pub(crate) keep_work: bool,
}

pub(crate) async fn run(args: CheckArgs) -> Result<Exit, CliError> {
    if !args.dir.is_dir() {
        return Err(CliError::usage("usage.not_a_directory", format!("{}: not a directory", args.dir.display())));
    }
    // The flags win; else the config the daemon would use says.
    let config = crate::config::Config::locate(args.config.as_deref()).map_err(|e| CliError::usage("config.invalid", e))?;
    let policy = match &args.policy {
        Some(p) => Policy::load(p),
        None => config.load_policy(),
    }
    .map_err(|e| CliError::usage("config.policy", e))?;
    let corpus = Corpus::load(args.corpus.as_deref().unwrap_or(&config.corpus_dir)).map_err(|e| CliError::usage("config.corpus", e))?;
    let clamd = args.clamd.clone().unwrap_or_else(|| config.clamd.binary.clone());
    if !is_executable(&clamd) {
        return Err(CliError::environment(
            "environment.no_clamd",
            format!("{}: no clamd binary there (install clamav-daemon, or pass --clamd)", clamd.display()),
        ));
    }
    let work = tempfile::Builder::new()
        .prefix("clamgate-check-")
        .tempdir()
        .map_err(|e| CliError::environment("environment.work_dir", format!("cannot create a work directory: {e}")))?;
    let baseline = match &args.baseline {
        Some(b) => Some(load_baseline(b, &work.path().join("baseline"), &policy)?),
        None => None,
    };
    let gate = Gate { policy: &policy, clamd_binary: &clamd, corpus: &corpus, known: None, room: None, managed: None, keep: false };
    let iso = isolate::run(&gate, &args.dir, &work.path().join("candidate"), baseline.as_ref(), &[], &|_, _, _| Ok(())).await.map_err(|e| match e {
        GateError::Snapshot(e @ candidate::SnapshotError::ReadDir { .. }) => CliError::usage("usage.unreadable_dir", e),
        e => CliError::environment("environment.gate", e),
    })?;
    if args.keep_work {
        let kept = work.keep();
        eprintln!("work directory kept: {}", kept.display());
    }
    // One write at the end, not one per line (the JSON report has hundreds).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let report = iso.full.as_ref().or(iso.reduced.as_ref()).expect("a gate run has a report");
    if args.json {
        let _ = serde_json::to_writer_pretty(&mut out, &json(&iso, report));
        let _ = writeln!(out);
    } else {
        let _ = print_human(&mut out, report, iso.outcome == Outcome::Whole);
        let _ = print_isolation(&mut out, &iso);
    }
    let _ = out.flush();
    Ok(match iso.outcome {
        Outcome::Whole if report.verdict == Verdict::Pass => Exit::Ok,
        Outcome::Reduced => Exit::Reduced,
        _ => Exit::Rejected,
    })
}

/// The whole candidate's report, as before isolation, with `isolation`
/// (outcome, held files, bisection runs) and `reduced` (the reduced set's
/// report) added when isolation ran.
fn json(iso: &Isolated, report: &Report) -> serde_json::Value {
    let mut v = serde_json::to_value(report).unwrap_or_default();
    if iso.outcome != Outcome::Whole
        && let Some(o) = v.as_object_mut()
    {
        o.insert("isolation".into(), serde_json::json!({ "outcome": iso.outcome, "held": iso.held, "bisect_runs": iso.bisect_runs }));
        o.insert("reduced".into(), serde_json::to_value(&iso.reduced).unwrap_or_default());
    }
    v
}

fn print_isolation(out: &mut impl Write, iso: &Isolated) -> std::io::Result<()> {
    if iso.outcome == Outcome::Whole {
        return Ok(());
    }
    writeln!(out, "held back ({} bisection canary runs):", iso.bisect_runs)?;
    for h in &iso.held {
        writeln!(out, "  {}: {} [{}]", h.name, h.detail, h.reason)?;
    }
    let reduced = iso.reduced.as_ref();
    let id = reduced.and_then(|r| r.candidate.as_deref()).unwrap_or("(none)");
    match iso.outcome {
        Outcome::Reduced => {
            let files: Vec<&str> = reduced.and_then(|r| r.manifest.as_ref()).map(|m| m.files.iter().map(|f| f.name.as_str()).collect()).unwrap_or_default();
            writeln!(out, "REDUCED: the reduced set {id} ({}) passed the whole gate and would be promoted without the held files", files.join(", "))
        }
        Outcome::NothingLeft => writeln!(out, "NOTHING LEFT: without the held files the candidate is the live release; nothing would be promoted"),
        _ => {
            writeln!(out, "REJECTED: the reduced set {id} fails too:")?;
            for reason in reduced.map(|r| r.reasons.as_slice()).unwrap_or_default() {
                writeln!(out, "  {reason}")?;
            }
            writeln!(out, "  nothing would be promoted")
        }
    }
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A baseline is a release directory (with our manifest.json) or any
/// directory of database files, checked like a candidate.
fn load_baseline(dir: &Path, work: &Path, policy: &Policy) -> Result<Baseline, CliError> {
    let bad = |why: String| CliError::usage("usage.bad_baseline", format!("baseline {}: {why}", dir.display()));
    if !dir.is_dir() {
        return Err(bad("not a directory".into()));
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("manifest.json")) {
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
        return Ok(Baseline { dir: dir.to_path_buf(), manifest, verdicts: None });
    }
    let snap = candidate::snapshot(dir, work, policy).map_err(|e| bad(e.to_string()))?;
    if let Some(r) = snap.rejected.first() {
        return Err(bad(r.to_string()));
    }
    let mut files = snap.files;
    for f in &mut files {
        validate::inspect(&snap.dir, f).map_err(|r| bad(r.to_string()))?;
    }
    Ok(Baseline { dir: snap.dir, manifest: Manifest::new(files), verdicts: None })
}

fn print_human(out: &mut impl Write, r: &Report, whole: bool) -> std::io::Result<()> {
    for c in &r.checks {
        let status = match c.status {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skipped => "skip",
        };
        writeln!(out, "{:<8} {status}  {}", c.step, c.detail)?;
    }
    for w in &r.warnings {
        writeln!(out, "warning: {w}")?;
    }
    let id = r.candidate.as_deref().unwrap_or("(none)");
    match r.verdict {
        Verdict::Pass => writeln!(out, "PASS: candidate {id} from {} would be promoted", r.source.display()),
        Verdict::Reject => {
            writeln!(out, "REJECTED: candidate {id} from {}", r.source.display())?;
            let mut codes = Vec::new();
            for reason in &r.reasons {
                writeln!(out, "  {reason}")?;
                if !codes.contains(&reason.reason) {
                    codes.push(reason.reason);
                }
            }
            for code in codes {
                writeln!(out, "  what to do ({code}): {}", code.hint())?;
            }
            if whole {
                writeln!(out, "  nothing was promoted; production keeps its live release")?;
            }
            Ok(())
        }
    }
}
