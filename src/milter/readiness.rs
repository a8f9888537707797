//! The milter's view of scanning health: `/readyz`, asked over HTTP with a
//! timeout and cached for a short TTL, so a burst of mail costs at most one
//! request per TTL and an unreachable endpoint counts as unhealthy.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

use crate::status::Status;

/// What the milter (and `clamgate status`) need to know, from one /readyz answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Readiness {
    /// Why not, for logs.
    pub(crate) detail: String,
    pub(crate) release: Option<String>,
    /// The daemon's verdict; `None` when it did not answer at all.
    pub(crate) status: Option<Status>,
    /// The daemon's reason for warn or fail.
    pub(crate) output: Option<String>,
    /// Age of the live daily database, when the daemon knows it.
    pub(crate) database_age: Option<u64>,
}

impl Readiness {
    /// Healthy only on 200 with `status` pass or warn.
    pub(crate) fn healthy(&self) -> bool {
        matches!(self.status, Some(Status::Pass | Status::Warn))
    }
}

/// A `milter.health_url` the milter cannot ask.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HealthUrlError {
    #[error("milter.health_url {url:?}: {reason}")]
    Invalid { url: String, reason: hyper::http::uri::InvalidUri },
    #[error("milter.health_url {url}: only http:// is supported (the endpoint listens on loopback)")]
    NotHttp { url: hyper::Uri },
}

/// Why one /readyz request gave no answer; the milter counts it as unhealthy.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: hyper::Uri, reason: Box<hyper_util::client::legacy::Error> },
    #[error("reading {url}: {reason}")]
    Body { url: hyper::Uri, reason: Box<dyn std::error::Error + Send + Sync> },
    #[error("{url} did not answer within {after:?}")]
    Timeout { url: hyper::Uri, after: Duration },
}

pub(crate) struct ReadinessCache {
    url: hyper::Uri,
    ttl: Duration,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
    // A tokio Mutex: concurrent sessions wait for the one request in flight.
    cached: Mutex<Option<(Instant, Readiness)>>,
}

impl ReadinessCache {
    pub(crate) fn new(url: &str, ttl: Duration, timeout: Duration) -> Result<ReadinessCache, HealthUrlError> {
        let url: hyper::Uri = url.parse().map_err(|reason| HealthUrlError::Invalid { url: url.to_string(), reason })?;
        if url.scheme_str() != Some("http") {
            return Err(HealthUrlError::NotHttp { url });
        }
        // Idle connections are dropped before the health endpoint would
        // close them (between requests, 30 s after accept): fewer requests
        // meet a connection the server is closing.
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(10)).build_http();
        Ok(ReadinessCache { url, ttl, timeout, client, cached: Mutex::new(None) })
    }

    pub(crate) async fn get(&self) -> Readiness {
        self.get_aged().await.0
    }

    /// The answer and how long ago it was fetched.
    pub(crate) async fn get_aged(&self) -> (Readiness, Duration) {
        let mut cached = self.cached.lock().await;
        if let Some((at, r)) = cached.as_ref()
            && at.elapsed() < self.ttl
        {
            return (r.clone(), at.elapsed());
        }
        let r = self.fetch().await;
        *cached = Some((Instant::now(), r.clone()));
        (r, Duration::ZERO)
    }

    async fn fetch(&self) -> Readiness {
        let answer = tokio::time::timeout(self.timeout, self.request())
            .await
            .unwrap_or_else(|_| Err(FetchError::Timeout { url: self.url.clone(), after: self.timeout }));
        match answer {
            Ok((code, body)) => parse(code, &body),
            Err(e) => Readiness { detail: e.to_string(), release: None, status: None, output: None, database_age: None },
        }
    }

    async fn request(&self) -> Result<(u16, Bytes), FetchError> {
        let resp = self.client.get(self.url.clone()).await.map_err(|e| FetchError::Unreachable { url: self.url.clone(), reason: Box::new(e) })?;
        let code = resp.status().as_u16();
        // /readyz bodies are small; refuse to buffer a large one.
        let body =
            http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect().await.map_err(|reason| FetchError::Body { url: self.url.clone(), reason })?;
        Ok((code, body.to_bytes()))
    }
}

/// Healthy only on 200 with `status` pass or warn.
fn parse(code: u16, body: &[u8]) -> Readiness {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let status = v["status"].as_str().unwrap_or("");
    let release = v["releaseId"].as_str().map(str::to_string);
    let output = v["output"].as_str().map(str::to_string);
    // Anything but a clear pass or warn with 200 counts as fail: a daemon
    // that answers garbage is not vouching for scanning.
    let parsed = match status {
        "pass" if code == 200 => Status::Pass,
        "warn" if code == 200 => Status::Warn,
        _ => Status::Fail,
    };
    let detail = if parsed == Status::Fail {
        format!("readyz answered {code} {status:?}: {}", output.as_deref().unwrap_or("no reason given"))
    } else {
        status.to_string()
    };
    let database_age = v["checks"]["clamd:database-age"][0]["observedValue"].as_u64();
    Readiness { detail, release, status: Some(parsed), output, database_age }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn only_pass_or_warn_with_200_is_healthy() {
        assert!(parse(200, br#"{"status":"pass","releaseId":"abc"}"#).healthy());
        assert_eq!(parse(200, br#"{"status":"warn","releaseId":"abc"}"#).release.as_deref(), Some("abc"));
        for (code, body) in [(503, &br#"{"status":"fail","output":"down"}"#[..]), (200, b"{}"), (200, b"garbage"), (500, b""), (200, br#"{"status":"fail"}"#)] {
            assert!(!parse(code, body).healthy(), "{code} {:?}", String::from_utf8_lossy(body));
        }
    }
}
