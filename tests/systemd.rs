//! The shipped units and config snippets are valid, and hardened: the files
//! the README points to are the ones checked here.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

/// Copies the units with ExecStart pointing at the built binary, since
/// `systemd-analyze verify` checks that the executable exists.
fn staged(dir: &Path) {
    for unit in ["clamgate.service", "clamgate-milter.service"] {
        let text = fs::read_to_string(support::repo().join("systemd").join(unit)).unwrap();
        fs::write(dir.join(unit), text.replace("/usr/bin/clamgate", env!("CARGO_BIN_EXE_clamgate"))).unwrap();
    }
}

fn analyze(args: &[&str], unit_path: Option<&Path>) -> (bool, String) {
    let mut c = Command::new("systemd-analyze");
    c.args(args);
    if let Some(p) = unit_path {
        // A trailing colon keeps the built-in search path too.
        c.env("SYSTEMD_UNIT_PATH", format!("{}:", p.display()));
    }
    let out = c.output().expect("systemd-analyze (package systemd)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    staged(dir.path());
    let units: Vec<String> = ["clamgate.service", "clamgate-milter.service"].iter().map(|u| dir.path().join(u).display().to_string()).collect();
    let mut args = vec!["verify"];
    args.extend(units.iter().map(String::as_str));
    let (ok, out) = analyze(&args, None);
    assert!(ok && !out.contains("Unknown"), "{out}");
}

#[test]
fn drop_ins_apply_to_debians_units() {
    let dir = tempfile::tempdir().unwrap();
    for (unit, dropin) in [("clamav-daemon.service", "clamav-daemon.service.d"), ("clamav-freshclam.service", "clamav-freshclam.service.d")] {
        fs::copy(Path::new("/lib/systemd/system").join(unit), dir.path().join(unit)).unwrap();
        let d = dir.path().join(dropin);
        fs::create_dir(&d).unwrap();
        fs::copy(support::repo().join("systemd").join(dropin).join("clamgate.conf"), d.join("clamgate.conf")).unwrap();
        let unit_file = dir.path().join(unit).display().to_string();
        let (ok, out) = analyze(&["verify", &unit_file], Some(dir.path()));
        assert!(ok && !out.contains("Unknown"), "{unit}: {out}");
    }
    let daemon = fs::read_to_string(support::repo().join("systemd/clamav-daemon.service.d/clamgate.conf")).unwrap();
    assert!(daemon.contains("--config-file=/etc/clamgate/clamd.conf"));
}

#[test]
fn hardening_exposure_stays_low() {
    let dir = tempfile::tempdir().unwrap();
    staged(dir.path());
    for unit in ["clamgate.service", "clamgate-milter.service"] {
        let path = dir.path().join(unit).display().to_string();
        let (_, out) = analyze(&["security", "--offline=true", &path], None);
        let line = out.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{out}"));
        let level: f64 = line
            .split("level for")
            .nth(1)
            .and_then(|r| r.split(':').nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(level <= 2.0, "{unit}: exposure {level} ({line})");
        let text = fs::read_to_string(&path).unwrap();
        for key in ["ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes", "RestrictAddressFamilies=", "SystemCallFilter=@system-service"] {
            assert!(text.contains(key), "{unit} lacks {key}");
        }
    }
}

#[tokio::test]
async fn shipped_clamd_config_is_accepted_by_clamd() {
    // Every directive of the shipped production config must be one clamd
    // knows: start a real clamd on it, with paths moved to a temp dir.
    let dir = tempfile::Builder::new().prefix("cgsd-").tempdir_in("/tmp").unwrap();
    let text = fs::read_to_string(support::repo().join("systemd/clamd-clamgate.conf")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter(|l| {
            !["LocalSocket ", "DatabaseDirectory ", "User ", "LogSyslog ", "Foreground ", "LocalSocketGroup ", "LocalSocketMode "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_string)
        .collect();
    assert!(lines.iter().any(|l| l == "SelfCheck 0") && lines.iter().any(|l| l == "ConcurrentDatabaseReload yes"));
    let mut opts = clamgate::clamd::process::Options::new(support::set("good"), dir.path());
    opts.extra_config = lines;
    let mut p = clamgate::clamd::process::ClamdProcess::start(opts, support::START_TIMEOUT).await.expect("clamd accepts the shipped config");
    p.kill();
}
