//! Every clamd reply parser must return a value or an error, never panic.
#![no_main]
use clamgate::clamd::reply;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = reply::parse_ping(data);
    let _ = reply::parse_reload(data);
    let _ = reply::parse_version(data);
    if let Ok(clamgate::clamd::ScanVerdict::Infected(sig)) = reply::parse_scan(data) {
        assert!(!sig.is_empty());
    }
});
