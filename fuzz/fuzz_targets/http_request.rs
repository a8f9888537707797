//! Arbitrary bytes sent to the health endpoint's connection handler (the
//! same code the daemon runs per connection): it must answer or close,
//! never panic or hang.
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clamgate::health::{Health, ProbeSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let health = Health::new(
        ProbeSettings { interval: Duration::from_secs(10), latency_budget: Duration::from_millis(500), max_database_age: Duration::from_secs(86400) },
        Arc::new(clamgate::metrics::Metrics::default()),
    );
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(clamgate::health::http::serve_connection(server, health));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    });
});
