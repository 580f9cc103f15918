//! OS processes: the only module of deployex that spawns, signals and reaps
//! them (instances and pre-commands), plus the `/proc` reading, pid files,
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
pub use procfs::{ProcStats, proc_stats, ticks_per_second};
pub use rotate::rotate_if_needed;
pub use scan::{
    INSTANCE_MARKER, instance_pids, instance_roots, is_running, kill_group_now, pgid_of,
    pids_running_under,
};
pub use spawn::{InstanceSpec, spawn_instance};
pub use stop::{StopOutcome, stop_group};

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
