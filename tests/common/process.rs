//! A guard for one OS process started by a test (typically
//! `bin/APP start`, whose pid is the BEAM's own pid).
//!
//! Invariant: the guarded process is signalled only by its own pid, and is
//! gone when the guard is dropped (SIGTERM, a grace period, then SIGKILL).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Whether `pid` is a BEAM node: it runs the emulator and its parent does
/// not. A BEAM forks its port helpers (`erl_child_setup` at boot, port
/// programs later): between the fork and the exec the child is a
/// `beam.smp` with the node's command line and environment. Counting it
/// made a capacity test see "5 BEAMs" for 4 nodes while one booted (CI,
/// `start_first_rolls_without_losing_capacity`).
pub fn is_beam_node(pid: i32) -> bool {
    let is_beam = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim().starts_with("beam"))
    };
    let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(1)?.parse::<i32>().ok()
        })
        .unwrap_or(0);
    is_beam(pid) && !is_beam(parent)
}

/// How long a SIGTERMed node may take before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Instance {
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Instance {
    /// Spawns `cmd` with stdout and stderr both appended to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> Self {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Self {
            child,
            log: log.to_owned(),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the process has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends `signal` to the process (by pid), unless it already exited.
    pub fn signal(&mut self, signal: Signal) {
        if self.try_status().is_none() {
            let pid = i32::try_from(self.pid()).expect("pid fits i32");
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Waits up to `deadline` for the process to exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.terminate().expect("process survived SIGKILL")
    }

    /// [`Instance::stop`] without panicking (usable from `Drop`).
    fn terminate(&mut self) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        if let Some(status) = self.wait_exit(GRACE) {
            return Some(status);
        }
        self.signal(Signal::SIGKILL);
        self.wait_exit(GRACE)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}
