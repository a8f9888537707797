//! Prometheus metrics (`/metrics`): what the prober saw and what the gate did.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub(crate) probes: Family<Labels, Counter>,
    pub(crate) probe_latency: Histogram,
    pub(crate) probe_up: Gauge,
    pub(crate) candidates: Family<Labels, Counter>,
    pub(crate) promotions: Counter,
    pub(crate) rollbacks: Counter,
    pub(crate) canary_load_seconds: Gauge<f64, AtomicU64>,
    pub(crate) canary_peak_bytes: Gauge,
    pub(crate) live_database_version: Gauge,
    pub(crate) live_database_age_seconds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("clamgate");
        let m = Metrics {
            probes: Family::default(),
            probe_latency: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            probe_up: Gauge::default(),
            candidates: Family::default(),
            promotions: Counter::default(),
            rollbacks: Counter::default(),
            canary_load_seconds: Gauge::default(),
            canary_peak_bytes: Gauge::default(),
            live_database_version: Gauge::default(),
            live_database_age_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("probes", "Health probes through production clamd, by result", m.probes.clone());
        registry.register("probe_latency_seconds", "Time of one probe's scans through production clamd", m.probe_latency.clone());
        registry.register("probe_up", "1 when the last probe passed (pass or warn), else 0", m.probe_up.clone());
        registry.register("candidates", "Candidates checked, by outcome and first reason code", m.candidates.clone());
        registry.register("promotions", "Releases made live", m.promotions.clone());
        registry.register("rollbacks", "Automatic rollbacks after a release failed in production", m.rollbacks.clone());
        registry.register("canary_load_seconds", "Load time of the last canary clamd", m.canary_load_seconds.clone());
        registry.register("canary_peak_bytes", "Peak resident memory of the last canary clamd", m.canary_peak_bytes.clone());
        registry.register("live_database_version", "daily database version production reports", m.live_database_version.clone());
        registry.register("live_database_age_seconds", "Age of the live daily database (build time)", m.live_database_age_seconds.clone());
        registry.register("build", "clamgate build information", Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]));
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts a gate result, labelled `pass` or `reject` and its first reason code.
    pub(crate) fn candidate(&self, verdict: crate::gate::Verdict, reason: Option<crate::reason::Code>) {
        let outcome = match verdict {
            crate::gate::Verdict::Pass => "pass",
            crate::gate::Verdict::Reject => "reject",
        };
        let reason = reason.map_or("none", crate::reason::Code::as_str);
        self.candidates.get_or_create(&vec![("outcome".into(), outcome.into()), ("reason".into(), reason.into())]).inc();
    }
}
