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

/// Picks the configured smoke samples out of the corpus.
pub(crate) fn smoke_samples(corpus: &Corpus, names: &[String]) -> Result<Vec<SmokeSample>, MissingSample> {
    let find = |n: &String| {
        let s = corpus.samples.iter().find(|s| &s.name == n).ok_or_else(|| MissingSample { sample: n.clone(), corpus: corpus.dir.clone() })?;
        Ok(SmokeSample { name: s.name.clone(), path: s.path.clone(), expect: s.expect })
    };
    names.iter().map(find).collect()
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
            Some(want) => Some(self.wait_for_version(want).await?),
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

    /// Polls VERSION until it shows `want`, within `reload_timeout`. clamd
    /// drops a RELOAD that arrives while it is reloading (a crashed daemon's,
    /// or the promotion's just before a rollback): ask again now and then.
    async fn wait_for_version(&self, want: u64) -> Result<u64, VerifyError> {
        let deadline = Instant::now() + self.reload_timeout;
        let mut asked = Instant::now();
        loop {
            let seen = self.client.version().await.map(|v| v.database);
            match seen {
                Ok(Some(v)) if v == want => return Ok(want),
                Err(e) if e.is_unreachable() => return Err(VerifyError::WentAway(e)),
                _ => {}
            }
            if asked.elapsed() >= RELOAD_AGAIN {
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
