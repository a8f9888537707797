//! The gate as a Postfix policy service (SMTPD_POLICY_README): the same
//! decision as gate mode, answered over the policy delegation protocol.
//! Why: smtpd keeps one policy connection per process and reuses it for
//! every SMTP session, so a recipient costs one round trip on a connection
//! that is already open, where a milter costs a connection, a negotiation
//! and a reply per session.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;

use super::metrics::Action;
use super::{Gate, MilterError, Shared};

/// One attribute line and one request, at most: Postfix sends a few hundred
/// bytes; anything larger is not Postfix, and the connection is closed.
const MAX_LINE: u64 = 8 * 1024;
const MAX_REQUEST: usize = 64 * 1024;
/// Postfix closes an idle policy connection after
/// `smtpd_policy_service_max_idle` (300 s): a connection idle longer than
/// that is a client that went away without closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(330);
/// A reply is a few dozen bytes: a client that does not read it in this time
/// (pipelining requests without reading) loses its connection, not a slot.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the policy service listens (`[milter] policy_listen`).
pub(crate) enum PolicyListener {
    Unix(tokio::net::UnixListener, std::path::PathBuf),
    Tcp(tokio::net::TcpListener),
}

impl PolicyListener {
    /// Binds `unix:PATH` or `inet:HOST:PORT`, as `[milter] listen` does.
    pub(crate) async fn bind(addr: &str) -> Result<PolicyListener, MilterError> {
        let failed = |source| MilterError::PolicyListen { addr: addr.to_string(), source };
        if let Some(path) = addr.strip_prefix("unix:") {
            Ok(PolicyListener::Unix(super::bind_unix(std::path::Path::new(path)).map_err(failed)?, path.into()))
        } else if let Some(hp) = addr.strip_prefix("inet:") {
            Ok(PolicyListener::Tcp(tokio::net::TcpListener::bind(hp).await.map_err(failed)?))
        } else {
            Err(MilterError::BadListen(addr.to_string()))
        }
    }
}

/// Answers policy requests until `stop`; connections beyond
/// `max_connections` are closed at once (Postfix then retries, and after
/// `smtpd_policy_service_try_limit` applies its default action, a tempfail).
pub(crate) async fn serve(listener: PolicyListener, shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(shared.cfg.max_connections));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = accept(&listener) => a,
        };
        let conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("policy service accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
        let shared = shared.clone();
        conns.spawn(async move {
            if let Err(e) = answer(conn, &shared).await {
                tracing::debug!("policy connection closed: {e}");
            }
            drop(permit);
        });
    }
    conns.abort_all();
    if let PolicyListener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

type Conn = Box<dyn Io>;
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn accept(listener: &PolicyListener) -> std::io::Result<Conn> {
    Ok(match listener {
        PolicyListener::Unix(l, _) => Box::new(l.accept().await?.0),
        PolicyListener::Tcp(l) => Box::new(l.accept().await?.0),
    })
}

/// Why a policy connection was closed by us.
#[derive(Debug, thiserror::Error)]
enum PolicyError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("reply not read within {0:?}")]
    Stalled(Duration),
    #[error("request line or request too long (not Postfix?)")]
    TooLong,
    #[error("not a policy request: {0:?}")]
    Malformed(String),
}

/// One connection: requests in turn until Postfix closes it.
async fn answer(conn: Conn, shared: &Shared) -> Result<(), PolicyError> {
    let mut conn = BufReader::new(conn);
    loop {
        match tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut conn)).await {
            Err(_) => return Err(PolicyError::Idle(IDLE_TIMEOUT)),
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        }
        let reply = match shared.decide().await {
            Gate::Open { .. } => {
                shared.metrics.action(Action::Accept);
                "action=DUNNO\n\n".to_string()
            }
            Gate::Closed => format!("action=451 4.7.1 {}\n\n", shared.cfg.tempfail_text),
        };
        match tokio::time::timeout(WRITE_TIMEOUT, conn.get_mut().write_all(reply.as_bytes())).await {
            Err(_) => return Err(PolicyError::Stalled(WRITE_TIMEOUT)),
            Ok(written) => written?,
        }
    }
}

/// Reads one request (`name=value` lines ended by an empty line); false at a
/// clean end of the connection. Only the shape is checked: the gate's
/// answer does not depend on what the request says.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(conn: &mut R) -> Result<bool, PolicyError> {
    let mut total = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut *conn).take(MAX_LINE).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return if total == 0 { Ok(false) } else { Err(PolicyError::Malformed("end of connection mid-request".into())) };
        }
        if line.last() != Some(&b'\n') {
            return Err(PolicyError::TooLong);
        }
        total += n;
        if total > MAX_REQUEST {
            return Err(PolicyError::TooLong);
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        if body.is_empty() {
            return if total == 1 { Err(PolicyError::Malformed("empty request".into())) } else { Ok(true) };
        }
        if !body.contains(&b'=') {
            return Err(PolicyError::Malformed(String::from_utf8_lossy(body).into_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(input: &[u8]) -> Result<bool, PolicyError> {
        let mut r = BufReader::new(input);
        read_request(&mut r).await
    }

    #[tokio::test]
    async fn requests_end_at_an_empty_line_and_are_bounded() {
        assert!(read(b"request=smtpd_access_policy\nprotocol_state=RCPT\n\n").await.unwrap());
        assert!(!read(b"").await.unwrap(), "a clean close");
        assert!(matches!(read(b"request=smtpd_access_policy\n").await, Err(PolicyError::Malformed(_))));
        assert!(matches!(read(b"GET / HTTP/1.0\n\n").await, Err(PolicyError::Malformed(_))));
        assert!(matches!(read(b"\n").await, Err(PolicyError::Malformed(_))));
        let long = format!("a={}\n\n", "x".repeat(MAX_LINE as usize));
        assert!(matches!(read(long.as_bytes()).await, Err(PolicyError::TooLong)));
        let many: String = (0..10_000).map(|i| format!("k{i}=value\n")).collect();
        assert!(matches!(read(format!("{many}\n").as_bytes()).await, Err(PolicyError::TooLong)));
    }

    #[tokio::test]
    async fn two_requests_on_one_connection() {
        let mut r = BufReader::new(&b"a=1\n\nb=2\n\n"[..]);
        assert!(read_request(&mut r).await.unwrap());
        assert!(read_request(&mut r).await.unwrap());
        assert!(!read_request(&mut r).await.unwrap());
    }
}
