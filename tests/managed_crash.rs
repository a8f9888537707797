//! Crash safety in managed mode: the daemon is SIGKILLed (by itself, at a
//! failpoint) at each step of a handover and of the automatic rollback
//! after a failed verification, then restarted. At the crash the
//! production path still answers (for the promotion); after the restart
//! it is served by a clamd running the release the story ends on, the
//! restarted daemon adopted or stopped every managed clamd it found (one
//! is left), and the journal parses. (`tests/daemon_crash.rs` checks that
//! every failpoint has a crash test here or there.)
#![cfg(debug_assertions)]

mod support;

use std::fs;
use std::os::unix::process::ExitStatusExt;

use rustix::process::{Pid, Signal, kill_process};
use support::daemon::{set_id, wait_ready};
use support::managed::ManagedEnv;
use support::*;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Story {
    /// daily-v1 live, daily-v2 promoted.
    Promoted,
    /// daily-v2 is handed the socket and its clamd dies at once: the
    /// socket goes back to daily-v1's clamd.
    RolledBack,
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

async fn crash_at(point: &str, story: Story) {
    assert!(clamgate::failpoint::ALL.iter().any(|p| p.name() == point), "{point} is not a failpoint");
    let env = ManagedEnv::new("", &[]);
    let first = env.promoted("daily-v1").await;
    wait_ready(&env, 200).await;
    assert!(first.stop().success(), "{}", env.log());
    let v1_clamd = env.production().unwrap();

    env.put("daily-v2");
    let points = match story {
        Story::Promoted => point.to_string(),
        Story::RolledBack => format!("managed-socket-renamed:stop,{point}"),
    };
    let mut crashing = env.spawn_with(&[("CLAMGATE_FAILPOINT", &points)]);
    if story == Story::RolledBack {
        eventually("the daemon to stop after the handover", || async { proc_state(crashing.pid()) == Some('T') }).await;
        let new = env.production().unwrap();
        let pid = env.pid_of(&new).unwrap();
        kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
        crashing.signal(Signal::CONT);
    }
    let status = crashing.wait_exit();
    assert_eq!(status.signal(), Some(9), "the daemon did not reach {point}: {status:?}\n{}", env.log());
    if story == Story::Promoted {
        // At the moment of the crash, production scans a release that passed.
        let v = env.prod().version().await.unwrap_or_else(|e| panic!("production path unserved after a crash at {point}: {e}")).database;
        assert!(matches!(v, Some(1) | Some(2)), "{v:?}");
    }
    let before = env.journal().len();

    let _daemon = env.spawn();
    let (want, end) = match story {
        Story::Promoted => (2, set_id("daily-v2")),
        Story::RolledBack => (1, set_id("daily-v1")),
    };
    let already_done = matches!(point, "managed-old-drained" | "managed-old-stopped");
    match (story, already_done) {
        (_, true) => env.wait_after(before, "the restart", |e| e.name() == "daemon.started").await,
        (Story::Promoted, false) => env.wait_after(before, "promotion of daily-v2", |e| e.name() == "promotion.done" && e.id() == Some(end.as_str())).await,
        (Story::RolledBack, false) => env.wait_after(before, "rollback to daily-v1", |e| e.name() == "rollback.done" && e.id() == Some(end.as_str())).await,
    };
    assert_eq!(env.live(), Some(end.clone()), "{}", env.log());
    wait_ready(&env, 200).await;
    let c = env.prod();
    assert_eq!(c.version().await.unwrap().database, Some(want), "{}", env.log());
    assert!(c.scan_file(&sample("infected/clam.exe")).await.unwrap().is_infected());
    assert!(!c.scan_file(&sample("clean/letter.txt")).await.unwrap().is_infected());
    let prod = env.production().unwrap();
    assert_eq!(env.release_of(&prod), Some(end.clone()));
    if story == Story::RolledBack {
        assert_eq!(prod, v1_clamd, "handed back to the clamd that kept running");
    }
    // Nothing orphaned: every other managed clamd was stopped, its dir removed.
    eventually("only production's clamd left", || async { env.clamds() == 1 && env.instances() == [prod.clone()] }).await;
    let log = env.log();
    if point == "managed-socket-renamed" {
        assert!(log.contains(&format!("adopted the production clamd {prod}")), "{log}");
    }
    if matches!(point, "managed-canary-kept" | "managed-socket-renamed" | "managed-old-drained") {
        assert!(log.contains("(not production)"), "the restart stopped what the crash left: {log}");
    }
    let _ = env.journal();
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_crash_with_the_canary_kept() {
    crash_at("managed-canary-kept", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_crash_after_current_moved() {
    crash_at("promotion-swapped", Story::Promoted).await;
}

/// The restarted daemon adopts the clamd the link names (the new one).
#[tokio::test(flavor = "multi_thread")]
async fn managed_crash_after_the_socket_rename_adopts_the_new_clamd() {
    crash_at("managed-socket-renamed", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_crash_before_the_smoke_scan() {
    crash_at("smoke-scan", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_crash_after_the_old_clamd_drained() {
    crash_at("managed-old-drained", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_crash_after_the_old_clamd_stopped() {
    crash_at("managed-old-stopped", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_crash_when_the_rollback_began() {
    crash_at("rollback-begun", Story::RolledBack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_crash_after_the_rollback_moved_current() {
    crash_at("rollback-swapped", Story::RolledBack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_crash_after_the_socket_went_back() {
    crash_at("managed-rollback-renamed", Story::RolledBack).await;
}
