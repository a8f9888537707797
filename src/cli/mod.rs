//! The `clamgate` command line: argument definitions and one module per
//! command. Commands return an [`Exit`] or a [`CliError`]; `main` prints.

pub mod check;
pub mod run;

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
    Check(check::CheckArgs),
    /// The daemon: watch incoming, gate, promote, roll back.
    Run(ConfigArg),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Config file (default: $CLAMGATE_CONFIG, else /etc/clamgate/clamgate.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn load(&self) -> Result<crate::config::Config, CliError> {
        crate::config::Config::locate(self.config.as_deref()).map_err(|e| CliError::usage("config.invalid", e))
    }
}

/// Resolves on SIGINT or SIGTERM: the one cancellation signal every
/// long-running command is handed.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Exit codes of DESIGN.md's CLI table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Rejected = 1,
    Usage = 2,
    Environment = 3,
}

/// A command that could not do its job; `code` is stable for `--json`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub exit: Exit,
    pub code: &'static str,
    pub message: String,
}

impl CliError {
    pub fn usage(code: &'static str, message: impl std::fmt::Display) -> Self {
        CliError { exit: Exit::Usage, code, message: message.to_string() }
    }

    pub fn environment(code: &'static str, message: impl std::fmt::Display) -> Self {
        CliError { exit: Exit::Environment, code, message: message.to_string() }
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
    }
}

/// The default policy file, when it exists; else the built-in defaults.
pub fn default_policy_path() -> Option<PathBuf> {
    let p = PathBuf::from("/etc/clamgate/policies/default.toml");
    p.exists().then_some(p)
}
