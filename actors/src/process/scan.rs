//! Finding processes that run from a service folder without being known to
//! deployex (a crash of deployex between spawn and pid file, an operator's
//! manual start): they must be stopped before an instance is started, so
//! that there are never two copies of one instance.

use std::path::Path;

/// Set in every instance's environment (and so inherited by everything it
/// starts): the instance's service folder. It finds an instance's processes
/// at every stage of their start: the `bin/{app}` shell script, `erlexec`,
/// `beam.smp`, even before the BEAM's command line names the release.
pub const INSTANCE_MARKER: &str = "DEPLOYEX_INSTANCE_DIR";

/// Pids of the processes that belong to the instance whose service folder is
/// `service`, but `epmd`: the processes whose environment carries
/// [`INSTANCE_MARKER`]`=service`, and (for instances started before the
/// marker existed) the BEAMs whose command line names a path under
/// `service` (`-root {release}`, `-boot {release}/releases/...`). The `epmd`
/// daemon that the first node on the machine started inherits that node's
/// environment and runs from its release folder, but serves every node: it
/// is never a stray.
pub fn instance_pids(service: &Path) -> Vec<i32> {
    let Some(dir_str) = service.to_str().map(|s| s.trim_end_matches('/')) else {
        return Vec::new();
    };
    let marker = format!("{INSTANCE_MARKER}={dir_str}");
    let needle = format!("{dir_str}/");
    other_pids()
        .filter(|&pid| belongs(pid, &marker, &needle))
        .collect()
}

/// Whether `pid` is a process of the instance (see [`instance_pids`]).
fn belongs(pid: i32, marker: &str, needle: &str) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim_end();
    if comm == "epmd" {
        return false;
    }
    let marked = std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()));
    let legacy = || {
        comm.starts_with("beam")
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|&b| b == 0)
                    .any(|arg| std::str::from_utf8(arg).is_ok_and(|a| a.contains(needle)))
            })
    };
    marked || legacy()
}

/// SIGKILL a stray of the instance whose service folder is `service`
/// (a root from [`instance_roots`]) and its process group if it leads one,
/// through a pidfd: the process is pinned first, then proven to still be
/// the instance's, then signalled, so a pid reused between the scan and
/// the signal (the stray exited, an unrelated process got its number) is
/// never hit.
pub fn kill_stray(service: &Path, pid: i32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::{Pid, getpgid};
    if pid <= 1 || pid == std::process::id() as i32 {
        return;
    }
    let Some(dir_str) = service.to_str().map(|s| s.trim_end_matches('/')) else {
        return;
    };
    let Ok(fd) = super::sys::pidfd_open(pid) else {
        return; // gone already
    };
    if !belongs(
        pid,
        &format!("{INSTANCE_MARKER}={dir_str}"),
        &format!("{dir_str}/"),
    ) {
        return; // not (any more) the instance's: a reused pid
    }
    let p = Pid::from_raw(pid);
    // The group first (its members are the stray's helpers), microseconds
    // after the leader was proven the instance's (the pid-only code left
    // the whole scan as a window); then the pinned leader itself.
    if let Ok(pgid) = getpgid(Some(p))
        && pgid == p
        && !super::sys::is_own_group(pgid.as_raw())
    {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let _ = super::sys::pidfd_send_signal(&fd, libc::SIGKILL);
}

/// The roots of the instance's process trees: the processes of
/// [`instance_pids`] whose parent is not one of them. A running instance has
/// exactly one (the BEAM, which `exec`ed from the start script); its helpers
/// hang below it, `erl_child_setup` even in a session of its own, so the
/// tree, not the process group, is what makes one copy.
pub fn instance_roots(service: &Path) -> Vec<i32> {
    let pids = instance_pids(service);
    pids.iter()
        .copied()
        .filter(|&pid| {
            super::procfs::read_stat(pid).is_some_and(|s| !s.is_exited() && !pids.contains(&s.ppid))
        })
        .collect()
}

/// Every pid in /proc but our own.
fn other_pids() -> impl Iterator<Item = i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(move |&pid| pid != me)
}

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
    let mut pids = Vec::new();
    for pid in other_pids() {
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

/// Whether `pid` is a live (not zombie) process.
pub fn is_running(pid: i32) -> bool {
    super::procfs::read_stat(pid).is_some_and(|s| !s.is_exited())
}

/// The process group of `pid`, `None` when it is gone.
pub fn pgid_of(pid: i32) -> Option<i32> {
    super::procfs::read_stat(pid).map(|s| s.pgid)
}

/// SIGKILL the process group led by `pid` (or the process alone if it leads
/// none). Only for strays found by [`pids_running_under`] right before.
pub fn kill_group_now(pid: i32) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::{Pid, getpgid};
    // pid 0 / -1 mean "my group" / "everyone" to kill(2): never.
    if pid <= 1 || pid == std::process::id() as i32 {
        return;
    }
    let p = Pid::from_raw(pid);
    match getpgid(Some(p)) {
        Ok(pgid) if pgid == p && !super::sys::is_own_group(pgid.as_raw()) => {
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

    /// Spawn, retrying ETXTBSY: a program copied by this (multi-threaded)
    /// test binary may still be open for writing in a child that another
    /// test thread forked meanwhile, until that child execs.
    fn spawn_retrying(cmd: &mut std::process::Command) -> std::process::Child {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match cmd.spawn() {
                Err(e)
                    if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other.unwrap(),
            }
        }
    }

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
        let mut child = spawn_retrying(
            std::process::Command::new(&beam)
                .arg("-c")
                .arg("sleep 30; : \"$0\"")
                .arg(marker.join("x"))
                .process_group(0),
        );
        let pid = child.id() as i32;
        // Something else under the same folder that is not a BEAM (epmd).
        // In its own group: killing the group takes its `sleep` too (a
        // killed `sh` alone left the `sleep` holding the test's output).
        let mut other = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 30; : \"$0\"")
            .arg(marker.join("y"))
            .process_group(0)
            .spawn()
            .unwrap();
        let found = common_wait(|| pids_running_under(dir.path()).contains(&pid));
        assert!(found);
        assert!(!pids_running_under(dir.path()).contains(&(other.id() as i32)));
        kill_group_now(other.id() as i32);
        let _ = other.wait();
        let found = pids_running_under(dir.path());
        assert!(found.contains(&pid), "{found:?} has {pid}");
        kill_group_now(pid);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        assert!(!pids_running_under(dir.path()).contains(&pid));
    }

    #[test]
    fn finds_an_instance_by_its_environment_marker_at_any_stage_but_never_epmd() {
        let dir = tempfile::tempdir().unwrap();
        let service = dir.path().join("svc/app/1");
        let spawn = |program: &std::path::Path, marker: Option<&std::path::Path>| {
            let mut cmd = std::process::Command::new(program);
            cmd.arg("30").process_group(0);
            if let Some(m) = marker {
                cmd.env(INSTANCE_MARKER, m);
            }
            spawn_retrying(&mut cmd)
        };
        // Early in a start (the script, erlexec): no release path in sight.
        let sleep = std::path::Path::new("/bin/sleep");
        let mut script = spawn(sleep, Some(&service));
        // epmd started by the instance's first BEAM inherits the marker.
        let epmd = dir.path().join("epmd");
        std::fs::copy(sleep, &epmd).unwrap();
        let mut epmd = spawn(&epmd, Some(&service));
        // Another instance's marker (a prefix of ours: 1 vs 10), and none.
        let mut other = spawn(sleep, Some(&dir.path().join("svc/app/10")));
        let mut unmarked = spawn(sleep, None);
        let script_pid = script.id() as i32;
        assert!(common_wait(|| instance_pids(&service).contains(&script_pid)));
        let found = instance_pids(&service);
        assert_eq!(found, vec![script_pid], "only the marked non-epmd process");
        assert_eq!(pgid_of(script_pid), Some(script_pid));
        assert!(is_running(script_pid));
        kill_group_now(script_pid);
        script.wait().unwrap();
        assert!(!is_running(script_pid));
        for c in [&mut epmd, &mut other, &mut unmarked] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill_stray signals through a pidfd and only a process that is still
    /// the instance's: a pid that now names another process (as after a
    /// reuse) is left alone.
    #[test]
    fn kill_stray_spares_a_process_that_is_not_the_instances() {
        let dir = tempfile::tempdir().unwrap();
        let service = dir.path().join("svc/app/1");
        let spawn = |marker: Option<&std::path::Path>| {
            let mut cmd = std::process::Command::new("/bin/sleep");
            cmd.arg("30").process_group(0);
            if let Some(m) = marker {
                cmd.env(INSTANCE_MARKER, m);
            }
            spawn_retrying(&mut cmd)
        };
        let mut ours = spawn(Some(&service));
        let mut stranger = spawn(None);
        let (ours_pid, stranger_pid) = (ours.id() as i32, stranger.id() as i32);
        assert!(common_wait(|| instance_pids(&service).contains(&ours_pid)));
        // As if the scan had found `stranger_pid` and the number had since
        // gone to an unrelated process.
        kill_stray(&service, stranger_pid);
        assert!(is_running(stranger_pid), "an unrelated process was killed");
        kill_stray(&service, ours_pid);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(ours.wait().unwrap().signal(), Some(9));
        let _ = stranger.kill();
        let _ = stranger.wait();
    }
}
