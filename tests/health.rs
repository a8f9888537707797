//! The health endpoint with a real production clamd: it passes only while
//! production really scans, and its HTTP surface is strict.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::daemon::{Env, set_id};
use support::*;

/// One raw HTTP/1.1 exchange; returns (status code, headers+body text).
fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

fn get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value, String) {
    let (code, text) = http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null), text)
}

async fn ready_becomes(env: &Env, want: u16, what: &str) -> serde_json::Value {
    ready_until(env, want, "", what).await
}

/// Polls /readyz until it answers `want` with `output` containing `needle`.
async fn ready_until(env: &Env, want: u16, needle: &str, what: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..600 {
        if let Ok((code, body, _)) = std::panic::catch_unwind(|| get(env.health, "/readyz")) {
            if code == want && body["output"].as_str().unwrap_or("").contains(needle) {
                return body;
            }
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("readyz never became {want} ({what}); last: {last:#}\n{}", env.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_what_production_really_does() {
    let env = Env::new("", "");
    let _d = env.promoted("daily-v1").await;
    let body = ready_until(&env, 503, "down", "no production clamd yet").await;
    assert_eq!(body["status"], "fail");

    let mut prod = env.start_production(&[]).await;
    let body = ready_becomes(&env, 200, "production up").await;
    assert_eq!(body["status"], "pass", "{body:#}");
    assert_eq!(body["releaseId"], set_id("daily-v1").as_str());
    assert_eq!(body["checks"]["clamd:database"][0]["observedValue"], 1);
    assert!(body["checks"]["clamd:scan"][0]["observedValue"].as_f64().unwrap() > 0.0);
    let (_, _, raw) = get(env.health, "/readyz");
    assert!(raw.to_ascii_lowercase().contains("content-type: application/health+json"), "{raw}");

    // Killed: fails (probe interval is 200 ms; the bound is generous on purpose).
    prod.process.kill();
    ready_until(&env, 503, "down", "production killed").await;

    // Replaced by a clamd that answers PING and VERSION but detects nothing.
    let wrong = Clamd::start_in(&set("miss"), &env.path().join("prod"), &[]).await.unwrap();
    let body = ready_until(&env, 503, "expected detected", "wrong verdicts").await;
    assert_eq!(body["status"], "fail");
    drop(wrong);

    let _prod = env.start_production(&[]).await;
    ready_becomes(&env, 200, "production back").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let env = Env::new("", "");
    // The whole candidate rejected, as these counters were written for;
    // held files under isolation are counted by tests/isolation.rs.
    env.policy("isolation = \"set\"\n");
    let _d = env.promoted("daily-v1").await;
    let _prod = env.start_production(&[]).await;
    env.put("fp");
    env.wait_event("candidate.quarantined", Some(&set_id("fp"))).await;
    ready_becomes(&env, 200, "production up").await;

    let m = support::metrics::scrape(env.health).expect("/metrics answers 200");
    let value = |name: &str, labels: &[(&str, &str)]| m.value(name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}\n{}", m.text));
    assert_eq!(value("clamgate_promotions_total", &[]), 1.0);
    assert_eq!(value("clamgate_candidates_total", &[("reason", "sanity.missing_database")]), 1.0);
    assert!(value("clamgate_probes_total", &[("result", "pass")]) >= 1.0);
    assert_eq!(value("clamgate_live_database_version", &[("database", "daily")]), 1.0);
    assert_eq!(value("clamgate_live_release_info", &[("release", &set_id("daily-v1")), ("daily_version", "1")]), 1.0);
    assert!(value("clamgate_last_promotion_timestamp_seconds", &[]) > 1.7e9);
    assert!(value("clamgate_canary_peak_bytes", &[]) > 1e6);
    assert!(m.has("clamgate_probe_latency_seconds_count") && m.has("clamgate_build_info"), "{}", m.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_surface_is_strict() {
    let env = Env::new("", "");
    let _d = env.spawn();
    env.wait_event("daemon.started", None).await;
    for _ in 0..200 {
        if TcpStream::connect(env.health).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(get(env.health, "/livez").0, 200);
    assert_eq!(get(env.health, "/nope").0, 404);
    let (code, text) = http(env.health, "POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 405);
    assert!(text.to_ascii_lowercase().contains("allow: get, head"), "{text}");
    let (code, text) = http(env.health, "HEAD /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 200);
    assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text:?}");
    // A 64 KiB header is refused or the connection closed; the daemon lives on.
    let big = format!("GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let (code, _) = http(env.health, &big);
    assert!(code == 431 || code == 0 || code == 400, "oversized request got {code}");
    let (code, _) = http(env.health, "GARBAGE\r\n\r\n");
    assert!(code == 400 || code == 0, "garbage got {code}");
    assert_eq!(get(env.health, "/livez").0, 200, "still alive");
}
