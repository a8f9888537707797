//! The gate's ring controller, a pure state machine over what the gate's
//! release is and what each host's `/readyz` says. A new release goes to
//! the first ring; a ring hands it on once every host ran it with `/readyz`
//! pass for the ring's soak; a host that fails on it, rejects it, rolls it
//! back or does not take it within `take_timeout` halts the rollout and
//! reverts that ring to what it ran before (later rings never see it).
//! Times are milliseconds since the epoch, so the state, persisted by
//! [`super::drive`], means the same after a gate restart.

mod ring;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use ring::give;
pub(crate) use state::{CommandError, Effect, Halt, HaltReason, Phase, Report, Ring, Rollout};

use super::config::RingConfig;
use crate::journal::Event;
use crate::status::Status;

impl Rollout {
    /// The rings as configured now: state kept by name, new rings added.
    pub(crate) fn sync(&mut self, rings: &[RingConfig]) {
        let mut old: BTreeMap<String, Ring> = self.rings.drain(..).map(|r| (r.name.clone(), r)).collect();
        for c in rings {
            let mut ring = old.remove(&c.name).unwrap_or_else(|| Ring {
                name: c.name.clone(),
                release: None,
                history: Vec::new(),
                generation: 0,
                phase: Phase::Waiting,
                since: 0,
                paused: false,
                hosts: BTreeMap::new(),
            });
            ring.hosts.retain(|h, _| c.hosts.contains(h));
            for h in &c.hosts {
                ring.hosts.entry(h.clone()).or_default();
            }
            self.rings.push(ring);
        }
    }

    /// The gate's live release is `live`.
    pub(crate) fn on_live(&mut self, live: &str, now: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.target.as_deref() == Some(live) {
            return fx;
        }
        // Only a release that reached every ring counts as rolled out: one
        // halted or still partway is rolled out again from the first ring,
        // so the later rings never see it before the earlier ones passed on it.
        let finished = std::mem::take(&mut self.completed).then(|| self.target.take()).flatten();
        self.halted = None;
        if self.seen.iter().any(|s| s == live) {
            // The gate went back: so does every ring, at once.
            self.target = Some(live.to_string());
            for i in 0..self.rings.len() {
                if self.rings[i].release.as_deref() != Some(live) {
                    let ring = &mut self.rings[i];
                    if let Some(pos) = ring.history.iter().rposition(|h| h == live) {
                        ring.history.truncate(pos);
                    }
                    give(ring, live, Phase::Reverted, now, &mut fx);
                    fx.push(Effect::Journal(Event::RolloutReverted { ring: ring.name.clone(), to: Some(live.to_string()), by: "gate".into() }));
                }
            }
            return fx;
        }
        if let Some(t) = finished {
            self.seen.retain(|s| *s != t);
            self.seen.push(t);
            let drop = self.seen.len().saturating_sub(100);
            self.seen.drain(..drop);
        }
        self.target = Some(live.to_string());
        for ring in &mut self.rings {
            ring.phase = Phase::Waiting;
        }
        fx.push(Effect::Journal(Event::RolloutStarted { release: live.to_string() }));
        self.advance(now, &mut fx);
        fx
    }

    /// Hosts' answers (an `Err` is a host that did not answer), then
    /// whatever follows from them and from the time.
    pub(crate) fn observe(&mut self, reports: &BTreeMap<String, Result<Report, String>>, rings: &[RingConfig], take_timeout: u64, now: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        for ring in &mut self.rings {
            for (name, host) in ring.hosts.iter_mut() {
                match reports.get(name) {
                    Some(Ok(r)) => {
                        host.seen_at = Some(now);
                        (host.error, host.unreachable_since) = (None, None);
                        (host.live, host.status) = (r.live.clone(), Some(r.status));
                        host.state = r.state.clone().filter(|_| r.wanted == ring.release);
                    }
                    Some(Err(e)) => {
                        host.error = Some(e.clone());
                        host.unreachable_since.get_or_insert(now);
                    }
                    None => {}
                }
            }
        }
        let Some(target) = self.target.clone() else { return fx };
        if self.halted.is_some() {
            return fx;
        }
        if let Some(i) = self.rings.iter().position(|r| r.phase == Phase::Taking) {
            let soak = rings.iter().find(|c| c.name == self.rings[i].name).map_or(0, |c| c.soak.as_millis() as u64);
            match judge(&mut self.rings[i], &target, reports, soak, take_timeout, now) {
                Verdict::Halt(host, reason, detail) => {
                    let ring = &mut self.rings[i];
                    let to = ring.history.pop();
                    if let Some(to) = &to {
                        give(ring, to, Phase::Halted, now, &mut fx);
                    } else {
                        // Nothing to go back to: the pointer stays, marked
                        // halted (a new generation), so no host takes it anew.
                        ring.generation += 1;
                        fx.push(Effect::Point { ring: ring.name.clone(), release: target.clone(), generation: ring.generation });
                    }
                    ring.phase = Phase::Halted;
                    let halt = Halt { release: target.clone(), ring: ring.name.clone(), host, reason, detail };
                    fx.push(Effect::Journal(Event::RolloutHalted {
                        release: target,
                        ring: halt.ring.clone(),
                        host: halt.host.clone(),
                        reason,
                        detail: halt.detail.clone(),
                        to,
                    }));
                    self.halted = Some(halt);
                    return fx;
                }
                Verdict::Soaked => self.rings[i].phase = Phase::Soaked,
                Verdict::Wait => return fx,
            }
        }
        self.advance(now, &mut fx);
        fx
    }
}

enum Verdict {
    Wait,
    Soaked,
    Halt(Option<String>, HaltReason, String),
}

fn judge(ring: &mut Ring, target: &str, reports: &BTreeMap<String, Result<Report, String>>, soak: u64, take_timeout: u64, now: u64) -> Verdict {
    let mut soaked = true;
    for (name, host) in ring.hosts.iter_mut() {
        let halt = |reason, detail: String| Verdict::Halt(Some(name.clone()), reason, detail);
        match reports.get(name) {
            Some(Ok(r)) if r.live.as_deref() == Some(target) => {
                // Taken once it passed on it: until then a failing probe is
                // a host still starting (or production not yet up), which
                // `take_timeout` bounds.
                if r.status == Status::Fail && host.took {
                    return halt(HaltReason::Failed, format!("{name} /readyz fails on {target}"));
                }
                if r.status == Status::Pass {
                    host.took = true;
                    host.healthy_since.get_or_insert(now);
                } else {
                    host.healthy_since = None;
                }
            }
            Some(Ok(r)) => {
                host.healthy_since = None;
                if r.wanted.as_deref() == Some(target) && r.state.as_deref() == Some("rejected") {
                    return halt(HaltReason::Rejected, format!("{name} rejected {target}"));
                }
                if host.took {
                    return halt(HaltReason::RolledBack, format!("{name} went back from {target} to {}", r.live.as_deref().unwrap_or("nothing")));
                }
            }
            _ => {
                host.healthy_since = None;
                if host.took
                    && let Some(t) = host.unreachable_since
                    && now.saturating_sub(t) > take_timeout
                {
                    let why = host.error.as_deref().unwrap_or("no answer");
                    return halt(HaltReason::Unreachable, format!("{name} took {target}, then did not answer for {} s: {why}", take_timeout / 1000));
                }
            }
        }
        if !host.took && now.saturating_sub(ring.since) > take_timeout {
            return halt(HaltReason::Timeout, format!("{name} did not run {target} within {} s", take_timeout / 1000));
        }
        soaked &= host.healthy_since.is_some_and(|t| now.saturating_sub(t) >= soak);
    }
    if ring.hosts.is_empty() {
        soaked = now.saturating_sub(ring.since) >= soak;
    }
    if soaked { Verdict::Soaked } else { Verdict::Wait }
}
