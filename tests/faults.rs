//! Faults, each with real processes: the expectation of docs/ARCHITECTURE.md holds
//! every time: production keeps the last good release and scans, the journal
//! stays readable, no process or temporary file is left behind.

mod support;

use std::path::Path;
use std::time::Duration;

use clamgate::clamd::ScanVerdict;
use rustix::process::{Pid, Signal};
use support::daemon::{Env, live_v1, set_id};
use support::*;

/// pids of clamd processes whose config lives under `dir`.
fn clamd_pids(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let c = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).into_owned();
            c.contains("clamd") && c.contains(&needle)
        })
        .collect()
}

async fn canary_pid(env: &Env) -> i32 {
    let work = env.state().join("work");
    for _ in 0..2000 {
        if let Some(p) = clamd_pids(&work).first() {
            return *p;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no canary clamd appeared\n{}", env.log());
}

async fn still_on_v1(env: &Env, prod: &Clamd) {
    assert_eq!(env.live(), Some(set_id("daily-v1")));
    let c = prod.client();
    assert_eq!(c.version().await.unwrap().database, Some(1));
    assert!(c.scan_file(&sample("infected/clam.exe")).await.unwrap().is_infected());
    assert_eq!(c.scan_file(&sample("clean/letter.txt")).await.unwrap(), ScanVerdict::Clean);
    assert!(clamd_pids(&env.state().join("work")).is_empty(), "a canary clamd was left running");
    let leftovers: Vec<_> =
        std::fs::read_dir(env.state().join("releases")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-")).collect();
    assert!(leftovers.is_empty(), "half-written release left: {leftovers:?}");
}

/// A heavy candidate (daily-v1 plus 500,000 hash signatures) whose canary
/// takes long enough to load for a test to interfere.
fn put_heavy(env: &Env) {
    let incoming = env.path().join("incoming");
    std::fs::write(incoming.join("big.hdb.tmp"), heavy_sigs()).unwrap();
    std::fs::rename(incoming.join("big.hdb.tmp"), incoming.join("big.hdb")).unwrap();
}

/// Built once: a debug build takes a while, and a test that writes it right
/// after another file must not leave the daemon time to settle in between.
fn heavy_sigs() -> &'static str {
    static BIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIG.get_or_init(|| {
        let mut big = String::with_capacity(500_000 * 48);
        for i in 1..=500_000u64 {
            big.push_str(&format!("{i:032x}:1000:Clamgate.Big.{i}\n"));
        }
        big
    })
}

/// Production, once restarted after a crash (systemd's job), runs the last
/// good release and the health endpoint says so.
async fn restarted_production_runs_v1(env: &Env, mut crashed: Clamd) {
    crashed.process.kill();
    drop(crashed);
    let prod = env.start_production(&[]).await;
    still_on_v1(env, &prod).await;
    support::daemon::wait_ready(env, 200).await;
}

/// Lazily unmounts what a test mounted, whatever way the test ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn signal(pid: i32, sig: Signal) {
    rustix::process::kill_process(Pid::from_raw(pid).unwrap(), sig).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_killed_mid_load_rejects_the_candidate() {
    let (env, _d, prod) = live_v1("").await;
    let from = env.journal().len();
    put_heavy(&env);
    let pid = canary_pid(&env).await;
    signal(pid, Signal::KILL);
    let q = env.wait_after(from, "quarantine", |e| e.name() == "candidate.checked").await;
    assert_eq!(q.json()["reasons"][0]["reason"], "canary.load_failed", "{q:?}");
    still_on_v1(&env, &prod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_hung_during_load_is_killed_at_its_load_timeout() {
    let (env, _d, prod) = live_v1("").await;
    std::fs::write(env.path().join("policy.toml"), "load_timeout = \"2s\"\n").unwrap();
    // The policy is read at start: restart the daemon with it.
    drop(_d);
    let _d = env.spawn();
    env.wait_event("daemon.started", None).await;
    let from = env.journal().len();
    put_heavy(&env);
    let pid = canary_pid(&env).await;
    signal(pid, Signal::STOP);
    let q = env.wait_after(from, "canary verdict", |e| e.name() == "candidate.checked").await;
    assert_eq!(q.json()["reasons"][0]["reason"], "canary.load_timeout", "{q:?}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "stopped canary {pid} was not reaped");
    still_on_v1(&env, &prod).await;
}

/// Needs failpoints, which only debug builds have.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn canary_hung_during_its_corpus_scan_is_rejected_and_reaped() {
    let (env, d, prod) = live_v1("").await;
    std::fs::write(env.path().join("policy.toml"), "scan_timeout = \"500ms\"\n").unwrap();
    assert!(d.stop().success());
    // The daemon stops itself just before the corpus scan; the test hangs
    // the loaded canary, then lets the daemon scan through it.
    let d = env.spawn_with(&[("CLAMGATE_FAILPOINT", "corpus-scan:stop")]);
    let from = env.journal().len();
    env.put("daily-v2");
    // The restarted daemon also scans the corpus through the baseline (the
    // live release) once; that canary is let through, before or after.
    let pid = loop {
        stopped_at_failpoint(&env, d.pid()).await;
        let pid = *clamd_pids(&env.state().join("work")).last().expect("a canary runs");
        if !canary_db_dir(pid).contains("/releases/") {
            break pid;
        }
        signal(d.pid() as i32, Signal::CONT);
        eventually("the daemon to go on", || async { !is_stopped(d.pid()) }).await;
    };
    signal(pid, Signal::STOP);
    signal(d.pid() as i32, Signal::CONT);
    let checked = || env.journal().into_iter().skip(from).find(|e| e.name() == "candidate.checked");
    eventually("canary verdict", || async {
        if is_stopped(d.pid()) {
            signal(d.pid() as i32, Signal::CONT);
        }
        checked().is_some()
    })
    .await;
    let q = checked().unwrap();
    assert_eq!(q.json()["reasons"][0]["reason"], "canary.scan_timeout", "{q:?}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "stopped canary {pid} was not reaped");
    still_on_v1(&env, &prod).await;
}

#[tokio::test]
async fn a_clamd_hung_during_scans_gives_scan_timeouts_not_verdicts() {
    let clamd = Clamd::start(&set("good")).await.unwrap();
    let corpus = clamgate::corpus::Corpus::load(&corpus()).unwrap();
    clamd.process.signal(Signal::STOP);
    let verdicts = clamgate::corpus::scan(&clamd.client(), &corpus, 4, Duration::from_millis(300)).await;
    assert_eq!(verdicts.len(), corpus.samples.len());
    assert!(verdicts.values().all(|v| *v == clamgate::corpus::Outcome::Timeout), "{verdicts:?}");
    let j = clamgate::corpus::judge(&corpus, &verdicts, None, &clamgate::policy::Policy::default());
    assert!(j.reasons.iter().all(|r| r.reason == clamgate::reason::Code::CanaryScanTimeout));
    assert!(!j.reasons.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_while_writing_a_release_leaves_production_alone() {
    // The state dir on a tmpfs just big enough for the snapshot, not for the
    // release copy beside it.
    let env = Env::new("", "");
    let state = env.state();
    std::fs::create_dir_all(&state).unwrap();
    let mounted = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m,mode=0750", "tmpfs"]).arg(&state).status().unwrap();
    assert!(mounted.success(), "mount tmpfs (tests run as root)");
    let _unmount = Unmount(state.clone());

    let d = env.promoted("daily-v1").await;
    let prod = env.start_production(&[]).await;
    // ~1.2 MiB of signatures: the snapshot fits in what is left, the release does not.
    let mut sigs = String::new();
    for i in 1..=26_000u64 {
        sigs.push_str(&format!("{i:032x}:1000:Clamgate.Disk.{i}\n"));
    }
    std::fs::write(env.path().join("incoming/disk.hdb"), sigs).unwrap();
    let e = env.wait_event("candidate.error", None).await;
    assert!(e.get("error").unwrap().contains("No space left"), "{e:?}");
    still_on_v1(&env, &prod).await;
    // Our failure is retried later (not in a tight loop), and fails cleanly again.
    let first = env.journal().iter().position(|x| x.name() == "candidate.error").unwrap();
    env.wait_after(first + 1, "a retry", |x| x.name() == "candidate.error").await;
    still_on_v1(&env, &prod).await;
    // The daemon lives on.
    assert!(d.child.id() > 0 && Path::new(&format!("/proc/{}", d.pid())).exists(), "daemon died\n{}", env.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_updates_settles_to_the_last_one() {
    let (env, _d, prod) = live_v1("").await;
    let from = env.journal().len();
    let sets = ["good", "daily-v3-drop", "good-ndb", "fp", "miss", "daily-v1-zip"];
    for i in 0..30 {
        env.put(sets[i % sets.len()]);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    env.put("daily-v2");
    let v2 = set_id("daily-v2");
    env.wait_after(from, "the last update promoted", |e| e.name() == "promotion.done" && e.id() == Some(&v2)).await;
    let promoted: Vec<String> =
        env.journal().into_iter().skip(from).filter(|e| e.name() == "promotion.done").filter_map(|e| e.id().map(str::to_string)).collect();
    assert_eq!(promoted, std::slice::from_ref(&v2), "only the last update may be promoted");
    assert_eq!(prod.client().version().await.unwrap().database, Some(2));
}

#[cfg(debug_assertions)]
fn is_stopped(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
}

/// The database directory of a clamd started by `clamgate`, from its config.
#[cfg(debug_assertions)]
fn canary_db_dir(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let conf = args.iter().skip_while(|a| *a != "--config-file").nth(1).expect("--config-file");
    let text = std::fs::read_to_string(conf).unwrap();
    text.lines().find_map(|l| l.strip_prefix("DatabaseDirectory ")).expect("DatabaseDirectory").to_string()
}

#[cfg(debug_assertions)]
/// Waits (bounded) until `pid` is stopped by a `name:stop` failpoint.
async fn stopped_at_failpoint(env: &Env, pid: u32) {
    for _ in 0..6000 {
        if is_stopped(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the daemon never stopped at its failpoint\n{}", env.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn production_killed_during_reload_is_rolled_back() {
    // clamd starts a RELOAD at its next connection (the daemon's VERSION
    // poll) and loads in a thread; a heavy update keeps it loading while
    // the test kills it.
    let (env, d, prod) = live_v1("").await;
    let loads = || prod.log().matches("Reading databases from").count();
    let before = loads();
    heavy_sigs();
    env.put("daily-v2");
    put_heavy(&env);
    eventually("production to start reloading", || async { loads() > before }).await;
    signal(prod.process.pid() as i32, Signal::KILL);
    let log = prod.log();
    assert!(!log.contains("correctly reloaded"), "the kill must land during the reload\n{log}");
    let rb = env.wait_event("rollback.done", Some(&set_id("daily-v1"))).await;
    assert!(rb.get("reason").unwrap().contains("went away after RELOAD"), "{rb:?}");
    let q = std::fs::read_to_string(env.state().join("quarantine").join(rb.get("from").unwrap()).join("reasons.json")).unwrap();
    assert!(q.contains("production.verify_failed"), "{q}");
    restarted_production_runs_v1(&env, prod).await;
    assert!(Path::new(&format!("/proc/{}", d.pid())).exists(), "daemon died\n{}", env.log());
}

/// Needs failpoints, which only debug builds have.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn production_killed_during_the_smoke_scan_is_rolled_back() {
    // The daemon stops itself (failpoint `smoke-scan:stop`) once production
    // shows v2; production is killed; the daemon goes on into its smoke scan.
    let (env, d, prod) = live_v1("").await;
    assert!(d.stop().success());
    let d = env.spawn_with(&[("CLAMGATE_FAILPOINT", "smoke-scan:stop")]);
    env.put("daily-v2");
    stopped_at_failpoint(&env, d.pid()).await;
    assert!(prod.log().contains("correctly reloaded"), "production took the update before its smoke scan");
    signal(prod.process.pid() as i32, Signal::KILL);
    signal(d.pid() as i32, Signal::CONT);
    let rb = env.wait_event("rollback.done", Some(&set_id("daily-v1"))).await;
    assert!(rb.get("reason").unwrap().contains("smoke scan of"), "{rb:?}");
    assert_eq!(rb.get("from").as_deref(), Some(set_id("daily-v2").as_str()));
    let q = std::fs::read_to_string(env.state().join("quarantine").join(set_id("daily-v2")).join("reasons.json")).unwrap();
    assert!(q.contains("production.verify_failed"), "{q}");
    restarted_production_runs_v1(&env, prod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_state_dir_stops_promotions_not_scanning() {
    let (env, d, prod) = live_v1("").await;
    let state = env.state();
    let ro = |opts: &str| {
        let ok = std::process::Command::new("mount").args(["-o", opts]).arg(&state).status().unwrap();
        assert!(ok.success(), "mount -o {opts} (tests run as root)");
    };
    let bind = std::process::Command::new("mount").args(["--bind"]).arg(&state).arg(&state).status().unwrap();
    assert!(bind.success(), "bind mount (tests run as root)");
    let unmount = Unmount(state.clone());
    ro("remount,bind,ro");
    let before = env.journal().len();

    env.put("daily-v2");
    let log_has_error = || env.log().matches("Read-only file system").count();
    eventually("the daemon to report the read-only state dir", || async { log_has_error() >= 1 }).await;
    eventually("a retry, not a crash", || async { log_has_error() >= 2 }).await;
    assert_eq!(env.journal().len(), before, "nothing can be journaled on a read-only state dir");
    still_on_v1(&env, &prod).await;
    assert!(Path::new(&format!("/proc/{}", d.pid())).exists(), "daemon died\n{}", env.log());

    // Writable again: the update goes through on the next retry.
    ro("remount,bind,rw");
    drop(unmount);
    let done = env.wait_after(before, "promotion after the state dir is writable", |e| e.name() == "promotion.done").await;
    assert_eq!(done.id(), Some(set_id("daily-v2").as_str()));
    assert_eq!(prod.client().version().await.unwrap().database, Some(2));
}

/// A canary that cannot start (here: no clamd binary where the config says)
/// is our failure, not the candidate's: journaled, production untouched, and
/// the same files tried again a rescan interval later, not only when
/// incoming changes. (Before, the run counted as done and was never retried.)
#[tokio::test(flavor = "multi_thread")]
async fn a_canary_that_cannot_start_is_retried_without_a_change_in_incoming() {
    let env = Env::new("", "binary = \"/nonexistent/clamd\"");
    env.put("daily-v1");
    let _d = env.spawn();
    let e = env.wait_event("candidate.error", None).await;
    assert!(e.get("error").unwrap().contains("/nonexistent/clamd"), "{e:?}");
    let first = env.journal().iter().position(|x| x.name() == "candidate.error").unwrap();
    env.wait_after(first + 1, "a retry", |x| x.name() == "candidate.error").await;
    assert_eq!(env.live(), None, "nothing promoted");
    assert!(!env.journal().iter().any(|x| x.name() == "candidate.checked"), "no verdict on a candidate we could not check");
}
