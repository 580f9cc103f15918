//! The tar stream, entry by entry: each entry validated before anything
//! is written for it (paths, links, kinds), sizes and counts capped on the
//! bytes actually written, the decompressed stream capped as a whole.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use super::{UnpackError, UnpackLimits};

/// Counts decompressed bytes and fails the read past the cap; `hit` tells
/// the caller that an I/O error really means "too large".
struct CappedReader<R> {
    inner: R,
    read: u64,
    cap: u64,
    hit: Rc<Cell<bool>>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.cap {
            self.hit.set(true);
            return Err(io::Error::other("decompressed stream exceeds the limit"));
        }
        Ok(n)
    }
}

/// One pass over the tar stream, writing into `root` (the temp dir).
pub(super) struct Unpacker<'a> {
    pub(super) tarball: &'a Path,
    pub(super) root: &'a Path,
    pub(super) limits: &'a UnpackLimits,
    pub(super) total_bytes: u64,
    pub(super) entries: u64,
    /// Directory modes, applied at the end so a read-only directory cannot
    /// block its own children.
    pub(super) dir_modes: Vec<(PathBuf, u32)>,
}

impl Unpacker<'_> {
    pub(super) fn run(&mut self, file: File) -> Result<(), UnpackError> {
        let hit = Rc::new(Cell::new(false));
        let reader = CappedReader {
            inner: flate2::read::MultiGzDecoder::new(BufReader::new(file)),
            read: 0,
            cap: self.limits.stream_cap(),
            hit: hit.clone(),
        };
        let mut archive = tar::Archive::new(reader);
        let (tarball, max) = (self.tarball, self.limits.max_total_bytes);
        let stream_err = |source: io::Error| {
            if hit.get() {
                UnpackError::TooLarge {
                    path: tarball.to_path_buf(),
                    max,
                }
            } else {
                UnpackError::Corrupt {
                    path: tarball.to_path_buf(),
                    source,
                }
            }
        };
        {
            let entries = archive.entries().map_err(stream_err)?;
            for entry in entries {
                let mut entry = entry.map_err(stream_err)?;
                self.entries += 1;
                if self.entries > self.limits.max_entries {
                    return Err(UnpackError::TooManyEntries {
                        path: self.tarball.to_path_buf(),
                        max: self.limits.max_entries,
                    });
                }
                self.entry(&mut entry, &stream_err)?;
            }
        }
        // Read the rest of the gzip stream: detects truncation after the
        // tar end marker and checks the CRC of the whole stream.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(stream_err)?;

        self.dir_modes.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, mode) in &self.dir_modes {
            fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700)).map_err(
                |source| UnpackError::Write {
                    path: path.clone(),
                    source,
                },
            )?;
        }
        Ok(())
    }

    fn unsafe_entry(&self, entry: &str, problem: impl Into<String>) -> UnpackError {
        UnpackError::UnsafeEntry {
            path: self.tarball.to_path_buf(),
            entry: entry.to_owned(),
            problem: problem.into(),
        }
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        stream_err: &dyn Fn(io::Error) -> UnpackError,
    ) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            return Ok(()); // metadata for other entries; nothing to write
        }
        let rel = self.relative_path(&name, Path::new(OsStr::from_bytes(&raw)))?;
        if rel.as_os_str().is_empty() {
            // "./" itself: the root folder.
            return if kind == tar::EntryType::Directory {
                Ok(())
            } else {
                Err(self.unsafe_entry(&name, "has an empty path"))
            };
        }
        self.check_parents(&name, &rel)?;
        let target = self.root.join(&rel);
        let existing = fs::symlink_metadata(&target).ok();
        let mode = entry.header().mode().map_err(stream_err)? & 0o777;

        match kind {
            tar::EntryType::Directory => {
                match existing {
                    Some(m) if m.is_dir() => {}
                    Some(_) => return Err(self.unsafe_entry(&name, "is a duplicate entry")),
                    None => self.create_dirs(&target)?,
                }
                self.dir_modes.push((target, mode));
                Ok(())
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if existing.is_some() {
                    return Err(self.unsafe_entry(&name, "is a duplicate entry"));
                }
                self.file(entry, &name, &target, mode, stream_err)
            }
            tar::EntryType::Symlink => {
                if existing.is_some() {
                    return Err(self.unsafe_entry(&name, "is a duplicate entry"));
                }
                let link = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                let link = PathBuf::from(OsStr::from_bytes(&link));
                self.check_symlink(&name, &rel, &link)?;
                self.create_parent(&target)?;
                std::os::unix::fs::symlink(&link, &target).map_err(|source| UnpackError::Write {
                    path: target.clone(),
                    source,
                })
            }
            tar::EntryType::Link => {
                if existing.is_some() {
                    return Err(self.unsafe_entry(&name, "is a duplicate entry"));
                }
                let link = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                let link_str = String::from_utf8_lossy(&link).into_owned();
                let src_rel = self
                    .relative_path(&link_str, Path::new(OsStr::from_bytes(&link)))
                    .map_err(|_| {
                        self.unsafe_entry(
                            &name,
                            format!("is a hard link to {link_str:?}, outside the tree"),
                        )
                    })?;
                self.check_parents(&name, &src_rel)?;
                let src = self.root.join(&src_rel);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() && !src_rel.as_os_str().is_empty() => {}
                    _ => {
                        return Err(self.unsafe_entry(
                            &name,
                            format!(
                                "is a hard link to {link_str:?}, which is not an earlier regular file"
                            ),
                        ));
                    }
                }
                self.create_parent(&target)?;
                fs::hard_link(&src, &target).map_err(|source| UnpackError::Write {
                    path: target.clone(),
                    source,
                })
            }
            other => Err(self.unsafe_entry(
                &name,
                format!("has unsupported type {other:?} (only files, folders and links)"),
            )),
        }
    }

    /// Entry path → normalised relative path; rejects `..` and absolute paths.
    fn relative_path(&self, name: &str, path: &Path) -> Result<PathBuf, UnpackError> {
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(part) => rel.push(part),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(self.unsafe_entry(name, "has a `..` component"));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.unsafe_entry(name, "is an absolute path"));
                }
            }
        }
        Ok(rel)
    }

    /// Every proper prefix of `rel` must be a real folder or not exist yet:
    /// writing through a symlink (even one pointing inside) is refused, which
    /// keeps the checks of [`Self::check_symlink`] sound.
    fn check_parents(&self, name: &str, rel: &Path) -> Result<(), UnpackError> {
        let mut prefix = self.root.to_path_buf();
        let mut parts = rel.components().peekable();
        while let Some(c) = parts.next() {
            if parts.peek().is_none() {
                break;
            }
            prefix.push(c);
            match fs::symlink_metadata(&prefix) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(name, "goes through a symlink"));
                }
                Ok(_) => return Err(self.unsafe_entry(name, "goes through a file")),
                Err(_) => return Ok(()), // nothing deeper exists either
            }
        }
        Ok(())
    }

    /// A symlink's target resolves relative to the link's folder. Allowed:
    /// relative targets whose leading `..`s stay within the tree, followed by
    /// plain names only (a `..` after a name could climb out through another
    /// symlink, so it is refused).
    fn check_symlink(&self, name: &str, rel: &Path, link: &Path) -> Result<(), UnpackError> {
        let shown = link.display();
        if link.as_os_str().is_empty() {
            return Err(self.unsafe_entry(name, "is a symlink with an empty target"));
        }
        let depth = rel.components().count() - 1;
        let mut ups = 0usize;
        let mut seen_name = false;
        for c in link.components() {
            match c {
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self
                        .unsafe_entry(name, format!("is a symlink to the absolute path {shown}")));
                }
                Component::CurDir => {}
                Component::ParentDir if seen_name => {
                    return Err(self.unsafe_entry(
                        name,
                        format!("is a symlink to {shown}, which has `..` after a name"),
                    ));
                }
                Component::ParentDir => {
                    ups += 1;
                    if ups > depth {
                        return Err(self.unsafe_entry(
                            name,
                            format!("is a symlink to {shown}, outside the tree"),
                        ));
                    }
                }
                Component::Normal(_) => seen_name = true,
            }
        }
        Ok(())
    }

    fn create_dirs(&self, dir: &Path) -> Result<(), UnpackError> {
        fs::create_dir_all(dir).map_err(|source| UnpackError::Write {
            path: dir.to_path_buf(),
            source,
        })
    }

    fn create_parent(&self, path: &Path) -> Result<(), UnpackError> {
        match path.parent() {
            Some(p) => self.create_dirs(p),
            None => Ok(()),
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        target: &Path,
        mode: u32,
        stream_err: &dyn Fn(io::Error) -> UnpackError,
    ) -> Result<(), UnpackError> {
        let max = self.limits.max_total_bytes;
        let too_large = || UnpackError::TooLarge {
            path: self.tarball.to_path_buf(),
            max,
        };
        let claimed = entry.size();
        // The tar reader never yields more than the claimed size, so a claim
        // over budget can be refused before writing anything.
        if self.total_bytes.saturating_add(claimed) > max {
            return Err(too_large());
        }
        self.create_parent(target)?;
        let write_err = |source| UnpackError::Write {
            path: target.to_path_buf(),
            source,
        };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)
            .map_err(write_err)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(stream_err)?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if self.total_bytes + written > max {
                return Err(too_large());
            }
            out.write_all(&buf[..n]).map_err(write_err)?;
        }
        if written != claimed {
            return Err(UnpackError::Corrupt {
                path: self.tarball.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("entry {name:?} has {written} of its {claimed} bytes"),
                ),
            });
        }
        self.total_bytes += written;
        out.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(write_err)?;
        if let Ok(mtime) = entry.header().mtime() {
            // Cosmetic (ls -l shows build times); not worth failing over.
            let _ = out.set_modified(UNIX_EPOCH + Duration::from_secs(mtime));
        }
        Ok(())
    }
}
