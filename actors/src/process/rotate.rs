//! Size-based log rotation, copytruncate style: instances hold O_APPEND
//! descriptors on their log files (opened by us before exec), so the file
//! must stay the same inode. After truncation their next write lands at the
//! new end (offset 0), leaving no hole. Lines written between the copy and
//! the truncate are lost: the accepted price of copytruncate.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// If `path` is larger than `max_bytes`, shifts `path.1 … path.{keep-1}` up
/// by one (dropping `path.{keep}`), copies `path` to `path.1` and truncates
/// `path` to 0. With `keep == 0` the content is simply dropped. Returns
/// whether a rotation happened; a missing file is not an error. Blocking
/// file I/O (the copy): call it from `spawn_blocking`, not from a handler.
///
/// When the copy fails (ENOSPC: the disk is full, which is often why the
/// log is big), the partial copy is removed and the file is truncated all
/// the same: the disk must free, a lost log is the lesser harm.
pub fn rotate_if_needed(path: &Path, max_bytes: u64, keep: usize) -> io::Result<bool> {
    rotate_with(path, max_bytes, keep, |from, to| fs::copy(from, to))
}

fn rotate_with(
    path: &Path,
    max_bytes: u64,
    keep: usize,
    copy: impl Fn(&Path, &Path) -> io::Result<u64>,
) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    if keep > 0 {
        match fs::remove_file(numbered(path, keep)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..keep).rev() {
            match fs::rename(numbered(path, n), numbered(path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let copy_to = numbered(path, 1);
        if let Err(e) = copy(path, &copy_to) {
            let _ = fs::remove_file(&copy_to);
            tracing::warn!(path = %path.display(), error = %e, "log rotation: copy failed, truncating without a copy");
        }
    }
    // Not O_TRUNC through `create`: the file must exist and stay the same
    // inode; `set_len` is ftruncate on the open descriptor.
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod unit {
    use super::*;

    #[test]
    fn shifts_keeps_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app-1-stdout.log");
        assert!(!rotate_if_needed(&log, 10, 2).unwrap(), "missing file");
        for round in 1..=3 {
            fs::write(&log, format!("round {round} ----------\n")).unwrap();
            assert!(!rotate_if_needed(&log, 1000, 2).unwrap());
            assert!(rotate_if_needed(&log, 10, 2).unwrap());
            assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        }
        let one = fs::read_to_string(numbered(&log, 1)).unwrap();
        let two = fs::read_to_string(numbered(&log, 2)).unwrap();
        assert!(one.starts_with("round 3"), "{one}");
        assert!(two.starts_with("round 2"), "{two}");
        assert!(!numbered(&log, 3).exists(), "keep=2 must drop the oldest");
    }

    #[test]
    fn a_full_disk_still_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        fs::write(&log, "0123456789abc").unwrap();
        let enospc = |_: &Path, to: &Path| {
            fs::write(to, "0123")?; // a partial copy, then the disk is full
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        };
        assert!(rotate_with(&log, 5, 2, enospc).unwrap());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0, "truncated");
        assert!(!numbered(&log, 1).exists(), "no partial copy left");
    }

    #[test]
    fn keep_zero_only_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        fs::write(&log, "0123456789abc").unwrap();
        assert!(rotate_if_needed(&log, 5, 0).unwrap());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        assert!(!numbered(&log, 1).exists());
    }
}
