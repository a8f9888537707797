//! Managed mode in the daemon: production clamd is clamgate's to run. At
//! start-up a production clamd that is still running (a crash or restart
//! of the daemon left it) is adopted, else one is started on `current`;
//! once an interrupted activation is finished, every other managed clamd
//! is stopped. After each candidate run, canaries kept but not promoted
//! (pinned, failed) are stopped; on the heartbeat, a production clamd that
//! died is started again.

use std::time::Duration;

use super::{Daemon, DaemonError};
use crate::failpoint::Point;

/// At most one attempt to start a dead production clamd in this long.
const RESTART_EVERY: Duration = Duration::from_secs(30);

impl Daemon {
    /// Before `resume`: the production socket is served, if anything is live.
    pub(super) async fn adopt_production(&self) -> Result<(), DaemonError> {
        let Some(m) = self.cx.managed.as_ref() else { return Ok(()) };
        let lock = self.lock().await?;
        if let Some(i) = m.production_running().await {
            tracing::info!(release = ?i.release, pid = ?i.pid, "managed: adopted the production clamd {}", i.name);
            return Ok(());
        }
        m.check_free().await?;
        let Some(live) = self.cx.store.current()? else {
            tracing::info!("managed: no release is live yet; production clamd starts with the first promotion");
            return Ok(());
        };
        drop(lock);
        self.restart_production(&live).await
    }

    /// Starts a clamd on `live` and hands it the production socket (under
    /// the state lock, so no CLI command is halfway through a handover).
    async fn restart_production(&self, live: &str) -> Result<(), DaemonError> {
        let Some(m) = self.cx.managed.as_ref() else { return Ok(()) };
        let _lock = self.lock().await?;
        match m.production_running().await {
            Some(i) if i.release.as_deref() == Some(live) => return Ok(()),
            // A rollback whose hand-back failed leaves production on the
            // release it left: `current` is what must run.
            Some(i) => {
                tracing::warn!(release = live, "managed: production clamd {} runs {:?}, not the live release; handing over to one on {live}", i.name, i.release)
            }
            None => tracing::warn!(release = live, "managed: no production clamd answers on {}; starting one on {live}", m.production_socket().display()),
        }
        let served = m.serve(&self.cx.store, live, Point::ManagedSocketRenamed).await?;
        if let Some(old) = served.from {
            m.retire(&old).await;
        }
        Ok(())
    }

    /// Every managed clamd but production's stops: what a crash, a pin or
    /// a failed promotion left.
    pub(super) async fn sweep_managed(&self) -> Result<(), DaemonError> {
        let Some(m) = self.cx.managed.as_ref() else { return Ok(()) };
        let _lock = self.lock().await?;
        m.sweep().await;
        Ok(())
    }

    /// Runs `work` while feeding `/livez` and the systemd watchdog.
    pub(super) async fn beating<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        let mut beat = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = beat.tick() => self.health.beat(),
            }
        }
    }

    /// Heartbeat: production clamd died (OOM killer, a crash), or runs
    /// another release than `current` (a failed hand-back): start one on
    /// `current`. Cheap when all is well: a readlink, a file and /proc.
    pub(super) async fn supervise(&self) {
        let Some(m) = self.cx.managed.as_ref() else { return };
        let Ok(Some(live)) = self.cx.store.current() else { return };
        if m.serving(&live, std::time::Duration::from_secs(1)).is_some() {
            return;
        }
        {
            let mut last = self.restarted.lock().expect("not poisoned");
            if last.is_some_and(|t| t.elapsed() < RESTART_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        if let Err(e) = self.restart_production(&live).await {
            tracing::error!("managed: cannot start production clamd on {live}: {e}");
        }
    }
}
