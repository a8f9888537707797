//! A spell: a run of consecutive bad states (a failing health probe, mail
//! being tempfailed). It is logged when it starts, at most once a minute
//! while it lasts, and when it ends, never once per occurrence: at a 1 s
//! probe interval a line per probe is 86,400 lines a day.

use std::time::{Duration, Instant};

/// How often a spell that goes on is logged again.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The state of one kind of spell; the caller passes the time in, so the
/// decisions are tested without a clock.
#[derive(Debug, Default)]
pub(crate) struct Spell {
    run: Option<Run>,
}

#[derive(Debug)]
struct Run {
    since: Instant,
    reported: Instant,
    count: u64,
    since_report: u64,
}

/// What to log about a spell now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// The first bad state after good ones.
    Started,
    /// Still bad a minute after the last line: `count` in all so far,
    /// `recent` of them since the last line.
    Ongoing { lasted: Duration, count: u64, recent: u64 },
    /// Good again after `count` bad states over `lasted`.
    Ended { lasted: Duration, count: u64 },
}

impl Spell {
    /// One more bad state at `now`.
    pub(crate) fn bad(&mut self, now: Instant) -> Option<Mark> {
        let Some(run) = self.run.as_mut() else {
            self.run = Some(Run { since: now, reported: now, count: 1, since_report: 0 });
            return Some(Mark::Started);
        };
        run.count += 1;
        run.since_report += 1;
        if now.saturating_duration_since(run.reported) < REPORT_EVERY {
            return None;
        }
        let mark = Mark::Ongoing { lasted: now.saturating_duration_since(run.since), count: run.count, recent: run.since_report };
        run.reported = now;
        run.since_report = 0;
        Some(mark)
    }

    /// A good state at `now`: ends the spell, if there is one.
    pub(crate) fn good(&mut self, now: Instant) -> Option<Mark> {
        let run = self.run.take()?;
        Some(Mark::Ended { lasted: now.saturating_duration_since(run.since), count: run.count })
    }
}

/// The spells clamgate logs; the name is the `spell` field (`CLAMGATE_SPELL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    /// The health prober's probes fail.
    ProbeFailing,
    /// The milter tempfails mail because `/readyz` says unhealthy.
    MilterTempfail,
    /// Scan mode: messages that could not be scanned are tempfailed.
    ScanFailing,
}

impl Subject {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Subject::ProbeFailing => "probe_failing",
            Subject::MilterTempfail => "milter_tempfail",
            Subject::ScanFailing => "scan_failing",
        }
    }

    /// The line for `mark`; `detail` is why the latest state is bad.
    fn text(self, mark: Mark, detail: &str) -> String {
        match (self, mark) {
            (Subject::ProbeFailing, Mark::Started) => format!("health probe failing: {detail}"),
            (Subject::ProbeFailing, Mark::Ongoing { lasted, count, .. }) => {
                format!("health probe still failing after {}s, {count} probes: {detail}", lasted.as_secs())
            }
            (Subject::ProbeFailing, Mark::Ended { lasted, count }) => {
                format!("health probe passes again after {}s and {count} failed probes", lasted.as_secs())
            }
            (Subject::MilterTempfail, Mark::Started) => format!("scanning is not healthy ({detail}); tempfailing mail until it is"),
            (Subject::MilterTempfail, Mark::Ongoing { lasted, recent, .. }) => {
                format!("scanning still not healthy after {}s ({detail}); tempfailed {recent} times in the last {}s", lasted.as_secs(), REPORT_EVERY.as_secs())
            }
            (Subject::MilterTempfail, Mark::Ended { lasted, count }) => {
                format!("scanning is healthy again after {:.1}s; tempfailed {count} times meanwhile", lasted.as_secs_f64())
            }
            (Subject::ScanFailing, Mark::Started) => format!("tempfailing messages that could not be scanned: {detail}"),
            (Subject::ScanFailing, Mark::Ongoing { lasted, recent, .. }) => {
                format!("messages still cannot be scanned after {}s ({detail}); tempfailed {recent} in the last {}s", lasted.as_secs(), REPORT_EVERY.as_secs())
            }
            (Subject::ScanFailing, Mark::Ended { lasted, count }) => {
                format!("messages are scanned again after {:.1}s; tempfailed {count} that could not be scanned", lasted.as_secs_f64())
            }
        }
    }

    /// Logs `mark`: a spell's start and its reminders at WARN, its end at
    /// INFO; `release` is the live release, when the line is about it.
    pub(crate) fn log(self, mark: Mark, detail: &str, release: Option<&str>) {
        let (spell, text) = (self.as_str(), self.text(mark, detail));
        match mark {
            Mark::Started => tracing::warn!(spell, release, "{text}"),
            Mark::Ongoing { lasted, count, .. } => tracing::warn!(spell, release, seconds = lasted.as_secs(), count, "{text}"),
            Mark::Ended { lasted, count } => tracing::info!(spell, release, seconds = lasted.as_secs(), count, "{text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A bad state every second for `secs` seconds from `t0`; the marks.
    fn bad_for(spell: &mut Spell, t0: Instant, secs: u64) -> Vec<(u64, Mark)> {
        (0..secs).filter_map(|i| spell.bad(t0 + S * i as u32).map(|m| (i, m))).collect()
    }

    #[test]
    fn a_spell_is_logged_at_its_start_once_a_minute_and_at_its_end() {
        let (mut spell, t0) = (Spell::default(), Instant::now());
        // 150 bad probes a second apart: start, then at 60 s and 120 s.
        let marks = bad_for(&mut spell, t0, 150);
        assert_eq!(
            marks,
            [
                (0, Mark::Started),
                (60, Mark::Ongoing { lasted: S * 60, count: 61, recent: 60 }),
                (120, Mark::Ongoing { lasted: S * 120, count: 121, recent: 60 }),
            ]
        );
        assert_eq!(spell.good(t0 + S * 150), Some(Mark::Ended { lasted: S * 150, count: 150 }));
        // Good after good says nothing; the next bad state starts a new spell.
        assert_eq!(spell.good(t0 + S * 151), None);
        assert_eq!(spell.bad(t0 + S * 152), Some(Mark::Started));
        assert_eq!(spell.good(t0 + S * 152), Some(Mark::Ended { lasted: Duration::ZERO, count: 1 }));
    }

    #[test]
    fn a_reminder_waits_a_minute_after_the_last_line_not_the_start() {
        let (mut spell, t0) = (Spell::default(), Instant::now());
        assert_eq!(spell.bad(t0), Some(Mark::Started));
        // A quiet spell: the next bad state comes late, and is reported then.
        assert_eq!(spell.bad(t0 + S * 90), Some(Mark::Ongoing { lasted: S * 90, count: 2, recent: 1 }));
        assert_eq!(spell.bad(t0 + S * 149), None);
        assert_eq!(spell.bad(t0 + S * 150), Some(Mark::Ongoing { lasted: S * 150, count: 4, recent: 2 }));
    }

    #[test]
    fn a_clock_going_backwards_does_not_panic_or_report() {
        let (mut spell, t0) = (Spell::default(), Instant::now() + S * 10);
        assert_eq!(spell.bad(t0), Some(Mark::Started));
        assert_eq!(spell.bad(t0 - S * 5), None);
        assert_eq!(spell.good(t0 - S * 5), Some(Mark::Ended { lasted: Duration::ZERO, count: 2 }));
    }

    #[test]
    fn lines_say_how_long_and_how_many() {
        let ongoing = Mark::Ongoing { lasted: S * 120, count: 121, recent: 60 };
        let ended = Mark::Ended { lasted: S * 150, count: 150 };
        for (subject, mark, want) in [
            (Subject::ProbeFailing, Mark::Started, "health probe failing: clamd down"),
            (Subject::ProbeFailing, ongoing, "health probe still failing after 120s, 121 probes: clamd down"),
            (Subject::ProbeFailing, ended, "health probe passes again after 150s and 150 failed probes"),
            (Subject::MilterTempfail, Mark::Started, "scanning is not healthy (clamd down); tempfailing mail until it is"),
            (Subject::MilterTempfail, ongoing, "scanning still not healthy after 120s (clamd down); tempfailed 60 times in the last 60s"),
            (Subject::MilterTempfail, ended, "scanning is healthy again after 150.0s; tempfailed 150 times meanwhile"),
            (Subject::ScanFailing, ended, "messages are scanned again after 150.0s; tempfailed 150 that could not be scanned"),
        ] {
            assert_eq!(subject.text(mark, "clamd down"), want);
        }
    }
}
