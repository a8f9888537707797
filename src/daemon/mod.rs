//! `clamgate run`: the long-running gate. Watches `incoming_dir`, waits for
//! it to settle, runs the gate on a snapshot, promotes what passes, and
//! quarantines what does not. A change during a run cancels that run and
//! starts over on the new files; a shutdown signal stops everything, with
//! canary clamds killed on the way out. When to run is [`schedule`]'s to
//! decide; this module does the I/O.

mod decide;
mod room;
mod schedule;
mod supervise;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, Interval, sleep_until};

use crate::candidate::HeldFile;
use crate::candidate::Manifest;
use crate::context::{Context, ContextError, StateDir};
use crate::gate::{Baseline, Gate};
use crate::health::{Health, ProbeSettings};
use crate::isolate;
use crate::journal::{Event, Phase};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::promote::{Activator, PromoteError};
use crate::reason::{Code, Reason};
use crate::store::{QuarantineRecord, StateLock, Store, StoreError};
use crate::watch;
use schedule::{DuringRun, Schedule};

#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Promote(#[from] PromoteError),
    #[error("could not check the candidate: {0}")]
    Gate(#[from] crate::gate::GateError),
    #[error("health endpoint: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("cannot handle SIGHUP: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Managed(#[from] crate::managed::ManagedError),
    #[error("cannot watch {dir}: {source}")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Everything the daemon decides with, built once at start.
pub(crate) struct Daemon {
    cx: Context,
    policy: Policy,
    health: Arc<Health>,
    /// Set while a checked candidate is being quarantined or promoted: a
    /// change in incoming then waits for the next run instead of cancelling
    /// a promotion halfway through its verification.
    deciding: AtomicBool,
    /// The candidate the last run quarantined or found quarantined: once an
    /// operator clears that (`clamgate recheck`), the same files are
    /// checked again.
    last_quarantined: std::sync::Mutex<Option<String>>,
    /// How many files per-file isolation held after the last run: fewer
    /// later means `clamgate recheck FILE` cleared one.
    held: std::sync::atomic::AtomicUsize,
    /// The memory guard, asked before each canary.
    guard: room::Guarded,
    /// Set when a `recheck FILE` cleared a hold while a run held it.
    held_cleared: AtomicBool,
    /// Managed mode: when production clamd was last started again, so a
    /// release that will not load is retried every 30 s, not every beat.
    restarted: std::sync::Mutex<Option<std::time::Instant>>,
}

const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Why a candidate is not checked again.
enum Known {
    Live,
    Quarantined(QuarantineRecord),
}

/// The loop's timers and the directory it watches.
struct Loop {
    watcher: watch::Watcher,
    dir: PathBuf,
    rescan: Interval,
    heartbeat: Interval,
}

impl Loop {
    fn fingerprint(&self) -> schedule::Fingerprint {
        watch::fingerprint(&self.dir)
    }
}

/// Whether the loop goes on after a candidate run.
enum Flow {
    Continue,
    Stop,
}

impl Daemon {
    pub(crate) fn new(config: crate::config::Config) -> Result<Daemon, DaemonError> {
        // The policy first: a bad config must not create a state dir.
        let policy = config.load_policy()?;
        let cx = Context::open(config, StateDir::Create)?;
        if cx.config.smoke_samples.is_none() {
            let names: Vec<&str> = cx.production.smoke.iter().map(|s| s.name.as_str()).collect();
            tracing::info!("smoke samples chosen from the corpus: {} (set smoke_samples to choose)", names.join(", "));
        }
        let settings = ProbeSettings {
            interval: cx.config.health.probe_interval,
            latency_budget: cx.config.health.latency_budget,
            max_database_age: policy.max_database_age,
        };
        let metrics = Metrics::new(policy.max_database_age, policy.memory_budget);
        // What the journal holds now is history; from here on it is counted.
        metrics.follow(&cx.store);
        let health = Health::new(settings, Arc::new(metrics));
        let held = std::sync::atomic::AtomicUsize::new(cx.store.held().len());
        let guard = room::Guarded::new(cx.config.memory_guard.clone(), &cx.store.journal().read()?);
        Ok(Daemon {
            cx,
            policy,
            health,
            deciding: AtomicBool::new(false),
            last_quarantined: std::sync::Mutex::new(None),
            held,
            held_cleared: AtomicBool::new(false),
            guard,
            restarted: std::sync::Mutex::new(None),
        })
    }

    /// Runs until `shutdown` completes: the gate loop, the prober and the
    /// health endpoint, all stopped by the same signal and awaited.
    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let _daemon = self.cx.store.daemon_lock()?;
        // Installed first: from here SIGHUP (logrotate, config tools) reloads instead of killing.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(DaemonError::Signal)?;
        let addr = self.cx.config.health.listen.clone();
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|source| DaemonError::Listen { addr: addr.clone(), source })?;
        tracing::info!("health endpoint on http://{}", listener.local_addr().map(|a| a.to_string()).unwrap_or(addr));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let mut tasks = tokio::task::JoinSet::new();
        let store = &self.cx.store;
        tasks.spawn(crate::health::http::serve(listener, self.health.clone(), stop_rx.clone()));
        tasks.spawn(crate::health::run_prober(self.health.clone(), self.cx.production.clone(), store.clone(), stop_rx.clone(), first_tx));
        tasks.spawn(systemd_notify(self.health.clone(), store.clone(), first_rx, stop_rx.clone()));
        self.health.beat();
        // The fleet's tasks start once an interrupted activation is finished:
        // a host's follower activates releases itself.
        let result = async {
            self.start_up().await?;
            crate::fleet::spawn(&self.cx, self.policy.max_file_size, &self.health, &mut tasks, &stop_rx).await?;
            self.gate_loop(shutdown, hangup).await
        }
        .await;
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("background tasks did not stop within 10 s; aborting them");
            tasks.abort_all();
        }
        result
    }

    async fn gate_loop(&mut self, shutdown: impl Future<Output = ()>, mut hangup: tokio::signal::unix::Signal) -> Result<(), DaemonError> {
        let mut lp = self.watch_incoming()?;
        let mut schedule = Schedule::new(self.cx.config.settle, self.cx.config.rescan_interval, lp.fingerprint(), Instant::now());
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let due = schedule.due();
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(()) = lp.watcher.changes.recv() => schedule.observe(lp.fingerprint(), Instant::now()),
                _ = lp.rescan.tick() => schedule.rescan(lp.fingerprint(), Instant::now()),
                _ = lp.heartbeat.tick() => {
                    self.health.beat();
                    self.supervise().await;
                    if self.mark_cleared() {
                        schedule.check_again();
                    }
                }
                // Between runs only: a SIGHUP during a run waits for its end.
                Some(()) = hangup.recv() => self.reload()?,
                _ = sleep_until(due.unwrap_or_else(far_future)), if due.is_some() => {
                    let flow = self.run_candidate(&mut schedule, &mut lp, shutdown.as_mut()).await?;
                    // What the run left held; a recheck before the next tick still counts.
                    self.held.store(self.cx.store.held().len(), Ordering::Relaxed);
                    if let Flow::Stop = flow {
                        break;
                    }
                }
            }
        }
        self.stopped()
    }

    /// Clears what an interrupted run left, journals the start, and
    /// finishes an interrupted promotion or rollback.
    async fn start_up(&self) -> Result<(), DaemonError> {
        {
            let lock = self.lock().await?;
            let removed = self.cx.store.recover(&lock)?;
            if !removed.is_empty() {
                tracing::warn!("removed {} leftovers of an interrupted run: {:?}", removed.len(), removed);
            }
        }
        self.cx.store.journal().append(Event::DaemonStarted { pid: std::process::id(), incoming: self.cx.config.incoming_dir.clone() })?;
        tracing::info!(state_dir = %self.cx.config.state_dir.display(), incoming = %self.cx.config.incoming_dir.display(), "clamgate daemon started");
        // Verifying production (or loading it, managed) can take up to
        // reload_timeout: keep /livez and the systemd watchdog fed meanwhile.
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        let mut resume = std::pin::pin!(async {
            self.adopt_production().await?;
            let resumed = self.resume_interrupted().await;
            self.sweep_managed().await?;
            resumed
        });
        let resumed = loop {
            tokio::select! {
                r = &mut resume => break r,
                _ = beat.tick() => self.health.beat(),
            }
        };
        if let Err(e @ DaemonError::Managed(crate::managed::ManagedError::Occupied(_))) = resumed {
            // Two clamds on one production path: the operator must choose.
            return Err(e);
        }
        if let Err(e) = resumed {
            // Production keeps whatever it runs; the health endpoint tells.
            tracing::error!("could not finish the interrupted promotion or rollback: {e}");
        }
        Ok(())
    }

    fn watch_incoming(&self) -> Result<Loop, DaemonError> {
        let dir = self.cx.config.incoming_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| DaemonError::Watch { dir: dir.clone(), source: e.into() })?;
        let watcher = watch::watch(&dir).map_err(|source| DaemonError::Watch { dir: dir.clone(), source })?;
        let rescan = tokio::time::interval(self.cx.config.rescan_interval);
        let heartbeat = tokio::time::interval(Duration::from_secs(1));
        Ok(Loop { watcher, dir, rescan, heartbeat })
    }

    /// One candidate run, cancelled by a change in incoming (unless it is
    /// already deciding) or by shutdown.
    async fn run_candidate(&self, schedule: &mut Schedule, lp: &mut Loop, mut shutdown: Pin<&mut impl Future<Output = ()>>) -> Result<Flow, DaemonError> {
        tracing::debug!("incoming {} settled; checking it", lp.dir.display());
        schedule.start();
        // Boxed, so that it can be dropped (its canary killed) before its
        // work directory is cleared.
        let mut run = Box::pin(self.process());
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    tracing::debug!("shutdown during a candidate run; cancelling it");
                    drop(run);
                    self.clear_work();
                    return Ok(Flow::Stop);
                }
                Some(()) = lp.watcher.changes.recv() => {
                    let deciding = self.deciding.load(Ordering::SeqCst);
                    if schedule.changed_during_run(lp.fingerprint(), Instant::now(), deciding) == DuringRun::Cancel {
                        tracing::debug!("incoming changed during the run; cancelling and starting over");
                        self.cx.store.journal().append(Event::CandidateCancelled { why: "incoming changed during the run".into() })?;
                        drop(run);
                        self.clear_work();
                        return Ok(Flow::Continue);
                    }
                }
                _ = lp.heartbeat.tick() => self.health.beat(),
                r = &mut run => {
                    drop(run);
                    if let Err(DaemonError::Gate(crate::gate::GateError::Deferred(d))) = &r {
                        // Not our failure: the same files again at the next retry.
                        self.cx.store.journal().append(Event::CandidateDeferred(d.clone()))?;
                        self.clear_work();
                    } else if let Err(e) = &r {
                        // Our failure (disk full, read-only state dir): production
                        // keeps its release; the next rescan retries.
                        tracing::error!("candidate run failed: {e}; production keeps its live release");
                        let _ = self.cx.store.journal().append(Event::CandidateError { error: e.to_string() });
                        self.clear_work();
                    }
                    if !matches!(r, Err(DaemonError::Gate(crate::gate::GateError::Deferred(_)))) {
                        self.guard.not_deferred(&self.health);
                    }
                    schedule.finished(r.is_err(), Instant::now());
                    return Ok(Flow::Continue);
                }
            }
        }
    }

    /// SIGHUP: the config and policy read again and checked as at start
    /// (corpus, smoke samples, state dir); a bad one is logged and journaled,
    /// and the running one kept. Keys the running loops were built from
    /// apply at the next restart, and the journal names them.
    fn reload(&mut self) -> Result<(), DaemonError> {
        let journal = self.cx.store.journal();
        match self.load_again() {
            Ok((cx, policy, restart)) => {
                let file = cx.config.file.clone();
                tracing::info!(config = ?file, "reloaded the config and policy{}", restart_note(&restart));
                self.health.set_thresholds(cx.config.health.latency_budget, policy.max_database_age);
                self.health.metrics.policy(policy.max_database_age, policy.memory_budget);
                (self.cx, self.policy) = (cx, policy);
                journal.append(Event::DaemonReloaded { config: file, restart })?;
            }
            Err(e) => {
                tracing::error!("SIGHUP: {e}; keeping the running config and policy");
                journal.append(Event::DaemonReloadFailed { error: e.to_string() })?;
            }
        }
        Ok(())
    }

    fn load_again(&self) -> Result<(Context, Policy, Vec<String>), DaemonError> {
        let old = &self.cx.config;
        let mut new = crate::config::Config::locate(old.file.as_deref())?;
        let policy = new.load_policy()?;
        let restart = new.keep_restart_only(old);
        Ok((Context::open(new, StateDir::MustExist)?, policy, restart))
    }

    fn stopped(&self) -> Result<(), DaemonError> {
        self.cx.store.journal().append(Event::DaemonStopped { pid: std::process::id() })?;
        tracing::info!("clamgate daemon stopped");
        Ok(())
    }

    /// True once, when the quarantine of the last run's candidate is gone
    /// (`clamgate recheck` or `promote --force` cleared it), or a held file
    /// is no longer held (`clamgate recheck FILE`).
    fn mark_cleared(&self) -> bool {
        let held = self.cx.store.held().len();
        if (held < self.held.swap(held, Ordering::Relaxed)) | self.held_cleared.swap(false, Ordering::Relaxed) {
            tracing::info!("a held file was cleared; checking incoming again");
            return true;
        }
        let mut last = self.last_quarantined.lock().expect("not poisoned");
        let cleared = last.as_deref().is_some_and(|id| self.cx.store.quarantined(id).is_none());
        if cleared {
            tracing::info!(candidate = last.as_deref(), "its quarantine was cleared; checking incoming again");
            *last = None;
        }
        cleared
    }

    fn clear_work(&self) {
        if let Err(e) = self.cx.store.clear_work() {
            tracing::warn!("{e}");
        }
    }

    async fn lock(&self) -> Result<StateLock, StoreError> {
        let store = self.cx.store.clone();
        tokio::task::spawn_blocking(move || store.lock(LOCK_WAIT)).await.expect("lock task does not panic")
    }

    fn activator<'a>(&'a self, lock: &'a StateLock) -> Activator<'a> {
        Activator { store: &self.cx.store, lock, prod: &self.cx.production, managed: self.cx.managed.as_ref() }
    }

    /// A promotion or rollback that a crash interrupted is finished now
    /// (see [`Activator::resume`]).
    async fn resume_interrupted(&self) -> Result<(), DaemonError> {
        let entries = self.cx.store.journal().read()?;
        let last = entries.iter().rev().find_map(|e| e.event.activation().map(|(_, phase)| (phase, e)));
        let Some((Phase::Begin, entry)) = last else { return Ok(()) };
        let Some((kind, begin)) = entry.event.as_begin() else { return Ok(()) };
        let lock = self.lock().await?;
        let outcome = self.activator(&lock).resume(kind, begin).await?;
        tracing::info!("resumed {}: {outcome:?}", entry.name());
        Ok(())
    }

    fn known(&self, live: Option<&str>, m: &Manifest) -> Option<Known> {
        if live == Some(m.id.as_str()) {
            return Some(Known::Live);
        }
        self.cx.store.quarantined(&m.id).map(Known::Quarantined)
    }

    /// The live release as the candidate is compared with it.
    fn baseline(&self, live: Option<&str>) -> Option<Baseline> {
        let id = live?;
        match self.cx.store.manifest(id) {
            Ok(manifest) => {
                let verdicts = self.cx.store.cached_verdicts(id, &self.cx.corpus.digest);
                Some(Baseline { dir: self.cx.store.release_dir(id), verdicts, manifest })
            }
            Err(e) => {
                tracing::error!("live release {id} is unreadable, checking without a baseline: {e}");
                None
            }
        }
    }

    /// One candidate: gate, then promote or quarantine.
    async fn process(&self) -> Result<(), DaemonError> {
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
        let work = self.cx.store.work_dir().join(format!("candidate-{stamp}"));
        let live = self.cx.store.current()?;
        *self.last_quarantined.lock().expect("not poisoned") = None;
        self.cx.store.journal().append(Event::CandidateStarted { live: live.clone() })?;
        let baseline = self.baseline(live.as_deref());
        let known = |m: &Manifest| {
            self.known(live.as_deref(), m).map(|k| match k {
                Known::Live => Reason::new(Code::KnownBad, None, "identical to the live release"),
                Known::Quarantined(q) => {
                    let codes: Vec<&str> = q.reasons.iter().map(|r| r.reason.as_str()).collect();
                    Reason::new(Code::KnownBad, None, format!("quarantined at {} by the {} ({}); not checked again", q.at, q.source, codes.join(", ")))
                }
            })
        };
        let cfg = &self.cx.config;
        let room = self.guard.reporting(&self.health);
        let managed = self.cx.managed.as_ref();
        let gate = Gate {
            policy: &self.policy,
            clamd_binary: &cfg.clamd.binary,
            corpus: &self.cx.corpus,
            known: Some(&known),
            room: Some(&room),
            managed,
            keep: managed.is_some(),
        };
        let held_before = self.cx.store.held();
        let on_held = |id: &str, held: &[HeldFile], bisect_runs: u32| self.attributed(id, held, bisect_runs, &held_before);
        // Our failure, not the candidate's (no clamd binary, disk full):
        // production is untouched, and the run is retried later.
        let iso = isolate::run(&gate, &cfg.incoming_dir, &work, baseline.as_ref(), &held_before, &on_held).await?;
        self.deciding.store(true, Ordering::SeqCst);
        let result = self.decide_isolated(&iso, live.as_deref(), baseline.as_ref()).await;
        self.deciding.store(false, Ordering::SeqCst);
        // A canary kept for a promotion that did not happen stops now.
        self.sweep_managed().await?;
        let _ = std::fs::remove_dir_all(&work);
        result
    }
}

fn restart_note(keys: &[String]) -> String {
    if keys.is_empty() { String::new() } else { format!("; {} changed and apply at the next restart", keys.join(", ")) }
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
