//! Crash points for the crash-safety tests: when the environment variable
//! `DEPLOYEX_TEST_CRASH_AT` names a point, deployex kills itself with
//! SIGKILL when it reaches that point (no destructor, no flush: exactly what
//! a power cut or the OOM killer does). Unset in production: each point is
//! then one comparison against an empty value.

#[cfg(feature = "testhooks")]
use std::sync::OnceLock;

#[cfg(feature = "testhooks")]
static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();

/// Every point, in the order a full deployment reaches them.
pub const POINTS: &[&str] = &[
    "deploy_requested",
    "new_unpacked",
    "pre_commands_done",
    "old_stopped",
    "current_moved_to_previous",
    "new_moved_to_current",
    "spawned",
    "pid_file_written",
    "history_written",
    "instance_ready",
];

/// Die here if the tests asked for it (a no-op unless deployex-actors is
/// built with the `testhooks` feature, as the test suite builds it).
#[cfg(not(feature = "testhooks"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// Die here if the tests asked for it (`DEPLOYEX_TEST_CRASH_AT`), or panic
/// here (`DEPLOYEX_TEST_PANIC_AT`: a bug in the code that runs there).
#[cfg(feature = "testhooks")]
pub fn point(name: &str) {
    let target = CRASH_AT.get_or_init(|| std::env::var("DEPLOYEX_TEST_CRASH_AT").ok());
    if target.as_deref() == Some(name) {
        eprintln!("deployex: DEPLOYEX_TEST_CRASH_AT={name}: killing myself");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    let panic_at = PANIC_AT.get_or_init(|| std::env::var("DEPLOYEX_TEST_PANIC_AT").ok());
    if panic_at.as_deref() == Some(name) {
        panic!("DEPLOYEX_TEST_PANIC_AT={name}");
    }
}

#[cfg(feature = "testhooks")]
static PANIC_AT: OnceLock<Option<String>> = OnceLock::new();
