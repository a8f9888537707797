//! Managed mode (`[clamd] managed = true`), with real clamds: the canary
//! that passed becomes production by a rename of the production socket
//! link, so an update loads its engine once; a handover whose verification
//! fails goes back to the previous clamd, still running; an operator's
//! rollback loads the old release once and hands over the same way; a
//! clamd.conf with TCPSocket is refused by file and line.

mod support;

use std::fs;

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
    // No cached baseline verdicts (as after an upgrade from RELOAD mode):
    // they come from the production clamd, which runs the live release.
    for e in fs::read_dir(env.state().join("cache")).unwrap().flatten() {
        fs::remove_file(e.path()).unwrap();
    }

    env.put("daily-v2");
    env.wait_event("promotion.done", Some(&set_id("daily-v2"))).await;
    let second = env.production().unwrap();
    assert_ne!(second, first, "a new clamd serves");
    assert_eq!(env.release_of(&second), Some(set_id("daily-v2")));
    scans(&env, 2).await;
    // One engine load for the whole update: the canary's, which now serves.
    // (No baseline canary either: release 1's verdicts came from production.)
    assert_eq!(env.engine_loads() - loads_before, 1, "{:#?}", env.clamd_logs());
    let cached = |id: String| fs::read_dir(env.state().join("cache")).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(&id));
    assert!(cached(set_id("daily-v1")) && cached(set_id("daily-v2")), "both releases' verdicts are cached");
    let log = env.clamd_logs().into_iter().find(|(n, _)| *n == second).unwrap().1;
    assert_eq!(engine_loads_in(&log), 1, "production never reloaded: {log}");
    assert!(!log.contains("Reading databases from") || log.matches("Reading databases from").count() == 1, "{log}");
    // The old clamd drained and stopped; only production runs.
    eventually("the old clamd to stop", || async { proc_state(first_pid).is_none_or(|s| s == 'Z') }).await;
    eventually("only production left", || async { env.clamds() == 1 && env.instances() == [second.clone()] }).await;
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
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clamgate")).args(["run", "--config"]).arg(&env.config).env_clear().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; {err}");
    let want = format!("{}:8: TCPSocket: managed mode serves a Unix socket only", env.clamd_conf().display());
    assert!(err.contains(&want), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!env.state().exists(), "nothing was started");

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_clamgate")).args(args).arg("--config").arg(&env.config).env_clear().output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = cli(&["config", "check"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains(&want), "config check names it: {out}");
    // Every command that opens the state gives the stable reason with --json.
    let (code, out) = cli(&["rollback", "--json"]);
    assert_eq!(code, Some(2), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["error"]["reason"], "managed.tcp_socket", "{v}");
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn kill(pid: u32, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), sig).unwrap();
}

/// The new clamd dies right after it was handed the socket (a fault no
/// release can cause on purpose: the canary ran production's config):
/// verification fails, and the socket goes back to the previous clamd,
/// which kept running; the release is quarantined.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_verification_hands_back_to_the_previous_clamd() {
    let env = ManagedEnv::new("", &[]);
    let first = env.promoted("daily-v1").await;
    wait_ready(&env, 200).await;
    let old = env.production().unwrap();
    let old_pid = env.pid_of(&old).unwrap();
    assert!(first.stop().success());

    env.put("daily-v2");
    let daemon = env.spawn_with(&[("CLAMGATE_FAILPOINT", "managed-socket-renamed:stop")]);
    eventually("the daemon to stop at managed-socket-renamed", || async { proc_state(daemon.pid()) == Some('T') }).await;
    let new = env.production().unwrap();
    assert_ne!(new, old);
    assert_eq!(proc_state(old_pid).map(|s| s != 'Z'), Some(true), "the previous clamd still runs");
    kill(env.pid_of(&new).unwrap(), rustix::process::Signal::KILL);
    daemon.signal(rustix::process::Signal::CONT);

    let done = env.wait_event("rollback.done", Some(&set_id("daily-v1"))).await;
    assert_eq!(done.get("from"), Some(set_id("daily-v2")));
    assert_eq!(env.production(), Some(old.clone()), "handed back to the same clamd");
    assert_eq!(env.pid_of(&old), Some(old_pid));
    scans(&env, 1).await;
    let q = fs::read_to_string(env.state().join("quarantine").join(set_id("daily-v2")).join("reasons.json")).unwrap();
    assert!(q.contains("production.verify_failed"), "{q}");
    eventually("only the previous clamd left", || async { env.clamds() == 1 && env.instances() == [old.clone()] }).await;
}

/// `clamgate rollback` when no clamd runs the previous release: it is
/// loaded once, in a new clamd, and handed the socket the same way.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_rollback_loads_the_release_once_and_hands_over() {
    let env = ManagedEnv::new("", &[]);
    let _daemon = env.promoted("daily-v1").await;
    env.put("daily-v2");
    env.wait_event("promotion.done", Some(&set_id("daily-v2"))).await;
    let v2 = env.production().unwrap();
    eventually("one clamd", || async { env.clamds() == 1 }).await;
    let loads = env.engine_loads();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clamgate"))
        .args(["rollback", "--config"])
        .arg(&env.config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let now = env.production().unwrap();
    assert_ne!(now, v2);
    assert_eq!(env.release_of(&now), Some(set_id("daily-v1")));
    scans(&env, 1).await;
    assert_eq!(env.engine_loads() - loads, 1, "{:#?}", env.clamd_logs());
    eventually("the v2 clamd to stop", || async { env.clamds() == 1 && env.instances() == [now.clone()] }).await;
    assert!(env.state().join("quarantine").join(set_id("daily-v2")).is_dir(), "the release rolled back from is marked bad");
}

/// The daemon supervises production: a clamd that dies (OOM killer, crash)
/// is started again on the live release and handed the socket.
#[tokio::test(flavor = "multi_thread")]
async fn a_production_clamd_that_dies_is_started_again() {
    let env = ManagedEnv::new("", &[]);
    let _daemon = env.promoted("daily-v1").await;
    wait_ready(&env, 200).await;
    let dead = env.production().unwrap();
    kill(env.pid_of(&dead).unwrap(), rustix::process::Signal::KILL);
    eventually("a new production clamd", || async { env.production().is_some_and(|p| p != dead) }).await;
    let now = env.production().unwrap();
    assert_eq!(env.release_of(&now), Some(set_id("daily-v1")));
    wait_ready(&env, 200).await;
    scans(&env, 1).await;
    eventually("the dead one's dir removed", || async { env.instances() == [now.clone()] && env.clamds() == 1 }).await;
}

/// A scan in flight on the old clamd when the socket is handed over
/// finishes there: the old clamd drains before it stops.
#[tokio::test(flavor = "multi_thread")]
async fn a_scan_in_flight_during_the_handover_finishes_on_the_old_clamd() {
    use std::io::{Read, Write};
    let env = ManagedEnv::new("", &[]);
    let _daemon = env.promoted("daily-v1").await;
    wait_ready(&env, 200).await;
    let old = env.production().unwrap();
    let old_pid = env.pid_of(&old).unwrap();

    // INSTREAM started through the production path, half sent.
    let mut s = std::os::unix::net::UnixStream::connect(env.prod_socket()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let body = fs::read(sample("infected/clam.exe")).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    s.write_all(b"zINSTREAM\0").unwrap();
    s.write_all(&(first.len() as u32).to_be_bytes()).unwrap();
    s.write_all(first).unwrap();

    env.put("daily-v2");
    env.wait_event("promotion.done", Some(&set_id("daily-v2"))).await;
    assert_ne!(env.production(), Some(old.clone()));
    scans(&env, 2).await;
    // Draining: the old clamd waits for our connection.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(proc_state(old_pid).map(|c| c != 'Z'), Some(true), "the old clamd is still running while a scan is in flight");

    s.write_all(&(rest.len() as u32).to_be_bytes()).unwrap();
    s.write_all(rest).unwrap();
    s.write_all(&0u32.to_be_bytes()).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.contains("FOUND"), "the old clamd finished the scan: {reply:?}");
    drop(s);
    eventually("the old clamd to stop once drained", || async { proc_state(old_pid).is_none_or(|c| c == 'Z') }).await;
    eventually("only production left", || async { env.clamds() == 1 }).await;
}
