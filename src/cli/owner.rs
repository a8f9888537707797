//! A state-changing command run as root on a state dir that belongs to
//! another user (Debian's `clamav`) runs again as that user, so it leaves
//! no root-owned files for the daemon to trip over. The journal still names
//! who ran it: `SUDO_USER` survives the switch.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use super::{CliError, Exit};

/// Set in the re-run command, so it never switches twice.
const SWITCHED: &str = "CLAMGATE_AS_STATE_OWNER";

/// `Some(exit)` when the command ran again as the state dir's owner and
/// this process should exit with its code; `None` to go on here.
pub(crate) fn run_as_state_owner(state_dir: &Path) -> Result<Option<Exit>, CliError> {
    if !rustix::process::geteuid().is_root() || std::env::var_os(SWITCHED).is_some() {
        return Ok(None);
    }
    let Ok(meta) = std::fs::metadata(state_dir) else { return Ok(None) };
    if meta.uid() == 0 {
        return Ok(None);
    }
    let exe = std::env::current_exe()
        .map_err(|e| CliError::environment("environment.exec", format!("cannot find our own binary to run as the owner of {}: {e}", state_dir.display())))?;
    let status = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(SWITCHED, "1")
        // Supplementary groups are dropped too (std calls setgroups(0)).
        .gid(meta.gid())
        .uid(meta.uid())
        .status()
        .map_err(|e| {
            CliError::environment(
                "environment.exec",
                format!("{} belongs to uid {}; cannot run as that user ({e}); run the command as that user instead", state_dir.display(), meta.uid()),
            )
        })?;
    // A signal-killed child: the shell convention, 128 + signal.
    let code = status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
    Ok(Some(Exit::Passed(code as u8)))
}
