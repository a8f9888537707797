//! Unit tests of the ring controller as a whole: observation, advance,
//! halts, reverts and pauses, driven through `Rollout`'s public methods.
//! Separate because they outgrow the state machine they exercise.

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
