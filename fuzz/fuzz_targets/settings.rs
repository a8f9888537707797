//! The config, policy and corpus-expectation loaders on arbitrary text.
#![no_main]
use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = clamgate::config::Config::parse(Path::new("fuzz.toml"), text);
    let _ = clamgate::policy::Policy::parse(Path::new("fuzz.toml"), text);
    let _ = clamgate::settings::parse_size(text);
    let _ = clamgate::settings::parse_duration(text);
});
