//! `clamgate milter`: the Postfix side. In `gate` mode it only asks
//! `/readyz` and tempfails (451 4.7.1) while scanning is unhealthy; in `scan`
//! mode it also streams every message to the production clamd as it
//! arrives. It never accepts a message it was asked to scan but could not,
//! and never rejects mail because of its own failure: those are tempfailed.

pub mod readiness;

use std::ffi::CString;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indymilter::{Actions, Callbacks, ContextActions, SetErrorReply, SmtpReply, Status};

use crate::clamd::{Client, ScanVerdict, StreamScan};
use crate::config::{Config, MilterConfig};
use readiness::ReadinessCache;

#[derive(Debug, thiserror::Error)]
pub enum MilterError {
    #[error("milter.listen {0:?}: expected unix:PATH or inet:HOST:PORT")]
    BadListen(String),
    #[error("milter: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("milter: {0}")]
    Config(String),
    #[error("milter stopped serving: {0}")]
    Serve(std::io::Error),
}

/// Everything a callback needs, shared by all sessions.
struct Shared {
    cfg: MilterConfig,
    scan: bool,
    readiness: ReadinessCache,
    clamd: Client,
    outage: std::sync::Mutex<Option<Outage>>,
}

/// An unhealthy spell, logged when it starts and ends and once a minute in
/// between: a busy server would otherwise log a line per message.
struct Outage {
    since: Instant,
    logged: Instant,
    tempfailed: u64,
    total: u64,
}

const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Per-message scan state.
#[derive(Default)]
struct Session {
    stream: Option<StreamScan>,
    /// Why this message cannot be scanned; it will be tempfailed at EOM.
    failed: Option<String>,
    release: Option<String>,
}

impl Session {
    /// Per-message state that went missing mid-message: the message is
    /// tempfailed at its end, never accepted half-scanned.
    fn lost() -> Session {
        Session { failed: Some("scan state lost mid-message".into()), ..Session::default() }
    }
}

fn tempfail(reply: &mut SmtpReply, text: &str) -> Status {
    // 451 4.7.1: the sender's MTA keeps the message and retries.
    let _ = reply.set_error_reply("451", Some("4.7.1"), [text]);
    Status::Tempfail
}

impl Shared {
    /// Gate check at the configured stage.
    async fn gate(&self, reply: &mut SmtpReply, session: &mut Session) -> Status {
        let r = self.readiness.get().await;
        if r.healthy {
            self.outage_ends();
            session.release = r.release;
            Status::Continue
        } else {
            self.outage_goes_on(&r.detail);
            tempfail(reply, &self.cfg.tempfail_text)
        }
    }

    /// Gate mode has nothing more to do once the gate passed: `Accept` tells
    /// Postfix to leave the milter out of the rest of the message (or of the
    /// connection, at the connect stage), which saves every later round trip.
    fn done_if_gate_only(&self, status: Status) -> Status {
        if !self.scan && status == Status::Continue { Status::Accept } else { status }
    }

    fn outage_goes_on(&self, detail: &str) {
        let mut outage = self.outage.lock().expect("outage lock");
        let now = Instant::now();
        match outage.as_mut() {
            None => {
                tracing::warn!("scanning is not healthy ({detail}); tempfailing mail until it is");
                *outage = Some(Outage { since: now, logged: now, tempfailed: 1, total: 1 });
            }
            Some(o) => {
                o.tempfailed += 1;
                o.total += 1;
                if now.duration_since(o.logged) >= OUTAGE_LOG_EVERY {
                    tracing::warn!(
                        "scanning still not healthy after {}s ({detail}); tempfailed {} times in the last {}s",
                        now.duration_since(o.since).as_secs(),
                        o.tempfailed,
                        now.duration_since(o.logged).as_secs()
                    );
                    o.logged = now;
                    o.tempfailed = 0;
                }
            }
        }
    }

    fn outage_ends(&self) {
        let mut outage = self.outage.lock().expect("outage lock");
        if let Some(o) = outage.take() {
            tracing::warn!("scanning is healthy again after {:.1}s; tempfailed {} times meanwhile", o.since.elapsed().as_secs_f64(), o.total);
        }
    }

    async fn send(&self, session: &mut Session, data: &[u8]) {
        if session.failed.is_some() {
            return;
        }
        if session.stream.is_none() {
            match self.clamd.stream().await {
                Ok(s) => session.stream = Some(s),
                Err(e) => {
                    session.failed = Some(e.to_string());
                    return;
                }
            }
        }
        let stream = session.stream.as_mut().expect("just set");
        if let Err(e) = stream.send(data).await {
            session.failed = Some(e.to_string());
            session.stream = None;
        }
    }
}

pub async fn run(config: &Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), MilterError> {
    let cfg = config.milter.clone();
    let readiness = ReadinessCache::new(&cfg.health_url, cfg.health_ttl, cfg.health_timeout).map_err(MilterError::Config)?;
    let shared = Arc::new(Shared {
        scan: cfg.mode == "scan",
        clamd: Client::new(config.clamd.endpoint.clone(), config.clamd.timeout),
        readiness,
        cfg: cfg.clone(),
        outage: std::sync::Mutex::new(None),
    });
    let callbacks = callbacks(shared);
    let mut mcfg = indymilter::Config { max_connections: cfg.max_connections, ..Default::default() };
    mcfg.actions = Actions::ADD_HEADER | Actions::QUARANTINE;
    mcfg.connection_timeout = Duration::from_secs(300);
    tracing::info!(listen = %cfg.listen, mode = %cfg.mode, "clamgate milter starting");
    if let Some(path) = cfg.listen.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        // A socket left by a crash would make bind fail; ours to remove.
        if std::fs::symlink_metadata(&path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
            let _ = std::fs::remove_file(&path);
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(|source| MilterError::Listen { addr: cfg.listen.clone(), source })?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660));
        let r = indymilter::run(listener, callbacks, mcfg, shutdown).await;
        let _ = std::fs::remove_file(&path);
        r.map_err(MilterError::Serve)
    } else if let Some(addr) = cfg.listen.strip_prefix("inet:") {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| MilterError::Listen { addr: cfg.listen.clone(), source })?;
        indymilter::run(listener, callbacks, mcfg, shutdown).await.map_err(MilterError::Serve)
    } else {
        Err(MilterError::BadListen(cfg.listen))
    }
}

fn connect_callback(cb: Callbacks<Session>, s: Arc<Shared>) -> Callbacks<Session> {
    cb.on_connect(move |ctx, _host: CString, _addr| {
        let s = s.clone();
        Box::pin(async move {
            ctx.data = Some(Session::default());
            if s.cfg.stage == "connect" {
                let mut session = ctx.data.take().unwrap_or_default();
                let status = s.gate(&mut ctx.reply, &mut session).await;
                ctx.data = Some(session);
                return s.done_if_gate_only(status);
            }
            Status::Continue
        })
    })
}

fn callbacks(shared: Arc<Shared>) -> Callbacks<Session> {
    let mut cb = Callbacks::new();
    // Without a connect callback Postfix skips that stage (one round trip
    // less per SMTP session): gate mode at RCPT has no use for it.
    if shared.cfg.stage == "connect" || shared.scan {
        cb = connect_callback(cb, shared.clone());
    }
    let s = shared.clone();
    cb = cb.on_rcpt(move |ctx, _args| {
        let s = s.clone();
        Box::pin(async move {
            if s.cfg.stage == "rcpt" || s.scan {
                let mut session = ctx.data.take().unwrap_or_default();
                let status = s.gate(&mut ctx.reply, &mut session).await;
                ctx.data = Some(session);
                return s.done_if_gate_only(status);
            }
            Status::Continue
        })
    });
    let s = shared.clone();
    cb = cb.on_abort(move |ctx| {
        let _ = &s;
        Box::pin(async move {
            // The message is gone: drop any half-sent scan with it.
            if let Some(session) = ctx.data.as_mut() {
                session.stream = None;
                session.failed = None;
            }
            Status::Continue
        })
    });
    if !shared.scan {
        // Gate mode never looks at the message.
        return cb;
    }
    // Nothing to decide at DATA, but without a DATA callback Postfix sends
    // the DATA macros and the first header back to back without waiting for
    // a reply; over TCP, Nagle on its side and delayed ACK on ours then
    // stall every message ~40 ms. Answering here keeps the exchange moving.
    cb = cb.on_data(|_ctx| Box::pin(async { Status::Continue }));
    let s = shared.clone();
    cb = cb.on_header(move |ctx, name, value| {
        let s = s.clone();
        Box::pin(async move {
            let mut session = ctx.data.take().unwrap_or_else(Session::lost);
            let mut line = name.into_bytes();
            line.extend_from_slice(b": ");
            line.extend_from_slice(value.as_bytes());
            line.extend_from_slice(b"\r\n");
            s.send(&mut session, &line).await;
            ctx.data = Some(session);
            Status::Continue
        })
    });
    let s = shared.clone();
    cb = cb.on_eoh(move |ctx| {
        let s = s.clone();
        Box::pin(async move {
            let mut session = ctx.data.take().unwrap_or_else(Session::lost);
            s.send(&mut session, b"\r\n").await;
            ctx.data = Some(session);
            Status::Continue
        })
    });
    let s = shared.clone();
    cb = cb.on_body(move |ctx, chunk: Bytes| {
        let s = s.clone();
        Box::pin(async move {
            let mut session = ctx.data.take().unwrap_or_else(Session::lost);
            s.send(&mut session, &chunk).await;
            ctx.data = Some(session);
            Status::Continue
        })
    });
    let s = shared;
    cb.on_eom(move |ctx| {
        let s = s.clone();
        Box::pin(async move {
            let mut session = ctx.data.take().unwrap_or_else(Session::lost);
            let release = session.release.clone();
            // Even an empty message must be scanned before it is accepted.
            if session.stream.is_none() && session.failed.is_none() {
                s.send(&mut session, b"").await;
            }
            let verdict = match (session.failed.take(), session.stream.take()) {
                (Some(e), _) => Err(e),
                (None, Some(stream)) => stream.finish().await.map_err(|e| e.to_string()),
                (None, None) => Err("no scan stream".to_string()),
            };
            ctx.data = Some(Session { release: release.clone(), ..Session::default() });
            match verdict {
                Ok(ScanVerdict::Clean) => {
                    if s.cfg.add_header {
                        let v = format!("clamgate (release {})", release.as_deref().unwrap_or("unknown"));
                        let _ = ctx.actions.add_header("X-Virus-Scanned", v).await;
                    }
                    Status::Continue
                }
                Ok(ScanVerdict::Infected(sig)) => infected(&s.cfg, ctx, &sig).await,
                Ok(ScanVerdict::Error(e)) | Err(e) => {
                    tracing::warn!("tempfailing a message that could not be scanned: {e}");
                    tempfail(&mut ctx.reply, &s.cfg.tempfail_text)
                }
            }
        })
    })
}

async fn infected(cfg: &MilterConfig, ctx: &mut indymilter::EomContext<Session>, sig: &str) -> Status {
    tracing::info!(signature = sig, action = %cfg.on_infected, "infected message");
    match cfg.on_infected.as_str() {
        "quarantine" => {
            if ctx.actions.quarantine(format!("clamgate: {sig}")).await.is_ok() {
                return Status::Continue;
            }
            // Could not quarantine: never deliver it silently.
            tempfail(&mut ctx.reply, "could not quarantine an infected message")
        }
        "header" => {
            if ctx.actions.add_header("X-Virus-Found", sig).await.is_ok() {
                return Status::Continue;
            }
            tempfail(&mut ctx.reply, "could not mark an infected message")
        }
        _ => {
            let _ = ctx.reply.set_error_reply("554", Some("5.7.1"), [format!("Message rejected: virus found ({sig})")]);
            Status::Reject
        }
    }
}
