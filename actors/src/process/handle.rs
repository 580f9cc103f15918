//! [`ProcessHandle`]: one process identified by pid + start time, watched
//! through a pidfd. Works the same for our children and for processes
//! adopted from a previous deployex (which are not our children).

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::procfs::{self, read_stat};
use super::sys;

/// How a process ended. For a process that is not our child (adopted), the
/// kernel gives the status to its real parent, so both fields are `None`
/// and `reaped` is false.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// We collected the status (and so removed the zombie) ourselves.
    pub reaped: bool,
}

impl ExitInfo {
    /// What `wait_exit` reports for a process that is not our child.
    pub const UNKNOWN: ExitInfo = ExitInfo {
        code: None,
        signal: None,
        reaped: false,
    };

    pub(super) fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
            reaped: true,
        }
    }

    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A process (and the group it leads). Cheap to clone; clones share the
/// pidfd and the collected exit status, so any number of tasks may
/// `wait_exit` and all see the same [`ExitInfo`].
#[derive(Clone)]
pub struct ProcessHandle {
    pid: i32,
    pgid: i32,
    start_time_ticks: u64,
    inner: Arc<Inner>,
}

struct Inner {
    pidfd: OwnedFd,
    /// Set once the exit was collected; the lock serialises reaping.
    exit: tokio::sync::Mutex<Option<ExitInfo>>,
}

impl fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("pid", &self.pid)
            .field("pgid", &self.pgid)
            .field("start_time_ticks", &self.start_time_ticks)
            .finish()
    }
}

/// Why a handle could not be opened on a pid.
#[derive(Debug)]
pub(super) enum OpenError {
    /// No such process (or it already exited and was reaped).
    Gone,
    /// The pid now belongs to a process that started at another time.
    Reused {
        found_start: u64,
    },
    Pidfd(std::io::Error),
}

impl ProcessHandle {
    /// Opens a handle on `pid`. With `expected_start`, the process must have
    /// started at that tick: checked *after* the pidfd is open, so the pidfd
    /// cannot refer to a later process that reused the pid.
    pub(super) fn open(pid: i32, expected_start: Option<u64>) -> Result<Self, OpenError> {
        let pidfd = sys::pidfd_open(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => OpenError::Gone,
            _ => OpenError::Pidfd(e),
        })?;
        let stat = read_stat(pid).ok_or(OpenError::Gone)?;
        if let Some(expected) = expected_start
            && stat.start_time_ticks != expected
        {
            return Err(OpenError::Reused {
                found_start: stat.start_time_ticks,
            });
        }
        Ok(ProcessHandle {
            pid,
            pgid: stat.pgid,
            start_time_ticks: stat.start_time_ticks,
            inner: Arc::new(Inner {
                pidfd,
                exit: tokio::sync::Mutex::new(None),
            }),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Start time (clock ticks after boot): with the pid, identifies the
    /// process across pid reuse; stored in the pid file.
    pub fn start_time_ticks(&self) -> u64 {
        self.start_time_ticks
    }

    /// True while the process runs. A zombie is not alive, and a pid reused
    /// by another process is not ours, so neither counts.
    pub fn is_alive(&self) -> bool {
        read_stat(self.pid)
            .is_some_and(|s| s.start_time_ticks == self.start_time_ticks && !s.is_exited())
    }

    /// Resolves when the process has exited, then reaps it if it is our
    /// child. Cancel-safe; never blocks the runtime.
    pub async fn wait_exit(&self) -> ExitInfo {
        let mut exit = self.inner.exit.lock().await;
        if let Some(info) = *exit {
            return info;
        }
        self.exited().await;
        let info = self.reap().await;
        *exit = Some(info);
        info
    }

    /// Like [`Self::wait_exit`], but once the leader has exited and before it
    /// is reaped, SIGKILLs what is left of its group (a BEAM's
    /// `erl_child_setup`, port programs): the zombie still pins the pgid, so
    /// the signal cannot reach a group that reused the number. For the
    /// watcher of an instance: its group must not outlive its leader.
    pub async fn wait_exit_then_kill_group(&self) -> ExitInfo {
        let mut exit = self.inner.exit.lock().await;
        if let Some(info) = *exit {
            return info;
        }
        self.exited().await;
        self.signal_group(Signal::SIGKILL);
        let info = self.reap().await;
        *exit = Some(info);
        info
    }

    /// Resolves when the process has exited, without reaping it: while the
    /// zombie exists its pid (and so its pgid) cannot be reused, which keeps
    /// signalling the group safe.
    pub(super) async fn exited(&self) {
        match self.inner.pidfd.try_clone() {
            Ok(fd) => match sys::async_pidfd(fd) {
                // A pidfd never becomes "unreadable" again, so the guard
                // needs no clearing.
                Ok(afd) => {
                    if afd.readable().await.is_ok() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(pid = self.pid, "pidfd not pollable: {e}"),
            },
            Err(e) => tracing::warn!(pid = self.pid, "cannot dup pidfd: {e}"),
        }
        // Fallback: poll /proc. Slower to notice, equally correct.
        while self.is_alive() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Collects the exit status of an exited process. ECHILD means it is not
    /// our child (adopted): the status belongs to its parent.
    async fn reap(&self) -> ExitInfo {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    return ExitInfo {
                        code: Some(code),
                        signal: None,
                        reaped: true,
                    };
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return ExitInfo {
                        code: None,
                        signal: Some(sig as i32),
                        reaped: true,
                    };
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return ExitInfo::UNKNOWN,
                Err(e) => {
                    tracing::warn!(pid = self.pid, "waitpid failed: {e}");
                    return ExitInfo::UNKNOWN;
                }
                // The pidfd said "exited" but the zombie is not visible yet
                // (or a stop/continue report): look again shortly.
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok(other) => {
                    tracing::warn!(pid = self.pid, "unexpected wait status {other:?}");
                    return ExitInfo::UNKNOWN;
                }
            }
        }
    }

    /// Whether group `pgid` still belongs to this process tree. Pid `pgid`
    /// cannot be reused while any member of group `pgid` exists, so if /proc
    /// shows pid `pgid` with a different start time, the old group is empty
    /// and the number now names someone else's group.
    fn group_is_ours(&self) -> bool {
        read_stat(self.pgid).is_none_or(|s| s.start_time_ticks == self.start_time_ticks)
    }

    /// Resident memory of the whole group (the BEAM, `erl_child_setup`,
    /// port programs), in bytes: what the memory watchdog compares.
    pub fn group_rss_bytes(&self) -> u64 {
        self.group_members()
            .into_iter()
            .filter_map(super::procfs::proc_stats)
            .map(|s| s.rss_bytes)
            .sum()
    }

    /// Live members of the group (the leader's zombie excluded).
    pub(super) fn group_members(&self) -> Vec<i32> {
        if !self.group_is_ours() {
            return Vec::new();
        }
        procfs::group_members(self.pgid)
    }

    /// Sends `sig` to the whole group. "No such group" is success: there is
    /// nothing left to signal.
    pub(super) fn signal_group(&self, sig: Signal) {
        // Only a group this process leads, never deployex's own (killpg of
        // 0 or of our group would take deployex and its parent down); a
        // process that leads no group is signalled alone.
        if self.pgid != self.pid || super::sys::is_own_group(self.pgid) {
            if self.pid > 1 && self.pid != std::process::id() as i32 && self.is_alive() {
                let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), sig);
            }
            return;
        }
        if !self.group_is_ours() {
            return;
        }
        match killpg(Pid::from_raw(self.pgid), sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pgid = self.pgid, ?sig, "killpg failed: {e}"),
        }
    }
}
