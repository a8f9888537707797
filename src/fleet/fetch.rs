//! The fleet's HTTP client: the gate asking hosts' `/readyz`, a host
//! fetching its ring's pointer, manifest and files. Every request is
//! bounded in time and size; a file is streamed to disk while hashed.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, ETAG, IF_NONE_MATCH};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// How long a download may go without a byte before it is given up.
pub(crate) const DOWNLOAD_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("GET {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("GET {url}: no answer within {} s", after.as_secs_f64())]
    Timeout { url: String, after: Duration },
    #[error("GET {url}: no byte for {} s after {got} bytes", after.as_secs_f64())]
    Stalled { url: String, after: Duration, got: u64 },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("GET {url}: larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An answer held in memory (`body` empty on 304).
pub(crate) struct Got {
    pub(crate) status: StatusCode,
    pub(crate) etag: Option<String>,
    pub(crate) body: Bytes,
}

#[derive(Clone)]
pub(crate) struct Client {
    inner: Hyper<HttpConnector, Empty<Bytes>>,
    token: Option<String>,
    timeout: Duration,
    idle: Duration,
}

impl Client {
    /// `timeout` bounds each request, body included, except a
    /// [`Client::download`]'s body, which is bounded by [`DOWNLOAD_IDLE`]
    /// between bytes (a large file on a slow link takes what it takes).
    pub(crate) fn new(token: Option<String>, timeout: Duration) -> Client {
        let inner = Hyper::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(10)).build_http();
        Client { inner, token, timeout, idle: DOWNLOAD_IDLE }
    }

    #[cfg(test)]
    fn with_idle(self, idle: Duration) -> Client {
        Client { idle, ..self }
    }

    fn request(&self, url: &str, etag: Option<&str>) -> Result<hyper::Request<Empty<Bytes>>, FetchError> {
        let mut req = hyper::Request::get(url);
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(e) = etag {
            req = req.header(IF_NONE_MATCH, e);
        }
        req.body(Empty::new()).map_err(|e| FetchError::Unreachable { url: url.into(), why: e.to_string() })
    }

    /// GET into memory; 200 and 304 are answers, anything else an error
    /// (except that [`Client::get_any`] keeps the status).
    pub(crate) async fn get(&self, url: &str, etag: Option<&str>, limit: u64) -> Result<Got, FetchError> {
        let got = self.get_any(url, etag, limit).await?;
        if got.status != StatusCode::OK && got.status != StatusCode::NOT_MODIFIED {
            return Err(FetchError::Status { url: url.into(), status: got.status });
        }
        Ok(got)
    }

    pub(crate) async fn get_any(&self, url: &str, etag: Option<&str>, limit: u64) -> Result<Got, FetchError> {
        let req = self.request(url, etag)?;
        let run = async {
            let resp = self.inner.request(req).await.map_err(|e| FetchError::Unreachable { url: url.into(), why: chain(&e) })?;
            let status = resp.status();
            let etag = resp.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| FetchError::Unreachable { url: url.into(), why: e.to_string() })?;
                if let Some(d) = frame.data_ref() {
                    if (buf.len() + d.len()) as u64 > limit {
                        return Err(FetchError::TooLarge { url: url.into(), limit });
                    }
                    buf.extend_from_slice(d);
                }
            }
            Ok(Got { status, etag, body: buf.into() })
        };
        tokio::time::timeout(self.timeout, run).await.map_err(|_| FetchError::Timeout { url: url.into(), after: self.timeout })?
    }

    /// GET into `to` (created), at most `limit` bytes; returns size and
    /// sha256. The answer's head is bounded by the request timeout, the body
    /// by the idle bound between bytes, not in total.
    pub(crate) async fn download(&self, url: &str, to: &Path, limit: u64) -> Result<(u64, String), FetchError> {
        let req = self.request(url, None)?;
        let ioe = |source| FetchError::Io { path: to.to_path_buf(), source };
        let head = tokio::time::timeout(self.timeout, self.inner.request(req)).await;
        let resp = head
            .map_err(|_| FetchError::Timeout { url: url.into(), after: self.timeout })?
            .map_err(|e| FetchError::Unreachable { url: url.into(), why: chain(&e) })?;
        if resp.status() != StatusCode::OK {
            return Err(FetchError::Status { url: url.into(), status: resp.status() });
        }
        {
            let mut file = tokio::fs::File::create(to).await.map_err(ioe)?;
            let (mut size, mut hash) = (0u64, Sha256::new());
            let mut body = resp.into_body();
            loop {
                let next = tokio::time::timeout(self.idle, body.frame()).await;
                let Some(frame) = next.map_err(|_| FetchError::Stalled { url: url.into(), after: self.idle, got: size })? else { break };
                let frame = frame.map_err(|e| FetchError::Unreachable { url: url.into(), why: e.to_string() })?;
                if let Some(d) = frame.data_ref() {
                    size += d.len() as u64;
                    if size > limit {
                        return Err(FetchError::TooLarge { url: url.into(), limit });
                    }
                    hash.update(d);
                    file.write_all(d).await.map_err(ioe)?;
                }
            }
            file.sync_all().await.map_err(ioe)?;
            Ok((size, hex::encode(hash.finalize())))
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Serves one GET: a head for `total` bytes, then the body in `chunks`
    /// `gap` apart, or (if `stall`) half of them and then nothing more,
    /// holding the connection.
    async fn dribbler(total: usize, chunks: usize, gap: Duration, stall: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req).await.unwrap();
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").as_bytes()).await.unwrap();
            let each = total / chunks;
            // Stalling, it sends only half of the body.
            for _ in 0..if stall { chunks / 2 } else { chunks } {
                tokio::time::sleep(gap).await;
                s.write_all(&vec![b'x'; each]).await.unwrap();
            }
            if stall {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
        format!("http://{addr}/f")
    }

    /// A body that keeps coming is taken however long it takes in all: here
    /// far past ten times the request bound, the old whole-file limit.
    #[tokio::test]
    async fn a_slow_but_steady_download_arrives() {
        let url = dribbler(40, 20, Duration::from_millis(60), false).await;
        let d = tempfile::tempdir().unwrap();
        let client = Client::new(None, Duration::from_millis(50)).with_idle(Duration::from_secs(30));
        let (size, sha) = client.download(&url, &d.path().join("f.part"), 1 << 20).await.unwrap();
        assert_eq!((size, sha), (40, super::super::tree::sha256_hex(&[b'x'; 40])));
    }

    /// One that stops is given up once no byte came for the idle bound.
    #[tokio::test]
    async fn a_stalled_download_is_given_up() {
        let url = dribbler(40, 2, Duration::ZERO, true).await;
        let d = tempfile::tempdir().unwrap();
        let client = Client::new(None, Duration::from_secs(30)).with_idle(Duration::from_millis(200));
        match client.download(&url, &d.path().join("f.part"), 1 << 20).await {
            Err(FetchError::Stalled { got, .. }) => assert!(got < 40, "{got}"),
            other => panic!("not given up as stalled: {:?}", other.map_err(|e| e.to_string())),
        }
    }
}
