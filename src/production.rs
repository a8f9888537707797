//! The production clamd as promotion and the health prober see it: RELOAD,
//! wait until VERSION shows the release, and scan the smoke samples through
//! it. A PING proves nothing: only a real scan says production scans.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::candidate::Manifest;
use crate::clamd::{ClamdError, Client, ScanVerdict};
use crate::corpus::{Corpus, Expect};
use crate::failpoint::{self, Point};

/// How long to wait for VERSION to change before sending RELOAD again.
const RELOAD_AGAIN: Duration = Duration::from_secs(2);

/// A corpus sample scanned through production to prove it really scans.
#[derive(Debug, Clone)]
pub(crate) struct SmokeSample {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) expect: Expect,
}

#[derive(Debug, thiserror::Error)]
#[error("smoke sample {sample:?} is not in the corpus {}", corpus.display())]
pub(crate) struct MissingSample {
    pub(crate) sample: String,
    pub(crate) corpus: PathBuf,
}

/// Picks the configured smoke samples out of the corpus; with none
/// configured, [`default_smoke_samples`].
pub(crate) fn smoke_samples(corpus: &Corpus, names: Option<&[String]>) -> Result<Vec<SmokeSample>, MissingSample> {
    let Some(names) = names else { return Ok(default_smoke_samples(corpus)) };
    let find = |n: &String| {
        let s = corpus.samples.iter().find(|s| &s.name == n).ok_or_else(|| MissingSample { sample: n.clone(), corpus: corpus.dir.clone() })?;
        Ok(SmokeSample { name: s.name.clone(), path: s.path.clone(), expect: s.expect })
    };
    names.iter().map(find).collect()
}

/// The smallest sample of each kind, preferring those directly under
/// `infected/` and `clean/`: the probe scans them every `probe_interval`, so
/// small is cheap, and a sample in a subdirectory (archives, mail) may need
/// a clamd option production has off. Ties go to the first name, so the
/// choice is the same on every start. A corpus always has both kinds
/// ([`Corpus::load`] refuses one without).
pub(crate) fn default_smoke_samples(corpus: &Corpus) -> Vec<SmokeSample> {
    [Expect::Infected, Expect::Clean]
        .into_iter()
        .filter_map(|expect| {
            let top = if expect == Expect::Infected { "infected/" } else { "clean/" };
            corpus
                .samples
                .iter()
                .filter(|s| s.expect == expect)
                .min_by_key(|s| {
                    let nested = s.name.strip_prefix(top).is_none_or(|rest| rest.contains('/'));
                    (nested, std::fs::metadata(&s.path).map_or(u64::MAX, |m| m.len()), s.name.clone())
                })
                .map(|s| SmokeSample { name: s.name.clone(), path: s.path.clone(), expect })
        })
        .collect()
}

/// Production does not scan a smoke sample as it should.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SmokeError {
    #[error("smoke scan of {sample}: {source}")]
    Scan {
        sample: String,
        #[source]
        source: ClamdError,
    },
    #[error("smoke scan of {sample} through production gave {got}, expected {}", if *.expect == Expect::Infected { "detected" } else { "clean" })]
    Wrong { sample: String, got: ScanVerdict, expect: Expect },
}

/// Production does not run the release it was asked to.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error("RELOAD failed: {0}")]
    Reload(#[source] ClamdError),
    /// It took the RELOAD and died (OOM while holding two engines, or the
    /// database killed it): not a promotion that stands.
    #[error("production clamd went away after RELOAD: {0}")]
    WentAway(#[source] ClamdError),
    #[error("production clamd did not show database version {want} within {waited:?} after RELOAD (it shows {seen})")]
    NotShown { want: u64, waited: Duration, seen: String },
    #[error(transparent)]
    Smoke(#[from] SmokeError),
    /// Managed mode: no clamd could be made to serve the release.
    #[error(transparent)]
    Managed(#[from] crate::managed::ManagedError),
}

/// The production clamd, as promotion sees it.
#[derive(Debug, Clone)]
pub(crate) struct Production {
    pub(crate) client: Client,
    pub(crate) reload_timeout: Duration,
    pub(crate) smoke: Vec<SmokeSample>,
}

/// What verification found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verified {
    /// Production runs the release and scans as expected.
    Scanning { database: Option<u64> },
    /// Production clamd is not running: it will load `current` when it starts.
    Down(String),
}

/// The database version VERSION will show once production runs `m`: the
/// `daily` container's, when the release has one.
pub(crate) fn expected_version(m: &Manifest) -> Option<u64> {
    m.files.iter().filter(|f| f.database() == "daily").filter_map(|f| f.header.as_ref().map(|h| h.version)).max()
}

impl Production {
    /// RELOAD, wait for the release to show, smoke-scan. `after_reload` is
    /// the crash point right after the RELOAD was sent.
    pub(crate) async fn verify(&self, m: &Manifest, after_reload: Point) -> Result<Verified, VerifyError> {
        match self.client.reload().await {
            Ok(()) => {}
            Err(e) if e.is_unreachable() => return Ok(Verified::Down(e.to_string())),
            Err(e) => return Err(VerifyError::Reload(e)),
        }
        failpoint::hit(after_reload);
        let database = match expected_version(m) {
            Some(want) => Some(self.wait_for_version(want, true).await?),
            None => {
                // Without a daily database VERSION cannot tell releases apart;
                // give the reload a moment before the smoke scan.
                tokio::time::sleep(Duration::from_millis(500).min(self.reload_timeout)).await;
                None
            }
        };
        failpoint::hit(Point::SmokeScan);
        self.smoke().await?;
        Ok(Verified::Scanning { database })
    }

    /// Managed mode: the production socket was just handed to a clamd that
    /// loaded `m` already. No RELOAD (it would load the engine again): the
    /// same VERSION and smoke checks, through the production path.
    pub(crate) async fn verify_served(&self, m: &Manifest) -> Result<Verified, VerifyError> {
        let database = match expected_version(m) {
            Some(want) => Some(self.wait_for_version(want, false).await?),
            None => None,
        };
        failpoint::hit(Point::SmokeScan);
        self.smoke().await?;
        Ok(Verified::Scanning { database })
    }

    /// Polls VERSION until it shows `want`, within `reload_timeout`. clamd
    /// drops a RELOAD that arrives while it is reloading (a crashed daemon's,
    /// or the promotion's just before a rollback): with `reload_again`, ask
    /// again now and then.
    async fn wait_for_version(&self, want: u64, reload_again: bool) -> Result<u64, VerifyError> {
        let deadline = Instant::now() + self.reload_timeout;
        let mut asked = Instant::now();
        loop {
            let seen = self.client.version().await.map(|v| v.database);
            match seen {
                Ok(Some(v)) if v == want => return Ok(want),
                Err(e) if e.is_unreachable() => return Err(VerifyError::WentAway(e)),
                _ => {}
            }
            if reload_again && asked.elapsed() >= RELOAD_AGAIN {
                asked = Instant::now();
                if let Err(e) = self.client.reload().await {
                    tracing::debug!("RELOAD again: {e}");
                }
            }
            if Instant::now() >= deadline {
                let seen = match seen {
                    Ok(v) => format!("{v:?}"),
                    Err(e) => e.to_string(),
                };
                return Err(VerifyError::NotShown { want, waited: self.reload_timeout, seen });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Scans the smoke samples through production; every one must match.
    pub(crate) async fn smoke(&self) -> Result<(), SmokeError> {
        for s in &self.smoke {
            let got = self.client.scan_file(&s.path).await.map_err(|source| SmokeError::Scan { sample: s.name.clone(), source })?;
            let ok = matches!((&got, s.expect), (ScanVerdict::Infected(_), Expect::Infected) | (ScanVerdict::Clean, Expect::Clean));
            if !ok {
                return Err(SmokeError::Wrong { sample: s.name.clone(), got, expect: s.expect });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_smoke_samples_are_the_smallest_at_the_top_of_each_half() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, len: usize| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, vec![b'x'; len]).unwrap();
        };
        write("infected/big.exe", 900);
        write("infected/small.exe", 500);
        write("infected/archives/tiny.zip", 10);
        write("clean/b.txt", 300);
        write("clean/a.txt", 300);
        write("clean/mail/tiny.eml", 5);
        let corpus = Corpus::load(dir.path()).unwrap();
        let names: Vec<String> = smoke_samples(&corpus, None).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["infected/small.exe", "clean/a.txt"]);
        let chosen = vec!["infected/archives/tiny.zip".to_string(), "clean/mail/tiny.eml".to_string()];
        let names: Vec<String> = smoke_samples(&corpus, Some(&chosen)).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, chosen, "a configured choice stands");
    }

    #[test]
    fn only_nested_samples_are_still_chosen() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["infected/mail/x.eml", "clean/mail/y.eml"] {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let corpus = Corpus::load(dir.path()).unwrap();
        assert_eq!(default_smoke_samples(&corpus).len(), 2);
    }
}
