//! One managed clamd as the OS sees it: alive by PID file and command line
//! (so a reused pid is not mistaken for it), its open connections from
//! `/proc/net/unix` (drain), and stopping it by pid, which works the same
//! for a clamd we spawned and one a crashed daemon left behind.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// How long a clamd gets between SIGTERM and SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// The pid in `pid_file`, if that process runs clamd on `conf` and has not
/// exited (a zombie counts as gone: its reaper is on the way).
pub(crate) fn running(pid_file: &Path, conf: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    alive(pid, conf).then_some(pid)
}

pub(crate) fn alive(pid: u32, conf: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which may itself hold ") ".
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    if matches!(state, None | Some('Z') | Some('X')) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let conf = conf.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|arg| arg == conf)
}

/// Connections to `socket` that clamd accepted or has queued: what a drain
/// waits for. The listening socket itself (state 01) is not counted.
pub(crate) fn connections(socket: &Path) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else { return 0 };
    count_connections(&table, &socket.to_string_lossy())
}

fn count_connections(table: &str, socket: &str) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path
            f.len() >= 8 && f[7] == socket && matches!(f[5], "02" | "03")
        })
        .count()
}

/// Waits until nothing is connected to `socket` (twice in a row, 50 ms
/// apart, so a connection being accepted is not missed), up to `bound`.
/// Returns how many were still open when it gave up.
pub(crate) async fn drain(socket: &Path, bound: Duration) -> usize {
    let deadline = Instant::now() + bound;
    let mut quiet = 0;
    loop {
        let open = connections(socket);
        quiet = if open == 0 { quiet + 1 } else { 0 };
        if quiet >= 2 {
            return 0;
        }
        if Instant::now() >= deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, up to [`STOP_GRACE`] for clamd to finish, then SIGKILL.
/// Returns whether it had to be killed.
pub(crate) async fn stop(pid: u32, conf: &Path) -> bool {
    let Some(p) = Pid::from_raw(pid as i32) else { return false };
    if !alive(pid, conf) {
        return false;
    }
    let _ = rustix::process::kill_process(p, Signal::TERM);
    if gone_within(pid, conf, STOP_GRACE).await {
        return false;
    }
    let _ = rustix::process::kill_process(p, Signal::KILL);
    gone_within(pid, conf, Duration::from_secs(5)).await;
    true
}

async fn gone_within(pid: u32, conf: &Path, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if !alive(pid, conf) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid, conf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_accepted_and_queued_connections_only() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1001 /run/c/a.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 1002 /run/c/a.sock\n\
            0000000000000000: 00000002 00000000 00000000 0001 02 1003 /run/c/a.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 1004 /run/c/b.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 1005\n";
        assert_eq!(super::count_connections(table, "/run/c/a.sock"), 2);
        assert_eq!(super::count_connections(table, "/run/c/none.sock"), 0);
    }

    #[test]
    fn our_own_process_is_alive_only_with_its_conf_argument() {
        let me = std::process::id();
        assert!(!super::alive(me, std::path::Path::new("/no/such/clamd.conf")));
        let arg0 = std::env::args().next().unwrap();
        assert!(super::alive(me, std::path::Path::new(&arg0)));
    }
}
