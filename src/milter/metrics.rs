//! The milter's own `/metrics`: what it did with mail and how old the health
//! answer was that it acted on. Served on its own loopback address because
//! the milter runs apart from the daemon (another unit, often another user).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::health::http::{Routes, metrics_reply};

/// What became of a message (or, in gate mode, of a session or recipient
/// at the gated stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Action {
    /// Passed on: gated through, scanned clean, or infected and marked or
    /// quarantined as `on_infected` says.
    Accept,
    /// 451 because scanning is not healthy.
    Tempfail,
    /// 554: infected and `on_infected = "reject"`.
    Reject,
    /// 451 because of our own failure with this message (clamd error, a
    /// scan that could not finish, a header that could not be added).
    Error,
}

impl Action {
    const ALL: [Action; 4] = [Action::Accept, Action::Tempfail, Action::Reject, Action::Error];

    fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Tempfail => "tempfail",
            Action::Reject => "reject",
            Action::Error => "error",
        }
    }
}

impl EncodeLabelValue for Action {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabels {
    action: Action,
}

pub(crate) struct MilterMetrics {
    registry: Registry,
    messages: Family<ActionLabels, Counter>,
    scan_latency: Histogram,
    health_age: Gauge<f64, AtomicU64>,
    health_up: Gauge,
}

impl Default for MilterMetrics {
    fn default() -> Self {
        let m = MilterMetrics {
            registry: Registry::with_prefix("clamgate_milter"),
            messages: Family::default(),
            scan_latency: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            health_age: Gauge::default(),
            health_up: Gauge::default(),
        };
        for action in Action::ALL {
            m.messages.get_or_create_owned(&ActionLabels { action });
        }
        let mut r = m.registry;
        r.register("messages", "Milter decisions by action (per message; in gate mode per gated session or recipient)", m.messages.clone());
        r.register("scan_latency_seconds", "From the end of a message to clamd's verdict (scan mode)", m.scan_latency.clone());
        r.register("health_age_seconds", "Age of the cached /readyz answer the milter last acted on", m.health_age.clone());
        r.register("health_up", "1 when that answer said scanning is healthy", m.health_up.clone());
        r.register(
            "build",
            "clamgate build information",
            prometheus_client::metrics::info::Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]),
        );
        MilterMetrics { registry: r, ..m }
    }
}

impl MilterMetrics {
    pub(crate) fn action(&self, action: Action) {
        self.messages.get_or_create(&ActionLabels { action }).inc();
    }

    pub(crate) fn scanned(&self, took: Duration) {
        self.scan_latency.observe(took.as_secs_f64());
    }

    pub(crate) fn health(&self, age: Duration, healthy: bool) {
        self.health_age.set(age.as_secs_f64());
        self.health_up.set(i64::from(healthy));
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Routes for MilterMetrics {
    fn get(&self, path: &str) -> Option<Response<Full<Bytes>>> {
        (path == "/metrics").then(|| metrics_reply(self.encode()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_is_exported_from_the_start() {
        let m = MilterMetrics::default();
        m.action(Action::Tempfail);
        let text = m.encode();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let samples = prometheus_parse::Scrape::parse(lines).expect("our exposition parses").samples;
        for action in Action::ALL {
            let want = f64::from(u8::from(action == Action::Tempfail));
            let got = samples.iter().find(|s| s.metric == "clamgate_milter_messages_total" && s.labels.get("action") == Some(action.as_str()));
            let got = got.map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            });
            assert_eq!(got, Some(want), "{action:?}:\n{text}");
        }
    }
}
