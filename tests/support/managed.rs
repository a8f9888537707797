//! Managed mode under test: a daemon [`Env`] whose config has `managed =
//! true` and a clamd.conf of the operator's kind in the temp dir, and what
//! a test reads back: the production link, the managed clamds and their
//! logs. Managed clamds outlive a SIGKILLed daemon by design, so the
//! guard stops every clamd whose config lives under its temp dir.

use std::fs;
use std::path::{Path, PathBuf};

use clamgate::clamd::Client;

use super::daemon::Env;
use super::{CALL_TIMEOUT, clamds_under};

pub struct ManagedEnv {
    pub env: Env,
}

impl std::ops::Deref for ManagedEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl ManagedEnv {
    /// `extra` goes to the top level of clamgate.toml, `conf` lines to the
    /// operator's clamd.conf (after LocalSocket and the test basics).
    pub fn new(extra: &str, conf: &[&str]) -> ManagedEnv {
        let env = Env::new(extra, "managed = true\nconf = \"@CONF@\"");
        let r = env.path();
        let clamd_conf = r.join("clamd.conf");
        let text = fs::read_to_string(&env.config).unwrap().replace("@CONF@", &clamd_conf.to_string_lossy());
        fs::write(&env.config, text).unwrap();
        fs::create_dir_all(r.join("prod")).unwrap();
        fs::create_dir_all(r.join("tmp")).unwrap();
        let mut lines = vec![
            "# an operator's clamd.conf".to_string(),
            format!("LocalSocket {}", r.join("prod/clamd.sock").display()),
            "LocalSocketMode 600".into(),
            format!("TemporaryDirectory {}", r.join("tmp").display()),
            "LogTime yes".into(),
            "Foreground no".into(),
            "SelfCheck 600".into(),
        ];
        lines.extend(conf.iter().map(|l| l.to_string()));
        fs::write(&clamd_conf, lines.join("\n") + "\n").unwrap();
        ManagedEnv { env }
    }

    pub fn clamd_conf(&self) -> PathBuf {
        self.path().join("clamd.conf")
    }

    pub fn prod_socket(&self) -> PathBuf {
        self.path().join("prod/clamd.sock")
    }

    pub fn prod(&self) -> Client {
        Client::unix(self.prod_socket(), CALL_TIMEOUT)
    }

    /// The managed clamd the production link names.
    pub fn production(&self) -> Option<String> {
        let t = fs::read_link(self.prod_socket()).ok()?;
        let f = t.file_name()?.to_str()?.to_string();
        Some(f.strip_prefix("clamgate-")?.strip_suffix(".sock")?.to_string())
    }

    pub fn managed_dir(&self) -> PathBuf {
        self.state().join("clamd")
    }

    /// Managed clamd dirs (one per clamd not yet stopped).
    pub fn instances(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.managed_dir())
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n != "retired").collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The pid in a managed clamd's PID file.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        fs::read_to_string(self.managed_dir().join(name).join("clamd.pid")).ok()?.trim().parse().ok()
    }

    /// The release a managed clamd loaded.
    pub fn release_of(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.managed_dir().join(name).join("release")).ok().map(|s| s.trim().to_string())
    }

    /// Every managed clamd's log, running and retired, by name.
    pub fn clamd_logs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for n in self.instances() {
            out.push((n.clone(), fs::read_to_string(self.managed_dir().join(&n).join("clamd.log")).unwrap_or_default()));
        }
        if let Ok(d) = fs::read_dir(self.managed_dir().join("retired")) {
            for e in d.flatten() {
                let n = e.file_name().to_string_lossy().trim_end_matches(".log").to_string();
                out.push((n, fs::read_to_string(e.path()).unwrap_or_default()));
            }
        }
        out.sort();
        out
    }

    /// Engine loads in all managed clamds' logs: clamd says "Loaded N
    /// signatures" (or "Database correctly reloaded") once per engine.
    pub fn engine_loads(&self) -> usize {
        self.clamd_logs().iter().map(|(_, l)| engine_loads_in(l)).sum()
    }

    /// clamd processes with a config under this env (managed and test-started).
    pub fn clamds(&self) -> usize {
        clamds_under(self.path())
    }
}

pub fn engine_loads_in(log: &str) -> usize {
    log.lines().filter(|l| l.contains("Database correctly reloaded") || (l.contains("Loaded ") && l.contains(" signatures"))).count()
}

/// Pids of clamds whose command line names a file under `dir`.
pub fn clamd_pids_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("clamd") && c.contains(&needle)
            })
        })
        .collect()
}

impl Drop for ManagedEnv {
    fn drop(&mut self) {
        // Only our own: clamds whose config is under this test's temp dir.
        for pid in clamd_pids_under(self.path()) {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}
