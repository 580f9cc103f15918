//! Reading `/proc/{pid}/stat`: start time (our defence against pid reuse),
//! process group, state, and the resource numbers shown on the dashboard.

use std::sync::OnceLock;

/// Resource usage of one process, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStats {
    pub rss_bytes: u64,
    /// utime + stime, in [`ticks_per_second`] units.
    pub cpu_ticks: u64,
    /// Clock ticks after boot when the process started (field 22).
    pub start_time_ticks: u64,
    pub threads: u64,
}

/// The fields of `/proc/{pid}/stat` that this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub utime: u64,
    pub stime: u64,
    pub threads: u64,
    pub start_time_ticks: u64,
    pub rss_pages: u64,
}

impl Stat {
    /// A zombie (or dying) process has exited; only its pid remains.
    pub fn is_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses one `/proc/{pid}/stat` line with the `procfs` crate (`comm`,
/// field 2, may hold spaces and parentheses; the crate counts from the last
/// `)` as we did). `None` for a truncated or malformed line, or numbers out
/// of range.
pub(super) fn parse_stat(line: &str) -> Option<Stat> {
    use procfs::FromRead;
    let s = procfs::process::Stat::from_read(line.as_bytes()).ok()?;
    Some(Stat {
        state: s.state,
        ppid: s.ppid,
        pgid: s.pgrp,
        utime: s.utime,
        stime: s.stime,
        threads: u64::try_from(s.num_threads).ok()?,
        start_time_ticks: s.starttime,
        rss_pages: s.rss,
    })
}

/// `None` when the process does not exist (or the line is unreadable).
/// One read of the file (the crate's `Process` would open the pid's
/// directory first: two more system calls per process of a `/proc` scan).
pub(super) fn read_stat(pid: i32) -> Option<Stat> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&line)
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub(super) fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| read_stat(*pid).is_some_and(|s| s.pgid == pgid && !s.is_exited()))
        .collect()
}

/// Resource usage of `pid`, `None` if it does not exist.
pub fn proc_stats(pid: i32) -> Option<ProcStats> {
    let s = read_stat(pid)?;
    Some(ProcStats {
        rss_bytes: s.rss_pages * page_size(),
        cpu_ticks: s.utime + s.stime,
        start_time_ticks: s.start_time_ticks,
        threads: s.threads,
    })
}

/// Clock ticks per second (USER_HZ) of `/proc` time fields.
pub fn ticks_per_second() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(procfs::ticks_per_second)
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(procfs::page_size)
}

/// Resource usage of one process group (metrics history).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupUsage {
    pub rss_bytes: u64,
    /// utime + stime of the live members, in [`ticks_per_second`] units.
    pub cpu_ticks: u64,
    /// Start time of the member whose pid is the group id (the leader).
    pub leader_start: Option<u64>,
    /// The live members read.
    pub members: Vec<i32>,
}

/// Usage of group `pgid` from the stat files of `pids` only (members found
/// by an earlier [`group_usage`]; a pid that left the group or exited is
/// skipped).
pub fn members_usage(pgid: i32, pids: &[i32]) -> GroupUsage {
    let mut u = GroupUsage::default();
    for &pid in pids {
        let Some(s) = read_stat(pid) else { continue };
        if s.is_exited() || s.pgid != pgid {
            continue;
        }
        u.rss_bytes += s.rss_pages * page_size();
        u.cpu_ticks += s.utime + s.stime;
        u.members.push(pid);
        if pid == pgid {
            u.leader_start = Some(s.start_time_ticks);
        }
    }
    u
}

/// Usage of each of `pgids`, from one pass over `/proc` (one `stat` read
/// per process, whatever the number of groups).
pub fn group_usage(pgids: &[i32]) -> std::collections::HashMap<i32, GroupUsage> {
    let mut out = std::collections::HashMap::new();
    if pgids.is_empty() {
        return out;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Some(s) = read_stat(pid) else { continue };
        if s.is_exited() || !pgids.contains(&s.pgid) {
            continue;
        }
        let u: &mut GroupUsage = out.entry(s.pgid).or_default();
        u.rss_bytes += s.rss_pages * page_size();
        u.cpu_ticks += s.utime + s.stime;
        u.members.push(pid);
        if pid == s.pgid {
            u.leader_start = Some(s.start_time_ticks);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod unit {
    use super::*;

    #[test]
    fn parses_comm_with_spaces_and_parens() {
        // A whole line as the kernel writes it (52 fields), `comm` odd.
        let line = "4242 (we ird) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 123456 1000000 250 18446744073709551615 94920313556992 94920313576873 140720852053744 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94920313592880 94920313594496 94921253707776 140720852060898 140720852060918 140720852060918 140720852062187 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgid, 4242);
        assert_eq!(s.utime + s.stime, 10);
        assert_eq!(s.threads, 5);
        assert_eq!(s.start_time_ticks, 123456);
        assert_eq!(s.rss_pages, 250);
    }

    #[test]
    fn rejects_truncated_line() {
        assert!(parse_stat("1 (init) S 0 1").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_stats_are_plausible() {
        let me = i32::try_from(std::process::id()).unwrap();
        let st = proc_stats(me).unwrap();
        assert!(st.rss_bytes > 0);
        assert!(st.threads >= 1);
        assert!(st.start_time_ticks > 0);
        assert!(ticks_per_second() >= 100);
        assert!(proc_stats(-5).is_none());
    }
}

/// One read-only mapping of an executable that holds no private copy of any
/// page (`Anonymous: 0 kB` in smaps): every resident page in it is the
/// file's own page-cache page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CleanImageMapping {
    pub start: usize,
    pub len: usize,
}

/// The mappings of `exe` in `smaps` (the text of `/proc/{pid}/smaps`) that
/// are read-only (`r-`) and whose `Anonymous:` field was seen and is 0. A
/// writable mapping, one with any anonymous (copied-on-write, e.g. the
/// relocated RELRO) page, or one whose fields could not be read, is never
/// listed.
pub(super) fn clean_image_mappings(smaps: &str, exe: &str) -> Vec<CleanImageMapping> {
    /// The mapping whose fields are being read.
    struct Current {
        start: usize,
        len: usize,
        candidate: bool,
        anonymous_zero: Option<bool>,
    }
    fn finish(m: Option<Current>, out: &mut Vec<CleanImageMapping>) {
        if let Some(m) = m
            && m.candidate
            && m.anonymous_zero == Some(true)
        {
            out.push(CleanImageMapping {
                start: m.start,
                len: m.len,
            });
        }
    }
    let mut out = Vec::new();
    let mut current: Option<Current> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            // A mapping header: start-end perms offset dev inode [path].
            finish(current.take(), &mut out);
            let perms = fields.next().unwrap_or("");
            let rest: Vec<&str> = fields.skip(3).collect();
            let read_only = perms.starts_with("r-");
            current = Some(Current {
                start: a,
                len: b.saturating_sub(a),
                candidate: read_only && b > a && rest == [exe],
                anonymous_zero: None,
            });
        } else if first == "Anonymous:"
            && let Some(m) = current.as_mut()
        {
            m.anonymous_zero = Some(fields.next() == Some("0"));
        }
    }
    finish(current.take(), &mut out);
    out
}
