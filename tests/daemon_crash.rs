//! Crash safety: the daemon is SIGKILLed (by itself, at a failpoint) at each
//! step of a promotion and of an automatic rollback, then restarted. At the
//! moment of the crash and after the restart, `current` must point at a
//! complete release that passed its canary; after the restart the journal
//! parses, no temporary file is left, and production scans the release the
//! story should end on.
//!
//! Failpoints exist only in debug builds, so these tests are compiled only
//! there: `cargo test --release` has nothing to crash at.
#![cfg(debug_assertions)]

mod support;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use clamgate::candidate::Manifest;
use clamgate::failpoint;
use sha2::{Digest, Sha256};
use support::daemon::{Env, set_id, wait_ready};
use support::*;

/// How the update behaves once it reaches production.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Story {
    /// daily-v1 live, daily-v2 promoted.
    Promoted,
    /// daily-v1-zip live, daily-v2 passes the canary but fails production's
    /// smoke scan (production runs `ScanArchive no`) and is rolled back.
    RolledBack,
    /// daily-v1 live; daily-v2 arrives with the `pair` feed files, two of
    /// which fail only together: bisection holds them back and the reduced
    /// set (daily-v2 and the good feeds) is promoted.
    Isolated,
}

const PAIR_POLICY: &str = "allowed_false_positives = 1\nmax_bisect_runs = 16\n";

/// The `pair` set's files with daily-v2, and without the failing pair.
fn pair_files(with_pair: bool) -> Vec<(&'static str, String)> {
    let mut files: Vec<(&'static str, String)> = vec![("daily-v2", "daily.cud".into())];
    for e in fs::read_dir(set("pair")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if with_pair || !name.starts_with("pair-") {
            files.push(("pair", name));
        }
    }
    files
}

fn files_id(files: &[(&str, String)]) -> String {
    let db = |(s, f): &(&str, String)| {
        let bytes = fs::read(set(s).join(f)).unwrap();
        clamgate::candidate::DbFile { name: f.clone(), size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)), signatures: 0, header: None }
    };
    Manifest::new(files.iter().map(db).collect()).id
}

impl Story {
    fn live_first(self) -> &'static str {
        match self {
            Story::Promoted | Story::Isolated => "daily-v1",
            Story::RolledBack => "daily-v1-zip",
        }
    }

    fn ends_on_id(self) -> String {
        match self {
            Story::Isolated => files_id(&pair_files(false)),
            _ => set_id(self.ends_on()),
        }
    }

    fn ends_on(self) -> &'static str {
        match self {
            Story::Promoted | Story::Isolated => "daily-v2",
            Story::RolledBack => "daily-v1-zip",
        }
    }
}

async fn crash_at(point: &str, story: Story) {
    assert!(failpoint::ALL.iter().any(|p| p.name() == point), "{point} is not a failpoint");
    let smoke = match story {
        Story::Promoted | Story::Isolated => "",
        Story::RolledBack => "smoke_samples = [\"infected/archives/clam.zip\", \"clean/letter.txt\"]",
    };
    let env = Env::new(smoke, "");
    env.put(story.live_first());
    let first = env.spawn();
    env.wait_event("promotion.done", Some(&set_id(story.live_first()))).await;
    let prod = match story {
        Story::Promoted | Story::Isolated => env.start_production(&[]).await,
        Story::RolledBack => env.start_production(&["ScanArchive no"]).await,
    };
    wait_ready(&env, 200).await;
    assert!(first.stop().success(), "{}", env.log());

    // The crash: the daemon kills itself with SIGKILL at the point.
    match story {
        Story::Isolated => {
            env.policy(PAIR_POLICY);
            let files = pair_files(true);
            let picked: Vec<(&str, &str)> = files.iter().map(|(s, f)| (*s, f.as_str())).collect();
            env.put_files(&picked);
        }
        _ => env.put("daily-v2"),
    }
    let mut crashing = env.spawn_with(&[("CLAMGATE_FAILPOINT", point)]);
    let status = crashing.wait_exit();
    assert_eq!(status.signal(), Some(9), "the daemon did not reach {point}: {status:?}\n{}", env.log());
    assert_live_is_complete_and_checked(&env);
    let before = env.journal().len();

    // The restart finishes or undoes what was interrupted.
    let _daemon = env.spawn();
    let end = story.ends_on_id();
    match story {
        Story::Promoted | Story::Isolated => {
            env.wait_after(before, "promotion of daily-v2", |e| e.name() == "promotion.done" && e.id() == Some(end.as_str())).await
        }
        Story::RolledBack => env.wait_after(before, "rollback to daily-v1-zip", |e| e.name() == "rollback.done" && e.id() == Some(end.as_str())).await,
    };
    assert_eq!(env.live(), Some(end.clone()), "{}", env.log());
    assert_live_is_complete_and_checked(&env);
    if story == Story::RolledBack {
        let q = fs::read_to_string(env.state().join("quarantine").join(set_id("daily-v2")).join("reasons.json")).unwrap();
        assert!(q.contains("production.verify_failed"), "{q}");
    }

    let c = prod.client();
    let want = if story.ends_on() == "daily-v2" { 2 } else { 1 };
    assert_eq!(c.version().await.unwrap().database, Some(want));
    assert!(c.scan_file(&sample("infected/archives/clam.zip")).await.unwrap().is_infected());
    assert!(!c.scan_file(&sample("clean/letter.txt")).await.unwrap().is_infected());
    wait_ready(&env, 200).await;

    eventually("the work directory to empty", || async { entries(&env.state().join("work")).is_empty() }).await;
    let leftovers: Vec<String> = entries(&env.state().join("releases")).into_iter().filter(|n| n.starts_with('.')).collect();
    assert!(leftovers.is_empty(), "temporary releases left: {leftovers:?}");
    assert!(fs::symlink_metadata(env.state().join("current.new")).is_err(), "current.new left behind");
    assert_eq!(clamds_under(env.path()), 1, "only production's clamd may run");
}

/// `current` resolves to a release whose files all match its manifest, and
/// the journal shows that release passed a canary run.
fn assert_live_is_complete_and_checked(env: &Env) {
    let id = env.live().expect("current points somewhere");
    let dir = env.current();
    let manifest: Manifest = serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).expect("manifest.json")).unwrap();
    assert_eq!(manifest.id, id);
    for f in &manifest.files {
        let bytes = fs::read(dir.join(&f.name)).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert_eq!(bytes.len() as u64, f.size, "{} in release {id}", f.name);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), f.sha256, "{} in release {id}", f.name);
    }
    let journal = env.journal();
    assert!(
        journal.iter().any(|e| e.name() == "candidate.checked" && e.id() == Some(id.as_str()) && e.get("verdict").as_deref() == Some("pass")),
        "live release {id} has no passing canary in the journal: {journal:#?}"
    );
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_while_the_canary_runs() {
    // The canary clamd dies with the daemon (parent-death signal), or the
    // final check that only production's clamd runs fails.
    crash_at("corpus-scan", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_while_bisecting() {
    // Nothing was recorded yet: the restart attributes again from scratch.
    crash_at("isolate-bisect", Story::Isolated).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_the_reduced_set_is_checked() {
    // The held files were recorded: the restart goes straight to the reduced set.
    crash_at("isolate-reduced", Story::Isolated).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_release_files_are_written() {
    crash_at("release-files-written", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_release_is_renamed_into_place() {
    crash_at("release-written", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_new_link_is_created() {
    crash_at("current-link-created", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_current_is_swapped() {
    crash_at("promotion-swapped", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_production_reload() {
    crash_at("promotion-reloaded", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_the_smoke_scan() {
    crash_at("smoke-scan", Story::Promoted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_the_smoke_scan_of_a_release_that_fails_production() {
    crash_at("smoke-scan", Story::RolledBack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_swapping_to_a_release_that_fails_production() {
    crash_at("promotion-swapped", Story::RolledBack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_reloading_a_release_that_fails_production() {
    crash_at("promotion-reloaded", Story::RolledBack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_rollback_is_journaled_before_anything_is_marked() {
    crash_at("rollback-begun", Story::RolledBack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_rollback_swap() {
    crash_at("rollback-swapped", Story::RolledBack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_rollback_reload() {
    crash_at("rollback-reloaded", Story::RolledBack).await;
}

/// Every failpoint the code has is exercised above or, for managed mode,
/// in `tests/managed_crash.rs`. (That every crash point
/// the code hits is in `failpoint::ALL` the compiler now checks: `hit` takes
/// a `failpoint::Point`, and `ALL` is generated from the same list.)
#[test]
fn every_failpoint_has_a_crash_test() {
    let me = [include_str!("daemon_crash.rs"), include_str!("managed_crash.rs")].concat();
    for p in failpoint::ALL {
        assert!(me.contains(&format!("crash_at(\"{}\"", p.name())), "no crash test for failpoint {}", p.name());
    }
}
