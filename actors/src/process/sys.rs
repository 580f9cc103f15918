//! The few raw syscalls nix does not wrap for us. This is the only file of
//! the module allowed to use `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// `pidfd_open(2)`: a file descriptor that refers to the process itself,
/// not to its (reusable) pid number. It becomes readable when the process
/// exits, for children and non-children alike. Always close-on-exec.
pub(super) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and touches no memory of ours;
    // the return value is checked before use.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it,
    // so OwnedFd becomes its single owner and closes it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers a pidfd with tokio's reactor (readable = the process exited).
/// Must run inside a tokio runtime with I/O enabled.
pub(super) fn async_pidfd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid, open descriptor that it alone owns and
    // closes; its `as_raw_fd()` returns that same descriptor for as long as
    // the AsyncFd (which now owns it) lives.
    Ok(unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?)
}

/// `sysconf(name)`, `None` when the value is unknown.
fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value; no pointers involved.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// USER_HZ, the unit of the tick counters in `/proc/{pid}/stat`.
pub(super) fn clock_ticks() -> u64 {
    sysconf(libc::_SC_CLK_TCK).unwrap_or(100)
}

/// Page size, the unit of `rss` in `/proc/{pid}/stat`.
pub(super) fn page_size() -> u64 {
    sysconf(libc::_SC_PAGESIZE).unwrap_or(4096)
}

/// Whether `pgid` is 0/1/negative or deployex's own process group: the
/// groups no signal of ours may ever target (`killpg(0)` is "my group").
pub(crate) fn is_own_group(pgid: i32) -> bool {
    pgid <= 1 || pgid == nix::unistd::getpgrp().as_raw()
}
