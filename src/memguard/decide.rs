//! The memory guard's decision, pure: how big the canary's engine will be,
//! what else must fit beside it, and whether the readings leave that much.
//! No I/O here; `host` takes the readings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::human_size;

/// clamd 1.4.6 with one signature, resident after its load: measured here
/// (16 MiB; VmHWM 16,232 kB).
pub(crate) const ENGINE_BASE: u64 = 16 << 20;
/// The first-run rule's cost per signature: a 200,000-signature `.hdb` set
/// measured here took 233 bytes each above [`ENGINE_BASE`] (1M: ~170); body
/// and logical signatures cost more, so the rule rounds up.
pub(crate) const BYTES_PER_SIGNATURE: u64 = 256;
/// A last canary with fewer signatures than this is too small to scale
/// from: its size is mostly [`ENGINE_BASE`].
pub(crate) const MIN_SCALE_SIGNATURES: u64 = 10_000;

/// What a finished canary weighed: the next estimate scales from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) signatures: u64,
    pub(crate) peak_bytes: u64,
}

/// The engine size of a canary on `signatures`: the last canary's peak
/// (VmHWM) scaled by the signature count, its engine part only; without a
/// usable last canary, [`ENGINE_BASE`] + [`BYTES_PER_SIGNATURE`] each (and
/// never less than a small last canary's own peak).
pub(crate) fn estimate(signatures: u64, last: Option<Sample>) -> u64 {
    let rule = ENGINE_BASE.saturating_add(signatures.saturating_mul(BYTES_PER_SIGNATURE));
    match last {
        Some(s) if s.signatures >= MIN_SCALE_SIGNATURES => {
            let per_engine = s.peak_bytes.saturating_sub(ENGINE_BASE) as u128;
            let scaled = per_engine * u128::from(signatures) / u128::from(s.signatures);
            ENGINE_BASE.saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX))
        }
        Some(s) => rule.max(s.peak_bytes),
        None => rule,
    }
}

/// Which limit a reading comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Limit {
    /// The host's `MemAvailable` (/proc/meminfo).
    Host,
    /// clamgate's own cgroup (or an ancestor's) memory limit.
    Cgroup,
}

impl Limit {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Limit::Host => "host",
            Limit::Cgroup => "cgroup",
        }
    }
}

/// Room under the tightest memory limit of clamgate's cgroup and its
/// ancestors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupRoom {
    /// The cgroup directory whose limit is tightest.
    pub(crate) dir: PathBuf,
    pub(crate) limit: u64,
    /// In use, not counting file cache the kernel can drop (inactive_file).
    pub(crate) used: u64,
}

impl CgroupRoom {
    pub(crate) fn free(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

/// One look at the machine; a value that could not be read is `None` and
/// does not block (the guard must not stop updates on a host it cannot read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Readings {
    pub(crate) mem_available: Option<u64>,
    pub(crate) cgroup: Option<CgroupRoom>,
}

/// What must fit, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Need {
    pub(crate) signatures: u64,
    /// The canary's engine ([`estimate`]); it runs in clamgate's cgroup.
    pub(crate) canary: u64,
    /// Production's second engine during a concurrent RELOAD (0 without,
    /// and in managed mode, which never RELOADs): RELOAD-mode production
    /// runs outside clamgate's cgroup, so it counts against the host only. Summed with the canary's, so what is free now covers the
    /// whole update, not only its first half.
    pub(crate) second_engine: u64,
    /// Headroom kept free for everything else (`memory_guard.reserve`).
    pub(crate) reserve: u64,
}

impl Need {
    fn host(&self) -> u64 {
        self.canary.saturating_add(self.second_engine).saturating_add(self.reserve)
    }

    fn cgroup(&self) -> u64 {
        self.canary.saturating_add(self.reserve)
    }
}

/// Not enough room: the canary waits. Carries the numbers for the journal,
/// `/readyz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Deferral {
    pub(crate) limit: Limit,
    pub(crate) signatures: u64,
    /// Bytes the update needs under `limit`.
    pub(crate) needed: u64,
    /// Bytes free under `limit`.
    pub(crate) available: u64,
    pub(crate) canary_estimate: u64,
    pub(crate) second_engine: u64,
    pub(crate) reserve: u64,
    /// The cgroup directory, for a cgroup limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cgroup: Option<PathBuf>,
}

impl std::fmt::Display for Deferral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let under = match &self.cgroup {
            Some(dir) => format!("cgroup {} has", dir.display()),
            None => "the host has (MemAvailable)".to_string(),
        };
        write!(
            f,
            "canary deferred: {} signatures need {} (engine estimate {}, production's second engine {}, reserve {}), {under} {}",
            self.signatures,
            human_size(self.needed),
            human_size(self.canary_estimate),
            human_size(self.second_engine),
            human_size(self.reserve),
            human_size(self.available),
        )
    }
}

/// Room for `need` under every limit read, or the first one short of it
/// (the cgroup before the host: it is the one the kernel enforces on us).
pub(crate) fn decide(need: &Need, r: &Readings) -> Result<(), Deferral> {
    let deferral = |limit, needed, available, cgroup| Deferral {
        limit,
        signatures: need.signatures,
        needed,
        available,
        canary_estimate: need.canary,
        second_engine: need.second_engine,
        reserve: need.reserve,
        cgroup,
    };
    if let Some(cg) = &r.cgroup
        && cg.free() < need.cgroup()
    {
        return Err(deferral(Limit::Cgroup, need.cgroup(), cg.free(), Some(cg.dir.clone())));
    }
    if let Some(avail) = r.mem_available
        && avail < need.host()
    {
        return Err(deferral(Limit::Host, need.host(), avail, None));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn estimates() {
        // (signatures, last canary, expected)
        let table: &[(u64, Option<Sample>, u64)] = &[
            (0, None, ENGINE_BASE),
            (1_000_000, None, ENGINE_BASE + 256_000_000),
            // Scaled from a 1M canary of 178 MiB: 2M is twice its engine part.
            (2_000_000, Some(Sample { signatures: 1_000_000, peak_bytes: 178 * MIB }), ENGINE_BASE + 2 * (178 - 16) * MIB),
            (500_000, Some(Sample { signatures: 1_000_000, peak_bytes: 178 * MIB }), ENGINE_BASE + (178 - 16) * MIB / 2),
            // A peak under the base scales nothing.
            (50_000, Some(Sample { signatures: 20_000, peak_bytes: MIB }), ENGINE_BASE),
            // Too small to scale from: the rule, or the small canary's own peak if larger.
            (100, Some(Sample { signatures: 100, peak_bytes: 40 * MIB }), 40 * MIB),
            (1_000_000, Some(Sample { signatures: 100, peak_bytes: 40 * MIB }), ENGINE_BASE + 256_000_000),
        ];
        for &(sigs, last, want) in table {
            assert_eq!(estimate(sigs, last), want, "estimate({sigs}, {last:?})");
        }
    }

    fn need(canary: u64, second: u64, reserve: u64) -> Need {
        Need { signatures: 1000, canary, second_engine: second, reserve }
    }

    fn cg(limit: u64, used: u64) -> Option<CgroupRoom> {
        Some(CgroupRoom { dir: "/sys/fs/cgroup/clamgate".into(), limit, used })
    }

    /// The limit that defers, with needed and available bytes.
    type Deferred = Option<(Limit, u64, u64)>;

    #[test]
    fn decisions() {
        let table: &[(Need, Readings, Deferred)] = &[
            (need(100, 0, 10), Readings::default(), None),
            (need(100, 0, 10), Readings { mem_available: Some(110), cgroup: None }, None),
            (need(100, 0, 10), Readings { mem_available: Some(109), cgroup: None }, Some((Limit::Host, 110, 109))),
            // Production's second engine counts against the host…
            (need(100, 100, 10), Readings { mem_available: Some(150), cgroup: cg(1000, 0) }, Some((Limit::Host, 210, 150))),
            // …not against clamgate's cgroup, where production does not run.
            (need(100, 100, 10), Readings { mem_available: Some(1000), cgroup: cg(150, 0) }, None),
            (need(100, 0, 10), Readings { mem_available: Some(1000), cgroup: cg(200, 95) }, Some((Limit::Cgroup, 110, 105))),
            // Both short: the cgroup is named, the one the kernel enforces on us.
            (need(100, 0, 10), Readings { mem_available: Some(5), cgroup: cg(200, 195) }, Some((Limit::Cgroup, 110, 5))),
            // More in use than the limit (it was lowered): nothing free.
            (need(1, 0, 0), Readings { mem_available: None, cgroup: cg(100, 300) }, Some((Limit::Cgroup, 1, 0))),
        ];
        for (n, r, want) in table {
            let got = decide(n, r).err().map(|d| (d.limit, d.needed, d.available));
            assert_eq!(got, *want, "decide({n:?}, {r:?})");
        }
    }

    #[test]
    fn a_deferral_says_the_numbers() {
        let d = decide(&need(100 * MIB, 0, 64 * MIB), &Readings { mem_available: None, cgroup: cg(300 * MIB, 250 * MIB) }).unwrap_err();
        let text = d.to_string();
        for want in ["1000 signatures need 164.0 MiB", "engine estimate 100.0 MiB", "reserve 64.0 MiB", "cgroup /sys/fs/cgroup/clamgate has 50.0 MiB"] {
            assert!(text.contains(want), "{want:?} missing: {text}");
        }
    }
}
