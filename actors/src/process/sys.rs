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

/// `pidfd_send_signal(2)`: signals exactly the process `fd` refers to; if
/// it has exited (its pid maybe reused since), ESRCH, never another process.
pub(super) fn pidfd_send_signal(fd: &OwnedFd, sig: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: an open pidfd, a signal number, a null siginfo (allowed: the
    // kernel builds one as kill(2) would) and flags 0; no memory of ours is
    // written.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Registers a pidfd with tokio's reactor (readable = the process exited).
/// Must run inside a tokio runtime with I/O enabled.
pub(super) fn async_pidfd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid, open descriptor that it alone owns and
    // closes; its `as_raw_fd()` returns that same descriptor for as long as
    // the AsyncFd (which now owns it) lives.
    Ok(unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?)
}

/// Whether `pgid` is 0/1/negative or deployex's own process group: the
/// groups no signal of ours may ever target (`killpg(0)` is "my group").
pub(crate) fn is_own_group(pgid: i32) -> bool {
    pgid <= 1 || pgid == nix::unistd::getpgrp().as_raw()
}

/// `MADV_DONTNEED` on every clean read-only mapping of our executable (see
/// [`super::trim_resident_code`]). Returns the bytes advised.
pub(super) fn drop_clean_image_pages() -> usize {
    let (Ok(exe), Ok(smaps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/smaps"),
    ) else {
        return 0;
    };
    let Some(exe) = exe.to_str() else {
        return 0;
    };
    let mut advised = 0;
    for m in super::procfs::clean_image_mappings(&smaps, exe) {
        // SAFETY: the range is a mapping of our own executable that is
        // read-only and holds no anonymous page, so every page in it is the
        // unmodified file page: MADV_DONTNEED only unmaps them, and the next
        // access maps the same bytes again from the page cache. No Rust
        // object's memory is involved.
        let ret =
            unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) };
        if ret == 0 {
            advised += m.len;
        }
    }
    advised
}

/// glibc malloc: at most `arenas` arenas (see [`super::limit_malloc_arenas`]).
#[cfg(target_env = "gnu")]
pub(super) fn set_malloc_arena_max(arenas: i32) -> bool {
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // thread of ours exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

#[cfg(not(target_env = "gnu"))]
pub(super) fn set_malloc_arena_max(_arenas: i32) -> bool {
    false
}

/// glibc malloc: give the free pages of every arena back to the kernel.
#[cfg(target_env = "gnu")]
pub(super) fn malloc_trim() {
    // SAFETY: malloc_trim takes the allocator's own locks; no pointer of
    // ours is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
pub(super) fn malloc_trim() {}

/// `setpriority(PRIO_PROCESS, gettid(), nice)`: on Linux a nice value
/// belongs to one thread, so this lowers (or raises) only the calling one.
pub(super) fn set_current_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    let who =
        libc::id_t::try_from(tid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall on our own thread id; no pointers.
    let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd`'s child run as `user` (groups, gid, uid; see
/// [`crate::app_user::AppUser::switch_hook`]).
pub(super) fn run_as_std(cmd: &mut std::process::Command, user: &crate::app_user::AppUser) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook only makes the setgroups/setgid/setuid syscalls
    // (async-signal-safe) on data built before the fork; it allocates
    // nothing and takes no lock.
    unsafe {
        cmd.pre_exec(user.switch_hook());
    }
}

/// [`run_as_std`] for a tokio command.
pub(super) fn run_as_tokio(cmd: &mut tokio::process::Command, user: &crate::app_user::AppUser) {
    // SAFETY: as in `run_as_std`.
    unsafe {
        cmd.pre_exec(user.switch_hook());
    }
}

/// Drops every capability of the calling thread: the ambient set
/// (`PR_CAP_AMBIENT_CLEAR_ALL`), then effective, permitted and inheritable
/// (`capset` with empty sets), so that a program it executes gets none. A
/// deployex that is not root but holds CAP_SETUID & co (ambient
/// capabilities from its unit) would otherwise hand them to the apps:
/// `setuid` from a non-zero uid keeps them. EINVAL from the ambient clear
/// (a kernel without ambient capabilities) means there is nothing to
/// clear. Async-signal-safe: two syscalls on stack data.
pub fn drop_all_caps() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(err);
        }
    }
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: a valid header and the two data structs version 3 expects,
    // both live for the call; the kernel only reads them (and may write
    // the header's version, which is ours and mutable).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
