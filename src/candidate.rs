//! A candidate: a private copy of a directory of database files, and its
//! manifest (name, size, sha256 of every file) whose digest names it.
//!
//! The source directory belongs to freshclam and may change under us, so
//! everything after the snapshot works on the copy. Files are opened without
//! following symlinks and without blocking, so a symlink cannot point the
//! gate at `/etc/shadow` and a FIFO cannot hang it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::Policy;
use crate::reason::{Code, Reason};
use crate::validate::cvd::CvdHeader;

/// Extensions of files clamd loads as databases.
pub(crate) const CONTAINER_EXTS: &[&str] = &["cvd", "cld", "cud"];
pub(crate) const OTHER_EXTS: &[&str] = &["cbc", "yar", "yara", "crt"];

/// One database file of a release or candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// Signatures it holds: the header's count for containers, lines for text.
    #[serde(default)]
    pub signatures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<CvdHeader>,
}

impl DbFile {
    /// The database this file is a version of: `daily` for `daily.cvd` and
    /// `daily.cld` alike (freshclam switches between the two), the whole
    /// name for text databases.
    pub(crate) fn database(&self) -> &str {
        database_of(&self.name)
    }

    pub(crate) fn extension(&self) -> &str {
        self.name.rsplit_once('.').map_or("", |(_, e)| e)
    }
}

pub(crate) fn database_of(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, ext)) if CONTAINER_EXTS.contains(&ext) => stem,
        _ => name,
    }
}

/// The list of files of a candidate or release. Its digest covers names,
/// sizes and hashes, so the same files always give the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub(crate) digest: String,
    pub files: Vec<DbFile>,
    /// Files of the candidate this release was reduced from that were held
    /// back (per-file isolation); not covered by the id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldFile>,
}

/// A candidate's file kept out of a release because it was found to cause a
/// failure. Its (name, sha256) is not checked again until its content changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldFile {
    pub name: String,
    pub sha256: String,
    pub reason: Code,
    /// One line: the signature name, clamd's error line, or the sample.
    pub detail: String,
}

impl Manifest {
    pub fn new(mut files: Vec<DbFile>) -> Manifest {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut h = Sha256::new();
        for f in &files {
            h.update(format!("{}\0{}\0{}\n", f.name, f.size, f.sha256).as_bytes());
        }
        let digest = hex::encode(h.finalize());
        Manifest { id: digest[..12].to_string(), digest, files, held: Vec::new() }
    }

    pub(crate) fn total_signatures(&self) -> u64 {
        self.files.iter().map(|f| f.signatures).sum()
    }
}

/// What the snapshot found and copied.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The private copy; the canary loads this directory.
    pub(crate) dir: PathBuf,
    pub(crate) files: Vec<DbFile>,
    /// File-rule violations; any one rejects the candidate.
    pub(crate) rejected: Vec<Reason>,
    /// freshclam's own housekeeping, skipped on purpose.
    pub(crate) ignored: Vec<String>,
}

/// A failure of our environment, not of the candidate.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error("cannot read candidate directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write snapshot {file}: {source}")]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a directory entry is treated, from its name alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NameClass {
    Database,
    /// freshclam's state and temporary downloads.
    Housekeeping,
    Bad(String),
}

pub(crate) fn classify_name(name: &std::ffi::OsStr) -> NameClass {
    let Some(n) = name.to_str() else { return NameClass::Bad("name is not valid UTF-8".into()) };
    if matches!(n, "freshclam.dat" | "mirrors.dat" | "freshclam.log")
        || n.starts_with("tmp.")
        || n.starts_with("clamav-")
        || n.ends_with(".tmp")
        || n.ends_with(".cdiff")
    {
        return NameClass::Housekeeping;
    }
    if n.len() > 128 {
        return NameClass::Bad("name is longer than 128 bytes".into());
    }
    if !n.starts_with(|c: char| c.is_ascii_alphanumeric()) || !n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return NameClass::Bad("name is not a plain database file name (letters, digits, . _ -)".into());
    }
    let ext = n.rsplit_once('.').map_or("", |(_, e)| e);
    if CONTAINER_EXTS.contains(&ext) || crate::validate::text::format_of(ext).is_some() || OTHER_EXTS.contains(&ext) {
        NameClass::Database
    } else {
        NameClass::Bad(format!("extension {ext:?} is not a ClamAV database extension"))
    }
}

/// Copies the database files of `src` into `dst` (created, must not exist),
/// applying the file rules (docs/ARCHITECTURE.md, "candidate"). A file that
/// breaks one is rejected by name; freshclam's housekeeping files are skipped.
pub(crate) fn snapshot(src: &Path, dst: &Path, policy: &Policy) -> Result<Snapshot, SnapshotError> {
    let read_dir = |source| SnapshotError::ReadDir { dir: src.to_path_buf(), source };
    fs::create_dir(dst).map_err(|source| SnapshotError::Write { file: dst.to_path_buf(), source })?;
    let mut entries: Vec<_> = fs::read_dir(src).map_err(read_dir)?.collect::<Result<_, _>>().map_err(read_dir)?;
    entries.sort_by_key(|e| e.file_name());

    let mut snap = Snapshot { dir: dst.to_path_buf(), files: Vec::new(), rejected: Vec::new(), ignored: Vec::new() };
    for entry in entries {
        let os_name = entry.file_name();
        let shown = shown_name(&os_name);
        let class = classify_name(&os_name);
        if class == NameClass::Housekeeping {
            snap.ignored.push(shown);
            continue;
        }
        if let Err((code, why)) = admit(&entry, class, policy) {
            snap.rejected.push(Reason::file(code, &shown, why));
            continue;
        }
        if snap.files.len() >= policy.max_files {
            snap.rejected.push(Reason::file(Code::FileTooMany, &shown, format!("more than {} database files (policy max_files)", policy.max_files)));
            break;
        }
        let to = dst.join(&os_name);
        let rejected = |code, why: String| Reason::file(code, &shown, why);
        match copy_file(&entry.path(), &to, policy.max_file_size) {
            Ok(Copied::File { size, sha256 }) => snap.files.push(DbFile { name: shown, size, sha256, signatures: 0, header: None }),
            Ok(Copied::NotRegular) => {
                snap.rejected.push(rejected(Code::FileNotRegular, "changed into something that is not a regular file while being read".into()))
            }
            Ok(Copied::TooLarge) => snap.rejected.push(rejected(Code::FileTooLarge, too_large(policy.max_file_size + 1, policy))),
            Err(CopyError::Read(e)) => snap.rejected.push(rejected(Code::FileUnreadable, format!("cannot read: {e}"))),
            Err(CopyError::Write(source)) => return Err(SnapshotError::Write { file: to, source }),
        }
    }
    Ok(snap)
}

/// A file name as the operator should see it: control characters and
/// invalid UTF-8 quoted, so a hostile name cannot forge a log line.
fn shown_name(os_name: &std::ffi::OsStr) -> String {
    match os_name.to_str() {
        Some(n) if n.contains(char::is_control) => format!("{n:?}"),
        Some(n) => n.to_string(),
        None => format!("{os_name:?}"),
    }
}

/// The file rules one directory entry must pass before it is copied: a
/// regular file, not a link, with a database name, within the size limit.
fn admit(entry: &fs::DirEntry, class: NameClass, policy: &Policy) -> Result<(), (Code, String)> {
    let meta = fs::symlink_metadata(entry.path()).map_err(|e| (Code::FileUnreadable, format!("cannot stat: {e}")))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let to = fs::read_link(entry.path()).map(|t| t.display().to_string()).unwrap_or_default();
        return Err((Code::FileSymlink, format!("is a symbolic link (to {to:?}); copy the file itself into the directory")));
    }
    if let Some(kind) = special_kind(ft) {
        return Err((Code::FileNotRegular, format!("is {kind}, not a regular file")));
    }
    if let NameClass::Bad(why) = class {
        return Err((Code::FileBadName, why));
    }
    if meta.len() > policy.max_file_size {
        return Err((Code::FileTooLarge, too_large(meta.len(), policy)));
    }
    Ok(())
}

fn special_kind(ft: fs::FileType) -> Option<&'static str> {
    if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_block_device() || ft.is_char_device() {
        Some("a device node")
    } else {
        None
    }
}

fn too_large(size: u64, policy: &Policy) -> String {
    format!("is {}, larger than the policy's max_file_size of {}", crate::settings::human_size(size), crate::settings::human_size(policy.max_file_size))
}

enum Copied {
    File { size: u64, sha256: String },
    NotRegular,
    TooLarge,
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

fn copy_file(from: &Path, to: &Path, limit: u64) -> Result<Copied, CopyError> {
    // O_NOFOLLOW: a symlink swapped in after our lstat fails to open;
    // O_NONBLOCK: a FIFO swapped in opens at once instead of waiting for a writer.
    let src = OpenOptions::new().read(true).custom_flags(libc_flags::O_NOFOLLOW | libc_flags::O_NONBLOCK).open(from).map_err(CopyError::Read)?;
    if !src.metadata().map_err(CopyError::Read)?.is_file() {
        return Ok(Copied::NotRegular);
    }
    let mut dst = File::create(to).map_err(CopyError::Write)?;
    dst.set_permissions(fs::Permissions::from_mode(0o644)).map_err(CopyError::Write)?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    // Bounded read: the file may grow while we copy.
    let mut src = src.take(limit + 1);
    loop {
        let n = src.read(&mut buf).map_err(CopyError::Read)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > limit {
            drop(dst);
            let _ = fs::remove_file(to);
            return Ok(Copied::TooLarge);
        }
        hash.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
    dst.flush().map_err(CopyError::Write)?;
    Ok(Copied::File { size, sha256: hex::encode(hash.finalize()) })
}

/// The open(2) flags we need, from rustix so no libc crate is pulled in.
mod libc_flags {
    use rustix::fs::OFlags;
    pub(crate) const O_NOFOLLOW: i32 = OFlags::NOFOLLOW.bits() as i32;
    pub(crate) const O_NONBLOCK: i32 = OFlags::NONBLOCK.bits() as i32;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn names() {
        for n in ["daily.cvd", "daily.cld", "main.cud", "bytecode.cvd", "custom.hdb", "sanesecurity-phish.ndb", "a.ign2", "x.ldb", "local.info"] {
            assert_eq!(classify_name(OsStr::new(n)), NameClass::Database, "{n}");
        }
        for n in ["freshclam.dat", "mirrors.dat", "tmp.8f3a2c", "clamav-1234.tmp", "daily.cvd.tmp"] {
            assert_eq!(classify_name(OsStr::new(n)), NameClass::Housekeeping, "{n}");
        }
        for n in ["notes.txt", ".hidden.hdb", "a b.hdb", "new\nline.hdb", "x", "../x.hdb", "-x.hdb"] {
            assert!(matches!(classify_name(OsStr::new(n)), NameClass::Bad(_)), "{n}");
        }
        assert!(matches!(classify_name(OsStr::from_bytes(b"\xff.hdb")), NameClass::Bad(_)));
    }

    #[test]
    fn manifest_id_depends_only_on_content() {
        let f = |n: &str, h: &str| DbFile { name: n.into(), size: 1, sha256: h.into(), signatures: 7, header: None };
        let a = Manifest::new(vec![f("b.hdb", "11"), f("a.hdb", "22")]);
        let b = Manifest::new(vec![f("a.hdb", "22"), f("b.hdb", "11")]);
        assert_eq!(a.id, b.id);
        assert_eq!(a.id.len(), 12);
        assert_ne!(a.id, Manifest::new(vec![f("a.hdb", "22"), f("b.hdb", "12")]).id);
        assert_eq!(database_of("daily.cld"), "daily");
        assert_eq!(database_of("custom.hdb"), "custom.hdb");
    }
}
