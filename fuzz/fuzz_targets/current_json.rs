//! cargo-fuzz target: see [`deployex_fuzz::checks::current_json`] for the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deployex_fuzz::checks::current_json(data));
