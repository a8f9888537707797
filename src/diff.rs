//! What a release or candidate changes against the live release, signature
//! by signature, for `clamgate show`: per database, how many signatures are
//! added and removed, with up to [`NAMES`] names each.
//!
//! Computed from the files themselves, never from headers: text databases
//! line by line (a changed line is one removed and one added), containers
//! (`.cvd`, `.cld`, `.cud`) unpacked and their text members compared the
//! same way. Bytecode, YARA and certificates are compared by hash only.
//! Memory stays bounded by the live side's line count (8 bytes a line, not
//! the lines), so a full `daily.cvd` diffs on a small host.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::candidate::{CONTAINER_EXTS, DbFile, Manifest, database_of};
use crate::validate::{cvd, text};

/// Names listed per direction; the counts are always complete.
pub(crate) const NAMES: usize = 20;
/// Longer lines are compared by their first 64 KiB: no signature is that long.
const MAX_LINE: u64 = 64 * 1024;
/// A container body unpacks to at most this much (a gzip bomb stops here).
const MAX_BODY: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
#[error("cannot read {file} for the diff: {source}")]
pub(crate) struct DiffError {
    file: PathBuf,
    #[source]
    source: std::io::Error,
}

/// How a database was compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Compared {
    /// Signature by signature.
    Signatures,
    /// Same sha256 on both sides: nothing to read.
    Identical,
    /// A format the diff does not read (bytecode, YARA, certificates): the
    /// counts are zero and `changed` says whether the file differs.
    HashOnly,
}

/// One database's changes; `live_file`/`file` absent when a side lacks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DatabaseDiff {
    pub(crate) database: String,
    pub(crate) live_file: Option<String>,
    pub(crate) file: Option<String>,
    pub(crate) compared: Compared,
    pub(crate) changed: bool,
    pub(crate) added: u64,
    pub(crate) removed: u64,
    pub(crate) added_names: Vec<String>,
    pub(crate) removed_names: Vec<String>,
    /// Why the counts may be incomplete (a container larger than we unpack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

/// A set of database files on disk: a release dir or a quarantined snapshot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Side<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) manifest: &'a Manifest,
}

/// Every database of either side, by name, with its changes from `live` to `new`.
pub(crate) fn diff(live: Side<'_>, new: Side<'_>) -> Result<Vec<DatabaseDiff>, DiffError> {
    let mut pairs: BTreeMap<&str, (Option<&DbFile>, Option<&DbFile>)> = BTreeMap::new();
    for f in &live.manifest.files {
        pairs.entry(database_of(&f.name)).or_default().0 = Some(f);
    }
    for f in &new.manifest.files {
        pairs.entry(database_of(&f.name)).or_default().1 = Some(f);
    }
    pairs.into_iter().map(|(db, (a, b))| compare(db, a.map(|f| (live.dir, f)), b.map(|f| (new.dir, f)))).collect()
}

type Located<'a> = (&'a Path, &'a DbFile);

fn compare(database: &str, live: Option<Located<'_>>, new: Option<Located<'_>>) -> Result<DatabaseDiff, DiffError> {
    let mut d = DatabaseDiff {
        database: database.to_string(),
        live_file: live.map(|(_, f)| f.name.clone()),
        file: new.map(|(_, f)| f.name.clone()),
        compared: Compared::Signatures,
        changed: live.map(|(_, f)| &f.sha256) != new.map(|(_, f)| &f.sha256),
        added: 0,
        removed: 0,
        added_names: Vec::new(),
        removed_names: Vec::new(),
        note: None,
    };
    if !d.changed {
        d.compared = Compared::Identical;
        return Ok(d);
    }
    if [live, new].iter().flatten().any(|(_, f)| !covered(f)) {
        d.compared = Compared::HashOnly;
        return Ok(d);
    }
    // Live lines as hashes with counts; the new side consumes them.
    let mut old: HashMap<u64, u32> = HashMap::new();
    let mut truncated = false;
    if let Some(a) = live {
        truncated |= each_signature(a, |key, _| *old.entry(key).or_default() += 1)?;
    }
    if let Some(b) = new {
        truncated |= each_signature(b, |key, line| match old.get_mut(&key) {
            Some(n) if *n > 0 => *n -= 1,
            _ => {
                d.added += 1;
                if d.added_names.len() < NAMES {
                    d.added_names.push(line.to_string());
                }
            }
        })?;
    }
    d.removed = old.values().map(|&n| u64::from(n)).sum();
    if let Some(a) = live.filter(|_| d.removed > 0) {
        // A second pass for the names: cheaper than keeping every line.
        each_signature(a, |key, line| {
            if d.removed_names.len() < NAMES
                && let Some(n) = old.get_mut(&key).filter(|n| **n > 0)
            {
                *n -= 1;
                d.removed_names.push(line.to_string());
            }
        })?;
    }
    if truncated {
        d.note = Some(format!("a container unpacks to more than {}; only that much was compared", crate::settings::human_size(MAX_BODY)));
    }
    Ok(d)
}

/// Text databases and containers; bytecode, YARA and certificates are not read.
fn covered(f: &DbFile) -> bool {
    CONTAINER_EXTS.contains(&f.extension()) || text::format_of(f.extension()).is_some_and(|t| t != text::Format::Info)
}

/// Calls `each(key, name)` for every signature of a file; `key` identifies
/// the signature line (and the member it came from). True when a container
/// was cut at [`MAX_BODY`].
fn each_signature(at: Located<'_>, mut each: impl FnMut(u64, &str)) -> Result<bool, DiffError> {
    let (dir, f) = at;
    let path = dir.join(&f.name);
    let err = |source| DiffError { file: path.clone(), source };
    let file = File::open(&path).map_err(err)?;
    if !CONTAINER_EXTS.contains(&f.extension()) {
        text_lines(f.extension(), BufReader::new(file), &mut each).map_err(err)?;
        return Ok(false);
    }
    let mut body = cvd::body(file, f.extension()).map_err(err)?.take(MAX_BODY);
    cvd::for_each_member(&mut body, |member, r| {
        let ext = member.rsplit_once('.').map_or("", |(_, e)| e);
        if text::format_of(ext).is_some_and(|t| t != text::Format::Info) {
            text_lines(ext, BufReader::new(r), &mut each)?;
        }
        Ok(true)
    })
    .map_err(err)?;
    Ok(body.limit() == 0)
}

/// The signature lines of a text database (blank and `#` lines skipped),
/// each with its key and its name as [`signature_name`] reads it.
fn text_lines(ext: &str, mut r: impl BufRead, each: &mut impl FnMut(u64, &str)) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') && buf.len() as u64 == MAX_LINE {
            skip_rest_of_line(&mut r)?;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        if line.trim_start().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut h = DefaultHasher::new();
        (ext, line).hash(&mut h);
        each(h.finish(), signature_name(ext, line));
    }
}

fn skip_rest_of_line(r: &mut impl BufRead) -> std::io::Result<()> {
    let mut rest = Vec::new();
    loop {
        rest.clear();
        let n = r.by_ref().take(MAX_LINE).read_until(b'\n', &mut rest)?;
        if n == 0 || rest.last() == Some(&b'\n') {
            return Ok(());
        }
    }
}

/// The signature's name on a line of a text database of extension `ext`;
/// the line itself (cut to 80 characters) for formats without names
/// (phishing and URL lists, `.cfg`).
pub(crate) fn signature_name<'a>(ext: &str, line: &'a str) -> &'a str {
    use text::Format::*;
    let field = |sep: char, i: usize| line.split(sep).nth(i).filter(|s| !s.is_empty());
    let name = match text::format_of(ext) {
        Some(HashFirst | SizeFirst) => field(':', 2),
        Some(Body | Container) => field(':', 0),
        Some(Logical) => field(';', 0),
        Some(FileTypeMagic) => field(':', 3),
        Some(Ignore) if line.split(':').count() >= 3 => field(':', 2),
        Some(Ignore) => field(':', 0),
        Some(Fields) => match ext {
            "idb" => field(':', 0),
            "crb" | "pwdb" => field(';', 0),
            "imp" => field(':', 2),
            _ => None,
        },
        Some(Info) | None => None,
    };
    name.unwrap_or_else(|| line.char_indices().nth(80).map_or(line, |(i, _)| &line[..i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_format() {
        let cases = [
            ("hdb", "aa15bcf478d165efd2065190eb473bcb:544:Clamgate.Test.ClamExe", "Clamgate.Test.ClamExe"),
            ("mdb", "544:aa15bcf478d165efd2065190eb473bcb:Sect.Name:73", "Sect.Name"),
            ("ndb", "Body.Sig:0:*:434c414d", "Body.Sig"),
            ("ldb", "Logical.Sig;Engine:51-255,Target:1;0;434c", "Logical.Sig"),
            ("ign2", "Clamgate.Test.FalsePositive", "Clamgate.Test.FalsePositive"),
            ("ign", "daily.ndb:12:Old.Sig", "Old.Sig"),
            ("ftm", "0:0:4d5a:PE:CL_TYPE_ANY:CL_TYPE_MSEXE", "PE"),
            ("pdb", "H:example.com", "H:example.com"),
            ("idb", "Icon.Name:GROUP1:GROUP2:00ff", "Icon.Name"),
        ];
        for (ext, line, want) in cases {
            assert_eq!(signature_name(ext, line), want, "{ext}: {line}");
        }
        assert_eq!(signature_name("wdb", &"x".repeat(200)).len(), 80);
    }

    fn side(dir: &Path, files: &[(&str, &str)]) -> Manifest {
        let mut dbs = Vec::new();
        for (name, body) in files {
            std::fs::write(dir.join(name), body).unwrap();
            let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
            dbs.push(DbFile { name: name.to_string(), size: body.len() as u64, sha256, signatures: 0, header: None });
        }
        Manifest::new(dbs)
    }

    #[test]
    fn text_databases_diff_line_by_line() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let filler: String = (0..30).map(|i| format!("{i:032x}:1:Old.{i}\n")).collect();
        let live = side(a.path(), &[("x.hdb", "aa:1:Same\n# comment\nbb:2:Changed\n"), ("gone.ndb", &filler), ("same.ndb", "S:0:*:00\n"), ("b.cbc", "1")]);
        let new = side(b.path(), &[("x.hdb", "aa:1:Same\n\ncc:2:Changed\ndd:3:New\n"), ("same.ndb", "S:0:*:00\n"), ("b.cbc", "2")]);
        let d = diff(Side { dir: a.path(), manifest: &live }, Side { dir: b.path(), manifest: &new }).unwrap();
        let by = |db: &str| d.iter().find(|x| x.database == db).unwrap();
        let x = by("x.hdb");
        assert_eq!((x.added, x.removed, x.compared), (2, 1, Compared::Signatures));
        assert_eq!(x.added_names, ["Changed", "New"]);
        assert_eq!(x.removed_names, ["Changed"]);
        let gone = by("gone.ndb");
        assert_eq!((gone.added, gone.removed, gone.removed_names.len(), gone.file.as_deref()), (0, 30, NAMES, None));
        assert_eq!((by("same.ndb").compared, by("same.ndb").changed), (Compared::Identical, false));
        assert_eq!((by("b.cbc").compared, by("b.cbc").changed), (Compared::HashOnly, true));
    }
}
