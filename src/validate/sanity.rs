//! Sanity of a candidate against the release it would replace: no version
//! going down, no large drop in signatures, no database disappearing.
//! Pure: two manifests and a policy in, reasons out.

use std::collections::BTreeMap;

use crate::candidate::{DbFile, Manifest};
use crate::policy::Policy;
use crate::reason::{Code, Reason};

/// Per database (`daily`, `main`, `custom.hdb`): version and signature count.
/// When both `daily.cvd` and `daily.cld` are present, the higher version wins,
/// as clamd does.
fn databases(files: &[DbFile]) -> BTreeMap<&str, (&DbFile, Option<u64>, u64)> {
    let mut out: BTreeMap<&str, (&DbFile, Option<u64>, u64)> = BTreeMap::new();
    for f in files {
        let version = f.header.as_ref().map(|h| h.version);
        let entry = (f, version, f.signatures);
        out.entry(f.database())
            .and_modify(|e| {
                if version > e.1 {
                    *e = entry
                }
            })
            .or_insert(entry);
    }
    out
}

pub(crate) fn check(candidate: &Manifest, baseline: &Manifest, policy: &Policy) -> Vec<Reason> {
    let mut reasons = Vec::new();
    let new = databases(&candidate.files);
    let old = databases(&baseline.files);
    let limit = policy.max_signature_drop_percent;
    let dropped_too_much = |was: u64, now: u64| was > 0 && now < was && (was - now) as f64 * 100.0 / was as f64 > limit;

    for (db, (old_file, old_version, old_sigs)) in &old {
        let Some((new_file, new_version, new_sigs)) = new.get(db) else {
            reasons.push(Reason::file(
                Code::SanityMissingDatabase,
                &old_file.name,
                format!("is in the live release {} but missing from the candidate", baseline.id),
            ));
            continue;
        };
        if let (Some(o), Some(n)) = (old_version, new_version)
            && n < o
            && !policy.allow_downgrade
        {
            reasons.push(Reason::file(
                Code::SanityDowngrade,
                &new_file.name,
                format!("version {n} is older than the live {o} (stale mirror?; policy allow_downgrade = false)"),
            ));
        }
        if dropped_too_much(*old_sigs, *new_sigs) {
            reasons.push(Reason::file(
                Code::SanitySignatureDrop,
                &new_file.name,
                format!(
                    "signatures drop from {old_sigs} to {new_sigs} ({:.1}%), more than the policy's {limit}%",
                    (old_sigs - new_sigs) as f64 * 100.0 / *old_sigs as f64
                ),
            ));
        }
    }
    let (was, now) = (baseline.total_signatures(), candidate.total_signatures());
    if reasons.iter().all(|r| r.reason != Code::SanitySignatureDrop) && dropped_too_much(was, now) {
        reasons.push(Reason::new(Code::SanitySignatureDrop, None, format!("total signatures drop from {was} to {now}, more than the policy's {limit}%")));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::cvd::CvdHeader;

    fn cvd(name: &str, version: u64, sigs: u64) -> DbFile {
        DbFile {
            name: name.into(),
            size: 1,
            sha256: format!("{name}{version}{sigs}"),
            signatures: sigs,
            header: Some(CvdHeader {
                build_time: String::new(),
                version,
                signatures: sigs,
                functionality_level: 1,
                md5: String::new(),
                dsig: "X".into(),
                builder: String::new(),
                build_epoch: None,
            }),
        }
    }

    fn text(name: &str, sigs: u64) -> DbFile {
        DbFile { name: name.into(), size: 1, sha256: format!("{name}{sigs}"), signatures: sigs, header: None }
    }

    fn codes(new: Vec<DbFile>, old: Vec<DbFile>, policy: &Policy) -> Vec<Code> {
        check(&Manifest::new(new), &Manifest::new(old), policy).into_iter().map(|r| r.reason).collect()
    }

    #[test]
    fn table() {
        let p = Policy::default();
        let lenient = Policy { allow_downgrade: true, max_signature_drop_percent: 100.0, ..Policy::default() };
        // (name, candidate, live, policy, reasons)
        type Case<'a> = (&'a str, Vec<DbFile>, Vec<DbFile>, &'a Policy, Vec<Code>);
        let cases: Vec<Case> = vec![
            ("newer is fine", vec![cvd("daily.cvd", 2, 120)], vec![cvd("daily.cvd", 1, 100)], &p, vec![]),
            ("cvd to cld is the same database", vec![cvd("daily.cld", 2, 100)], vec![cvd("daily.cvd", 1, 100)], &p, vec![]),
            ("downgrade", vec![cvd("daily.cvd", 1, 120)], vec![cvd("daily.cvd", 2, 120)], &p, vec![Code::SanityDowngrade]),
            ("downgrade allowed", vec![cvd("daily.cvd", 1, 120)], vec![cvd("daily.cvd", 2, 120)], &lenient, vec![]),
            ("small drop", vec![cvd("daily.cvd", 3, 96)], vec![cvd("daily.cvd", 2, 100)], &p, vec![]),
            ("big drop", vec![cvd("daily.cvd", 3, 11)], vec![cvd("daily.cvd", 2, 120)], &p, vec![Code::SanitySignatureDrop]),
            ("big drop allowed", vec![cvd("daily.cvd", 3, 11)], vec![cvd("daily.cvd", 2, 120)], &lenient, vec![]),
            ("text drop", vec![text("x.hdb", 1)], vec![text("x.hdb", 50)], &p, vec![Code::SanitySignatureDrop]),
            (
                "database gone",
                vec![cvd("daily.cvd", 2, 100)],
                vec![cvd("daily.cvd", 1, 100), cvd("main.cvd", 1, 50)],
                &p,
                vec![Code::SanityMissingDatabase, Code::SanitySignatureDrop],
            ),
            ("new database is fine", vec![cvd("daily.cvd", 1, 100), text("x.hdb", 1)], vec![cvd("daily.cvd", 1, 100)], &p, vec![]),
        ];
        for (what, new, old, policy, want) in cases {
            assert_eq!(codes(new, old, policy), want, "{what}");
        }
    }
}
