//! The on-disk state (docs/ARCHITECTURE.md, "The state dir"): immutable releases, the
//! `current` symlink swapped by rename, quarantine, the journal, and the
//! lock. Every change is ordered so that a crash at any instant leaves
//! `current` on a complete release that passed its canary.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::candidate::Manifest;
use crate::journal::Journal;
use crate::reason::Reason;

mod marks;
mod quarantine;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state dir {0} is locked by another clamgate command or the daemon; retry, or stop it")]
    Locked(PathBuf),
    #[error("another clamgate daemon (pid {pid}) already runs on {dir}")]
    DaemonRunning { dir: PathBuf, pid: String },
    #[error("no release {0} in the state dir")]
    NoRelease(String),
    #[error("release id {prefix:?} is ambiguous: {matches}")]
    Ambiguous { prefix: String, matches: String },
    #[error("{file}: unreadable: {source}")]
    Corrupt {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Whoever can write here decides what production loads.
    #[error("state dir {0} is writable by others; refusing to use it (chmod o-w)")]
    Insecure(PathBuf),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

/// A quarantined candidate cannot become a release.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QuarantineError {
    #[error("{0}: the candidate's files were not kept (quarantine and incoming on different filesystems?); nothing to promote")]
    NoFiles(PathBuf),
    #[error("{file}: sha256 {got} is not the {want} the gate checked; refusing to promote it")]
    Changed { file: PathBuf, want: String, got: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

/// Proof that the state lock is held; required by every change.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Held for the daemon's whole life: one daemon per state dir.
#[derive(Debug)]
pub(crate) struct DaemonLock {
    _file: File,
}

/// The operator's hold on the live release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pin {
    pub(crate) id: Option<String>,
    pub(crate) by: String,
    pub(crate) at: String,
}

/// Why a candidate sits in quarantine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QuarantineRecord {
    pub(crate) id: String,
    pub(crate) digest: String,
    pub(crate) at: String,
    pub(crate) reasons: Vec<Reason>,
    pub(crate) source: Source,
}

/// Who marked a release or candidate bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    /// The gate rejected it.
    Gate,
    /// It failed verification in production and was rolled back.
    Production,
    /// An operator rolled it back.
    Operator,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Gate => "gate",
            Source::Production => "production",
            Source::Operator => "operator",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReleaseInfo {
    pub(crate) id: String,
    pub(crate) created: Option<String>,
    pub(crate) manifest: Manifest,
    pub(crate) live: bool,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the state dir.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        // Whoever can write here decides what production loads: refuse a
        // state dir others can write to, before touching anything in it.
        if let Ok(m) = fs::metadata(root) {
            use std::os::unix::fs::PermissionsExt;
            if m.permissions().mode() & 0o002 != 0 {
                return Err(StoreError::Insecure(root.to_path_buf()));
            }
        }
        for sub in ["", "releases", "quarantine", "work", "cache"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io("cannot create", &d))?;
        }
        Ok(Store { root: root.to_path_buf() })
    }

    /// The state dir itself (for files other modules own there: `rollout.json`, `source/`).
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn journal(&self) -> Journal {
        Journal::new(self.root.join("journal.jsonl"))
    }

    pub(crate) fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }

    pub(crate) fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    pub(crate) fn release_dir(&self, id: &str) -> PathBuf {
        self.root.join("releases").join(id)
    }

    /// Takes the state lock, waiting up to `wait` for another holder.
    pub fn lock(&self, wait: Duration) -> Result<StateLock, StoreError> {
        let path = self.root.join("lock");
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io("cannot open lock", &path))?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StateLock { _file: file }),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(self.root.clone())),
                Err(fs::TryLockError::Error(e)) => return Err(io("cannot lock", &path)(e)),
            }
        }
    }

    pub(crate) fn daemon_lock(&self) -> Result<DaemonLock, StoreError> {
        let path = self.root.join("daemon.pid");
        let mut file = File::options().create(true).truncate(false).read(true).write(true).open(&path).map_err(io("cannot open", &path))?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(io("cannot write", &path))?;
                writeln!(file, "{}", std::process::id()).map_err(io("cannot write", &path))?;
                Ok(DaemonLock { _file: file })
            }
            Err(fs::TryLockError::WouldBlock) => {
                Err(StoreError::DaemonRunning { dir: self.root.clone(), pid: fs::read_to_string(&path).unwrap_or_default().trim().to_string() })
            }
            Err(fs::TryLockError::Error(e)) => Err(io("cannot lock", &path)(e)),
        }
    }

    /// Removes what a crash can leave: half-written releases, a new
    /// `current` link not yet renamed, candidate work directories.
    pub(crate) fn recover(&self, _lock: &StateLock) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        let rel = self.root.join("releases");
        for e in fs::read_dir(&rel).map_err(io("cannot read", &rel))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                fs::remove_dir_all(e.path()).map_err(io("cannot remove", &e.path()))?;
                removed.push(e.path());
            }
        }
        let tmp_link = self.root.join("current.new");
        if fs::symlink_metadata(&tmp_link).is_ok() {
            fs::remove_file(&tmp_link).map_err(io("cannot remove", &tmp_link))?;
            removed.push(tmp_link);
        }
        removed.extend(self.clear_work()?);
        Ok(removed)
    }

    /// Empties `work/`: candidate snapshots and canary files are never
    /// worth keeping once their run is over or was interrupted.
    pub(crate) fn clear_work(&self) -> Result<Vec<PathBuf>, StoreError> {
        let work = self.work_dir();
        let mut removed = Vec::new();
        for e in fs::read_dir(&work).map_err(io("cannot read", &work))?.flatten() {
            let _ = fs::remove_dir_all(e.path());
            removed.push(e.path());
        }
        Ok(removed)
    }

    /// The live release id, from the `current` link.
    pub(crate) fn current(&self) -> Result<Option<String>, StoreError> {
        let link = self.current_link();
        match fs::read_link(&link) {
            Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("cannot read link", &link)(e)),
        }
    }

    pub(crate) fn manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        let path = self.release_dir(id).join("manifest.json");
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NoRelease(id.to_string()),
            _ => io("cannot read", &path)(e),
        })?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt { file: path, source: e })
    }

    /// Kept releases, newest first.
    pub(crate) fn releases(&self) -> Result<Vec<ReleaseInfo>, StoreError> {
        let live = self.current()?;
        let rel = self.root.join("releases");
        let mut out = Vec::new();
        for e in fs::read_dir(&rel).map_err(io("cannot read", &rel))?.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if id.starts_with('.') {
                continue;
            }
            let Ok(manifest) = self.manifest(&id) else { continue };
            let created = fs::metadata(e.path().join("manifest.json")).and_then(|m| m.modified()).ok();
            out.push((
                created,
                ReleaseInfo {
                    live: live.as_deref() == Some(id.as_str()),
                    created: created.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    id,
                    manifest,
                },
            ));
        }
        out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// Resolves a full id or a unique prefix of a kept release.
    pub(crate) fn resolve(&self, prefix: &str) -> Result<String, StoreError> {
        let ids: Vec<String> = self.releases()?.into_iter().map(|r| r.id).filter(|id| id.starts_with(prefix)).collect();
        match ids.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(StoreError::NoRelease(prefix.to_string())),
            many => Err(StoreError::Ambiguous { prefix: prefix.to_string(), matches: many.join(", ") }),
        }
    }

    /// Writes a release from a checked snapshot: files copied and fsynced
    /// into a temporary directory, then renamed into place. Idempotent.
    pub(crate) fn add_release(&self, _lock: &StateLock, snapshot: &Path, manifest: &Manifest) -> Result<PathBuf, StoreError> {
        let dest = self.release_dir(&manifest.id);
        if dest.join("manifest.json").exists() {
            return Ok(dest);
        }
        let tmp = self.root.join("releases").join(format!(".tmp-{}", manifest.id));
        let _ = fs::remove_dir_all(&tmp);
        let written = self.write_release(snapshot, manifest, &tmp, &dest);
        if written.is_err() {
            // Disk full or read-only: leave no half release behind.
            let _ = fs::remove_dir_all(&tmp);
        }
        written
    }

    fn write_release(&self, snapshot: &Path, manifest: &Manifest, tmp: &Path, dest: &Path) -> Result<PathBuf, StoreError> {
        fs::create_dir(tmp).map_err(io("cannot create", tmp))?;
        for f in &manifest.files {
            let (from, to) = (snapshot.join(&f.name), tmp.join(&f.name));
            fs::copy(&from, &to).map_err(io("cannot copy release file", &from))?;
            File::open(&to).and_then(|f| f.sync_all()).map_err(io("cannot fsync", &to))?;
        }
        crate::failpoint::hit(crate::failpoint::Point::ReleaseFilesWritten);
        let mpath = tmp.join("manifest.json");
        write_synced(&mpath, &serde_json::to_vec_pretty(manifest).expect("manifest serializes"))?;
        sync_dir(tmp)?;
        fs::rename(tmp, dest).map_err(io("cannot rename release into place", dest))?;
        sync_dir(&self.root.join("releases"))?;
        Ok(dest.to_path_buf())
    }

    /// Points `current` at a kept release: a new symlink, renamed over the
    /// old one, then the directory fsynced.
    pub(crate) fn set_current(&self, _lock: &StateLock, id: &str) -> Result<(), StoreError> {
        if !self.release_dir(id).join("manifest.json").exists() {
            return Err(StoreError::NoRelease(id.to_string()));
        }
        let tmp = self.root.join("current.new");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(id), &tmp).map_err(io("cannot create link", &tmp))?;
        crate::failpoint::hit(crate::failpoint::Point::CurrentLinkCreated);
        fs::rename(&tmp, self.current_link()).map_err(io("cannot swap", &self.current_link()))?;
        sync_dir(&self.root)
    }

    /// Deletes the oldest releases beyond `keep`, never the live one or the
    /// one before it (the rollback target).
    pub(crate) fn prune(&self, _lock: &StateLock, keep: usize, previous: Option<&str>) -> Result<Vec<String>, StoreError> {
        let releases = self.releases()?;
        let mut removed = Vec::new();
        let mut kept = 0;
        for r in releases {
            let protected = r.live || previous == Some(r.id.as_str());
            if protected || kept < keep {
                kept += 1;
                continue;
            }
            let dir = self.release_dir(&r.id);
            // Rename first so a crash never leaves a half-deleted release visible.
            let doomed = self.root.join("releases").join(format!(".tmp-{}", r.id));
            fs::rename(&dir, &doomed).map_err(io("cannot remove release", &dir))?;
            fs::remove_dir_all(&doomed).map_err(io("cannot remove release", &doomed))?;
            removed.push(r.id);
        }
        Ok(removed)
    }
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    crate::durable::file_sha256(path).map(|(_, sha256)| sha256)
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::durable::write_synced(path, bytes).map_err(io("cannot write", path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::durable::sync_dir(dir).map_err(io("cannot fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::DbFile;
    use crate::candidate::HeldFile;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_world_writable_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("writable by others"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o750)).unwrap();
        assert!(Store::open(dir.path()).is_ok());
    }

    fn manifest(tag: &str) -> Manifest {
        Manifest::new(vec![DbFile { name: "x.hdb".into(), size: 3, sha256: tag.into(), signatures: 1, header: None }])
    }

    #[test]
    fn record_held_keeps_a_hold_cleared_since_the_caller_read_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let lock = store.lock(Duration::ZERO).unwrap();
        let h = |name: &str| HeldFile { name: name.into(), sha256: "s".into(), reason: crate::reason::Code::CorpusFalsePositive, detail: "d".into() };
        store.record_held(&lock, &[h("a.hdb"), h("b.hdb")], &[]).unwrap();
        let read_before = store.held();
        // A recheck clears a.hdb while the daemon works on the list it read.
        store.record_held(&lock, &[h("b.hdb")], &[]).unwrap();
        let kept = store.record_held(&lock, &[h("a.hdb"), h("b.hdb"), h("c.ndb")], &read_before).unwrap();
        let names: Vec<String> = store.held().into_iter().map(|x| x.name).collect();
        assert_eq!(names, ["b.hdb", "c.ndb"], "the clear stands, a new hold is added");
        assert_eq!(kept.len(), 2);
        // Held again by a later run that read the list without it: kept.
        store.record_held(&lock, &[h("a.hdb"), h("b.hdb")], &store.held()).unwrap();
        assert_eq!(store.held().len(), 2);
    }

    #[test]
    fn release_swap_prune_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let lock = store.lock(Duration::ZERO).unwrap();
        assert!(matches!(store.lock(Duration::ZERO), Err(StoreError::Locked(_))));
        let snap = dir.path().join("snap");
        fs::create_dir(&snap).unwrap();
        fs::write(snap.join("x.hdb"), "abc").unwrap();
        let mut ids = Vec::new();
        for tag in ["a", "b", "c", "d"] {
            let m = manifest(tag);
            store.add_release(&lock, &snap, &m).unwrap();
            store.set_current(&lock, &m.id).unwrap();
            ids.push(m.id);
            std::thread::sleep(Duration::from_millis(20)); // mtime order
        }
        assert_eq!(store.current().unwrap().as_deref(), Some(ids[3].as_str()));
        let removed = store.prune(&lock, 2, Some(&ids[2])).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(store.release_dir(&ids[3]).exists() && store.release_dir(&ids[2]).exists());
        assert_eq!(store.resolve(&ids[3][..4]).unwrap(), ids[3]);

        fs::create_dir(dir.path().join("releases/.tmp-zzz")).unwrap();
        drop(lock);
        std::os::unix::fs::symlink("releases/nope", dir.path().join("current.new")).unwrap();
        let lock = store.lock(Duration::ZERO).unwrap();
        assert_eq!(store.recover(&lock).unwrap().len(), 2);
        assert_eq!(store.current().unwrap().as_deref(), Some(ids[3].as_str()));
    }
}
