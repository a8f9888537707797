//! The `clamgate` binary: arguments, logging, and exit codes; the work is in
//! the library.

use std::process::ExitCode;

use clamgate::cli::{self, Cli};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; the daemon's warnings would only interleave.
    let default = if matches!(cli.command, cli::Command::Demo { .. }) { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAMGATE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // No colour codes in journald or a log file; NO_COLOR is honoured too.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if cli.log_json {
        logs.json().init()
    } else {
        logs.init()
    }

    // The milter's work per message is a few small reads and writes: one
    // thread, no cross-thread wakeups, leaves the CPUs to Postfix.
    let mut builder = if matches!(cli.command, cli::Command::Milter(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clamgate: cannot start the async runtime: {e}");
            return ExitCode::from(cli::Exit::Environment.code());
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err((err, json)) => {
            if json {
                println!("{}", err.to_json());
            }
            eprintln!("clamgate: {err}");
            ExitCode::from(err.exit.code())
        }
    }
}
