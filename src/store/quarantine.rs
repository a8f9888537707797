//! Quarantine: the candidates the gate or production turned down, each with
//! its reasons, its canary's log and (when they could be kept) its files,
//! so an operator can inspect, recheck or force-promote it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{QuarantineError, QuarantineRecord, Source, StateLock, Store, StoreError, io, sha256_of, sync_dir, write_synced};
use crate::candidate::Manifest;
use crate::reason::Reason;

impl Store {
    pub(crate) fn quarantine_dir(&self, id: &str) -> PathBuf {
        self.root.join("quarantine").join(id)
    }

    pub(crate) fn quarantined(&self, id: &str) -> Option<QuarantineRecord> {
        let text = fs::read_to_string(self.quarantine_dir(id).join("reasons.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records a rejected candidate (or a release marked bad), with its
    /// reasons, manifest, the canary log and, when given, its files.
    pub(crate) fn quarantine(
        &self,
        _lock: &StateLock,
        manifest: &Manifest,
        reasons: &[Reason],
        source: Source,
        canary_log: Option<&str>,
        files: Option<&Path>,
    ) -> Result<QuarantineRecord, StoreError> {
        let dir = self.quarantine_dir(&manifest.id);
        fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        if let Some(files) = files {
            let fdir = dir.join("files");
            if !fdir.exists() && fs::rename(files, &fdir).is_err() {
                // Different filesystem: copying is not worth the risk of filling it.
                tracing::debug!("quarantine {}: files not kept", manifest.id);
            }
        }
        if let Some(log) = canary_log {
            write_synced(&dir.join("canary.log"), log.as_bytes())?;
        }
        write_synced(&dir.join("manifest.json"), &serde_json::to_vec_pretty(manifest).expect("serializes"))?;
        let rec = QuarantineRecord {
            id: manifest.id.clone(),
            digest: manifest.digest.clone(),
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            reasons: reasons.to_vec(),
            source,
        };
        write_synced(&dir.join("reasons.json"), &serde_json::to_vec_pretty(&rec).expect("serializes"))?;
        sync_dir(&dir)?;
        Ok(rec)
    }

    /// Ids in quarantine (candidates rejected, releases marked bad).
    pub(crate) fn quarantine_ids(&self) -> Result<Vec<String>, StoreError> {
        let q = self.root.join("quarantine");
        let ids = fs::read_dir(&q).map_err(io("cannot read", &q))?.flatten().map(|e| e.file_name().to_string_lossy().into_owned());
        Ok(ids.filter(|id| self.quarantined(id).is_some()).collect())
    }

    /// Resolves a full id or unique prefix among kept releases and
    /// quarantined candidates alike (`show`, `promote --force`, `recheck`).
    pub(crate) fn resolve_any(&self, prefix: &str) -> Result<String, StoreError> {
        let mut ids: Vec<String> = self.releases()?.into_iter().map(|r| r.id).chain(self.quarantine_ids()?).filter(|id| id.starts_with(prefix)).collect();
        ids.sort();
        ids.dedup();
        match ids.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(StoreError::NoRelease(prefix.to_string())),
            many => Err(StoreError::Ambiguous { prefix: prefix.to_string(), matches: many.join(", ") }),
        }
    }

    /// The manifest kept with a quarantine record.
    pub(crate) fn quarantined_manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        let path = self.quarantine_dir(id).join("manifest.json");
        let text = fs::read_to_string(&path).map_err(io("cannot read", &path))?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt { file: path, source: e })
    }

    /// The quarantined candidate's files, when they were kept.
    pub(crate) fn quarantined_files(&self, id: &str) -> Option<PathBuf> {
        let dir = self.quarantine_dir(id).join("files");
        dir.is_dir().then_some(dir)
    }

    /// The canary clamd's output kept with a quarantine record, if any.
    pub(crate) fn canary_log(&self, id: &str) -> Option<String> {
        fs::read_to_string(self.quarantine_dir(id).join("canary.log")).ok()
    }

    /// Makes a kept release of a quarantined candidate's files (an operator
    /// overrides the gate), after checking each against the manifest: what
    /// sat in quarantine must be exactly what the gate saw.
    pub(crate) fn release_from_quarantine(&self, lock: &StateLock, id: &str) -> Result<Manifest, QuarantineError> {
        let manifest = self.quarantined_manifest(id)?;
        let files = self.quarantined_files(id).ok_or_else(|| QuarantineError::NoFiles(self.quarantine_dir(id)))?;
        for f in &manifest.files {
            let path = files.join(&f.name);
            let sha256 = sha256_of(&path).map_err(io("cannot read quarantined file", &path))?;
            if sha256 != f.sha256 {
                return Err(QuarantineError::Changed { file: path, want: f.sha256.clone(), got: sha256 });
            }
        }
        self.add_release(lock, &files, &manifest)?;
        Ok(manifest)
    }

    /// Clears a release's bad mark (an operator promoted it anyway).
    pub(crate) fn unquarantine(&self, _lock: &StateLock, id: &str) -> Result<(), StoreError> {
        let dir = self.quarantine_dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&self.root.join("quarantine")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("cannot remove", &dir)(e)),
        }
    }
}
