//! `clamgate check DIR`: the whole gate, offline, on a directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, Exit};
use crate::candidate::{self, Manifest};
use crate::corpus::Corpus;
use crate::gate::{Baseline, Gate, GateError, Report, Verdict};
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
    let gate = Gate { policy: &policy, clamd_binary: &clamd, corpus: &corpus, known: None };
    let report = gate.check(&args.dir, &work.path().join("candidate"), baseline.as_ref()).await.map_err(|e| match e {
        GateError::Snapshot(e @ candidate::SnapshotError::ReadDir { .. }) => CliError::usage("usage.unreadable_dir", e),
        e => CliError::environment("environment.gate", e),
    })?;
    if args.keep_work {
        let kept = work.keep();
        eprintln!("work directory kept: {}", kept.display());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = serde_json::to_writer_pretty(&mut out, &report);
        let _ = writeln!(out);
    } else {
        let _ = print_human(&mut out, &report);
    }
    Ok(if report.verdict == Verdict::Pass { Exit::Ok } else { Exit::Rejected })
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

fn print_human(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
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
            writeln!(out, "  nothing was promoted; production keeps its live release")
        }
    }
}
