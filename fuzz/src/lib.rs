//! Fuzzing support for deployex: the properties each fuzz target checks
//! ([`checks`]), shared with the corpus replay test (`tests/fuzz_corpus.rs`
//! in the root crate), which runs the committed corpus without cargo-fuzz.

/// The binary crate's configuration loader, compiled in from its source:
/// `deployex` has no library target, and the file only needs
/// `deployex-actors`, `toml`, `rand` and `hex`.
#[path = "../../src/config/mod.rs"]
#[allow(dead_code)]
pub mod config;

pub mod checks;
