//! The daemon's Prometheus metrics (`/metrics`): what the prober saw, what
//! the gate decided, and what is live. Names follow the Prometheus rules
//! (units in the name, `_total` on counters; the client adds `_total`) and
//! are a contract: the alert rules and the dashboard in `monitoring/` use
//! them. A value that is not known is absent, never 0.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::gate::Verdict;
use crate::journal::{Entry, Event};
use crate::reason::Code;
use crate::status::Status;
use crate::store::Store;

/// Label values are our enums' wire names.
macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}

/// Who made a rollback: the daemon after a release failed in production,
/// or an operator's `clamgate rollback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Origin {
    Automatic,
    Operator,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Automatic => "automatic",
            Origin::Operator => "operator",
        }
    }
}

/// A candidate's first reason code, `none` when it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FirstReason(Option<Code>);

impl FirstReason {
    fn as_str(self) -> &'static str {
        self.0.map_or("none", Code::as_str)
    }
}

label_value!(Origin, FirstReason, Status, Verdict, Code, crate::memguard::decide::Limit);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProbeLabels {
    result: Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CandidateLabels {
    outcome: Verdict,
    reason: FirstReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OriginLabels {
    origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DatabaseLabels {
    database: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: crate::memguard::decide::Limit,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HeldLabels {
    reason: Code,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReleaseLabels {
    release: String,
    daily_version: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// A gauge that is absent from the exposition until it is first set.
#[derive(Debug, Default, Clone)]
struct Optional<G> {
    gauge: G,
    set: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<G> Optional<G> {
    /// The gauge, marked as known.
    fn known(&self) -> &G {
        self.set.store(true, std::sync::atomic::Ordering::Relaxed);
        &self.gauge
    }
}

impl<G: EncodeMetric + TypedMetric> TypedMetric for Optional<G> {
    const TYPE: MetricType = G::TYPE;
}

impl<G: EncodeMetric> EncodeMetric for Optional<G> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.gauge.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.gauge.metric_type()
    }

    fn is_empty(&self) -> bool {
        !self.set.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub struct Metrics {
    registry: Registry,
    probes: Family<ProbeLabels, Counter>,
    probe_latency: Histogram,
    probe_up: Gauge,
    candidates: Family<CandidateLabels, Counter>,
    promotions: Counter,
    rollbacks: Family<OriginLabels, Counter>,
    last_promotion: Optional<F64Gauge>,
    live_release: Family<ReleaseLabels, Gauge>,
    pinned: Gauge,
    held_files: Family<HeldLabels, Gauge>,
    database_version: Family<DatabaseLabels, Gauge>,
    database_age: Family<DatabaseLabels, Gauge>,
    canary_load: Optional<F64Gauge>,
    canary_peak: Optional<Gauge>,
    max_database_age: Gauge,
    memory_budget: Gauge,
    deferrals: Family<LimitLabels, Counter>,
    deferred: Gauge,
    guard_needed: Optional<Gauge>,
    guard_available: Optional<Gauge>,
    /// Where [`Metrics::follow`] left off in the journal; `None` before the first read.
    journal_offset: Mutex<Option<u64>>,
    /// Per ring, on a gate with `[publish]`.
    pub(crate) rollout: crate::fleet::metrics::RolloutMetrics,
}

impl Default for Metrics {
    /// With the built-in policy's thresholds.
    fn default() -> Self {
        let policy = crate::policy::Policy::default();
        Metrics::new(policy.max_database_age, policy.memory_budget)
    }
}

impl Metrics {
    /// `max_database_age` and `memory_budget` are the policy's: exported so
    /// alert rules compare against the thresholds the gate really uses.
    pub(crate) fn new(max_database_age: Duration, memory_budget: u64) -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("clamgate"),
            probes: Family::default(),
            probe_latency: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            probe_up: Gauge::default(),
            candidates: Family::default(),
            promotions: Counter::default(),
            rollbacks: Family::default(),
            last_promotion: Optional::default(),
            live_release: Family::default(),
            pinned: Gauge::default(),
            held_files: Family::default(),
            database_version: Family::default(),
            database_age: Family::default(),
            canary_load: Optional::default(),
            canary_peak: Optional::default(),
            max_database_age: Gauge::default(),
            memory_budget: Gauge::default(),
            deferrals: Family::default(),
            deferred: Gauge::default(),
            guard_needed: Optional::default(),
            guard_available: Optional::default(),
            journal_offset: Mutex::new(None),
            rollout: Default::default(),
        };
        // Counters exist from the start, at 0, so `rate()` and `increase()` see the first event.
        for result in [Status::Pass, Status::Warn, Status::Fail] {
            m.probes.get_or_create_owned(&ProbeLabels { result });
        }
        m.candidates.get_or_create_owned(&CandidateLabels { outcome: Verdict::Pass, reason: FirstReason(None) });
        for &code in Code::ALL {
            m.candidates.get_or_create_owned(&CandidateLabels { outcome: Verdict::Reject, reason: FirstReason(Some(code)) });
        }
        for origin in [Origin::Automatic, Origin::Operator] {
            m.rollbacks.get_or_create_owned(&OriginLabels { origin });
        }
        for limit in [crate::memguard::decide::Limit::Host, crate::memguard::decide::Limit::Cgroup] {
            m.deferrals.get_or_create_owned(&LimitLabels { limit });
        }
        m.policy(max_database_age, memory_budget);
        let mut r = m.registry;
        r.register("probes", "Health probes through production clamd, by result", m.probes.clone());
        r.register("probe_latency_seconds", "Time of one probe's scans through production clamd", m.probe_latency.clone());
        r.register("probe_up", "1 when the last probe scanned (pass or warn), 0 when production could not scan", m.probe_up.clone());
        r.register("candidates", "Candidates checked, by outcome and first reason code", m.candidates.clone());
        r.register("promotions", "Releases made live (the daemon's and operators'), from the journal", m.promotions.clone());
        r.register("rollbacks", "Rollbacks, automatic or by an operator, from the journal", m.rollbacks.clone());
        r.register("last_promotion_timestamp_seconds", "When a release was last made live", m.last_promotion.clone());
        r.register("live_release_info", "The live release and its daily version (always 1)", m.live_release.clone());
        r.register("pinned", "1 while an operator's pin holds the live release", m.pinned.clone());
        r.register("held_files", "Files per-file isolation holds back from the live release, by reason code", m.held_files.clone());
        r.register("live_database_version", "Database version production clamd reports", m.database_version.clone());
        r.register("live_database_age_seconds", "Age of the live database (its build time)", m.database_age.clone());
        r.register("policy_max_database_age_seconds", "The policy's max_database_age", m.max_database_age.clone());
        r.register("canary_load_seconds", "Load time of the last canary clamd", m.canary_load.clone());
        r.register("canary_peak_bytes", "Peak resident memory of the last canary clamd", m.canary_peak.clone());
        r.register("canary_memory_budget_bytes", "The policy's memory_budget for a canary", m.memory_budget.clone());
        r.register("canary_deferrals", "Canaries the memory guard deferred, by the limit short of room", m.deferrals.clone());
        r.register("canary_deferred", "1 while the last memory guard check deferred the canary", m.deferred.clone());
        r.register("canary_memory_needed_bytes", "Memory the last guarded canary needed under its tightest limit", m.guard_needed.clone());
        r.register("canary_memory_available_bytes", "Memory free under that limit at the last check", m.guard_available.clone());
        m.rollout.register(&mut r);
        r.register("build", "clamgate build information", Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]));
        Metrics { registry: r, ..m }
    }

    /// The thresholds alerts compare against, at start and on reload.
    pub(crate) fn policy(&self, max_database_age: Duration, memory_budget: u64) {
        self.max_database_age.set(max_database_age.as_secs() as i64);
        self.memory_budget.set(memory_budget as i64);
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// One probe's result.
    pub(crate) fn probe(&self, status: Status, latency: Duration, database: Option<u64>, database_age: Option<Duration>) {
        self.probes.get_or_create(&ProbeLabels { result: status }).inc();
        self.probe_latency.observe(latency.as_secs_f64());
        self.probe_up.set(i64::from(status != Status::Fail));
        let daily = DatabaseLabels { database: "daily".into() };
        set_or_remove(&self.database_version, &daily, database.map(|v| v as i64));
        set_or_remove(&self.database_age, &daily, database_age.map(|a| a.as_secs() as i64));
    }

    /// Counts a gate result by its first reason code.
    pub(crate) fn candidate(&self, verdict: Verdict, reason: Option<Code>) {
        self.candidates.get_or_create(&CandidateLabels { outcome: verdict, reason: FirstReason(reason) }).inc();
    }

    pub(crate) fn canary(&self, load: Option<Duration>, peak_bytes: Option<u64>) {
        if let Some(load) = load {
            self.canary_load.known().set(load.as_secs_f64());
        }
        if let Some(peak) = peak_bytes {
            self.canary_peak.known().set(peak as i64);
        }
    }

    /// A memory guard check: deferred (by which limit) or not, and the
    /// figures under the tightest limit when known.
    pub(crate) fn memory_guard(&self, deferred: Option<crate::memguard::decide::Limit>, tightest: Option<(u64, u64)>) {
        if let Some(limit) = deferred {
            self.deferrals.get_or_create(&LimitLabels { limit }).inc();
        }
        self.deferred.set(i64::from(deferred.is_some()));
        if let Some((needed, available)) = tightest {
            self.guard_needed.known().set(needed as i64);
            self.guard_available.known().set(available as i64);
        }
    }

    /// The held files by reason; a reason no longer held reads 0, one never
    /// held is absent.
    fn held(&self, held: &[crate::candidate::HeldFile]) {
        for &reason in Code::ALL {
            let n = held.iter().filter(|h| h.reason == reason).count() as i64;
            let labels = HeldLabels { reason };
            if n > 0 || self.held_files.get(&labels).is_some() {
                self.held_files.get_or_create(&labels).set(n);
            }
        }
    }

    /// Brings the journal's story and the live state up to date: promotions
    /// and rollbacks are counted from the journal, so an operator's
    /// `clamgate rollback` (another process) counts as the daemon's own do.
    /// Events before the first call are history, not counted; the last
    /// promotion's time is taken from them.
    pub(crate) fn follow(&self, store: &Store) {
        let mut offset = self.journal_offset.lock().expect("journal offset lock");
        let journal = store.journal();
        match journal.read_from(offset.unwrap_or(0)) {
            Ok((entries, next)) => {
                let counting = offset.is_some();
                for entry in &entries {
                    self.count(entry, counting);
                }
                *offset = Some(next);
            }
            Err(e) => tracing::debug!("metrics: {e}"),
        }
        drop(offset);
        self.pinned.set(i64::from(store.pinned().is_some()));
        self.held(&store.held());
        let live = store.current().ok().flatten().map(|id| {
            let daily = store
                .manifest(&id)
                .ok()
                .and_then(|m| m.files.iter().filter(|f| f.database() == "daily").filter_map(|f| f.header.as_ref()).map(|h| h.version).max());
            ReleaseLabels { release: id, daily_version: daily.map_or_else(String::new, |v| v.to_string()) }
        });
        if live.as_ref().is_none_or(|l| self.live_release.get(l).is_none()) {
            self.live_release.clear();
            if let Some(l) = live {
                self.live_release.get_or_create(&l).set(1);
            }
        }
    }

    fn count(&self, entry: &Entry, counting: bool) {
        let at = || entry.time().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64());
        match &entry.event {
            Event::PromotionDone(_) => {
                if let Some(at) = at() {
                    self.last_promotion.known().set(at);
                }
                if counting {
                    self.promotions.inc();
                }
            }
            Event::RollbackDone(done) if counting => {
                let origin = if done.automatic == Some(true) { Origin::Automatic } else { Origin::Operator };
                self.rollbacks.get_or_create(&OriginLabels { origin }).inc();
            }
            _ => {}
        }
    }
}

fn set_or_remove(family: &Family<DatabaseLabels, Gauge>, labels: &DatabaseLabels, value: Option<i64>) {
    match value {
        Some(v) => {
            family.get_or_create(labels).set(v);
        }
        None => {
            family.remove(labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(text: &str) -> Vec<prometheus_parse::Sample> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("our exposition parses").samples
    }

    fn names(text: &str) -> Vec<String> {
        samples(text).into_iter().map(|s| s.metric).collect()
    }

    #[test]
    fn unknown_values_are_absent_and_counters_start_at_zero() {
        let m = Metrics::new(Duration::from_secs(3600), 1 << 30);
        let text = m.encode();
        let names = names(&text);
        for absent in [
            "clamgate_live_database_version",
            "clamgate_live_database_age_seconds",
            "clamgate_last_promotion_timestamp_seconds",
            "clamgate_canary_load_seconds",
            "clamgate_canary_peak_bytes",
            "clamgate_live_release_info",
            "clamgate_canary_memory_needed_bytes",
        ] {
            assert!(!names.iter().any(|n| n == absent), "{absent} must be absent while unknown:\n{text}");
        }
        let rejects = samples(&text).into_iter().filter(|s| s.metric == "clamgate_candidates_total" && s.labels.get("outcome") == Some("reject")).count();
        assert_eq!(rejects, Code::ALL.len(), "a zero series per reason code:\n{text}");
        assert!(text.contains("clamgate_candidates_total{outcome=\"pass\",reason=\"none\"} 0"), "{text}");
        assert!(text.contains("clamgate_rollbacks_total{origin=\"operator\"} 0"), "{text}");
        assert!(text.contains("clamgate_policy_max_database_age_seconds 3600"), "{text}");
        assert!(text.contains("clamgate_canary_memory_budget_bytes 1073741824"), "{text}");
        assert!(text.contains("clamgate_canary_deferrals_total{limit=\"cgroup\"} 0"), "{text}");
        assert!(text.contains("clamgate_canary_deferred 0"), "{text}");
    }

    #[test]
    fn a_deferral_counts_and_shows_its_figures() {
        let m = Metrics::default();
        m.memory_guard(Some(crate::memguard::decide::Limit::Cgroup), Some((300, 200)));
        let text = m.encode();
        for want in [
            "clamgate_canary_deferrals_total{limit=\"cgroup\"} 1",
            "clamgate_canary_deferred 1",
            "clamgate_canary_memory_needed_bytes 300",
            "clamgate_canary_memory_available_bytes 200",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        m.memory_guard(None, Some((300, 400)));
        assert!(m.encode().contains("clamgate_canary_deferred 0"));
    }

    #[test]
    fn a_failed_probe_removes_what_it_no_longer_knows() {
        let m = Metrics::default();
        m.probe(Status::Pass, Duration::from_millis(3), Some(27000), Some(Duration::from_secs(60)));
        assert!(m.encode().contains("clamgate_live_database_version{database=\"daily\"} 27000"), "{}", m.encode());
        m.probe(Status::Fail, Duration::from_millis(3), None, None);
        let text = m.encode();
        assert!(!text.contains("clamgate_live_database_version{"), "{text}");
        assert!(text.contains("clamgate_probe_up 0"), "{text}");
        assert!(text.contains("clamgate_probes_total{result=\"fail\"} 1"), "{text}");
    }

    #[test]
    fn the_canary_figures_appear_once_known() {
        let m = Metrics::default();
        m.canary(Some(Duration::from_millis(1500)), Some(200 << 20));
        let text = m.encode();
        assert!(text.contains("clamgate_canary_load_seconds 1.5"), "{text}");
        assert!(text.contains("clamgate_canary_peak_bytes 209715200"), "{text}");
    }
}
