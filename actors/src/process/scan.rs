//! Finding processes that run from a service folder without being known to
//! deployex (a crash of deployex between spawn and pid file, an operator's
//! manual start): they must be stopped before an instance is started, so
//! that there are never two copies of one instance.

use std::path::Path;

/// Pids of the BEAM processes whose command line names a path under `root`
/// (a BEAM started by `bin/{app} start` carries `-root {release}` and
/// `-boot {release}/releases/...` in its arguments). Only `beam*`
/// executables count: the `epmd` daemon that the first node started from
/// its own `erts-*/bin` also runs from the release folder, and it serves
/// every node on the machine: it must never be taken for a stray.
pub fn pids_running_under(root: &Path) -> Vec<i32> {
    let Some(needle) = root
        .to_str()
        .map(|s| format!("{}/", s.trim_end_matches('/')))
    else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&b| b == 0);
        let is_beam = args
            .next()
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|a| a.rsplit('/').next())
            .is_some_and(|name| name.starts_with("beam"));
        let found = is_beam
            && cmdline
                .split(|&b| b == 0)
                .any(|arg| std::str::from_utf8(arg).is_ok_and(|a| a.contains(&needle)));
        if found {
            pids.push(pid);
        }
    }
    pids
}

/// SIGKILL the process group led by `pid` (or the process alone if it leads
/// none). Only for strays found by [`pids_running_under`] right before.
pub fn kill_group_now(pid: i32) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::{Pid, getpgid};
    let p = Pid::from_raw(pid);
    match getpgid(Some(p)) {
        Ok(pgid) if pgid == p => {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        _ => {
            let _ = kill(p, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// /proc/pid/cmdline is set after exec: poll briefly.
    fn common_wait(f: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn finds_a_process_by_a_path_in_its_arguments_and_kills_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("current");
        std::fs::create_dir_all(&marker).unwrap();
        // A copy of sh named beam.smp stands in for a BEAM.
        let beam = dir.path().join("beam.smp");
        std::fs::copy("/bin/sh", &beam).unwrap();
        let mut child = std::process::Command::new(&beam)
            .arg("-c")
            .arg("sleep 30; : \"$0\"")
            .arg(marker.join("x"))
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Something else under the same folder that is not a BEAM (epmd).
        let mut other = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 30; : \"$0\"")
            .arg(marker.join("y"))
            .spawn()
            .unwrap();
        let found = common_wait(|| pids_running_under(dir.path()).contains(&pid));
        assert!(found);
        assert!(!pids_running_under(dir.path()).contains(&(other.id() as i32)));
        let _ = other.kill();
        let _ = other.wait();
        let found = pids_running_under(dir.path());
        assert!(found.contains(&pid), "{found:?} has {pid}");
        kill_group_now(pid);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        assert!(!pids_running_under(dir.path()).contains(&pid));
    }
}
