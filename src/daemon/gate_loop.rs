//! The candidate loop: watching `incoming_dir`, running the gate on a
//! settled snapshot (cancelled by a change or a shutdown), and one
//! candidate's run from gate to decision. Separate from `mod.rs`, which
//! starts the daemon, finishes what a crash interrupted and reloads it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, Interval, sleep_until};

use super::schedule::{self, DuringRun, Schedule};
use super::{Daemon, DaemonError};
use crate::candidate::HeldFile;
use crate::candidate::Manifest;
use crate::gate::{Baseline, Gate};
use crate::isolate;
use crate::journal::Event;
use crate::reason::{Code, Reason};
use crate::store::QuarantineRecord;
use crate::watch;

/// Why a candidate is not checked again.
pub(super) enum Known {
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
    pub(super) async fn gate_loop(&mut self, shutdown: impl Future<Output = ()>, mut hangup: tokio::signal::unix::Signal) -> Result<(), DaemonError> {
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
                    // Starting production again loads an engine (up to its
                    // load timeout): /livez and the watchdog stay fed.
                    self.beating(self.supervise()).await;
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

    pub(super) fn known(&self, live: Option<&str>, m: &Manifest) -> Option<Known> {
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
        // A canary kept by a run that was cut short (incoming changed, our
        // own error) would hold an engine's memory that the guard counts.
        self.sweep_managed().await?;
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

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
