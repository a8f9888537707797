//! Prometheus as Debian ships it: `promtool` for the rule files, and a real
//! server on a loopback port with its own storage that scrapes clamgate and
//! evaluates the shipped alert rules. Also the exposition side: what names
//! a `/metrics` page really exports.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::daemon::free_port;
use super::repo;

pub fn rules_path() -> PathBuf {
    repo().join("monitoring/prometheus/clamgate-rules.yml")
}

pub fn rules_tests_path() -> PathBuf {
    repo().join("monitoring/prometheus/clamgate-rules.test.yml")
}

pub fn dashboard_path() -> PathBuf {
    repo().join("monitoring/grafana/clamgate.json")
}

/// A Prometheus rule file, as much of it as clamgate's uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    pub expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl RuleFile {
    pub fn load(path: &Path) -> RuleFile {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{} is not a rule file: {e}", path.display()))
    }

    pub fn shipped() -> RuleFile {
        RuleFile::load(&rules_path())
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.groups.iter().flat_map(|g| &g.rules)
    }

    pub fn rules_mut(&mut self) -> impl Iterator<Item = &mut Rule> {
        self.groups.iter_mut().flat_map(|g| &mut g.rules)
    }

    pub fn write(&self, path: &Path) {
        fs::write(path, serde_norway::to_string(self).unwrap()).unwrap();
    }
}

/// Runs `promtool args…`; returns whether it succeeded and all it printed.
pub fn promtool(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new("promtool").args(args).output().expect("promtool runs (scripts/install-deps installs prometheus)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// One HTTP/1.0 GET (so no chunked body): status code and body.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The sample names a `/metrics` page exports: every sample line's name,
/// and every name its `# TYPE` lines declare (a counter's `_total`, an
/// info's `_info`, a histogram's `_bucket`, `_sum` and `_count`), so a
/// family counts even before its first observation.
pub fn exported_names(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", ""],
                "info" => &["_info"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// An alert as `/api/v1/alerts` lists it (pending or firing).
#[derive(Debug, Clone, Deserialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub state: String,
}

/// A real Prometheus server, killed and reaped on drop, its storage with it.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes each `(job, address)` and evaluates `rules`, both every second.
    pub fn start(targets: &[(&str, SocketAddr)], rules: &RuleFile) -> Prometheus {
        let dir = tempfile::Builder::new().prefix("prometheus-").tempdir_in("/tmp").unwrap();
        rules.write(&dir.path().join("rules.yml"));
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!("  - job_name: {job}\n    static_configs: [{{targets: ['{addr}']}}]\n"));
        }
        fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr = free_port();
        let log = fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (scripts/install-deps installs it)");
        // Owned at once, so a panic below still kills and reaps it.
        let p = Prometheus { child, addr, dir };
        for _ in 0..1200 {
            if matches!(get(addr, "/-/ready"), Ok((200, _))) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("prometheus never became ready on {addr}:\n{}", p.log());
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the API, its `data` field.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (code, body) = get(self.addr, path).unwrap_or_else(|e| panic!("GET {path} from prometheus: {e}\n{}", self.log()));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {code}, not JSON ({e}): {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {v:#}");
        v["data"].clone()
    }

    pub fn alerts(&self) -> Vec<Alert> {
        serde_json::from_value(self.api("/api/v1/alerts")["alerts"].clone()).expect("alerts as the API documents them")
    }

    /// The current alert `name` for `job`, if pending or firing.
    pub fn alert(&self, name: &str, job: &str) -> Option<Alert> {
        self.alerts().into_iter().find(|a| a.labels.get("alertname").map(String::as_str) == Some(name) && a.labels.get("job").map(String::as_str) == Some(job))
    }

    /// The value of an instant query whose answer is one sample.
    pub fn value(&self, expr: &str) -> Option<f64> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)));
        data["result"].as_array().filter(|r| r.len() == 1).and_then(|r| r[0]["value"][1].as_str()?.parse().ok())
    }

    /// Polls `cond` (each try may also act, e.g. send mail) until it holds;
    /// the bound only catches a hang, and the failure says what Prometheus saw.
    pub async fn wait(&self, what: &str, context: impl Fn() -> String, mut cond: impl AsyncFnMut(&Prometheus) -> bool) {
        for _ in 0..720 {
            if cond(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "gave up waiting for: {what}\nalerts: {:#?}\ntargets: {:#}\nrules: {:#}\n{}\nprometheus log:\n{}",
            self.alerts(),
            self.api("/api/v1/targets")["activeTargets"],
            self.api("/api/v1/rules"),
            context(),
            self.log()
        );
    }

    /// Waits until every target has been scraped and is up.
    pub async fn wait_targets_up(&self, context: impl Fn() -> String) {
        self.wait("every target scraped and up", context, async |p| {
            let targets = p.api("/api/v1/targets")["activeTargets"].clone();
            targets.as_array().is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["health"] == "up"))
        })
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}
