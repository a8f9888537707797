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

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("GET {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("GET {url}: no answer within {} s", after.as_secs())]
    Timeout { url: String, after: Duration },
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
}

impl Client {
    /// `timeout` bounds each request, body included.
    pub(crate) fn new(token: Option<String>, timeout: Duration) -> Client {
        let inner = Hyper::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(10)).build_http();
        Client { inner, token, timeout }
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

    /// GET into `to` (created), at most `limit` bytes; returns size and sha256.
    pub(crate) async fn download(&self, url: &str, to: &Path, limit: u64) -> Result<(u64, String), FetchError> {
        let req = self.request(url, None)?;
        let ioe = |source| FetchError::Io { path: to.to_path_buf(), source };
        let run = async {
            let resp = self.inner.request(req).await.map_err(|e| FetchError::Unreachable { url: url.into(), why: chain(&e) })?;
            if resp.status() != StatusCode::OK {
                return Err(FetchError::Status { url: url.into(), status: resp.status() });
            }
            let mut file = tokio::fs::File::create(to).await.map_err(ioe)?;
            let (mut size, mut hash) = (0u64, Sha256::new());
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
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
        };
        // A large file on a slow link: ten times the request bound.
        let after = self.timeout * 10;
        tokio::time::timeout(after, run).await.map_err(|_| FetchError::Timeout { url: url.into(), after })?
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
