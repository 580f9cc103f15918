//! What the benchmark reads from `/proc`: a process's children, RSS, CPU
//! time, context switches and age, through the `procfs` crate (the same
//! parser deployex's process module uses).
//!
//! Invariant: every reader tolerates a process that vanished between two
//! reads (it answers `None`/empty), because the processes measured here are
//! killed on purpose.

use std::collections::HashSet;

use procfs::process::{Process, Stat};

fn stat(pid: i32) -> Option<Stat> {
    Process::new(pid).ok()?.stat().ok()
}

fn ticks() -> f64 {
    procfs::ticks_per_second() as f64
}

/// Direct children of `pid` (every thread's `children` list).
pub fn children(pid: i32) -> HashSet<i32> {
    let mut out = HashSet::new();
    if let Ok(tasks) = Process::new(pid).and_then(|p| p.tasks()) {
        for task in tasks.flatten() {
            if let Ok(list) = task.children() {
                out.extend(list.into_iter().filter_map(|p| i32::try_from(p).ok()));
            }
        }
    }
    out
}

/// The number after `field` (e.g. `"VmRSS:"`, `"Threads:"`) in
/// `/proc/PID/status`.
#[allow(dead_code)] // the soak bench reads other fields
pub fn status_number(pid: i32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Resident set size in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    Process::new(pid).ok()?.status().ok()?.vmrss
}

/// User + system CPU time of the whole process (all threads, dead ones
/// included), in seconds.
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let s = stat(pid)?;
    Some((s.utime + s.stime) as f64 / ticks())
}

/// Start time in clock ticks after boot: with the pid it identifies a
/// process (a reused pid has another start time).
pub fn start_ticks(pid: i32) -> Option<u64> {
    Some(stat(pid)?.starttime)
}

/// How long the process has been running, in seconds.
pub fn age_secs(pid: i32) -> Option<f64> {
    use procfs::Current;
    let start = start_ticks(pid)? as f64 / ticks();
    Some(procfs::Uptime::current().ok()?.uptime - start)
}

/// Voluntary + involuntary context switches summed over the live threads:
/// each one is a wakeup of some thread of the process.
pub fn context_switches(pid: i32) -> u64 {
    let Ok(tasks) = Process::new(pid).and_then(|p| p.tasks()) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| t.status().ok())
        .map(|st| {
            st.voluntary_ctxt_switches.unwrap_or(0) + st.nonvoluntary_ctxt_switches.unwrap_or(0)
        })
        .sum()
}

/// Number of threads.
pub fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// The process `pid` is still the one that started at `start` (not a
/// reused pid) and is alive.
pub fn same_process_alive(pid: i32, start: u64) -> bool {
    alive(pid) && start_ticks(pid) == Some(start)
}

/// The value of `name` in the process's environment.
pub fn environ_var(pid: i32, name: &str) -> Option<String> {
    let env = Process::new(pid).ok()?.environ().ok()?;
    env.get(std::ffi::OsStr::new(name))
        .map(|v| v.to_string_lossy().into_owned())
}

/// The command line, arguments joined by spaces.
pub fn cmdline(pid: i32) -> String {
    Process::new(pid)
        .and_then(|p| p.cmdline())
        .map(|args| args.join(" ").trim().to_owned())
        .unwrap_or_default()
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    use procfs::Current;
    procfs::LoadAverage::current()
        .map(|l| format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen))
        .unwrap_or_else(|_| "?".into())
}

/// One line describing the machine: CPU model, cores, RAM, kernel, OS.
pub fn machine() -> String {
    use procfs::Current;
    let cpuinfo = procfs::CpuInfo::current().ok();
    let model = cpuinfo
        .as_ref()
        .and_then(|c| c.model_name(0))
        .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo.as_ref().map_or(0, |c| c.num_cores());
    let mem_gib = procfs::Meminfo::current()
        .map(|m| m.mem_total as f64 / 1024.0 / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|o| {
            o.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".into());
    format!("{os}, kernel {kernel}, {model}, {cores} cores, {mem_gib:.0} GiB")
}

/// `pidfd_open(2)` on `pid`: `None` if it is already gone.
#[allow(unsafe_code)]
fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes two integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    let fd = i32::try_from(ret).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this fd; OwnedFd is its only owner.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Watches `pid` through a pidfd from a thread of its own; joined, it gives
/// the instant the kernel reported the process exited (all threads gone,
/// memory torn down): the earliest moment any supervisor can know. A crash →
/// respawn time splits into this (the kernel's share, the same for every
/// supervisor) and what follows (the supervisor's own latency). `None` when
/// the process is already gone.
pub fn exit_watch(pid: i32) -> Option<std::thread::JoinHandle<Option<std::time::Instant>>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};
    let fd = pidfd_open(pid)?;
    Some(std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u8)).is_ok_and(|n| n > 0) {
                return Some(Instant::now());
            }
        }
        None
    }))
}
