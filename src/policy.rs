//! The gate's thresholds (`policies/*.toml`), loaded and checked once.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::settings::{Fields, SettingsError};

/// The policy shipped in `policies/default.toml`, also used when no policy
/// file is given, so the documented file and the built-in defaults agree.
pub(crate) const DEFAULT_TOML: &str = include_str!("../policies/default.toml");

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    pub(crate) load_timeout: Duration,
    pub(crate) memory_budget: u64,
    pub(crate) scan_timeout: Duration,
    pub(crate) scan_parallelism: usize,
    pub(crate) allowed_false_positives: usize,
    pub(crate) allowed_regressions: usize,
    pub(crate) max_signature_drop_percent: f64,
    pub(crate) allow_downgrade: bool,
    pub(crate) keep_releases: usize,
    pub(crate) max_file_size: u64,
    pub(crate) max_files: usize,
    pub(crate) max_database_age: Duration,
    pub(crate) isolation: Isolation,
    pub(crate) max_bisect_runs: u32,
}

/// What a failed candidate costs: only its bad files (`file`) or all of it (`set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Isolation {
    File,
    Set,
}

impl std::str::FromStr for Isolation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "file" => Ok(Isolation::File),
            "set" => Ok(Isolation::Set),
            other => Err(format!("{other:?} is not one of \"file\", \"set\"")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PolicyError {
    #[error("cannot read policy {file}: {source}")]
    Read {
        file: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy {0}")]
    Invalid(#[from] SettingsError),
}

impl Default for Policy {
    fn default() -> Self {
        Policy::parse(Path::new("policies/default.toml"), DEFAULT_TOML).expect("the shipped policy is valid")
    }
}

impl Policy {
    pub(crate) fn load(file: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(file).map_err(|source| PolicyError::Read { file: file.to_path_buf(), source })?;
        Ok(Policy::parse(file, &text)?)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Policy, SettingsError> {
        let mut f = Fields::parse(file, text)?;
        let policy = Policy {
            load_timeout: f.duration("load_timeout", "180s"),
            memory_budget: f.size("memory_budget", "3GiB"),
            scan_timeout: f.duration("scan_timeout", "10s"),
            scan_parallelism: f.int("scan_parallelism", 4, 1..=64) as usize,
            allowed_false_positives: f.int("allowed_false_positives", 0, 0..=1_000_000) as usize,
            allowed_regressions: f.int("allowed_regressions", 0, 0..=1_000_000) as usize,
            max_signature_drop_percent: f.float("max_signature_drop_percent", 5.0, 0.0..=100.0),
            allow_downgrade: f.bool("allow_downgrade", false),
            keep_releases: f.int("keep_releases", 5, 2..=1000) as usize,
            max_file_size: f.size("max_file_size", "1GiB"),
            max_files: f.int("max_files", 200, 1..=100_000) as usize,
            max_database_age: f.duration("max_database_age", "3d"),
            isolation: f.choice("isolation", Isolation::File),
            max_bisect_runs: f.int("max_bisect_runs", 16, 0..=1000) as u32,
        };
        f.finish(file)?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_matches_built_in_defaults() {
        let empty = Policy::parse(Path::new("empty.toml"), "").unwrap();
        assert_eq!(Policy::default(), empty, "policies/default.toml and the code's defaults disagree");
    }

    #[test]
    fn bad_keys_are_named() {
        let cases = [
            ("load_timeout = \"forever\"", "load_timeout: invalid duration"),
            ("memory_budget = \"lots\"", "memory_budget: invalid size"),
            ("keep_releases = 1", "keep_releases: 1 is out of range"),
            ("max_signature_drop_percent = 150", "max_signature_drop_percent: 150 is out of range"),
            ("allow_downgrade = \"yes\"", "allow_downgrade: expected true or false"),
            ("alow_downgrade = true", "alow_downgrade: unknown key"),
            ("load_timeout = ", "not valid TOML"),
            ("isolation = \"files\"", "isolation: \"files\" is not one of"),
        ];
        for (text, want) in cases {
            let err = Policy::parse(Path::new("/etc/clamgate/p.toml"), text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("/etc/clamgate/p.toml"), "{err}");
        }
    }
}
