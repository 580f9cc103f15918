//! OS processes: the only module of deployex that spawns, signals and reaps
//! them (instances and pre-commands; as `DEPLOYEX_APP_USER` when set, see
//! [`crate::app_user`]), plus the `/proc` reading, pid files,
//! environment scrubbing and log rotation that go with them.
//!
//! Invariants:
//! - Every process we start leads its own process group (`pgid == pid`), so
//!   stopping it is "signal the group": a grandchild never outlives its
//!   instance. epmd escapes on purpose (it `setsid`s itself).
//! - Instances write to their log files directly (O_APPEND), never through a
//!   pipe to deployex, so they survive a deployex restart and can be adopted.
//! - We never keep a `std::process::Child` for an instance and never call
//!   `waitpid(-1)`: a pid is reaped only by its own [`ProcessHandle`], after
//!   its pidfd said it exited. Until then the zombie pins the pid and the
//!   pgid, which is what makes signalling the group race-free.
//! - A pid is only ever signalled after its start time (field 22 of
//!   `/proc/{pid}/stat`) matched: a reused pid is never touched.
//! - Nothing here blocks an async task on a process: waiting is a pidfd
//!   registered with tokio.

mod adopt;
mod command;
mod env;
mod handle;
mod procfs;
mod rotate;
mod scan;
mod spawn;
mod stop;
mod sys;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use adopt::{Adoption, PidFile, adopt};
pub use command::run_command;
pub use env::{STRIPPED_EXACT, STRIPPED_PREFIXES, instance_env};
pub use handle::{ExitInfo, ProcessHandle};
pub use procfs::{GroupUsage, ProcStats, group_usage, members_usage, proc_stats, ticks_per_second};
pub use rotate::rotate_if_needed;
pub use scan::{
    INSTANCE_MARKER, instance_pids, instance_roots, is_running, kill_group_now, kill_stray,
    pgid_of, pids_running_under,
};
pub use spawn::{InstanceSpec, spawn_instance};
pub use stop::{StopOutcome, kill_group, stop_group, wait_group_gone};
pub use sys::drop_all_caps;

/// Errors of the process module; each carries what was being handled.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot create log directory {path}")]
    LogDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open log file {path}")]
    LogFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot spawn {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot watch pid {pid} (pidfd_open)")]
    Pidfd {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid} vanished from /proc right after spawn")]
    NoProcEntry { pid: i32 },
    #[error("{program} did not finish within {timeout:?}; its process group was killed")]
    Timeout { program: PathBuf, timeout: Duration },
    #[error("cannot wait for {program}")]
    Wait {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write pid file {path}")]
    PidFileWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read pid file {path}")]
    PidFileRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("malformed pid file {path}")]
    PidFileParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Unmaps the pages of deployex's own executable that are mapped but clean
/// (code and read-only data, byte-for-byte the file's page-cache pages), so
/// that only the code still in use is resident.
///
/// Why: most of what a fresh deployex has resident is its own binary, and
/// much of that is code that ran once at start-up (argument parsing,
/// configuration, the dynamic linker's relocation tables) or that the
/// kernel mapped alongside it (each page fault in a file mapping also maps
/// its already-cached neighbours, 64 KiB at a time). Those pages stay
/// mapped, and counted in RSS, for the life of the process.
///
/// Safe by construction: only mappings of `/proc/self/exe` that are
/// read-only and hold no anonymous (copied) page are touched, so every page
/// dropped is identical to the file's; the next access maps it again from
/// the page cache (a minor fault, no disk read while it stays cached).
/// Writable data, the relocated RELRO segment, heap and stacks are never
/// touched. Returns the bytes advised (0 when /proc is unavailable).
pub fn trim_resident_code() -> usize {
    let bytes = sys::drop_clean_image_pages();
    // The heap's free pages too: after a burst (a deployment, a load test)
    // glibc keeps them mapped until the top of an arena is free.
    sys::malloc_trim();
    bytes
}

/// Caps glibc's malloc arenas at `arenas` (by default one per thread, up
/// to 8 per core, each keeping its own free memory resident). deployex's
/// threads are few and known: the main thread and the runtime's workers
/// each get an arena of their own (no lock contention between them; with a
/// single shared arena the HTTP load benchmark showed malloc lock waits),
/// and the occasional blocking-pool thread shares one. Call first thing in
/// `main`, before any thread starts. No-op outside glibc.
pub fn limit_malloc_arenas(arenas: i32) -> bool {
    sys::set_malloc_arena_max(arenas)
}

/// Sets the calling thread's nice value (Linux: per thread; the threads
/// and processes it starts afterwards inherit it). Raising it needs no
/// privilege; lowering it below the process's does.
pub fn set_current_thread_nice(nice: i32) -> std::io::Result<()> {
    sys::set_current_thread_nice(nice)
}
