//! What the benchmark reads from `/proc`: a process's children, RSS, CPU
//! time, context switches and age.
//!
//! Invariant: every reader tolerates a process that vanished between two
//! reads (it answers `None`/empty), because the processes measured here are
//! killed on purpose.

use std::collections::HashSet;

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on every
/// Linux architecture this runs on).
const CLK_TCK: f64 = 100.0;

/// Direct children of `pid` (every thread's `children` list).
pub fn children(pid: i32) -> HashSet<i32> {
    let mut out = HashSet::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    out
}

/// The number after `field` (e.g. `"VmRSS:"`, `"Threads:"`) in
/// `/proc/PID/status`.
pub fn status_number(pid: i32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Resident set size in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    status_number(pid, "VmRSS:")
}

/// The fields of `/proc/PID/stat` after the command name, so that field
/// `n` of proc(5) (1-based) is at index `n - 3`.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU time of the whole process (all threads, dead ones
/// included), in seconds.
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let f = stat_fields(pid)?;
    let utime: u64 = f.get(14 - 3)?.parse().ok()?;
    let stime: u64 = f.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 / CLK_TCK)
}

/// Start time in clock ticks after boot: with the pid it identifies a
/// process (a reused pid has another start time).
pub fn start_ticks(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(22 - 3)?.parse().ok()
}

/// How long the process has been running, in seconds.
pub fn age_secs(pid: i32) -> Option<f64> {
    let start = start_ticks(pid)? as f64 / CLK_TCK;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(uptime - start)
}

/// Voluntary + involuntary context switches summed over the live threads:
/// each one is a wakeup of some thread of the process.
pub fn context_switches(pid: i32) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches:")
                || line.starts_with("nonvoluntary_ctxt_switches:")
            {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Number of threads.
pub fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match stat_fields(pid) {
        Some(f) => f.first().is_some_and(|state| state != "Z" && state != "X"),
        None => false,
    }
}

/// The process `pid` is still the one that started at `start` (not a
/// reused pid) and is alive.
pub fn same_process_alive(pid: i32, start: u64) -> bool {
    alive(pid) && start_ticks(pid) == Some(start)
}

/// The value of `name` in the process's environment.
pub fn environ_var(pid: i32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(&prefix).map(str::to_owned)
    })
}

/// The command line, arguments joined by spaces.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One line describing the machine: CPU model, cores, RAM, kernel, OS.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
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
