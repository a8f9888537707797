//! Why a candidate was rejected, as data: a stable code that scripts and the
//! journal rely on, the file it concerns, and a message for the operator.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($variant:ident = $code:literal,)*) => {
        /// Stable reason codes. The string form (`file.symlink`) is the
        /// contract: never rename one, only add.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Code {
            $(#[serde(rename = $code)] $variant,)*
        }

        impl Code {
            /// Every code, in the order they are declared.
            pub(crate) const ALL: &[Code] = &[$(Code::$variant,)*];

            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }
        }
    };
}

codes! {
    CandidateEmpty = "candidate.empty",
    FileSymlink = "file.symlink",
    FileNotRegular = "file.not_regular",
    FileBadName = "file.bad_name",
    FileTooLarge = "file.too_large",
    FileTooMany = "file.too_many",
    FileUnreadable = "file.unreadable",
    CvdBadHeader = "cvd.bad_header",
    CvdMd5Mismatch = "cvd.md5_mismatch",
    DbEmpty = "db.empty",
    DbMalformedLine = "db.malformed_line",
    SanityDowngrade = "sanity.downgrade",
    SanitySignatureDrop = "sanity.signature_drop",
    SanityMissingDatabase = "sanity.missing_database",
    CanaryLoadFailed = "canary.load_failed",
    CanaryLoadTimeout = "canary.load_timeout",
    CanaryMemoryBudget = "canary.memory_budget",
    CanaryCrashed = "canary.crashed",
    CanaryScanTimeout = "canary.scan_timeout",
    CanaryScanError = "canary.scan_error",
    CorpusMissed = "corpus.missed",
    CorpusRegression = "corpus.regression",
    CorpusFalsePositive = "corpus.false_positive",
    CorpusNameMismatch = "corpus.name_mismatch",
    KnownBad = "quarantined.known_bad",
    ProductionFailed = "production.verify_failed",
    OperatorRollback = "operator.rolled_back",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a candidate is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub reason: Code,
    /// The database file (or corpus sample) concerned, as the operator knows it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) file: Option<String>,
    pub(crate) message: String,
}

impl Reason {
    pub(crate) fn new(reason: Code, file: Option<&str>, message: impl Into<String>) -> Self {
        Reason { reason, file: file.map(str::to_string), message: message.into() }
    }

    pub(crate) fn file(reason: Code, file: &str, message: impl Into<String>) -> Self {
        Reason::new(reason, Some(file), message)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{file}: {} [{}]", self.message, self.reason),
            None => write!(f, "{} [{}]", self.message, self.reason),
        }
    }
}

impl Code {
    /// What the operator should do about it, one short sentence.
    pub(crate) fn hint(self) -> &'static str {
        use Code::*;
        match self {
            CandidateEmpty => "point clamgate at the directory freshclam writes to",
            FileSymlink | FileNotRegular | FileBadName => "remove it from the directory; only plain database files belong there",
            FileTooLarge | FileTooMany => "check the update source, or raise the limit in the policy if this is expected",
            FileUnreadable => "check the file's permissions for the clamgate user",
            CvdBadHeader | CvdMd5Mismatch => "a corrupt or interrupted download: let freshclam fetch it again",
            DbEmpty | DbMalformedLine => "fix or remove the file, or ask its publisher for a corrected one",
            SanityDowngrade => "check that freshclam uses an up-to-date mirror; set allow_downgrade to accept it",
            SanitySignatureDrop => "check the update source; raise max_signature_drop_percent if the drop is expected",
            SanityMissingDatabase => "check freshclam's configuration; a database should not vanish between updates",
            CanaryLoadFailed | CanaryCrashed => "the update breaks clamd: wait for the vendor's next update; production keeps the live release",
            CanaryLoadTimeout | CanaryMemoryBudget => {
                "the update is too heavy for this host's budget: raise load_timeout/memory_budget only if the host can afford it"
            }
            CanaryScanTimeout | CanaryScanError => "the update makes scanning fail or stall: wait for the vendor's next update",
            CorpusMissed | CorpusRegression => "the update loses detections: report it to the vendor, or update the corpus if the sample is obsolete",
            CorpusFalsePositive => "the update flags clean mail: report the false positive to the vendor, or add the signature to an .ign2 file",
            CorpusNameMismatch => "check expect.toml's pattern for that sample",
            KnownBad => "this exact candidate was rejected before; see `clamgate history`",
            ProductionFailed => "production clamd could not run it; see `clamgate history` and clamd's log",
            OperatorRollback => "an operator rolled it back; `clamgate promote --force ID` overrides",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_spelled_as_documented() {
        assert_eq!(Code::FileSymlink.as_str(), "file.symlink");
        assert_eq!(Code::CvdMd5Mismatch.to_string(), "cvd.md5_mismatch");
        let r = Reason::file(Code::FileSymlink, "daily.cvd", "is a symbolic link");
        assert_eq!(r.to_string(), "daily.cvd: is a symbolic link [file.symlink]");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["reason"], "file.symlink");
    }

    /// Every code writes and reads back as its documented string, and no two
    /// share one: scripts and the journal rely on them.
    #[test]
    fn every_code_round_trips_as_its_string() {
        let mut seen = std::collections::HashSet::new();
        for &c in Code::ALL {
            let json = serde_json::to_value(c).unwrap();
            assert_eq!(json, c.as_str());
            assert_eq!(serde_json::from_value::<Code>(json).unwrap(), c);
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert!(c.as_str().contains('.') && !c.hint().is_empty(), "{c}");
        }
        assert_eq!(seen.len(), 27, "a code was added or removed: update the README's list of reason codes");
    }
}
