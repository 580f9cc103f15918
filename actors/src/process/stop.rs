//! Stopping an instance: SIGTERM to its group, a grace period, SIGKILL to
//! the group, then reaping the leader. Already gone counts as stopped.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::handle::{ExitInfo, ProcessHandle};

/// How long to wait for the kernel to finish off a SIGKILLed group.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Poll period for "is anyone left in the group" once the leader is gone.
const GROUP_POLL: Duration = Duration::from_millis(5);

/// What [`stop_group`] had to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Nothing was running: no signal sent.
    AlreadyExited(ExitInfo),
    /// The whole group left within the grace period after SIGTERM.
    Terminated(ExitInfo),
    /// The grace period ran out; the group was SIGKILLed.
    Killed(ExitInfo),
    /// Members survived even SIGKILL (uninterruptible sleep, or not ours to
    /// kill). The leader is reaped only if it did exit.
    Stuck {
        survivors: Vec<i32>,
        exit: Option<ExitInfo>,
    },
}

impl StopOutcome {
    /// True when nothing of the group is left running.
    pub fn is_stopped(&self) -> bool {
        !matches!(self, StopOutcome::Stuck { .. })
    }
}

/// Stops the process group led by `handle`: SIGTERM, wait up to `grace`
/// (leader's pidfd + a scan of /proc for the pgid), SIGKILL. The leader is
/// reaped last, so its pgid stays reserved while we signal it.
pub async fn stop_group(handle: &ProcessHandle, grace: Duration) -> StopOutcome {
    if !handle.is_alive() && handle.group_members().is_empty() {
        return StopOutcome::AlreadyExited(handle.wait_exit().await);
    }
    handle.signal_group(Signal::SIGTERM);
    if group_gone(handle, Instant::now() + grace).await {
        return StopOutcome::Terminated(handle.wait_exit().await);
    }
    tracing::info!(
        pid = handle.pid(),
        ?grace,
        "group still running after SIGTERM; sending SIGKILL"
    );
    sigkill_and_wait(handle).await
}

/// SIGKILLs the group at once, without a grace period: for a process that
/// serves nothing yet (a BEAM still booting ignores SIGTERM until its boot
/// script ends) or that no longer answers (hung, SIGSTOPped).
pub async fn kill_group(handle: &ProcessHandle) -> StopOutcome {
    if !handle.is_alive() && handle.group_members().is_empty() {
        return StopOutcome::AlreadyExited(handle.wait_exit().await);
    }
    sigkill_and_wait(handle).await
}

/// SIGKILL to the group, then wait for the kernel to finish it off.
async fn sigkill_and_wait(handle: &ProcessHandle) -> StopOutcome {
    handle.signal_group(Signal::SIGKILL);
    if group_gone(handle, Instant::now() + KILL_WAIT).await {
        return StopOutcome::Killed(handle.wait_exit().await);
    }
    let survivors = handle.group_members();
    let exit = if handle.is_alive() {
        None
    } else {
        Some(handle.wait_exit().await)
    };
    tracing::warn!(
        pid = handle.pid(),
        ?survivors,
        "process group survived SIGKILL"
    );
    StopOutcome::Stuck { survivors, exit }
}

/// Waits up to `timeout` for the whole group to exit by itself (after the
/// node was asked to stop over the distribution). True when it is gone.
pub async fn wait_group_gone(handle: &ProcessHandle, timeout: Duration) -> bool {
    group_gone(handle, Instant::now() + timeout).await
}

/// Waits until the leader has exited and no live member of its group
/// remains, or `deadline` passes. True when the group is gone.
async fn group_gone(handle: &ProcessHandle, deadline: Instant) -> bool {
    if tokio::time::timeout_at(deadline, handle.exited())
        .await
        .is_err()
    {
        return false;
    }
    loop {
        if handle.group_members().is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}
