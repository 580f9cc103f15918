//! Support code shared by deployex's integration tests.
//!
//! Owns: the fixture release tarballs ([`fixtures`]), free ports, an
//! isolated EPMD per test and a tiny HTTP client ([`net`]), and guards for
//! the OS processes a test starts ([`process`]).
//!
//! Invariants: nothing here kills by name, every port comes from binding
//! port 0, and every wait polls a condition against a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unused_imports)]

pub mod apps;
pub mod deployex;
pub mod evil;
pub mod fixtures;
pub mod moto;
pub mod net;
pub mod process;
pub mod terminal;

pub use evil::{
    evil_tarball_absolute, evil_tarball_dotdot, evil_tarball_symlink, tarball_without_bin,
    tarball_without_start_erl_data,
};
pub use fixtures::{
    fixture_relup_tarball, fixture_tarball, fixtures_dir, hot_upgrade_expr, rebar3_fixtures_dir,
    rebar3_tarball, release_command, twoapp_tarball, unpack_tarball,
};
pub use net::{Epmd, free_port, http_get};
pub use process::Instance;

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_until`] and [`wait_until_blocking`] poll.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// Polls `f` until it yields `Some`, and returns that value.
///
/// Panics naming `what` when `deadline` passes first, so a hung test says
/// what it was waiting for.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Blocking twin of [`wait_until`] for tests without a runtime.
pub fn wait_until_blocking<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// The short host name, the host part of `sname` node names.
pub fn short_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .split('.')
        .next()
        .unwrap()
        .to_string()
}
