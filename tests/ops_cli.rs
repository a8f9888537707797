//! The operator commands, run as the real binary against a real state dir
//! and a real production clamd.

mod support;

use std::process::Output;

use support::daemon::{Env, set_id};
use support::*;

fn clamgate(env: &Env, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_clamgate")).args(args).arg("--config").arg(&env.config).env("CLAMGATE_LOCK_WAIT", "2s").output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(&clamgate(env, &all))).unwrap()
}

/// v1 promoted, production started, v2 promoted: two releases, v2 live.
async fn two_releases() -> (Env, support::daemon::DaemonProc, Clamd) {
    let env = Env::new("", "");
    let d = env.promoted("daily-v1").await;
    let prod = env.start_production(&[]).await;
    env.put("daily-v2");
    env.wait_event("promotion.done", Some(&set_id("daily-v2"))).await;
    (env, d, prod)
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_and_promote_change_production_and_verify_a_scan() {
    let (env, _d, prod) = two_releases().await;
    let (v1, v2) = (set_id("daily-v1"), set_id("daily-v2"));
    let c = prod.client();
    assert_eq!(c.version().await.unwrap().database, Some(2));

    let out = ok(&clamgate(&env, &["rollback"]));
    assert!(out.contains(&format!("rolled back to {v1}")) && out.contains("scans as expected"), "{out}");
    assert_eq!(c.version().await.unwrap().database, Some(1));
    assert!(c.scan_file(&sample("infected/clam.exe")).await.unwrap().is_infected());
    assert_eq!(env.live(), Some(v1.clone()));

    // The release it left is marked bad: promote refuses it without --force.
    let releases = json(&env, &["releases"]);
    let row = releases.as_array().unwrap().iter().find(|r| r["id"] == v2.as_str()).unwrap();
    assert_eq!(row["bad"]["source"], "operator", "{releases:#}");
    let out = clamgate(&env, &["promote", &v2[..6]]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("marked bad") && err.contains("--force"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    let out = ok(&clamgate(&env, &["promote", &v2[..6], "--force"]));
    assert!(out.contains(&format!("promoted {v2}")), "{out}");
    assert_eq!(c.version().await.unwrap().database, Some(2));
    assert_eq!(env.live(), Some(v2.clone()));
    let releases = json(&env, &["releases"]);
    assert!(releases.as_array().unwrap().iter().all(|r| r["bad"].is_null()), "{releases:#}");

    let out = ok(&clamgate(&env, &["rollback", "--to", &v1]));
    assert!(out.contains(&format!("rolled back to {v1}")), "{out}");
    assert_eq!(c.version().await.unwrap().database, Some(1));
}

/// An operator's rollback and pin are other processes: the daemon's
/// metrics learn of them from the journal and the store.
#[tokio::test(flavor = "multi_thread")]
async fn operator_rollback_and_pin_show_in_the_daemons_metrics() {
    use support::metrics::scrape_until;
    let (env, _d, _prod) = two_releases().await;
    let v1 = set_id("daily-v1");
    let m = scrape_until(env.health, "v2 live", |m| m.value("clamgate_live_release_info", &[("daily_version", "2")]).is_some()).await;
    assert_eq!(m.value("clamgate_rollbacks_total", &[("origin", "operator")]), Some(0.0), "{}", m.text);
    assert_eq!(m.value("clamgate_pinned", &[]), Some(0.0));

    ok(&clamgate(&env, &["rollback"]));
    let m = scrape_until(env.health, "the operator's rollback counted", |m| m.value("clamgate_rollbacks_total", &[("origin", "operator")]) == Some(1.0)).await;
    assert_eq!(m.value("clamgate_rollbacks_total", &[("origin", "automatic")]), Some(0.0), "{}", m.text);
    assert_eq!(m.value("clamgate_live_release_info", &[("release", &v1), ("daily_version", "1")]), Some(1.0), "{}", m.text);
    assert_eq!(m.samples.iter().filter(|s| s.metric == "clamgate_live_release_info").count(), 1, "one live release:\n{}", m.text);

    ok(&clamgate(&env, &["pin"]));
    scrape_until(env.health, "pinned", |m| m.value("clamgate_pinned", &[]) == Some(1.0)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_with_nothing_to_roll_back_fails_clearly() {
    let env = Env::new("", "");
    let _d = env.promoted("daily-v1").await;
    let _prod = env.start_production(&[]).await;
    let out = clamgate(&env, &["rollback"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("no release before {}", set_id("daily-v1"))), "{err}");
    let out = clamgate(&env, &["rollback", "--to", "ffffff"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no release ffffff"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pin_holds_the_live_release_while_candidates_are_still_checked() {
    let env = Env::new("", "");
    let _d = env.promoted("daily-v1").await;
    let prod = env.start_production(&[]).await;
    ok(&clamgate(&env, &["pin"]));

    env.put("daily-v2");
    let v2 = set_id("daily-v2");
    env.wait_event("candidate.held", Some(&v2)).await;
    assert_eq!(env.live(), Some(set_id("daily-v1")), "pinned release was replaced");
    assert_eq!(prod.client().version().await.unwrap().database, Some(1));

    let status = json(&env, &["status"]);
    assert_eq!(status["live"]["id"], set_id("daily-v1").as_str());
    assert!(status["pinned"]["by"].is_string(), "{status:#}");
    assert_eq!(status["waiting"], serde_json::json!([v2]));
    assert_eq!(status["last_candidate"]["id"], v2.as_str());
    assert_eq!(status["last_candidate"]["verdict"], "pass");
    let text = ok(&clamgate(&env, &["status"]));
    assert!(text.contains("pinned    yes, by") && text.contains(&format!("waiting   {v2}")), "{text}");

    ok(&clamgate(&env, &["unpin"]));
    ok(&clamgate(&env, &["promote", &v2]));
    assert_eq!(prod.client().version().await.unwrap().database, Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_history_and_releases_show_the_live_release() {
    let (env, _d, _prod) = two_releases().await;
    let (v1, v2) = (set_id("daily-v1"), set_id("daily-v2"));

    let status = json(&env, &["status"]);
    assert_eq!(status["live"]["id"], v2.as_str());
    assert_eq!(status["live"]["databases"][0]["name"], "daily.cud");
    assert_eq!(status["live"]["databases"][0]["version"], 2);
    assert_eq!(status["live"]["databases"][0]["signatures"], 120);
    assert_eq!(status["pinned"], false);
    assert_eq!(status["health"]["status"], "pass", "{status:#}");
    let text = ok(&clamgate(&env, &["status"]));
    assert!(text.starts_with(&format!("live      {v2}  daily v2 (120 signatures)")), "{text}");
    assert!(text.contains("health    pass"), "{text}");

    let releases = json(&env, &["releases"]);
    let ids: Vec<(&str, bool)> = releases.as_array().unwrap().iter().map(|r| (r["id"].as_str().unwrap(), r["live"].as_bool().unwrap())).collect();
    assert_eq!(ids, [(v2.as_str(), true), (v1.as_str(), false)]);
    let text = ok(&clamgate(&env, &["releases"]));
    let live_line = text.lines().find(|l| l.starts_with('*')).expect(&text);
    assert!(live_line.contains(&v2) && live_line.contains("daily v2") && live_line.contains("ago"), "{text}");

    let history = json(&env, &["history", "-n", "3"]);
    let h = history.as_array().unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h[0]["event"], "promotion.done", "newest first: {history:#}");
    assert_eq!(h[0]["id"], v2.as_str());
    let text = ok(&clamgate(&env, &["history"]));
    assert!(text.lines().nth(1).unwrap().contains("promotion.done"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_commands_wait_or_fail_cleanly() {
    let (env, _d, prod) = two_releases().await;
    let (v1, v2) = (set_id("daily-v1"), set_id("daily-v2"));

    // Someone holds the lock: the command waits, then fails with a hint.
    let store = clamgate::store::Store::open(&env.state()).unwrap();
    // The daemon may still hold it for a moment after journaling the
    // promotion (it prunes old releases under the lock): wait for our turn.
    let held = store.lock(std::time::Duration::from_secs(30)).unwrap();
    let out = clamgate(&env, &["rollback"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked") && err.contains("retry"), "{err}");
    drop(held);

    // Two at once: each runs whole, one after the other.
    let spawn = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_clamgate"))
            .args(args)
            .arg("--config")
            .arg(&env.config)
            .env("CLAMGATE_LOCK_WAIT", "60s")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn(&["rollback", "--to", &v1]);
    let b = spawn(&["pin"]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    ok(&a);
    ok(&b);
    assert_eq!(env.live(), Some(v1.clone()));
    assert_eq!(prod.client().version().await.unwrap().database, Some(1));
    // The journal's begin/done pairs never interleave.
    let events: Vec<&str> = env.journal().iter().map(|e| e.name()).filter(|e| e.starts_with("rollback") || *e == "pin").collect();
    let pos = events.iter().position(|e| *e == "pin").unwrap();
    assert!(pos == 0 || events[pos - 1] != "rollback.begin", "pin landed inside a rollback: {events:?}");
    let _ = v2;
}

#[test]
fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = assert_cmd::Command::cargo_bin("clamgate").unwrap().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("rollback") && text.contains("promote"), "{shell}");
    }
}

/// Root runs `pin` on a state dir that belongs to clamav (as the Debian
/// package sets it up): the command runs as clamav and leaves no root-owned
/// file behind for the daemon to trip over.
#[tokio::test(flavor = "multi_thread")]
async fn a_root_run_pin_on_a_clamav_owned_state_dir_leaves_no_root_files() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert!(rustix::process::geteuid().is_root(), "this test needs root (CI runs as root)");
    let (uid, gid) = clamav_ids();
    let env = Env::new("", "");
    let d = env.promoted("daily-v1").await;
    d.stop();
    // clamav must reach the config and a corpus of its own: a private copy.
    std::fs::set_permissions(env.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let corpus = env.path().join("corpus");
    assert!(std::process::Command::new("cp").arg("-r").arg(support::corpus()).arg(&corpus).status().unwrap().success());
    let config = std::fs::read_to_string(&env.config).unwrap().replace(&support::corpus().display().to_string(), &corpus.display().to_string());
    std::fs::write(&env.config, config).unwrap();
    assert!(std::process::Command::new("chown").args(["-R", "clamav:clamav"]).arg(env.state()).status().unwrap().success());

    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_clamgate")).args(["pin", "--config"]).arg(&env.config).env("SUDO_USER", "ops-alice").output().unwrap();
    ok(&out);
    let mut stack = vec![env.state()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{} is not clamav's", p.display());
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    let pin = env.journal().into_iter().rev().find(|e| e.name() == "pin").expect("pin journaled");
    assert_eq!(pin.get("by").as_deref(), Some("ops-alice"), "who ran it survives the switch");
}

fn clamav_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id").args([flag, "clamav"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a clamav user (clamav-daemon is installed)")
    };
    (id("-u"), id("-g"))
}
