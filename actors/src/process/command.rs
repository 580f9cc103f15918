//! Pre-commands (`bin/{app} eval ...`): run to completion with the instance's
//! environment, output appended to the instance's logs, bounded by a
//! timeout. Nothing of the command's process group survives it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::ProcessError;
use super::handle::{ExitInfo, OpenError, ProcessHandle};
use super::spawn::open_log;
use crate::app_user::AppUser;

/// SIGKILLs the command's group if the future running it is dropped. Must
/// be dropped before the tokio `Child` (declared after it), while the
/// unreaped leader still pins the pgid.
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed && !super::sys::is_own_group(self.pgid) {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        }
    }
}

/// Runs `program args` in its own process group and waits for it. On
/// timeout, or if this future is dropped, the whole group is SIGKILLed.
/// When the leader exits, any process it left in its group is killed too:
/// a pre-command must not leave anything running. With `user`, the
/// command runs as that user.
#[allow(clippy::too_many_arguments)]
pub async fn run_command(
    program: &Path,
    args: &[String],
    cwd: &Path,
    env: &[(String, String)],
    stdout_log: &Path,
    stderr_log: &Path,
    timeout: Duration,
    user: Option<&AppUser>,
) -> Result<ExitInfo, ProcessError> {
    let stdout = open_log(stdout_log, user)?;
    let stderr = open_log(stderr_log, user)?;
    let spawn_err = |source| ProcessError::Spawn {
        program: program.to_path_buf(),
        source,
    };
    let mut cmd = tokio::process::Command::new(program);
    if let Some(user) = user {
        super::sys::run_as_tokio(&mut cmd, user);
    }
    let mut child = cmd
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or(ProcessError::NoProcEntry { pid: -1 })?;
    let mut guard = GroupGuard {
        pgid: pid,
        armed: true,
    };
    // The pidfd tells us the leader exited without reaping it, so the pgid
    // stays ours until we have killed any leftovers.
    let handle = ProcessHandle::open(pid, None).map_err(|e| match e {
        OpenError::Pidfd(source) => ProcessError::Pidfd { pid, source },
        OpenError::Gone | OpenError::Reused { .. } => ProcessError::NoProcEntry { pid },
    })?;
    let finished = tokio::time::timeout(timeout, handle.exited()).await.is_ok();
    // Leftovers on success, everything on timeout.
    if !super::sys::is_own_group(pid) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    guard.armed = false;
    let status = child.wait().await.map_err(|source| ProcessError::Wait {
        program: program.to_path_buf(),
        source,
    })?;
    if !finished {
        return Err(ProcessError::Timeout {
            program: program.to_path_buf(),
            timeout,
        });
    }
    Ok(ExitInfo::from_status(status))
}
