//! The memory guard: a canary starts only when there is room for its
//! engine, so that on a small host a big update waits instead of letting
//! the OOM killer pick production clamd. Before each canary the gate asks a
//! [`Room`]; the daemon's ([`Guard`]) estimates the engine from the last
//! canary (`decide::estimate`), reads the machine (`host`), and defers when
//! `decide::decide` finds too little. `clamgate check` runs unguarded.

pub(crate) mod decide;
pub(crate) mod host;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub(crate) use decide::{Deferral, Sample};
use decide::{Need, Readings};
use host::Sensor;

use crate::settings::Fields;

/// What the gate asks before and tells after each canary.
pub(crate) trait Room: Sync {
    /// `Err` defers the candidate: no canary is started.
    fn before_canary(&self, signatures: u64) -> Result<(), Deferral>;
    /// A canary finished loading and scanning; the next estimate scales from it.
    fn after_canary(&self, sample: Sample);
}

/// Whether production holds a second engine while it reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConcurrentReload {
    /// As `memory_guard.production_conf` says (clamd's default, yes, when
    /// the file or its line is missing).
    Auto,
    Yes,
    No,
}

impl std::fmt::Display for ConcurrentReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ConcurrentReload::Auto => "auto",
            ConcurrentReload::Yes => "yes",
            ConcurrentReload::No => "no",
        })
    }
}

impl std::str::FromStr for ConcurrentReload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ConcurrentReload::Auto),
            "yes" => Ok(ConcurrentReload::Yes),
            "no" => Ok(ConcurrentReload::No),
            other => Err(format!("{other:?} is not auto, yes or no")),
        }
    }
}

/// `[memory_guard]` in clamgate.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuardConfig {
    pub(crate) enabled: bool,
    /// Kept free beside the engines, for clamgate, the milter and the rest.
    pub(crate) reserve: u64,
    pub(crate) concurrent_reload: ConcurrentReload,
    /// Production clamd's config, read for `ConcurrentDatabaseReload`.
    pub(crate) production_conf: PathBuf,
}

impl GuardConfig {
    pub(crate) fn parse(s: &mut Fields) -> GuardConfig {
        GuardConfig {
            enabled: s.bool("enabled", true),
            reserve: s.size("reserve", "64MiB"),
            concurrent_reload: s.choice("concurrent_reload", ConcurrentReload::Auto),
            production_conf: s.path("production_conf", "/etc/clamgate/clamd.conf"),
        }
    }
}

/// The daemon's guard: the config, the machine's readings, and the last
/// canary's size (from the journal at start, then from each canary).
pub(crate) struct Guard {
    config: GuardConfig,
    sensor: Box<dyn Sensor>,
    last: Mutex<Option<Sample>>,
}

/// One check's outcome with its figures, for metrics and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Looked {
    pub(crate) outcome: Result<(), Deferral>,
    /// Needed and free under the limit with the least slack (the one that
    /// deferred, if any); `None` when nothing could be read.
    pub(crate) tightest: Option<(u64, u64)>,
}

impl Guard {
    pub(crate) fn new(config: GuardConfig, sensor: Box<dyn Sensor>, last: Option<Sample>) -> Guard {
        Guard { config, sensor, last: Mutex::new(last) }
    }

    pub(crate) fn host(config: GuardConfig, last: Option<Sample>) -> Guard {
        Guard::new(config, Box::new(host::Host::default()), last)
    }

    /// The check before a canary on `signatures`.
    pub(crate) fn look(&self, signatures: u64) -> Looked {
        if !self.config.enabled {
            return Looked { outcome: Ok(()), tightest: None };
        }
        let canary = decide::estimate(signatures, *self.last.lock().expect("not poisoned"));
        let second_engine = if self.second_engine() { canary } else { 0 };
        let need = Need { signatures, canary, second_engine, reserve: self.config.reserve };
        let readings = self.sensor.read();
        let outcome = decide::decide(&need, &readings);
        let tightest = match &outcome {
            Err(d) => Some((d.needed, d.available)),
            Ok(()) => tightest(&need, &readings),
        };
        Looked { outcome, tightest }
    }

    pub(crate) fn observed(&self, sample: Sample) {
        *self.last.lock().expect("not poisoned") = Some(sample);
    }

    fn second_engine(&self) -> bool {
        match self.config.concurrent_reload {
            ConcurrentReload::Yes => true,
            ConcurrentReload::No => false,
            ConcurrentReload::Auto => concurrent_reload_in(&self.config.production_conf),
        }
    }
}

/// (needed, free) under the limit with the least slack.
fn tightest(need: &Need, r: &Readings) -> Option<(u64, u64)> {
    let host = r.mem_available.map(|a| (need.canary + need.second_engine + need.reserve, a));
    let cg = r.cgroup.as_ref().map(|c| (need.canary + need.reserve, c.free()));
    [host, cg].into_iter().flatten().min_by_key(|&(n, a)| a.saturating_sub(n))
}

/// `ConcurrentDatabaseReload` in a clamd.conf: clamd's default (yes) when
/// the file or the line is missing, the last line winning as in clamd.
fn concurrent_reload_in(conf: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(conf) else { return true };
    concurrent_reload_of(&text)
}

fn concurrent_reload_of(text: &str) -> bool {
    let mut on = true;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        // clamd matches option names regardless of case.
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("ConcurrentDatabaseReload")) {
            on = !matches!(words.next().map(str::to_ascii_lowercase).as_deref(), Some("no" | "false" | "0"));
        }
    }
    on
}

#[cfg(test)]
mod tests {
    use super::*;
    use decide::{CgroupRoom, Limit};

    struct Fixed(Readings);

    impl Sensor for Fixed {
        fn read(&self) -> Readings {
            self.0.clone()
        }
    }

    fn config(concurrent_reload: ConcurrentReload) -> GuardConfig {
        GuardConfig { enabled: true, reserve: 0, concurrent_reload, production_conf: "/nonexistent/clamd.conf".into() }
    }

    #[test]
    fn clamd_conf_concurrent_reload() {
        for (text, want) in [
            ("", true),
            ("ConcurrentDatabaseReload no\n", false),
            ("# ConcurrentDatabaseReload no\nLocalSocket /x\n", true),
            ("ConcurrentDatabaseReload false\n", false),
            ("ConcurrentDatabaseReload no\nConcurrentDatabaseReload yes\n", true),
            ("concurrentdatabasereload no\n", false),
        ] {
            assert_eq!(concurrent_reload_of(text), want, "{text:?}");
        }
        assert!(concurrent_reload_in(Path::new("/nonexistent/clamd.conf")), "clamd's default");
    }

    /// With concurrent reload the host must hold two engines; the canary's
    /// size comes from the last canary once one was seen.
    #[test]
    fn a_guard_defers_then_admits_as_readings_change() {
        let mib = 1u64 << 20;
        let host = |avail| Box::new(Fixed(Readings { mem_available: Some(avail), cgroup: None }));
        let last = Some(Sample { signatures: 1_000_000, peak_bytes: 116 * mib });
        // 1M signatures: 116 MiB each engine, two of them.
        let g = Guard::new(config(ConcurrentReload::Yes), host(200 * mib), last);
        let d = g.look(1_000_000).outcome.unwrap_err();
        assert_eq!((d.limit, d.needed, d.available), (Limit::Host, 232 * mib, 200 * mib));
        let g = Guard::new(config(ConcurrentReload::No), host(200 * mib), last);
        assert_eq!(g.look(1_000_000), Looked { outcome: Ok(()), tightest: Some((116 * mib, 200 * mib)) });
        let cg = Readings { mem_available: None, cgroup: Some(CgroupRoom { dir: "/cg".into(), limit: 100 * mib, used: 0 }) };
        let g = Guard::new(config(ConcurrentReload::No), Box::new(Fixed(cg)), last);
        assert!(g.look(1_000_000).outcome.is_err());
        g.observed(Sample { signatures: 1_000_000, peak_bytes: 66 * mib });
        assert!(g.look(1_000_000).outcome.is_ok(), "a smaller last canary makes a smaller estimate");
        let off = Guard::new(GuardConfig { enabled: false, ..config(ConcurrentReload::Yes) }, host(0), None);
        assert!(off.look(1_000_000).outcome.is_ok(), "disabled");
    }
}
