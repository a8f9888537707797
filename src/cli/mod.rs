//! The `clamgate` command line: argument definitions and one module per
//! command. Commands return an [`Exit`] or a [`CliError`]; `main` prints.

pub(crate) mod change;
pub(crate) mod check;
pub(crate) mod config;
pub(crate) mod fleet;
pub(crate) mod inspect;
mod owner;
pub(crate) mod run;
pub(crate) mod show;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "clamgate", version, about = "Gatekeeper for ClamAV signature updates")]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole gate on a directory of database files, offline; promotes nothing.
    ///
    /// Exits 0 if the whole set would be promoted, 1 if nothing would be, 4
    /// if only a reduced set would be (policy isolation = "file": the files
    /// held back and the reduced set are listed), 2 usage/config, 3 environment.
    Check(check::CheckArgs),
    /// The daemon: watch incoming, gate, promote, roll back.
    Run(ConfigArg),
    /// Live release, pin, last candidate and its verdict, production health.
    ///
    /// Exits as a monitoring plugin: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    /// (no state dir, or the daemon's health endpoint does not answer).
    Status(show::StatusArgs),
    /// The journal, newest first.
    History(show::HistoryArgs),
    /// Kept releases and which is live.
    Releases(show::ShowArgs),
    /// One release or quarantined candidate: files, verdict and reasons, canary log, diff against the live release.
    Show(inspect::InspectArgs),
    /// Make the previous (or given) release live, verify it, and mark the one it leaves bad.
    Rollback(change::RollbackArgs),
    /// Make a kept release (or, with --force, a quarantined candidate) live, with the same verification.
    Promote(change::PromoteArgs),
    /// Hold the live release: candidates are checked and kept, not promoted.
    Pin(change::ChangeArgs),
    /// Release the hold.
    Unpin(change::ChangeArgs),
    /// Clear a known-bad mark so the daemon checks those files again.
    Recheck(change::RecheckArgs),
    /// The Postfix milter: tempfail while scanning is unhealthy; in scan mode, scan each message.
    Milter(ConfigArg),
    /// Self-contained run on embedded defaults: promotions, rejections, rollback, health.
    Demo {
        /// Leave the temporary directories for inspection.
        #[arg(long)]
        keep: bool,
    },
    /// Write a signing key pair for the fleet: DIR/publish.key (0600) and DIR/publish.pub.
    Keygen(fleet::KeygenArgs),
    /// The fleet rollout driven by this gate: status, pause, resume, revert.
    #[command(subcommand)]
    Rollout(fleet::RolloutCommand),
    /// Check the config (and the policy, corpus and clamd it names), or print it with defaults filled in.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (clamgate.1 and one per subcommand) into DIR; used by scripts/build-deb.
    #[command(hide = true)]
    Manpages {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Config file (default: $CLAMGATE_CONFIG, else /etc/clamgate/clamgate.toml).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

impl ConfigArg {
    pub(crate) fn load(&self) -> Result<crate::config::Config, CliError> {
        self.load_config().map_err(|e| CliError::usage("config.invalid", e))
    }

    pub(crate) fn load_config(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::Config::locate(self.config.as_deref())
    }

    /// Everything a command that changes state needs.
    pub(crate) fn context(&self) -> Result<crate::context::Context, CliError> {
        crate::context::Context::open(self.load()?, crate::context::StateDir::MustExist).map_err(CliError::from)
    }

    /// The config and its state dir, for the read-only commands.
    pub(crate) fn store(&self) -> Result<(crate::config::Config, crate::store::Store), CliError> {
        let config = self.load()?;
        let store = crate::context::open_store(&config, crate::context::StateDir::MustExist)?;
        Ok((config, store))
    }
}

impl From<crate::context::ContextError> for CliError {
    fn from(e: crate::context::ContextError) -> Self {
        use crate::context::ContextError as E;
        match e {
            E::NoStateDir(_) => CliError::usage("state.missing", e),
            E::Store(_) => CliError::environment("state.unreadable", e),
            E::Corpus(_) => CliError::usage("config.corpus", e),
            E::Smoke { .. } => CliError::usage("config.invalid", e),
            E::Managed(c) => CliError::usage(c.code(), c),
        }
    }
}

/// Resolves on SIGINT or SIGTERM: the one cancellation signal every
/// long-running command is handed. The handlers are installed when this is
/// called, not when it is first polled: a SIGTERM that arrives while the
/// command is still starting (a milter that just bound its socket) must stop
/// it cleanly, not kill it with the default action.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// Exit codes, as the README's CLI table documents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok,
    Rejected,
    Usage,
    Environment,
    /// `clamgate check`: only a reduced set (some files held back) would be promoted.
    Reduced,
    /// `clamgate status`: the monitoring-plugins convention instead.
    Plugin(Plugin),
    /// The exit code of the same command, run again as the state dir's owner.
    Passed(u8),
}

/// The monitoring-plugins states (Nagios, Icinga, Sensu), as exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Plugin {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl Plugin {
    pub fn as_str(self) -> &'static str {
        match self {
            Plugin::Ok => "OK",
            Plugin::Warning => "WARNING",
            Plugin::Critical => "CRITICAL",
            Plugin::Unknown => "UNKNOWN",
        }
    }
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Rejected => 1,
            Exit::Usage => 2,
            Exit::Environment => 3,
            Exit::Reduced => 4,
            Exit::Plugin(p) => p as u8,
            Exit::Passed(code) => code,
        }
    }
}

/// A command that could not do its job; `code` is stable for `--json`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub exit: Exit,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl CliError {
    pub(crate) fn usage(code: &'static str, message: impl std::fmt::Display) -> Self {
        CliError { exit: Exit::Usage, code, message: message.to_string() }
    }

    pub(crate) fn environment(code: &'static str, message: impl std::fmt::Display) -> Self {
        CliError { exit: Exit::Environment, code, message: message.to_string() }
    }

    /// The command was refused or failed (exit 1).
    pub(crate) fn refused(code: &'static str, message: impl std::fmt::Display) -> Self {
        CliError { exit: Exit::Rejected, code, message: message.to_string() }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "reason": self.code, "message": self.message } })
    }
}

pub async fn run(cli: Cli) -> Result<Exit, (CliError, bool)> {
    match cli.command {
        Command::Check(args) => {
            let json = args.json;
            check::run(args).await.map_err(|e| (e, json))
        }
        Command::Run(args) => run::run(args).await.map_err(|e| (e, false)),
        Command::Status(args) => {
            let json = args.show.json;
            show::status(args).await.map_err(|e| (e, json))
        }
        Command::History(args) => {
            let json = args.show.json;
            show::history(args).await.map_err(|e| (e, json))
        }
        Command::Releases(args) => {
            let json = args.json;
            show::releases(args).await.map_err(|e| (e, json))
        }
        Command::Milter(args) => {
            let config = args.load().map_err(|e| (e, false))?;
            crate::milter::run(&config, shutdown_signal()).await.map_err(|e| {
                let err = match e {
                    crate::milter::MilterError::BadListen(_) | crate::milter::MilterError::Config(_) => CliError::usage("config.invalid", e),
                    e => CliError::environment("environment.milter", e),
                };
                (err, false)
            })?;
            Ok(Exit::Ok)
        }
        Command::Demo { keep } => match crate::demo::run(keep, shutdown_signal()).await {
            Ok(true) => Ok(Exit::Ok),
            Ok(false) => Ok(Exit::Rejected),
            Err(e) => Err((CliError::environment("environment.demo", e), false)),
        },
        Command::Show(args) => {
            let json = args.show.json;
            inspect::show(args).await.map_err(|e| (e, json))
        }
        Command::Rollback(args) => changing(as_owner(&args.config), args.json, change::rollback(args)).await,
        Command::Promote(args) => changing(as_owner(&args.config), args.json, change::promote(args)).await,
        Command::Pin(args) => changing(as_owner(&args.config), args.json, change::pin(args)).await,
        Command::Unpin(args) => changing(as_owner(&args.config), args.json, change::unpin(args)).await,
        Command::Recheck(args) => changing(as_owner(&args.config), args.json, change::recheck(args)).await,
        Command::Config(cmd) => config::run(cmd).await.map_err(|e| (e, false)),
        Command::Keygen(args) => fleet::keygen(args).map_err(|e| (e, false)),
        Command::Rollout(cmd) => {
            let json = cmd.json();
            match &cmd {
                fleet::RolloutCommand::Status(_) => fleet::rollout(cmd).await.map_err(|e| (e, json)),
                _ => changing(as_owner(cmd.config()), json, fleet::rollout(cmd)).await,
            }
        }
        Command::Manpages { out } => manpages(&out).map(|()| Exit::Ok).map_err(|e| (e, false)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "clamgate", &mut std::io::stdout());
            Ok(Exit::Ok)
        }
    }
}

/// A state-changing command: the result of its re-run as the state dir's
/// owner if there was one, else `here` (not started until awaited).
async fn changing(
    ran: Option<Result<Exit, CliError>>,
    json: bool,
    here: impl std::future::Future<Output = Result<Exit, CliError>>,
) -> Result<Exit, (CliError, bool)> {
    match ran {
        Some(ran) => ran,
        None => here.await,
    }
    .map_err(|e| (e, json))
}

/// Runs a state-changing command again as the state dir's owner when root
/// runs it on someone else's state dir; `None` to run it here. A config
/// that does not load is left for the command itself to report.
fn as_owner(config: &ConfigArg) -> Option<Result<Exit, CliError>> {
    let config = config.load().ok()?;
    owner::run_as_state_owner(&config.state_dir).transpose()
}

/// clamgate(1) and clamgate-SUB(1) for each visible subcommand (and
/// clamgate-config-check(1) for nested ones), from the clap definitions, so
/// the man pages cannot drift from `--help`.
fn manpages(out: &std::path::Path) -> Result<(), CliError> {
    use clap::CommandFactory;
    fn write(cmd: clap::Command, name: String, out: &std::path::Path) -> Result<(), CliError> {
        let file = out.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone().name(name.clone()))
            .render(&mut buf)
            .and_then(|()| std::fs::write(&file, buf))
            .map_err(|e| CliError::environment("environment.manpages", format!("cannot write {}: {e}", file.display())))?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            write(sub.clone(), format!("{name}-{}", sub.get_name()), out)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(out).map_err(|e| CliError::environment("environment.manpages", format!("cannot create {}: {e}", out.display())))?;
    let mut cmd = Cli::command();
    cmd.build();
    write(cmd, "clamgate".into(), out)
}

/// An RFC 3339 time as the operator reads it: local time and how long ago.
pub(crate) fn when(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else { return ts.to_string() };
    let local = t.to_zoned_datetime(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string();
    let secs = jiff::Timestamp::now().as_second() - t.as_second();
    format!("{local} ({})", ago(secs))
}

fn ago(secs: i64) -> String {
    match secs {
        s if s < 0 => "in the future".into(),
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86400 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn relative_times() {
        assert_eq!(super::ago(5), "5 s ago");
        assert_eq!(super::ago(190), "3 min ago");
        assert_eq!(super::ago(7300), "2 h ago");
        assert_eq!(super::ago(3 * 86400), "3 days ago");
        assert!(super::when("2026-11-23T22:00:00Z").contains("ago"));
        assert_eq!(super::when("garbage"), "garbage");
    }
}
