//! A fleet of mail servers fed by one gate. The gate vets a release once,
//! publishes it as a signed static tree ([`tree`], [`sign`], served by
//! [`serve`] or any web server) and rolls it out ring by ring, each ring
//! gated on its hosts' `/readyz` ([`rollout`], a pure state machine, driven
//! by [`drive`]). A host follows its ring's pointer ([`source`]) and
//! promotes through its own gate and [`crate::promote::Activator`].

pub(crate) mod config;
pub(crate) mod drive;
pub(crate) mod fetch;
pub(crate) mod handoff;
pub(crate) mod metrics;
pub(crate) mod refusal;
pub(crate) mod rollout;
pub(crate) mod serve;
pub(crate) mod sign;
pub(crate) mod source;
pub(crate) mod tree;

use std::sync::Arc;

use crate::context::Context;
use crate::health::Health;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    #[error("[publish]: {0}")]
    Publish(#[from] drive::DriveError),
    #[error("[publish] listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("[publish] token: cannot read {}: {source}", file.display())]
    Token {
        file: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("[source]: {0}")]
    Source(String),
}

impl FleetError {
    /// A key or token file the config names is missing or wrong.
    pub(crate) fn is_config(&self) -> bool {
        matches!(self, FleetError::Source(_) | FleetError::Token { .. } | FleetError::Publish(drive::DriveError::Sign(_)))
    }
}

/// Starts what `[publish]` and `[source]` ask for beside the daemon's own
/// tasks, all stopped by the same `stop`.
pub(crate) async fn spawn(
    cx: &Context,
    max_file_size: u64,
    health: &Arc<Health>,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), FleetError> {
    if let Some(p) = &cx.config.publish {
        let driver = drive::Driver::new(p.clone(), cx.store.clone(), health.metrics.clone())?;
        if let Some(addr) = &p.listen {
            let token = match &p.token {
                Some(f) => Some(serve::read_token(f).map_err(|source| FleetError::Token { file: f.clone(), source })?),
                None => None,
            };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| FleetError::Listen { addr: addr.clone(), source })?;
            tracing::info!("publish tree {} on http://{}", p.dir.display(), listener.local_addr().map(|a| a.to_string()).unwrap_or(addr.clone()));
            let site = Arc::new(serve::Site { tree: driver.tree().clone(), token });
            tasks.spawn(serve::serve(listener, site, stop.clone()));
        }
        tasks.spawn(driver.run(stop.clone()));
    }
    if let Some(s) = &cx.config.source {
        let follower =
            source::Follower::new(s.clone(), &cx.config.state_dir, cx.store.clone(), cx.production.clone(), cx.managed.clone(), health.clone(), max_file_size)
                .map_err(FleetError::Source)?;
        tracing::info!(url = %s.url, "following ring {}", s.ring());
        tasks.spawn(follower.run(stop.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// An empty token would make the server demand an empty bearer.
    #[test]
    fn an_empty_token_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("token");
        for empty in ["", "\n", "  \n s3cret\n"] {
            std::fs::write(&f, empty).unwrap();
            let e = super::serve::read_token(&f).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{empty:?}");
        }
        std::fs::write(&f, " s3cret \nignored\n").unwrap();
        assert_eq!(super::serve::read_token(&f).unwrap(), "s3cret");
    }
}
