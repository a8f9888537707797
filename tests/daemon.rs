//! `clamgate run` with two real clamds: production on `current`, and the
//! canaries the daemon starts.

mod support;

use clamgate::clamd::ScanVerdict;
use support::daemon::{Env, set_id};
use support::*;

async fn assert_scans(prod: &Clamd, version: impl Into<Option<u64>>) {
    let c = prod.client();
    assert_eq!(c.version().await.unwrap().database, version.into(), "production version");
    assert!(c.scan_file(&sample("infected/clam.exe")).await.unwrap().is_infected(), "production must detect");
    assert_eq!(c.scan_file(&sample("clean/letter.txt")).await.unwrap(), ScanVerdict::Clean);
}

#[tokio::test(flavor = "multi_thread")]
async fn first_release_then_a_good_update_is_promoted() {
    let env = Env::new("", "");
    env.put("daily-v1");
    let _d = env.spawn();
    // No production clamd yet: the promotion stands and says so.
    let done = env.wait_event("promotion.done", Some(&set_id("daily-v1"))).await;
    assert!(done.get("production").unwrap().starts_with("down"), "{done:?}");
    assert_eq!(env.live(), Some(set_id("daily-v1")));
    let prod = env.start_production(&[]).await;
    assert_scans(&prod, 1).await;

    env.put("daily-v2");
    let done = env.wait_event("promotion.done", Some(&set_id("daily-v2"))).await;
    assert_eq!(done.get("production").as_deref(), Some("scanning"));
    assert_eq!(env.live(), Some(set_id("daily-v2")));
    assert_scans(&prod, 2).await;
    let checked = env.wait_event("candidate.checked", Some(&set_id("daily-v2"))).await;
    assert_eq!(checked.json()["baseline"], set_id("daily-v1"), "compared with the live release");
}

/// Puts each bad set into incoming of a daemon whose live release is `live`
/// and checks it is quarantined with `code` while production keeps scanning.
/// Under `isolation = "set"` (today's behaviour, parametrised): the whole
/// candidate is rejected; under "file" each of these sets holds back its bad
/// file and what is left is the live release, so nothing is promoted.
async fn bad_updates_against(isolation: &str, live: &str, version: Option<u64>, cases: &[(&str, &str)]) -> (Env, support::daemon::DaemonProc) {
    let env = Env::new("", "");
    env.policy(&format!("isolation = \"{isolation}\"\n"));
    let d = env.promoted(live).await;
    let prod = env.start_production(&[]).await;
    for &(name, code) in cases {
        let before = env.journal().len();
        env.put(name);
        let id = set_id(name);
        if isolation == "file" {
            let r = env.wait_after(before, "candidate.reduced", |e| e.name() == "candidate.reduced").await.json();
            assert_eq!(r["outcome"], "nothing_left", "{name}: {r}");
            let codes: Vec<&str> = r["held"].as_array().unwrap().iter().map(|h| h["reason"].as_str().unwrap()).collect();
            assert!(codes.contains(&code), "{name}: {codes:?}");
            assert_eq!(env.live(), Some(set_id(live)), "{name}");
            assert_scans(&prod, version).await;
            continue;
        }
        env.wait_event("candidate.quarantined", Some(&id)).await;
        let checked = env.wait_event("candidate.checked", Some(&id)).await;
        let json = checked.json();
        let codes: Vec<&str> = json["reasons"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
        assert!(codes.contains(&code), "{name}: {codes:?}");
        if code.starts_with("cvd.") {
            // A broken container counts no signatures; no sanity reason may pile on.
            assert_eq!(codes, [code], "{name}");
        }
        assert_eq!(env.live(), Some(set_id(live)), "{name}");
        assert_scans(&prod, version).await;
        let q = std::fs::read_to_string(env.state().join("quarantine").join(&id).join("reasons.json")).unwrap();
        assert!(q.contains(code), "{name}: {q}");
    }
    (env, d)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_text_updates_leave_production_on_the_old_release_and_scanning() {
    let cases = [
        ("bad-ndb", "db.malformed_line"),
        ("empty", "db.empty"),
        ("load-fail", "canary.load_failed"),
        ("fp", "corpus.false_positive"),
        ("miss", "corpus.regression"),
    ];
    let (env, d) = bad_updates_against("set", "good", None, &cases).await;

    // Restarted on the same state, a quarantined digest is reported, not canaried again.
    let status = d.stop();
    assert!(status.success(), "graceful stop: {status:?}\n{}", env.log());
    let before = env.journal().len();
    let _d = env.spawn();
    let id = set_id("miss");
    env.wait_for("known_bad after restart", |e| e.name() == "candidate.known_bad" && e.id() == Some(&id)).await;
    let after = env.journal();
    let rechecked = after[before..].iter().any(|e| e.name() == "candidate.checked" && e.id() == Some(&id));
    assert!(!rechecked, "a quarantined candidate was checked again");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_container_updates_leave_production_on_the_old_release_and_scanning() {
    let cases = [
        ("daily-md5-mismatch", "cvd.md5_mismatch"),
        ("daily-header-cut", "cvd.bad_header"),
        ("daily-v3-drop", "sanity.signature_drop"),
        ("good", "sanity.missing_database"),
    ];
    bad_updates_against("set", "daily-v1", Some(1), &cases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_updates_under_file_isolation_hold_only_the_bad_file() {
    let text = [("bad-ndb", "db.malformed_line"), ("load-fail", "canary.load_failed"), ("fp", "corpus.false_positive")];
    bad_updates_against("file", "good", None, &text).await;
    let containers = [("daily-md5-mismatch", "cvd.md5_mismatch"), ("daily-v3-drop", "sanity.signature_drop")];
    bad_updates_against("file", "daily-v1", Some(1), &containers).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_that_fails_the_production_smoke_scan_is_rolled_back() {
    // Production does not unpack archives; the canary does. v1-zip detects
    // clam.zip by its own hash, v2 only through unpacking: v2 passes the
    // canary and fails in production.
    let env = Env::new("smoke_samples = [\"infected/archives/clam.zip\", \"clean/letter.txt\"]", "");
    let _d = env.promoted("daily-v1-zip").await;
    let prod = env.start_production(&["ScanArchive no"]).await;

    env.put("daily-v2");
    let v2 = set_id("daily-v2");
    let rb = env.wait_event("rollback.done", Some(&set_id("daily-v1-zip"))).await;
    assert_eq!(rb.get("from").as_deref(), Some(v2.as_str()));
    assert!(rb.get("reason").unwrap().contains("smoke scan of infected/archives/clam.zip"), "{rb:?}");
    assert_eq!(env.live(), Some(set_id("daily-v1-zip")));
    let c = prod.client();
    assert_eq!(c.version().await.unwrap().database, Some(1));
    assert!(c.scan_file(&sample("infected/archives/clam.zip")).await.unwrap().is_infected());
    let q = std::fs::read_to_string(env.state().join("quarantine").join(&v2).join("reasons.json")).unwrap();
    assert!(q.contains("production.verify_failed"), "{q}");
    let m = support::metrics::scrape(env.health).expect("/metrics answers");
    assert_eq!(m.value("clamgate_rollbacks_total", &[("origin", "automatic")]), Some(1.0), "{}", m.text);
    assert_eq!(m.value("clamgate_rollbacks_total", &[("origin", "operator")]), Some(0.0), "{}", m.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_state_dir_refuses_to_start() {
    let env = Env::new("", "");
    let _first = env.spawn();
    env.wait_event("daemon.started", None).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clamgate")).args(["run", "--config"]).arg(&env.config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another clamgate daemon") && err.contains(&env.state().display().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_during_a_canary_run_cancels_it_and_checks_the_new_files() {
    let env = Env::new("", "");
    let _d = env.promoted("daily-v1").await;
    let _prod = env.start_production(&[]).await;

    // A candidate heavy enough that its canary is still loading when the
    // next update lands: daily-v1 plus 500,000 hash signatures.
    let incoming = env.path().join("incoming");
    let mut big = String::with_capacity(500_000 * 48);
    for i in 1..=500_000u64 {
        big.push_str(&format!("{i:032x}:1000:Clamgate.Big.{i}\n"));
    }
    let from = env.journal().len();
    std::fs::write(incoming.join("big.hdb.tmp"), big).unwrap();
    std::fs::rename(incoming.join("big.hdb.tmp"), incoming.join("big.hdb")).unwrap();
    env.wait_after(from, "the heavy candidate's run to start", |e| e.name() == "candidate.started").await;
    // Its canary loading (not still snapshotting, which could see the next
    // update half-written and judge that quickly instead).
    let work = env.state().join("work");
    eventually("the heavy candidate's canary to run", || async { clamds_under(&work) > 0 }).await;
    env.put("daily-v2");

    let v2 = set_id("daily-v2");
    env.wait_event("promotion.done", Some(&v2)).await;
    let after: Vec<_> = env.journal().into_iter().skip(from).collect();
    assert!(after.iter().any(|e| e.name() == "candidate.cancelled"), "{after:#?}");
    // The heavy candidate was never judged: only the files that settled were.
    let judged: Vec<_> = after.iter().filter(|e| e.name() == "candidate.checked").filter_map(|e| e.id()).collect();
    assert_eq!(judged, [v2.as_str()], "{after:#?}");
    assert_eq!(env.live(), Some(v2));
}

/// SIGHUP (logrotate, config tools) re-reads the config and policy: a good
/// one applies, a bad one is refused with the file and key named while the
/// running one stays; SIGTERM then stops it with `daemon.stopped`.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_a_good_policy_and_keeps_the_running_one_on_a_bad_one() {
    use rustix::process::Signal;
    let (env, d, _prod) = support::daemon::live_v1("").await;
    let policy = env.path().join("policy.toml");
    let reloads = |event: &str| env.journal().iter().filter(|e| e.name() == event).count();

    // The fixture's daily is minutes old: a 1 s limit makes readiness warn.
    std::fs::write(&policy, "max_database_age = \"1s\"\n").unwrap();
    d.signal(Signal::HUP);
    env.wait_event("daemon.reloaded", None).await;
    support::metrics::scrape_until(env.health, "the new threshold", |m| m.value("clamgate_policy_max_database_age_seconds", &[]) == Some(1.0)).await;
    eventually("readiness warns on the new threshold", || async { readyz(&env).contains("\"status\":\"warn\"") }).await;

    std::fs::write(&policy, "max_database_age = \"soon\"\n").unwrap();
    d.signal(Signal::HUP);
    let failed = env.wait_event("daemon.reload_failed", None).await;
    let error = failed.get("error").unwrap();
    assert!(error.contains(&policy.display().to_string()) && error.contains("max_database_age"), "{error}");
    assert!(env.log().contains("keeping the running config and policy"), "{}", env.log());
    assert_eq!(reloads("daemon.reloaded"), 1);
    let m = support::metrics::scrape(env.health).unwrap();
    assert_eq!(m.value("clamgate_policy_max_database_age_seconds", &[]), Some(1.0), "the running policy stays");

    // A config that does not parse is refused the same way.
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("setle = \"1s\"\n{good}")).unwrap();
    d.signal(Signal::HUP);
    eventually("the bad config refused", || async { reloads("daemon.reload_failed") == 2 }).await;
    assert!(env.journal().iter().rev().find(|e| e.name() == "daemon.reload_failed").unwrap().get("error").unwrap().contains("setle"));

    std::fs::write(&env.config, good).unwrap();
    std::fs::copy(support::repo().join("policies/default.toml"), &policy).unwrap();
    d.signal(Signal::HUP);
    eventually("the fixed config reloaded", || async { reloads("daemon.reloaded") == 2 }).await;
    eventually("readiness passes on the shipped age limit", || async { readyz(&env).contains("\"status\":\"pass\"") }).await;

    let status = d.stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(env.journal().last().map(|e| e.name()), Some("daemon.stopped"));
}

fn readyz(env: &Env) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(env.health) else { return String::new() };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// An operator's own corpus shares no names with the shipped one: with
/// `smoke_samples` unset the daemon picks from it instead of refusing to start.
#[tokio::test(flavor = "multi_thread")]
async fn smoke_samples_default_to_the_configured_corpus() {
    let env = Env::new("", "");
    let corpus = env.path().join("own-corpus");
    for (from, to) in
        [("infected/clam.exe", "infected/our-sample.exe"), ("infected/archives/clam.zip", "infected/archives/ours.zip"), ("clean/letter.txt", "clean/memo.txt")]
    {
        let to = corpus.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(sample(from), to).unwrap();
    }
    let config = std::fs::read_to_string(&env.config).unwrap().replace(&support::corpus().display().to_string(), &corpus.display().to_string());
    std::fs::write(&env.config, config).unwrap();
    let _d = env.promoted("daily-v1").await;
    let _prod = env.start_production(&[]).await;
    support::daemon::wait_ready(&env, 200).await;
    assert!(env.log().contains("smoke samples chosen from the corpus: infected/our-sample.exe, clean/memo.txt"), "{}", env.log());
}
