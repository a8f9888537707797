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
