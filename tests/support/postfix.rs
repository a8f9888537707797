//! A real, isolated Postfix instance delivering to a real `smtp-sink`, both
//! on free loopback ports, for end-to-end milter tests; plus `swaks` as the
//! SMTP client. Everything started here is stopped when the handle drops.
//!
//! The instance's main.cf and master.cf come from `scripts/postfix-instance`,
//! the one Postfix set-up the benches and the soak run too; what it takes to
//! run Postfix that way (as root, no /etc/postfix, chroot off, the retry
//! timings) is written down there. What matters to the tests on top:
//!
//! - The `postfix` command writes its errors to stderr only when stderr is a
//!   terminal (otherwise to syslog, absent here), so a failing `postfix
//!   check` or `start` is silent with exit 1. Commands are run under
//!   `script(1)` so their messages reach the test output.
//! - `postfix start` daemonizes the master (`master -w`) into its own
//!   process group and returns once it is initialized; `postfix stop` sends
//!   it SIGTERM, the master kills its process group, and the command waits
//!   up to 5 s before `kill -9`. An smtpd in the middle of DATA dies with it:
//!   the client sees the connection close without a reply to its message,
//!   and after `postfix start` the queue holds nothing of that transaction.
//! - With the milter unreachable, `milter_default_action = tempfail` makes
//!   smtpd log "milter-reject: CONNECT … 451 4.7.1" but, with the default
//!   `smtpd_delay_reject = yes`, the client still gets 220 and 250 to EHLO:
//!   the 451 4.7.1 "Service unavailable - try again later" comes at MAIL.
//! - A milter's reject at end of message is logged by `cleanup`, not
//!   `smtpd` (smtpd hands the milter to cleanup for the content), without
//!   the SMTP code: "milter-reject: END-OF-MESSAGE from …: 5.7.1 …".
//! - The mail log is written by postlogd from datagrams: a line can appear
//!   after the SMTP client already has its reply, so tests wait for lines
//!   ([`Postfix::wait_log`]) and for the queue to empty, never read once.
//! - smtp-sink must be given `-u USER` when started as root (smtp-sink(1));
//!   with `-d TEMPLATE`
//!   it writes one file per transaction (its own `X-…-Args` headers, then the
//!   message), so its dump directory belongs to that user.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::daemon::free_port;
use super::repo;

/// The user smtp-sink runs as (it must not stay root) and Postfix's owner.
const MAIL_OWNER: &str = "postfix";
/// Bound on one `postfix` command and on every wait in here; only a hang hits it.
const WAIT: Duration = Duration::from_secs(60);
/// Bound on a delivery: beyond qmgr's 60 s "still being delivered" delay
/// (see scripts/postfix-instance), so that rare race costs time, not a failure.
const DELIVERY_WAIT: Duration = Duration::from_secs(90);

/// One Postfix instance (its own config, queue and data directory) relaying
/// everything to its own smtp-sink.
pub struct Postfix {
    /// Where clients connect (smtpd).
    pub smtpd: SocketAddr,
    /// Where Postfix delivers (smtp-sink).
    pub sink_addr: SocketAddr,
    sink: Option<Child>,
    root: tempfile::TempDir,
}

impl Postfix {
    /// Starts Postfix with the milter lines of `systemd/postfix/main.cf`,
    /// `smtpd_milters` pointed at `milter` (`inet:HOST:PORT` or
    /// `unix:PATH`); with `None`, Postfix runs without a milter.
    pub fn start(milter: Option<&str>) -> Postfix {
        let root = tempfile::Builder::new().prefix("pfx-").tempdir_in("/tmp").unwrap();
        let smtpd = free_port();
        let sink_addr = free_port();
        let mut cmd = Command::new(repo().join("scripts/postfix-instance"));
        cmd.arg(root.path()).arg(smtpd.port().to_string()).arg(sink_addr.port().to_string()).args(milter);
        run_checked(&mut cmd);

        let mut pf = Postfix { smtpd, sink_addr, sink: None, root };
        pf.start_sink();
        pf.postfix_ok("start");
        pf.wait_listening();
        pf
    }

    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir().join("etc")
    }

    pub fn maillog(&self) -> String {
        fs::read_to_string(self.dir().join("maillog")).unwrap_or_default()
    }

    /// Runs `postfix -c DIR ACTION`; returns success and what it printed.
    pub fn postfix(&self, action: &str) -> (bool, String) {
        // Under script(1): postfix prints its errors only to a terminal.
        let cmd = format!("postfix -c {} {action}", self.config_dir().display());
        let out = Command::new("timeout")
            .args([&WAIT.as_secs().to_string(), "script", "-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("run script(1)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn postfix_ok(&self, action: &str) {
        let (ok, text) = self.postfix(action);
        assert!(ok, "postfix {action} failed:\n{text}\nmaillog:\n{}", self.maillog());
    }

    /// `postfix stop`: the master and every Postfix process exit.
    pub fn stop(&self) {
        self.postfix_ok("stop");
    }

    /// Starts this instance again after [`Postfix::stop`].
    pub fn start_again(&self) {
        self.postfix_ok("start");
        self.wait_listening();
    }

    fn wait_listening(&self) {
        wait_connect(self.smtpd, || format!("Postfix did not listen on {}\nmaillog:\n{}", self.smtpd, self.maillog()));
    }

    /// Starts smtp-sink on `sink_addr`, dumping each transaction to `sink/`.
    pub fn start_sink(&mut self) {
        assert!(self.sink.is_none(), "smtp-sink already running");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir().join("sink.log")).unwrap();
        let child = Command::new("smtp-sink")
            .args(["-u", MAIL_OWNER, "-h", "sink.clamgate.test", "-d"])
            .arg(self.dir().join("sink/%H%M%S."))
            .arg(self.sink_addr.to_string())
            .arg("100")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start smtp-sink");
        self.sink = Some(child);
        wait_connect(self.sink_addr, || format!("smtp-sink did not listen on {}", self.sink_addr));
    }

    /// Kills smtp-sink: Postfix's deliveries are deferred until it is back.
    pub fn stop_sink(&mut self) {
        if let Some(mut c) = self.sink.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Messages smtp-sink received, in no particular order (whole dump files).
    pub fn delivered(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.dir().join("sink")).unwrap().flatten() {
            out.push(String::from_utf8_lossy(&fs::read(e.path()).unwrap()).into_owned());
        }
        out
    }

    /// Deliveries Postfix confirmed (smtp-sink answered 250 to the end of
    /// DATA, so its dump file is complete).
    pub fn sent(&self) -> usize {
        self.maillog().lines().filter(|l| l.contains(" status=sent ")).count()
    }

    /// Waits (bounded) until Postfix has confirmed `n` deliveries; returns
    /// what the sink holds.
    pub async fn wait_delivered(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
        while self.sent() < n {
            if tokio::time::Instant::now() > deadline {
                panic!("gave up waiting for {n} deliveries\nmaillog:\n{}", self.maillog());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.delivered()
    }

    /// Waits (bounded) until `line` appears in the mail log.
    pub async fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.maillog().lines().any(&pred) {
            if tokio::time::Instant::now() > deadline {
                panic!("gave up waiting for {what} in the mail log:\n{}", self.maillog());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (bounded) until Postfix's queue is empty: qmgr removes a queue
    /// file only after the delivery agent logged status=sent.
    pub async fn wait_queue_empty(&self) {
        let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
        while self.queued() > 0 {
            if tokio::time::Instant::now() > deadline {
                panic!("Postfix's queue never emptied\nmaillog:\n{}", self.maillog());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Queue files Postfix holds (incoming, active, deferred, hold): mail it
    /// accepted and has not delivered yet.
    pub fn queued(&self) -> usize {
        ["maildrop", "incoming", "active", "deferred", "hold"].iter().map(|d| count_files(&self.dir().join("queue").join(d))).sum()
    }

    /// One SMTP transaction through this Postfix with swaks; `args` add to
    /// the envelope defaults (e.g. `--header Subject:…` or `--data @FILE`).
    pub async fn swaks(&self, args: &[&str]) -> Transcript {
        swaks(self.smtpd, args).await
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // `postfix stop` bounds itself (5 s, then kill -9 of the group);
        // the pid file check covers a failed stop.
        let _ = self.postfix("stop");
        if let Ok(pid) = fs::read_to_string(self.dir().join("queue/pid/master.pid"))
            && let Some(pid) = pid.trim().parse::<i32>().ok().and_then(rustix::process::Pid::from_raw)
        {
            let comm = fs::read_to_string(format!("/proc/{}/comm", pid.as_raw_pid())).unwrap_or_default();
            if comm.trim() == "master" {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
        self.stop_sink();
    }
}

/// What an SMTP client saw: the final reply line to each command.
#[derive(Debug)]
pub struct Transcript {
    pub replies: Vec<Reply>,
    /// swaks' whole output, for failure messages.
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `CONNECT` (the greeting), `EHLO`, `MAIL`, `RCPT`, `DATA`, `EOM` (the
    /// reply to the message itself, after the final dot), `QUIT`.
    pub stage: String,
    pub code: u16,
    /// The reply line after the code, e.g. `4.7.1 Virus scanning …`.
    pub text: String,
}

impl Transcript {
    pub fn at(&self, stage: &str) -> Option<&Reply> {
        self.replies.iter().find(|r| r.stage == stage)
    }

    /// The reply that decided the transaction: the first that was not 2xx/3xx, else the one to the message.
    pub fn outcome(&self) -> Option<&Reply> {
        self.replies.iter().find(|r| r.code >= 400).or_else(|| self.at("EOM"))
    }

    /// The Postfix queue id of an accepted message (`250 2.0.0 Ok: queued as ID`).
    pub fn queue_id(&self) -> Option<String> {
        self.at("EOM").filter(|r| r.code == 250)?.text.split_whitespace().last().map(str::to_string)
    }
}

/// Parses swaks' transcript: ` -> ` lines are what it sent, `<-  ` and
/// `<** ` (error) lines what it received.
pub fn parse_swaks(raw: &str) -> Transcript {
    let mut replies = Vec::new();
    let mut stage = "CONNECT".to_string();
    let mut in_data = false;
    for line in raw.lines() {
        if let Some(sent) = line.strip_prefix(" -> ") {
            if in_data {
                if sent == "." {
                    stage = "EOM".into();
                    in_data = false;
                }
                continue;
            }
            stage = sent.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        } else if let Some(got) = line.strip_prefix("<-  ").or_else(|| line.strip_prefix("<** ")) {
            // Only the last line of a multi-line reply (code then a space).
            let (code, rest) = got.split_at(got.len().min(3));
            if let (Ok(code), Some(text)) = (code.parse::<u16>(), rest.strip_prefix(' ').or((rest.is_empty()).then_some(""))) {
                replies.push(Reply { stage: stage.clone(), code, text: text.to_string() });
                if stage == "DATA" && code == 354 {
                    in_data = true;
                }
            }
        }
    }
    Transcript { replies, raw: raw.to_string() }
}

/// Runs swaks against `server` (bounded); the envelope is
/// `<sender@example.org>` to `<rcpt@example.net>` unless `args` override it.
pub async fn swaks(server: SocketAddr, args: &[&str]) -> Transcript {
    let mut cmd = tokio::process::Command::new("swaks");
    cmd.args(["--server", &server.ip().to_string(), "--port", &server.port().to_string()])
        .args(["--helo", "client.example.org", "--from", "sender@example.org", "--to", "rcpt@example.net", "--timeout", "30"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output()).await.expect("swaks finishes").expect("run swaks");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    parse_swaks(&raw)
}

fn wait_connect(addr: SocketAddr, msg: impl Fn() -> String) {
    for _ in 0..(WAIT.as_millis() / 25) {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{}", msg());
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

fn run_checked(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}
