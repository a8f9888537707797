//! `clamgate run`: start the daemon with the config and run until signalled.

use super::{CliError, ConfigArg, Exit};
use crate::context::ContextError;
use crate::daemon::{Daemon, DaemonError};
use crate::store::StoreError;

pub(crate) async fn run(args: ConfigArg) -> Result<Exit, CliError> {
    let config = args.load()?;
    let daemon = Daemon::new(config).map_err(classify)?;
    daemon.run(super::shutdown_signal()).await.map_err(classify)?;
    Ok(Exit::Ok)
}

fn classify(e: DaemonError) -> CliError {
    match e {
        DaemonError::Context(ContextError::Store(_)) => CliError::environment("environment.daemon", e),
        DaemonError::Context(c @ ContextError::Managed(_)) => c.into(),
        DaemonError::Context(_) | DaemonError::Policy(_) => CliError::usage("config.invalid", e),
        DaemonError::Store(StoreError::DaemonRunning { .. }) => CliError::usage("state.daemon_running", e),
        DaemonError::Fleet(ref f) if f.is_config() => CliError::usage("config.fleet", e),
        e => CliError::environment("environment.daemon", e),
    }
}
