//! The canary: a throw-away clamd started on a candidate, held to the
//! policy's budgets (load time, memory), then made to scan the corpus.
//! Whatever happens, it is killed and reaped before this returns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clamd::process::{ClamdProcess, Options, StartError};
use crate::corpus::{self, Corpus, Verdicts};
use crate::managed::{Managed, ManagedError};
use crate::policy::Policy;
use crate::reason::{Code, Reason};
use crate::settings::human_size;

/// Figures a canary run produced, kept for reports and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct CanaryStats {
    pub(crate) load_ms: Option<u64>,
    pub(crate) peak_rss_bytes: Option<u64>,
    pub(crate) scan_ms: Option<u64>,
    /// The signatures loaded (the gate's count): with the peak, what the
    /// memory guard scales its next estimate from, also after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) signatures: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct CanaryRun {
    pub(crate) stats: CanaryStats,
    pub(crate) verdicts: Verdicts,
    /// clamd's own output: kept with a candidate the corpus then rejects.
    pub(crate) log: String,
    /// Managed mode: the canary, still running, and its managed name, for
    /// the gate to keep if the candidate passes (dropping it kills it).
    pub(crate) running: Option<(String, ClamdProcess)>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CanaryError {
    /// The candidate made clamd fail: a rejection.
    #[error("{reason}")]
    Rejected { reason: Reason, stats: CanaryStats, log: String },
    /// We could not even try (no clamd binary, unwritable work dir).
    #[error("cannot start a canary clamd: {0}")]
    Environment(StartError),
}

pub(crate) struct Canary<'a> {
    pub(crate) binary: &'a Path,
    pub(crate) policy: &'a Policy,
    /// Managed mode: started from the operator's clamd.conf, as production
    /// is, so that the one that passes can become production.
    pub(crate) managed: Option<&'a Managed>,
}

impl Canary<'_> {
    /// Loads `db_dir` in a fresh clamd whose files live in `work_dir`, scans
    /// the corpus, and reports verdicts and figures.
    /// `keep`: in managed mode, leave it running in the result.
    pub(crate) async fn run(&self, db_dir: &Path, work_dir: &Path, corpus: &Corpus, keep: bool) -> Result<CanaryRun, CanaryError> {
        let mut stats = CanaryStats::default();
        let (name, mut clamd) = match self.managed {
            Some(m) => {
                let (name, p) = m.spawn(db_dir).map_err(|e| CanaryError::Environment(start_error(e)))?;
                (Some(name), p)
            }
            None => {
                let mut opts = Options::new(db_dir, work_dir);
                opts.binary = self.binary.to_path_buf();
                (None, ClamdProcess::spawn(opts).map_err(CanaryError::Environment)?)
            }
        };
        let load = match self.wait_loaded(&mut clamd).await {
            Ok(d) => d,
            Err(e) => return Err(self.load_failure(e, stats)),
        };
        stats.load_ms = Some(load.as_millis() as u64);
        tracing::debug!(load_ms = stats.load_ms, "canary loaded {}", db_dir.display());

        crate::failpoint::hit(crate::failpoint::Point::CorpusScan);
        let started = std::time::Instant::now();
        let client = clamd.client(self.policy.scan_timeout);
        let verdicts = corpus::scan(&client, corpus, self.policy.scan_parallelism, self.policy.scan_timeout).await;
        stats.scan_ms = Some(started.elapsed().as_millis() as u64);
        stats.peak_rss_bytes = clamd.peak_rss();

        if let Some(rejected) = self.rejected_after_scan(&mut clamd, &stats) {
            return Err(rejected);
        }
        let log = clamd.log_text();
        if let (Some(name), true) = (name, keep) {
            return Ok(CanaryRun { stats, verdicts, log, running: Some((name, clamd)) });
        }
        // SIGKILL, not SIGTERM: a throw-away clamd has nothing to flush, and
        // freeing its engine (tens of ms at 1M signatures) would be ours to wait for.
        clamd.kill();
        Ok(CanaryRun { stats, verdicts, log, running: None })
    }

    /// Waits for the load within the policy's load timeout, stopping early
    /// once resident memory passes the budget.
    async fn wait_loaded(&self, clamd: &mut ClamdProcess) -> Result<Duration, StartError> {
        let budget = self.policy.memory_budget;
        clamd
            .wait_ready(self.policy.load_timeout, |p| {
                let rss = p.rss()?;
                (rss > budget).then(|| format!("resident memory {} exceeds the policy's memory_budget of {}", human_size(rss), human_size(budget)))
            })
            .await
    }

    /// A canary that died during the scan, or peaked over the memory budget,
    /// rejects the candidate whatever its verdicts say.
    fn rejected_after_scan(&self, clamd: &mut ClamdProcess, stats: &CanaryStats) -> Option<CanaryError> {
        let budget = self.policy.memory_budget;
        if !clamd.is_running() {
            let log = clamd.log_text();
            let why = crate::clamd::process::explain(&log);
            let reason = Reason::new(Code::CanaryCrashed, None, format!("canary clamd died while scanning the corpus: {why}"));
            return Some(CanaryError::Rejected { reason, stats: stats.clone(), log });
        }
        let peak = stats.peak_rss_bytes.filter(|&p| p > budget)?;
        let log = clamd.log_text();
        clamd.kill();
        let message = format!("canary peak memory {} exceeds the policy's memory_budget of {}", human_size(peak), human_size(budget));
        Some(CanaryError::Rejected { reason: Reason::new(Code::CanaryMemoryBudget, None, message), stats: stats.clone(), log })
    }

    fn load_failure(&self, e: StartError, stats: CanaryStats) -> CanaryError {
        let (code, message) = match &e {
            StartError::Exited { reason, .. } => (Code::CanaryLoadFailed, format!("canary clamd refused the databases: {reason}")),
            StartError::Timeout { after, .. } => {
                (Code::CanaryLoadTimeout, format!("canary clamd did not finish loading within the policy's load_timeout of {after:?}; it was killed"))
            }
            StartError::Aborted { reason, .. } => (Code::CanaryMemoryBudget, format!("canary clamd was killed while loading: {reason}")),
            _ => return CanaryError::Environment(e),
        };
        let log = e.log().unwrap_or_default().to_string();
        CanaryError::Rejected { reason: Reason::new(code, blamed_file(&log).as_deref(), message), stats, log }
    }
}

/// A managed canary that could not be set up is our failure, as any other.
fn start_error(e: ManagedError) -> StartError {
    match e {
        ManagedError::Start { source, .. } => source,
        ManagedError::Io { path, source, .. } => StartError::Setup { file: path, source },
        ManagedError::Occupied(path) => StartError::Setup { file: path, source: std::io::Error::other("occupied") },
    }
}

/// The database file clamd's log blames, if any (`Can't load /x/daily.cud:`).
fn blamed_file(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("Can't load "))?;
    let path = line.split("Can't load ").nth(1)?.split(':').next()?;
    Some(PathBuf::from(path).file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn blamed_file_from_clamd_log() {
        let log = "LibClamAV Error: Problem parsing database at line 1\nLibClamAV Error: Can't load /tmp/w/snap/broken.ndb: Malformed database\n";
        assert_eq!(super::blamed_file(log).as_deref(), Some("broken.ndb"));
        assert_eq!(super::blamed_file("nothing"), None);
    }
}
