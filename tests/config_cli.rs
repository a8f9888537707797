//! `clamgate config check` and the operator's config mistakes: a typo'd key
//! is reported with file:line:column, a named policy that does not exist is
//! an error (check and daemon alike), and a good config passes.

mod support;

use std::fs;

use support::Cmd;

/// A config in the test's temp dir naming the fixtures' corpus and the
/// repo's policy, plus `extra` lines.
fn config(cmd: &Cmd, top: &str, extra: &str) -> String {
    let file = cmd.path().join("clamgate.toml");
    let text = format!(
        "{top}state_dir = \"{state}\"\ncorpus_dir = \"{corpus}\"\npolicy = \"{policy}\"\n[clamd]\nsocket = \"{state}/clamd.sock\"\n{extra}",
        state = cmd.path().join("state").display(),
        corpus = support::corpus().display(),
        policy = support::repo().join("policies/default.toml").display(),
    );
    fs::write(&file, text).unwrap();
    file.display().to_string()
}

#[test]
fn a_good_config_passes_with_a_warning_for_the_absent_clamd() {
    let cmd = Cmd::new();
    let file = config(&cmd, "", "");
    let (code, out, err) = cmd.run(&["config", "check", "--config", &file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("warning: ") && out.contains("clamd.socket: production clamd does not answer"), "{out}");
    assert!(out.contains(&format!("OK: {file}")), "{out}");
}

/// A typo used to be reported by key only; the operator needs the line.
#[test]
fn a_typod_key_names_file_line_and_column() {
    let cmd = Cmd::new();
    let file = config(&cmd, "# clamgate\nsetle = \"5s\"\n", "[milter]\n  mdoe = \"gate\"\n");
    let (code, out, _) = cmd.run(&["config", "check", "--config", &file]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("{file}:2:1: setle: unknown key")), "{out}");
    assert!(out.contains(&format!("{file}:9:3: milter.mdoe: unknown key")), "{out}");
    assert!(out.contains("FAIL: ") && out.contains("2 problems"), "{out}");
    // The same position wherever the config is read.
    let (code, _, err) = cmd.run(&["run", "--config", &file]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{file}:2:1: setle: unknown key")), "{err}");
}

/// A mistyped policy path used to run silently on the built-in defaults.
#[test]
fn a_missing_policy_file_is_an_error_everywhere() {
    let cmd = Cmd::new();
    let file = config(&cmd, "", "");
    let text = fs::read_to_string(&file).unwrap().replace("policies/default.toml", "policies/defualt.toml");
    fs::write(&file, text).unwrap();
    let (code, out, _) = cmd.run(&["config", "check", "--config", &file]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("{file}:3:1: policy: cannot read policy")) && out.contains("defualt.toml"), "{out}");
    let (code, _, err) = cmd.run(&["run", "--config", &file]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("defualt.toml"), "{err}");
    assert!(!cmd.path().join("state").exists(), "a bad config must not create a state dir");
}

/// A fleet host whose gate key is missing: config check names the key,
/// and the daemon refuses to start with one line naming the file.
#[test]
fn a_missing_fleet_key_is_named() {
    let cmd = Cmd::new();
    let key = cmd.path().join("nope.pub");
    let file = config(&cmd, "", &format!("[source]\nurl = \"http://127.0.0.1:9/rings/canary.json\"\npublic_key = \"{}\"\n", key.display()));
    let (code, out, _) = cmd.run(&["config", "check", "--config", &file]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("{file}:8:1: source.public_key: cannot read key {}", key.display())), "{out}");
    let (code, _, err) = cmd.run(&["run", "--config", &file]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("cannot read key {}", key.display())), "{err}");
}

#[test]
fn a_broken_config_names_every_problem() {
    let cmd = Cmd::new();
    let file = config(&cmd, "", "binary = \"/nonexistent/clamd\"\n");
    let text = fs::read_to_string(&file).unwrap().replace(&support::corpus().display().to_string(), "/nonexistent/corpus");
    fs::write(&file, text).unwrap();
    let (code, out, _) = cmd.run(&["config", "check", "--config", &file]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("{file}:2:1: corpus_dir: corpus /nonexistent/corpus: is not a directory")), "{out}");
    assert!(out.contains(&format!("{file}:6:1: clamd.binary: /nonexistent/clamd: no executable clamd")), "{out}");
    // Only the machine is wrong: exit 3, as the README's table says.
    let file = config(&cmd, "", "binary = \"/nonexistent/clamd\"\n");
    let (code, out, _) = cmd.run(&["config", "check", "--config", &file]);
    assert_eq!(code, 3, "{out}");
}

/// An empty token file would make the gate's server demand an empty
/// bearer: config check and the daemon refuse it, naming the file.
#[test]
fn an_empty_fleet_token_is_refused() {
    let cmd = Cmd::new();
    let keys = cmd.path().join("keys");
    let (code, out, err) = cmd.run(&["keygen", "--out", &keys.display().to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let token = cmd.path().join("token");
    fs::write(&token, "\n").unwrap();
    let source = format!(
        "[source]\nurl = \"http://127.0.0.1:9/rings/canary.json\"\npublic_key = \"{}\"\ntoken = \"{}\"\n",
        keys.join("publish.pub").display(),
        token.display()
    );
    let file = config(&cmd, "", &source);
    let (code, out, _) = cmd.run(&["config", "check", "--config", &file]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("source.token: cannot read {}: the token file is empty", token.display())), "{out}");
    let (code, _, err) = cmd.run(&["run", "--config", &file]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("token {}: the token file is empty", token.display())), "{err}");
}
