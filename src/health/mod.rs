//! Readiness that means "scanning works": a prober scans, through the
//! production clamd, samples that must be detected and must stay clean, on
//! an interval, and keeps the last result. The HTTP endpoint ([`http`])
//! answers from that result only, so requests never reach clamd.

pub mod http;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use crate::candidate::Manifest;
use crate::logging::spell::{Spell, Subject};
use crate::metrics::Metrics;
use crate::production::Production;
pub(crate) use crate::status::Status;
use crate::store::Store;
use crate::validate::cvd::CvdHeader;

/// One probe's findings.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Probe {
    pub(crate) status: Status,
    /// Why it is not `pass`.
    pub(crate) output: Option<String>,
    pub(crate) at: SystemTime,
    pub(crate) latency: Duration,
    pub(crate) release: Option<String>,
    pub(crate) engine: Option<String>,
    pub(crate) database: Option<u64>,
    pub(crate) database_age: Option<Duration>,
}

/// What the prober needs beyond production itself.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    pub interval: Duration,
    /// Scans slower than this make the probe `warn`.
    pub latency_budget: Duration,
    /// A live daily database older than this makes the probe `warn`.
    pub max_database_age: Duration,
}

/// Shared between the prober, the HTTP endpoint and the daemon's loops.
pub struct Health {
    last: RwLock<Option<Probe>>,
    /// `/readyz`'s body, rendered once per probe result (and per second of
    /// staleness), so a flood of requests costs a clone, not a render.
    rendered: RwLock<Option<Rendered>>,
    /// Replaced on reload (SIGHUP); the interval only at restart.
    settings: RwLock<ProbeSettings>,
    pub(crate) metrics: Arc<Metrics>,
    started: Instant,
    /// Milliseconds since `started` of the main loop's last heartbeat.
    heartbeat: AtomicU64,
    /// A daemon-side warning beside the probe's (a deferred canary):
    /// readiness reads at worst `warn` while it is set.
    notice: RwLock<Option<String>>,
    /// A fleet host's word on its ring (`fleet` in `/readyz`), and a
    /// warning when the gate has been unreachable too long.
    fleet: RwLock<Option<(Value, Option<String>)>>,
    /// Bumped on each `set_fleet`, so the cached body is rendered again.
    fleet_version: AtomicU64,
}

impl Health {
    pub fn new(settings: ProbeSettings, metrics: Arc<Metrics>) -> Arc<Health> {
        Arc::new(Health {
            last: RwLock::new(None),
            rendered: RwLock::new(None),
            settings: RwLock::new(settings),
            metrics,
            started: Instant::now(),
            heartbeat: AtomicU64::new(0),
            notice: RwLock::new(None),
            fleet: RwLock::new(None),
            fleet_version: AtomicU64::new(0),
        })
    }

    pub(crate) fn settings(&self) -> ProbeSettings {
        *self.settings.read().expect("settings lock")
    }

    /// New thresholds (a reloaded config or policy); the probe interval stays.
    pub(crate) fn set_thresholds(&self, latency_budget: Duration, max_database_age: Duration) {
        let mut s = self.settings.write().expect("settings lock");
        s.latency_budget = latency_budget;
        s.max_database_age = max_database_age;
    }

    /// Sets or clears the daemon's warning; the cached `/readyz` body goes.
    pub(crate) fn set_notice(&self, notice: Option<String>) {
        let mut n = self.notice.write().expect("notice lock");
        if *n != notice {
            *n = notice;
            *self.rendered.write().expect("render lock") = None;
        }
    }

    pub(crate) fn last(&self) -> Option<Probe> {
        self.last.read().expect("probe lock").clone()
    }

    /// The loops call this each time round; `/livez` fails when they stop.
    pub(crate) fn beat(&self) {
        self.heartbeat.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn alive(&self) -> bool {
        let last = Duration::from_millis(self.heartbeat.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) < self.stale_after()
    }

    /// A fleet host's source reports what it follows ([`crate::fleet::source`]).
    pub(crate) fn set_fleet(&self, value: Value, warn: Option<String>) {
        *self.fleet.write().expect("fleet lock") = Some((value, warn));
        self.fleet_version.fetch_add(1, Ordering::Relaxed);
    }

    fn stale_after(&self) -> Duration {
        self.settings().interval * 3 + Duration::from_secs(5)
    }

    /// [`Health::readiness`] serialized, from the cache when the probe
    /// result it was rendered from is still the last one.
    pub(crate) fn readiness_body(&self) -> (Status, bytes::Bytes) {
        let key = self.last.read().expect("probe lock").as_ref().map(|p| {
            let age = SystemTime::now().duration_since(p.at).unwrap_or_default();
            (p.at, (age > self.stale_after()).then_some(age.as_secs()), self.fleet_version.load(Ordering::Relaxed))
        });
        if let Some(r) = self.rendered.read().expect("render lock").as_ref().filter(|r| Some(r.key) == key) {
            return (r.status, r.body.clone());
        }
        let (status, value) = self.readiness();
        let body = bytes::Bytes::from(serde_json::to_vec(&value).expect("readiness serializes"));
        if let Some(key) = key {
            *self.rendered.write().expect("render lock") = Some(Rendered { key, status, body: body.clone() });
        }
        (status, body)
    }

    /// The readiness verdict right now: the last probe, failed if missing or stale.
    pub(crate) fn readiness(&self) -> (Status, Value) {
        let Some(p) = self.last() else {
            return (Status::Fail, json!({ "status": "fail", "output": "no probe has run yet" }));
        };
        let age = SystemTime::now().duration_since(p.at).unwrap_or_default();
        let (mut status, mut output) = if age > self.stale_after() {
            (Status::Fail, Some(format!("last probe is {}s old: the prober is stuck", age.as_secs())))
        } else {
            (p.status, p.output.clone())
        };
        let fleet = self.fleet.read().expect("fleet lock").clone();
        if let Some((_, Some(warn))) = &fleet
            && status == Status::Pass
        {
            (status, output) = (Status::Warn, Some(warn.clone()));
        }
        let notice = self.notice.read().expect("notice lock").clone();
        let (status, output) = match (&notice, status) {
            (Some(n), Status::Pass) => (Status::Warn, Some(n.clone())),
            (Some(n), Status::Warn) => (Status::Warn, Some(output.map_or_else(|| n.clone(), |o| format!("{o}; {n}")))),
            _ => (status, output),
        };
        let time = humantime::format_rfc3339_millis(p.at).to_string();
        let mut body = json!({
            "status": status,
            "version": "1",
            "releaseId": p.release,
            "description": "clamgate: scans through production clamd",
            "output": output,
            "checks": {
                "clamd:scan": [{
                    "componentType": "component",
                    "observedValue": p.latency.as_secs_f64() * 1000.0,
                    "observedUnit": "ms",
                    "status": p.status,
                    "time": time,
                }],
                "clamd:database": [{
                    "componentType": "datastore",
                    "componentId": p.engine,
                    "observedValue": p.database,
                    "status": p.status,
                    "time": time,
                }],
                "clamd:database-age": [{
                    "observedValue": p.database_age.map(|d| d.as_secs()),
                    "observedUnit": "s",
                    "status": if p.database_age.is_some_and(|a| a > self.settings().max_database_age) { "warn" } else { "pass" },
                    "time": time,
                }],
                "clamgate:memory-guard": [{
                    "status": if notice.is_some() { "warn" } else { "pass" },
                    "output": notice,
                }],
            },
        });
        if let Some((value, _)) = fleet {
            body["fleet"] = value;
        }
        (status, body)
    }

    fn record(&self, p: Probe) {
        self.metrics.probe(p.status, p.latency, p.database, p.database_age);
        *self.last.write().expect("probe lock") = Some(p);
    }
}

struct Rendered {
    /// The probe's time, the staleness in whole seconds if stale, and the fleet report's version.
    key: (SystemTime, Option<u64>, u64),
    status: Status,
    body: bytes::Bytes,
}

/// One probe: VERSION, then every smoke sample through production.
pub(crate) async fn probe_once(prod: &Production, store: &Store, settings: &ProbeSettings) -> Probe {
    let at = SystemTime::now();
    let release = store.current().ok().flatten();
    let manifest = release.as_deref().and_then(|id| store.manifest(id).ok());
    let mut p = Probe { status: Status::Pass, output: None, at, latency: Duration::ZERO, release, engine: None, database: None, database_age: None };
    if let Err(why) = scan(prod, &mut p).await {
        p.status = Status::Fail;
        p.output = Some(why);
        return p;
    }
    let daily = manifest.as_ref().and_then(live_daily);
    p.database_age = daily
        .and_then(|h| h.build_epoch)
        .map(|built| Duration::from_secs((SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()).saturating_sub(built)));
    // The pin is read only when the warning would mention it.
    let pinned = p.database_age.is_some_and(|age| age > settings.max_database_age) && store.pinned().is_some();
    let warnings = warnings(&p, daily, pinned, settings);
    if !warnings.is_empty() {
        p.status = Status::Warn;
        p.output = Some(warnings.join("; "));
    }
    p
}

/// Fills in the engine, database and latency; the error is why the probe fails.
async fn scan(prod: &Production, p: &mut Probe) -> Result<(), String> {
    let started = Instant::now();
    let v =
        prod.client.version().await.map_err(|e| {
            if e.is_unreachable() { format!("production clamd is down: {e}") } else { format!("production clamd does not answer VERSION: {e}") }
        })?;
    p.engine = Some(v.engine);
    p.database = v.database;
    // PING alone proves nothing: a clamd whose reload failed answers it but cannot scan.
    let smoke = prod.smoke().await;
    p.latency = started.elapsed();
    smoke.map_err(|e| e.to_string())
}

/// The newest daily database header in the live release.
fn live_daily(m: &Manifest) -> Option<&CvdHeader> {
    m.files.iter().filter(|f| f.database() == "daily").filter_map(|f| f.header.as_ref()).max_by_key(|h| h.version)
}

/// Why a probe whose scans worked is only `warn`: slow scans, an old live
/// database, or production not yet on the live release. Pure.
fn warnings(p: &Probe, daily: Option<&CvdHeader>, pinned: bool, settings: &ProbeSettings) -> Vec<String> {
    let mut warnings = Vec::new();
    if p.latency > settings.latency_budget {
        warnings.push(format!("scans took {} ms, over the {} ms budget", p.latency.as_millis(), settings.latency_budget.as_millis()));
    }
    if let Some(age) = p.database_age.filter(|&age| age > settings.max_database_age) {
        let pinned = if pinned { " (the release is pinned)" } else { "" };
        warnings.push(format!("live daily database is {} h old{pinned}", age.as_secs() / 3600));
    }
    if let Some(h) = daily.filter(|h| p.database.is_some_and(|d| d != h.version)) {
        warnings.push(format!("production runs daily {:?}, but the live release has {} (reload pending?)", p.database, h.version));
    }
    warnings
}

/// What the prober logged last: a failing spell, and the status, so that
/// only changes make lines (a WARN line per probe would be 86,400 a day).
#[derive(Default)]
struct ProbeLog {
    failing: Spell,
    last: Option<Status>,
}

impl ProbeLog {
    fn probed(&mut self, p: &Probe, now: Instant) {
        let (detail, release) = (p.output.as_deref().unwrap_or(""), p.release.as_deref());
        let mark = if p.status == Status::Fail { self.failing.bad(now) } else { self.failing.good(now) };
        if let Some(mark) = mark {
            Subject::ProbeFailing.log(mark, detail, release);
        }
        match (self.last.replace(p.status), p.status) {
            (Some(before), now) if before == now => {}
            // The failing spell's lines say these.
            (_, Status::Fail) | (Some(Status::Fail), Status::Pass) => {}
            (_, Status::Warn) => tracing::warn!(release, status = "warn", "health: warn: {detail}"),
            (_, Status::Pass) => tracing::info!(release, status = "pass", "health: pass"),
            (_, Status::Skipped) => {}
        }
    }
}

/// Probes every interval until `shutdown` flips.
pub(crate) async fn run_prober(
    health: Arc<Health>,
    prod: Production,
    store: Store,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut log = ProbeLog::default();
    let mut tick = tokio::time::interval(health.settings().interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        // Bounded: the client has per-call timeouts; this bounds the sum.
        let bound = health.settings().interval.max(Duration::from_secs(5)) * 2;
        let p = match tokio::time::timeout(bound, probe_once(&prod, &store, &health.settings())).await {
            Ok(p) => p,
            Err(_) => Probe {
                status: Status::Fail,
                output: Some(format!("probe did not finish within {bound:?}")),
                at: SystemTime::now(),
                latency: bound,
                release: None,
                engine: None,
                database: None,
                database_age: None,
            },
        };
        log.probed(&p, Instant::now());
        health.record(p);
        health.metrics.follow(&store);
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
    }
}
