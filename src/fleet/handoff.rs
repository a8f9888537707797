//! Handing a fetched release to the host's own gate: the watched incoming
//! dir is made to hold exactly the release's files, each copied beside it
//! and renamed in, so the gate's snapshot sees whole files only. The live
//! release's own files there make the gate's next look a no-op
//! ("identical to the live release").

use std::fs;
use std::path::Path;

use super::source::SourceError;
use crate::candidate::DbFile;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SourceError {
    let path = path.to_path_buf();
    move |source| SourceError::Io { what, path, source }
}

/// `incoming` ends up holding `files` from `from`, and nothing else;
/// `stage` is a dir on the same filesystem for the copies. A file already
/// there is compared with the manifest's size and sha256, streamed (blocking
/// I/O: call it off the async runtime, as [`fill_blocking`] does).
pub(crate) fn fill(from: &Path, files: &[DbFile], incoming: &Path, stage: &Path) -> Result<(), SourceError> {
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let same = |f: &DbFile| {
        let path = incoming.join(&f.name);
        fs::metadata(&path).is_ok_and(|m| m.len() == f.size) && super::tree::file_sha256(&path).is_ok_and(|(n, h)| n == f.size && h == f.sha256)
    };
    let present: Vec<String> =
        fs::read_dir(incoming).map_err(io("cannot read", incoming))?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if present.len() == names.len() && names.iter().all(|n| present.iter().any(|p| p == n)) && files.iter().all(same) {
        return Ok(());
    }
    for n in present.iter().filter(|p| !names.contains(&p.as_str())) {
        let _ = fs::remove_file(incoming.join(n));
    }
    for n in &names {
        let staged = stage.join(format!("stage-{n}"));
        fs::copy(from.join(n), &staged).map_err(io("cannot copy", &from.join(n)))?;
        fs::rename(&staged, incoming.join(n)).map_err(io("cannot rename", &incoming.join(n)))?;
    }
    Ok(())
}

/// [`fill`] on a blocking thread.
pub(crate) async fn fill_blocking(from: &Path, files: &[DbFile], incoming: &Path, stage: &Path) -> Result<(), SourceError> {
    let (from, files, incoming, stage) = (from.to_path_buf(), files.to_vec(), incoming.to_path_buf(), stage.to_path_buf());
    tokio::task::spawn_blocking(move || fill(&from, &files, &incoming, &stage)).await.expect("fill does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_ends_up_with_exactly_the_release() {
        let d = tempfile::tempdir().unwrap();
        let (from, incoming, stage) = (d.path().join("from"), d.path().join("in"), d.path().join("stage"));
        for dir in [&from, &incoming, &stage] {
            fs::create_dir(dir).unwrap();
        }
        fs::write(from.join("daily.cud"), b"new").unwrap();
        fs::write(from.join("extra.hdb"), b"not in the release").unwrap();
        fs::write(incoming.join("daily.cud"), b"old").unwrap();
        fs::write(incoming.join("gone.hdb"), b"x").unwrap();
        let db = |body: &[u8]| DbFile {
            name: "daily.cud".into(),
            size: body.len() as u64,
            sha256: super::super::tree::sha256_hex(body),
            signatures: 1,
            header: None,
        };
        fill(&from, &[db(b"new")], &incoming, &stage).unwrap();
        let names: Vec<String> = fs::read_dir(&incoming).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["daily.cud"]);
        assert_eq!(fs::read(incoming.join("daily.cud")).unwrap(), b"new");
        assert_eq!(fs::read_dir(&stage).unwrap().count(), 0, "no staged copy is left");
        // Same size, other bytes than the manifest's: replaced.
        fs::write(incoming.join("daily.cud"), b"old").unwrap();
        fill(&from, &[db(b"new")], &incoming, &stage).unwrap();
        assert_eq!(fs::read(incoming.join("daily.cud")).unwrap(), b"new");
    }
}
