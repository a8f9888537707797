//! Managed mode (`[clamd] managed = true`), with real clamds: the canary
//! that passed becomes production by a rename of the production socket
//! link, so an update loads its engine once; a handover whose verification
//! fails goes back to the previous clamd, still running; an operator's
//! rollback loads the old release once and hands over the same way; a
//! clamd.conf with TCPSocket is refused by file and line.

mod support;


use support::daemon::{set_id, wait_ready};
use support::managed::{ManagedEnv, engine_loads_in};
use support::*;

async fn scans(env: &ManagedEnv, want_version: u64) {
    let c = env.prod();
    assert_eq!(c.version().await.unwrap().database, Some(want_version), "{}", env.log());
    assert!(c.scan_file(&sample("infected/clam.exe")).await.unwrap().is_infected());
    assert!(!c.scan_file(&sample("clean/letter.txt")).await.unwrap().is_infected());
}

#[tokio::test(flavor = "multi_thread")]
async fn promotion_hands_the_socket_to_the_canary_with_one_engine_load() {
    let env = ManagedEnv::new("", &[]);
    env.put("daily-v1");
    let daemon = env.spawn();
    env.wait_event("promotion.done", Some(&set_id("daily-v1"))).await;
    wait_ready(&env, 200).await;
    scans(&env, 1).await;
    let first = env.production().expect("the production path is a link to a managed clamd");
    let first_pid = env.pid_of(&first).unwrap();
    assert_eq!(env.release_of(&first), Some(set_id("daily-v1")));
    let loads_before = env.engine_loads();

    env.put("daily-v2");
    env.wait_event("promotion.done", Some(&set_id("daily-v2"))).await;
    let second = env.production().unwrap();
    assert_ne!(second, first, "a new clamd serves");
    assert_eq!(env.release_of(&second), Some(set_id("daily-v2")));
    scans(&env, 2).await;
    // One engine load for the whole update: the canary's, which now serves.
    // (No baseline canary either: release 1's verdicts came with its own canary.)
    assert_eq!(env.engine_loads() - loads_before, 1, "{:#?}", env.clamd_logs());
    let log = env.clamd_logs().into_iter().find(|(n, _)| *n == second).unwrap().1;
    assert_eq!(engine_loads_in(&log), 1, "production never reloaded: {log}");
    assert!(!log.contains("Reading databases from") || log.matches("Reading databases from").count() == 1, "{log}");
    // The old clamd drained and stopped; only production runs.
    eventually("the old clamd to stop", || async { !std::path::Path::new(&format!("/proc/{first_pid}")).exists() || env.clamds() == 1 }).await;
    eventually("one clamd left", || async { env.clamds() == 1 }).await;
    assert_eq!(env.instances(), [second.clone()]);
    assert!(!env.path().join("prod").join(format!("clamgate-{first}.sock")).exists(), "the old socket is gone");

    // A clean stop of the daemon leaves production scanning; a restart adopts it.
    assert!(daemon.stop().success(), "{}", env.log());
    scans(&env, 2).await;
    let _again = env.spawn();
    wait_ready(&env, 200).await;
    assert_eq!(env.production(), Some(second.clone()));
    assert!(env.log().contains(&format!("adopted the production clamd {second}")), "{}", env.log());
    assert_eq!(env.clamds(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_managed_config_with_tcp_socket_is_refused_by_file_and_line() {
    let env = ManagedEnv::new("", &["TCPSocket 3310", "TCPAddr 127.0.0.1"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clamgate"))
        .args(["run", "--config"])
        .arg(&env.config)
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; {err}");
    let want = format!("{}:8: TCPSocket: managed mode serves a Unix socket only", env.clamd_conf().display());
    assert!(err.contains(&want), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!env.state().exists(), "nothing was started");
}
