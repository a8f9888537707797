//! Crash points for the crash-safety tests. In debug builds (what
//! `cargo test` runs), `CLAMGATE_FAILPOINT=name` makes the process SIGKILL
//! itself when it reaches `name`; release builds compile this to nothing.

/// Dies here, by SIGKILL, if the test asked for it.
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("CLAMGATE_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::warn!("failpoint {name}: killing myself");
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    let _ = name;
}

/// Every crash point, in the order a promotion and a rollback reach them.
pub const ALL: &[&str] = &[
    "release-files-written",
    "release-written",
    "current-link-created",
    "promotion-swapped",
    "promotion-reloaded",
    "rollback-swapped",
    "rollback-reloaded",
];
