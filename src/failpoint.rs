//! Crash points for the crash-safety and fault tests. In debug builds (what
//! `cargo test` runs), `CLAMGATE_FAILPOINT=name` makes the process SIGKILL
//! itself when it reaches `name`, and `name:stop` makes it SIGSTOP itself
//! there, so a test can break something else at that exact moment and then
//! let it go on with SIGCONT. Release builds compile this to nothing.

/// Dies (or stops) here, if the test asked for it.
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    if let Ok(v) = std::env::var("CLAMGATE_FAILPOINT") {
        use rustix::process::{Signal, getpid, kill_process};
        match v.split_once(':') {
            None if v == name => {
                tracing::warn!("failpoint {name}: killing myself");
                let _ = kill_process(getpid(), Signal::KILL);
            }
            Some((point, "stop")) if point == name => {
                tracing::warn!("failpoint {name}: stopping myself until SIGCONT");
                let _ = kill_process(getpid(), Signal::STOP);
            }
            _ => {}
        }
    }
    let _ = name;
}

/// Every crash point, in the order a promotion and a rollback reach them.
pub const ALL: &[&str] = &[
    "corpus-scan",
    "release-files-written",
    "release-written",
    "current-link-created",
    "promotion-swapped",
    "promotion-reloaded",
    "smoke-scan",
    "rollback-begun",
    "rollback-swapped",
    "rollback-reloaded",
];
