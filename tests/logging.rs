//! What `clamgate run` logs at the default level, as an operator reads it:
//! the lifecycle, and a failing health probe as one spell, not a line per
//! probe; and under systemd, as journal entries. (The milter's reject line is checked through a real Postfix in
//! tests/milter_postfix.rs, its tempfail spell in tests/milter_protocol.rs.)

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::daemon::{DaemonProc, Env, set_id, wait_ready};
use support::*;

/// `clamgate_probes_total{result="fail"}` from /metrics.
fn failed_probes(health: SocketAddr) -> u64 {
    let Ok(mut s) = std::net::TcpStream::connect(health) else { return 0 };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().find_map(|l| l.strip_prefix("clamgate_probes_total{result=\"fail\"} ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Regression: the prober wrote a WARN line every probe_interval while
/// production clamd was down (86,400 lines a day at 1 s), and the default
/// level (warn) hid the "started" line. Now, with CLAMGATE_LOG unset: the
/// start, the verdict and the promotion at INFO, one line when probes
/// start failing, none per probe, one when they pass again.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_level_logs_the_lifecycle_and_a_failing_probe_once() {
    let env = Env::new("", "");
    env.put("daily-v1");
    let started = Instant::now();
    // An empty CLAMGATE_LOG is the default, as if unset.
    let d = env.spawn_with(&[("CLAMGATE_LOG", "")]);
    let id = set_id("daily-v1");
    // Production clamd is not running: the promotion stands, and probes fail.
    env.wait_event("promotion.done", Some(&id)).await;
    eventually("ten failed probes (200 ms apart)", || async { failed_probes(env.health) >= 10 }).await;
    let log = env.log();
    assert_eq!(count(&log, "clamgate daemon started"), 1, "{log}");
    assert_eq!(count(&log, &format!("candidate {id} passed")), 1, "{log}");
    assert_eq!(count(&log, "health probe failing: production clamd is down"), 1, "{log}");
    // A reminder at most once a minute of the test's own run: never one per probe.
    let reminders = count(&log, "health probe still failing");
    assert!(reminders as u64 <= started.elapsed().as_secs() / 60, "{log}");
    assert_eq!(count(&log, " DEBUG "), 0, "{log}");

    let _prod = env.start_production(&[]).await;
    wait_ready(&env, 200).await;
    eventually("the spell's end line", || async { count(&env.log(), "health probe passes again after") == 1 }).await;
    assert!(d.stop().success(), "{}", env.log());
    let log = env.log();
    let ended = log.lines().find(|l| l.contains("health probe passes again")).unwrap();
    assert!(ended.contains(" INFO ") && ended.contains("failed probes") && ended.contains("spell=\"probe_failing\""), "{ended}");
    assert_eq!(count(&log, "health probe failing"), 1, "{log}");
    assert_eq!(count(&log, "clamgate daemon stopped"), 1, "{log}");
    // Everything at WARN or above is the spell's start (plus its reminders)
    // and the promotion that found production down.
    let warns = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).count();
    assert!(warns <= 2 + count(&log, "health probe still failing"), "{log}");
}

/// One native-protocol datagram as fields: `NAME=value\n`, or `NAME\n`, a
/// little-endian u64 length, the value and `\n` (systemd.io's
/// JOURNAL_NATIVE_PROTOCOL).
fn parse_entry(mut d: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while let Some(nl) = d.iter().position(|&b| b == b'\n') {
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(String::from_utf8_lossy(&line[..eq]).into_owned(), String::from_utf8_lossy(&line[eq + 1..]).into_owned());
            d = &d[nl + 1..];
        } else {
            let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = &d[nl + 9..nl + 9 + len];
            fields.insert(String::from_utf8_lossy(line).into_owned(), String::from_utf8_lossy(value).into_owned());
            d = &d[nl + 9 + len + 1..];
        }
    }
    fields
}

/// Under systemd (stderr is the stream JOURNAL_STREAM names) every line is
/// a native journal entry with a priority and CLAMGATE_* fields, and
/// nothing goes to stderr. No journald runs on the test machines, and
/// tracing-journald's socket path is fixed, so the daemon runs in a mount
/// namespace (root needed) where /run/systemd/journal is a directory
/// holding a socket this test bound: the real layer, the real datagrams.
#[tokio::test(flavor = "multi_thread")]
async fn under_systemd_lines_are_journal_entries_with_priority_and_fields() {
    let env = Env::new("", "");
    env.put("daily-md5-mismatch");
    let dir = env.path().join("journal");
    std::fs::create_dir(&dir).unwrap();
    let sock = UnixDatagram::bind(dir.join("socket")).unwrap();
    // A failure bound for each entry, not a speed limit.
    sock.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let stderr = std::fs::File::create(env.path().join("stderr.log")).unwrap();
    let meta = stderr.metadata().unwrap();
    let script =
        format!("mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && mount --bind {} /run/systemd/journal && exec \"$0\" \"$@\"", dir.display());
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script, env!("CARGO_BIN_EXE_clamgate"), "run", "--config"])
        .arg(&env.config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdin(Stdio::null())
        .stdout(stderr.try_clone().unwrap())
        .stderr(stderr)
        .spawn()
        .unwrap();
    // `unshare` and `sh` exec: the child is the daemon.
    let d = DaemonProc { child };
    let mut entries = Vec::new();
    let mut next = |what: &str, pred: &dyn Fn(&HashMap<String, String>) -> bool| -> HashMap<String, String> {
        let mut buf = vec![0; 1 << 16];
        loop {
            if let Some(e) = entries.iter().find(|e| pred(e)) {
                return e.clone();
            }
            let n = sock.recv(&mut buf).unwrap_or_else(|e| {
                panic!("no journal entry for {what} ({e}); got {entries:#?}\nstderr: {}", std::fs::read_to_string(env.path().join("stderr.log")).unwrap())
            });
            entries.push(parse_entry(&buf[..n]));
        }
    };
    let msg = |e: &HashMap<String, String>, s: &str| e.get("MESSAGE").is_some_and(|m| m.contains(s));

    let started = next("started", &|e| msg(e, "clamgate daemon started"));
    assert_eq!(started["PRIORITY"], "5", "INFO is notice: {started:?}");
    assert_eq!(started["SYSLOG_IDENTIFIER"], "clamgate");
    let id = set_id("daily-md5-mismatch");
    let rejected = next("the verdict", &|e| msg(e, "rejected"));
    assert_eq!(rejected["PRIORITY"], "4", "{rejected:?}");
    assert_eq!(rejected["CLAMGATE_RELEASE"], id, "{rejected:?}");
    assert_eq!(rejected["CLAMGATE_REASON"], "cvd.md5_mismatch", "{rejected:?}");
    let failing = next("the failing probe", &|e| e.get("CLAMGATE_SPELL").is_some_and(|s| s == "probe_failing"));
    assert_eq!(failing["PRIORITY"], "4", "{failing:?}");
    assert!(msg(&failing, "health probe failing: production clamd is down"), "{failing:?}");
    assert!(d.stop().success());
    next("stopped", &|e| msg(e, "clamgate daemon stopped"));
    assert_eq!(std::fs::read_to_string(env.path().join("stderr.log")).unwrap(), "", "everything went to the journal");
}
