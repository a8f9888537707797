//! The container header parser must never panic, whatever the bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(h) = clamgate::validate::cvd::parse_header(data) {
        assert_eq!(h.md5.len(), 32);
    }
});
