//! Bisection of the suspects by canary runs, as a search over names: the
//! caller's [`Probe`] says whether a set of loaded suspects fails the gate
//! (the other suspects at their live version), so the search is tested here
//! without clamd.

use std::collections::BTreeSet;

/// Whether the candidate fails with only `loaded` of the suspects in it.
pub(crate) trait Probe {
    type Error;
    async fn fails(&mut self, loaded: &BTreeSet<String>) -> Result<bool, Self::Error>;
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A set that fails with every other suspect at its live version: one
    /// file, or the files that only fail together.
    Culprits(BTreeSet<String>),
    /// `max_runs` probes did not narrow it down.
    OutOfRuns,
}

/// Finds a failing subset of `suspects`, which fail when all are loaded.
/// The half that passes stays loaded while the other is split further, so a
/// pair split across halves is still found; a file found that way is then
/// probed without the halves it was found among, and if it passes alone its
/// partner is searched for in them. Returns the result and the probes used.
pub(crate) async fn bisect<P: Probe>(probe: &mut P, suspects: &BTreeSet<String>, max_runs: u32) -> Result<(Found, u32), P::Error> {
    let mut runs = 0;
    let mut found = BTreeSet::new();
    // Invariant: found ∪ kept ∪ s fails.
    let mut kept: Vec<String> = Vec::new();
    let mut s: Vec<String> = suspects.iter().cloned().collect();
    loop {
        match s.len() {
            0 => return Ok((Found::Culprits(found), runs)),
            1 => {
                found.insert(s.remove(0));
                if kept.is_empty() {
                    return Ok((Found::Culprits(found), runs));
                }
                if runs == max_runs {
                    return Ok((Found::OutOfRuns, runs));
                }
                runs += 1;
                if probe.fails(&found).await? {
                    return Ok((Found::Culprits(found), runs));
                }
                s = std::mem::take(&mut kept);
            }
            n => {
                if runs == max_runs {
                    return Ok((Found::OutOfRuns, runs));
                }
                let b = s.split_off(n / 2);
                let a = std::mem::replace(&mut s, b);
                let loaded: BTreeSet<String> = found.iter().chain(&kept).chain(&a).cloned().collect();
                runs += 1;
                if probe.fails(&loaded).await? {
                    s = a;
                } else {
                    kept.extend(a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when every name of any one of its groups is loaded.
    struct Fake {
        groups: Vec<Vec<String>>,
        probes: u32,
    }

    impl Probe for Fake {
        type Error = ();
        async fn fails(&mut self, loaded: &BTreeSet<String>) -> Result<bool, ()> {
            self.probes += 1;
            Ok(self.groups.iter().any(|g| g.iter().all(|n| loaded.contains(n))))
        }
    }

    fn names(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("f{i:02}")).collect()
    }

    fn run(groups: Vec<Vec<&'static str>>, n: usize, max: u32) -> (Found, u32) {
        run_owned(groups.into_iter().map(|g| g.into_iter().map(String::from).collect()).collect(), n, max)
    }

    fn run_owned(groups: Vec<Vec<String>>, n: usize, max: u32) -> (Found, u32) {
        let mut fake = Fake { groups, probes: 0 };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (found, runs) = rt.block_on(bisect(&mut fake, &names(n), max)).unwrap();
        assert_eq!(runs, fake.probes);
        (found, runs)
    }

    fn set(v: &[&str]) -> Found {
        Found::Culprits(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn table() {
        // (what, failing groups, suspects, max runs, found, at most runs)
        type Case = (&'static str, Vec<Vec<&'static str>>, usize, u32, Found, u32);
        let cases: Vec<Case> = vec![
            ("one suspect needs no run", vec![vec!["f00"]], 1, 8, set(&["f00"]), 0),
            ("first of twenty", vec![vec!["f00"]], 20, 8, set(&["f00"]), 5),
            ("last of twenty", vec![vec!["f19"]], 20, 8, set(&["f19"]), 6),
            ("middle of twenty", vec![vec!["f11"]], 20, 8, set(&["f11"]), 6),
            ("a pair across halves", vec![vec!["f02", "f07"]], 10, 16, set(&["f02", "f07"]), 12),
            ("a pair in one half", vec![vec!["f00", "f01"]], 10, 16, set(&["f00", "f01"]), 12),
            ("out of runs", vec![vec!["f19"]], 20, 3, Found::OutOfRuns, 3),
            ("no runs allowed", vec![vec!["f19"]], 20, 0, Found::OutOfRuns, 0),
        ];
        for (what, groups, n, max, want, at_most) in cases {
            let (found, runs) = run(groups, n, max);
            assert_eq!(found, want, "{what}");
            assert!(runs <= at_most, "{what}: {runs} runs");
        }
    }

    /// The arithmetic behind the default `max_bisect_runs` (policies/default.toml):
    /// one culprit among n suspects costs at most ⌈log2 n⌉ + 1 runs, a pair
    /// that only fails together at most 2·⌈log2 n⌉ + 2 (find one, probe it
    /// alone, find its partner, probe the two). The default must find any
    /// pair among 21 suspects (the daily and 20 feed files, benches/isolate.sh)
    /// and, at 16, any pair among up to 128.
    #[test]
    fn the_default_budget_finds_any_pair_among_128_suspects() {
        let default = crate::policy::Policy::default().max_bisect_runs;
        assert_eq!(default, 16);
        for n in [2usize, 3, 5, 8, 13, 21, 33, 64, 100, 128] {
            let bound = 2 * (n as f64).log2().ceil() as u32 + 2;
            assert!(bound <= default, "n = {n}");
            let names: Vec<String> = names(n).into_iter().collect();
            for i in 0..n {
                let (found, runs) = run_owned(vec![vec![names[i].clone()]], n, default);
                assert_eq!(found, Found::Culprits([names[i].clone()].into()), "n = {n}, one at {i}");
                assert!(runs <= (n as f64).log2().ceil() as u32 + 1, "n = {n}, one at {i}: {runs} runs");
                for j in i + 1..n {
                    let (found, runs) = run_owned(vec![vec![names[i].clone(), names[j].clone()]], n, default);
                    assert_eq!(found, Found::Culprits([names[i].clone(), names[j].clone()].into()), "n = {n}, pair {i} {j}");
                    assert!(runs <= bound, "n = {n}, pair {i} {j}: {runs} runs > {bound}");
                }
            }
        }
    }

    #[test]
    fn two_independent_culprits_give_one_at_a_time() {
        // The caller holds what is found and probes again: each call names one.
        let (found, _) = run(vec![vec!["f03"], vec!["f15"]], 20, 8);
        assert!(found == set(&["f03"]) || found == set(&["f15"]), "{found:?}");
    }
}
