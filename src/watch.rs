//! Watching `incoming_dir`: file events say "something changed", a
//! fingerprint of the directory says whether it really did, and a periodic
//! rescan catches events that were missed (NFS, overflowed queues).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// File events for one directory, coalesced into "something changed".
pub(crate) struct Watcher {
    _inner: RecommendedWatcher,
    pub(crate) changes: mpsc::Receiver<()>,
}

pub(crate) fn watch(dir: &Path) -> Result<Watcher, notify::Error> {
    // Capacity 1: a pending signal already says "look again"; more add nothing.
    let (tx, changes) = mpsc::channel(1);
    let mut inner = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| {
            !e.kind.is_access() || matches!(e.kind, notify::EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write)))
        }) {
            let _ = tx.try_send(());
        }
    })?;
    inner.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(Watcher { _inner: inner, changes })
}

/// Names, sizes, mtimes and inodes of the directory's entries: equal
/// fingerprints mean nothing worth a new candidate happened. `None` when
/// the directory cannot be read.
pub(crate) fn fingerprint(dir: &Path) -> Option<String> {
    let mut entries: Vec<_> = fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    let mut h = Sha256::new();
    for e in entries {
        let Ok(m) = fs::symlink_metadata(e.path()) else { continue };
        h.update(e.file_name().as_encoded_bytes());
        h.update(format!("\0{}\0{}\0{}\0{}\n", m.len(), m.mtime(), m.mtime_nsec(), m.ino()).as_bytes());
    }
    Some(hex::encode(&h.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_a_new_file_and_fingerprint_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = watch(dir.path()).unwrap();
        let before = fingerprint(dir.path()).unwrap();
        fs::write(dir.path().join("daily.cvd"), b"x").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), w.changes.recv()).await.unwrap().unwrap();
        assert_ne!(fingerprint(dir.path()).unwrap(), before);
        assert_eq!(fingerprint(dir.path()), fingerprint(dir.path()));
    }
}
