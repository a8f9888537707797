//! The operator's and the isolator's marks on the state: the pin, the files
//! held back (`held.json`), and the cache of a release's corpus verdicts.

use std::fs;

use super::{Pin, StateLock, Store, StoreError, io, sync_dir, write_synced};
use crate::candidate::HeldFile;
use crate::corpus::Verdicts;

impl Store {
    pub(crate) fn pinned(&self) -> Option<Pin> {
        serde_json::from_str(&fs::read_to_string(self.root.join("pinned")).ok()?).ok()
    }

    pub(crate) fn pin(&self, _lock: &StateLock, pin: &Pin) -> Result<(), StoreError> {
        let path = self.root.join("pinned");
        let tmp = self.root.join("pinned.new");
        write_synced(&tmp, &serde_json::to_vec(pin).expect("serializes"))?;
        fs::rename(&tmp, &path).map_err(io("cannot write", &path))?;
        sync_dir(&self.root)
    }

    pub(crate) fn unpin(&self, _lock: &StateLock) -> Result<bool, StoreError> {
        let path = self.root.join("pinned");
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.root).map(|_| true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("cannot remove", &path)(e)),
        }
    }

    /// The files held back by per-file isolation (`held.json`): each is
    /// held again, unchecked, while its content stays the same. Unreadable
    /// reads as none: that only costs a check.
    pub(crate) fn held(&self) -> Vec<HeldFile> {
        fs::read_to_string(self.root.join("held.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }

    /// Replaces the held list with `held`, under the state lock, so the
    /// daemon and `clamgate recheck FILE` never overwrite each other. An
    /// entry of `read_before` (the list as the caller read it before it
    /// started) that is gone now was cleared in between by a recheck: that
    /// stands, and it is left out. Returns what was written. Written before
    /// the reduced set is checked, so a restart does not attribute again.
    pub(crate) fn record_held(&self, _lock: &StateLock, held: &[HeldFile], read_before: &[HeldFile]) -> Result<Vec<HeldFile>, StoreError> {
        let now = self.held();
        let same = |a: &HeldFile, b: &HeldFile| a.name == b.name && a.sha256 == b.sha256;
        let cleared = |h: &HeldFile| read_before.iter().any(|b| same(b, h)) && !now.iter().any(|n| same(n, h));
        let keep: Vec<HeldFile> = held.iter().filter(|h| !cleared(h)).cloned().collect();
        let path = self.root.join("held.json");
        let tmp = path.with_extension("json.tmp");
        write_synced(&tmp, &serde_json::to_vec_pretty(&keep).expect("serializes"))?;
        fs::rename(&tmp, &path).map_err(io("cannot write", &path))?;
        sync_dir(&self.root)?;
        Ok(keep)
    }

    /// Cached verdicts of a release on a corpus (by digest): a baseline is
    /// scanned once, not once per candidate.
    pub(crate) fn cached_verdicts(&self, id: &str, corpus_digest: &str) -> Option<Verdicts> {
        let text = fs::read_to_string(self.root.join("cache").join(format!("{id}-{corpus_digest}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub(crate) fn cache_verdicts(&self, id: &str, corpus_digest: &str, v: &Verdicts) -> Result<(), StoreError> {
        let path = self.root.join("cache").join(format!("{id}-{corpus_digest}.json"));
        let tmp = path.with_extension("tmp");
        write_synced(&tmp, &serde_json::to_vec(v).expect("serializes"))?;
        fs::rename(&tmp, &path).map_err(io("cannot write", &path))
    }
}
