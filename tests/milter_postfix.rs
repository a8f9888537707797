//! `clamgate milter` end to end: a real Postfix (tests/support/postfix.rs)
//! with the shipped milter lines, a real SMTP client (swaks or a raw
//! socket), real delivery to smtp-sink, against a real daemon, health
//! endpoint and production clamd. What the sender sees is asserted on the
//! SMTP codes it got; what was delivered, on smtp-sink's dump files.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::daemon::{DaemonProc, Env, MilterProc, free_port, live_v1, set_id, wait_ready};
use support::postfix::{Postfix, Transcript, parse_swaks};
use support::*;

const TEMPFAIL_TEXT: &str = "4.7.1 Virus scanning is temporarily unavailable, please try again later";

/// The daemon on daily-v1 with production scanning, a milter with the
/// given `[milter]` settings, and Postfix whose smtpd_milters is that milter.
struct Stack {
    env: Env,
    _daemon: DaemonProc,
    prod: Clamd,
    milter: MilterProc,
    pf: Postfix,
}

async fn stack(milter: &str) -> Stack {
    let (env, _daemon, prod) = live_v1("").await;
    let milter = env.spawn_milter(milter);
    let pf = Postfix::start(Some(&format!("inet:{}", milter.addr)));
    Stack { env, _daemon, prod, milter, pf }
}

/// Postfix's queue has drained and exactly `n` messages reached the sink.
async fn relayed(pf: &Postfix, n: usize) {
    pf.wait_queue_empty().await;
    assert_eq!(pf.sent(), n, "{}", pf.maillog());
}

fn subject(s: &str) -> String {
    format!("Subject: {s}")
}

/// How many delivered messages carry `Subject: s`.
fn count_subject(delivered: &[String], s: &str) -> usize {
    let want = subject(s);
    delivered.iter().filter(|m| m.lines().any(|l| l == want)).count()
}

fn code_at(t: &Transcript, stage: &str) -> u16 {
    t.at(stage).unwrap_or_else(|| panic!("no reply at {stage}:\n{}", t.raw)).code
}

/// Sleeps past the milter's `health_ttl` of 100ms so its next answer is fresh.
async fn past_ttl() {
    tokio::time::sleep(Duration::from_millis(250)).await;
}

#[test]
fn swaks_transcripts_parse_into_stages() {
    let t = parse_swaks(
        "=== Trying 127.0.0.1:25...\n<-  220 mx ESMTP\n -> EHLO x\n<-  250-mx\n<-  250 CHUNKING\n -> MAIL FROM:<a@b>\n<-  250 2.1.0 Ok\n\
         \x20-> RCPT TO:<c@d>\n<** 451 4.7.1 <c@d>: later\n -> QUIT\n<-  221 2.0.0 Bye\n",
    );
    assert_eq!(code_at(&t, "EHLO"), 250);
    assert_eq!(code_at(&t, "MAIL"), 250);
    let o = t.outcome().unwrap();
    assert_eq!((o.stage.as_str(), o.code), ("RCPT", 451));
    assert!(o.text.starts_with("4.7.1"));
    // Lines of the message are not commands; the reply after the dot is EOM's.
    let t = parse_swaks(" -> DATA\n<-  354 go\n -> RCPT TO:<x> in the body\n -> .\n<-  250 2.0.0 Ok: queued as ABC123\n");
    assert_eq!(t.queue_id().as_deref(), Some("ABC123"));
    assert!(t.at("RCPT").is_none());
}

/// Gate mode: mail flows while scanning is healthy; with production clamd
/// dead the sender gets 451 4.7.1 at RCPT and keeps its message, mail
/// Postfix had already queued is still delivered, and the sender's retry
/// after clamd is back is delivered. Each message arrives exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn gate_mode_tempfails_at_rcpt_while_clamd_is_down_and_loses_nothing() {
    let Stack { env, _daemon, mut prod, milter: _milter, mut pf } = stack("mode = \"gate\"\nhealth_ttl = \"100ms\"\n").await;

    let t = pf.swaks(&["--header", &subject("gate-healthy")]).await;
    assert_eq!(code_at(&t, "RCPT"), 250, "{}", t.raw);
    assert_eq!(code_at(&t, "EOM"), 250, "{}", t.raw);
    let got = pf.wait_delivered(1).await;
    assert_eq!(count_subject(&got, "gate-healthy"), 1, "{got:#?}");
    assert!(!got[0].contains("X-Virus-Scanned"), "gate mode never touches the message: {}", got[0]);

    // A message accepted while the next hop is down sits in Postfix's queue.
    pf.stop_sink();
    let t = pf.swaks(&["--header", &subject("gate-queued")]).await;
    let id = t.queue_id().unwrap_or_else(|| panic!("not queued:\n{}", t.raw));
    pf.wait_log("the queued message deferred", |l| l.contains(&format!("{id}: ")) && l.contains("status=deferred")).await;

    // Scanning breaks: new mail is tempfailed at RCPT, before any data.
    prod.process.kill();
    wait_ready(&env, 503).await;
    past_ttl().await;
    let t = pf.swaks(&["--header", &subject("gate-retried")]).await;
    let o = t.outcome().unwrap_or_else(|| panic!("no reply:\n{}", t.raw));
    assert_eq!((o.stage.as_str(), o.code), ("RCPT", 451), "{}", t.raw);
    assert!(o.text.starts_with(TEMPFAIL_TEXT), "{}", t.raw);
    assert!(t.at("DATA").is_none(), "the message was never sent:\n{}", t.raw);
    assert_eq!(pf.queued(), 1, "only the earlier message is in Postfix's queue");

    // The queued message is not lost while scanning is down: the milter
    // gates what Postfix accepts, not what it has.
    pf.start_sink();
    let got = pf.wait_delivered(2).await;
    assert_eq!(count_subject(&got, "gate-queued"), 1, "{got:#?}");

    // clamd is back: the sender's retry goes through.
    let _prod = env.start_production(&[]).await;
    wait_ready(&env, 200).await;
    past_ttl().await;
    let t = pf.swaks(&["--header", &subject("gate-retried")]).await;
    assert_eq!(code_at(&t, "EOM"), 250, "{}", t.raw);
    let got = pf.wait_delivered(3).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    for s in ["gate-healthy", "gate-queued", "gate-retried"] {
        assert_eq!(count_subject(&got, s), 1, "{s}: {got:#?}");
    }
    relayed(&pf, 3).await;
}

/// Scan mode through Postfix: the infected test mail is refused at the end
/// of DATA with 554 5.7.1 naming the signature, and never delivered, and
/// the milter logs it once with the queue ID Postfix logged and the
/// client's address; a clean one is delivered with the X-Virus-Scanned
/// header naming the live release.
#[tokio::test(flavor = "multi_thread")]
async fn scan_mode_rejects_infected_mail_with_554_and_marks_clean_mail() {
    let Stack { env, _daemon, prod: _prod, milter: _milter, pf } = stack("mode = \"scan\"\nhealth_ttl = \"60s\"\n").await;

    let infected = sample("infected/mail/clam.mail");
    let t = pf.swaks(&["--data", &format!("@{}", infected.display())]).await;
    assert_eq!(code_at(&t, "RCPT"), 250, "{}", t.raw);
    let eom = t.at("EOM").unwrap_or_else(|| panic!("no reply to the message:\n{}", t.raw));
    assert_eq!(eom.code, 554, "{}", t.raw);
    assert!(eom.text.starts_with("5.7.1 ") && eom.text.contains("Clamgate.Test.ClamExe"), "{}", t.raw);
    // Logged by cleanup, to which smtpd hands the milter for the content.
    pf.wait_log("the milter's reject", |l| {
        l.contains("/cleanup[") && l.contains("milter-reject: END-OF-MESSAGE") && l.contains("5.7.1 Message rejected: virus found (Clamgate.Test.ClamExe")
    })
    .await;
    let maillog = pf.maillog();
    let line = maillog.lines().find(|l| l.contains("milter-reject: END-OF-MESSAGE")).unwrap();
    // `postfix/cleanup[123]: 4Zx9…: milter-reject: …`
    let queue_id = line.split("]: ").nth(1).and_then(|r| r.split(':').next()).unwrap_or_else(|| panic!("no queue ID in {line}"));
    let log = std::fs::read_to_string(env.path().join("milter.log")).unwrap();
    let rejects: Vec<&str> = log.lines().filter(|l| l.contains("infected message")).collect();
    assert_eq!(rejects.len(), 1, "{log}");
    assert!(rejects[0].contains(&format!("queue_id={queue_id} ")) && rejects[0].contains("client=127.0.0.1 "), "{queue_id}: {}", rejects[0]);

    let clean = sample("clean/mail/order-confirmation.eml");
    let t = pf.swaks(&["--data", &format!("@{}", clean.display())]).await;
    assert_eq!(code_at(&t, "EOM"), 250, "{}", t.raw);
    let got = pf.wait_delivered(1).await;
    assert_eq!(got.len(), 1, "only the clean message is delivered: {got:#?}");
    let header = format!("X-Virus-Scanned: clamgate (release {})", set_id("daily-v1"));
    assert!(got[0].lines().any(|l| l == header), "no `{header}` in:\n{}", got[0]);
    let clean_subject = std::fs::read_to_string(&clean).unwrap().lines().find(|l| l.starts_with("Subject:")).unwrap().to_string();
    assert!(got[0].lines().any(|l| l == clean_subject), "{}", got[0]);
    assert!(!got.iter().any(|m| m.contains("ClamAV Test File")), "the infected mail was delivered");
    relayed(&pf, 1).await;
}

/// With the milter process gone, `milter_default_action = tempfail` (from
/// the shipped main.cf) makes Postfix tempfail instead of accepting mail
/// unchecked.
#[tokio::test(flavor = "multi_thread")]
async fn postfix_tempfails_when_the_milter_is_down() {
    let Stack { env: _env, _daemon, prod: _prod, milter: m, pf } = stack("mode = \"gate\"\nhealth_ttl = \"100ms\"\n").await;
    let t = pf.swaks(&["--header", &subject("milter-up")]).await;
    assert_eq!(code_at(&t, "EOM"), 250, "{}", t.raw);
    pf.wait_delivered(1).await;

    let addr = m.addr;
    drop(m);
    assert!(TcpStream::connect(addr).is_err(), "the milter is gone");
    let t = pf.swaks(&["--header", &subject("milter-down")]).await;
    // Postfix's own reply: the milter failure at CONNECT is held back
    // until MAIL (smtpd_delay_reject), EHLO still gets 250.
    let o = t.outcome().unwrap_or_else(|| panic!("no reply:\n{}", t.raw));
    assert_eq!((o.stage.as_str(), o.code), ("MAIL", 451), "a temporary failure, not acceptance or rejection:\n{}", t.raw);
    assert!(o.text.starts_with("4.7.1 "), "{}", t.raw);
    assert!(t.at("DATA").is_none(), "{}", t.raw);
    let refused = format!("warning: connect to Milter service inet:{addr}: Connection refused");
    pf.wait_log("Postfix's milter connect failure", |l| l.contains(&refused)).await;
    // Nothing new was queued or delivered.
    relayed(&pf, 1).await;
    assert_eq!(count_subject(&pf.delivered(), "milter-down"), 0);
}

/// One SMTP reply (last line), read from a raw client socket; None on EOF
/// or a reset.
fn read_reply(r: &mut BufReader<TcpStream>) -> Option<String> {
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            // A silent server (read timeout) is not a dropped connection.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => panic!("no reply and no close: {e}"),
            Ok(0) | Err(_) => return None,
            Ok(_) if line.as_bytes().get(3) == Some(&b'-') => continue,
            Ok(_) => return Some(line.trim_end().to_string()),
        }
    }
}

/// Postfix stopped while a client is in the middle of DATA: the client sees
/// the connection close without a reply to its message, so (like any MTA)
/// it keeps the message and retries; the retry is delivered once, whole,
/// and no part of the interrupted transaction is ever delivered.
#[tokio::test(flavor = "multi_thread")]
async fn postfix_stopped_mid_data_delivers_nothing_half_and_the_retry_once() {
    let Stack { env: _env, _daemon, prod: _prod, milter: _milter, pf } = stack("mode = \"gate\"\nhealth_ttl = \"100ms\"\n").await;

    let s = TcpStream::connect(pf.smtpd).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    assert!(read_reply(&mut r).unwrap().starts_with("220 "));
    for (cmd, want) in
        [("EHLO client.example.org", "250 "), ("MAIL FROM:<sender@example.org>", "250 "), ("RCPT TO:<rcpt@example.net>", "250 "), ("DATA", "354 ")]
    {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let reply = read_reply(&mut r).unwrap_or_else(|| panic!("no reply to {cmd}"));
        assert!(reply.starts_with(want), "{cmd}: {reply}");
    }
    w.write_all(b"Subject: interrupted\r\n\r\nfirst half\r\n").unwrap();

    pf.stop();
    // The rest of the message, if the socket still takes it: there must be
    // no reply (certainly no 250) to it.
    let _ = w.write_all(b"second half\r\n.\r\n");
    let after = read_reply(&mut r);
    assert_eq!(after, None, "the client must see the connection drop, not a reply");

    pf.start_again();
    let t = pf.swaks(&["--header", &subject("interrupted"), "--body", "first half\nsecond half"]).await;
    assert_eq!(code_at(&t, "EOM"), 250, "{}", t.raw);
    let got = pf.wait_delivered(1).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(count_subject(&got, "interrupted"), 1, "{got:#?}");
    assert!(got[0].contains("first half") && got[0].contains("second half"), "delivered whole: {}", got[0]);
    relayed(&pf, 1).await;
}

/// Gate mode answers Accept at RCPT; Postfix scopes that to the message, so
/// the next transaction on the same SMTP connection asks the milter again
/// and is tempfailed once scanning broke in between.
#[tokio::test(flavor = "multi_thread")]
async fn accept_covers_one_message_the_next_one_on_the_connection_is_gated_again() {
    let Stack { env, _daemon, mut prod, milter: _milter, pf } = stack("mode = \"gate\"\nhealth_ttl = \"100ms\"\n").await;

    let s = TcpStream::connect(pf.smtpd).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    assert!(read_reply(&mut r).unwrap().starts_with("220 "));
    let mut say = |cmd: &str| -> String {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        read_reply(&mut r).unwrap_or_else(|| panic!("no reply to {cmd}"))
    };
    for (cmd, want) in
        [("EHLO client.example.org", "250 "), ("MAIL FROM:<sender@example.org>", "250 "), ("RCPT TO:<rcpt@example.net>", "250 "), ("DATA", "354 ")]
    {
        let reply = say(cmd);
        assert!(reply.starts_with(want), "{cmd}: {reply}");
    }
    let reply = say("Subject: first\r\n\r\nhello\r\n.");
    assert!(reply.starts_with("250 "), "first message: {reply}");

    prod.process.kill();
    wait_ready(&env, 503).await;
    past_ttl().await;
    assert!(say("MAIL FROM:<sender@example.org>").starts_with("250 "));
    let reply = say("RCPT TO:<rcpt@example.net>");
    assert!(reply.starts_with("451 ") && reply.contains("4.7.1"), "second message on the same connection: {reply}");
    let _ = say("QUIT");

    let got = pf.wait_delivered(1).await;
    assert_eq!(count_subject(&got, "first"), 1, "{got:#?}");
}

/// The gate as a Postfix policy service (`policy_listen`, the lines of
/// systemd/postfix/main.cf.policy, no milter): mail flows while scanning is
/// healthy; with production clamd dead every new recipient gets 451 4.7.1
/// and nothing is queued; once clamd is back the retry is delivered; with
/// the service itself gone Postfix's `default_action` tempfails too. Each
/// smtpd process reuses its policy connection across SMTP sessions.
#[tokio::test(flavor = "multi_thread")]
async fn policy_service_gates_like_the_milter_on_one_reused_connection() {
    let (env, _daemon, mut prod) = live_v1("").await;
    let policy = free_port();
    let milter = env.spawn_milter(&format!("mode = \"gate\"\nhealth_ttl = \"100ms\"\npolicy_listen = \"inet:{policy}\"\n"));
    let pf = Postfix::start(Some(&format!("policy=inet:{policy}")));

    for i in 0..3 {
        let t = pf.swaks(&["--header", &subject(&format!("policy-healthy-{i}"))]).await;
        assert_eq!(code_at(&t, "RCPT"), 250, "{}", t.raw);
        assert_eq!(code_at(&t, "EOM"), 250, "{}", t.raw);
    }
    pf.wait_delivered(3).await;
    assert_eq!(support::metrics::scrape(milter.metrics).and_then(|m| m.value("clamgate_milter_messages_total", &[("action", "accept")])), Some(3.0));
    // Three SMTP sessions in turn, served by smtpd processes that keep
    // their policy connection open: fewer connections than sessions.
    let established = ss_established(policy.port());
    assert!((1..3).contains(&established), "policy connections open to :{}: {established}", policy.port());

    prod.process.kill();
    wait_ready(&env, 503).await;
    past_ttl().await;
    let t = pf.swaks(&["--header", &subject("policy-retried")]).await;
    let o = t.outcome().unwrap_or_else(|| panic!("no reply:\n{}", t.raw));
    assert_eq!((o.stage.as_str(), o.code), ("RCPT", 451), "{}", t.raw);
    assert!(o.text.starts_with("4.7.1 ") && o.text.contains("Virus scanning is temporarily unavailable"), "{}", t.raw);
    assert!(t.at("DATA").is_none(), "the message was never sent:\n{}", t.raw);
    assert_eq!(pf.queued(), 0);
    assert_eq!(support::metrics::scrape(milter.metrics).and_then(|m| m.value("clamgate_milter_messages_total", &[("action", "tempfail")])), Some(1.0));

    let _prod = env.start_production(&[]).await;
    wait_ready(&env, 200).await;
    past_ttl().await;
    let t = pf.swaks(&["--header", &subject("policy-retried")]).await;
    assert_eq!(code_at(&t, "EOM"), 250, "{}", t.raw);
    let got = pf.wait_delivered(4).await;
    assert_eq!(count_subject(&got, "policy-retried"), 1, "{got:#?}");

    // The service gone: Postfix's default_action, a tempfail, not acceptance.
    drop(milter);
    let t = pf.swaks(&["--header", &subject("policy-down")]).await;
    let o = t.outcome().unwrap_or_else(|| panic!("no reply:\n{}", t.raw));
    assert_eq!((o.stage.as_str(), o.code), ("RCPT", 451), "{}", t.raw);
    assert!(o.text.starts_with("4.7.1 ") && o.text.contains("Virus scanning is temporarily unavailable"), "{}", t.raw);
    pf.wait_log("Postfix's policy connect failure", |l| l.contains(&format!("problem talking to server 127.0.0.1:{}", policy.port()))).await;
    relayed(&pf, 4).await;
    assert_eq!(count_subject(&pf.delivered(), "policy-down"), 0);
}

/// Established TCP connections to 127.0.0.1:`port` (the server side), from ss.
fn ss_established(port: u16) -> usize {
    let out = std::process::Command::new("ss").args(["-Htn", "state", "established", &format!("( sport = :{port} )")]).output().expect("ss");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}
