//! The Debian package as an operator gets it: `scripts/build-deb` (with this
//! test's debug binary), `dpkg -i`, what landed where with which owner and
//! mode, the man pages, the units, `clamgate config check` on the installed
//! example, then `dpkg --purge` and nothing left but what policy allows.
//! Needs root (dpkg); it changes the machine, so it refuses to run over a
//! clamgate package that was installed before it.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

fn installed() -> bool {
    Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", "clamgate"]).output().is_ok_and(|o| o.stdout == b"installed")
}

/// Owner name, group name and permission bits of a path (not following links).
fn owner_mode(path: &str) -> (String, String, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let name = |db: &str, id: u32| run(Command::new("getent").args([db, &id.to_string()])).split(':').next().unwrap().to_string();
    (name("passwd", m.uid()), name("group", m.gid()), m.permissions().mode() & 0o7777)
}

/// Purges the package even when an assertion failed halfway.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "clamgate"]).output();
    }
}

#[test]
fn package_installs_checks_and_purges_cleanly() {
    assert!(rustix::process::geteuid().is_root(), "this test needs root for dpkg (CI runs as root)");
    assert!(!installed(), "a clamgate package is already installed here; this test would purge it: remove it first");
    let out = tempfile::tempdir().unwrap();
    run(Command::new(support::repo().join("scripts/build-deb")).arg(out.path()).env("CLAMGATE_BINARY", env!("CARGO_BIN_EXE_clamgate")));
    let deb = fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "deb")).expect("a .deb");

    let _purge = Purge;
    run(Command::new("dpkg").arg("-i").arg(&deb).env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(installed());

    // Files, owners and modes.
    for (path, want) in [
        ("/usr/bin/clamgate", ("root", "root", 0o755)),
        ("/etc/clamgate/clamgate.toml", ("root", "root", 0o644)),
        ("/etc/clamgate/policies/default.toml", ("root", "root", 0o644)),
        ("/etc/clamgate/clamd.conf", ("root", "root", 0o644)),
        ("/lib/systemd/system/clamgate.service", ("root", "root", 0o644)),
        ("/lib/systemd/system/clamgate-milter.service", ("root", "root", 0o644)),
        ("/lib/systemd/system/clamgate-clamd.path", ("root", "root", 0o644)),
        ("/usr/share/clamgate/systemd/clamav-daemon.service.d/clamgate.conf", ("root", "root", 0o644)),
        ("/usr/share/clamgate/corpus/clean/letter.txt", ("root", "root", 0o644)),
        ("/usr/share/bash-completion/completions/clamgate", ("root", "root", 0o644)),
        ("/usr/share/zsh/vendor-completions/_clamgate", ("root", "root", 0o644)),
        ("/usr/share/fish/vendor_completions.d/clamgate.fish", ("root", "root", 0o644)),
        ("/var/lib/clamgate", ("clamav", "clamav", 0o750)),
    ] {
        let (user, group, mode) = owner_mode(path);
        assert_eq!((user.as_str(), group.as_str(), mode), want, "{path}");
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "clamgate"]));
    for f in ["/etc/clamgate/clamgate.toml", "/etc/clamgate/policies/default.toml"] {
        assert!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    // The drop-ins are not active until the operator links them in (README, "Install").
    assert!(!Path::new("/etc/systemd/system/clamav-daemon.service.d/clamgate.conf").exists());
    assert!(!Path::new("/lib/systemd/system/clamav-daemon.service.d/clamgate.conf").exists());

    // The corpus's infected samples are links into clamav-testfiles.
    let link = Path::new("/usr/share/clamgate/corpus/infected/clam.exe");
    assert!(fs::symlink_metadata(link).unwrap().file_type().is_symlink());
    assert_eq!(fs::canonicalize(link).unwrap(), Path::new("/usr/share/clamav-testfiles/clam.exe"));

    // Man pages, version.
    for page in [&["clamgate"][..], &["clamgate-config-check"], &["clamgate-run"], &["5", "clamgate.toml"]] {
        let path = run(Command::new("man").arg("-w").args(page));
        assert!(path.trim().starts_with("/usr/share/man/"), "man -w {page:?}: {path}");
    }
    let version = run(Command::new("/usr/bin/clamgate").arg("--version"));
    assert_eq!(version.trim(), format!("clamgate {}", env!("CARGO_PKG_VERSION")));

    // The installed units, as systemd reads them.
    let units = ["clamgate.service", "clamgate-milter.service", "clamgate-clamd.path", "clamgate-clamd.service"].map(|u| format!("/lib/systemd/system/{u}"));
    let analyze = Command::new("systemd-analyze").arg("verify").args(&units).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&analyze.stdout), String::from_utf8_lossy(&analyze.stderr));
    assert!(analyze.status.success() && !text.contains("clamgate"), "systemd-analyze verify: {text}");

    // The installed example config, as the operator would check it: no
    // problem (production clamd is not running here, which is a warning).
    let check = Command::new("/usr/bin/clamgate").args(["config", "check", "--config", "/etc/clamgate/clamgate.toml"]).output().unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "config check: {text}{}", String::from_utf8_lossy(&check.stderr));
    assert!(text.contains("OK: /etc/clamgate/clamgate.toml"), "{text}");

    // Purge: nothing of ours is left (dpkg's own records aside).
    run(Command::new("dpkg").args(["--purge", "clamgate"]));
    assert!(!installed());
    for path in [
        "/usr/bin/clamgate",
        "/etc/clamgate",
        "/var/lib/clamgate",
        "/usr/share/clamgate",
        "/lib/systemd/system/clamgate.service",
        "/usr/share/man/man1/clamgate.1.gz",
    ] {
        assert!(fs::symlink_metadata(path).is_err(), "{path} is left after purge");
    }
}
