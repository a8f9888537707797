//! The published tree, the one thing gate and hosts share:
//!
//! ```text
//! releases/<id>/<file>                 a release's database files (immutable)
//! releases/<id>/manifest.json(.minisig) its signed manifest
//! rings/<name>.json(.minisig)          what the ring runs: release, manifest digest, generation
//! ```
//!
//! A release appears only by renaming a complete, fsynced directory, before
//! any ring points at it; a ring pointer is replaced by rename. Static files
//! only, so any web server can serve it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sign::{SignError, Signer};
use crate::candidate::Manifest;

pub(crate) const MANIFEST: &str = "manifest.json";
pub(crate) const SIG: &str = ".minisig";

/// `releases/<id>/manifest.json`: the gate's release manifest (names, sizes,
/// sha256, headers) and whether the gate vetted it (canary and corpus).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Published {
    pub(crate) release: Manifest,
    /// The gate promoted it after its whole gate passed: a host with
    /// `trust_gate_verdict` skips its own canary for it. False for a release
    /// an operator forced past the gate (`promote --force`, `release.forced`).
    pub(crate) vetted: bool,
    pub(crate) published: String,
}

/// `rings/<name>.json`. `generation` only grows: a host refuses a lower one,
/// so an old pointer replayed by a mirror cannot roll a host back; a
/// deliberate rollback is a new generation naming an older release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RingPointer {
    pub(crate) ring: String,
    pub(crate) release: String,
    /// sha256 of the release's `manifest.json` bytes.
    pub(crate) manifest_sha256: String,
    pub(crate) generation: u64,
    pub(crate) at: String,
    /// The rollout halted on `release` with nothing earlier to send the
    /// ring to (its first release): a host not running it does not take it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) halted: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TreeError {
    #[error("publish tree: {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("publish tree: {} is not valid: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Sign(#[from] SignError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TreeError {
    let path = path.to_path_buf();
    move |source| TreeError::Io { what, path, source }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A file's size and sha256, read in chunks (never whole in memory).
pub(crate) use crate::durable::file_sha256;

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The gate's view of its publish dir.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    root: PathBuf,
}

impl Tree {
    pub(crate) fn open(root: &Path) -> Result<Tree, TreeError> {
        for sub in ["releases", "rings"] {
            fs::create_dir_all(root.join(sub)).map_err(io("cannot create", &root.join(sub)))?;
        }
        Ok(Tree { root: root.to_path_buf() })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn release_dir(&self, id: &str) -> PathBuf {
        self.root.join("releases").join(id)
    }

    pub(crate) fn ring_file(&self, ring: &str) -> PathBuf {
        self.root.join("rings").join(format!("{ring}.json"))
    }

    pub(crate) fn is_published(&self, id: &str) -> bool {
        self.release_dir(id).join(MANIFEST).exists()
    }

    /// Copies a release of the state dir into the tree, signed, unless it is
    /// there already; returns its manifest's sha256.
    pub(crate) fn publish(&self, signer: &Signer, files: &Path, manifest: &Manifest, vetted: bool) -> Result<String, TreeError> {
        let dest = self.release_dir(&manifest.id);
        if !dest.join(MANIFEST).exists() {
            let tmp = self.root.join("releases").join(format!(".tmp-{}", manifest.id));
            let _ = fs::remove_dir_all(&tmp);
            let written = self.write_release(signer, files, manifest, vetted, &tmp, &dest);
            if written.is_err() {
                let _ = fs::remove_dir_all(&tmp);
            }
            written?;
        }
        self.manifest_sha256(&manifest.id)
    }

    fn write_release(&self, signer: &Signer, files: &Path, manifest: &Manifest, vetted: bool, tmp: &Path, dest: &Path) -> Result<(), TreeError> {
        fs::create_dir(tmp).map_err(io("cannot create", tmp))?;
        for f in &manifest.files {
            let (from, to) = (files.join(&f.name), tmp.join(&f.name));
            fs::copy(&from, &to).map_err(io("cannot copy", &from))?;
            File::open(&to).and_then(|f| f.sync_all()).map_err(io("cannot fsync", &to))?;
        }
        let published = Published { release: manifest.clone(), vetted, published: now_rfc3339() };
        let bytes = serde_json::to_vec_pretty(&published).expect("manifest serializes");
        let sig = signer.sign(&bytes, &format!("releases/{}/{MANIFEST}", manifest.id))?;
        write_synced(&tmp.join(format!("{MANIFEST}{SIG}")), sig.as_bytes())?;
        write_synced(&tmp.join(MANIFEST), &bytes)?;
        sync_dir(tmp)?;
        fs::rename(tmp, dest).map_err(io("cannot rename into place", dest))?;
        sync_dir(&self.root.join("releases"))
    }

    /// Removes each `releases/<id>` that `keep` does not name, beyond the
    /// `newest` most recently published: renamed to `.trash-<id>` first (so
    /// nothing half-deleted is ever served under its name), then deleted.
    /// Returns the ids removed.
    pub(crate) fn prune(&self, keep: &std::collections::BTreeSet<String>, newest: usize) -> Result<Vec<String>, TreeError> {
        let dir = self.root.join("releases");
        let mut found = Vec::new();
        for e in fs::read_dir(&dir).map_err(io("cannot read", &dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".trash-") {
                let _ = fs::remove_dir_all(e.path());
            } else if !name.starts_with('.') {
                let at = fs::metadata(e.path().join(MANIFEST)).and_then(|m| m.modified()).ok();
                found.push((at, name));
            }
        }
        found.sort_by(|a, b| b.cmp(a));
        let mut removed = Vec::new();
        for (_, id) in found.into_iter().skip(newest).filter(|(_, id)| !keep.contains(id)) {
            let (from, trash) = (dir.join(&id), dir.join(format!(".trash-{id}")));
            fs::rename(&from, &trash).map_err(io("cannot move aside", &from))?;
            removed.push(id);
        }
        if !removed.is_empty() {
            sync_dir(&dir)?;
            for id in &removed {
                let trash = dir.join(format!(".trash-{id}"));
                fs::remove_dir_all(&trash).map_err(io("cannot remove", &trash))?;
            }
        }
        Ok(removed)
    }

    pub(crate) fn manifest_sha256(&self, id: &str) -> Result<String, TreeError> {
        let path = self.release_dir(id).join(MANIFEST);
        Ok(sha256_hex(&fs::read(&path).map_err(io("cannot read", &path))?))
    }

    /// The ring's pointer as this gate wrote it (not verified: our own file).
    pub(crate) fn ring(&self, ring: &str) -> Result<Option<RingPointer>, TreeError> {
        let path = self.ring_file(ring);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| TreeError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("cannot read", &path)(e)),
        }
    }

    /// Replaces a ring pointer: signature first, then the pointer, each by
    /// rename (a host that reads the pair mid-swap sees a bad signature and
    /// asks again at its next poll).
    pub(crate) fn write_ring(&self, signer: &Signer, ptr: &RingPointer) -> Result<(), TreeError> {
        let path = self.ring_file(&ptr.ring);
        let bytes = serde_json::to_vec_pretty(ptr).expect("pointer serializes");
        let sig = signer.sign(&bytes, &format!("rings/{}.json generation {}", ptr.ring, ptr.generation))?;
        let sig_path = PathBuf::from(format!("{}{SIG}", path.display()));
        replace(&sig_path, sig.as_bytes())?;
        replace(&path, &bytes)?;
        sync_dir(&self.root.join("rings"))
    }
}

/// Written under a temporary name, fsynced, renamed over `path`.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> Result<(), TreeError> {
    let tmp = PathBuf::from(format!("{}.tmp-{}", path.display(), std::process::id()));
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(io("cannot rename into place", path))?;
    // The rename itself is durable only once its directory is.
    sync_dir(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TreeError> {
    crate::durable::write_synced(path, bytes).map_err(io("cannot write", path))
}

fn sync_dir(dir: &Path) -> Result<(), TreeError> {
    crate::durable::sync_dir(dir).map_err(io("cannot fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::DbFile;

    #[test]
    fn a_release_is_published_once_and_a_ring_points_at_it() {
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = super::super::sign::keygen(keys.path()).unwrap();
        let signer = Signer::load(&key).unwrap();
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a.hdb"), b"x:1:A\n").unwrap();
        let m = Manifest::new(vec![DbFile { name: "a.hdb".into(), size: 6, sha256: sha256_hex(b"x:1:A\n"), signatures: 1, header: None }]);
        let pubdir = tempfile::tempdir().unwrap();
        let tree = Tree::open(pubdir.path()).unwrap();
        let digest = tree.publish(&signer, src.path(), &m, true).unwrap();
        assert_eq!(tree.publish(&signer, src.path(), &m, true).unwrap(), digest, "publishing again changes nothing");
        let dir = tree.release_dir(&m.id);
        assert_eq!(fs::read(dir.join("a.hdb")).unwrap(), b"x:1:A\n");
        let bytes = fs::read(dir.join(MANIFEST)).unwrap();
        let sig = fs::read_to_string(dir.join("manifest.json.minisig")).unwrap();
        super::super::sign::Verifier::load(&public).unwrap().verify(&bytes, &sig).unwrap();
        let ptr = RingPointer { ring: "canary".into(), release: m.id.clone(), manifest_sha256: digest, generation: 1, at: now_rfc3339(), halted: false };
        tree.write_ring(&signer, &ptr).unwrap();
        assert_eq!(tree.ring("canary").unwrap(), Some(ptr));
        assert_eq!(tree.ring("all").unwrap(), None);
        let leftovers: Vec<_> =
            fs::read_dir(pubdir.path().join("rings")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
        assert!(leftovers.is_empty());
    }

    /// Only what no ring names, beyond the newest, goes; nothing is left
    /// under a temporary name.
    #[test]
    fn prune_keeps_what_a_ring_names_and_the_newest() {
        let keys = tempfile::tempdir().unwrap();
        let (key, _) = super::super::sign::keygen(keys.path()).unwrap();
        let signer = Signer::load(&key).unwrap();
        let src = tempfile::tempdir().unwrap();
        let pubdir = tempfile::tempdir().unwrap();
        let tree = Tree::open(pubdir.path()).unwrap();
        let mut ids = Vec::new();
        for (i, body) in ["a", "b", "c", "d"].iter().enumerate() {
            let bytes = format!("x:1:{body}\n");
            fs::write(src.path().join("a.hdb"), &bytes).unwrap();
            let m = Manifest::new(vec![DbFile {
                name: "a.hdb".into(),
                size: bytes.len() as u64,
                sha256: sha256_hex(bytes.as_bytes()),
                signatures: 1,
                header: None,
            }]);
            tree.publish(&signer, src.path(), &m, true).unwrap();
            let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i as u64);
            File::options().write(true).open(tree.release_dir(&m.id).join(MANIFEST)).unwrap().set_modified(at).unwrap();
            ids.push(m.id);
        }
        let keep: std::collections::BTreeSet<String> = [ids[0].clone()].into();
        let mut removed = tree.prune(&keep, 1).unwrap();
        removed.sort();
        let mut want = vec![ids[1].clone(), ids[2].clone()];
        want.sort();
        assert_eq!(removed, want);
        let mut left: Vec<String> =
            fs::read_dir(pubdir.path().join("releases")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut want = vec![ids[0].clone(), ids[3].clone()];
        want.sort();
        assert_eq!(left, want, "the named one and the newest stay, nothing else is left");
        assert!(tree.prune(&keep, 1).unwrap().is_empty());
    }

    #[test]
    fn file_sha256_streams_what_sha256_hex_hashes() {
        let d = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(d.path().join("f"), &body).unwrap();
        assert_eq!(file_sha256(&d.path().join("f")).unwrap(), (body.len() as u64, sha256_hex(&body)));
    }
}
