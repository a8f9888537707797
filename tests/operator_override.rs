//! The operator against the gate's verdicts: `show` a rejected candidate or
//! a release (files, reasons, canary log, diff), `promote --force` after a
//! false alarm, `recheck` to have the daemon look again, and `--json` on
//! every command that changes state. Real binary, real daemon, real
//! production clamd.

mod support;

use std::process::Output;

use serde_json::Value;
use support::daemon::{DaemonProc, Env, set_id};
use support::*;

/// Smoke samples that the `fp` set does not flag, so that production can
/// verify it once an operator accepts it (its false positive is letter.txt).
const SMOKE: &str = "smoke_samples = [\"infected/clam.exe\", \"clean/newsletter.html\"]";

fn clamgate(env: &Env, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_clamgate"))
        .args(args)
        .arg("--config")
        .arg(&env.config)
        .env("CLAMGATE_LOCK_WAIT", "30s")
        .env("SUDO_USER", "alice")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `args… --json`: exit code and the one JSON object on stdout.
fn json(env: &Env, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = clamgate(env, &all);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not one JSON object ({e}): {text}\nstderr: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

/// `good` live in production, then the `fp` set rejected for its false
/// positive, as a whole (`isolation = "set"`): these are the operator's
/// answers to a quarantined candidate.
async fn fp_quarantined() -> (Env, DaemonProc, Clamd) {
    let env = Env::new(SMOKE, "");
    env.policy("isolation = \"set\"\n");
    let d = env.promoted("good").await;
    let prod = env.start_production(&[]).await;
    env.put("fp");
    env.wait_event("candidate.quarantined", Some(&set_id("fp"))).await;
    (env, d, prod)
}

fn codes(reasons: &Value) -> Vec<&str> {
    reasons.as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_false_positive_is_shown_survives_a_restart_and_is_promoted_by_force() {
    let (env, d, prod) = fp_quarantined().await;
    let (good, fp) = (set_id("good"), set_id("fp"));

    // One place for everything about it, including what it would change.
    let (code, v) = json(&env, &["show", &fp[..6]]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!((v["id"].as_str(), v["kind"].as_str(), v["live"].as_bool()), (Some(fp.as_str()), Some("candidate"), Some(false)), "{v:#}");
    assert_eq!(v["bad"]["source"], "gate");
    assert!(codes(&v["bad"]["reasons"]).contains(&"corpus.false_positive"), "{v:#}");
    assert_eq!(v["verdict"]["verdict"], "reject");
    assert!(v["verdict"]["checks"].as_array().unwrap().iter().any(|c| c["step"] == "corpus" && c["status"] == "fail"), "{v:#}");
    let files: Vec<&str> = v["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(files, ["clamgate.hdb", "fp.hdb"]);
    assert!(v["files"].as_array().unwrap().iter().all(|f| f["sha256"].as_str().unwrap().len() == 64 && f["signatures"] == 1), "{v:#}");
    assert!(!v["canary_log"].as_array().unwrap().is_empty(), "the canary's log is kept: {v:#}");
    assert_eq!(v["diff"]["against"], good.as_str());
    let dbs = v["diff"]["databases"].as_array().unwrap();
    let db = |name: &str| dbs.iter().find(|d| d["database"] == name).unwrap_or_else(|| panic!("{name}: {v:#}"));
    assert_eq!(db("clamgate.hdb")["compared"], "identical");
    assert_eq!((db("fp.hdb")["added"].as_u64(), db("fp.hdb")["removed"].as_u64()), (Some(1), Some(0)));
    assert_eq!(db("fp.hdb")["added_names"], serde_json::json!(["Clamgate.Test.FalsePositive"]));
    let text = ok(&clamgate(&env, &["show", &fp]));
    assert!(text.contains("[corpus.false_positive]") && text.contains("fp.hdb") && text.contains("+1 -0 (new database)"), "{text}");
    assert!(text.contains("+ Clamgate.Test.FalsePositive") && text.contains("canary    the last"), "{text}");

    // Regression: after a restart the daemon sees the same files again and
    // journals them as known bad; status used to show only "known bad".
    drop(d);
    let from = env.journal().len();
    let _d = env.spawn();
    env.wait_after(from, "known_bad after the restart", |e| e.name() == "candidate.known_bad" && e.id() == Some(&fp)).await;
    let (_, status) = json(&env, &["status"]);
    let last = &status["last_candidate"];
    assert_eq!((last["id"].as_str(), last["verdict"].as_str()), (Some(fp.as_str()), Some("known_bad")), "{status:#}");
    assert_eq!(codes(&last["reasons"]), ["corpus.false_positive"], "the real reason: {status:#}");
    assert_eq!(last["rejected"]["source"], "gate");
    let text = String::from_utf8_lossy(&clamgate(&env, &["status"]).stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("last")).unwrap();
    assert!(line.contains("seen again, not checked again") && line.contains("[corpus.false_positive]"), "{text}");
    let (_, v) = json(&env, &["show", &fp]);
    assert!(codes(&v["bad"]["reasons"]).contains(&"corpus.false_positive"), "show after the restart: {v:#}");

    // Without --force: one line naming the reasons and the flag.
    let out = clamgate(&env, &["promote", &fp]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corpus.false_positive") && err.contains("--force") && !err.contains("no release"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let (code, v) = json(&env, &["promote", &fp]);
    assert_eq!((code, v["error"]["reason"].as_str()), (1, Some("promote.quarantined")), "{v:#}");

    // With it: a release from the quarantined files, verified in production.
    let (code, v) = json(&env, &["promote", &fp[..6], "--force"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!((v["action"].as_str(), v["id"].as_str(), v["from"].as_str()), (Some("promote"), Some(fp.as_str()), Some(good.as_str())), "{v:#}");
    assert_eq!(v["production"]["result"], "scanning", "{v:#}");
    assert_eq!((v["by"].as_str(), v["overrode"]["source"].as_str()), (Some("alice"), Some("gate")), "{v:#}");
    assert_eq!(env.live(), Some(fp.clone()));
    let letter = support::corpus().join("clean/letter.txt");
    assert!(prod.client().scan_file(&letter).await.unwrap().is_infected(), "production runs the accepted set");
    let forced = env.journal().into_iter().find(|e| e.name() == "release.forced").expect("journaled");
    assert_eq!((forced.id(), forced.get("by").as_deref()), (Some(fp.as_str()), Some("alice")));
    let (_, releases) = json(&env, &["releases"]);
    let row = releases.as_array().unwrap().iter().find(|r| r["id"] == fp.as_str()).unwrap();
    assert!(row["live"].as_bool().unwrap() && row["bad"].is_null(), "{releases:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn recheck_has_the_daemon_check_the_same_files_again() {
    let (env, _d, _prod) = fp_quarantined().await;
    let fp = set_id("fp");
    let checked = |env: &Env| env.journal().iter().filter(|e| e.name() == "candidate.checked" && e.id() == Some(&fp)).count();
    assert_eq!(checked(&env), 1);

    let from = env.journal().len();
    let (code, v) = json(&env, &["recheck", &fp[..6]]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!((v["action"].as_str(), v["id"].as_str(), v["by"].as_str()), (Some("recheck"), Some(fp.as_str()), Some("alice")), "{v:#}");
    assert!(codes(&v["overrode"]["reasons"]).contains(&"corpus.false_positive"), "{v:#}");
    let cleared = env.wait_after(from, "quarantine.cleared", |e| e.name() == "quarantine.cleared").await;
    assert_eq!(cleared.get("by").as_deref(), Some("alice"));

    // The daemon checks the same files again (and, the same false positive,
    // rejects them again), without anything changing in incoming.
    env.wait_after(from, "checked again", |e| e.name() == "candidate.checked" && e.id() == Some(&fp)).await;
    env.wait_after(from, "quarantined again", |e| e.name() == "candidate.quarantined" && e.id() == Some(&fp)).await;
    assert_eq!(checked(&env), 2);

    let (code, v) = json(&env, &["recheck", "ffffff"]);
    assert_eq!((code, v["error"]["reason"].as_str()), (1, Some("recheck.no_such_id")), "{v:#}");
    let good = set_id("good");
    let (code, v) = json(&env, &["recheck", &good]);
    assert_eq!((code, v["error"]["reason"].as_str()), (1, Some("recheck.not_quarantined")), "{v:#}");
}

/// Scripts drive rollback, promote, pin and unpin by their JSON: one object
/// each, with the production verification; errors in the usual form.
#[tokio::test(flavor = "multi_thread")]
async fn state_changes_print_one_json_object_and_show_diffs_containers() {
    let env = Env::new("", "");
    let _d = env.promoted("daily-v1").await;
    let _prod = env.start_production(&[]).await;
    env.put("daily-v2");
    env.wait_event("promotion.done", Some(&set_id("daily-v2"))).await;
    let (v1, v2) = (set_id("daily-v1"), set_id("daily-v2"));

    // A kept release against the live one: the containers are unpacked.
    let (_, v) = json(&env, &["show", &v1]);
    assert_eq!((v["kind"].as_str(), v["live"].as_bool()), (Some("release"), Some(false)), "{v:#}");
    assert_eq!(v["files"][0]["version"], 1);
    let daily = &v["diff"]["databases"][0];
    assert_eq!((daily["database"].as_str(), daily["compared"].as_str()), (Some("daily"), Some("signatures")), "{v:#}");
    assert_eq!((daily["added"].as_u64(), daily["removed"].as_u64()), (Some(0), Some(20)), "v2 has 120 signatures, v1 100: {v:#}");
    assert_eq!(daily["removed_names"].as_array().unwrap().len(), 20);
    assert!(daily["removed_names"].as_array().unwrap().iter().all(|n| n.as_str().unwrap().starts_with("Clamgate.Filler.")), "{v:#}");
    let (_, live) = json(&env, &["show", &v2]);
    assert_eq!(live["diff"]["unavailable"], "this is the live release", "{live:#}");

    let (code, v) = json(&env, &["rollback"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        (v["action"].as_str(), v["id"].as_str(), v["from"].as_str(), v["marked_bad"].as_str()),
        (Some("rollback"), Some(v1.as_str()), Some(v2.as_str()), Some(v2.as_str())),
        "{v:#}"
    );
    assert_eq!((v["production"]["result"].as_str(), v["production"]["database"].as_u64()), (Some("scanning"), Some(1)), "{v:#}");

    let (code, v) = json(&env, &["promote", &v2, "--force"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        (v["id"].as_str(), v["overrode"]["source"].as_str(), v["production"]["database"].as_u64()),
        (Some(v2.as_str()), Some("operator"), Some(2)),
        "{v:#}"
    );

    let (code, v) = json(&env, &["pin"]);
    assert_eq!((code, v["action"].as_str(), v["id"].as_str(), v["changed"].as_bool()), (0, Some("pin"), Some(v2.as_str()), Some(true)), "{v:#}");
    let (_, v) = json(&env, &["unpin"]);
    assert_eq!((v["action"].as_str(), v["changed"].as_bool(), v["by"].as_str()), (Some("unpin"), Some(true), Some("alice")), "{v:#}");
    let (code, v) = json(&env, &["unpin"]);
    assert_eq!((code, v["changed"].as_bool()), (0, Some(false)), "{v:#}");

    let (code, v) = json(&env, &["promote", "ffffff"]);
    assert_eq!((code, v["error"]["reason"].as_str()), (1, Some("promote.no_such_release")), "{v:#}");
    let (code, v) = json(&env, &["rollback", "--to", &v2]);
    assert_eq!((code, v["error"]["reason"].as_str()), (1, Some("rollback.already_live")), "{v:#}");
}
