//! What `clamgate run` logs at the default level, as an operator reads it:
//! the lifecycle, and a failing health probe as one spell, not a line per
//! probe. (The milter's reject line is checked through a real Postfix in
//! tests/milter_postfix.rs, its tempfail spell in tests/milter_protocol.rs.)

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use support::daemon::{Env, set_id, wait_ready};
use support::*;

/// `clamgate_probes_total{result="fail"}` from /metrics.
fn failed_probes(health: SocketAddr) -> u64 {
    let Ok(mut s) = std::net::TcpStream::connect(health) else { return 0 };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().find_map(|l| l.strip_prefix("clamgate_probes_total{result=\"fail\"} ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Regression: the prober wrote a WARN line every probe_interval while
/// production clamd was down (86,400 lines a day at 1 s), and the default
/// level (warn) hid the "started" line. Now, with CLAMGATE_LOG unset: the
/// start, the verdict and the promotion at INFO, one line when probes
/// start failing, none per probe, one when they pass again.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_level_logs_the_lifecycle_and_a_failing_probe_once() {
    let env = Env::new("", "");
    env.put("daily-v1");
    let started = Instant::now();
    // An empty CLAMGATE_LOG is the default, as if unset.
    let d = env.spawn_with(&[("CLAMGATE_LOG", "")]);
    let id = set_id("daily-v1");
    // Production clamd is not running: the promotion stands, and probes fail.
    env.wait_event("promotion.done", Some(&id)).await;
    eventually("ten failed probes (200 ms apart)", || async { failed_probes(env.health) >= 10 }).await;
    let log = env.log();
    assert_eq!(count(&log, "clamgate daemon started"), 1, "{log}");
    assert_eq!(count(&log, &format!("candidate {id} passed")), 1, "{log}");
    assert_eq!(count(&log, "health probe failing: production clamd is down"), 1, "{log}");
    // A reminder at most once a minute of the test's own run: never one per probe.
    let reminders = count(&log, "health probe still failing");
    assert!(reminders as u64 <= started.elapsed().as_secs() / 60, "{log}");
    assert_eq!(count(&log, " DEBUG "), 0, "{log}");

    let _prod = env.start_production(&[]).await;
    wait_ready(&env, 200).await;
    eventually("the spell's end line", || async { count(&env.log(), "health probe passes again after") == 1 }).await;
    assert!(d.stop().success(), "{}", env.log());
    let log = env.log();
    let ended = log.lines().find(|l| l.contains("health probe passes again")).unwrap();
    assert!(ended.contains(" INFO ") && ended.contains("failed probes") && ended.contains("spell=\"probe_failing\""), "{ended}");
    assert_eq!(count(&log, "health probe failing"), 1, "{log}");
    assert_eq!(count(&log, "clamgate daemon stopped"), 1, "{log}");
    // Everything at WARN or above is the spell's start (plus its reminders)
    // and the promotion that found production down.
    let warns = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).count();
    assert!(warns <= 2 + count(&log, "health probe still failing"), "{log}");
}
