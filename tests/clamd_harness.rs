//! The clamd client against a real clamd started from testdata/.

mod support;

use std::time::Duration;

use clamgate::clamd::ScanVerdict;
use support::*;

const SIG: &str = "Clamgate.Test.ClamExe.UNOFFICIAL";

#[tokio::test]
async fn good_set_detects_test_files_and_passes_clean_mail() {
    let clamd = Clamd::start(&set("good")).await.expect("good set loads");
    let c = clamd.client();
    c.ping().await.unwrap();
    assert_eq!(c.scan_file(&sample("infected/clam.exe")).await.unwrap(), ScanVerdict::Infected(SIG.into()));
    // Every infected sample, through every container, by one hash signature.
    for entry in walk(&corpus().join("infected")) {
        let v = c.scan_file(&entry).await.unwrap();
        assert_eq!(v, ScanVerdict::Infected(SIG.into()), "{}", entry.display());
    }
    for entry in walk(&corpus().join("clean")) {
        assert_eq!(c.scan_file(&entry).await.unwrap(), ScanVerdict::Clean, "{}", entry.display());
    }
}

#[tokio::test]
async fn body_and_logical_signatures_detect_too() {
    for (name, sig) in [("good-ndb", "Clamgate.Test.ClamExe.Body.UNOFFICIAL"), ("good-ldb", "Clamgate.Test.ClamExe.Logical.UNOFFICIAL")] {
        let clamd = Clamd::start(&set(name)).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let v = clamd.client().scan_file(&sample("infected/archives/clam.zip")).await.unwrap();
        assert_eq!(v, ScanVerdict::Infected(sig.into()), "{name}");
    }
}

#[tokio::test]
async fn streamed_scan_in_small_pieces_gives_the_same_verdict() {
    let clamd = Clamd::start(&set("good")).await.unwrap();
    let data = std::fs::read(sample("infected/mail/clam.mail")).unwrap();
    let mut scan = clamd.client().stream().await.unwrap();
    for piece in data.chunks(7) {
        scan.send(piece).await.unwrap();
    }
    assert_eq!(scan.finish().await.unwrap(), ScanVerdict::Infected(SIG.into()));
}

#[tokio::test]
async fn every_bad_set_keeps_clamd_from_starting_and_says_why() {
    let cases = [
        ("bad-ndb", "broken.ndb"),
        ("bad-hdb", "Invalid value for the size field"),
        ("bad-ldb", "Missing closing parenthesis"),
        ("short-pattern", "too short"),
        ("empty", "Empty database file"),
        ("daily-truncated", "daily.cud"),
        ("daily-md5-mismatch", "daily.cud"),
        ("daily-header-cut", "Can't read CVD header"),
        ("load-fail", "Invalid offset value"),
    ];
    for (name, want) in cases {
        let err = match Clamd::start(&set(name)).await {
            Ok(_) => panic!("{name}: clamd started on a bad set"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(msg.contains("clamd exited"), "{name}: {msg}");
        assert!(msg.contains(want), "{name}: reason should mention {want:?}: {msg}");
        assert!(err.log().is_some_and(|l| l.contains("LibClamAV Error")), "{name}: log not captured");
    }
}

#[tokio::test]
async fn reload_follows_a_symlink_swapped_by_rename() {
    let root = tempfile::tempdir().unwrap();
    let current = root.path().join("current");
    swap_symlink(&set("daily-v1"), &current);
    let clamd = Clamd::start(&current).await.unwrap();
    let c = clamd.client();
    let v = c.version().await.unwrap();
    assert_eq!(v.database, Some(1), "{v:?}");
    assert!(v.engine.starts_with("1."), "{v:?}");

    swap_symlink(&set("daily-v2"), &current);
    c.reload().await.unwrap();
    eventually("VERSION shows database 2", || async { matches!(c.version().await, Ok(v) if v.database == Some(2)) }).await;
    assert_eq!(c.scan_file(&sample("infected/clam.exe")).await.unwrap(), ScanVerdict::Infected(SIG.into()));
}

#[tokio::test]
async fn version_parses_from_a_live_clamd() {
    let clamd = Clamd::start(&set("good")).await.unwrap();
    let v = clamd.client().version().await.unwrap();
    assert_eq!(v.database, None, "custom-only set has no daily version: {v:?}");
}

#[tokio::test]
async fn a_dead_clamd_is_an_unreachable_error_naming_the_socket() {
    let mut clamd = Clamd::start(&set("good")).await.unwrap();
    let c = clamd.client();
    clamd.process.kill();
    let err = c.ping().await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains(&clamd.socket().display().to_string()), "{err}");
}

#[tokio::test]
async fn a_hung_clamd_times_out_instead_of_hanging_the_caller() {
    let clamd = Clamd::start(&set("good")).await.unwrap();
    clamd.process.signal(rustix::process::Signal::STOP);
    let c = clamd.client().with_timeout(Duration::from_millis(300));
    let err = c.scan_file(&sample("clean/letter.txt")).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn dropping_the_handle_kills_and_reaps_clamd() {
    let clamd = Clamd::start(&set("good")).await.unwrap();
    let dir = clamd.dir().to_path_buf();
    let pid = clamd.process.pid();
    assert_eq!(clamds_under(&dir), 1);
    drop(clamd);
    assert_eq!(clamds_under(&dir), 0);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "clamd {pid} not reaped");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out.sort();
    out
}
