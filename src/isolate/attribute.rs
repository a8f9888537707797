//! Attribution without a canary run: which suspects a failed report's
//! reasons name, directly (a format error, clamd's "Can't load" line) or
//! through a signature name found in exactly one suspect.

use std::collections::BTreeSet;
use std::path::Path;

use crate::candidate::{DbFile, HeldFile, Manifest, database_of};
use crate::corpus::Outcome;
use crate::gate::{Report, Step};
use crate::reason::{Code, Reason};

/// The files that differ from the live release: added or changed. With no
/// live release, all of them.
pub(crate) fn suspects(files: &[DbFile], live: Option<&Manifest>) -> BTreeSet<String> {
    files.iter().filter(|f| !live.is_some_and(|l| l.files.iter().any(|o| o.name == f.name && o.sha256 == f.sha256))).map(|f| f.name.clone()).collect()
}

/// Whether per-file isolation applies: structural problems (file rules)
/// and a candidate known as a whole reject it all, whatever the policy.
pub(crate) fn isolable(r: &Report) -> bool {
    let structural = |c: Code| {
        matches!(
            c,
            Code::CandidateEmpty | Code::FileSymlink | Code::FileNotRegular | Code::FileBadName | Code::FileTooLarge | Code::FileTooMany | Code::FileUnreadable
        )
    };
    let known = r.checks.iter().any(|c| c.step == Step::Known);
    !known && !r.reasons.is_empty() && !r.reasons.iter().any(|x| structural(x.reason))
}

/// The suspects `r`'s reasons point at, each with its reason. `dir` holds
/// the candidate's files (the snapshot) and `live` the live release's, for
/// a database the candidate lost.
pub(crate) fn direct(r: &Report, suspects: &BTreeSet<String>, files: &[DbFile], dir: &Path, live: Option<&Manifest>) -> Vec<HeldFile> {
    let mut out: Vec<HeldFile> = Vec::new();
    for reason in &r.reasons {
        let Some((name, detail)) = blamed(r, reason, suspects, dir, live) else { continue };
        if out.iter().any(|h| h.name == name) {
            continue;
        }
        let sha256 = files.iter().find(|f| f.name == name).map(|f| f.sha256.clone()).unwrap_or_default();
        out.push(HeldFile { name, sha256, reason: reason.reason, detail });
    }
    out
}

fn blamed(r: &Report, reason: &Reason, suspects: &BTreeSet<String>, dir: &Path, live: Option<&Manifest>) -> Option<(String, String)> {
    let file = reason.file.as_deref()?;
    if suspects.contains(file) {
        return Some((file.to_string(), detail_for(r, reason, file)));
    }
    // A database the candidate lost: held means "keep the live version".
    if reason.reason == Code::SanityMissingDatabase && live.is_some_and(|l| l.files.iter().any(|f| f.name == file)) {
        return Some((file.to_string(), one_line(&reason.message)));
    }
    // A corpus sample: look its signature up in the suspects.
    let sample = r.samples.iter().find(|s| s.sample == file)?;
    let (sig, defining) = match (reason.reason, &sample.outcome, &sample.baseline) {
        (Code::CorpusFalsePositive | Code::CorpusNameMismatch, Outcome::Infected(sig), _) => (sig, true),
        // A lost detection: a suspect naming it (an .ign2, or the file that dropped it).
        (Code::CorpusRegression, _, Some(Outcome::Infected(old))) => (old, false),
        _ => return None,
    };
    let bare = sig.strip_suffix(".UNOFFICIAL").unwrap_or(sig);
    let holding: Vec<&String> = suspects.iter().filter(|n| (!defining || defines(n)) && mentions(&dir.join(n.as_str()), bare)).collect();
    match holding.as_slice() {
        [one] => Some(((*one).clone(), format!("{sig} on {file}"))),
        _ => None,
    }
}

/// Whether a file of this name can define signatures (ignore lists cannot).
fn defines(name: &str) -> bool {
    !matches!(name.rsplit_once('.').map(|(_, e)| e), Some("ign" | "ign2" | "fp" | "sfp" | "wdb" | "cfg" | "info"))
}

/// Whether the file holds `sig` as a whole field. Text databases are
/// searched as they are; a container (`.cvd`, `.cud`, `.cld`) by its
/// members, unpacked as `clamgate show` does (a member is read up to
/// [`MAX_MEMBER`]; an unreadable container never counts).
pub(crate) fn mentions(path: &Path, sig: &str) -> bool {
    if sig.is_empty() {
        return false;
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext @ ("cvd" | "cud" | "cld")) => container_mentions(path, ext, sig).unwrap_or(false),
        _ => std::fs::read(path).is_ok_and(|bytes| has_field(&bytes, sig)),
    }
}

/// Largest container member searched; the official daily's biggest is
/// tens of MiB.
const MAX_MEMBER: u64 = 512 << 20;

fn container_mentions(path: &Path, ext: &str, sig: &str) -> std::io::Result<bool> {
    use std::io::Read;
    let body = crate::validate::cvd::body(std::fs::File::open(path)?, ext)?;
    let mut found = false;
    crate::validate::cvd::for_each_member(body, |_, member| {
        let mut bytes = Vec::new();
        member.take(MAX_MEMBER).read_to_end(&mut bytes)?;
        found = has_field(&bytes, sig);
        Ok(!found)
    })?;
    Ok(found)
}

fn has_field(bytes: &[u8], sig: &str) -> bool {
    let sep = |b: Option<&u8>| b.is_none_or(|c| matches!(c, b':' | b';' | b'\n' | b'\r' | b'\t' | b',' | b' ' | b'\0'));
    let needle = sig.as_bytes();
    bytes.windows(needle.len()).enumerate().any(|(i, w)| w == needle && sep(i.checked_sub(1).and_then(|j| bytes.get(j))) && sep(bytes.get(i + needle.len())))
}

/// The line of detail kept with a held file: clamd's error line naming the
/// file when there is one, else the reason's message.
fn detail_for(r: &Report, reason: &Reason, file: &str) -> String {
    let from_log = r.canary_log.as_deref().and_then(|log| log.lines().find(|l| l.contains(file) && (l.contains("Error") || l.contains("ERROR"))));
    let line = from_log.map(str::trim).unwrap_or(&reason.message);
    // The canary's private path means nothing to the operator: the name does.
    let line = match line.find(&format!("/{file}")) {
        Some(at) => {
            let start = line[..at].rfind(' ').map_or(0, |s| s + 1);
            format!("{}{}", &line[..start], &line[at + 1..])
        }
        None => line.to_string(),
    };
    one_line(line.trim_start_matches("LibClamAV "))
}

pub(crate) fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    if line.chars().count() > 200 { format!("{}…", line.chars().take(200).collect::<String>()) } else { line.to_string() }
}

/// The live file that stands in for `name`: same database (`daily.cvd`
/// for `daily.cud`).
pub(crate) fn live_version<'a>(live: Option<&'a Manifest>, name: &str) -> Option<&'a DbFile> {
    live?.files.iter().find(|f| f.database() == database_of(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, sha: &str) -> DbFile {
        DbFile { name: name.into(), size: 1, sha256: sha.into(), signatures: 1, header: None }
    }

    #[test]
    fn suspects_are_added_or_changed_files() {
        let live = Manifest::new(vec![f("daily.cud", "1"), f("a.ndb", "2"), f("gone.hdb", "3")]);
        let cand = [f("daily.cud", "9"), f("a.ndb", "2"), f("new.hdb", "4")];
        let got: Vec<String> = suspects(&cand, Some(&live)).into_iter().collect();
        assert_eq!(got, ["daily.cud", "new.hdb"]);
        assert_eq!(suspects(&cand, None).len(), 3);
        assert_eq!(live_version(Some(&live), "daily.cvd").map(|f| f.name.as_str()), Some("daily.cud"));
    }

    #[test]
    fn a_signature_is_found_as_a_whole_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.hdb");
        std::fs::write(&p, "aa:1:Feed.Bad.Sig\nbb:2:Feed.Bad.Sig2\n").unwrap();
        assert!(mentions(&p, "Feed.Bad.Sig"));
        assert!(mentions(&p, "Feed.Bad.Sig2"));
        assert!(!mentions(&p, "Feed.Bad"));
        assert!(!mentions(&dir.path().join("missing.hdb"), "Feed.Bad.Sig"));
        let cud = dir.path().join("daily.cud");
        std::fs::write(&cud, "aa:1:Feed.Bad.Sig\n").unwrap();
        assert!(!mentions(&cud, "Feed.Bad.Sig"), "an unreadable container never counts");
        assert!(!defines("local.ign2") && defines("feed.ndb"));
    }

    #[test]
    fn containers_are_searched_by_their_members() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let tar = crate::validate::cvd::tests::tar(&[("COPYING", b"text"), ("daily.hdb", b"aa:1:Win.Test.Bad-1\n")]);
        let header = vec![b' '; crate::validate::cvd::HEADER_LEN];
        let cld = dir.path().join("daily.cld");
        std::fs::write(&cld, [header.clone(), tar.clone()].concat()).unwrap();
        let mut gz = flate2::write::GzEncoder::new(header, flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let cud = dir.path().join("daily.cud");
        std::fs::write(&cud, gz.finish().unwrap()).unwrap();
        for c in [&cld, &cud] {
            assert!(mentions(c, "Win.Test.Bad-1"), "{}", c.display());
            assert!(!mentions(c, "Win.Test.Bad"), "{}: whole fields only", c.display());
        }
    }
}
