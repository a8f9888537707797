//! Fetching and handing off: once `mod.rs` has polled and verified the
//! ring's pointer, this makes the release it names live here, by fetching
//! it (signed manifest, each file checked, temp name then rename) and
//! handing it to the host's gate, or straight to the [`Activator`] for a
//! release it ran before or one the gate vetted. Separate from the polling
//! loop, which only decides *what* to follow.

use super::super::fetch::FetchError;
use super::super::tree::{self, MANIFEST, Published, RingPointer};
use super::Refusal;
use super::{Follower, LOCK_WAIT, SMALL, SourceError, State, io, refused};
use crate::candidate::{Manifest, NameClass, classify_name};
use crate::journal::Event;
use crate::promote::{Activation, Activator, Outcome};
use std::path::Path;

impl Follower {
    /// Makes the ring's release live here by whichever path fits.
    pub(super) async fn follow(&mut self, ptr: &RingPointer) -> Result<(), SourceError> {
        let id = ptr.release.as_str();
        if self.store.current()?.as_deref() == Some(id) {
            self.state = State::Live;
            return self.sync_live(id).await;
        }
        self.read_verdicts()?;
        if self.store.quarantined(id).is_some() || self.turned_down.contains(id) {
            self.state = State::Rejected;
            return Ok(());
        }
        if self.store.release_dir(id).join(MANIFEST).exists() {
            // Ran it before: the ring went back (or forward) to it; no canary needed.
            return self.activate(id).await;
        }
        if self.state == State::Checking && self.saved.release.as_deref() == Some(id) && self.incoming_holds(id) {
            return Ok(());
        }
        self.state = State::Fetching;
        let published = self.fetch(ptr).await?;
        self.read_verdicts()?;
        if skips_canary(self.cfg.trust_gate_verdict, &published, self.ran_before.contains(id)) {
            let lock = self.lock().await?;
            self.store.add_release(&lock, &self.dir.join("download"), &published.release)?;
            drop(lock);
            return self.activate(id).await;
        }
        self.read_verdicts()?;
        super::super::handoff::fill_blocking(&self.dir.join("download"), &published.release.files, &self.incoming, &self.dir).await?;
        self.state = State::Checking;
        Ok(())
    }

    /// Manifest (signed, its digest the pointer's), then each file into
    /// `download/` under a temporary name, checked, renamed.
    async fn fetch(&self, ptr: &RingPointer) -> Result<Published, SourceError> {
        let base = format!("{}/releases/{}", self.cfg.base(), ptr.release);
        let file = format!("releases/{}/{MANIFEST}", ptr.release);
        let got = self.client.get(&format!("{base}/{MANIFEST}"), None, SMALL * 16).await?;
        let digest = tree::sha256_hex(&got.body);
        let published: Published = self.verified(&format!("{base}/{MANIFEST}"), &file, &got.body).await?;
        if digest != ptr.manifest_sha256 {
            return Err(refused(&file, Refusal::ManifestMismatch, format!("sha256 {digest}, the pointer signed {}", ptr.manifest_sha256)));
        }
        let m = &published.release;
        if m.id != ptr.release || Manifest::new(m.files.clone()).id != m.id {
            return Err(refused(&file, Refusal::ReleaseMismatch, format!("manifest of {} does not add up to release {}", m.id, ptr.release)));
        }
        let download = self.dir.join("download");
        for e in std::fs::read_dir(&download).map_err(io("cannot read", &download))?.flatten() {
            if !m.files.iter().any(|f| f.name == e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for f in &m.files {
            let name = format!("releases/{}/{}", ptr.release, f.name);
            if classify_name(f.name.as_ref()) != NameClass::Database {
                return Err(refused(&name, Refusal::BadName, format!("{:?} is not a plain database file name", f.name)));
            }
            let dest = download.join(&f.name);
            let (at, size, sha) = (dest.clone(), f.size, f.sha256.clone());
            if tokio::task::spawn_blocking(move || file_matches(&at, size, &sha)).await.expect("hashing does not panic") {
                continue;
            }
            let part = download.join(format!("{}.part", f.name));
            let fetched = self.client.download(&format!("{base}/{}", f.name), &part, self.max_file_size.min(f.size)).await;
            let (size, sha) = match fetched {
                Ok(v) => v,
                Err(FetchError::TooLarge { .. }) => (u64::MAX, String::new()),
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(e.into());
                }
            };
            if size != f.size || sha != f.sha256 {
                let _ = std::fs::remove_file(&part);
                let got = if size == u64::MAX { "more bytes".to_string() } else { format!("{size} bytes, sha256 {sha}") };
                return Err(refused(&name, Refusal::Sha256Mismatch, format!("got {got}; the manifest signed {} bytes, sha256 {}", f.size, f.sha256)));
            }
            std::fs::rename(&part, &dest).map_err(io("cannot rename", &dest))?;
        }
        Ok(published)
    }

    pub(super) async fn activate(&mut self, id: &str) -> Result<(), SourceError> {
        let lock = self.lock().await?;
        // Checked under the lock: `clamgate pin` takes it too.
        if let Some(pin) = self.store.pinned() {
            drop(lock);
            if self.state != State::Pinned {
                tracing::warn!(release = id, "the ring points at {id}, but the live release is pinned by {} since {}; not taking it", pin.by, pin.at);
                self.store.journal().append(Event::CandidateHeld { id: id.to_string(), pinned_by: pin.by })?;
            }
            self.state = State::Pinned;
            return Ok(());
        }
        let outcome =
            Activator { store: &self.store, lock: &lock, prod: &self.prod, managed: self.managed.as_ref() }.activate(Activation::Promotion, id, None).await?;
        drop(lock);
        match outcome {
            Outcome::Live(_) => {
                tracing::info!(release = id, "the ring's release is live");
                self.state = State::Live;
                self.sync_live(id).await
            }
            Outcome::RolledBack { reason, .. } | Outcome::Broken { reason } => {
                tracing::error!(release = id, "the ring's release failed in production: {reason}");
                self.state = State::Rejected;
                Ok(())
            }
        }
    }

    fn incoming_holds(&self, id: &str) -> bool {
        self.saved.release.as_deref() == Some(id) && std::fs::read_dir(&self.incoming).is_ok_and(|mut d| d.next().is_some())
    }

    /// The live release's files in the watched dir: the gate's next look is a no-op.
    pub(super) async fn sync_live(&self, id: &str) -> Result<(), SourceError> {
        let manifest = self.store.manifest(id)?;
        super::super::handoff::fill_blocking(&self.store.release_dir(id), &manifest.files, &self.incoming, &self.dir).await
    }

    async fn lock(&self) -> Result<crate::store::StateLock, SourceError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.lock(LOCK_WAIT)).await.expect("lock task does not panic")?)
    }
}

/// A fetched release goes straight to the activator (no canary) if the
/// gate vetted it and this host trusts that, or this host ran it before.
pub(crate) fn skips_canary(trust_gate_verdict: bool, published: &Published, ran_before: bool) -> bool {
    (trust_gate_verdict && published.vetted) || ran_before
}

/// Blocking: streams the file through sha256 (call it off the runtime).
fn file_matches(path: &Path, size: u64, sha256: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == size) && tree::file_sha256(path).is_ok_and(|(n, h)| n == size && h == sha256)
}
