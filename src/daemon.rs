//! `clamgate run`: the long-running gate. Watches `incoming_dir`, waits for
//! it to settle, runs the gate on a snapshot, promotes what passes, and
//! quarantines what does not. A change during a run cancels that run and
//! starts over on the new files; a shutdown signal stops everything, with
//! canary clamds killed on the way out.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::time::{Instant, sleep_until};

use crate::config::Config;
use crate::corpus::Corpus;
use crate::failpoint;
use crate::gate::{Baseline, Gate, Report, Verdict};
use crate::health::{Health, ProbeSettings};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::promote::{self, Outcome, Production};
use crate::reason::{Code, Reason};
use crate::store::{Store, StoreError};
use crate::watch;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Corpus(#[from] crate::corpus::CorpusError),
    #[error("config: {0}")]
    Smoke(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("health endpoint: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {dir}: {source}")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Everything the daemon decides with, built once at start.
pub struct Daemon {
    pub config: Config,
    pub store: Store,
    pub policy: Policy,
    pub corpus: Corpus,
    pub production: Production,
    pub health: Arc<Health>,
    /// Set while a checked candidate is being quarantined or promoted: a
    /// change in incoming then waits for the next run instead of cancelling
    /// a promotion halfway through its verification.
    deciding: std::sync::atomic::AtomicBool,
}

const LOCK_WAIT: Duration = Duration::from_secs(30);

impl Daemon {
    pub fn new(config: Config) -> Result<Daemon, DaemonError> {
        let policy = config.load_policy()?;
        let corpus = Corpus::load(&config.corpus_dir)?;
        let smoke = promote::smoke_samples(&corpus, &config.smoke_samples).map_err(DaemonError::Smoke)?;
        let store = Store::open(&config.state_dir)?;
        let production = Production {
            client: crate::clamd::Client::new(config.clamd.endpoint.clone(), config.clamd.timeout),
            reload_timeout: config.clamd.reload_timeout,
            smoke,
        };
        let settings =
            ProbeSettings { interval: config.health.probe_interval, latency_budget: config.health.latency_budget, max_database_age: policy.max_database_age };
        let health = Health::new(settings, Arc::new(Metrics::default()));
        Ok(Daemon { config, store, policy, corpus, production, health, deciding: Default::default() })
    }

    /// Runs until `shutdown` completes: the gate loop, the prober and the
    /// health endpoint, all stopped by the same signal and awaited.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let _daemon = self.store.daemon_lock()?;
        let addr = self.config.health.listen.clone();
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|source| DaemonError::Listen { addr: addr.clone(), source })?;
        tracing::info!("health endpoint on http://{}", listener.local_addr().map(|a| a.to_string()).unwrap_or(addr));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(crate::health::http::serve(listener, self.health.clone(), stop_rx.clone()));
        tasks.spawn(crate::health::run_prober(self.health.clone(), self.production.clone(), self.store.clone(), stop_rx.clone(), first_tx));
        tasks.spawn(systemd_notify(self.health.clone(), self.store.clone(), first_rx, stop_rx.clone()));
        self.health.beat();
        let result = self.gate_loop(shutdown).await;
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("background tasks did not stop within 10 s; aborting them");
            tasks.abort_all();
        }
        result
    }

    async fn gate_loop(&self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        {
            let lock = self.lock().await?;
            let removed = self.store.recover(&lock)?;
            if !removed.is_empty() {
                tracing::warn!("removed {} leftovers of an interrupted run: {:?}", removed.len(), removed);
            }
        }
        self.store.journal().append("daemon.started", json!({ "pid": std::process::id(), "incoming": self.config.incoming_dir }))?;
        tracing::info!(state_dir = %self.config.state_dir.display(), incoming = %self.config.incoming_dir.display(), "clamgate daemon started");
        {
            // Verifying production can take up to reload_timeout: keep
            // /livez and the systemd watchdog fed meanwhile.
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            let resume = self.resume_interrupted();
            tokio::pin!(resume);
            let resumed = loop {
                tokio::select! {
                    r = &mut resume => break r,
                    _ = beat.tick() => self.health.beat(),
                }
            };
            if let Err(e) = resumed {
                // Production keeps whatever it runs; the health endpoint tells.
                tracing::error!("could not finish the interrupted promotion or rollback: {e}");
            }
        }

        let dir = self.config.incoming_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| DaemonError::Watch { dir: dir.clone(), source: e.into() })?;
        let mut watcher = watch::watch(&dir).map_err(|source| DaemonError::Watch { dir: dir.clone(), source })?;
        let mut rescan = tokio::time::interval(self.config.rescan_interval);
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        let mut seen = watch::fingerprint(&dir);
        // What was last turned into a candidate: at start, nothing.
        let mut processed: Option<String> = None;
        // A run that failed on our side is retried one rescan interval later.
        let mut retry_at: Option<Instant> = None;
        let mut last_change = Instant::now();
        tokio::pin!(shutdown);

        loop {
            let due = (seen != processed && seen.is_some()).then_some(last_change + self.config.settle);
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(()) = watcher.changes.recv() => {
                    let now = watch::fingerprint(&dir);
                    if now != seen { seen = now; last_change = Instant::now(); }
                }
                _ = rescan.tick() => {
                    let now = watch::fingerprint(&dir);
                    if now != seen { seen = now; last_change = Instant::now(); }
                    if retry_at.is_some_and(|t| Instant::now() >= t) {
                        retry_at = None;
                        processed = None;
                    }
                }
                _ = heartbeat.tick() => self.health.beat(),
                _ = sleep_until(due.unwrap_or_else(far_future)), if due.is_some() => {
                    let started_on = seen.clone();
                    tracing::info!("incoming {} settled; checking it", dir.display());
                    let run = self.process();
                    tokio::pin!(run);
                    let finished = loop {
                        tokio::select! {
                            biased;
                            _ = &mut shutdown => {
                                tracing::info!("shutdown during a candidate run; cancelling it");
                                self.cleanup_work();
                                return self.stopped();
                            }
                            Some(()) = watcher.changes.recv() => {
                                let now = watch::fingerprint(&dir);
                                if now != started_on && self.deciding.load(std::sync::atomic::Ordering::SeqCst) {
                                    // Too late to cancel: checked on the next run.
                                    if now != seen { seen = now; last_change = Instant::now(); }
                                } else if now != started_on {
                                    tracing::info!("incoming changed during the run; cancelling and starting over");
                                    self.store.journal().append("candidate.cancelled", json!({ "why": "incoming changed during the run" }))?;
                                    seen = now;
                                    last_change = Instant::now();
                                    break false;
                                }
                            }
                            _ = heartbeat.tick() => self.health.beat(),
                            r = &mut run => {
                                if let Err(e) = r {
                                    // Our failure (disk full, read-only state dir): production
                                    // keeps its release; the next change or rescan retries.
                                    tracing::error!("candidate run failed: {e}; production keeps its live release");
                                    let _ = self.store.journal().append("candidate.error", json!({ "error": e.to_string() }));
                                    self.cleanup_work();
                                    retry_at = Some(Instant::now() + self.config.rescan_interval);
                                    break true;
                                }
                                break true;
                            }
                        }
                    };
                    if !finished {
                        self.cleanup_work();
                    } else {
                        processed = started_on;
                    }
                }
            }
        }
        self.stopped()
    }

    fn stopped(&self) -> Result<(), DaemonError> {
        self.store.journal().append("daemon.stopped", json!({ "pid": std::process::id() }))?;
        tracing::info!("clamgate daemon stopped");
        Ok(())
    }

    fn cleanup_work(&self) {
        if let Ok(entries) = std::fs::read_dir(self.store.work_dir()) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    async fn lock(&self) -> Result<crate::store::StateLock, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.lock(LOCK_WAIT)).await.expect("lock task does not panic")
    }

    /// A promotion or rollback that a crash interrupted is finished now
    /// (see [`promote::resume`]).
    async fn resume_interrupted(&self) -> Result<(), DaemonError> {
        let entries = self.store.journal().read()?;
        let last = entries.iter().rev().find(|e| [".begin", ".done", ".failed", ".interrupted"].iter().any(|s| e.event.ends_with(s)));
        let Some(begin) = last.filter(|e| e.event.ends_with(".begin")) else { return Ok(()) };
        let lock = self.lock().await?;
        let outcome = promote::resume(&self.store, &lock, &self.production, begin).await.map_err(|promote::PromoteError::Store(e)| e)?;
        tracing::info!("resumed {}: {outcome:?}", begin.event);
        Ok(())
    }

    /// One candidate: gate, then promote or quarantine.
    async fn process(&self) -> Result<(), DaemonError> {
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
        let work = self.store.work_dir().join(format!("candidate-{stamp}"));
        let live = self.store.current()?;
        self.store.journal().append("candidate.started", json!({ "live": live }))?;
        let baseline = match &live {
            Some(id) => match self.store.manifest(id) {
                Ok(manifest) => Some(Baseline { dir: self.store.release_dir(id), verdicts: self.store.cached_verdicts(id, &self.corpus.digest), manifest }),
                Err(e) => {
                    tracing::error!("live release {id} is unreadable, checking without a baseline: {e}");
                    None
                }
            },
            None => None,
        };
        let store = &self.store;
        let live_id = live.clone();
        let known = move |m: &crate::candidate::Manifest| -> Option<Reason> {
            if live_id.as_deref() == Some(m.id.as_str()) {
                return Some(Reason::new(Code::KnownBad, None, "identical to the live release"));
            }
            store.quarantined(&m.id).map(|q| Reason::new(Code::KnownBad, None, format!("quarantined at {} ({}); not checked again", q.at, q.source)))
        };
        let gate = Gate { policy: &self.policy, clamd_binary: &self.config.clamd.binary, corpus: &self.corpus, known: Some(&known) };
        let report = match gate.check(&self.config.incoming_dir, &work, baseline.as_ref()).await {
            Ok(r) => r,
            Err(e) => {
                // Our failure, not the candidate's: production is untouched; retry on the next change.
                tracing::error!("could not check the candidate: {e}");
                self.store.journal().append("candidate.error", json!({ "error": e.to_string() }))?;
                let _ = std::fs::remove_dir_all(&work);
                return Ok(());
            }
        };
        self.deciding.store(true, std::sync::atomic::Ordering::SeqCst);
        let result = self.decide(&report, live.as_deref(), baseline.as_ref()).await;
        self.deciding.store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    async fn decide(&self, report: &Report, live: Option<&str>, baseline: Option<&Baseline>) -> Result<(), DaemonError> {
        let journal = self.store.journal();
        let Some(manifest) = report.manifest.as_ref().filter(|m| !m.files.is_empty()) else {
            tracing::warn!("incoming holds no usable database files: {:?}", report.reasons);
            journal.append("candidate.checked", json!({ "id": null, "verdict": report.verdict, "reasons": report.reasons }))?;
            return Ok(());
        };
        let id = manifest.id.as_str();
        if live == Some(id) {
            tracing::debug!(candidate = id, "incoming matches the live release");
            return Ok(());
        }
        if self.store.quarantined(id).is_some() {
            tracing::warn!(candidate = id, "candidate {id} was quarantined before; not checked again");
            journal.append("candidate.known_bad", json!({ "id": id, "reasons": report.reasons }))?;
            return Ok(());
        }
        if let (Some(b), Some(v)) = (baseline, &report.new_baseline_verdicts) {
            if let Err(e) = self.store.cache_verdicts(&b.manifest.id, &self.corpus.digest, v) {
                tracing::warn!("cannot cache the live release's verdicts: {e}");
            }
        }
        journal.append(
            "candidate.checked",
            json!({
                "id": id,
                "verdict": report.verdict,
                "reasons": report.reasons,
                "warnings": report.warnings,
                "baseline": report.baseline,
                "canary": report.canary,
                "checks": report.checks,
            }),
        )?;
        let m = &self.health.metrics;
        m.candidate(if report.verdict == Verdict::Pass { "pass" } else { "reject" }, report.reasons.first().map(|r| r.reason.as_str()));
        if let Some(c) = &report.canary {
            if let Some(ms) = c.load_ms {
                m.canary_load_seconds.set(ms as f64 / 1000.0);
            }
            if let Some(b) = c.peak_rss_bytes {
                m.canary_peak_bytes.set(b as i64);
            }
        }
        let lock = self.lock().await?;
        if report.verdict == Verdict::Reject {
            for r in &report.reasons {
                tracing::warn!(candidate = id, "rejected: {r}");
            }
            self.store.quarantine(&lock, manifest, &report.reasons, "gate", report.canary_log.as_deref(), report.snapshot_dir.as_deref())?;
            journal.append("candidate.quarantined", json!({ "id": id }))?;
            return Ok(());
        }
        let snapshot = report.snapshot_dir.as_deref().expect("a passed candidate has a snapshot");
        self.store.add_release(&lock, snapshot, manifest)?;
        failpoint::hit("release-written");
        journal.append("release.created", json!({ "id": id, "signatures": manifest.total_signatures() }))?;
        if let Some(pin) = self.store.pinned() {
            tracing::warn!(candidate = id, "passed, but the live release is pinned by {} since {}; kept as release {id}", pin.by, pin.at);
            journal.append("candidate.held", json!({ "id": id, "pinned_by": pin.by }))?;
            return Ok(());
        }
        let outcome = promote::activate(&self.store, &lock, &self.production, id, "promotion").await.map_err(|promote::PromoteError::Store(e)| e)?;
        match &outcome {
            Outcome::Live(_) => {
                m.promotions.inc();
                let removed = self.store.prune(&lock, self.policy.keep_releases, live)?;
                if !removed.is_empty() {
                    journal.append("release.pruned", json!({ "ids": removed }))?;
                }
            }
            Outcome::RolledBack { reason, to } => {
                m.rollbacks.inc();
                tracing::error!(candidate = id, "rolled back to {to}: {reason}")
            }
            Outcome::Broken { reason } => tracing::error!(candidate = id, "production needs attention: {reason}"),
        }
        Ok(())
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// Tells systemd (when it started us with Type=notify) that we are ready
/// once the first probe ran, what is live, and, while the loops run, that
/// we are alive (WATCHDOG=1 at half the watchdog interval).
async fn systemd_notify(health: Arc<Health>, store: Store, first_probe: tokio::sync::oneshot::Receiver<()>, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::select! {
        _ = stop.changed() => return,
        _ = first_probe => {}
    }
    let status = |store: &Store| format!("live release {}", store.current().ok().flatten().unwrap_or_else(|| "none".into()));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status(&store))]);
    let every = sd_notify::watchdog_enabled().map(|d| d / 2).unwrap_or(Duration::from_secs(30));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        if health.alive() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog, sd_notify::NotifyState::Status(&status(&store))]);
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}
