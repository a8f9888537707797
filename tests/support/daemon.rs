//! A real `clamgate run` process on a temporary state dir, with helpers to
//! feed its incoming directory and read its journal.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clamgate::journal::{Entry, Journal};

use super::{Clamd, corpus, set};

pub struct Env {
    pub root: tempfile::TempDir,
    pub config: PathBuf,
    /// The health endpoint's address.
    pub health: std::net::SocketAddr,
}

impl Env {
    /// `extra` is appended to the top level of the config; `clamd_extra` to `[clamd]`.
    pub fn new(extra: &str, clamd_extra: &str) -> Env {
        let root = tempfile::Builder::new().prefix("cgd-").tempdir_in("/tmp").unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("incoming")).unwrap();
        // The config names it, so it must exist; a test may overwrite it.
        fs::copy(super::repo().join("policies/default.toml"), r.join("policy.toml")).unwrap();
        let config = r.join("clamgate.toml");
        let health = free_port();
        fs::write(
            &config,
            format!(
                "state_dir = \"{state}\"\nincoming_dir = \"{incoming}\"\ncorpus_dir = \"{corpus}\"\npolicy = \"{policy}\"\n\
                 settle = \"300ms\"\nrescan_interval = \"1s\"\n{extra}\n[clamd]\nsocket = \"{sock}\"\nreload_timeout = \"30s\"\n{clamd_extra}\n\
                 [health]\nlisten = \"{health}\"\nprobe_interval = \"200ms\"\n",
                state = r.join("state").display(),
                incoming = r.join("incoming").display(),
                corpus = corpus().display(),
                policy = r.join("policy.toml").display(),
                sock = r.join("prod/clamd.sock").display(),
            ),
        )
        .unwrap();
        Env { root, config, health }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn current(&self) -> PathBuf {
        self.state().join("current")
    }

    pub fn live(&self) -> Option<String> {
        fs::read_link(self.current()).ok().map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
    }

    /// Replaces incoming's database files with a fixture set's, as freshclam
    /// does: each written under a temporary name, then renamed.
    pub fn put(&self, set_name: &str) {
        let incoming = self.path().join("incoming");
        for e in fs::read_dir(&incoming).unwrap().flatten() {
            fs::remove_file(e.path()).unwrap();
        }
        for e in fs::read_dir(set(set_name)).unwrap().flatten() {
            let tmp = incoming.join(format!("{}.tmp", e.file_name().to_string_lossy()));
            fs::copy(e.path(), &tmp).unwrap();
            fs::rename(&tmp, incoming.join(e.file_name())).unwrap();
        }
    }

    /// Replaces incoming's files with files picked from fixture sets:
    /// `(set, file)`, each under its own name, as `put` does.
    pub fn put_files(&self, files: &[(&str, &str)]) {
        let incoming = self.path().join("incoming");
        for e in fs::read_dir(&incoming).unwrap().flatten() {
            fs::remove_file(e.path()).unwrap();
        }
        for (set_name, file) in files {
            let tmp = incoming.join(format!("{file}.tmp"));
            fs::copy(set(set_name).join(file), &tmp).unwrap();
            fs::rename(&tmp, incoming.join(file)).unwrap();
        }
    }

    /// Writes the daemon's policy file (read at start and on SIGHUP).
    pub fn policy(&self, text: &str) {
        fs::write(self.path().join("policy.toml"), text).unwrap();
    }

    /// The live release's manifest.json.
    pub fn live_manifest(&self) -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(self.current().join("manifest.json")).unwrap()).unwrap()
    }

    /// Production clamd on `state/current`.
    pub async fn start_production(&self, extra: &[&str]) -> Clamd {
        Clamd::start_in(&self.current(), &self.path().join("prod"), extra).await.expect("production clamd starts")
    }

    pub fn spawn(&self) -> DaemonProc {
        self.spawn_with(&[])
    }

    /// Puts `set` into incoming and starts the daemon; returns once the
    /// daemon has promoted it.
    pub async fn promoted(&self, set: &str) -> DaemonProc {
        self.put(set);
        let d = self.spawn();
        self.wait_event("promotion.done", Some(&set_id(set))).await;
        d
    }

    /// `cmd` as the tests run clamgate: a clean environment (PATH and
    /// `CLAMGATE_LOG=info` only), no stdin, output appended to `log` in
    /// this env's dir.
    pub fn logged(&self, mut cmd: Command, log: &str) -> Command {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.path().join(log)).unwrap();
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CLAMGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd
    }

    pub fn spawn_with(&self, env: &[(&str, &str)]) -> DaemonProc {
        let mut cmd = self.logged(Command::new(env!("CARGO_BIN_EXE_clamgate")), "daemon.log");
        cmd.args(["run", "--config"]).arg(&self.config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        DaemonProc { child: cmd.spawn().unwrap() }
    }

    pub fn journal(&self) -> Vec<Entry> {
        Journal::new(self.state().join("journal.jsonl")).read().expect("journal parses")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path().join("daemon.log")).unwrap_or_default()
    }

    /// Waits (bounded) for a journal entry; returns it.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Entry) -> bool) -> Entry {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(e) = self.journal().into_iter().find(|e| pred(e)) {
                return e;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("gave up waiting for {what}\njournal: {:#?}\nlog:\n{}", self.journal(), self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Like [`Env::wait_for`], but only entries after the first `from`.
    pub async fn wait_after(&self, from: usize, what: &str, pred: impl Fn(&Entry) -> bool) -> Entry {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(e) = self.journal().into_iter().skip(from).find(|e| pred(e)) {
                return e;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("gave up waiting for {what}\njournal: {:#?}\nlog:\n{}", self.journal(), self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_event(&self, event: &str, id: Option<&str>) -> Entry {
        self.wait_for(event, |e| e.name() == event && id.is_none_or(|id| e.id() == Some(id))).await
    }
}

/// A loopback port free right now (bound, then released).
/// A loopback port nothing listens on, never the same twice in this test
/// process: tests run in parallel threads and the port is only bound later
/// by a child (smtp-sink, Postfix, clamgate), so two tests handed the same
/// port would end up talking to each other's servers.
pub fn free_port() -> std::net::SocketAddr {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return addr;
        }
    }
}

/// The id a fixture set gets as a candidate (its manifest digest).
pub fn set_id(set_name: &str) -> String {
    let dir = set(set_name);
    let mut files = Vec::new();
    for e in fs::read_dir(&dir).unwrap().flatten() {
        let bytes = fs::read(e.path()).unwrap();
        files.push(clamgate::candidate::DbFile {
            name: e.file_name().to_string_lossy().into_owned(),
            size: bytes.len() as u64,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            signatures: 0,
            header: None,
        });
    }
    clamgate::candidate::Manifest::new(files).id
}

pub struct DaemonProc {
    pub child: Child,
}

impl DaemonProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(), sig).unwrap();
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(), rustix::process::Signal::TERM);
        self.wait_exit()
    }

    /// Waits (bounded) for the process to exit on its own.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        for _ in 0..1800 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not exit");
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `clamgate milter` process, configured from an [`Env`]'s config
/// plus a `[milter]` section.
pub struct MilterProc {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    /// Its `/metrics` (`[milter] metrics_listen`).
    pub metrics: std::net::SocketAddr,
}

impl Env {
    /// Starts `clamgate milter` on a free loopback port; `milter` is extra
    /// `[milter]` lines (mode, health_ttl, …).
    pub fn spawn_milter(&self, milter: &str) -> MilterProc {
        let (addr, metrics) = (free_port(), free_port());
        let config = self.path().join(format!("milter-{}.toml", addr.port()));
        let base = fs::read_to_string(&self.config).unwrap();
        fs::write(
            &config,
            format!(
                "{base}\n[milter]\nlisten = \"inet:{addr}\"\nmetrics_listen = \"{metrics}\"\nhealth_url = \"http://{}/readyz\"\n{}{milter}\n",
                self.health,
                // A loaded machine must not turn a slow answer into a tempfail.
                if milter.contains("health_timeout") { "" } else { "health_timeout = \"30s\"\n" },
            ),
        )
        .unwrap();
        let child = self.logged(Command::new(env!("CARGO_BIN_EXE_clamgate")), "milter.log").args(["milter", "--config"]).arg(&config).spawn().unwrap();
        // Owned at once, so a panic below still kills and reaps it.
        let milter = MilterProc { child, addr, metrics };
        for _ in 0..400 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return milter;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("milter did not listen on {addr}:\n{}", fs::read_to_string(self.path().join("milter.log")).unwrap_or_default());
    }
}

impl Drop for MilterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon (with `extra` config) that has made daily-v1 live, production
/// clamd scanning on it, and /readyz answering 200.
pub async fn live_v1(extra: &str) -> (Env, DaemonProc, Clamd) {
    let env = Env::new(extra, "");
    let d = env.promoted("daily-v1").await;
    let prod = env.start_production(&[]).await;
    wait_ready(&env, 200).await;
    (env, d, prod)
}

/// Waits until /readyz answers `code` (bounded).
pub async fn wait_ready(env: &Env, code: u16) {
    for _ in 0..1200 {
        if let Ok(mut s) = std::net::TcpStream::connect(env.health) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.split_whitespace().nth(1) == Some(&code.to_string()) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {code}\n{}", env.log());
}
