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

/// What the milter needs to know, from one /readyz answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub healthy: bool,
    /// Why not, for logs.
    pub detail: String,
    pub release: Option<String>,
}

pub struct ReadinessCache {
    url: hyper::Uri,
    ttl: Duration,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
    // A tokio Mutex: concurrent sessions wait for the one request in flight.
    cached: Mutex<Option<(Instant, Readiness)>>,
}

impl ReadinessCache {
    pub fn new(url: &str, ttl: Duration, timeout: Duration) -> Result<ReadinessCache, String> {
        let url: hyper::Uri = url.parse().map_err(|e| format!("milter.health_url {url:?}: {e}"))?;
        if url.scheme_str() != Some("http") {
            return Err(format!("milter.health_url {url}: only http:// is supported (the endpoint listens on loopback)"));
        }
        // Idle connections are dropped before the health endpoint would
        // close them (between requests, 30 s after accept): fewer requests
        // meet a connection the server is closing.
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(10)).build_http();
        Ok(ReadinessCache { url, ttl, timeout, client, cached: Mutex::new(None) })
    }

    pub async fn get(&self) -> Readiness {
        let mut cached = self.cached.lock().await;
        if let Some((at, r)) = cached.as_ref() {
            if at.elapsed() < self.ttl {
                return r.clone();
            }
        }
        let r = self.fetch().await;
        *cached = Some((Instant::now(), r.clone()));
        r
    }

    async fn fetch(&self) -> Readiness {
        let unhealthy = |detail: String| Readiness { healthy: false, detail, release: None };
        let req = async {
            let resp = self.client.get(self.url.clone()).await.map_err(|e| format!("cannot reach {}: {e}", self.url))?;
            let status = resp.status();
            // /readyz bodies are small; refuse to buffer a large one.
            let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect().await.map_err(|e| format!("reading {}: {e}", self.url))?.to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, req).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return unhealthy(e),
            Err(_) => return unhealthy(format!("{} did not answer within {:?}", self.url, self.timeout)),
        };
        parse(status.as_u16(), &body)
    }
}

/// Healthy only on 200 with `status` pass or warn.
pub fn parse(code: u16, body: &[u8]) -> Readiness {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let status = v["status"].as_str().unwrap_or("");
    let release = v["releaseId"].as_str().map(str::to_string);
    let healthy = code == 200 && matches!(status, "pass" | "warn");
    let detail = if healthy { status.to_string() } else { format!("readyz answered {code} {status:?}: {}", v["output"].as_str().unwrap_or("no reason given")) };
    Readiness { healthy, detail, release }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn only_pass_or_warn_with_200_is_healthy() {
        assert!(parse(200, br#"{"status":"pass","releaseId":"abc"}"#).healthy);
        assert_eq!(parse(200, br#"{"status":"warn","releaseId":"abc"}"#).release.as_deref(), Some("abc"));
        for (code, body) in [(503, &br#"{"status":"fail","output":"down"}"#[..]), (200, b"{}"), (200, b"garbage"), (500, b""), (200, br#"{"status":"fail"}"#)] {
            assert!(!parse(code, body).healthy, "{code} {:?}", String::from_utf8_lossy(body));
        }
    }
}
