//! The corpus: samples that must be detected (`infected/`) or must stay
//! clean (`clean/`), scanned through a canary and judged against those
//! expectations and against the live release's verdicts on the same files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clamd::{ClamdError, Client, ScanVerdict};
use crate::policy::Policy;
use crate::reason::{Code, Reason};
use crate::settings::Fields;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Expect {
    Infected,
    Clean,
}

#[derive(Debug, Clone)]
pub struct Sample {
    /// Path relative to the corpus root, e.g. `infected/archives/clam.zip`.
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) expect: Expect,
    /// From `expect.toml`: the signature name must match.
    pub(crate) pattern: Option<Regex>,
}

#[derive(Debug, Clone)]
pub struct Corpus {
    pub(crate) dir: PathBuf,
    pub samples: Vec<Sample>,
    /// Over names and contents: baseline verdicts are cached per digest.
    pub(crate) digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("corpus {dir}: {problem}")]
    Layout { dir: PathBuf, problem: String },
    #[error("corpus {file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corpus {0}")]
    Expect(#[from] crate::settings::SettingsError),
}

impl Corpus {
    pub fn load(dir: &Path) -> Result<Corpus, CorpusError> {
        let layout = |problem: String| CorpusError::Layout { dir: dir.to_path_buf(), problem };
        if !dir.is_dir() {
            return Err(layout("is not a directory (pass --corpus DIR, or set corpus_dir)".into()));
        }
        let mut samples = Vec::new();
        for (sub, expect) in [("infected", Expect::Infected), ("clean", Expect::Clean)] {
            let root = dir.join(sub);
            if !root.is_dir() {
                return Err(layout(format!("has no {sub}/ directory")));
            }
            walk(&root, &mut |path, real| {
                let name = path.strip_prefix(dir).unwrap_or(path).to_string_lossy().into_owned();
                samples.push(Sample { name, path: real, expect, pattern: None });
            })
            .map_err(|(file, source)| CorpusError::Read { file, source })?;
        }
        if !samples.iter().any(|s| s.expect == Expect::Infected) || !samples.iter().any(|s| s.expect == Expect::Clean) {
            return Err(layout("needs at least one sample in infected/ and one in clean/".into()));
        }
        samples.sort_by(|a, b| a.name.cmp(&b.name));
        let expect_file = dir.join("expect.toml");
        if expect_file.exists() {
            apply_expectations(&expect_file, &mut samples)?;
        }
        let digest = digest(&samples)?;
        Ok(Corpus { dir: dir.to_path_buf(), samples, digest })
    }
}

/// Sets each sample's signature-name pattern from `expect.toml`, collecting
/// every problem (bad patterns, names not in the corpus) before failing.
fn apply_expectations(expect_file: &Path, samples: &mut [Sample]) -> Result<(), CorpusError> {
    let text = fs::read_to_string(expect_file).map_err(|source| CorpusError::Read { file: expect_file.to_path_buf(), source })?;
    let mut f = Fields::parse(expect_file, &text)?;
    f.section("signatures", |s| {
        for sample in samples.iter_mut() {
            if let Some(p) = s.opt_string(&sample.name) {
                match Regex::new(&p) {
                    Ok(re) => sample.pattern = Some(re),
                    Err(e) => s.problem(&sample.name, format_args!("bad pattern: {e}")),
                }
            }
        }
    });
    // Keys left over name files that are not in the corpus.
    f.finish(expect_file).map_err(|mut e| {
        for p in &mut e.problems {
            if p.text.ends_with("unknown key") {
                p.text = p.text.replace("unknown key", "no such sample in the corpus");
            }
        }
        e.into()
    })
}

/// Over names and contents, so an edited sample invalidates cached baselines.
fn digest(samples: &[Sample]) -> Result<String, CorpusError> {
    let mut h = Sha256::new();
    for s in samples {
        h.update(s.name.as_bytes());
        h.update([0]);
        h.update(fs::read(&s.path).map_err(|source| CorpusError::Read { file: s.path.clone(), source })?);
    }
    Ok(hex::encode(&h.finalize()[..8]))
}

/// Calls `f(name_path, real_path)` for each sample file under `dir`, sorted.
fn walk(dir: &Path, f: &mut impl FnMut(&Path, PathBuf)) -> Result<(), (PathBuf, std::io::Error)> {
    let mut entries: Vec<_> = fs::read_dir(dir).map_err(|e| (dir.to_path_buf(), e))?.collect::<Result<_, _>>().map_err(|e| (dir.to_path_buf(), e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type().map_err(|err| (path.clone(), err))?;
        if ft.is_dir() {
            walk(&path, f)?;
        } else if ft.is_file() {
            f(&path, path.clone());
        } else if ft.is_symlink() {
            // The packaged corpus links its infected samples into Debian's
            // clamav-testfiles. A link to a file is that file (scanned at its
            // real path); a link to a directory could loop and a dangling one
            // is a sample that cannot be scanned: both are errors, never
            // silently skipped.
            let target = fs::canonicalize(&path).map_err(|err| (path.clone(), err))?;
            if !fs::metadata(&target).map_err(|err| (path.clone(), err))?.is_file() {
                return Err((path, std::io::Error::other("a link to something other than a regular file")));
            }
            f(&path, target);
        }
    }
    Ok(())
}

/// What one scan of one sample gave; failures are kept as text so verdicts
/// can be cached and journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Outcome {
    Clean,
    Infected(String),
    /// clamd answered with an error for this sample.
    Error(String),
    Timeout,
    /// clamd could not be reached (it died).
    Unreachable(String),
}

impl From<Result<ScanVerdict, ClamdError>> for Outcome {
    fn from(r: Result<ScanVerdict, ClamdError>) -> Self {
        match r {
            Ok(ScanVerdict::Clean) => Outcome::Clean,
            Ok(ScanVerdict::Infected(s)) => Outcome::Infected(s),
            Ok(ScanVerdict::Error(e)) => Outcome::Error(e),
            Err(ClamdError::Timeout { .. }) => Outcome::Timeout,
            Err(e) => Outcome::Unreachable(e.to_string()),
        }
    }
}

impl Outcome {
    pub(crate) fn detected(&self) -> bool {
        matches!(self, Outcome::Infected(_))
    }
}

/// Verdicts by sample name.
pub(crate) type Verdicts = BTreeMap<String, Outcome>;

/// Scans every sample, at most `parallelism` at once, each bounded by
/// `timeout`.
pub async fn scan(client: &Client, corpus: &Corpus, parallelism: usize, timeout: Duration) -> Verdicts {
    let client = client.with_timeout(timeout);
    let permits = Arc::new(tokio::sync::Semaphore::new(parallelism.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for s in &corpus.samples {
        let (client, permits, name, path) = (client.clone(), permits.clone(), s.name.clone(), s.path.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (name, Outcome::from(client.scan_file(&path).await))
        });
    }
    let mut out = Verdicts::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok((name, outcome)) = done {
            out.insert(name, outcome);
        }
    }
    out
}

/// One sample's line in the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SampleResult {
    pub(crate) sample: String,
    pub(crate) expect: Expect,
    pub(crate) outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline: Option<Outcome>,
    pub(crate) ok: bool,
}

#[derive(Debug, Default)]
pub struct Judgement {
    /// Reasons that reject the candidate.
    pub reasons: Vec<Reason>,
    /// Findings within the policy's allowances.
    pub(crate) warnings: Vec<Reason>,
    pub(crate) samples: Vec<SampleResult>,
}

/// Compares the canary's verdicts with the corpus's expectations and, when
/// given, with the live release's verdicts. Pure.
pub fn judge(corpus: &Corpus, verdicts: &Verdicts, baseline: Option<&Verdicts>, policy: &Policy) -> Judgement {
    let mut j = Judgement::default();
    let (mut fps, mut losses) = (Vec::new(), Vec::new());
    for s in &corpus.samples {
        let outcome = verdicts.get(&s.name).cloned().unwrap_or(Outcome::Unreachable("not scanned".into()));
        let before = baseline.and_then(|b| b.get(&s.name)).cloned();
        let finding = judge_sample(s, &outcome, before.as_ref(), policy);
        let ok = finding.is_none();
        match finding {
            Some(Finding::FalsePositive(r)) => fps.push(r),
            Some(Finding::Lost(r)) => losses.push(r),
            Some(Finding::Reject(r)) => j.reasons.push(r),
            None => {}
        }
        j.samples.push(SampleResult { sample: s.name.clone(), expect: s.expect, outcome, baseline: before, ok });
    }
    allow(&mut j, fps, policy.allowed_false_positives, "false positives");
    allow(&mut j, losses, policy.allowed_regressions, "lost detections");
    j
}

/// What is wrong with one sample's outcome, sorted by whether the policy
/// can allow it.
enum Finding {
    /// Counted against `allowed_false_positives`.
    FalsePositive(Reason),
    /// Counted against `allowed_regressions`.
    Lost(Reason),
    /// Never allowed.
    Reject(Reason),
}

/// One sample against its expectation and, if known, the live release's
/// outcome; `None` when it is as it should be.
fn judge_sample(s: &Sample, outcome: &Outcome, before: Option<&Outcome>, policy: &Policy) -> Option<Finding> {
    let file = Some(s.name.as_str());
    let finding = match (outcome, s.expect) {
        (Outcome::Timeout, _) => {
            Finding::Reject(Reason::new(Code::CanaryScanTimeout, file, format!("scan took longer than the policy's scan_timeout of {:?}", policy.scan_timeout)))
        }
        (Outcome::Error(e), _) => Finding::Reject(Reason::new(Code::CanaryScanError, file, format!("clamd could not scan it: {e}"))),
        (Outcome::Unreachable(e), _) => Finding::Reject(Reason::new(Code::CanaryCrashed, file, format!("canary stopped answering: {e}"))),
        (Outcome::Infected(sig), Expect::Clean) => {
            let also = if before.is_some_and(Outcome::detected) { " (the live release flags it too)" } else { "" };
            Finding::FalsePositive(Reason::new(Code::CorpusFalsePositive, file, format!("clean sample detected as {sig}{also}")))
        }
        (Outcome::Clean, Expect::Infected) => Finding::Lost(match before {
            Some(Outcome::Infected(old)) => Reason::new(Code::CorpusRegression, file, format!("no longer detected (the live release detects it as {old})")),
            _ => Reason::new(Code::CorpusMissed, file, "infected sample not detected"),
        }),
        (Outcome::Infected(sig), Expect::Infected) => {
            let re = s.pattern.as_ref().filter(|re| !re.is_match(sig))?;
            Finding::Reject(Reason::new(
                Code::CorpusNameMismatch,
                file,
                format!("detected as {sig}, which does not match expect.toml's pattern {:?}", re.as_str()),
            ))
        }
        (Outcome::Clean, Expect::Clean) => return None,
    };
    Some(finding)
}

/// Findings beyond the policy's allowance reject; within it, they warn.
fn allow(j: &mut Judgement, found: Vec<Reason>, allowed: usize, what: &str) {
    if found.len() > allowed {
        j.reasons.extend(found);
    } else if !found.is_empty() {
        tracing::debug!("{} {what} within the policy's allowance of {allowed}", found.len());
        j.warnings.extend(found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Corpus {
        let s = |name: &str, expect, pattern: Option<&str>| Sample {
            name: name.into(),
            path: PathBuf::new(),
            expect,
            pattern: pattern.map(|p| Regex::new(p).unwrap()),
        };
        Corpus {
            dir: PathBuf::new(),
            samples: vec![s("infected/a", Expect::Infected, Some("^Good\\.")), s("infected/b", Expect::Infected, None), s("clean/c", Expect::Clean, None)],
            digest: String::new(),
        }
    }

    fn v(a: Outcome, b: Outcome, c: Outcome) -> Verdicts {
        [("infected/a", a), ("infected/b", b), ("clean/c", c)].into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn inf(s: &str) -> Outcome {
        Outcome::Infected(s.into())
    }

    #[test]
    fn table() {
        use Outcome::*;
        let p = Policy::default();
        let one_fp = Policy { allowed_false_positives: 1, ..Policy::default() };
        let base = v(inf("Good.A"), inf("Good.B"), Clean);
        // (name, verdicts, baseline, policy, reasons, warnings)
        type Case<'a> = (&'a str, Verdicts, Option<&'a Verdicts>, &'a Policy, Vec<Code>, usize);
        let cases: Vec<Case> = vec![
            ("all as expected", v(inf("Good.A"), inf("X"), Clean), None, &p, vec![], 0),
            ("false positive", v(inf("Good.A"), inf("X"), inf("Oops")), None, &p, vec![Code::CorpusFalsePositive], 0),
            ("false positive allowed", v(inf("Good.A"), inf("X"), inf("Oops")), None, &one_fp, vec![], 1),
            ("missed without baseline", v(inf("Good.A"), Clean, Clean), None, &p, vec![Code::CorpusMissed], 0),
            ("lost against baseline", v(inf("Good.A"), Clean, Clean), Some(&base), &p, vec![Code::CorpusRegression], 0),
            ("wrong name", v(inf("Bad.A"), inf("X"), Clean), None, &p, vec![Code::CorpusNameMismatch], 0),
            ("scan error", v(Error("boom".into()), inf("X"), Clean), None, &p, vec![Code::CanaryScanError], 0),
            ("timeout", v(inf("Good.A"), Timeout, Clean), None, &p, vec![Code::CanaryScanTimeout], 0),
            ("died", v(inf("Good.A"), inf("X"), Unreachable("gone".into())), None, &p, vec![Code::CanaryCrashed], 0),
        ];
        for (what, verdicts, baseline, policy, want, warnings) in cases {
            let j = judge(&corpus(), &verdicts, baseline, policy);
            let got: Vec<Code> = j.reasons.iter().map(|r| r.reason).collect();
            assert_eq!(got, want, "{what}");
            assert_eq!(j.warnings.len(), warnings, "{what}");
            assert_eq!(j.samples.iter().filter(|s| !s.ok).count() > 0, !want.is_empty() || warnings > 0, "{what}");
        }
    }

    /// The packaged corpus links into /usr/share/clamav-testfiles; the loader
    /// used to skip every link without a word, leaving infected/ empty.
    #[test]
    fn links_to_files_are_samples_and_dangling_links_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["infected", "clean", "elsewhere"] {
            fs::create_dir(root.join(sub)).unwrap();
        }
        fs::write(root.join("elsewhere/clam.exe"), b"sample").unwrap();
        fs::write(root.join("clean/letter.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere/clam.exe"), root.join("infected/clam.exe")).unwrap();
        let c = Corpus::load(root).unwrap();
        let s = c.samples.iter().find(|s| s.name == "infected/clam.exe").expect("the link is a sample");
        assert_eq!(s.path, fs::canonicalize(root.join("elsewhere/clam.exe")).unwrap());
        std::os::unix::fs::symlink(root.join("elsewhere/gone"), root.join("infected/gone.exe")).unwrap();
        let err = Corpus::load(root).unwrap_err().to_string();
        assert!(err.contains("infected/gone.exe"), "{err}");
    }

    #[test]
    fn a_missing_verdict_is_never_taken_as_clean() {
        let j = judge(&corpus(), &Verdicts::new(), None, &Policy::default());
        assert_eq!(j.reasons.len(), 3);
    }
}
