//! The milter at the protocol level (indymilter-test plays the MTA), against
//! a real daemon, health endpoint and production clamd. The end-to-end test
//! with a real Postfix is in tests/milter_postfix.rs.

mod support;

use indymilter::ProtoOpts;
use indymilter_test::{Status, TestConnection};
use support::daemon::{Env, live_v1, set_id, wait_ready};
use support::*;

fn text(s: &Status) -> String {
    match s {
        Status::Tempfail { message: Some(m) } | Status::Reject { message: Some(m) } => m.to_string_lossy().into_owned(),
        other => format!("{other:?}"),
    }
}

/// Sends a whole message; returns the RCPT status and, if it continued, EOM's.
async fn deliver(addr: std::net::SocketAddr, message: &[u8]) -> (Status, Option<(indymilter_test::EomActions, Status)>) {
    let mut conn = TestConnection::open(addr).await.unwrap();
    // Stages the milter did not ask for (no callback) are skipped, as Postfix does.
    let opts = conn.negotiated_opts();
    if !opts.contains(ProtoOpts::NO_CONNECT) {
        assert_eq!(conn.connect("client.example.org", ([127, 0, 0, 1], 40000)).await.unwrap(), Status::Continue);
    }
    if !opts.contains(ProtoOpts::NO_MAIL) {
        conn.mail(["<sender@example.org>"]).await.unwrap();
    }
    let rcpt = conn.rcpt(["<rcpt@example.net>"]).await.unwrap();
    // Accept, like a tempfail, ends the milter's part in this message.
    if rcpt != Status::Continue {
        return (rcpt, None);
    }
    let (head, body) = split(message);
    if !opts.contains(ProtoOpts::NO_HEADER) {
        for line in head.lines() {
            if let Some((k, v)) = line.split_once(':') {
                conn.header(k, v.trim_start()).await.unwrap();
            }
        }
    }
    if !opts.contains(ProtoOpts::NO_EOH) {
        conn.eoh().await.unwrap();
    }
    if !opts.contains(ProtoOpts::NO_BODY) {
        for chunk in body.chunks(8192) {
            conn.body(chunk.to_vec()).await.unwrap();
        }
    }
    let eom = conn.eom().await.unwrap();
    let _ = conn.close().await;
    (rcpt, Some(eom))
}

fn split(message: &[u8]) -> (String, Vec<u8>) {
    let pos = message.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)).or_else(|| message.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, 4)));
    match pos {
        Some((p, n)) => (String::from_utf8_lossy(&message[..p]).replace("\n\t", " ").replace("\n ", " "), message[p + n..].to_vec()),
        None => (String::new(), message.to_vec()),
    }
}

fn clean_mail() -> Vec<u8> {
    std::fs::read(sample("clean/mail/order-confirmation.eml")).unwrap()
}

fn infected_mail() -> Vec<u8> {
    std::fs::read(sample("infected/mail/clam.mail")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gate_mode_accepts_while_healthy_and_tempfails_when_scanning_breaks() {
    let (env, _d, mut prod) = live_v1("").await;
    let m = env.spawn_milter("mode = \"gate\"\nhealth_ttl = \"100ms\"\n");
    // Healthy: gate mode accepts at RCPT, so Postfix leaves the milter out
    // of the rest of the message (it never sees, let alone changes, it).
    let (rcpt, eom) = deliver(m.addr, &clean_mail()).await;
    assert_eq!(rcpt, Status::Accept);
    assert!(eom.is_none());

    prod.process.kill();
    wait_ready(&env, 503).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await; // past the TTL
    for _ in 0..5 {
        let (rcpt, eom) = deliver(m.addr, &clean_mail()).await;
        assert!(matches!(rcpt, Status::Tempfail { .. }), "{rcpt:?}");
        assert!(text(&rcpt).starts_with("451 4.7.1 "), "{}", text(&rcpt));
        assert!(eom.is_none());
    }

    // Healthy again; the outage is logged once when it starts and once when
    // it ends, not once per message.
    let prod = env.start_production(&[]).await;
    wait_ready(&env, 200).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (rcpt, _) = deliver(m.addr, &clean_mail()).await;
    assert_eq!(rcpt, Status::Accept);
    let log = std::fs::read_to_string(env.path().join("milter.log")).unwrap();
    assert_eq!(log.matches("scanning is not healthy").count(), 1, "{log}");
    assert!(log.contains("healthy again") && log.contains("tempfailed 5 times"), "{log}");
    let metrics = support::metrics::scrape(m.metrics).expect("the milter's /metrics answers");
    let actions = |a: &str| metrics.value("clamgate_milter_messages_total", &[("action", a)]);
    assert_eq!((actions("accept"), actions("tempfail"), actions("reject"), actions("error")), (Some(2.0), Some(5.0), Some(0.0), Some(0.0)), "{}", metrics.text);
    assert_eq!(metrics.value("clamgate_milter_health_up", &[]), Some(1.0), "{}", metrics.text);
    assert!(metrics.value("clamgate_milter_health_age_seconds", &[]).is_some_and(|a| a < 60.0), "{}", metrics.text);
    drop(prod);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_health_endpoint_tempfails() {
    let (env, d, _prod) = live_v1("").await;
    let m = env.spawn_milter("mode = \"gate\"\nhealth_ttl = \"100ms\"\nhealth_timeout = \"500ms\"\n");
    d.stop();
    let (rcpt, _) = deliver(m.addr, &clean_mail()).await;
    assert!(text(&rcpt).starts_with("451 4.7.1"), "{rcpt:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_stage_tempfails_at_connect() {
    let (env, _d, mut prod) = live_v1("").await;
    let m = env.spawn_milter("mode = \"gate\"\nstage = \"connect\"\nhealth_ttl = \"100ms\"\n");
    prod.process.kill();
    wait_ready(&env, 503).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut conn = TestConnection::open(m.addr).await.unwrap();
    let status = conn.connect("client.example.org", ([127, 0, 0, 1], 40000)).await.unwrap();
    assert!(text(&status).starts_with("451 4.7.1"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn scan_mode_rejects_infected_marks_clean_and_tempfails_what_it_cannot_scan() {
    let (env, _d, mut prod) = live_v1("").await;
    let m = env.spawn_milter("mode = \"scan\"\nhealth_ttl = \"60s\"\n");

    let (_, eom) = deliver(m.addr, &infected_mail()).await;
    let (_, status) = eom.unwrap();
    assert!(text(&status).starts_with("554 5.7.1") && text(&status).contains("Clamgate.Test.ClamExe"), "{status:?}");

    let (_, eom) = deliver(m.addr, &clean_mail()).await;
    let (actions, status) = eom.unwrap();
    assert_eq!(status, Status::Continue);
    let want = format!("AddHeader {{ name: \"X-Virus-Scanned\", value: \"clamgate (release {})\" }}", set_id("daily-v1"));
    assert!(format!("{actions:?}").contains(&want), "{actions:?}");

    // Health is cached as good, but clamd is gone: the message is not
    // accepted unscanned, it is tempfailed.
    prod.process.kill();
    let (_, eom) = deliver(m.addr, &clean_mail()).await;
    let (_, status) = eom.unwrap();
    assert!(text(&status).starts_with("451 4.7.1"), "{status:?}");

    let metrics = support::metrics::scrape(m.metrics).expect("the milter's /metrics answers");
    let actions = |a: &str| metrics.value("clamgate_milter_messages_total", &[("action", a)]);
    assert_eq!((actions("accept"), actions("tempfail"), actions("reject"), actions("error")), (Some(1.0), Some(0.0), Some(1.0), Some(1.0)), "{}", metrics.text);
    assert_eq!(metrics.value("clamgate_milter_scan_latency_seconds_count", &[]), Some(2.0), "two scans finished:\n{}", metrics.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn scan_mode_can_add_a_header_instead_of_rejecting() {
    let (env, _d, _prod) = live_v1("").await;
    let m = env.spawn_milter("mode = \"scan\"\non_infected = \"header\"\n");
    let (_, eom) = deliver(m.addr, &infected_mail()).await;
    let (actions, status) = eom.unwrap();
    assert_eq!(status, Status::Continue);
    assert!(format!("{actions:?}").contains("AddHeader { name: \"X-Virus-Found\", value: \"Clamgate.Test.ClamExe.UNOFFICIAL\" }"), "{actions:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_is_private_replaces_a_stale_one_and_is_removed_at_exit() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let env = Env::new("", "");
    let sock = env.path().join("milter.sock");
    // A stale socket from a crash: bind must not fail because of it.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let config = env.path().join("milter-unix.toml");
    let base = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &config,
        format!("{base}\n[milter]\nlisten = \"unix:{}\"\nmetrics_listen = \"\"\nhealth_url = \"http://{}/readyz\"\n", sock.display(), env.health),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clamgate")).args(["milter", "--config"]).arg(&config).spawn().unwrap();
    let mut up = false;
    for _ in 0..400 {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(up, "milter did not listen on {}", sock.display());
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket must not be world-accessible");
    rustix::process::kill_process(rustix::process::Pid::from_raw(child.id() as i32).unwrap(), rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful exit: {status:?}");
    assert!(!sock.exists(), "socket left behind after exit");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_does_not_stop_the_milter() {
    let (env, _d, _prod) = live_v1("").await;
    let mut m = env.spawn_milter("mode = \"gate\"\n");
    rustix::process::kill_process(rustix::process::Pid::from_raw(m.child.id() as i32).unwrap(), rustix::process::Signal::HUP).unwrap();
    eventually("the SIGHUP logged", || async { std::fs::read_to_string(env.path().join("milter.log")).unwrap_or_default().contains("SIGHUP") }).await;
    assert!(m.child.try_wait().unwrap().is_none(), "the milter exited on SIGHUP");
    let (rcpt, _) = deliver(m.addr, &clean_mail()).await;
    assert_eq!(rcpt, Status::Accept);
}
