//! Static checks of a snapshot (the format and sanity steps of the gate, docs/ARCHITECTURE.md): every file's
//! format, then the sanity of the whole set against the live release.
//! Cheap and exact, so they run before any canary is started.

pub mod cvd;
pub(crate) mod sanity;
pub mod text;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::candidate::{CONTAINER_EXTS, DbFile};
use crate::reason::{Code, Reason};

/// [`inspect`] on every file: the files with their headers and counts,
/// and the reasons of those that failed.
pub(crate) fn inspect_all(dir: &Path, mut files: Vec<DbFile>) -> (Vec<DbFile>, Vec<Reason>) {
    let reasons = files.iter_mut().filter_map(|f| inspect(dir, f).err()).collect();
    (files, reasons)
}

/// About how many signatures `files` hold, cheaply, before [`inspect`] has
/// run (the memory guard sizes a canary with it): a container's header
/// count, a text file's lines; a file it cannot read counts none.
pub(crate) fn signature_hint(dir: &Path, files: &[DbFile]) -> u64 {
    files.iter().map(|f| hint_of(&dir.join(&f.name), f.extension()).unwrap_or(0)).sum()
}

fn hint_of(path: &Path, ext: &str) -> std::io::Result<u64> {
    let mut f = File::open(path)?;
    if CONTAINER_EXTS.contains(&ext) {
        let mut head = Vec::with_capacity(cvd::HEADER_LEN);
        (&mut f).take(cvd::HEADER_LEN as u64).read_to_end(&mut head)?;
        return Ok(cvd::parse_header(&head).map_or(0, |h| h.signatures));
    }
    if text::format_of(ext).is_none() {
        return Ok(0);
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut lines = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// Checks one copied file and fills in its header and signature count.
pub(crate) fn inspect(dir: &Path, file: &mut DbFile) -> Result<(), Reason> {
    let path = dir.join(&file.name);
    let unreadable = |e: std::io::Error| Reason::file(Code::FileUnreadable, &file.name, format!("cannot read: {e}"));
    let ext = file.extension().to_string();
    if CONTAINER_EXTS.contains(&ext.as_str()) {
        let mut f = File::open(&path).map_err(unreadable)?;
        let mut head = Vec::with_capacity(cvd::HEADER_LEN);
        (&mut f).take(cvd::HEADER_LEN as u64).read_to_end(&mut head).map_err(unreadable)?;
        let header = cvd::parse_header(&head).map_err(|why| Reason::file(Code::CvdBadHeader, &file.name, format!("container header is unusable: {why}")))?;
        if file.size == cvd::HEADER_LEN as u64 {
            return Err(Reason::file(Code::CvdBadHeader, &file.name, "container has a header but no body"));
        }
        if ext != "cld" {
            let md5 = cvd::body_md5(BufReader::new(f)).map_err(unreadable)?;
            if md5 != header.md5 {
                return Err(Reason::file(
                    Code::CvdMd5Mismatch,
                    &file.name,
                    format!("body MD5 {md5} does not match the header's {} (corrupt or truncated download)", header.md5),
                ));
            }
        }
        file.signatures = header.signatures;
        file.header = Some(header);
        return Ok(());
    }
    if text::format_of(&ext).is_some() {
        if file.size == 0 {
            return Err(Reason::file(Code::DbEmpty, &file.name, "is empty (clamd refuses an empty database file)"));
        }
        let f = File::open(&path).map_err(unreadable)?;
        let count = text::check(&ext, BufReader::new(f))
            .map_err(|e| Reason::file(Code::DbMalformedLine, &format!("{}:{}", file.name, e.line), format!("line {}: {}", e.line, e.problem)))?;
        if count == 0 {
            return Err(Reason::file(Code::DbEmpty, &file.name, "holds no signatures, only blank or comment lines"));
        }
        file.signatures = count;
    }
    // Bytecode and YARA: the canary is the check.
    Ok(())
}
