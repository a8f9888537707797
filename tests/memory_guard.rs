//! The memory guard under a real limit: the daemon runs in a memory cgroup
//! the test creates; with the limit lowered below what a canary needs, the
//! candidate is deferred (journal, /metrics, /readyz warn with the numbers)
//! while production keeps scanning the live release, and once the limit is
//! raised the same candidate is checked and promoted.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clamgate::clamd::ScanVerdict;
use support::cgroup::MemCgroup;
use support::daemon::{Env, set_id};
use support::metrics::scrape_until;
use support::*;

fn readyz(addr: SocketAddr) -> Option<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()?;
    Some((code, body))
}

async fn assert_scans(prod: &Clamd, version: u64) {
    let c = prod.client();
    assert_eq!(c.version().await.unwrap().database, Some(version), "production version");
    assert!(c.scan_file(&sample("infected/clam.exe")).await.unwrap().is_infected(), "production must detect");
    assert_eq!(c.scan_file(&sample("clean/letter.txt")).await.unwrap(), ScanVerdict::Clean);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_waits_for_memory_under_a_cgroup_limit_and_runs_once_there_is_room() {
    // Needs root and a writable memory cgroup: a test that silently passed
    // without one would prove nothing.
    let cg = MemCgroup::create("clamgate-guard").unwrap_or_else(|why| panic!("no memory cgroup to test under (run as root): {why}"));
    cg.set_limit(1 << 30);
    // Reserve 1 byte (the least a size may be) and no second engine: only the
    // canary's own estimate must fit under the cgroup's limit.
    let env = Env::new("[memory_guard]\nreserve = 1\nconcurrent_reload = \"no\"\n", "");
    env.put("daily-v1");
    let d = cg.spawn_daemon(&env);
    env.wait_event("promotion.done", Some(&set_id("daily-v1"))).await;
    assert!(cg.procs().contains(&d.pid()), "the daemon runs in {}", cg.dir().display());
    let prod = env.start_production(&[]).await;
    assert_scans(&prod, 1).await;
    let first = env.wait_event("candidate.checked", Some(&set_id("daily-v1"))).await.json();
    let peak = first["canary"]["peak_rss_bytes"].as_u64().expect("the first canary's peak is journaled");
    assert!(first["canary"]["signatures"].as_u64().is_some(), "and its signature count: {first}");

    // Less room than the last canary took: the next one must wait. (The
    // estimate is at least that canary's peak and at least 16 MiB.)
    let room = (peak / 2).min(8 << 20);
    cg.set_limit(cg.working_set() + room);
    let before = env.journal().len();
    env.put("daily-v2");
    let deferred = env.wait_after(before, "candidate.deferred", |e| e.name() == "candidate.deferred").await.json();
    assert_eq!(deferred["limit"], "cgroup", "{deferred}");
    let (needed, available) = (deferred["needed"].as_u64().unwrap(), deferred["available"].as_u64().unwrap());
    assert!(available < needed && needed >= peak, "{deferred}");
    assert_eq!(deferred["cgroup"].as_str().map(std::path::PathBuf::from).as_deref(), Some(cg.dir()), "{deferred}");
    assert!(!env.journal().iter().skip(before).any(|e| e.name() == "candidate.checked"), "no candidate is checked while deferred: {:#?}", env.journal());
    assert_eq!(clamds_under(&env.state()), 0, "no canary started");

    // Production keeps scanning the live release; readiness warns with the numbers.
    assert_scans(&prod, 1).await;
    assert_eq!(env.live(), Some(set_id("daily-v1")));
    let mut warned = None;
    for _ in 0..600 {
        if let Some((200, body)) = readyz(env.health)
            && body["status"] == "warn"
        {
            warned = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = warned.unwrap_or_else(|| panic!("/readyz never warned\n{}", env.log()));
    let output = body["output"].as_str().unwrap_or_default();
    assert!(output.contains("canary deferred") && output.contains(&cg.dir().display().to_string()), "{body:#}");
    assert_eq!(body["checks"]["clamgate:memory-guard"][0]["status"], "warn", "{body:#}");
    let m = scrape_until(env.health, "the deferral in /metrics", |s| s.value("clamgate_canary_deferred", &[]) == Some(1.0)).await;
    assert!(m.value("clamgate_canary_deferrals_total", &[("limit", "cgroup")]).unwrap_or(0.0) >= 1.0, "{}", m.text);
    assert_eq!(m.value("clamgate_canary_memory_needed_bytes", &[]), Some(needed as f64), "{}", m.text);

    // Deferred again at each retry (rescan_interval), still unchecked.
    let again = env.journal().len();
    env.wait_after(again, "a second deferral", |e| e.name() == "candidate.deferred").await;
    assert_eq!(env.live(), Some(set_id("daily-v1")));

    // Room again: the same candidate is checked and promoted.
    cg.set_limit(1 << 30);
    env.wait_event("promotion.done", Some(&set_id("daily-v2"))).await;
    assert_scans(&prod, 2).await;
    scrape_until(env.health, "the deferral cleared", |s| s.value("clamgate_canary_deferred", &[]) == Some(0.0)).await;
    let mut cleared = false;
    for _ in 0..600 {
        if let Some((200, body)) = readyz(env.health)
            && body["status"] == "pass"
        {
            cleared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cleared, "/readyz back to pass\n{}", env.log());
    assert!(env.log().contains("room for the canary again"), "{}", env.log());
    d.stop();
}
