//! `clamgate config check` and `config show`: what an operator runs after
//! editing /etc/clamgate, before restarting anything.

use std::path::Path;

use clap::{Args, Subcommand};

use super::{CliError, ConfigArg, Exit};
use crate::clamd::Endpoint;
use crate::config::{Config, ConfigError};
use crate::corpus::Corpus;
use crate::settings::position;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check config, policy, corpus, the clamd binary and the production socket; print every problem with file:line:column.
    ///
    /// Exits 0 when clamgate can start on it (warnings allowed), 2 when a file
    /// the operator writes is wrong (config, policy, corpus), 3 when only the
    /// machine is (no clamd binary).
    Check(CheckArgs),
    /// Print the effective configuration, defaults filled in, as TOML.
    Show(ConfigArg),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Print only problems and warnings, no summary line.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

/// What one check found, and whose fault it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finding {
    /// In a file the operator writes: exit 2.
    Config,
    /// On the machine: exit 3.
    Environment,
    /// Worth knowing, does not stop clamgate.
    Warning,
}

pub(crate) async fn run(cmd: ConfigCommand) -> Result<Exit, CliError> {
    match cmd {
        ConfigCommand::Check(args) => check(args).await,
        ConfigCommand::Show(args) => {
            print!("{}", show(&args.load()?));
            Ok(Exit::Ok)
        }
    }
}

async fn check(args: CheckArgs) -> Result<Exit, CliError> {
    let mut found: Vec<(Finding, String)> = Vec::new();
    let config = match args.config.load_config() {
        Ok(c) => c,
        Err(ConfigError::Invalid(e)) => {
            found.extend(e.lines().into_iter().map(|l| (Finding::Config, l)));
            return Ok(report(&found, &e.file.display().to_string(), args.quiet));
        }
        Err(e) => return Err(CliError::usage("config.invalid", e)),
    };
    let text = config.file.as_deref().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
    // `file:line:column: key: what` for a key the config sets, else `file: key: what`.
    let at = |key: &[&str], what: String| {
        let file = config.display_file();
        match position(&text, key) {
            Some((l, c)) => format!("{}:{l}:{c}: {}: {what}", file.display(), key.join(".")),
            None => format!("{}: {}: {what} (default)", file.display(), key.join(".")),
        }
    };
    match config.load_policy() {
        Ok(_) => {}
        Err(crate::policy::PolicyError::Invalid(e)) => found.extend(e.lines().into_iter().map(|l| (Finding::Config, l))),
        Err(e @ crate::policy::PolicyError::Read { .. }) => found.push((Finding::Config, at(&["policy"], e.to_string()))),
    }
    match Corpus::load(&config.corpus_dir) {
        Ok(corpus) => {
            if let Err(e) = crate::production::smoke_samples(&corpus, config.smoke_samples.as_deref()) {
                found.push((Finding::Config, at(&["smoke_samples"], e.to_string())));
            }
        }
        Err(crate::corpus::CorpusError::Expect(e)) => found.extend(e.lines().into_iter().map(|l| (Finding::Config, l))),
        Err(e) => found.push((Finding::Config, at(&["corpus_dir"], e.to_string()))),
    }
    if !super::check::is_executable(&config.clamd.binary) {
        let what = format!("{}: no executable clamd there (install clamav-daemon)", config.clamd.binary.display());
        found.push((Finding::Environment, at(&["clamd", "binary"], what)));
    }
    // Managed mode: the operator's clamd.conf as the daemon would read it.
    if config.clamd.managed
        && let Err(e) = crate::managed::ClamdConf::load(&config.clamd.conf)
    {
        found.push((Finding::Config, e.to_string()));
    }
    if let Some((finding, what)) = production(&config).await {
        let key: &[&str] = if matches!(config.clamd.endpoint, Endpoint::Unix(_)) { &["clamd", "socket"] } else { &["clamd", "tcp"] };
        found.push((finding, at(key, what)));
    }
    // The fleet's keys: a daemon would refuse to start without them.
    if let Some(p) = &config.publish
        && let Err(e) = crate::fleet::sign::Signer::load(&p.key)
    {
        found.push((Finding::Config, at(&["publish", "key"], format!("{e} (clamgate keygen --out DIR writes one)"))));
    }
    if let Some(src) = &config.source
        && let Err(e) = crate::fleet::sign::Verifier::load(&src.public_key)
    {
        found.push((Finding::Config, at(&["source", "public_key"], e.to_string())));
    }
    for (section, token) in
        [("publish", config.publish.as_ref().and_then(|p| p.token.as_ref())), ("source", config.source.as_ref().and_then(|s| s.token.as_ref()))]
    {
        if let Some(f) = token
            && let Err(e) = crate::fleet::serve::read_token(f)
        {
            found.push((Finding::Config, at(&[section, "token"], format!("cannot read {}: {e}", f.display()))));
        }
    }
    if config.source.is_none() && !config.incoming_dir.is_dir() {
        found.push((Finding::Warning, at(&["incoming_dir"], format!("{}: not a directory yet (freshclam creates it)", config.incoming_dir.display()))));
    }
    Ok(report(&found, &config.display_file().display().to_string(), args.quiet))
}

/// The production socket: a path that is not a socket is a config mistake;
/// a clamd that does not answer is only a warning, since on first boot it
/// starts after clamgate's first promotion.
async fn production(config: &Config) -> Option<(Finding, String)> {
    use std::os::unix::fs::FileTypeExt;
    let endpoint = config.clamd.production_endpoint();
    if let Endpoint::Unix(p) = &endpoint
        && let Ok(m) = std::fs::metadata(p)
        && !m.file_type().is_socket()
    {
        return Some((Finding::Config, format!("{}: exists but is not a socket", p.display())));
    }
    let client = crate::clamd::Client::new(endpoint, std::time::Duration::from_secs(5));
    match client.ping().await {
        Ok(()) => None,
        Err(e) => Some((Finding::Warning, format!("production clamd does not answer yet ({e}); clamgate reports it down until it does"))),
    }
}

fn report(found: &[(Finding, String)], what: &str, quiet: bool) -> Exit {
    for (finding, line) in found {
        match finding {
            Finding::Warning => println!("warning: {line}"),
            _ => println!("{line}"),
        }
    }
    let problems = found.iter().filter(|(f, _)| *f != Finding::Warning).count();
    if !quiet {
        match problems {
            0 => println!("OK: {what}: clamgate can start on it"),
            n => println!("FAIL: {what}: {n} problem{}", if n == 1 { "" } else { "s" }),
        }
    }
    if found.iter().any(|(f, _)| *f == Finding::Config) {
        Exit::Usage
    } else if problems > 0 {
        Exit::Environment
    } else {
        Exit::Ok
    }
}

/// The effective config as TOML, in the order of the shipped example, so it
/// can be diffed against /etc/clamgate/clamgate.toml or saved as one.
pub(crate) fn show(c: &Config) -> String {
    use toml::Value;
    let s = |v: &str| Value::String(v.to_string());
    let p = |v: &Path| Value::String(v.display().to_string());
    let d = |v: std::time::Duration| Value::String(humantime::format_duration(v).to_string());
    let mut out = format!("# effective configuration from {}\n", c.display_file().display());
    let section = |out: &mut String, name: Option<&str>, rows: Vec<(&str, Value)>| {
        if let Some(name) = name {
            out.push_str(&format!("\n[{name}]\n"));
        }
        for (k, v) in rows {
            out.push_str(&format!("{k} = {v}\n"));
        }
    };
    let mut top = vec![("state_dir", p(&c.state_dir)), ("incoming_dir", p(&c.incoming_dir)), ("corpus_dir", p(&c.corpus_dir))];
    match c.policy.path() {
        Some(path) => top.push(("policy", p(path))),
        None => out.push_str(&format!("# policy: not set and {} does not exist: the built-in defaults\n", crate::config::defaults::POLICY)),
    }
    top.extend([("settle", d(c.settle)), ("rescan_interval", d(c.rescan_interval))]);
    match &c.smoke_samples {
        Some(chosen) => top.push(("smoke_samples", Value::Array(chosen.iter().map(|x| s(x)).collect()))),
        None => {
            let picked = Corpus::load(&c.corpus_dir)
                .map(|corpus| crate::production::default_smoke_samples(&corpus).into_iter().map(|x| x.name).collect::<Vec<_>>().join(", "));
            let picked = picked.map_or_else(|e| format!("(the corpus does not load: {e})"), |names| format!("now {names}"));
            out.push_str(&format!("# smoke_samples: not set: the smallest sample directly under infected/ and clean/, {picked}\n"));
        }
    }
    section(&mut out, None, top);
    let endpoint = match &c.clamd.endpoint {
        Endpoint::Unix(path) => ("socket", p(path)),
        Endpoint::Tcp(addr) => ("tcp", s(addr)),
    };
    section(
        &mut out,
        Some("clamd"),
        vec![
            endpoint,
            ("binary", p(&c.clamd.binary)),
            ("timeout", d(c.clamd.timeout)),
            ("reload_timeout", d(c.clamd.reload_timeout)),
            ("managed", Value::Boolean(c.clamd.managed)),
            ("conf", p(&c.clamd.conf)),
        ],
    );
    let h = &c.health;
    section(&mut out, Some("health"), vec![("listen", s(&h.listen)), ("probe_interval", d(h.probe_interval)), ("latency_budget", d(h.latency_budget))]);
    let m = &c.milter;
    section(
        &mut out,
        Some("milter"),
        vec![
            ("listen", s(&m.listen)),
            ("health_url", s(&m.health_url)),
            ("mode", s(&m.mode.to_string())),
            ("stage", s(&m.stage.to_string())),
            ("tempfail_text", s(&m.tempfail_text)),
            ("health_ttl", d(m.health_ttl)),
            ("health_timeout", d(m.health_timeout)),
            ("on_infected", s(&m.on_infected.to_string())),
            ("add_header", Value::Boolean(m.add_header)),
            ("max_connections", Value::Integer(m.max_connections as i64)),
            ("metrics_listen", s(m.metrics_listen.as_deref().unwrap_or(""))),
            ("policy_listen", s(m.policy_listen.as_deref().unwrap_or(""))),
        ],
    );
    let g = &c.memory_guard;
    section(
        &mut out,
        Some("memory_guard"),
        vec![
            ("enabled", Value::Boolean(g.enabled)),
            ("reserve", Value::Integer(g.reserve as i64)),
            ("concurrent_reload", s(&g.concurrent_reload.to_string())),
            ("production_conf", p(&g.production_conf)),
        ],
    );
    let opt = |v: &Option<std::path::PathBuf>| v.as_deref().map_or_else(|| s(""), p);
    if let Some(pb) = &c.publish {
        section(
            &mut out,
            Some("publish"),
            vec![
                ("dir", p(&pb.dir)),
                ("listen", s(pb.listen.as_deref().unwrap_or(""))),
                ("key", p(&pb.key)),
                ("token", opt(&pb.token)),
                ("host_poll_interval", d(pb.host_poll_interval)),
                ("take_timeout", d(pb.take_timeout)),
            ],
        );
        for r in &pb.rings {
            let hosts = Value::Array(r.hosts.iter().map(|h| s(h)).collect());
            out.push_str("\n[[publish.ring]]\n");
            section(&mut out, None, vec![("name", s(&r.name)), ("hosts", hosts), ("soak", d(r.soak))]);
        }
    }
    if let Some(src) = &c.source {
        section(
            &mut out,
            Some("source"),
            vec![
                ("url", s(&src.url)),
                ("poll_interval", d(src.poll_interval)),
                ("trust_gate_verdict", Value::Boolean(src.trust_gate_verdict)),
                ("public_key", p(&src.public_key)),
                ("token", opt(&src.token)),
                ("warn_after", d(src.warn_after)),
            ],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `config show` prints is a config that reads back the same.
    #[test]
    fn show_reads_back_as_the_same_config() {
        let text = "settle = \"7s\"\n[clamd]\ntcp = \"127.0.0.1:3310\"\n[milter]\nmode = \"scan\"\nmax_connections = 9\n[memory_guard]\nreserve = \"1MiB\"\nconcurrent_reload = \"no\"\n";
        let c = Config::parse(Path::new("c.toml"), &format!("policy = \"/p.toml\"\n{text}")).unwrap();
        let shown = show(&c);
        let back = Config::parse(Path::new("c.toml"), &shown).unwrap();
        assert_eq!(show(&back), shown);
        assert!(shown.contains("policy = \"/p.toml\""), "{shown}");
        assert!(shown.contains("tcp = \"127.0.0.1:3310\"") && shown.contains("settle = \"7s\"") && shown.contains("mode = \"scan\""), "{shown}");
        assert!(shown.contains("reserve = 1048576") && shown.contains("concurrent_reload = \"no\""), "{shown}");
    }

    #[test]
    fn fleet_sections_are_shown_and_read_back() {
        let text = "[publish]\nkey = \"/k\"\n[[publish.ring]]\nname = \"canary\"\nhosts = [\"http://a:3311\"]\nsoak = \"0s\"\n\
                    [source]\nurl = \"http://g:3312/rings/canary.json\"\n";
        let c = Config::parse(Path::new("c.toml"), text).unwrap();
        let shown = show(&c);
        let back = Config::parse(Path::new("c.toml"), &shown).unwrap_or_else(|e| panic!("{e}\n{shown}"));
        assert_eq!((back.publish, back.source), (c.publish, c.source));
        assert!(shown.contains("[[publish.ring]]\nname = \"canary\""), "{shown}");
    }
}
