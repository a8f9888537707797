//! When the gate loop checks incoming: a change must settle before it
//! becomes a candidate, a run on our own failure is retried a rescan
//! interval later, and a change during a run cancels it unless the run is
//! already deciding (quarantining or promoting). Pure decisions over
//! fingerprints and instants; the loop in `daemon` only selects and
//! dispatches.

use std::time::Duration;

use tokio::time::Instant;

/// A fingerprint of incoming (see [`crate::watch::fingerprint`]); `None`
/// when the directory cannot be read.
pub(crate) type Fingerprint = Option<String>;

#[derive(Debug)]
pub(crate) struct Schedule {
    settle: Duration,
    retry_after: Duration,
    /// What incoming looks like now, and since when.
    seen: Fingerprint,
    last_change: Instant,
    /// What was last turned into a candidate: at start, nothing.
    processed: Fingerprint,
    /// Set after a run that failed on our side.
    retry_at: Option<Instant>,
    /// The fingerprint the running check started on.
    running: Option<Fingerprint>,
}

/// What a change during a run means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DuringRun {
    /// Nothing changed after all, or it is too late to cancel: the change
    /// is checked on the next run.
    GoOn,
    /// Stop the run; the new files settle and are checked from scratch.
    Cancel,
}

impl Schedule {
    pub(crate) fn new(settle: Duration, retry_after: Duration, seen: Fingerprint, now: Instant) -> Schedule {
        Schedule { settle, retry_after, seen, last_change: now, processed: None, retry_at: None, running: None }
    }

    /// A file event or a rescan looked at incoming.
    pub(crate) fn observe(&mut self, now_seen: Fingerprint, now: Instant) {
        if now_seen != self.seen {
            self.seen = now_seen;
            self.last_change = now;
        }
    }

    /// The periodic rescan: also where a failed run's retry comes due.
    pub(crate) fn rescan(&mut self, now_seen: Fingerprint, now: Instant) {
        self.observe(now_seen, now);
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            self.processed = None;
        }
    }

    /// When the next run should start: once incoming is readable, differs
    /// from what was processed, and has been quiet for `settle`.
    pub(crate) fn due(&self) -> Option<Instant> {
        (self.running.is_none() && self.seen.is_some() && self.seen != self.processed).then_some(self.last_change + self.settle)
    }

    /// Forgets what was processed: the same files are checked again once
    /// settled (an operator cleared their quarantine).
    pub(crate) fn check_again(&mut self) {
        self.processed = None;
    }

    pub(crate) fn start(&mut self) {
        self.running = Some(self.seen.clone());
    }

    /// Incoming changed while a run is under way; `deciding` says the run
    /// is past its check.
    pub(crate) fn changed_during_run(&mut self, now_seen: Fingerprint, now: Instant, deciding: bool) -> DuringRun {
        let Some(started_on) = &self.running else { return DuringRun::GoOn };
        if &now_seen == started_on {
            return DuringRun::GoOn;
        }
        self.observe(now_seen, now);
        if deciding {
            return DuringRun::GoOn;
        }
        self.running = None;
        DuringRun::Cancel
    }

    /// The run ended. After our own failure the same files are tried again
    /// one retry interval later, not in a tight loop.
    pub(crate) fn finished(&mut self, failed: bool, now: Instant) {
        if let Some(started_on) = self.running.take() {
            self.processed = started_on;
        }
        if failed {
            self.retry_at = Some(now + self.retry_after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(5);
    const RETRY: Duration = Duration::from_secs(60);

    fn fp(s: &str) -> Fingerprint {
        Some(s.to_string())
    }

    fn schedule() -> Schedule {
        Schedule::new(SETTLE, RETRY, fp("a"), Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_runs_once_it_settles() {
        let t0 = Instant::now();
        let mut s = schedule();
        assert_eq!(s.due(), Some(t0 + SETTLE), "what is there at start is checked");
        tokio::time::advance(Duration::from_secs(3)).await;
        s.observe(fp("b"), Instant::now());
        assert_eq!(s.due(), Some(t0 + Duration::from_secs(3) + SETTLE), "a new change restarts the settle timer");
        s.observe(fp("b"), Instant::now() + Duration::from_secs(1));
        assert_eq!(s.due(), Some(t0 + Duration::from_secs(3) + SETTLE), "the same fingerprint is no change");
        s.start();
        assert_eq!(s.due(), None, "never two runs at once");
        s.finished(false, Instant::now());
        assert_eq!(s.due(), None, "processed: nothing to do");
        s.rescan(fp("b"), Instant::now());
        assert_eq!(s.due(), None);
    }

    /// `clamgate recheck`: the same files, already processed, are due again
    /// at once (they settled long ago), and only once.
    #[tokio::test(start_paused = true)]
    async fn check_again_makes_the_same_files_due() {
        let mut s = schedule();
        s.start();
        s.finished(false, Instant::now());
        tokio::time::advance(SETTLE * 3).await;
        s.rescan(fp("a"), Instant::now());
        assert_eq!(s.due(), None);
        s.check_again();
        assert!(s.due().is_some_and(|t| t <= Instant::now()), "due now");
        s.start();
        s.finished(false, Instant::now());
        assert_eq!(s.due(), None, "once");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_incoming_is_not_a_candidate() {
        let mut s = Schedule::new(SETTLE, RETRY, None, Instant::now());
        assert_eq!(s.due(), None);
        s.observe(fp("a"), Instant::now());
        assert!(s.due().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn our_failure_retries_after_the_interval_not_before() {
        let mut s = schedule();
        s.start();
        s.finished(true, Instant::now());
        assert_eq!(s.due(), None);
        tokio::time::advance(RETRY - Duration::from_secs(1)).await;
        s.rescan(fp("a"), Instant::now());
        assert_eq!(s.due(), None, "too early");
        tokio::time::advance(Duration::from_secs(1)).await;
        s.rescan(fp("a"), Instant::now());
        assert!(s.due().is_some(), "the same files are tried again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_during_the_check_cancels_it() {
        let mut s = schedule();
        s.start();
        assert_eq!(s.changed_during_run(fp("a"), Instant::now(), false), DuringRun::GoOn, "an event without a change");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.changed_during_run(fp("b"), Instant::now(), false), DuringRun::Cancel);
        assert_eq!(s.due(), Some(Instant::now() + SETTLE), "the new files settle first");
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_while_deciding_waits_for_the_next_run() {
        let mut s = schedule();
        s.start();
        assert_eq!(s.changed_during_run(fp("b"), Instant::now(), true), DuringRun::GoOn);
        assert_eq!(s.due(), None, "still running");
        s.finished(false, Instant::now());
        assert!(s.due().is_some(), "the change made while deciding is checked next");
    }
}
