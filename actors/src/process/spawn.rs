//! Starting an instance: its own process group, stdin from /dev/null,
//! stdout/stderr appended straight to the log files.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::ProcessError;
use super::handle::{OpenError, ProcessHandle};
use crate::app_user::AppUser;

/// Everything needed to start one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// `{svc}/current/bin/{app}`.
    pub program: PathBuf,
    /// `["start"]`.
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment: the child starts from an empty one (see
    /// [`super::instance_env`]).
    pub env: Vec<(String, String)>,
    pub stdout_log: PathBuf,
    pub stderr_log: PathBuf,
    /// `DEPLOYEX_APP_USER`: the process runs as this user, and its log
    /// files become its own. `None`: deployex's own user.
    pub user: Option<AppUser>,
}

/// Opens `path` for appending (O_APPEND|O_CREAT), creating its directory.
/// O_APPEND lets copytruncate rotation work: writers always land at the end.
/// With an app user the file becomes that user's.
pub(super) fn open_log(path: &Path, user: Option<&AppUser>) -> Result<File, ProcessError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ProcessError::LogDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| ProcessError::LogFile {
            path: path.to_path_buf(),
            source,
        })?;
    if let Some(user) = user {
        user.own_log(&file, path)
            .map_err(|source| ProcessError::LogFile {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(file)
}

/// Starts an instance as the leader of a new process group and returns a
/// handle on it. No `Child` is kept: the handle alone reaps the process.
pub fn spawn_instance(spec: &InstanceSpec) -> Result<ProcessHandle, ProcessError> {
    let stdout = open_log(&spec.stdout_log, spec.user.as_ref())?;
    let stderr = open_log(&spec.stderr_log, spec.user.as_ref())?;
    let mut cmd = Command::new(&spec.program);
    if let Some(user) = &spec.user {
        super::sys::run_as_std(&mut cmd, user);
    }
    let child = cmd
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
    let raw_pid = child.id();
    // Dropping a std Child neither kills nor reaps it: from here on the pid
    // is owned by the ProcessHandle.
    drop(child);
    let pid = i32::try_from(raw_pid).map_err(|_| ProcessError::NoProcEntry { pid: -1 })?;
    // The child is unreaped, so its pid cannot have been reused yet.
    ProcessHandle::open(pid, None).map_err(|e| {
        // We cannot watch it, so we must not leave it running unwatched.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
        match e {
            OpenError::Pidfd(source) => ProcessError::Pidfd { pid, source },
            OpenError::Gone | OpenError::Reused { .. } => ProcessError::NoProcEntry { pid },
        }
    })
}
