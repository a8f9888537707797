//! The shipped alert rules in a real Prometheus (the Debian binary, 1 s scrape
//! and evaluation, a copy of the rules with short `for:`) scraping a real
//! `clamgate run` and `clamgate milter`: ClamgateScanningUnhealthy fires
//! when production clamd is killed and when a clamd answers PING but cannot
//! scan, and resolves each time scanning works again; ClamgateMilterTempfailing
//! fires while the milter tempfails mail.

mod support;

use indymilter_test::Status;
use support::daemon::{Env, live_v1};
use support::milter::rcpt;
use support::prometheus::{Prometheus, RuleFile};
use support::*;

const UNHEALTHY: &str = "ClamgateScanningUnhealthy";
const TEMPFAILING: &str = "ClamgateMilterTempfailing";

/// What the failure message adds: both clamgate logs.
fn logs(env: &Env) -> String {
    format!("daemon log:\n{}\nmilter log:\n{}", env.log(), std::fs::read_to_string(env.path().join("milter.log")).unwrap_or_default())
}

async fn firing(prom: &Prometheus, env: &Env, alert: &str, job: &str, why: &str) {
    prom.wait(&format!("{alert} firing for job {job} ({why})"), || logs(env), async |p| p.alert(alert, job).is_some_and(|a| a.state == "firing")).await;
    let a = prom.alert(alert, job).unwrap();
    let description = a.annotations.get("description").map_or("", String::as_str);
    assert!(description.contains("`clamgate ") && !description.contains("error expanding"), "{alert}'s description as Prometheus renders it: {description}");
}

async fn resolved(prom: &Prometheus, env: &Env, alert: &str, job: &str, why: &str) {
    prom.wait(&format!("{alert} resolved for job {job} ({why})"), || logs(env), async |p| p.alert(alert, job).is_none()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scanning_and_tempfail_alerts_fire_and_resolve_in_a_real_prometheus() {
    let (env, _d, mut prod) = live_v1("").await;
    let m = env.spawn_milter("mode = \"gate\"\nhealth_ttl = \"100ms\"\n");
    let mut rules = RuleFile::shipped();
    for r in rules.rules_mut() {
        r.for_ = Some("2s".into());
    }
    let prom = Prometheus::start(&[("clamgate", env.health), ("clamgate-milter", m.metrics)], &rules);
    prom.wait_targets_up(|| logs(&env)).await;
    prom.wait("Prometheus has seen production scanning", || logs(&env), async |p| p.value(r#"clamgate_probe_up{job="clamgate"}"#) == Some(1.0)).await;
    assert!(prom.alert(UNHEALTHY, "clamgate").is_none(), "{UNHEALTHY} while production scans: {:#?}", prom.alerts());
    assert_eq!(rcpt(m.addr).await, Status::Accept);

    // Production clamd killed: cannot scan, and the milter tempfails mail
    // for as long as it takes Prometheus to notice.
    prod.process.kill();
    firing(&prom, &env, UNHEALTHY, "clamgate", "production clamd killed").await;
    prom.wait(
        &format!("{TEMPFAILING} firing while mail is tempfailed"),
        || logs(&env),
        async |p| {
            let status = rcpt(m.addr).await;
            assert!(matches!(status, Status::Tempfail { .. }), "mail while production is down: {status:?}");
            p.alert(TEMPFAILING, "clamgate-milter").is_some_and(|a| a.state == "firing")
        },
    )
    .await;

    drop(prod);
    let prod = env.start_production(&[]).await;
    resolved(&prom, &env, UNHEALTHY, "clamgate", "production clamd back").await;

    // A clamd that answers PING (and VERSION) but whose database detects
    // nothing: up in a port check, unable to scan in the probe.
    drop(prod);
    let wrong = Clamd::start_in(&set("miss"), &env.path().join("prod"), &[]).await.expect("the no-detection clamd starts");
    wrong.client().ping().await.expect("it answers PING");
    firing(&prom, &env, UNHEALTHY, "clamgate", "a clamd that answers PING but cannot scan").await;

    drop(wrong);
    let _prod = env.start_production(&[]).await;
    resolved(&prom, &env, UNHEALTHY, "clamgate", "production clamd back again").await;
    assert_eq!(rcpt(m.addr).await, Status::Accept, "mail flows again");
}
