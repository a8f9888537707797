//! The daemon's runtime keeps its blocking pool bounded: a burst of
//! blocking work (file reads of a corpus scan, the state lock's wait, format
//! checks) queues behind 8 threads instead of starting one thread, and one
//! malloc arena, per task. Regression: a 30-minute soak went from 8 to 17
//! threads and grew 19% in RSS.

use std::time::Duration;

use clamgate::runtime::{Flavor, build};

/// This process's threads whose name tokio gives its own (workers and the
/// blocking pool): "tokio-rt-worker" (older tokio: "tokio-runtime-worker", cut to 15 bytes).
fn tokio_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("tokio-r")))
        .count()
}

#[test]
fn a_burst_of_blocking_work_runs_on_at_most_eight_threads() {
    let rt = build(Flavor::MultiThread).unwrap();
    let peak = rt.block_on(async {
        let tasks: Vec<_> = (0..64).map(|_| tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(50)))).collect();
        // Sampled while the burst is queued and running.
        let mut peak = 0;
        for _ in 0..20 {
            peak = peak.max(tokio_threads());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        peak.max(tokio_threads())
    });
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(peak > workers, "the burst used the blocking pool ({peak} tokio threads)");
    assert!(peak <= workers + 8, "{peak} tokio threads for {workers} workers + at most 8 blocking");
}
