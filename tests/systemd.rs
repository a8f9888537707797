//! The shipped units and config snippets are valid, and hardened: the files
//! the README points to are the ones checked here.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

/// Every unit the package installs under /lib/systemd/system.
const UNITS: [&str; 4] = ["clamgate.service", "clamgate-milter.service", "clamgate-clamd.path", "clamgate-clamd.service"];

/// Copies the units with ExecStart pointing at the built binary, since
/// `systemd-analyze verify` checks that the executable exists.
fn staged(dir: &Path) {
    for unit in UNITS {
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
    let units: Vec<String> = UNITS.iter().map(|u| dir.path().join(u).display().to_string()).collect();
    // The man pages the units point at exist only once the package is
    // installed (tests/package.rs verifies with them).
    let mut args = vec!["verify", "--man=no"];
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

/// `Key=value` lines of a unit file, values split on spaces (so
/// `Wants=a b` gives both).
fn directives(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    text.lines().filter_map(|l| l.strip_prefix(&prefix)).flat_map(|v| v.split_whitespace().map(str::to_string)).collect()
}

fn unit(path: &str) -> String {
    fs::read_to_string(support::repo().join("systemd").join(path)).unwrap()
}

/// First boot, by construction: production clamd starts only once a release
/// is live, and Postfix only once the milter listens. Checked on the unit
/// dependencies, and all units verified together with Debian's clamav and
/// postfix units and the drop-in, so every name they use resolves.
#[test]
fn first_boot_ordering() {
    // clamd: skipped while `current` is missing; clamgate pulls in the path
    // unit that starts it (through a oneshot) once the first promotion made it.
    let dropin = unit("clamav-daemon.service.d/clamgate.conf");
    assert_eq!(directives(&dropin, "ConditionPathExists"), ["/var/lib/clamgate/current"]);
    let daemon = unit("clamgate.service");
    assert!(directives(&daemon, "Wants").contains(&"clamgate-clamd.path".to_string()), "{daemon}");
    let path = unit("clamgate-clamd.path");
    assert_eq!(directives(&path, "PathExists"), ["/var/lib/clamgate/current"]);
    assert_eq!(directives(&path, "Unit"), ["clamgate-clamd.service"]);
    let oneshot = unit("clamgate-clamd.service");
    assert_eq!(directives(&oneshot, "Wants"), ["clamav-daemon.service"]);
    assert_eq!(directives(&oneshot, "RemainAfterExit"), ["yes"], "a oneshot that stays active, so a stopped clamd is not restarted");
    // Postfix: after the milter, whose readiness is its bound socket.
    let milter = unit("clamgate-milter.service");
    assert_eq!(directives(&milter, "Type"), ["notify"]);
    let before = directives(&milter, "Before");
    assert!(before.contains(&"postfix@-.service".to_string()) && before.contains(&"postfix.service".to_string()), "{before:?}");
    let postfix_instance = fs::read_to_string("/lib/systemd/system/postfix@.service").unwrap();
    assert!(postfix_instance.contains("Before=postfix.service"), "Debian's real Postfix unit is the instance postfix@-.service");

    let dir = tempfile::tempdir().unwrap();
    staged(dir.path());
    for u in ["clamav-daemon.service", "clamav-daemon.socket", "postfix.service", "postfix@.service"] {
        fs::copy(Path::new("/lib/systemd/system").join(u), dir.path().join(u)).unwrap();
    }
    fs::create_dir(dir.path().join("clamav-daemon.service.d")).unwrap();
    fs::write(dir.path().join("clamav-daemon.service.d/clamgate.conf"), dropin).unwrap();
    let mut args = vec!["verify".to_string(), "--man=no".to_string()];
    args.extend(UNITS.iter().chain(&["clamav-daemon.service"]).map(|u| dir.path().join(u).display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = analyze(&args, Some(dir.path()));
    assert!(ok && !out.contains("clamgate"), "{out}");
}

/// The shipped main.cf and the milter's default listen address name the
/// same socket: Postfix daemons run in the queue directory (chrooted there on
/// Debian), so `unix:clamgate/milter.sock` is /var/spool/postfix/clamgate/milter.sock.
/// (Copying the old main.cf, inet:127.0.0.1:8891, tempfailed all mail.)
#[test]
fn main_cf_names_the_default_milter_socket() {
    let main_cf = unit("postfix/main.cf");
    let milters: Vec<&str> = main_cf.lines().filter_map(|l| l.strip_prefix("smtpd_milters = ")).collect();
    assert_eq!(milters, ["unix:clamgate/milter.sock"]);
    let empty = tempfile::NamedTempFile::new().unwrap();
    let file = empty.path().display().to_string();
    let (code, shown, err) = support::Cmd::new().run(&["config", "show", "--config", &file]);
    assert_eq!(code, 0, "{err}");
    let milter = shown.split("[milter]").nth(1).unwrap_or_else(|| panic!("{shown}"));
    assert!(milter.contains("listen = \"unix:/var/spool/postfix/clamgate/milter.sock\""), "{milter}");
}
