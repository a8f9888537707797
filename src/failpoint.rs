//! Crash points for the crash-safety and fault tests. In debug builds (what
//! `cargo test` runs), `CLAMGATE_FAILPOINT=name` makes the process SIGKILL
//! itself when it reaches `name`, and `name:stop` makes it SIGSTOP itself
//! there, so a test can break something else at that exact moment and then
//! let it go on with SIGCONT; several are separated by commas. Release builds compile this to nothing, and the
//! tests that need it are compiled only where it exists.

macro_rules! points {
    ($($variant:ident = $name:literal,)*) => {
        /// A named crash point. The names are what tests and operators
        /// reproducing a crash pass in `CLAMGATE_FAILPOINT`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Point {
            $($variant,)*
        }

        impl Point {
            pub fn name(self) -> &'static str {
                match self {
                    $(Point::$variant => $name,)*
                }
            }
        }

        /// Every crash point, in the order a promotion and a rollback reach them.
        pub const ALL: &[Point] = &[$(Point::$variant,)*];
    };
}

points! {
    CorpusScan = "corpus-scan",
    IsolateBisect = "isolate-bisect",
    IsolateReduced = "isolate-reduced",
    ReleaseFilesWritten = "release-files-written",
    ReleaseWritten = "release-written",
    CurrentLinkCreated = "current-link-created",
    PromotionSwapped = "promotion-swapped",
    PromotionReloaded = "promotion-reloaded",
    SmokeScan = "smoke-scan",
    RollbackBegun = "rollback-begun",
    RollbackSwapped = "rollback-swapped",
    RollbackReloaded = "rollback-reloaded",
    ManagedCanaryKept = "managed-canary-kept",
    ManagedSocketRenamed = "managed-socket-renamed",
    ManagedOldDrained = "managed-old-drained",
    ManagedOldStopped = "managed-old-stopped",
    ManagedRollbackRenamed = "managed-rollback-renamed",
}

/// Dies (or stops) here, if the test asked for it.
#[cfg(debug_assertions)]
pub(crate) fn hit(point: Point) {
    use rustix::process::{Signal, getpid, kill_process};
    let Ok(all) = std::env::var("CLAMGATE_FAILPOINT") else { return };
    let name = point.name();
    // Several, comma-separated: stop at one step, die at a later one.
    for v in all.split(',') {
        match v.split_once(':') {
            None if v == name => {
                tracing::warn!("failpoint {name}: killing myself");
                let _ = kill_process(getpid(), Signal::KILL);
            }
            Some((at, "stop")) if at == name => {
                tracing::warn!("failpoint {name}: stopping myself until SIGCONT");
                let _ = kill_process(getpid(), Signal::STOP);
            }
            _ => {}
        }
    }
}

/// Release builds have no crash points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub(crate) fn hit(_: Point) {}
