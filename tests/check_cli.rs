//! `clamgate check`: the real binary, real canary clamds, fixtures from testdata/.

mod support;

use std::os::unix::fs::symlink;

use support::*;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn check(cmd: &Cmd, set_dir: &std::path::Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let corpus = s(&corpus());
    let dir = s(set_dir);
    let mut args = vec!["check", dir.as_str(), "--corpus", corpus.as_str()];
    args.extend_from_slice(extra);
    cmd.json(&args)
}

#[test]
fn good_sets_would_be_promoted() {
    let cmd = Cmd::new();
    for name in ["good", "good-ndb", "good-ldb", "daily-v1", "daily-v2"] {
        let (code, r) = check(&cmd, &set(name), &[]);
        assert_eq!(code, 0, "{name}: {r:#}");
        assert_eq!(r["verdict"], "pass", "{name}");
        assert!(r["canary"]["load_ms"].as_u64().is_some(), "{name}: no load time");
        assert!(r["canary"]["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{name}: no peak memory");
        let samples = r["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 20, "{name}");
        assert!(samples.iter().all(|x| x["ok"] == true), "{name}: {samples:#?}");
        assert_eq!(r["manifest"]["id"], r["candidate"]);
    }
}

#[test]
fn every_bad_set_is_rejected_with_its_reason_code() {
    let cmd = Cmd::new();
    let cases = [
        ("bad-ndb", "db.malformed_line", "broken.ndb:1"),
        ("bad-hdb", "db.malformed_line", "broken.hdb:2"),
        ("bad-ldb", "db.malformed_line", "broken.ldb:1"),
        ("short-pattern", "db.malformed_line", "short.ndb:1"),
        ("empty", "db.empty", "empty.hdb"),
        ("daily-md5-mismatch", "cvd.md5_mismatch", "daily.cud"),
        ("daily-truncated", "cvd.md5_mismatch", "daily.cud"),
        ("daily-header-cut", "cvd.bad_header", "daily.cud"),
        ("load-fail", "canary.load_failed", "offset.ndb"),
        ("fp", "corpus.false_positive", "clean/letter.txt"),
        ("miss", "corpus.missed", "infected/clam.exe"),
    ];
    // Parametrised over the policy's isolation: "set" rejects the whole
    // candidate (exit 1); "file", the default, holds back the bad file and
    // exits 4 when the rest passes on its own, 1 when nothing is left.
    let set_policy = cmd.path().join("set.toml");
    std::fs::write(&set_policy, "isolation = \"set\"\n").unwrap();
    for isolation in ["set", "file"] {
        let policy = s(&set_policy);
        let extra: &[&str] = if isolation == "set" { &["--policy", policy.as_str()] } else { &[] };
        for (name, code, file) in cases {
            let (exit, r) = check(&cmd, &set(name), extra);
            let alone = std::fs::read_dir(set(name)).unwrap().count() == 1;
            let want = if isolation == "set" || alone { 1 } else { 4 };
            assert_eq!(exit, want, "{isolation} {name}: {r:#}");
            assert_eq!(r["verdict"], "reject", "{name}: the whole candidate's verdict");
            let reasons = r["reasons"].as_array().unwrap();
            assert!(reasons.iter().any(|x| x["reason"] == code && x["file"] == file), "{name}: want {code} on {file}, got {reasons:#?}");
            assert_eq!(r.get("isolation").is_some(), isolation == "file", "{isolation} {name}");
        }
    }
}

#[test]
fn human_output_names_the_file_the_reason_and_what_to_do() {
    let cmd = Cmd::new();
    let (code, out, _) = cmd.run(&["check", &s(&set("load-fail")), "--corpus", &s(&corpus())]);
    assert_eq!(code, 4, "only the set without offset.ndb would be promoted: {out}");
    assert!(out.lines().any(|l| l.starts_with("  offset.ndb: ") && l.ends_with("[canary.load_failed]")), "{out}");
    assert!(out.contains("REDUCED: the reduced set"), "{out}");
    assert!(out.contains("canary   FAIL"), "{out}");
    let line = out.lines().find(|l| l.contains("[canary.load_failed]")).expect(&out);
    assert!(line.contains("offset.ndb") && line.contains("Invalid offset value"), "{line}");
    assert!(out.contains("what to do (canary.load_failed)"), "{out}");
}

#[test]
fn downgrade_and_signature_drop_are_rejected_against_a_baseline() {
    let cmd = Cmd::new();
    let v2 = s(&set("daily-v2"));
    let (code, r) = check(&cmd, &set("daily-v1"), &["--baseline", &v2]);
    assert_eq!(code, 1);
    assert!(reason_codes(&r).contains(&"sanity.downgrade".to_string()), "{r:#}");
    let (code, r) = check(&cmd, &set("daily-v3-drop"), &["--baseline", &v2]);
    assert_eq!(code, 1);
    assert_eq!(reason_codes(&r), ["sanity.signature_drop"], "{r:#}");

    // The same downgrade passes when the policy allows it.
    let policy = cmd.path().join("lenient.toml");
    std::fs::write(&policy, "allow_downgrade = true\nmax_signature_drop_percent = 50\n").unwrap();
    let (code, r) = check(&cmd, &set("daily-v1"), &["--baseline", &v2, "--policy", &s(&policy)]);
    assert_eq!(code, 0, "{r:#}");
}

#[test]
fn verdicts_are_compared_with_the_baseline() {
    let cmd = Cmd::new();
    let (code, r) = check(&cmd, &set("daily-v2"), &["--baseline", &s(&set("daily-v1"))]);
    assert_eq!(code, 0, "{r:#}");
    let exe = r["samples"].as_array().unwrap().iter().find(|x| x["sample"] == "infected/clam.exe").unwrap();
    assert_eq!(exe["baseline"]["result"], "infected", "{exe:#}");

    // Lost detections against a baseline that has them are regressions.
    let (code, r) = check(&cmd, &set("miss"), &["--baseline", &s(&set("good"))]);
    assert_eq!(code, 1);
    let codes = reason_codes(&r);
    assert!(codes.iter().all(|c| c == "corpus.regression") && codes.len() == 14, "{codes:?}");
}

#[test]
fn symlinks_and_fifos_are_rejected_without_hanging() {
    let cmd = Cmd::new();
    let dir = cmd.path().join("incoming");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(set("good").join("clamgate.hdb"), dir.join("clamgate.hdb")).unwrap();
    symlink("/etc/passwd", dir.join("passwd.hdb")).unwrap();
    symlink("/etc", dir.join("etc.ndb")).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, dir.join("pipe.hdb"), rustix::fs::FileType::Fifo, 0o644.into(), 0).unwrap();
    // freshclam's own files are skipped, not rejected.
    std::fs::write(dir.join("freshclam.dat"), b"state").unwrap();
    std::fs::create_dir(dir.join("tmp.4c1d2a")).unwrap();
    std::fs::write(dir.join("notes.txt"), b"hello").unwrap();

    let (code, r) = check(&cmd, &dir, &[]);
    assert_eq!(code, 1, "{r:#}");
    let mut got: Vec<(String, String)> =
        r["reasons"].as_array().unwrap().iter().map(|x| (x["file"].as_str().unwrap().to_string(), x["reason"].as_str().unwrap().to_string())).collect();
    got.sort();
    let want = [("etc.ndb", "file.symlink"), ("notes.txt", "file.bad_name"), ("passwd.hdb", "file.symlink"), ("pipe.hdb", "file.not_regular")];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(r["ignored"], serde_json::json!(["freshclam.dat", "tmp.4c1d2a"]));
    assert_eq!(r["checks"][3]["status"], "skipped", "no canary for a rejected candidate");
}

#[test]
fn a_canary_over_its_load_timeout_is_killed_and_reaped() {
    let cmd = Cmd::new();
    let policy = cmd.path().join("impatient.toml");
    std::fs::write(&policy, "load_timeout = \"1ms\"\n").unwrap();
    // Cmd::run asserts that no clamd is left under this command's TMPDIR.
    let (code, r) = check(&cmd, &set("daily-v2"), &["--policy", &s(&policy)]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(reason_codes(&r), ["canary.load_timeout"]);
}

#[test]
fn a_canary_over_its_memory_budget_is_rejected() {
    let cmd = Cmd::new();
    let policy = cmd.path().join("tight.toml");
    std::fs::write(&policy, "memory_budget = \"1MiB\"\n").unwrap();
    let (code, r) = check(&cmd, &set("good"), &["--policy", &s(&policy)]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(reason_codes(&r), ["canary.memory_budget"]);
}

#[test]
fn signature_names_are_held_to_expect_toml() {
    let cmd = Cmd::new();
    let corpus_dir = cmd.path().join("corpus");
    copy_tree(&corpus(), &corpus_dir);
    std::fs::write(corpus_dir.join("expect.toml"), "[signatures]\n\"infected/clam.exe\" = '^Vendor\\.'\n").unwrap();
    let (code, r) = cmd.json(&["check", &s(&set("good")), "--corpus", &s(&corpus_dir)]);
    assert_eq!(code, 1);
    assert_eq!(reason_codes(&r), ["corpus.name_mismatch"], "{r:#}");

    std::fs::write(corpus_dir.join("expect.toml"), "[signatures]\n\"infected/nope.exe\" = 'x'\n").unwrap();
    let (code, out, err) = cmd.run(&["check", &s(&set("good")), "--corpus", &s(&corpus_dir)]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("expect.toml") && err.contains("no such sample"), "{err}");
}

#[test]
fn usage_and_environment_errors_have_their_exit_codes() {
    let cmd = Cmd::new();
    let good = s(&set("good"));
    let corpus = s(&corpus());

    let (code, _, err) = cmd.run(&["check", "/nonexistent/dir", "--corpus", &corpus]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("/nonexistent/dir"), "{err}");

    let policy = cmd.path().join("bad.toml");
    std::fs::write(&policy, "load_timeout = \"soon\"\nkeep = 3\n").unwrap();
    let (code, _, err) = cmd.run(&["check", &good, "--corpus", &corpus, "--policy", &s(&policy)]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml") && err.contains("load_timeout") && err.contains("keep: unknown key"), "{err}");

    let (code, v) = cmd.json(&["check", &good, "--corpus", &corpus, "--clamd", "/nonexistent/clamd"]);
    assert_eq!(code, 3);
    assert_eq!(v["error"]["reason"], "environment.no_clamd");

    let (code, _, err) = cmd.run(&["check", &good, "--corpus", "/nonexistent/corpus"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/corpus"), "{err}");
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Without flags, `check` gates with what the config says (corpus_dir,
/// policy, clamd.binary), as the daemon would; a flag overrides its key.
#[test]
fn check_uses_the_config_unless_a_flag_says_otherwise() {
    let cmd = Cmd::new();
    let strict = cmd.path().join("strict.toml");
    std::fs::write(&strict, "max_file_size = \"10B\"\n").unwrap();
    let config = cmd.path().join("check.toml");
    std::fs::write(&config, format!("corpus_dir = \"{}\"\npolicy = \"{}\"\n", s(&corpus()), s(&strict))).unwrap();
    let good = s(&set("good"));
    let (code, r) = cmd.json(&["check", &good, "--config", &s(&config)]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(reason_codes(&r), ["file.too_large"], "the config's policy applies: {r:#}");
    let shipped = s(&repo().join("policies/default.toml"));
    let (code, r) = cmd.json(&["check", &good, "--config", &s(&config), "--policy", &shipped]);
    assert_eq!(code, 0, "--policy wins over the config's: {r:#}");
    assert_eq!(r["samples"].as_array().unwrap().len(), 20, "the config's corpus was used: {r:#}");
    let missing = cmd.path().join("missing.toml");
    std::fs::write(&config, format!("corpus_dir = \"{}\"\npolicy = \"{}\"\n", s(&corpus()), s(&missing))).unwrap();
    let (code, out, err) = cmd.run(&["check", &good, "--config", &s(&config)]);
    assert_eq!(code, 2, "a named policy that does not exist is an error: {out}{err}");
    assert!(err.contains(&s(&missing)), "{err}");
}
