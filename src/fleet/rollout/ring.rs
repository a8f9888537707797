//! Ring advance and revert: handing the target to the next waiting ring,
//! pausing a ring, an operator's `rollout revert`, and the pointer move
//! ([`give`]) all of them share. Kept apart from the host-observation
//! handling in `mod.rs`, which decides *when* a ring soaked or halts.

use super::state::{CommandError, Effect, Halt, HaltReason, Phase, Ring, Rollout};
use crate::journal::Event;

impl Rollout {
    /// Gives the target to the first ring still waiting, if every ring
    /// before it soaked and none of them (nor it) is paused.
    pub(super) fn advance(&mut self, now: u64, fx: &mut Vec<Effect>) {
        let Some(target) = self.target.clone() else { return };
        if self.halted.is_some() {
            return;
        }
        match self.rings.iter().position(|r| r.phase != Phase::Soaked) {
            None if !self.completed => {
                self.completed = true;
                fx.push(Effect::Journal(Event::RolloutCompleted { release: target }));
            }
            Some(i) if self.rings[i].phase == Phase::Waiting && !self.rings[..=i].iter().any(|r| r.paused) => {
                let ring = &mut self.rings[i];
                if let Some(r) = ring.release.clone().filter(|r| *r != target) {
                    ring.history.push(r);
                    let drop = ring.history.len().saturating_sub(20);
                    ring.history.drain(..drop);
                }
                give(ring, &target, Phase::Taking, now, fx);
                fx.push(Effect::Journal(Event::RolloutAdvanced { release: target, ring: ring.name.clone() }));
            }
            _ => {}
        }
    }

    pub(crate) fn pause(&mut self, ring: &str, paused: bool, by: &str, now: u64) -> Result<Vec<Effect>, CommandError> {
        let r = self.rings.iter_mut().find(|r| r.name == ring).ok_or_else(|| CommandError::NoRing(ring.into()))?;
        r.paused = paused;
        let ev = if paused { Event::RolloutPaused { ring: ring.into(), by: by.into() } } else { Event::RolloutResumed { ring: ring.into(), by: by.into() } };
        let mut fx = vec![Effect::Journal(ev)];
        if !paused {
            self.advance(now, &mut fx);
        }
        Ok(fx)
    }

    /// `rollout revert RING`: that ring back to what it ran before, and
    /// every later ring that runs the same release with it (a later ring
    /// still on an older one stays there: it never ran the bad one); the
    /// rollout stays halted until the gate has a new release.
    pub(crate) fn revert(&mut self, ring: &str, by: &str, now: u64) -> Result<Vec<Effect>, CommandError> {
        let i = self.rings.iter().position(|r| r.name == ring).ok_or_else(|| CommandError::NoRing(ring.into()))?;
        let bad = self.rings[i].release.clone();
        let mut fx = Vec::new();
        for r in &mut self.rings[i..] {
            if r.release != bad {
                continue;
            }
            let Some(to) = r.history.pop() else { continue };
            give(r, &to, Phase::Reverted, now, &mut fx);
            fx.push(Effect::Journal(Event::RolloutReverted { ring: r.name.clone(), to: Some(to), by: by.into() }));
        }
        if fx.is_empty() {
            return Err(CommandError::NothingToRevert(ring.into()));
        }
        let release = self.target.clone().unwrap_or_default();
        self.halted = Some(Halt { release, ring: ring.into(), host: None, reason: HaltReason::Operator, detail: format!("reverted by {by}") });
        Ok(fx)
    }
}

/// A ring's pointer moves to `release`, one generation on.
pub(super) fn give(ring: &mut Ring, release: &str, phase: Phase, now: u64, fx: &mut Vec<Effect>) {
    ring.release = Some(release.to_string());
    ring.generation += 1;
    ring.phase = phase;
    ring.since = now;
    for h in ring.hosts.values_mut() {
        (h.took, h.healthy_since) = (false, None);
    }
    fx.push(Effect::Point { ring: ring.name.clone(), release: release.to_string(), generation: ring.generation });
}
