//! The gate's ring controller, a pure state machine over what the gate's
//! release is and what each host's `/readyz` says. A new release goes to
//! the first ring; a ring hands it on once every host ran it with `/readyz`
//! pass for the ring's soak; a host that fails on it, rejects it, rolls it
//! back or does not take it within `take_timeout` halts the rollout and
//! reverts that ring to what it ran before (later rings never see it).
//! Times are milliseconds since the epoch, so the state, persisted by
//! [`super::drive`], means the same after a gate restart.

mod state;

use std::collections::BTreeMap;

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

    /// Gives the target to the first ring still waiting, if every ring
    /// before it soaked and none of them (nor it) is paused.
    fn advance(&mut self, now: u64, fx: &mut Vec<Effect>) {
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
fn give(ring: &mut Ring, release: &str, phase: Phase, now: u64, fx: &mut Vec<Effect>) {
    ring.release = Some(release.to_string());
    ring.generation += 1;
    ring.phase = phase;
    ring.since = now;
    for h in ring.hosts.values_mut() {
        (h.took, h.healthy_since) = (false, None);
    }
    fx.push(Effect::Point { ring: ring.name.clone(), release: release.to_string(), generation: ring.generation });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TAKE: u64 = 60_000;

    fn rings() -> Vec<RingConfig> {
        vec![
            RingConfig { name: "canary".into(), hosts: vec!["h1".into(), "h2".into()], soak: Duration::from_secs(2) },
            RingConfig { name: "all".into(), hosts: vec!["h3".into()], soak: Duration::ZERO },
        ]
    }

    fn ok(live: &str, status: Status) -> Result<Report, String> {
        Ok(Report { status, live: Some(live.into()), wanted: Some(live.into()), state: Some("live".into()) })
    }

    fn reports(list: &[(&str, Result<Report, String>)]) -> BTreeMap<String, Result<Report, String>> {
        list.iter().map(|(h, r)| (h.to_string(), r.clone())).collect()
    }

    fn points(fx: &[Effect]) -> Vec<(String, String, u64)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Point { ring, release, generation } => Some((ring.clone(), release.clone(), *generation)),
                _ => None,
            })
            .collect()
    }

    /// Two releases, A fully out, then B started on the canary ring.
    fn with_a_out() -> Rollout {
        let mut r = Rollout::default();
        r.sync(&rings());
        r.on_live("A", 0);
        let all_a = reports(&[("h1", ok("A", Status::Pass)), ("h2", ok("A", Status::Pass)), ("h3", ok("A", Status::Pass))]);
        r.observe(&all_a, &rings(), TAKE, 1000);
        r.observe(&all_a, &rings(), TAKE, 3000);
        r.observe(&all_a, &rings(), TAKE, 3500);
        assert!(r.completed, "{r:#?}");
        r
    }

    #[test]
    fn a_good_release_reaches_the_next_ring_only_after_the_soak() {
        let mut r = with_a_out();
        let fx = r.on_live("B", 10_000);
        assert_eq!(points(&fx), [("canary".into(), "B".into(), 2)]);
        let b1 = reports(&[("h1", ok("B", Status::Pass)), ("h2", ok("B", Status::Pass)), ("h3", ok("A", Status::Pass))]);
        assert!(points(&r.observe(&b1, &rings(), TAKE, 11_000)).is_empty());
        assert!(points(&r.observe(&b1, &rings(), TAKE, 12_999)).is_empty(), "the soak is not over");
        let fx = r.observe(&b1, &rings(), TAKE, 13_000);
        assert_eq!(points(&fx), [("all".into(), "B".into(), 2)]);
        let b = reports(&[("h1", ok("B", Status::Pass)), ("h2", ok("B", Status::Pass)), ("h3", ok("B", Status::Pass))]);
        let fx = r.observe(&b, &rings(), TAKE, 14_000);
        assert!(fx.contains(&Effect::Journal(Event::RolloutCompleted { release: "B".into() })), "{fx:?}");
    }

    #[test]
    fn a_warn_restarts_the_soak() {
        let mut r = with_a_out();
        r.on_live("B", 10_000);
        let pass = reports(&[("h1", ok("B", Status::Pass)), ("h2", ok("B", Status::Pass))]);
        let warn = reports(&[("h1", ok("B", Status::Pass)), ("h2", ok("B", Status::Warn))]);
        r.observe(&pass, &rings(), TAKE, 11_000);
        r.observe(&warn, &rings(), TAKE, 12_000);
        r.observe(&pass, &rings(), TAKE, 12_500);
        assert!(points(&r.observe(&pass, &rings(), TAKE, 14_000)).is_empty());
        assert_eq!(points(&r.observe(&pass, &rings(), TAKE, 14_500)).len(), 1);
    }

    #[test]
    fn each_failure_halts_and_reverts_only_that_ring() {
        let rejected = Ok(Report { status: Status::Pass, live: Some("A".into()), wanted: Some("B".into()), state: Some("rejected".into()) });
        type Case<'a> = (&'a str, Vec<(&'a str, Result<Report, String>)>, u64, HaltReason);
        let cases: Vec<Case> = vec![
            ("fails on it for longer than take_timeout", vec![("h1", ok("B", Status::Fail))], 10_000 + TAKE + 1, HaltReason::Timeout),
            ("rejects", vec![("h1", rejected)], 11_000, HaltReason::Rejected),
            ("never takes it", vec![("h1", ok("A", Status::Pass))], 10_000 + TAKE + 1, HaltReason::Timeout),
            ("does not answer", vec![("h1", Err("connection refused".into()))], 10_000 + TAKE + 1, HaltReason::Timeout),
        ];
        for (what, rep, at, reason) in cases {
            let mut r = with_a_out();
            r.on_live("B", 10_000);
            let mut rep = reports(&rep);
            rep.insert("h2".into(), ok("B", Status::Pass));
            let fx = r.observe(&rep, &rings(), TAKE, at);
            assert_eq!(points(&fx), [("canary".into(), "A".into(), 3)], "{what}");
            assert_eq!(r.halted.as_ref().map(|h| (h.reason, h.host.as_deref())), Some((reason, Some("h1"))), "{what}");
            assert_eq!(r.rings[1].release.as_deref(), Some("A"), "{what}: the later ring never sees B");
            assert!(points(&r.observe(&rep, &rings(), TAKE, at + 100_000)).is_empty(), "{what}: halted stays halted");
        }
        // Passed on it, then failed: failed.
        let mut r = with_a_out();
        r.on_live("B", 10_000);
        r.observe(&reports(&[("h1", ok("B", Status::Fail))]), &rings(), TAKE, 10_500);
        assert_eq!(r.halted, None, "not taken yet: production may still be starting");
        r.observe(&reports(&[("h1", ok("B", Status::Pass))]), &rings(), TAKE, 11_000);
        r.observe(&reports(&[("h1", ok("B", Status::Fail))]), &rings(), TAKE, 11_500);
        assert_eq!(r.halted.map(|h| h.reason), Some(HaltReason::Failed));
        // Ran it, then went back: rolled back.
        let mut r = with_a_out();
        r.on_live("B", 10_000);
        r.observe(&reports(&[("h1", ok("B", Status::Pass))]), &rings(), TAKE, 11_000);
        r.observe(&reports(&[("h1", ok("A", Status::Pass))]), &rings(), TAKE, 11_500);
        assert_eq!(r.halted.map(|h| h.reason), Some(HaltReason::RolledBack));
    }

    #[test]
    fn revert_takes_the_ring_and_later_ones_back_and_a_gate_rollback_every_ring() {
        let mut r = with_a_out();
        r.on_live("B", 10_000);
        let b = reports(&[("h1", ok("B", Status::Pass)), ("h2", ok("B", Status::Pass)), ("h3", ok("B", Status::Pass))]);
        r.observe(&b, &rings(), TAKE, 11_000);
        r.observe(&b, &rings(), TAKE, 13_000);
        r.observe(&b, &rings(), TAKE, 13_500);
        assert!(r.completed);
        let fx = r.revert("canary", "ops", 20_000).unwrap();
        assert_eq!(points(&fx), [("canary".into(), "A".into(), 3), ("all".into(), "A".into(), 3)]);
        assert_eq!(r.revert("canary", "ops", 20_000), Err(CommandError::NothingToRevert("canary".into())));
        assert_eq!(r.revert("nope", "ops", 0), Err(CommandError::NoRing("nope".into())));
        assert!(points(&r.observe(&b, &rings(), TAKE, 30_000)).is_empty(), "a revert is not undone by the controller");
        // The gate itself goes back to A while B is out: every ring follows at once.
        let mut r = with_a_out();
        r.on_live("B", 10_000);
        assert_eq!(points(&r.on_live("A", 11_000)), [("canary".into(), "A".into(), 3)]);
        assert_eq!(r.rings[1].generation, 1, "the later ring already runs A");
    }

    /// After a halt the ring runs what it ran before; a revert then takes
    /// every ring one release further back (the fleet rollback after a bad update).
    #[test]
    fn a_revert_after_a_halt_goes_back_past_the_halted_release() {
        let mut r = with_a_out();
        r.on_live("B", 10_000);
        let b = reports(&[("h1", ok("B", Status::Pass)), ("h2", ok("B", Status::Pass)), ("h3", ok("B", Status::Pass))]);
        r.observe(&b, &rings(), TAKE, 11_000);
        r.observe(&b, &rings(), TAKE, 13_000);
        r.observe(&b, &rings(), TAKE, 13_500);
        r.on_live("C", 20_000);
        let rejected = Ok(Report { status: Status::Pass, live: Some("B".into()), wanted: Some("C".into()), state: Some("rejected".into()) });
        let fx = r.observe(&reports(&[("h1", rejected)]), &rings(), TAKE, 21_000);
        assert_eq!(points(&fx), [("canary".into(), "B".into(), 4)]);
        let fx = r.revert("canary", "ops", 30_000).unwrap();
        assert_eq!(points(&fx), [("canary".into(), "A".into(), 5), ("all".into(), "A".into(), 3)]);
    }

    fn all_on(id: &str) -> BTreeMap<String, Result<Report, String>> {
        reports(&[("h1", ok(id, Status::Pass)), ("h2", ok(id, Status::Pass)), ("h3", ok(id, Status::Pass))])
    }

    /// `id` goes live on the gate at `t` and reaches every ring.
    fn complete(r: &mut Rollout, id: &str, t: u64) {
        r.on_live(id, t);
        for dt in [1000, 3000, 3500] {
            r.observe(&all_on(id), &rings(), TAKE, t + dt);
        }
        assert!(r.completed && r.target.as_deref() == Some(id), "{r:#?}");
    }

    fn rejected(live: &str, wanted: &str) -> Result<Report, String> {
        Ok(Report { status: Status::Pass, live: Some(live.into()), wanted: Some(wanted.into()), state: Some("rejected".into()) })
    }

    /// A release halted on the canary ring, made live on the gate again (a
    /// rollback from a newer one), is rolled out from the first ring, not
    /// given to every ring at once: the later ring never runs it.
    #[test]
    fn a_halted_release_live_again_starts_from_the_first_ring() {
        let mut r = with_a_out();
        r.on_live("B", 10_000);
        r.observe(&reports(&[("h1", rejected("A", "B"))]), &rings(), TAKE, 11_000);
        assert_eq!(r.halted.as_ref().map(|h| h.reason), Some(HaltReason::Rejected));
        r.on_live("C", 20_000);
        let fx = r.on_live("B", 21_000);
        assert_eq!(points(&fx), [("canary".into(), "B".into(), 5)]);
        assert_eq!(r.rings[1].release.as_deref(), Some("A"), "ring `all` never sees B");
        assert!(fx.contains(&Effect::Journal(Event::RolloutStarted { release: "B".into() })), "{fx:?}");
        // Rejected again: halted again, ring `all` still on A.
        let fx = r.observe(&reports(&[("h1", rejected("A", "B")), ("h2", ok("A", Status::Pass))]), &rings(), TAKE, 22_000);
        assert_eq!(points(&fx), [("canary".into(), "C".into(), 6)]);
        assert_eq!(r.rings[1].release.as_deref(), Some("A"));
        // Nor does a release that only got partway (C on the canary ring).
        let mut r = with_a_out();
        r.on_live("C", 10_000);
        r.on_live("D", 11_000);
        let fx = r.on_live("C", 12_000);
        assert_eq!(points(&fx), [("canary".into(), "C".into(), 4)]);
        assert_eq!(r.rings[1].release.as_deref(), Some("A"));
        // A completed one still brings every ring back at once.
        let mut r = with_a_out();
        complete(&mut r, "B", 10_000);
        r.on_live("C", 20_000);
        assert_eq!(points(&r.on_live("B", 21_000)), [("canary".into(), "B".into(), 4)]);
    }

    /// A, B out everywhere, C on the canary ring: `revert canary` takes the
    /// canary ring back to B and leaves ring `all` on B, which it runs.
    #[test]
    fn revert_mid_rollout_leaves_a_later_ring_that_never_ran_the_release() {
        let mut r = with_a_out();
        complete(&mut r, "B", 10_000);
        r.on_live("C", 20_000);
        let fx = r.revert("canary", "ops", 21_000).unwrap();
        assert_eq!(points(&fx), [("canary".into(), "B".into(), 4)]);
        assert_eq!((r.rings[1].release.as_deref(), r.rings[1].generation), (Some("B"), 2));
        assert_eq!(r.rings[1].history, ["A"]);
    }

    /// A host that took the release and then stops answering halts the
    /// rollout once `take_timeout` passes, not never.
    #[test]
    fn a_host_unreachable_after_taking_it_halts_after_take_timeout() {
        let mut r = with_a_out();
        r.on_live("B", 10_000);
        let b = reports(&[("h1", ok("B", Status::Pass)), ("h2", ok("B", Status::Pass))]);
        r.observe(&b, &rings(), TAKE, 11_000);
        let gone = reports(&[("h1", Err("connection refused".into())), ("h2", ok("B", Status::Pass))]);
        r.observe(&gone, &rings(), TAKE, 12_000);
        assert_eq!(r.rings[0].hosts["h1"].unreachable_since, Some(12_000));
        // An answer in between starts the count again.
        r.observe(&b, &rings(), TAKE, 12_500);
        assert_eq!(r.rings[0].hosts["h1"].unreachable_since, None);
        r.observe(&gone, &rings(), TAKE, 13_000);
        assert!(points(&r.observe(&gone, &rings(), TAKE, 13_000 + TAKE)).is_empty());
        assert_eq!(r.halted, None);
        assert_eq!(r.rings[0].phase, Phase::Taking, "not soaked while a host does not answer");
        let fx = r.observe(&gone, &rings(), TAKE, 13_001 + TAKE);
        assert_eq!(points(&fx), [("canary".into(), "A".into(), 3)]);
        let halt = r.halted.as_ref().unwrap();
        assert_eq!((halt.reason, halt.host.as_deref()), (HaltReason::Unreachable, Some("h1")));
        assert!(halt.detail.contains("connection refused"), "{}", halt.detail);
        assert!(fx.iter().any(|e| matches!(e, Effect::Journal(Event::RolloutHalted { reason: HaltReason::Unreachable, .. }))), "{fx:?}");
        assert_eq!(r.rings[1].release.as_deref(), Some("A"));
    }

    /// The first release ever halted: no earlier release to send the ring
    /// to, so its pointer stays on it, one generation on (the driver marks
    /// it `halted`, and a host not running it does not take it), the
    /// rollout stays halted and no later ring gets it; the way out is a new
    /// release on the gate.
    #[test]
    fn a_halt_on_the_first_release_ever_keeps_the_pointer_and_stops_there() {
        let mut r = Rollout::default();
        r.sync(&rings());
        assert_eq!(points(&r.on_live("A", 0)), [("canary".into(), "A".into(), 1)]);
        let fx = r.observe(&reports(&[("h1", Err("refused".into())), ("h2", ok("A", Status::Pass))]), &rings(), TAKE, TAKE + 1);
        assert_eq!(points(&fx), [("canary".into(), "A".into(), 2)]);
        assert!(fx.iter().any(|e| matches!(e, Effect::Journal(Event::RolloutHalted { to: None, .. }))), "{fx:?}");
        assert_eq!((r.rings[0].release.as_deref(), r.rings[0].phase), (Some("A"), Phase::Halted));
        assert_eq!(r.revert("canary", "ops", TAKE + 2), Err(CommandError::NothingToRevert("canary".into())));
        assert!(points(&r.observe(&all_on("A"), &rings(), TAKE, 10 * TAKE)).is_empty());
        assert_eq!(r.rings[1].release, None, "the later ring never gets it");
        assert_eq!(points(&r.on_live("B", 10 * TAKE)), [("canary".into(), "B".into(), 3)]);
        assert_eq!(r.rings[0].history, ["A"]);
    }

    #[test]
    fn a_paused_ring_neither_takes_nor_hands_on() {
        let mut r = with_a_out();
        r.pause("all", true, "ops", 0).unwrap();
        r.on_live("B", 10_000);
        let b = reports(&[("h1", ok("B", Status::Pass)), ("h2", ok("B", Status::Pass))]);
        r.observe(&b, &rings(), TAKE, 11_000);
        assert!(points(&r.observe(&b, &rings(), TAKE, 13_000)).is_empty());
        let fx = r.pause("all", false, "ops", 14_000).unwrap();
        assert_eq!(points(&fx), [("all".into(), "B".into(), 2)]);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut r = with_a_out();
        r.on_live("B", 10_000);
        let back: Rollout = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
