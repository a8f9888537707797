//! `/metrics` as a test reads it: fetched over real HTTP and parsed with a
//! real Prometheus text parser, so a malformed exposition fails the test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Scrape {
    pub text: String,
    pub samples: Vec<prometheus_parse::Sample>,
}

/// GET /metrics; `None` while the endpoint does not answer 200.
pub fn scrape(addr: SocketAddr) -> Option<Scrape> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let raw = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let samples = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text").samples;
    Some(Scrape { text: body.to_string(), samples })
}

impl Scrape {
    /// The sum over the series of `name` whose labels include all of `labels`;
    /// `None` when there is no such series.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.samples.iter().filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))) {
            let v = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            };
            *found.get_or_insert(0.0) += v;
        }
        found
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.metric == name)
    }
}

/// Scrapes until `cond` holds (bounded; a failure bound, not a speed limit).
pub async fn scrape_until(addr: SocketAddr, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut last = None;
    for _ in 0..1200 {
        if let Some(s) = scrape(addr) {
            if cond(&s) {
                return s;
            }
            last = Some(s.text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for metrics: {what}\nlast scrape:\n{}", last.unwrap_or_default());
}
