//! `clamgate run`: the long-running gate. Watches `incoming_dir`, waits for
//! it to settle, runs the gate on a snapshot, promotes what passes, and
//! quarantines what does not. A change during a run cancels that run and
//! starts over on the new files; a shutdown signal stops everything, with
//! canary clamds killed on the way out. When to run is [`schedule`]'s to
//! decide; this module (start-up, resume, reload) and [`gate_loop`] (the
//! candidate loop) do the I/O.

mod decide;
mod gate_loop;
mod room;
mod schedule;
mod supervise;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::context::{Context, ContextError, StateDir};
use crate::health::{Health, ProbeSettings};
use crate::journal::{Event, Phase};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::promote::{Activator, PromoteError};
use crate::store::{StateLock, Store, StoreError};
use gate_loop::Known;

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
}

fn restart_note(keys: &[String]) -> String {
    if keys.is_empty() { String::new() } else { format!("; {} changed and apply at the next restart", keys.join(", ")) }
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
