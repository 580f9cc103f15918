//! cargo-fuzz target: see [`deployex_fuzz::checks::login_form`] for the properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deployex_fuzz::checks::login_form(data));
