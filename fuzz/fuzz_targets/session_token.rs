//! cargo-fuzz target: see [`deployex_fuzz::checks::session_token`] for the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deployex_fuzz::checks::session_token(data));
