//! The process's runtime and allocator settings, chosen once in `main`.
//! Why they are bounded: a soak grew the daemon from 8 to 17 threads and
//! its RSS by 19% in 30 minutes. tokio's blocking pool (up to 512 threads,
//! each gone after 10 s idle) served every `tokio::fs` call of the corpus
//! and probe scans; its threads came and went, and glibc gives threads
//! their own malloc arena (up to 8 per core), each keeping freed memory.

use std::time::Duration;

/// Blocking threads: file reads, the state lock's wait (up to 30 s), a
/// candidate's format checks; more than this queue instead of spawning.
const MAX_BLOCKING_THREADS: usize = 8;
/// An idle blocking thread stays this long, so the next probe reuses it
/// instead of starting a new one.
const KEEP_ALIVE: Duration = Duration::from_secs(300);
/// glibc malloc arenas: one per core here is plenty (the default is eight).
const ARENA_MAX: i32 = 2;

/// Which runtime a command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The milter: one thread, no cross-thread wakeups.
    CurrentThread,
    MultiThread,
}

/// Sets the allocator's arena limit; call before any thread starts.
pub fn tune_allocator() {
    // SAFETY: mallopt only sets a glibc tunable; called from main before
    // other threads exist.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// The runtime, with the blocking pool bounded and kept warm.
pub fn build(flavor: Flavor) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = match flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().max_blocking_threads(MAX_BLOCKING_THREADS).thread_keep_alive(KEEP_ALIVE).build()
}
