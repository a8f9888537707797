//! `clamgate milter`: the Postfix side. In `gate` mode it only asks
//! `/readyz` and tempfails (451 4.7.1) while scanning is unhealthy; in `scan`
//! mode it also streams every message to the production clamd as it
//! arrives. It never accepts a message it was asked to scan but could not,
//! and never rejects mail because of its own failure: those are tempfailed.
//! This module holds the gate and the serving; scan mode's message path is
//! [`scan`]'s.

mod metrics;
mod options;
mod policy;
pub(crate) mod readiness;
mod scan;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indymilter::{Actions, Callbacks, Context, SetErrorReply, SmtpReply, SocketInfo, Status};

use crate::clamd::Client;
use crate::config::{Config, MilterConfig};
use crate::logging::spell::{Spell, Subject};
use metrics::{Action, MilterMetrics};
pub(crate) use options::{MilterMode, OnInfected, Stage};
use readiness::{HealthUrlError, ReadinessCache};
use scan::{Scan, scan_callbacks};

#[derive(Debug, thiserror::Error)]
pub(crate) enum MilterError {
    #[error("milter.listen {0:?}: expected unix:PATH or inet:HOST:PORT")]
    BadListen(String),
    #[error("milter: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A `[milter]` value found unusable only when the milter starts.
    #[error("milter: {0}")]
    Config(HealthUrlError),
    #[error("milter stopped serving: {0}")]
    Serve(std::io::Error),
    #[error("milter.policy_listen {addr}: cannot listen: {source}")]
    PolicyListen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("milter.metrics_listen {addr}: cannot listen: {source}")]
    MetricsListen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Everything a callback needs, shared by all sessions.
struct Shared {
    cfg: MilterConfig,
    readiness: ReadinessCache,
    clamd: Client,
    /// Tempfails while unhealthy, and in scan mode messages that could not
    /// be scanned: spells, so a busy server does not log a line per message.
    outage: std::sync::Mutex<Spell>,
    unscannable: std::sync::Mutex<Spell>,
    metrics: Arc<MilterMetrics>,
}

/// Whether mail may pass the gate now.
enum Gate {
    Open {
        release: Option<String>,
    },
    /// Scanning is unhealthy: tempfail (counted and logged by `decide`).
    Closed,
}

/// Per-message scan state.
#[derive(Default)]
struct Session {
    scan: Scan,
    release: Option<String>,
    /// The SMTP client's address, for the reject line (scan mode only).
    client: Option<String>,
}

fn tempfail(reply: &mut SmtpReply, text: &str) -> Status {
    // 451 4.7.1: the sender's MTA keeps the message and retries.
    let _ = reply.set_error_reply("451", Some("4.7.1"), [text]);
    Status::Tempfail
}

/// Whether a session is gated at `at`: at the configured stage, and in scan
/// mode at every RCPT too, so each message learns the release that scans it.
fn gates_at(mode: MilterMode, stage: Stage, at: Stage) -> bool {
    at == stage || (mode == MilterMode::Scan && at == Stage::Rcpt)
}

impl Shared {
    fn new(config: &Config) -> Result<Shared, MilterError> {
        let cfg = config.milter.clone();
        let readiness = ReadinessCache::new(&cfg.health_url, cfg.health_ttl, cfg.health_timeout).map_err(MilterError::Config)?;
        let clamd = Client::new(config.clamd.production_endpoint(), config.clamd.timeout);
        Ok(Shared { cfg, readiness, clamd, outage: Default::default(), unscannable: Default::default(), metrics: Arc::default() })
    }

    fn gates_at(&self, at: Stage) -> bool {
        gates_at(self.cfg.mode, self.cfg.stage, at)
    }

    /// Connect callback: a fresh session, gated if this is the stage.
    async fn connect(self: Arc<Self>, ctx: &mut Context<Session>, client: SocketInfo) -> Status {
        let client = match client {
            SocketInfo::Inet(addr) => addr.ip().to_string(),
            SocketInfo::Unix(path) => format!("unix:{}", path.to_string_lossy()),
            SocketInfo::Unknown => "unknown".into(),
        };
        ctx.data = Some(Session { client: Some(client), ..Session::default() });
        if self.gates_at(Stage::Connect) { self.gate(ctx).await } else { Status::Continue }
    }

    async fn rcpt(self: Arc<Self>, ctx: &mut Context<Session>) -> Status {
        if self.gates_at(Stage::Rcpt) { self.gate(ctx).await } else { Status::Continue }
    }

    /// Asks `/readyz` (cached): tempfail while unhealthy. Gate mode has
    /// nothing more to do once the gate passed: `Accept` tells Postfix to
    /// leave the milter out of the rest of the message (or of the connection,
    /// at the connect stage), which saves every later round trip.
    async fn gate(&self, ctx: &mut Context<Session>) -> Status {
        let release = match self.decide().await {
            Gate::Closed => return tempfail(&mut ctx.reply, &self.cfg.tempfail_text),
            Gate::Open { release } => release,
        };
        ctx.data.get_or_insert_default().release = release;
        match self.cfg.mode {
            MilterMode::Gate => {
                self.metrics.action(Action::Accept);
                Status::Accept
            }
            MilterMode::Scan => Status::Continue,
        }
    }

    /// The gate's decision, shared by the milter and the policy service:
    /// the health answer (cached), its metrics, and the tempfail spell.
    async fn decide(&self) -> Gate {
        let (r, age) = self.readiness.get_aged().await;
        self.metrics.health(age, r.healthy());
        if !r.healthy() {
            self.outage_goes_on(&r.detail);
            self.metrics.action(Action::Tempfail);
            return Gate::Closed;
        }
        self.outage_ends();
        Gate::Open { release: r.release }
    }

    fn outage_goes_on(&self, detail: &str) {
        if let Some(mark) = self.outage.lock().expect("outage lock").bad(Instant::now()) {
            Subject::MilterTempfail.log(mark, detail, None);
        }
    }

    fn outage_ends(&self) {
        if let Some(mark) = self.outage.lock().expect("outage lock").good(Instant::now()) {
            Subject::MilterTempfail.log(mark, "", None);
        }
    }
}

/// Abort callback: the message is gone, so is any half-sent scan with it.
async fn abort(ctx: &mut Context<Session>) -> Status {
    if let Some(session) = ctx.data.as_mut() {
        session.scan = Scan::Idle;
    }
    Status::Continue
}

fn callbacks(shared: Arc<Shared>) -> Callbacks<Session> {
    let mut cb = Callbacks::new();
    // Without a connect callback Postfix skips that stage (one round trip
    // less per SMTP session): gate mode at RCPT has no use for it; scan mode
    // starts each session's state there.
    if shared.gates_at(Stage::Connect) || shared.cfg.mode == MilterMode::Scan {
        let s = shared.clone();
        cb = cb.on_connect(move |ctx, _host, addr| Box::pin(s.clone().connect(ctx, addr)));
    }
    let s = shared.clone();
    cb = cb.on_rcpt(move |ctx, _args| Box::pin(s.clone().rcpt(ctx)));
    cb = cb.on_abort(|ctx| Box::pin(abort(ctx)));
    match shared.cfg.mode {
        // Gate mode never looks at the message.
        MilterMode::Gate => cb,
        MilterMode::Scan => scan_callbacks(cb, shared),
    }
}

pub(crate) async fn run(config: &Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), MilterError> {
    let shared = Arc::new(Shared::new(config)?);
    let cfg = &config.milter;
    // One signal stops both: the milter's shutdown also stops /metrics.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let metrics = match &cfg.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| MilterError::MetricsListen { addr: addr.clone(), source })?;
            tracing::info!("milter metrics on http://{}/metrics", listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.clone()));
            Some(tokio::spawn(crate::health::http::serve(listener, shared.metrics.clone(), stop_rx.clone())))
        }
        None => None,
    };
    // Bound before the milter's socket, so both exist when systemd hears
    // READY and starts Postfix.
    let policy = match &cfg.policy_listen {
        Some(addr) => {
            let listener = policy::PolicyListener::bind(addr).await?;
            tracing::info!(listen = %addr, "milter policy service on {addr}");
            Some(tokio::spawn(policy::serve(listener, shared.clone(), stop_rx.clone())))
        }
        None => None,
    };
    // SIGHUP (logrotate, config tools) must not kill the milter: it keeps
    // nothing to reload but says so.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(MilterError::Serve)?;
    let hangup = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: the milter reads its config only at start; restart it to apply a new one");
        }
    });
    let served = serve(cfg, callbacks(shared), shutdown).await;
    hangup.abort();
    if let Some(task) = policy {
        if served.is_err() {
            task.abort();
        }
        let _ = task.await;
    }
    if let Some(task) = metrics {
        // Served until shutdown; a milter that failed to start never sends it.
        if served.is_err() {
            task.abort();
        }
        let _ = task.await;
    }
    served
}

async fn serve(cfg: &MilterConfig, callbacks: Callbacks<Session>, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), MilterError> {
    let mut mcfg = indymilter::Config { max_connections: cfg.max_connections, ..Default::default() };
    mcfg.actions = Actions::ADD_HEADER | Actions::QUARANTINE;
    mcfg.connection_timeout = Duration::from_secs(300);
    let listen_failed = |source| MilterError::Listen { addr: cfg.listen.clone(), source };
    if let Some(path) = cfg.listen.strip_prefix("unix:") {
        let path = Path::new(path);
        let listener = bind_unix(path).map_err(listen_failed)?;
        started(cfg);
        let served = indymilter::run(listener, callbacks, mcfg, shutdown).await;
        let _ = std::fs::remove_file(path);
        stopped(served)
    } else if let Some(addr) = cfg.listen.strip_prefix("inet:") {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen_failed)?;
        started(cfg);
        stopped(indymilter::run(listener, callbacks, mcfg, shutdown).await)
    } else {
        Err(MilterError::BadListen(cfg.listen.clone()))
    }
}

/// Logs the start and tells systemd (Type=notify) the socket is bound: the
/// unit orders Postfix after it, so Postfix never starts before the milter
/// can answer.
fn started(cfg: &MilterConfig) {
    tracing::info!(listen = %cfg.listen, mode = %cfg.mode, "clamgate milter started");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// A failure is reported by the caller, with the exit code.
fn stopped(served: std::io::Result<()>) -> Result<(), MilterError> {
    if served.is_ok() {
        tracing::info!("clamgate milter stopped");
    }
    served.map_err(MilterError::Serve)
}

/// The socket is ours: a stale one is removed first (`run` removes it after),
/// and it is not world-accessible.
fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    // A socket left by a crash would make bind fail.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_sessions_are_gated() {
        use MilterMode::{Gate, Scan};
        use Stage::{Connect, Rcpt};
        // (mode, stage) -> gated at connect, gated at rcpt
        for (mode, stage, want) in [(Gate, Connect, (true, false)), (Gate, Rcpt, (false, true)), (Scan, Connect, (true, true)), (Scan, Rcpt, (false, true))] {
            assert_eq!((gates_at(mode, stage, Connect), gates_at(mode, stage, Rcpt)), want, "{mode} {stage}");
        }
    }
}
