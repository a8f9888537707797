//! The `clamgate` binary: arguments, logging, and exit codes; the work is in
//! the library.

use std::process::ExitCode;

use clamgate::cli::{self, Cli};
use clamgate::logging::Verbosity;
use clamgate::runtime::{self, Flavor};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; the daemon's lines would only interleave.
    let verbosity = if matches!(cli.command, cli::Command::Demo { .. }) { Verbosity::Quiet } else { Verbosity::Lifecycle };
    clamgate::logging::init(verbosity, cli.log_json);

    // The milter's work per message is a few small reads and writes: one
    // thread, no cross-thread wakeups, leaves the CPUs to Postfix.
    let flavor = if matches!(cli.command, cli::Command::Milter(_)) { Flavor::CurrentThread } else { Flavor::MultiThread };
    runtime::tune_allocator();
    let runtime = match runtime::build(flavor) {
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
