//! Managed production mode (`[clamd] managed = true`): clamgate runs
//! production clamd itself, from the operator's `clamd.conf`. Every managed
//! clamd listens on a socket of its own; the production path is a symlink
//! to one of them, moved with one rename(2). The canary that passed the
//! gate is kept and handed the link, so an update loads its engine once.
//!
//! What is running is read from disk, never remembered: the production
//! link names the clamd that serves, each clamd's dir under
//! `<state_dir>/clamd/<name>/` holds its config, log, PID file, `release`
//! (the release it loaded) and `db` (a link to it). So the CLI, a restarted
//! daemon and the daemon itself see the same thing.

pub(crate) mod conf;
pub(crate) mod instance;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::clamd::Client;
use crate::clamd::process::{ClamdProcess, Options, StartError};
use crate::failpoint::{self, Point};
use crate::store::Store;
pub(crate) use conf::{ClamdConf, ConfError};

/// Retired clamds' logs kept in `clamd/retired/`, newest first.
const KEEP_RETIRED_LOGS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ManagedError {
    #[error("managed clamd: {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("managed clamd on release {release}: {source}")]
    Start {
        release: String,
        #[source]
        source: StartError,
    },
    #[error("the production socket {} is served by a clamd clamgate did not start (stop clamav-daemon first: see the README, \"Managed mode\")", .0.display())]
    Occupied(PathBuf),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ManagedError {
    let path = path.to_path_buf();
    move |source| ManagedError::Io { what, path, source }
}

/// One managed clamd found on disk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Instance {
    pub(crate) name: String,
    /// Running (by PID file and command line); `None` once it is gone.
    pub(crate) pid: Option<u32>,
    /// The release it loaded; `None` for a canary not (yet) kept.
    pub(crate) release: Option<String>,
}

/// A handover: the production link now names `to`; `from` served before.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Served {
    pub(crate) to: String,
    pub(crate) from: Option<String>,
}

/// The supervisor: how to start a managed clamd and where they live.
#[derive(Debug, Clone)]
pub(crate) struct Managed {
    pub(crate) conf: ClamdConf,
    binary: PathBuf,
    root: PathBuf,
    /// Bound on loading a release in a clamd that is no canary (rollback,
    /// first start): the RELOAD mode's `reload_timeout`.
    load_timeout: Duration,
    /// Bound on the old clamd's in-flight scans after a handover.
    drain_timeout: Duration,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Managed {
    pub(crate) fn new(conf: ClamdConf, binary: &Path, state_dir: &Path, load_timeout: Duration, drain_timeout: Duration) -> Managed {
        Managed { conf, binary: binary.to_path_buf(), root: state_dir.join("clamd"), load_timeout, drain_timeout }
    }

    pub(crate) fn production_socket(&self) -> &Path {
        &self.conf.production_socket
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Beside the production path, so clients that may reach it may reach
    /// this, and the rename never crosses a filesystem.
    fn socket(&self, name: &str) -> PathBuf {
        let prod = self.production_socket();
        prod.with_file_name(format!("clamgate-{name}.sock"))
    }

    /// Starts a managed clamd on `database` (a snapshot or a release dir)
    /// without waiting for it: canaries and [`Managed::serve`] both start
    /// here. It is detached: it outlives us, and the daemon's start-up
    /// adopts or stops it.
    pub(crate) fn spawn(&self, database: &Path) -> Result<(String, ClamdProcess), ManagedError> {
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        let name = format!("{stamp}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let dir = self.dir(&name);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let db = dir.join("db");
        std::os::unix::fs::symlink(database, &db).map_err(io("linking", &db))?;
        let socket = self.socket(&name);
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let paths = conf::Paths { socket: &socket, log: &dir.join("clamd.log"), pid: &dir.join("clamd.pid"), database: &db };
        let mut opts = Options::new(&db, &dir);
        opts.binary = self.binary.clone();
        opts.config_text = Some(self.conf.render(&paths));
        opts.socket = Some(socket);
        opts.detached = true;
        let p = ClamdProcess::spawn(opts).map_err(|source| ManagedError::Start { release: database.display().to_string(), source })?;
        // clamd writes its PidFile only once it runs; ours covers a crash before that.
        let pid_file = dir.join("clamd.pid");
        std::fs::write(&pid_file, format!("{}\n", p.pid())).map_err(io("writing", &pid_file))?;
        Ok((name, p))
    }

    /// A canary that passed stays running, recorded as holding `release`.
    pub(crate) fn keep(&self, name: &str, p: ClamdProcess, release: &str) -> Result<(), ManagedError> {
        let file = self.dir(name).join("release");
        std::fs::write(&file, release).map_err(io("writing", &file))?;
        let pid = p.keep();
        tracing::debug!(release, pid, "managed clamd {name} kept");
        Ok(())
    }

    /// Every managed clamd dir, running or not.
    pub(crate) fn instances(&self) -> Vec<Instance> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut out: Vec<Instance> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != "retired")
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let dir = e.path();
                let pid = instance::running(&dir.join("clamd.pid"), &dir.join("clamd.conf"));
                let release = std::fs::read_to_string(dir.join("release")).ok().map(|s| s.trim().to_string());
                Instance { name, pid, release }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The clamd the production link names, if it is one of ours.
    pub(crate) fn production(&self) -> Option<String> {
        let target = std::fs::read_link(self.production_socket()).ok()?;
        let file = target.file_name()?.to_str()?;
        Some(file.strip_prefix("clamgate-")?.strip_suffix(".sock")?.to_string())
    }

    /// Refuses to take over a production path that a clamd of someone
    /// else's serves (Debian's clamav-daemon still running).
    pub(crate) async fn check_free(&self) -> Result<(), ManagedError> {
        let path = self.production_socket();
        let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if path.exists() && !is_link && Client::unix(path, Duration::from_secs(2)).ping().await.is_ok() {
            return Err(ManagedError::Occupied(path.to_path_buf()));
        }
        Ok(())
    }

    /// Makes a clamd running `release` serve the production path: the one
    /// already running it (a kept canary, or the previous production clamd
    /// during a rollback), else a new one, loaded once. Returns who served
    /// before; it keeps running until [`Managed::retire`].
    pub(crate) async fn serve(&self, store: &Store, release: &str, renamed: Point) -> Result<Served, ManagedError> {
        // Before anything starts: a refusal must not leave a clamd behind.
        self.check_free().await?;
        let from = self.production();
        let found = self.instances().into_iter().find(|i| i.pid.is_some() && i.release.as_deref() == Some(release));
        let to = match found {
            Some(i) if self.answers(&i.name).await => i.name,
            _ => self.start(store, release).await?,
        };
        // A kept canary loaded the snapshot; from now on its `db` is the release.
        let db = self.dir(&to).join("db");
        replace_link(&store.release_dir(release), &db)?;
        if from.as_deref() != Some(to.as_str()) {
            self.check_free().await?;
            replace_link(&self.socket(&to), self.production_socket())?;
            tracing::info!(release, "managed: the production socket now names clamd {to} (was {from:?})");
            failpoint::hit(renamed);
        }
        let from = from.filter(|f| *f != to);
        Ok(Served { to, from })
    }

    async fn answers(&self, name: &str) -> bool {
        Client::unix(self.socket(name), Duration::from_secs(5)).ping().await.is_ok()
    }

    async fn start(&self, store: &Store, release: &str) -> Result<String, ManagedError> {
        tracing::info!(release, "managed: starting a clamd on release {release}");
        let (name, mut p) = self.spawn(&store.release_dir(release))?;
        p.wait_ready(self.load_timeout, |_| None).await.map_err(|source| ManagedError::Start { release: release.to_string(), source })?;
        self.keep(&name, p, release)?;
        Ok(name)
    }

    /// The clamd that served before a handover: in-flight scans may finish
    /// (up to the drain bound), then it stops and its dir goes; its log is
    /// kept under `clamd/retired/`.
    pub(crate) async fn retire(&self, name: &str) {
        let socket = self.socket(name);
        let open = instance::drain(&socket, self.drain_timeout).await;
        if open > 0 {
            tracing::warn!("managed clamd {name}: {open} connections still open after {:?}; stopping it anyway", self.drain_timeout);
        }
        failpoint::hit(Point::ManagedOldDrained);
        self.stop(name).await;
        failpoint::hit(Point::ManagedOldStopped);
    }

    /// Stops a managed clamd (no drain) and removes what it leaves.
    async fn stop(&self, name: &str) {
        let dir = self.dir(name);
        let conf = dir.join("clamd.conf");
        if let Ok(pid) = std::fs::read_to_string(dir.join("clamd.pid")).unwrap_or_default().trim().parse::<u32>() {
            if instance::stop(pid, &conf).await {
                tracing::warn!("managed clamd {name} (pid {pid}) did not stop within {:?}; killed", instance::STOP_GRACE);
            }
            // Still there (stuck in the kernel): keep its PID file and
            // config, so the next sweep finds it and tries again.
            if instance::alive(pid, &conf) {
                tracing::error!("managed clamd {name} (pid {pid}) survived SIGKILL; {} kept for the next sweep", dir.display());
                return;
            }
        }
        self.archive_log(name);
        let _ = std::fs::remove_file(self.socket(name));
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }

    /// Stops every managed clamd but the production one: canaries a crash
    /// or a pin left, and an old production clamd a crash left undrained.
    pub(crate) async fn sweep(&self) {
        let prod = self.production();
        for i in self.instances() {
            if prod.as_deref() == Some(i.name.as_str()) {
                continue;
            }
            if i.pid.is_some() {
                tracing::info!(release = ?i.release, "managed: stopping clamd {} (not production)", i.name);
            }
            self.stop(&i.name).await;
        }
    }

    /// The production clamd, if it runs and answers; what the daemon's
    /// supervision and start-up check.
    pub(crate) async fn production_running(&self) -> Option<Instance> {
        let name = self.production()?;
        let i = self.instances().into_iter().find(|i| i.name == name)?;
        (i.pid.is_some() && self.answers(&name).await).then_some(i)
    }

    /// A client of the production clamd's own socket, if it runs `release`
    /// (the gate's baseline verdicts, without a canary).
    pub(crate) fn serving(&self, release: &str, timeout: Duration) -> Option<Client> {
        let name = self.production()?;
        let dir = self.dir(&name);
        instance::running(&dir.join("clamd.pid"), &dir.join("clamd.conf"))?;
        let loaded = std::fs::read_to_string(dir.join("release")).ok()?;
        (loaded.trim() == release).then(|| Client::unix(self.socket(&name), timeout))
    }

    fn archive_log(&self, name: &str) {
        let retired = self.root.join("retired");
        if std::fs::create_dir_all(&retired).is_err() {
            return;
        }
        let _ = std::fs::rename(self.dir(name).join("clamd.log"), retired.join(format!("{name}.log")));
        let Ok(entries) = std::fs::read_dir(&retired) else { return };
        let mut logs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        logs.sort();
        let excess = logs.len().saturating_sub(KEEP_RETIRED_LOGS);
        for old in &logs[..excess] {
            let _ = std::fs::remove_file(old);
        }
    }
}

/// `link` made to point at `target` with one rename(2), then the dir fsynced.
fn replace_link(target: &Path, link: &Path) -> Result<(), ManagedError> {
    let tmp = link.with_file_name(format!(".{}.clamgate-new", link.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io("linking", &tmp))?;
    std::fs::rename(&tmp, link).map_err(io("renaming over", link))?;
    if let Some(parent) = link.parent()
        && let Ok(d) = std::fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    Ok(())
}
