//! A host that runs only freshclam and clamd, fed by a real gate's embedded
//! server (`clamgate run` with `[publish]`): the real /usr/bin/freshclam with
//! its own config and database directory, every mirror on loopback.
//! `PrivateMirror` at `/freshclam/<ring>` wants the ring's official
//! `daily.cld|cvd`, which an unsigned test release does not have; with
//! `DatabaseCustomURL`s at `/freshclam/<ring>/<file>` freshclam fetches the
//! ring's release, a real clamd loads it, and after `clamgate rollout revert`
//! the next freshclam run brings the older release back.

mod support;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use support::daemon::{Env, free_port, set_id};
use support::fleet::keygen;
use support::{Clamd, sample};

/// freshclam's own directory: its config and its database directory.
struct Freshclam {
    dir: tempfile::TempDir,
}

impl Freshclam {
    /// `lines` after the ones every run needs: no DNS, no scripted updates,
    /// no official mirror (the private mirror is ours, on loopback).
    fn new(mirror: &str, lines: &[String]) -> Freshclam {
        let dir = tempfile::Builder::new().prefix("freshclam-").tempdir_in("/tmp").unwrap();
        fs::create_dir_all(dir.path().join("db")).unwrap();
        let mut conf = vec![
            format!("DatabaseDirectory {}", dir.path().join("db").display()),
            "DatabaseOwner root".into(),
            "DNSDatabaseInfo no".into(),
            "ScriptedUpdates no".into(),
            format!("PrivateMirror {mirror}"),
            "MaxAttempts 1".into(),
            "ConnectTimeout 10".into(),
            "ReceiveTimeout 60".into(),
            "Foreground yes".into(),
        ];
        conf.extend(lines.iter().cloned());
        fs::write(dir.path().join("freshclam.conf"), conf.join("\n") + "\n").unwrap();
        Freshclam { dir }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    /// One update run (no daemon), bounded; exit code and everything it said.
    async fn run(&self) -> (i32, String) {
        let child = tokio::process::Command::new("/usr/bin/freshclam")
            .arg(format!("--config-file={}", self.dir.path().join("freshclam.conf").display()))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(180), child).await.expect("freshclam finished within 180 s").unwrap();
        (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn lines(env: &Env) -> Vec<Value> {
    fs::read_to_string(env.state().join("journal.jsonl")).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

async fn wait_line(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !lines(env).iter().any(&pred) {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}\njournal: {:#?}\nlog:\n{}", lines(env), env.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn completed(release: &str) -> impl Fn(&Value) -> bool {
    let release = release.to_string();
    move |v: &Value| v["event"] == "rollout.completed" && v["release"] == release.as_str()
}

/// HTTP dates have whole seconds and freshclam keeps its copy unless the
/// server's Last-Modified is newer than it: the server dates a ring's files
/// from the second after the ring moved, once that second has come (in the
/// second itself, a freshclam that fetched earlier in it sees no change yet).
async fn next_second_after(file: &Path) {
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let written = secs(fs::metadata(file).unwrap().modified().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while secs(SystemTime::now()) <= written {
        assert!(tokio::time::Instant::now() < deadline, "the clock stood still");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn gate(publish: &Path, key: &Path, listen: SocketAddr) -> Env {
    Env::new(
        &format!(
            "[publish]\ndir = \"{}\"\nlisten = \"{listen}\"\nkey = \"{}\"\nhost_poll_interval = \"200ms\"\n[[publish.ring]]\nname = \"canary\"\nhosts = []\nsoak = \"0s\"\n",
            publish.display(),
            key.display()
        ),
        "",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freshclam_only_host_follows_a_ring_through_custom_urls_back_to_an_older_release() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path());
    let publish = dir.path().join("publish");
    let listen = free_port();
    let gate = gate(&publish, &keys.key, listen);
    let (a, b) = (set_id("daily-v1"), set_id("daily-v2"));
    let a_bytes = fs::read(support::set("daily-v1").join("daily.cud")).unwrap();
    let b_bytes = fs::read(support::set("daily-v2").join("daily.cud")).unwrap();
    gate.put("daily-v1");
    let _g = gate.spawn();
    wait_line(&gate, "A published and out", completed(&a)).await;
    let view = format!("http://{listen}/freshclam/canary");

    // (a) PrivateMirror: freshclam asks the ring's view for daily.cld, then
    // daily.cvd. A release of unsigned test containers has neither (the
    // gate's own canary refuses an unsigned daily.cvd, with the words
    // freshclam would use), so freshclam finds nothing to update from.
    let mirror = Freshclam::new(&view, &["ExcludeDatabase main".into(), "ExcludeDatabase bytecode".into()]);
    let (code, out) = mirror.run().await;
    assert_ne!(code, 0, "freshclam updated daily from a release without daily.cvd:\n{out}");
    for words in [
        format!("WARNING: remote_cvdhead: file not found: {view}/daily.cld"),
        format!("WARNING: remote_cvdhead: file not found: {view}/daily.cvd"),
        format!("ERROR: check_for_new_database_version: Failed to find daily database using server {view}."),
        "ERROR: Update failed for database: daily".into(),
    ] {
        assert!(out.contains(&words), "freshclam did not say {words:?}:\n{out}");
    }
    assert!(!mirror.db().join("daily.cvd").exists() && !mirror.db().join("daily.cld").exists(), "{out}");

    // (b) DatabaseCustomURL: the ring's files into freshclam's own dir.
    let custom = Freshclam::new(
        &view,
        &["ExcludeDatabase daily".into(), "ExcludeDatabase main".into(), "ExcludeDatabase bytecode".into(), format!("DatabaseCustomURL {view}/daily.cud")],
    );
    let (code, out) = custom.run().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Database test passed.") && out.contains("daily.cud updated (version: custom database, sigs: "), "{out}");
    assert_eq!(fs::read(custom.db().join("daily.cud")).unwrap(), a_bytes, "freshclam's copy is not A's daily.cud");
    let clamd = Clamd::start(&custom.db()).await.unwrap();
    let c = clamd.client();
    assert_eq!(c.version().await.unwrap().database, Some(1));
    assert!(c.scan_file(&sample("infected/clam.exe")).await.unwrap().is_infected());
    // Nothing changed: a conditional GET, freshclam keeps its copy.
    let (code, out) = custom.run().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("daily.cud is up-to-date"), "{out}");

    // B through the ring: freshclam follows.
    gate.put("daily-v2");
    wait_line(&gate, "B published and out", completed(&b)).await;
    next_second_after(&publish.join("rings/canary.json")).await;
    let (code, out) = custom.run().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("daily.cud updated"), "{out}");
    assert_eq!(fs::read(custom.db().join("daily.cud")).unwrap(), b_bytes);
    c.reload().await.unwrap();
    support::eventually("clamd runs B (daily 2)", || async { matches!(c.version().await, Ok(v) if v.database == Some(2)) }).await;

    // The operator sends the ring back: freshclam, which never downgrades an
    // official database, takes the older custom one because the ring's view
    // dates its files from the ring's move.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clamgate"))
        .args(["rollout", "revert", "canary", "--config"])
        .arg(&gate.config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("USER", "ops")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ring: Value = serde_json::from_slice(&fs::read(publish.join("rings/canary.json")).unwrap()).unwrap();
    assert_eq!(ring["release"], a.as_str(), "{ring}");
    next_second_after(&publish.join("rings/canary.json")).await;
    let (code, out) = custom.run().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("daily.cud updated"), "freshclam kept B after the revert:\n{out}");
    assert_eq!(fs::read(custom.db().join("daily.cud")).unwrap(), a_bytes, "freshclam's copy is not A's again");
    c.reload().await.unwrap();
    support::eventually("clamd runs A (daily 1) again", || async { matches!(c.version().await, Ok(v) if v.database == Some(1)) }).await;
    assert!(c.scan_file(&sample("infected/clam.exe")).await.unwrap().is_infected());

    // The same unsigned container as daily.cvd never reaches the tree: the
    // gate's canary clamd refuses it with the words freshclam's own test
    // load uses, so PrivateMirror still finds no daily.cvd.
    let incoming = gate.path().join("incoming");
    fs::remove_file(incoming.join("daily.cud")).unwrap();
    fs::write(incoming.join("daily.cvd.tmp"), &b_bytes).unwrap();
    fs::rename(incoming.join("daily.cvd.tmp"), incoming.join("daily.cvd")).unwrap();
    // Under the shipped per-file isolation: daily.cvd held back, nothing left.
    wait_line(&gate, "the unsigned daily.cvd turned down", |v| v["event"] == "candidate.reduced").await;
    let log = gate.log();
    for words in [
        "daily.cvd: canary clamd refused the databases: cli_decodesig: Resulting signature too large (128 vs 16).",
        "daily.cvd: Can't verify database integrity",
    ] {
        assert!(log.contains(words), "the gate did not say {words:?}:\n{log}");
    }
    let (code, out) = mirror.run().await;
    assert!(code != 0 && out.contains(&format!("WARNING: remote_cvdhead: file not found: {view}/daily.cvd")), "{out}");
}
