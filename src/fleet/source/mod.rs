//! A fleet host following its ring: poll the ring's pointer (jittered,
//! conditional), verify it (signature, ring, a generation that never goes
//! back), fetch the release it names (signed manifest, files checked
//! against it, temp names then rename), and hand it to the host's own
//! promotion path: its gate, through the watched incoming dir, unless
//! trusted; straight to the [`Activator`](crate::promote::Activator) for a release it already has (a
//! fleet rollback) or one the gate vetted under `trust_gate_verdict`. The
//! gate unreachable changes nothing live; `/readyz` warns after `warn_after`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::config::SourceConfig;
use super::fetch::{Client, FetchError};
use super::sign::{Bad, Verifier};
use super::tree::{self, MANIFEST, RingPointer, SIG};
use crate::health::Health;
use crate::journal::Event;
use crate::production::Production;
use crate::store::Store;

mod follow;

pub(crate) use super::refusal::{Refusal, State};
#[cfg(test)]
pub(crate) use follow::skips_canary;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("{}: {} ({message})", file, reason.code())]
    Refused { file: String, reason: Refusal, message: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Promote(#[from] crate::promote::PromoteError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

fn refused(file: &str, reason: Refusal, message: impl Into<String>) -> SourceError {
    SourceError::Refused { file: file.into(), reason, message: message.into() }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SourceError {
    let path = path.to_path_buf();
    move |source| SourceError::Io { what, path, source }
}

/// Persisted in `source/state.json`: the highest generation accepted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    generation: u64,
    release: Option<String>,
}

const SMALL: u64 = 1 << 20;
const LOCK_WAIT: Duration = Duration::from_secs(60);

pub(crate) struct Follower {
    cfg: SourceConfig,
    verifier: Verifier,
    client: Client,
    store: Store,
    prod: Production,
    /// Managed mode: releases it activates directly are handed over too.
    managed: Option<crate::managed::Managed>,
    health: Arc<Health>,
    /// Where fetched files wait, and the dir the daemon's gate watches.
    dir: PathBuf,
    incoming: PathBuf,
    max_file_size: u64,
    saved: Saved,
    state: State,
    /// The pointer's ETag once everything it asked for is done.
    etag: Option<String>,
    refusal: Option<Refusal>,
    last_contact: Option<SystemTime>,
    started: SystemTime,
    error: Option<String>,
    /// Where the journal was when a release was handed to the gate: its
    /// verdict is read from there.
    journal_offset: u64,
    /// Releases this host's gate turned down (quarantined, or, under
    /// per-file isolation, promoted only in part or not at all).
    turned_down: std::collections::BTreeSet<String>,
    /// Releases this host ran (`promotion.done`): one the ring points back
    /// at, pruned here meanwhile, is fetched and made live again without
    /// its gate, whose downgrade check would refuse a fleet rollback.
    ran_before: std::collections::BTreeSet<String>,
}

/// Where a host keeps what it fetched: `STATE/source/`.
pub(crate) fn source_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("source")
}

/// The directory a fleet host's gate watches instead of `incoming_dir`.
pub(crate) fn incoming_dir(state_dir: &Path) -> PathBuf {
    source_dir(state_dir).join("incoming")
}

impl Follower {
    pub(crate) fn new(
        cfg: SourceConfig,
        state_dir: &Path,
        store: Store,
        prod: Production,
        managed: Option<crate::managed::Managed>,
        health: Arc<Health>,
        max_file_size: u64,
    ) -> Result<Follower, String> {
        let verifier = Verifier::load(&cfg.public_key).map_err(|e| e.to_string())?;
        let token = match &cfg.token {
            Some(f) => Some(super::serve::read_token(f).map_err(|e| format!("cannot read [source] token {}: {e}", f.display()))?),
            None => None,
        };
        let dir = source_dir(state_dir);
        let incoming = incoming_dir(state_dir);
        for d in [&dir, &incoming, &dir.join("download")] {
            std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let saved = load_saved(&dir.join("state.json"))?;
        let timeout = cfg.poll_interval.clamp(Duration::from_secs(5), Duration::from_secs(60));
        Ok(Follower {
            cfg,
            verifier,
            client: Client::new(token, timeout),
            store,
            prod,
            managed,
            health,
            dir,
            incoming,
            max_file_size,
            saved,
            state: State::Starting,
            etag: None,
            refusal: None,
            last_contact: None,
            started: SystemTime::now(),
            error: None,
            journal_offset: 0,
            turned_down: Default::default(),
            ran_before: Default::default(),
        })
    }

    /// Polls until `stop` flips.
    pub(crate) async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        self.report();
        loop {
            // A shutdown does not wait for a download or an activation: an
            // activation cut short is finished by `Activator::resume` at the next start.
            tokio::select! {
                _ = stop.changed() => break,
                _ = self.poll() => {}
            }
            self.report();
            let wait = jitter(self.cfg.poll_interval);
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn poll(&mut self) {
        match self.poll_once().await {
            Ok(()) => self.error = None,
            Err(SourceError::Fetch(e)) => {
                if self.error.as_deref() != Some(&e.to_string()) {
                    tracing::warn!("gate: {e}; keeping the live release");
                }
                self.error = Some(e.to_string());
            }
            Err(e) => {
                let text = e.to_string();
                if let SourceError::Refused { file, reason, message } = &e {
                    if self.error.as_deref() != Some(text.as_str()) {
                        tracing::error!("refused {file}: {message} [{}]; keeping the live release", reason.code());
                        let _ = self.store.journal().append(Event::SourceRefused { file: file.clone(), reason: *reason, message: message.clone() });
                    }
                    self.state = State::Refused;
                    self.refusal = Some(*reason);
                } else if self.error.as_deref() != Some(text.as_str()) {
                    tracing::error!("following the ring: {text}; keeping the live release");
                }
                self.etag = None;
                self.error = Some(text);
            }
        }
    }

    async fn poll_once(&mut self) -> Result<(), SourceError> {
        let url = self.cfg.url.clone();
        let got = self.client.get(&url, self.etag.as_deref(), SMALL).await?;
        self.last_contact = Some(SystemTime::now());
        if got.status == hyper::StatusCode::NOT_MODIFIED {
            return self.settle();
        }
        let file = format!("rings/{}.json", self.cfg.ring());
        let (got, ptr) = match self.verified::<RingPointer>(&url, &file, &got.body).await {
            // The gate replaces signature and pointer one after the other: a
            // pair read across the swap does not match. Asked again once
            // before it counts as a refusal.
            Err(SourceError::Refused { reason: Refusal::BadSignature, .. }) => {
                let again = self.client.get(&url, None, SMALL).await?;
                let ptr = self.verified(&url, &file, &again.body).await?;
                (again, ptr)
            }
            other => (got, other?),
        };
        if !ptr.release.bytes().all(|b| b.is_ascii_hexdigit()) || ptr.release.is_empty() || ptr.release.len() > 64 {
            return Err(refused(&file, Refusal::Malformed, format!("release {:?} is not a release id", ptr.release)));
        }
        if ptr.ring != self.cfg.ring() {
            return Err(refused(&file, Refusal::RingMismatch, format!("the pointer is for ring {:?}", ptr.ring)));
        }
        if ptr.generation < self.saved.generation {
            return Err(refused(
                &file,
                Refusal::GenerationBackwards,
                format!("generation {} is older than {} already accepted", ptr.generation, self.saved.generation),
            ));
        }
        if ptr.generation > self.saved.generation {
            self.saved = Saved { generation: ptr.generation, release: Some(ptr.release.clone()) };
            let bytes = serde_json::to_vec(&self.saved).expect("state serializes");
            tree::replace(&self.dir.join("state.json"), &bytes).map_err(|e| SourceError::Io {
                what: "cannot save",
                path: self.dir.join("state.json"),
                source: std::io::Error::other(e.to_string()),
            })?;
            self.store.journal().append(Event::SourceFollowed { id: ptr.release.clone(), ring: ptr.ring.clone(), generation: ptr.generation })?;
            tracing::info!(release = %ptr.release, generation = ptr.generation, "ring {} points at {}", ptr.ring, ptr.release);
        }
        self.refusal = None;
        if ptr.halted && self.store.current()?.as_deref() != Some(ptr.release.as_str()) {
            // The gate halted its rollout on it, with nothing to go back to.
            // What was handed to this host's gate is taken back.
            if let Some(live) = self.store.current()? {
                self.sync_live(&live).await?;
            }
            self.state = State::Halted;
            self.etag = got.etag;
            return Ok(());
        }
        self.follow(&ptr).await?;
        // Pinned: asked in full again at the next poll, so an unpin is noticed.
        self.etag = got.etag.filter(|_| self.state != State::Pinned);
        Ok(())
    }

    /// A signed JSON document: fetched `.minisig`, verified, parsed.
    async fn verified<T: serde::de::DeserializeOwned>(&self, url: &str, file: &str, bytes: &[u8]) -> Result<T, SourceError> {
        let sig_url = format!("{url}{SIG}");
        let sig = match self.client.get(&sig_url, None, SMALL).await {
            Ok(s) => s,
            Err(FetchError::Status { status: hyper::StatusCode::NOT_FOUND, .. }) => return Err(refused(file, Refusal::Unsigned, "no signature beside it")),
            Err(e) => return Err(e.into()),
        };
        let sig = String::from_utf8_lossy(&sig.body).into_owned();
        self.verifier.verify(bytes, &sig).map_err(|b| match b {
            Bad::Malformed(m) => refused(file, Refusal::Malformed, format!("signature: {m}")),
            Bad::WrongKey(m) => refused(file, Refusal::WrongKey, m),
            Bad::Invalid(m) => refused(file, Refusal::BadSignature, m),
        })?;
        serde_json::from_slice(bytes).map_err(|e| refused(file, Refusal::Malformed, e.to_string()))
    }

    /// The gate's verdicts journaled since the last look: a candidate
    /// quarantined, known bad, or reduced (some of its files held back) is
    /// a release this host turned down.
    fn read_verdicts(&mut self) -> Result<(), SourceError> {
        let (entries, next) = self.store.journal().read_from(self.journal_offset)?;
        self.journal_offset = next;
        for e in entries {
            match e.event {
                Event::CandidateQuarantined { id } | Event::CandidateKnownBad { id, .. } => {
                    self.turned_down.insert(id);
                }
                Event::CandidateReduced { from, .. } => {
                    self.turned_down.insert(from);
                }
                Event::PromotionDone(d) => {
                    self.ran_before.insert(d.id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// After a 304: what became of a release handed to the gate.
    fn settle(&mut self) -> Result<(), SourceError> {
        let Some(id) = self.saved.release.clone() else { return Ok(()) };
        self.read_verdicts()?;
        if self.store.current()?.as_deref() == Some(id.as_str()) {
            self.state = State::Live;
        } else if self.store.quarantined(&id).is_some() || self.turned_down.contains(&id) {
            self.state = State::Rejected;
        } else if self.store.release_dir(&id).join(MANIFEST).exists() {
            // Passed here but not live (held by a pin): followed in full at
            // the next poll, which activates it or reports it pinned.
            self.etag = None;
        }
        Ok(())
    }

    /// What `/readyz` says about the ring (field `fleet`), and a warning
    /// once the gate has not answered for `warn_after`.
    fn report(&self) {
        let since = self.last_contact.unwrap_or(self.started);
        let quiet = SystemTime::now().duration_since(since).unwrap_or_default();
        let warn =
            (quiet > self.cfg.warn_after).then(|| format!("gate unreachable for {} s: {}", quiet.as_secs(), self.error.as_deref().unwrap_or("no answer")));
        let value = serde_json::json!({
            "ring": self.cfg.ring(),
            "generation": self.saved.generation,
            "release": self.saved.release,
            "state": self.state,
            "reason": self.refusal.map(Refusal::code),
            "error": self.error,
            "lastContact": self.last_contact.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        });
        self.health.set_fleet(value, warn);
    }
}

/// `source/state.json`; absent is a host that never followed. Anything else
/// unreadable stops the host: starting from generation 0 would accept a
/// replayed older pointer.
fn load_saved(path: &Path) -> Result<Saved, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("cannot read {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// `every` ± 10 %, so a fleet started together does not poll in step.
fn jitter(every: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos() ^ std::process::id().wrapping_mul(2_654_435_761);
    let frac = (nanos % 2001) as f64 / 10_000.0 - 0.1;
    every.mul_f64(1.0 + frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_state_file_stops_the_host_and_an_absent_one_starts_at_zero() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.json");
        assert_eq!(load_saved(&path).unwrap().generation, 0);
        std::fs::write(&path, br#"{"generation":7,"release":"ab"}"#).unwrap();
        assert_eq!(load_saved(&path).unwrap().generation, 7);
        std::fs::write(&path, b"{\"generation\":7,").unwrap();
        let e = load_saved(&path).unwrap_err();
        assert!(e.starts_with(&format!("cannot read {}: ", path.display())), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(load_saved(&path).unwrap_err().starts_with(&format!("cannot read {}: ", path.display())));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let d = jitter(Duration::from_secs(60));
        assert!(d >= Duration::from_secs(54) && d <= Duration::from_secs(66), "{d:?}");
    }
}
