//! Per-file isolation with real clamds: a bad feed file holds back only
//! itself, the rest of the candidate goes live after passing the whole gate
//! again, and `isolation = "set"` rejects it all as before.

mod support;

use std::path::Path;

use support::daemon::Env;
use support::*;

/// The daemon on daily-v1, production scanning it.
async fn live_v1() -> (Env, support::daemon::DaemonProc, Clamd) {
    let env = Env::new("", "");
    let d = env.promoted("daily-v1").await;
    let prod = env.start_production(&[]).await;
    (env, d, prod)
}

fn names(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key].as_array().map(|a| a.iter().map(|f| f["name"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

/// Waits for the reduced set of the candidate now in incoming to be decided.
async fn reduced(env: &Env, from: usize) -> serde_json::Value {
    env.wait_after(from, "candidate.reduced", |e| e.name() == "candidate.reduced").await.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_false_positive_feed_ndb_is_held_the_new_daily_goes_live_and_its_fix_later() {
    let (env, _d, prod) = live_v1().await;
    let before = env.journal().len();
    env.put_files(&[("daily-v2", "daily.cud"), ("fp-ndb", "fp.ndb"), ("good-ndb", "clamgate.ndb")]);
    let r = reduced(&env, before).await;
    assert_eq!(r["outcome"], "reduced", "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    env.wait_after(before, "promotion of the reduced set", |e| e.name() == "promotion.done" && e.id() == Some(id.as_str())).await;
    let isolated = env.wait_after(before, "candidate.isolated", |e| e.name() == "candidate.isolated").await.json();
    assert_eq!(isolated["bisect_runs"], 0, "the signature name names the file: {isolated}");

    let m = env.live_manifest();
    assert_eq!(names(&m, "files"), ["clamgate.ndb", "daily.cud"]);
    assert_eq!(names(&m, "held"), ["fp.ndb"]);
    assert_eq!(m["held"][0]["reason"], "corpus.false_positive");
    let detail = m["held"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("Clamgate.Test.FalsePositive.Ndb") && detail.contains("clean/letter.txt"), "the signature and the sample: {m}");
    assert_eq!(prod.client().version().await.unwrap().database, Some(2), "production runs the new daily");
    assert!(!prod.client().scan_file(&sample("clean/letter.txt")).await.unwrap().is_infected());

    // status names the file and the signature, in text and JSON.
    let status = Cmd::new();
    let cfg = env.config.to_str().unwrap();
    let (_, text, _) = status.run(&["status", "--config", cfg]);
    assert!(text.contains("fp.ndb") && text.contains("Clamgate.Test.FalsePositive.Ndb"), "{text}");
    let (_, json) = status.json(&["status", "--config", cfg]);
    assert_eq!(names(&json, "held"), ["fp.ndb"], "{json}");
    let m = support::metrics::scrape_until(env.health, "the held file counted", |m| {
        m.value("clamgate_held_files", &[("reason", "corpus.false_positive")]) == Some(1.0)
    })
    .await;
    assert_eq!(m.value("clamgate_held_files", &[]), Some(1.0), "one held file in all:\n{}", m.text);
    // One candidate, counted once, by its final outcome: the reduced set passed.
    assert_eq!(m.value("clamgate_candidates_total", &[("outcome", "reject")]), Some(0.0), "{}", m.text);
    assert_eq!(m.value("clamgate_candidates_total", &[("outcome", "pass")]), Some(2.0), "daily-v1, then the reduced set:\n{}", m.text);

    // The feed publishes a fixed fp.ndb: it is checked again and goes live.
    let before = env.journal().len();
    env.put_files(&[("daily-v2", "daily.cud"), ("fp-ndb-fixed", "fp.ndb"), ("good-ndb", "clamgate.ndb")]);
    let done = env.wait_after(before, "promotion of the fixed feed", |e| e.name() == "promotion.done").await;
    let m = env.live_manifest();
    assert_eq!(done.id(), m["id"].as_str());
    assert_eq!(names(&m, "files"), ["clamgate.ndb", "daily.cud", "fp.ndb"]);
    assert!(names(&m, "held").is_empty(), "{m}");
    support::metrics::scrape_until(env.health, "no held file once the fix is live", |m| m.value("clamgate_held_files", &[]).unwrap_or(0.0) == 0.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_feed_file_clamd_refuses_is_held_and_the_rest_goes_live() {
    let (env, _d, prod) = live_v1().await;
    let before = env.journal().len();
    env.put_files(&[("daily-v2", "daily.cud"), ("load-fail", "offset.ndb"), ("good-ndb", "clamgate.ndb")]);
    let r = reduced(&env, before).await;
    assert_eq!(r["outcome"], "reduced", "{r}");
    assert_eq!(names(&r, "held"), ["offset.ndb"]);
    assert_eq!(r["held"][0]["reason"], "canary.load_failed");
    let detail = r["held"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("Can't load offset.ndb"), "the clamd error line, without the canary's path: {detail}");
    let id = r["id"].as_str().unwrap().to_string();
    env.wait_after(before, "promotion", |e| e.name() == "promotion.done" && e.id() == Some(id.as_str())).await;
    assert_eq!(prod.client().version().await.unwrap().database, Some(2));

    // Unchanged, the held file is not checked again after a restart.
    let before = env.journal().len();
    drop(_d);
    let log_from = env.log().len();
    let _d = env.spawn();
    let again = reduced(&env, before).await;
    assert_eq!(again["outcome"], "nothing_left", "{again}");
    let canaried = env.journal()[before..].iter().any(|e| e.name() == "candidate.checked");
    assert!(!canaried, "a held file was checked again");
    // Regression: the restart logged a WARN that it was "checking the rest as
    // a reduced set" when nothing was checked; now one accurate info line.
    let log = env.log()[log_from..].to_string();
    assert!(log.contains("still holding back offset.ndb: unchanged since held"), "{log}");
    let warned = log.lines().any(|l| l.contains("WARN clamgate::daemon::decide"));
    assert!(!log.contains("checking the rest") && !warned, "{log}");
}

/// Waits for a journal entry after the first `from`, with a bound for runs
/// that include canary scans stalled until the policy's scan_timeout.
async fn wait_long(env: &Env, from: usize, what: &str, pred: impl Fn(&clamgate::journal::Entry) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        if let Some(e) = env.journal().into_iter().skip(from).find(|e| pred(e)) {
            return e.json();
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}\nlog:\n{}", env.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A feed file whose patterns make clamd spin on one clean sample (testdata
/// README, `slow-pcre`): the whole candidate's scan of that sample outlasts
/// scan_timeout, a content failure no message ties to a file, so bisection
/// by canary runs finds it; it is held and the rest goes live.
#[tokio::test(flavor = "multi_thread")]
async fn a_feed_file_that_stalls_the_scan_is_found_by_bisection_and_held() {
    let env = Env::new("", "");
    env.policy("scan_timeout = \"2s\"\n");
    let _d = env.promoted("daily-v1").await;
    let prod = env.start_production(&[]).await;
    let before = env.journal().len();
    env.put_files(&[("daily-v2", "daily.cud"), ("slow-pcre", "slow.ldb"), ("good-ndb", "clamgate.ndb")]);
    let r = wait_long(&env, before, "candidate.reduced", |e| e.name() == "candidate.reduced").await;
    assert_eq!(r["outcome"], "reduced", "{r}");
    assert_eq!(names(&r, "held"), ["slow.ldb"], "{r}");
    assert_eq!(r["held"][0]["reason"], "canary.scan_timeout", "{r}");
    assert!(r["held"][0]["detail"].as_str().unwrap().contains("clean/letter.txt"), "the stalled sample: {r}");

    let journal = env.journal();
    let whole = journal[before..].iter().find(|e| e.name() == "candidate.checked").unwrap().json();
    assert_eq!(whole["verdict"], "reject", "{whole}");
    assert!(whole["reasons"].as_array().unwrap().iter().any(|x| x["reason"] == "canary.scan_timeout" && x["file"] == "clean/letter.txt"), "{whole}");
    let isolated = journal[before..].iter().find(|e| e.name() == "candidate.isolated").unwrap().json();
    assert!(isolated["bisect_runs"].as_u64().unwrap() > 0, "no message names the file: {isolated}");

    let id = r["id"].as_str().unwrap().to_string();
    wait_long(&env, before, "promotion of the reduced set", |e| e.name() == "promotion.done" && e.id() == Some(id.as_str())).await;
    let m = env.live_manifest();
    assert_eq!(names(&m, "files"), ["clamgate.ndb", "daily.cud"]);
    assert_eq!(names(&m, "held"), ["slow.ldb"]);
    assert_eq!(prod.client().version().await.unwrap().database, Some(2), "production runs the new daily");
    assert!(!prod.client().scan_file(&sample("clean/letter.txt")).await.unwrap().is_infected());
}

/// `clamgate check` against a baseline directory, with a policy.
fn check(dir: &Path, baseline: &Path, policy: &str) -> (i32, serde_json::Value) {
    let cmd = Cmd::new();
    let p = cmd.path().join("policy.toml");
    std::fs::write(&p, policy).unwrap();
    let corpus = corpus();
    let args =
        ["check", dir.to_str().unwrap(), "--corpus", corpus.to_str().unwrap(), "--baseline", baseline.to_str().unwrap(), "--policy", p.to_str().unwrap()];
    cmd.json(&args)
}

/// A directory holding the given fixture files.
fn dir_of(root: &Path, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for (s, f) in files {
        std::fs::copy(set(s).join(f), d.join(f)).unwrap();
    }
    d
}

#[test]
fn two_feed_files_that_only_fail_together_are_found_by_bisection() {
    let tmp = tempfile::tempdir().unwrap();
    let live = dir_of(tmp.path(), "live", &[("daily-v1", "daily.cud")]);
    let pair: Vec<String> = std::fs::read_dir(set("pair")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut files: Vec<(&str, &str)> = pair.iter().map(|f| ("pair", f.as_str())).collect();
    files.push(("daily-v2", "daily.cud"));
    let cand = dir_of(tmp.path(), "cand", &files);
    let (code, json) = check(&cand, &live, "allowed_false_positives = 1\nmax_bisect_runs = 16\n");
    assert_eq!(code, 4, "{json:#}");
    assert_eq!(names(&json["isolation"], "held"), ["pair-a.hdb", "pair-b.hdb"], "{json:#}");
    assert!(json["isolation"]["bisect_runs"].as_u64().unwrap() > 0);
    let kept = names(&json["reduced"]["manifest"], "files");
    assert_eq!(kept, ["daily.cud", "feed-1.hdb", "feed-2.hdb", "feed-3.hdb", "feed-4.hdb", "feed-5.hdb", "feed-6.hdb"]);

    // Out of bisection runs: everything still under suspicion is held.
    let (code, json) = check(&cand, &live, "allowed_false_positives = 1\nmax_bisect_runs = 1\n");
    assert_eq!(code, 1, "the live release again: nothing to promote\n{json:#}");
    assert_eq!(json["isolation"]["outcome"], "nothing_left");
    assert_eq!(names(&json["isolation"], "held").len(), 9);
}

#[test]
fn a_bad_official_container_keeps_its_live_version_and_the_feed_updates_go_live() {
    let tmp = tempfile::tempdir().unwrap();
    let live = dir_of(tmp.path(), "live", &[("daily-v1", "daily.cud"), ("good", "clamgate.hdb")]);
    let cand = dir_of(tmp.path(), "cand", &[("daily-md5-mismatch", "daily.cud"), ("good", "clamgate.hdb"), ("good-ndb", "clamgate.ndb")]);
    let (code, json) = check(&cand, &live, "");
    assert_eq!(code, 4, "{json:#}");
    assert_eq!(json["isolation"]["held"][0]["name"], "daily.cud");
    assert_eq!(json["isolation"]["held"][0]["reason"], "cvd.md5_mismatch");
    let reduced = &json["reduced"]["manifest"]["files"];
    let daily = reduced.as_array().unwrap().iter().find(|f| f["name"] == "daily.cud").unwrap();
    let live_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(live.join("daily.cud")).unwrap()));
    assert_eq!(daily["sha256"], live_sha, "the live daily stands in");
    assert_eq!(names(&json["reduced"]["manifest"], "files"), ["clamgate.hdb", "clamgate.ndb", "daily.cud"]);

    // isolation = "set": today's behaviour, the whole candidate is rejected.
    let (code, json) = check(&cand, &live, "isolation = \"set\"\n");
    assert_eq!(code, 1, "{json:#}");
    assert!(json.get("isolation").is_none(), "{json:#}");
}

/// After a false alarm the operator fixes what judged it (here: allows one
/// false positive, and reloads) and clears the hold: the daemon checks the
/// held file again with incoming as it is, and now it goes live.
#[tokio::test(flavor = "multi_thread")]
async fn recheck_of_a_held_file_has_it_checked_again() {
    let (env, d, _prod) = live_v1().await;
    let before = env.journal().len();
    env.put_files(&[("daily-v2", "daily.cud"), ("fp", "fp.hdb"), ("good-ndb", "clamgate.ndb")]);
    assert_eq!(reduced(&env, before).await["outcome"], "reduced");
    env.wait_after(before, "the reduced set live", |e| e.name() == "promotion.done").await;
    assert_eq!(names(&env.live_manifest(), "held"), ["fp.hdb"]);

    env.policy("allowed_false_positives = 1\n");
    d.signal(rustix::process::Signal::HUP);
    env.wait_event("daemon.reloaded", None).await;
    let from = env.journal().len();
    let cmd = Cmd::new();
    let (code, out) = cmd.json(&["recheck", "fp.hdb", "--config", env.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out["message"].as_str().unwrap().contains("cleared the hold on fp.hdb"), "{out}");
    let cleared = env.wait_after(from, "held.cleared", |e| e.name() == "held.cleared").await;
    assert_eq!(cleared.get("name").as_deref(), Some("fp.hdb"));
    env.wait_after(from, "the whole set live", |e| e.name() == "promotion.done").await;
    let m = env.live_manifest();
    assert_eq!(names(&m, "files"), ["clamgate.ndb", "daily.cud", "fp.hdb"]);
    assert!(names(&m, "held").is_empty(), "{m}");

    let (code, _, err) = cmd.run(&["recheck", "fp.hdb", "--config", env.config.to_str().unwrap()]);
    assert_eq!(code, 1, "nothing held any more: {err}");
}

#[cfg(debug_assertions)]
fn is_stopped(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
}

/// Regression: `held.json` was written without the state lock from what the
/// run started with, so a `clamgate recheck FILE` made while the daemon
/// bisected was overwritten and the file never checked again. The daemon
/// stops itself at a bisection probe (failpoint `isolate-bisect:stop`), the
/// operator clears the hold on fp.hdb then, and the daemon, once it goes
/// on, keeps that clear and checks fp.hdb again after the run.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn a_recheck_during_a_run_is_not_overwritten() {
    let env = Env::new("", "");
    env.policy("scan_timeout = \"2s\"\n");
    let d = env.promoted("daily-v1").await;
    let before = env.journal().len();
    env.put_files(&[("daily-v2", "daily.cud"), ("fp", "fp.hdb"), ("good-ndb", "clamgate.ndb")]);
    let r = wait_long(&env, before, "fp.hdb held", |e| e.name() == "candidate.reduced").await;
    assert_eq!(names(&r, "held"), ["fp.hdb"], "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    wait_long(&env, before, "the reduced set live", |e| e.name() == "promotion.done" && e.id() == Some(id.as_str())).await;
    drop(d);

    // fp.hdb is held before the run; slow.ldb and a new clamgate.hdb need
    // bisection, whose first probe stops the daemon.
    env.put_files(&[("daily-v2", "daily.cud"), ("fp", "fp.hdb"), ("good-ndb", "clamgate.ndb"), ("slow-pcre", "slow.ldb"), ("good", "clamgate.hdb")]);
    let from = env.journal().len();
    let d = env.spawn_with(&[("CLAMGATE_FAILPOINT", "isolate-bisect:stop")]);
    let mut stopped = false;
    for _ in 0..60_000 {
        if is_stopped(d.pid()) {
            stopped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(stopped, "the daemon never reached a bisection probe\n{}", env.log());
    let cmd = Cmd::new();
    let (code, out) = cmd.json(&["recheck", "fp.hdb", "--config", env.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    // Let it go on through every probe; it holds slow.ldb, promotes the rest,
    // then checks fp.hdb again and holds it again (it still fails).
    let pid = d.pid();
    let cont = tokio::spawn(async move {
        loop {
            if is_stopped(pid) {
                let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::CONT);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let reduced = wait_long(&env, from, "the run that was stopped", |e| e.name() == "candidate.reduced").await;
    assert_eq!(reduced["outcome"], "reduced", "{reduced}");
    assert_eq!(names(&reduced, "held"), ["fp.hdb", "slow.ldb"], "this run held both: {reduced}");
    // The next run starts from the held.json this run wrote: without fp.hdb.
    let journal = env.journal();
    let at = from + journal[from..].iter().position(|e| e.name() == "candidate.reduced").unwrap();
    assert!(journal[from..at].iter().any(|e| e.name() == "held.cleared"));
    let again = wait_long(&env, at + 1, "fp.hdb checked again", |e| e.name() == "candidate.reduced").await;
    let isolated: Vec<serde_json::Value> = env.journal()[at + 1..].iter().filter(|e| e.name() == "candidate.isolated").map(|e| e.json()).collect();
    assert_eq!(names(&isolated[0], "held"), ["slow.ldb"], "the recheck stood: {isolated:?}");
    let checked = isolated.iter().any(|i| i["held"].as_array().unwrap().iter().any(|h| h["name"] == "fp.hdb" && h["reason"] == "corpus.false_positive"));
    assert!(checked, "fp.hdb checked again and held again: {isolated:?}");
    assert_eq!(again["outcome"], "nothing_left", "fp.hdb still fails, the rest is live: {again}");
    cont.abort();
    let held: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(env.state().join("held.json")).unwrap()).unwrap();
    let mut held: Vec<&str> = held.iter().map(|h| h["name"].as_str().unwrap()).collect();
    held.sort();
    assert_eq!(held, ["fp.hdb", "slow.ldb"]);
    drop(d);
}

/// Regression: a candidate rejected after its whole check was skipped (its
/// file held before, its reduced set refused) was quarantined without its
/// files, so `promote --force` failed with promote.files_unusable. Here the
/// reduced set is refused as known bad: the operator rolled it back.
#[tokio::test(flavor = "multi_thread")]
async fn promote_force_works_on_a_candidate_whose_whole_check_was_skipped() {
    let (env, d, _prod) = live_v1().await;
    let before = env.journal().len();
    env.put_files(&[("daily-v2", "daily.cud"), ("fp", "fp.hdb"), ("good-ndb", "clamgate.ndb")]);
    let r = reduced(&env, before).await;
    let (candidate, id) = (r["from"].as_str().unwrap().to_string(), r["id"].as_str().unwrap().to_string());
    env.wait_after(before, "the reduced set live", |e| e.name() == "promotion.done" && e.id() == Some(id.as_str())).await;
    let cmd = Cmd::new();
    let cfg = env.config.to_str().unwrap();
    let (code, out) = cmd.json(&["rollback", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    drop(d);

    // At restart fp.hdb is held unchecked and the reduced set is known bad.
    let from = env.journal().len();
    let _d = env.spawn();
    let q = env.wait_after(from, "the candidate quarantined", |e| e.name() == "candidate.quarantined").await;
    assert_eq!(q.id(), Some(candidate.as_str()));
    assert!(!env.journal()[from..].iter().any(|e| e.name() == "candidate.checked" && e.id() == Some(candidate.as_str())), "the whole check was skipped");

    let (code, out) = cmd.json(&["promote", &candidate, "--force", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    let m = env.live_manifest();
    assert_eq!(m["id"], candidate.as_str(), "{out}");
    assert_eq!(names(&m, "files"), ["clamgate.ndb", "daily.cud", "fp.hdb"]);
    let daily = m["files"].as_array().unwrap().iter().find(|f| f["name"] == "daily.cud").unwrap();
    assert_eq!(daily["signatures"], 120, "the manifest was inspected: {m}");
    assert_eq!(daily["header"]["version"], 2, "{m}");
}

/// The held files cannot be recorded (held.json's temp name is taken by a
/// directory): the run fails, is journaled as an error and retried, rather
/// than journaling `candidate.isolated` with no record behind it.
#[tokio::test(flavor = "multi_thread")]
async fn held_files_that_cannot_be_recorded_fail_the_run() {
    let (env, _d, _prod) = live_v1().await;
    let before = env.journal().len();
    let blocker = env.state().join("held.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let files = [("daily-v2", "daily.cud"), ("fp-ndb", "fp.ndb"), ("good-ndb", "clamgate.ndb")];
    env.put_files(&files);
    let err = env.wait_after(before, "the run failed", |e| e.name() == "candidate.error").await.json();
    assert!(err["error"].as_str().is_some_and(|e| e.contains("cannot record the held files") && e.contains("held.json.tmp")), "{err}");
    assert!(!env.journal().iter().skip(before).any(|e| e.name() == "candidate.isolated"), "journaled without the record: {:#?}", env.journal());
    assert!(!env.state().join("held.json").exists());
    // Once it can be written, the retried run records and journals it.
    std::fs::remove_dir(&blocker).unwrap();
    env.put_files(&files);
    env.wait_after(before, "candidate.isolated", |e| e.name() == "candidate.isolated").await;
    assert!(std::fs::read_to_string(env.state().join("held.json")).unwrap().contains("fp.ndb"));
}
