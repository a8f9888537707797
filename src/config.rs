//! `clamgate.toml`: where things live and how to reach the production clamd.
//! Every key has a default (the [`defaults`] table, and the README's
//! "Configuration"); unknown keys and bad values are errors that name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clamd::Endpoint;
use crate::milter::{MilterMode, OnInfected, Stage};
use crate::settings::{Fields, SettingsError};

/// Where things live when the config does not say: the one table every
/// default path comes from (config keys, CLI flags, messages).
pub(crate) mod defaults {
    pub(crate) const CONFIG: &str = "/etc/clamgate/clamgate.toml";
    pub(crate) const STATE_DIR: &str = "/var/lib/clamgate";
    /// Where freshclam writes.
    pub(crate) const INCOMING_DIR: &str = "/var/lib/clamav";
    pub(crate) const CORPUS_DIR: &str = "/usr/share/clamgate/corpus";
    pub(crate) const POLICY: &str = "/etc/clamgate/policies/default.toml";
    /// Debian's clamd `LocalSocket`.
    pub(crate) const CLAMD_SOCKET: &str = "/run/clamav/clamd.ctl";
    pub(crate) const CLAMD_BINARY: &str = "/usr/sbin/clamd";
    /// Debian's clamd config, production's in managed mode.
    pub(crate) const CLAMD_CONF: &str = "/etc/clamav/clamd.conf";
    /// The health endpoint, and where the milter asks it.
    pub(crate) const HEALTH_LISTEN: &str = "127.0.0.1:3311";
    pub(crate) const HEALTH_URL: &str = "http://127.0.0.1:3311/readyz";
    /// The milter's socket: Postfix's `smtpd_milters` must name the same.
    /// Under Postfix's queue directory, so a chrooted smtpd reaches it as
    /// `unix:clamgate/milter.sock` (systemd/postfix/main.cf).
    pub(crate) const MILTER_LISTEN: &str = "unix:/var/spool/postfix/clamgate/milter.sock";
    /// The milter's own `/metrics` (loopback: it tells nothing outsiders need).
    pub(crate) const MILTER_METRICS_LISTEN: &str = "127.0.0.1:3313";
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (for messages).
    pub(crate) file: Option<PathBuf>,
    pub(crate) state_dir: PathBuf,
    pub(crate) incoming_dir: PathBuf,
    pub(crate) corpus_dir: PathBuf,
    pub(crate) policy: PolicyFile,
    /// Quiet time before a change in incoming_dir becomes a candidate.
    pub(crate) settle: Duration,
    /// Full rescan of incoming_dir, so a missed file event only delays.
    pub(crate) rescan_interval: Duration,
    /// Corpus samples scanned through production after a promotion and by the
    /// health prober: at least one under infected/ and one under clean/.
    /// `None`: chosen from the corpus ([`crate::production::smoke_samples`]).
    pub(crate) smoke_samples: Option<Vec<String>>,
    pub(crate) clamd: ClamdConfig,
    pub(crate) health: HealthConfig,
    pub(crate) milter: MilterConfig,
    /// `[memory_guard]`: when a canary must wait for memory.
    pub(crate) memory_guard: crate::memguard::GuardConfig,
    /// The gate publishes its releases to a fleet (`[publish]`).
    pub(crate) publish: Option<crate::fleet::config::PublishConfig>,
    /// A fleet host follows a gate's ring instead of `incoming_dir` (`[source]`).
    pub(crate) source: Option<crate::fleet::config::SourceConfig>,
}

/// Which policy applies. A policy the config names must exist: a typo must
/// not run on thresholds the operator never chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PolicyFile {
    /// No `policy` key: [`defaults::POLICY`] if it exists, else the built-in
    /// defaults (the same rule as for the config file itself).
    Default,
    Named(PathBuf),
}

impl PolicyFile {
    /// The file the thresholds come from; `None` for the built-in defaults.
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            PolicyFile::Named(p) => Some(p),
            PolicyFile::Default => Some(Path::new(defaults::POLICY)).filter(|p| p.exists()),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ClamdConfig {
    pub(crate) endpoint: Endpoint,
    /// clamd binary started for canaries.
    pub(crate) binary: PathBuf,
    /// Bound on every command to production clamd.
    pub(crate) timeout: Duration,
    /// How long production may take to show a new release after RELOAD.
    pub(crate) reload_timeout: Duration,
    /// `managed = true`: clamgate runs production clamd itself from `conf`.
    pub(crate) managed: bool,
    /// The operator's `clamd.conf`; in managed mode its `LocalSocket` is the
    /// production socket.
    pub(crate) conf: PathBuf,
}

#[derive(Debug, Clone)]
pub(crate) struct HealthConfig {
    pub(crate) listen: String,
    pub(crate) probe_interval: Duration,
    /// Probe scans slower than this make readiness `warn`.
    pub(crate) latency_budget: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct MilterConfig {
    pub(crate) listen: String,
    pub(crate) health_url: String,
    /// `gate` (tempfail when scanning is unhealthy) or `scan` (also scan).
    pub(crate) mode: MilterMode,
    /// `connect` or `rcpt`: where an unhealthy scan tempfails the session.
    pub(crate) stage: Stage,
    /// Text of the 451 4.7.1 reply.
    pub(crate) tempfail_text: String,
    /// How long one /readyz answer is trusted.
    pub(crate) health_ttl: Duration,
    /// Bound on one /readyz request.
    pub(crate) health_timeout: Duration,
    /// In scan mode, what to do with infected mail: `reject`, `quarantine`, `header`.
    pub(crate) on_infected: OnInfected,
    /// In scan mode, add `X-Virus-Scanned: clamgate (release ID)`.
    pub(crate) add_header: bool,
    pub(crate) max_connections: usize,
    /// `HOST:PORT` of the milter's `/metrics`; `None` when set to "".
    pub(crate) metrics_listen: Option<String>,
    /// `unix:PATH` or `inet:HOST:PORT` of the gate as a Postfix policy
    /// service; `None` (the default, or "") for none.
    pub(crate) policy_listen: Option<String>,
}

impl ClamdConfig {
    fn parse(s: &mut Fields) -> ClamdConfig {
        let endpoint = match (s.opt_string("socket"), s.opt_string("tcp")) {
            (Some(_), Some(_)) => {
                s.problem("tcp", "set socket or tcp, not both");
                Endpoint::Unix(defaults::CLAMD_SOCKET.into())
            }
            (_, Some(t)) => Endpoint::Tcp(t),
            (Some(p), None) => Endpoint::Unix(p.into()),
            (None, None) => Endpoint::Unix(defaults::CLAMD_SOCKET.into()),
        };
        let managed = s.bool("managed", false);
        if managed && matches!(endpoint, Endpoint::Tcp(_)) {
            s.problem("tcp", "managed mode serves the LocalSocket of clamd.conf only; remove tcp (see the README on TCP clients)");
        }
        ClamdConfig {
            endpoint,
            binary: s.path("binary", defaults::CLAMD_BINARY),
            timeout: s.duration("timeout", "30s"),
            reload_timeout: s.duration("reload_timeout", "300s"),
            managed,
            conf: s.path("conf", defaults::CLAMD_CONF),
        }
    }
}

impl ClamdConfig {
    /// Where production clamd answers: in managed mode the `LocalSocket` of
    /// `conf` (read now; if it cannot be used, `socket`, and the daemon
    /// refuses to start on it, naming the problem), else `socket` or `tcp`.
    pub(crate) fn production_endpoint(&self) -> Endpoint {
        if self.managed
            && let Ok(c) = crate::managed::ClamdConf::load(&self.conf)
        {
            return Endpoint::Unix(c.production_socket);
        }
        self.endpoint.clone()
    }
}

impl HealthConfig {
    fn parse(s: &mut Fields) -> HealthConfig {
        HealthConfig {
            listen: s.string("listen", defaults::HEALTH_LISTEN),
            probe_interval: s.duration("probe_interval", "10s"),
            latency_budget: s.duration("latency_budget", "500ms"),
        }
    }
}

impl MilterConfig {
    fn parse(s: &mut Fields) -> MilterConfig {
        MilterConfig {
            listen: s.string("listen", defaults::MILTER_LISTEN),
            health_url: s.string("health_url", defaults::HEALTH_URL),
            mode: s.choice("mode", MilterMode::Gate),
            stage: s.choice("stage", Stage::Rcpt),
            tempfail_text: s.string("tempfail_text", "Virus scanning is temporarily unavailable, please try again later"),
            health_ttl: s.duration("health_ttl", "2s"),
            health_timeout: s.duration("health_timeout", "1s"),
            on_infected: s.choice("on_infected", OnInfected::Reject),
            add_header: s.bool("add_header", true),
            max_connections: s.int("max_connections", 200, 1..=10_000) as usize,
            metrics_listen: Some(s.string("metrics_listen", defaults::MILTER_METRICS_LISTEN)).filter(|l| !l.is_empty()),
            policy_listen: s.opt_string("policy_listen").filter(|l| !l.is_empty()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read config {file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {0}")]
    Invalid(#[from] SettingsError),
}

impl Config {
    /// `--config F`, else `$CLAMGATE_CONFIG`, else the default path; the
    /// default path may be missing (all defaults), an explicit one may not.
    pub(crate) fn locate(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let chosen = explicit.map(Path::to_path_buf).or_else(|| std::env::var_os("CLAMGATE_CONFIG").map(PathBuf::from));
        match chosen {
            Some(f) => Config::load(&f),
            None if Path::new(defaults::CONFIG).exists() => Config::load(Path::new(defaults::CONFIG)),
            None => Ok(Config::parse(Path::new("(defaults)"), "").map(|mut c| {
                c.file = None;
                c
            })?),
        }
    }

    pub(crate) fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.to_path_buf(), source })?;
        Ok(Config::parse(file, &text)?)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Config, SettingsError> {
        let mut f = Fields::parse(file, text)?;
        let config = Config {
            file: Some(file.to_path_buf()),
            state_dir: f.path("state_dir", defaults::STATE_DIR),
            incoming_dir: f.path("incoming_dir", defaults::INCOMING_DIR),
            corpus_dir: f.path("corpus_dir", defaults::CORPUS_DIR),
            policy: f.opt_string("policy").map_or(PolicyFile::Default, |p| PolicyFile::Named(p.into())),
            settle: f.duration("settle", "5s"),
            rescan_interval: f.duration("rescan_interval", "60s"),
            smoke_samples: f.opt_strings("smoke_samples"),
            clamd: f.section("clamd", ClamdConfig::parse),
            health: f.section("health", HealthConfig::parse),
            milter: f.section("milter", MilterConfig::parse),
            memory_guard: f.section("memory_guard", crate::memguard::GuardConfig::parse),
            publish: f.has("publish").then(|| f.section("publish", crate::fleet::config::PublishConfig::parse)),
            source: f.has("source").then(|| f.section("source", crate::fleet::config::SourceConfig::parse)),
        };
        let mut config = config;
        if config.clamd.managed {
            // Managed production never RELOADs: a promotion hands the kept
            // canary over, so no second engine is ever loaded beside it.
            config.memory_guard.concurrent_reload = crate::memguard::ConcurrentReload::No;
        }
        if config.source.is_some() {
            // A fleet host's gate checks what its source fetched, not freshclam's dir.
            config.incoming_dir = crate::fleet::source::incoming_dir(&config.state_dir);
        }
        if let Some(smoke) = &config.smoke_samples
            && (!smoke.iter().any(|s| s.starts_with("infected/")) || !smoke.iter().any(|s| s.starts_with("clean/")))
        {
            f.problem("smoke_samples", "needs one sample under infected/ and one under clean/");
        }
        f.finish(file)?;
        Ok(config)
    }

    /// The config file for messages: its path, or "(defaults)".
    pub(crate) fn display_file(&self) -> PathBuf {
        self.file.clone().unwrap_or_else(|| PathBuf::from("(defaults)"))
    }

    /// On reload: the keys that the daemon's loops, sockets and prober were
    /// built from keep their running values; returns the ones that changed.
    pub(crate) fn keep_restart_only(&mut self, running: &Config) -> Vec<String> {
        let mut changed = Vec::new();
        macro_rules! keep {
            ($($key:literal => $($field:ident).+;)*) => {$(
                if self.$($field).+ != running.$($field).+ {
                    changed.push($key.to_string());
                    self.$($field).+ = running.$($field).+.clone();
                }
            )*};
        }
        keep! {
            "state_dir" => state_dir;
            "incoming_dir" => incoming_dir;
            "settle" => settle;
            "rescan_interval" => rescan_interval;
            "smoke_samples" => smoke_samples;
            "clamd.socket/tcp" => clamd.endpoint;
            "clamd.managed" => clamd.managed;
            "clamd.conf" => clamd.conf;
            "health.listen" => health.listen;
            "health.probe_interval" => health.probe_interval;
            "memory_guard" => memory_guard;
            "publish" => publish;
            "source" => source;
        }
        changed
    }

    /// The policy's thresholds (see [`PolicyFile`]); a named file that is
    /// missing is an error.
    pub(crate) fn load_policy(&self) -> Result<crate::policy::Policy, crate::policy::PolicyError> {
        match self.policy.path() {
            Some(p) => crate::policy::Policy::load(p),
            None => Ok(crate::policy::Policy::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let c = Config::parse(Path::new("x"), "").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/clamgate"));
        assert_eq!(c.incoming_dir, PathBuf::from("/var/lib/clamav"));
        assert_eq!(c.settle, Duration::from_secs(5));
        assert_eq!(c.clamd.endpoint, Endpoint::Unix("/run/clamav/clamd.ctl".into()));
        assert_eq!(c.health.listen, "127.0.0.1:3311");
        assert_eq!((c.milter.mode, c.milter.stage, c.milter.on_infected), (MilterMode::Gate, Stage::Rcpt, OnInfected::Reject));
    }

    /// Managed production never RELOADs, so the memory guard must not keep
    /// room for a second production engine there (it would defer canaries
    /// that fit on exactly the small hosts managed mode is for).
    #[test]
    fn managed_mode_counts_no_second_engine() {
        use crate::memguard::ConcurrentReload;
        let c = Config::parse(Path::new("x"), "[memory_guard]\nconcurrent_reload = \"yes\"\n").unwrap();
        assert_eq!(c.memory_guard.concurrent_reload, ConcurrentReload::Yes);
        let c = Config::parse(Path::new("x"), "[clamd]\nmanaged = true\n[memory_guard]\nconcurrent_reload = \"auto\"\n").unwrap();
        assert_eq!(c.memory_guard.concurrent_reload, ConcurrentReload::No);
    }

    #[test]
    fn milter_choices_parse() {
        let c = Config::parse(Path::new("x"), "[milter]\nmode = \"scan\"\nstage = \"connect\"\non_infected = \"quarantine\"\n").unwrap();
        assert_eq!((c.milter.mode, c.milter.stage, c.milter.on_infected), (MilterMode::Scan, Stage::Connect, OnInfected::Quarantine));
        let c = Config::parse(Path::new("x"), "[milter]\non_infected = \"header\"\n").unwrap();
        assert_eq!(c.milter.on_infected, OnInfected::Header);
    }

    /// The milter matches these enums exhaustively (its old string match
    /// fell back to reject); an unknown value must stop the config loading.
    #[test]
    fn unknown_milter_choices_are_named() {
        let text = "[milter]\nmode = \"block\"\nstage = \"data\"\non_infected = \"drop\"\n";
        let err = Config::parse(Path::new("c.toml"), text).unwrap_err().to_string();
        for want in [
            r#"milter.mode: "block" is not gate or scan"#,
            r#"milter.stage: "data" is not connect or rcpt"#,
            r#"milter.on_infected: "drop" is not reject, quarantine or header"#,
        ] {
            assert!(err.contains(want), "{want:?} missing: {err}");
        }
        let err = Config::parse(Path::new("c.toml"), "[milter]\nstage = 1\n").unwrap_err().to_string();
        assert!(err.contains("milter.stage: expected a string"), "{err}");
    }

    #[test]
    fn bad_keys_are_named() {
        let text =
            "settle = \"soon\"\nstate_dri = \"/x\"\n[clamd]\ntcp = \"127.0.0.1:3310\"\nsocket = \"/s\"\n[milter]\nmode = \"block\"\n[health]\nlisten = 5\n";
        let err = Config::parse(Path::new("/etc/c.toml"), text).unwrap_err().to_string();
        for want in [
            "/etc/c.toml:1:1: settle: invalid duration",
            "/etc/c.toml:2:1: state_dri: unknown key",
            "/etc/c.toml:4:1: clamd.tcp: set socket or tcp, not both",
            "/etc/c.toml:7:1: milter.mode",
            "/etc/c.toml:9:1: health.listen: expected a string",
        ] {
            assert!(err.contains(want), "{want:?} missing: {err}");
        }
    }

    /// A mistyped policy path used to run silently on the built-in defaults.
    #[test]
    fn a_named_policy_must_exist() {
        let c = Config::parse(Path::new("c.toml"), "policy = \"/nonexistent/polcy.toml\"\n").unwrap();
        assert_eq!(c.policy, PolicyFile::Named("/nonexistent/polcy.toml".into()));
        let err = c.load_policy().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/polcy.toml"), "{err}");
        assert_eq!(Config::parse(Path::new("c.toml"), "").unwrap().policy, PolicyFile::Default);
    }

    /// The shipped, commented example (installed as /etc/clamgate/clamgate.toml)
    /// parses, sets every key, and sets each to its default.
    #[test]
    fn shipped_example_parses_to_the_defaults() {
        let text = include_str!("../etc/clamgate.toml");
        let c = Config::parse(Path::new("etc/clamgate.toml"), text).unwrap();
        let d = Config::parse(Path::new("x"), "").unwrap();
        assert_eq!(c.policy, PolicyFile::Named(defaults::POLICY.into()));
        assert_eq!(format!("{:?}", Config { file: None, policy: PolicyFile::Default, ..c }), format!("{:?}", Config { file: None, ..d }));
        // Every key the code reads is set (30; `clamd.tcp`, the alternative
        // to `socket`, and `smoke_samples`, unset by default, are in
        // comments), so the file documents them all.
        let table: toml::Table = text.parse().unwrap();
        let leaves: usize = table.values().map(|v| v.as_table().map_or(1, toml::Table::len)).sum();
        assert_eq!(leaves, 30, "etc/clamgate.toml should set every key");
        assert!(text.contains("# tcp = ") && text.contains("# smoke_samples = "), "clamd.tcp and smoke_samples are documented");
    }

    #[test]
    fn tcp_endpoint() {
        let c = Config::parse(Path::new("x"), "[clamd]\ntcp = \"127.0.0.1:3310\"\n").unwrap();
        assert_eq!(c.clamd.endpoint, Endpoint::Tcp("127.0.0.1:3310".into()));
    }
}
