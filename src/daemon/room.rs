//! The daemon's side of the memory guard: each check's outcome goes to
//! `/readyz` (a warn with the numbers while deferred), `/metrics`, and the
//! log (once per spell of deferrals); the journal line is the run's
//! (`candidate.deferred`). The guard's first estimate after a restart scales
//! from the last canary the journal recorded.

use std::sync::Mutex;

use crate::health::Health;
use crate::journal::{Entry, Event};
use crate::memguard::{Deferral, Guard, GuardConfig, Room, Sample};

/// The guard and whether its last check deferred.
pub(super) struct Guarded {
    guard: Guard,
    deferred: Mutex<Option<Deferral>>,
}

impl Guarded {
    pub(super) fn new(config: GuardConfig, journal: &[Entry]) -> Guarded {
        Guarded { guard: Guard::host(config, last_canary(journal)), deferred: Mutex::new(None) }
    }

    /// A run ended without being deferred (rejected before any canary,
    /// cancelled, checked): no deferral stands any more.
    pub(super) fn not_deferred(&self, health: &Health) {
        if self.deferred.lock().expect("not poisoned").take().is_some() {
            health.set_notice(None);
            health.metrics.memory_guard(None, None);
        }
    }

    pub(super) fn reporting<'a>(&'a self, health: &'a Health) -> Reporting<'a> {
        Reporting { guarded: self, health }
    }
}

/// The newest canary the journal has both figures of.
fn last_canary(journal: &[Entry]) -> Option<Sample> {
    journal.iter().rev().find_map(|e| match &e.event {
        Event::CandidateChecked(c) => {
            let stats = c.details.as_ref()?.canary.as_ref()?;
            Some(Sample { signatures: stats.signatures?, peak_bytes: stats.peak_rss_bytes? })
        }
        _ => None,
    })
}

/// [`Room`] for one candidate run.
pub(super) struct Reporting<'a> {
    guarded: &'a Guarded,
    health: &'a Health,
}

impl Room for Reporting<'_> {
    fn before_canary(&self, signatures: u64) -> Result<(), Deferral> {
        let looked = self.guarded.guard.look(signatures);
        self.health.metrics.memory_guard(looked.outcome.as_ref().err().map(|d| d.limit), looked.tightest);
        let mut last = self.guarded.deferred.lock().expect("not poisoned");
        match &looked.outcome {
            Ok(()) => {
                if last.take().is_some() {
                    tracing::info!(signatures, "memory guard: room for the canary again");
                }
                self.health.set_notice(None);
            }
            Err(d) => {
                if last.is_none() {
                    tracing::warn!(signatures, limit = d.limit.as_str(), "{d}; checked again every rescan_interval");
                }
                *last = Some(d.clone());
                self.health.set_notice(Some(d.to_string()));
            }
        }
        looked.outcome
    }

    fn after_canary(&self, sample: Sample) {
        self.guarded.guard.observed(sample);
    }
}
