//! `clamgate demo` is the main job: it must pass on a machine prepared by
//! scripts/install-deps, and clean up after itself.

#[test]
fn demo_plays_every_step_and_cleans_up() {
    let before: Vec<_> = demo_dirs();
    let out = assert_cmd::Command::cargo_bin("clamgate").unwrap().arg("demo").timeout(std::time::Duration::from_secs(600)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("demo: every step behaved"), "{stdout}");
    for step in [
        "first database",
        "good update",
        "corrupt update",
        "crashes clamd on load",
        "false-positive update",
        "manual rollback",
        "production clamd killed",
        "production clamd back",
    ] {
        let line = stdout.lines().find(|l| l.starts_with("[") && l.contains(step)).unwrap_or_else(|| panic!("no line for {step}:\n{stdout}"));
        assert!(line.starts_with("[ ok ]"), "{line}");
    }
    let after: Vec<_> = demo_dirs();
    assert_eq!(before, after, "the demo left its temporary directory behind");
    // In the same test: a parallel --keep run would leave a directory above.
    keep_prints_commands_that_work();
}

fn demo_dirs() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("clamgate-demo-"))
        .collect();
    v.sort();
    v
}

/// `--keep` prints the commands that inspect what it kept, and they work.
fn keep_prints_commands_that_work() {
    let out = assert_cmd::Command::cargo_bin("clamgate").unwrap().args(["demo", "--keep"]).timeout(std::time::Duration::from_secs(600)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let commands: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.contains("--config"))
        .filter_map(|l| l.trim_start().strip_prefix("clamgate "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(commands.len(), 3, "{stdout}");
    let kept =
        stdout.lines().find_map(|l| l.trim_start().strip_prefix("rm -r ")).map(|l| l.split_whitespace().next().unwrap().to_string()).expect("an rm line");
    for args in &commands {
        let out = assert_cmd::Command::cargo_bin("clamgate").unwrap().args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // status: the daemon is gone, so UNKNOWN (3), but it still reads the state.
        let want = if args[0] == "status" { 3 } else { 0 };
        assert_eq!(out.status.code(), Some(want), "clamgate {args:?}:\n{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(!text.trim().is_empty(), "clamgate {args:?} printed nothing");
    }
    let status = assert_cmd::Command::cargo_bin("clamgate").unwrap().args(&commands[0]).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("live "), "status shows the live release");
    assert!(std::path::Path::new(&kept).join("state/quarantine").is_dir());
    std::fs::remove_dir_all(&kept).unwrap();
}
