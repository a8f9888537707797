//! Per-ring rollout metrics in the daemon's registry (names under
//! `clamgate_rollout_`; `monitoring/` alerts on `clamgate_rollout_halted`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::rollout::{Phase, Rollout};
use crate::status::Status;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RingLabels {
    pub(crate) ring: String,
}

#[derive(Debug, Default)]
pub(crate) struct RolloutMetrics {
    halted: Family<RingLabels, Gauge>,
    generation: Family<RingLabels, Gauge>,
    hosts: Family<RingLabels, Gauge>,
    healthy: Family<RingLabels, Gauge>,
    paused: Family<RingLabels, Gauge>,
}

impl RolloutMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register("rollout_halted", "1 when the rollout halted on this ring (a host failed, rejected or did not take the release)", self.halted.clone());
        r.register("rollout_ring_generation", "Generation of the ring's signed pointer", self.generation.clone());
        r.register("rollout_ring_hosts", "Hosts in the ring", self.hosts.clone());
        r.register("rollout_ring_hosts_healthy", "Hosts running the ring's release with /readyz pass", self.healthy.clone());
        r.register("rollout_ring_paused", "1 while an operator paused the ring", self.paused.clone());
    }

    pub(crate) fn set(&self, state: &Rollout) {
        for ring in &state.rings {
            let l = RingLabels { ring: ring.name.clone() };
            let halted = ring.phase == Phase::Halted || state.halted.as_ref().is_some_and(|h| h.ring == ring.name);
            self.halted.get_or_create(&l).set(halted as i64);
            self.generation.get_or_create(&l).set(ring.generation as i64);
            self.hosts.get_or_create(&l).set(ring.hosts.len() as i64);
            let healthy = ring.hosts.values().filter(|h| h.live.is_some() && h.live == ring.release && h.status == Some(Status::Pass)).count();
            self.healthy.get_or_create(&l).set(healthy as i64);
            self.paused.get_or_create(&l).set(ring.paused as i64);
        }
    }
}
