//! The text database line checker, for every format: first byte picks it.
#![no_main]
use clamgate::validate::text::{FORMATS, check};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (ext, _) = FORMATS[pick as usize % FORMATS.len()];
    if let Err(e) = check(ext, rest) {
        assert!(e.line >= 1);
    }
});
