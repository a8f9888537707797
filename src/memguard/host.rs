//! The memory guard's readings from this machine: `MemAvailable` from
//! /proc/meminfo, and the room under clamgate's own cgroup's memory limit
//! (and its ancestors'), found through /proc/self/cgroup and
//! /proc/self/mountinfo. cgroup v2 (`memory.max`, `memory.current`) when its
//! memory controller is there, else v1's (`memory.limit_in_bytes`,
//! `memory.usage_in_bytes`), as on hybrid hosts. File cache the kernel can
//! drop (`inactive_file`) is not counted as used.

use std::path::{Path, PathBuf};

use super::decide::{CgroupRoom, Readings};

/// Where readings come from; a test injects its own.
pub(crate) trait Sensor: Send + Sync {
    fn read(&self) -> Readings;
}

/// This machine, under `root` (`/`; a test's fake tree otherwise).
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub(crate) root: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host { root: PathBuf::from("/") }
    }
}

/// A limit at or above this is "no limit" (v1 writes 2^63 rounded to a page).
const UNLIMITED: u64 = 1 << 62;

/// Which cgroup interface a directory speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V2,
    V1,
}

impl Version {
    fn files(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Version::V2 => ("memory.max", "memory.current", "inactive_file"),
            Version::V1 => ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
        }
    }
}

impl Sensor for Host {
    fn read(&self) -> Readings {
        Readings { mem_available: self.mem_available(), cgroup: self.cgroup_room() }
    }
}

impl Host {
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn mem_available(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.path("/proc/meminfo")).ok()?;
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// The tightest limit from our cgroup up to the hierarchy's root.
    fn cgroup_room(&self) -> Option<CgroupRoom> {
        let (version, mount, dir) = self.own_cgroup()?;
        let mut tightest: Option<CgroupRoom> = None;
        let mut at = dir.as_path();
        loop {
            if let Some(room) = room_in(at, version)
                && tightest.as_ref().is_none_or(|t| room.free() < t.free())
            {
                tightest = Some(room);
            }
            match at.parent() {
                Some(up) if at != mount && up.starts_with(&mount) => at = up,
                _ => break,
            }
        }
        tightest
    }

    /// Our memory cgroup's directory: v2 if its memory controller is on, else v1's.
    fn own_cgroup(&self) -> Option<(Version, PathBuf, PathBuf)> {
        let cgroups = std::fs::read_to_string(self.path("/proc/self/cgroup")).ok()?;
        let mountinfo = std::fs::read_to_string(self.path("/proc/self/mountinfo")).ok()?;
        let v2 = cgroups.lines().find_map(|l| l.strip_prefix("0::"));
        let v1 = cgroups.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers.split(',').any(|c| c == "memory").then_some(path)
        });
        let candidates = [(Version::V2, v2), (Version::V1, v1)];
        candidates.into_iter().find_map(|(version, path)| {
            let (root, mount) = mount_of(&mountinfo, version)?;
            let rel = Path::new(path?).strip_prefix(&root).ok()?;
            let mount = self.path(&mount);
            let dir = mount.join(rel);
            dir.join(version.files().1).exists().then_some((version, mount, dir))
        })
    }
}

/// A cgroup hierarchy's (root, mount point) from mountinfo: fields 4 and 5,
/// filesystem type after the ` - ` separator, v1 controllers in the super options.
fn mount_of(mountinfo: &str, version: Version) -> Option<(String, String)> {
    mountinfo.lines().find_map(|l| {
        let (mine, theirs) = l.split_once(" - ")?;
        let mut m = mine.split_whitespace().skip(3);
        let (root, point) = (m.next()?, m.next()?);
        let mut t = theirs.split_whitespace();
        let (fstype, options) = (t.next()?, t.nth(1).unwrap_or(""));
        let ours = match version {
            Version::V2 => fstype == "cgroup2",
            Version::V1 => fstype == "cgroup" && options.split(',').any(|o| o == "memory"),
        };
        ours.then(|| (root.to_string(), unescape(point)))
    })
}

/// mountinfo writes a space as `\040`.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
}

/// The room in one cgroup directory, if it has a limit.
fn room_in(dir: &Path, version: Version) -> Option<CgroupRoom> {
    let (limit_file, usage_file, inactive_key) = version.files();
    let limit = read_number(&dir.join(limit_file))?;
    if limit >= UNLIMITED {
        return None;
    }
    let usage = read_number(&dir.join(usage_file))?;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let inactive = stat.lines().find_map(|l| l.strip_prefix(inactive_key)?.trim().parse::<u64>().ok()).unwrap_or(0);
    Some(CgroupRoom { dir: dir.to_path_buf(), limit, used: usage.saturating_sub(inactive) })
}

/// A number in a cgroup file; v2's "max" is none.
fn read_number(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const MOUNTS: &str = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

    /// A pure cgroup v2 host: the tightest of our group and its parent counts.
    #[test]
    fn cgroup_v2_limits_up_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "proc/meminfo", "MemTotal: 1000 kB\nMemAvailable:     2048 kB\n");
        write(r, "proc/self/cgroup", "0::/system.slice/clamgate.service\n");
        write(r, "proc/self/mountinfo", "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        write(r, "sys/fs/cgroup/system.slice/clamgate.service/memory.max", "max\n");
        write(r, "sys/fs/cgroup/system.slice/clamgate.service/memory.current", "5000\n");
        write(r, "sys/fs/cgroup/system.slice/memory.max", "10000\n");
        write(r, "sys/fs/cgroup/system.slice/memory.current", "7000\n");
        write(r, "sys/fs/cgroup/system.slice/memory.stat", "anon 5000\ninactive_file 1000\nactive_file 1000\n");
        let got = Host { root: r.to_path_buf() }.read();
        assert_eq!(got.mem_available, Some(2048 * 1024));
        let cg = got.cgroup.expect("a limit");
        assert_eq!((cg.limit, cg.used, cg.free()), (10000, 6000, 4000), "{cg:?}");
        assert!(cg.dir.ends_with("sys/fs/cgroup/system.slice"), "{cg:?}");
    }

    /// A hybrid host like this test machine: v2 without the memory
    /// controller, the memory limit in v1; a container's mount root strips.
    #[test]
    fn cgroup_v1_memory_on_a_hybrid_host() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "proc/meminfo", "MemAvailable: 1 kB\n");
        write(r, "proc/self/cgroup", "9:name=systemd:/\n4:memory:/box/guard\n0::/\n");
        write(r, "proc/self/mountinfo", MOUNTS);
        write(r, "sys/fs/cgroup/unified/cgroup.procs", "");
        write(r, "sys/fs/cgroup/memory/box/guard/memory.limit_in_bytes", "300000\n");
        write(r, "sys/fs/cgroup/memory/box/guard/memory.usage_in_bytes", "250000\n");
        write(r, "sys/fs/cgroup/memory/box/guard/memory.stat", "cache 1\ntotal_inactive_file 50000\n");
        write(r, "sys/fs/cgroup/memory/box/memory.limit_in_bytes", "9223372036854771712\n");
        write(r, "sys/fs/cgroup/memory/box/memory.usage_in_bytes", "250000\n");
        write(r, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
        write(r, "sys/fs/cgroup/memory/memory.usage_in_bytes", "1\n");
        let cg = Host { root: r.to_path_buf() }.read().cgroup.expect("the v1 limit");
        assert_eq!((cg.limit, cg.used), (300000, 200000));
        assert!(cg.dir.ends_with("memory/box/guard"), "{cg:?}");
    }

    #[test]
    fn no_limit_and_unreadable_are_none() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert_eq!(Host { root: r.to_path_buf() }.read(), Readings::default());
        write(r, "proc/self/cgroup", "0::/a\n");
        write(r, "proc/self/mountinfo", "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        write(r, "sys/fs/cgroup/a/memory.max", "max\n");
        write(r, "sys/fs/cgroup/a/memory.current", "5\n");
        assert_eq!(Host { root: r.to_path_buf() }.read().cgroup, None);
    }
}
