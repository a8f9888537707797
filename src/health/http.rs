//! The HTTP side of health: `/livez`, `/readyz`, `/metrics`. Answers come
//! from memory; a connection limit and timeouts keep a flood or a slow
//! client from hurting the daemon. The milter's `/metrics` is served by the
//! same code through [`Routes`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::{Health, Status};

/// Most connections served at once; more are closed on accept.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// A connection's life, keep-alive included; then it is closed between
/// requests.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Request head limit: our requests are a line and a few headers.
const MAX_HEAD: usize = 16 * 1024;

/// What an endpoint answers to GET and HEAD; the method checks, the limits
/// and the timeouts are [`serve`]'s.
pub trait Routes: Send + Sync + 'static {
    /// The answer to GET `path`, or `None` for a path it does not serve.
    fn get(&self, path: &str) -> Option<Response<Full<Bytes>>>;
}

pub(crate) async fn serve<R: Routes>(listener: TcpListener, routes: Arc<R>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("health endpoint accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            drop(stream); // over the limit: close at once rather than queue
            continue;
        };
        let routes = routes.clone();
        conns.spawn(async move {
            serve_connection(stream, routes).await;
            drop(permit);
        });
    }
    // Let in-flight answers finish, briefly.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

/// Serves one connection, bounded in time and request size. Public so the
/// fuzz target drives exactly this code with arbitrary bytes.
pub async fn serve_connection<I, R: Routes>(io: I, routes: Arc<R>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let routes = routes.clone();
        async move { Ok::<_, Infallible>(respond(&*routes, req.method(), req.uri().path())) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    if tokio::time::timeout(CONNECTION_TIMEOUT, conn.as_mut()).await.is_ok() {
        return;
    }
    // Time is up: finish the request in flight (a keep-alive client such as
    // the milter must not lose an answer mid-request), then close.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()))
        .expect("static headers are valid")
}

/// The exposition, as Prometheus asks for it.
pub(crate) fn metrics_reply(text: String) -> Response<Full<Bytes>> {
    reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
}

/// Pure routing on method and path; no I/O.
pub(crate) fn respond(routes: &impl Routes, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let Some(mut r) = routes.get(path) else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET or HEAD\n");
        r.headers_mut().insert(ALLOW, "GET, HEAD".parse().expect("valid"));
        return r;
    }
    if method == Method::HEAD {
        *r.body_mut() = Full::new(Bytes::new());
    }
    r
}

impl Routes for Health {
    fn get(&self, path: &str) -> Option<Response<Full<Bytes>>> {
        Some(match path {
            "/livez" if self.alive() => reply(StatusCode::OK, "text/plain", "ok\n"),
            "/livez" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "main loop stalled\n"),
            "/readyz" => {
                let (status, body) = self.readiness_body();
                let code = if status == Status::Fail { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
                reply(code, "application/health+json", body)
            }
            "/metrics" => metrics_reply(self.metrics.encode()),
            _ => return None,
        })
    }
}
