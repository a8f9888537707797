//! `clamgate status` as a monitoring plugin (Nagios, Icinga, Sensu): its
//! exit code is 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, from what the
//! daemon's own `/readyz` says, and `--check` prints the one plugin line.

mod support;

use std::process::Output;

use support::daemon::{Env, live_v1, set_id, wait_ready};

fn status(env: &Env, args: &[&str]) -> (i32, String) {
    let out: Output = std::process::Command::new(env!("CARGO_BIN_EXE_clamgate")).arg("status").args(args).arg("--config").arg(&env.config).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().expect("exited, not killed"), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn scanning_is_ok_and_a_dead_production_clamd_is_critical() {
    let (env, _d, mut prod) = live_v1("").await;
    let (code, line) = status(&env, &["--check"]);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with(&format!("CLAMGATE OK - production clamd scans (release {})", set_id("daily-v1"))), "{line}");
    assert!(line.contains(" | age="), "perfdata: {line}");
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    let (code, text) = status(&env, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("daemon    CLAMGATE OK"), "{text}");

    prod.process.kill();
    wait_ready(&env, 503).await;
    let (code, line) = status(&env, &["--check"]);
    assert_eq!(code, 2, "{line}");
    assert!(line.starts_with("CLAMGATE CRITICAL - production clamd cannot scan: production clamd is down"), "{line}");
    let (code, text) = status(&env, &["--json"]);
    assert_eq!(code, 2, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["daemon"]["state"], "CRITICAL", "{v:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_daily_database_is_a_warning() {
    let env = Env::new("", "");
    // The fixture's daily is minutes old; a 1 s limit makes it stale.
    std::fs::write(env.path().join("policy.toml"), "max_database_age = \"1s\"\n").unwrap();
    let _d = env.promoted("daily-v1").await;
    let _prod = env.start_production(&[]).await;
    wait_ready(&env, 200).await;
    let (code, line) = status(&env, &["--check"]);
    assert_eq!(code, 1, "{line}");
    assert!(line.starts_with("CLAMGATE WARNING - live daily database is"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_state_dir_or_no_daemon_is_unknown() {
    let env = Env::new("", "");
    let (code, line) = status(&env, &["--check"]);
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with("CLAMGATE UNKNOWN - state dir"), "{line}");
    let (code, text) = status(&env, &[]);
    assert_eq!(code, 3, "no state dir without --check either: {text}");

    // A state dir, but the daemon is gone: nobody vouches for scanning.
    let d = env.promoted("daily-v1").await;
    drop(d);
    let (code, line) = status(&env, &["--check"]);
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with("CLAMGATE UNKNOWN - the daemon does not answer"), "{line}");
}
