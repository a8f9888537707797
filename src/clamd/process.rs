//! Starting a clamd of our own: canaries, the demo's production clamd, and
//! the test harness all need the same thing, a clamd in the foreground on a
//! private socket with a generated config, that is killed and reaped however
//! the caller leaves.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use super::Client;

/// How to start one clamd.
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) binary: PathBuf,
    pub(crate) database_dir: PathBuf,
    /// Private directory for the config, socket, log and clamd's temp files.
    pub(crate) work_dir: PathBuf,
    /// `ConcurrentDatabaseReload`: with `yes` a failed RELOAD keeps the old
    /// engine, with `no` clamd answers PING but cannot scan until restarted.
    pub(crate) concurrent_reload: bool,
    /// Extra `clamd.conf` lines, appended verbatim (tests, tuning).
    pub extra_config: Vec<String>,
    /// The whole `clamd.conf` instead of the generated one (managed mode:
    /// the operator's, with our paths); `extra_config` is then ignored.
    pub(crate) config_text: Option<String>,
    /// The socket path, if not `work_dir/clamd.sock` (it must match the
    /// `LocalSocket` of `config_text`).
    pub(crate) socket: Option<PathBuf>,
    /// Managed clamds must outlive a crashed daemon (a restart adopts them):
    /// no death signal from the parent.
    pub(crate) detached: bool,
}

impl Options {
    pub fn new(database_dir: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        Options {
            binary: PathBuf::from(crate::config::defaults::CLAMD_BINARY),
            database_dir: database_dir.into(),
            work_dir: work_dir.into(),
            concurrent_reload: true,
            extra_config: Vec::new(),
            config_text: None,
            socket: None,
            detached: false,
        }
    }
}

/// Why a clamd did not come up. Carries clamd's own words where it said any.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("writing clamd config {file}: {source}")]
    Setup {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket path {0} is too long for a Unix socket (max 107 bytes)")]
    SocketPathTooLong(PathBuf),
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("clamd exited ({status}) while loading {database_dir}: {reason}")]
    Exited { status: ExitStatus, database_dir: PathBuf, reason: String, log: String },
    #[error("clamd did not answer PING within {after:?} while loading {database_dir}")]
    Timeout { after: Duration, database_dir: PathBuf, log: String },
    #[error("clamd stopped while loading {database_dir}: {reason}")]
    Aborted { database_dir: PathBuf, reason: String, log: String },
}

impl StartError {
    /// clamd's whole output, for the error report or journal.
    pub fn log(&self) -> Option<&str> {
        match self {
            StartError::Exited { log, .. } | StartError::Timeout { log, .. } | StartError::Aborted { log, .. } => Some(log),
            _ => None,
        }
    }
}

/// A running clamd. Dropping it kills its whole process group and reaps it.
#[derive(Debug)]
pub struct ClamdProcess {
    child: Child,
    opts: Options,
    socket: PathBuf,
    log: PathBuf,
    spawned: Instant,
    /// Set by [`ClamdProcess::keep`]: dropping then leaves clamd running.
    kept: bool,
}

impl ClamdProcess {
    /// Starts clamd and waits until it answers PING.
    pub async fn start(opts: Options, timeout: Duration) -> Result<Self, StartError> {
        let mut p = Self::spawn(opts)?;
        p.wait_ready(timeout, |_| None).await?;
        Ok(p)
    }

    /// Starts clamd without waiting; call [`ClamdProcess::wait_ready`].
    pub(crate) fn spawn(opts: Options) -> Result<Self, StartError> {
        let tmp = opts.work_dir.join("tmp");
        fs::create_dir_all(&tmp).map_err(setup(&tmp))?;
        let socket = opts.socket.clone().unwrap_or_else(|| opts.work_dir.join("clamd.sock"));
        if socket.as_os_str().len() > 107 {
            return Err(StartError::SocketPathTooLong(socket));
        }
        let _ = fs::remove_file(&socket);
        let conf = opts.work_dir.join("clamd.conf");
        let log = opts.work_dir.join("clamd.log");
        let text = opts.config_text.clone().unwrap_or_else(|| config_text(&opts, &socket, &tmp));
        fs::write(&conf, text).map_err(setup(&conf))?;
        fs::File::create(&log).map_err(setup(&log))?;
        // Appending: a managed clamd's `LogFile` is this same file.
        let out = fs::OpenOptions::new().append(true).open(&log).map_err(setup(&log))?;
        let err = out.try_clone().map_err(setup(&log))?;
        let child = command(&opts.binary, &conf, opts.detached)
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| StartError::Spawn { binary: opts.binary.clone(), source })?;
        Ok(ClamdProcess { child, opts, socket, log, spawned: Instant::now(), kept: false })
    }

    /// Waits until clamd answers PING, it exits, `timeout` passes, or `check`
    /// (called every tick, e.g. a memory budget) returns a reason to stop.
    /// On every failure the process is killed and reaped before returning.
    pub(crate) async fn wait_ready(&mut self, timeout: Duration, mut check: impl FnMut(&Self) -> Option<String>) -> Result<Duration, StartError> {
        let client = self.client(Duration::from_millis(500));
        let deadline = Instant::now() + timeout;
        let mut tick = Duration::from_millis(5);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log_text();
                return Err(StartError::Exited { status, database_dir: self.opts.database_dir.clone(), reason: explain(&log), log });
            }
            if let Some(reason) = check(self) {
                self.kill();
                return Err(StartError::Aborted { database_dir: self.opts.database_dir.clone(), reason, log: self.log_text() });
            }
            // clamd binds its socket only after the databases loaded.
            if self.socket.exists() && client.ping().await.is_ok() {
                let took = self.spawned.elapsed();
                // Answering after the deadline is still over budget.
                if took <= timeout {
                    return Ok(took);
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(StartError::Timeout { after: timeout, database_dir: self.opts.database_dir.clone(), log: self.log_text() });
            }
            tokio::time::sleep(tick).await;
            // Short: every tick lost after the bind is added to the canary's
            // load time (at 50 ms, about 25 ms per canary); a tick costs a
            // waitpid, a stat and a /proc read.
            tick = (tick * 2).min(Duration::from_millis(10));
        }
    }

    pub fn client(&self, timeout: Duration) -> Client {
        Client::unix(&self.socket, timeout)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log_text(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    pub(crate) fn peak_rss(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmHWM:").map(|k| k * 1024)
    }

    /// Current resident memory (`VmRSS`), in bytes.
    pub(crate) fn rss(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS:").map(|k| k * 1024)
    }

    /// Whether the process is still running (not exited, not yet reaped).
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs the process group and reaps clamd. Idempotent.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&self.socket);
    }

    /// Sends a signal to clamd (tests: SIGSTOP to fake a hang).
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

fn setup(file: &Path) -> impl FnOnce(std::io::Error) -> StartError {
    let file = file.to_path_buf();
    move |source| StartError::Setup { file, source }
}

/// The generated `clamd.conf`: foreground, a private socket and temp dir,
/// then the caller's extra lines.
fn config_text(opts: &Options, socket: &Path, tmp: &Path) -> String {
    let mut text = format!(
        "# generated by clamgate\nForeground yes\nLocalSocket {}\nLocalSocketMode 600\nDatabaseDirectory {}\n\
         TemporaryDirectory {}\nLogTime yes\nLogFileMaxSize 0\nSelfCheck 0\nConcurrentDatabaseReload {}\n",
        socket.display(),
        opts.database_dir.display(),
        tmp.display(),
        if opts.concurrent_reload { "yes" } else { "no" },
    );
    for line in &opts.extra_config {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// clamd on `conf`, set up so it cannot outlive us or escape our kill.
fn command(binary: &Path, conf: &Path, detached: bool) -> Command {
    let mut cmd = Command::new(binary);
    if detached {
        cmd.arg("--config-file").arg(conf).stdin(Stdio::null()).env_remove("NOTIFY_SOCKET").process_group(0);
        return cmd;
    }
    // SAFETY: between fork and exec only prctl(PR_SET_PDEATHSIG) runs: one
    // async-signal-safe syscall, no allocation. A clamd must not outlive
    // whoever started it (a SIGKILLed daemon would leave a canary holding
    // hundreds of MiB). The signal fires when the spawning *thread*
    // exits: spawn it from the main thread or a runtime worker, never
    // from `spawn_blocking` (its threads exit when idle).
    unsafe {
        cmd.pre_exec(|| rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).map_err(Into::into));
    }
    cmd.arg("--config-file")
        .arg(conf)
        .stdin(Stdio::null())
        // A canary must never tell systemd that *we* are ready.
        .env_remove("NOTIFY_SOCKET")
        // Own group: one kill reaches anything clamd forks.
        .process_group(0);
    cmd
}

impl ClamdProcess {
    /// Lets go of a detached clamd (managed mode: it becomes, or may become,
    /// production): it keeps running, and a thread reaps it when it exits,
    /// so a clamd stopped by pid (by us or by the CLI) leaves no zombie.
    pub(crate) fn keep(mut self) -> u32 {
        debug_assert!(self.opts.detached, "only a detached clamd may outlive its handle");
        self.kept = true;
        let pid = self.child.id();
        std::thread::spawn(move || {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            }
        });
        pid
    }
}

impl Drop for ClamdProcess {
    fn drop(&mut self) {
        if !self.kept {
            self.kill();
        }
    }
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Picks the lines of clamd's output that say why it failed: the libclamav
/// errors, joined, most specific first; else the last line it printed.
pub(crate) fn explain(log: &str) -> String {
    let errors: Vec<&str> = log
        .lines()
        .map(|l| l.split_once(" -> ").map_or(l, |(_, msg)| msg).trim())
        .filter(|l| l.contains("Error") || l.starts_with("ERROR"))
        .map(|l| l.trim_start_matches("LibClamAV Error: "))
        .collect();
    if errors.is_empty() {
        return log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string();
    }
    let mut out = Vec::new();
    for e in errors {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_picks_libclamav_errors() {
        let log = "Mon Nov 23 22:23:11 2026 -> Reading databases from /x\n\
                   LibClamAV Error: cli_loadhash: Empty database file\n\
                   LibClamAV Error: Can't load /x/a.hdb: Malformed database\n\
                   ERROR: Malformed database\n";
        assert_eq!(explain(log), "cli_loadhash: Empty database file; Can't load /x/a.hdb: Malformed database; ERROR: Malformed database");
        assert_eq!(explain("a\nlast words\n\n"), "last words");
        assert_eq!(explain(""), "no output");
    }
}
