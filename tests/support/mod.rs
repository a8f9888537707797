//! Shared test harness: generated fixtures and real clamd processes on
//! temporary sockets. Every process started here dies with its handle.
#![allow(dead_code)]

pub mod cgroup;
pub mod daemon;
pub mod fleet;
pub mod managed;
pub mod metrics;
pub mod milter;
pub mod postfix;
pub mod prometheus;
pub mod promql;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use clamgate::clamd::Client;
use clamgate::clamd::process::{ClamdProcess, Options, StartError};
use sha2::{Digest, Sha256};

/// Generous bound for a test-sized clamd to load; only a hang hits it.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The generated fixtures (see testdata/README.md), built once per content
/// of `testdata/` and shared by every test binary under a file lock.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = repo().join("testdata");
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(tmp).unwrap();
        let out = tmp.join(format!("fixtures-{}", tree_digest(&src)));
        let lock = fs::File::create(tmp.join("fixtures.lock")).unwrap();
        lock.lock().unwrap();
        if !out.exists() {
            let status = Command::new(src.join("make-fixtures")).arg(&out).status().expect("run testdata/make-fixtures");
            assert!(status.success(), "testdata/make-fixtures failed: {status}");
        }
        out
    })
}

pub fn set(name: &str) -> PathBuf {
    let p = fixtures().join("sets").join(name);
    assert!(p.is_dir(), "no fixture set {name}");
    p
}

pub fn corpus() -> PathBuf {
    fixtures().join("corpus")
}

pub fn sample(rel: &str) -> PathBuf {
    let p = corpus().join(rel);
    assert!(p.is_file(), "no corpus sample {rel}");
    p
}

fn tree_digest(dir: &Path) -> String {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { files.push(p) }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.strip_prefix(dir).unwrap().to_string_lossy().as_bytes());
        h.update(fs::read(&f).unwrap());
    }
    hex::encode(&h.finalize()[..6])
}

/// A real clamd on a temporary socket. Killed and reaped on drop.
pub struct Clamd {
    // Declared before `dir` so clamd dies before its directory goes.
    pub process: ClamdProcess,
    dir: tempfile::TempDir,
}

impl Clamd {
    pub async fn start(db_dir: &Path) -> Result<Clamd, StartError> {
        Self::start_with(db_dir, |_| {}).await
    }

    pub async fn start_with(db_dir: &Path, tweak: impl FnOnce(&mut Options)) -> Result<Clamd, StartError> {
        let dir = tempfile::Builder::new().prefix("clamd-").tempdir_in("/tmp").unwrap();
        let mut opts = Options::new(db_dir, dir.path());
        tweak(&mut opts);
        let process = ClamdProcess::start(opts, START_TIMEOUT).await?;
        Ok(Clamd { process, dir })
    }

    /// A clamd whose socket is `work_dir/clamd.sock`, known before it starts
    /// (production in daemon tests, whose config names the socket).
    pub async fn start_in(db_dir: &Path, work_dir: &Path, extra: &[&str]) -> Result<Clamd, StartError> {
        let dir = tempfile::Builder::new().prefix("clamd-").tempdir_in("/tmp").unwrap();
        std::fs::create_dir_all(work_dir).unwrap();
        let mut opts = Options::new(db_dir, work_dir);
        opts.extra_config = extra.iter().map(|s| s.to_string()).collect();
        let process = ClamdProcess::start(opts, START_TIMEOUT).await?;
        Ok(Clamd { process, dir })
    }

    pub fn client(&self) -> Client {
        self.process.client(CALL_TIMEOUT)
    }

    pub fn socket(&self) -> &Path {
        self.process.socket()
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Points `link` at `target` atomically: a new symlink renamed over the old,
/// as production's `current` is swapped.
pub fn swap_symlink(target: &Path, link: &Path) {
    let tmp = link.with_extension("new");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    fs::rename(&tmp, link).unwrap();
}

/// Waits (bounded) until `cond` holds; a failure bound, not a speed limit.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gave up waiting for: {what}");
}

/// Counts clamd processes whose config lives under `dir`, to prove none leaked.
pub fn clamds_under(dir: &Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.contains("clamd") && c.contains(&needle)
        })
        .count()
}

/// The real `clamgate` binary with a clean environment and its own TMPDIR,
/// so the test can prove no clamd outlives the command.
pub struct Cmd {
    pub tmp: tempfile::TempDir,
}

impl Cmd {
    pub fn new() -> Cmd {
        let tmp = tempfile::Builder::new().prefix("cg-").tempdir_in("/tmp").unwrap();
        // A config of its own: never /etc/clamgate (the package test installs one for a while).
        fs::write(tmp.path().join("clamgate.toml"), format!("policy = \"{}\"\n", repo().join("policies/default.toml").display())).unwrap();
        Cmd { tmp }
    }

    pub fn command(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("clamgate").unwrap();
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TMPDIR", self.tmp.path())
            .env("CLAMGATE_CONFIG", self.tmp.path().join("clamgate.toml"))
            .timeout(Duration::from_secs(300));
        c
    }

    /// Runs `clamgate args…`; returns exit code, stdout, stderr.
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command().args(args).output().unwrap();
        assert_eq!(clamds_under(self.tmp.path()), 0, "a clamd outlived `clamgate {}`", args.join(" "));
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs `clamgate args… --json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = self.run(&all);
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {err}"));
        (code, v)
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
}

/// Reason codes of a `--json` report.
pub fn reason_codes(report: &serde_json::Value) -> Vec<String> {
    report["reasons"].as_array().map_or_else(Vec::new, |a| a.iter().map(|r| r["reason"].as_str().unwrap().to_string()).collect())
}

/// A journal entry's field by name, as the JSON on disk has it: tests read
/// the journal the way operators' scripts do.
pub trait Field {
    fn json(&self) -> serde_json::Value;

    fn get(&self, key: &str) -> Option<String> {
        self.json().get(key).and_then(|f| f.as_str().map(str::to_string))
    }
}

impl Field for clamgate::journal::Entry {
    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("journal entries serialize")
    }
}
