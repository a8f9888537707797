//! A memory cgroup the test creates under its own, with a limit it sets and
//! changes, and a daemon started inside it: the memory guard's real limit.
//! cgroup v2 when its memory controller is enabled for our group, else v1's
//! memory hierarchy (this test machine is hybrid: v2 has no memory
//! controller, v1's is writable as root).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::daemon::{DaemonProc, Env};

pub struct MemCgroup {
    pub dir: PathBuf,
    v2: bool,
}

impl MemCgroup {
    /// A fresh child of this process's memory cgroup; `Err` says why none
    /// could be made.
    pub fn create(name: &str) -> Result<MemCgroup, String> {
        let cgroups = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let v2_path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string);
        let v1_path = cgroups.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            c.split(',').any(|c| c == "memory").then(|| p.to_string())
        });
        let unique = format!("{name}-{}", std::process::id());
        let mut tried = Vec::new();
        for (v2, base) in [(true, v2_path.map(|p| format!("/sys/fs/cgroup/{p}"))), (false, v1_path.map(|p| format!("/sys/fs/cgroup/memory/{p}")))] {
            let Some(base) = base else { continue };
            let base = PathBuf::from(base.replace("//", "/"));
            let ok_controller = !v2 || fs::read_to_string(base.join("cgroup.subtree_control")).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
            if !ok_controller {
                tried.push(format!("{}: no memory controller for children", base.display()));
                continue;
            }
            let dir = base.join(&unique);
            match fs::create_dir(&dir) {
                Ok(()) => return Ok(MemCgroup { dir, v2 }),
                Err(e) => tried.push(format!("{}: {e}", dir.display())),
            }
        }
        Err(tried.join("; "))
    }

    fn limit_file(&self) -> PathBuf {
        self.dir.join(if self.v2 { "memory.max" } else { "memory.limit_in_bytes" })
    }

    pub fn set_limit(&self, bytes: u64) {
        fs::write(self.limit_file(), bytes.to_string()).unwrap_or_else(|e| panic!("{}: {e}", self.limit_file().display()));
    }

    /// In use, minus the file cache the kernel can drop (what the guard counts).
    pub fn working_set(&self) -> u64 {
        let usage = if self.v2 { "memory.current" } else { "memory.usage_in_bytes" };
        let used: u64 = fs::read_to_string(self.dir.join(usage)).unwrap().trim().parse().unwrap();
        let key = if self.v2 { "inactive_file " } else { "total_inactive_file " };
        let stat = fs::read_to_string(self.dir.join("memory.stat")).unwrap();
        let inactive: u64 = stat.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok()).unwrap_or(0);
        used.saturating_sub(inactive)
    }

    pub fn procs(&self) -> Vec<u32> {
        fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
    }

    /// `clamgate run` on `env`'s config, moved into this group before it
    /// execs (a shell writes its own pid, then execs the daemon), so every
    /// canary it starts is in the group too.
    pub fn spawn_daemon(&self, env: &Env) -> DaemonProc {
        let child = env
            .logged(Command::new("/bin/sh"), "daemon.log")
            .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
            .arg(self.dir.join("cgroup.procs"))
            .arg(env!("CARGO_BIN_EXE_clamgate"))
            .args(["run", "--config"])
            .arg(&env.config)
            .spawn()
            .unwrap();
        DaemonProc { child }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for MemCgroup {
    /// Removed once empty: its processes are the test's, killed by their
    /// handles first (the daemon's canaries die with it).
    fn drop(&mut self) {
        for _ in 0..200 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}
