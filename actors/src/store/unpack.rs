//! Verifying and unpacking a release tarball (`{app}-{version}.tar.gz`) into
//! a service folder. Blocking code: callers run it in `spawn_blocking`.
//!
//! Invariants of [`unpack_release`]:
//! - Every entry is validated before anything is written for it: no `..`, no
//!   absolute path, no path through a symlink, symlinks and hard links that
//!   stay inside the tree, only files/dirs/links (no devices, fifos, sparse).
//! - Size and entry-count limits count the bytes actually written, and the
//!   decompressed stream as a whole is capped too (a gzip bomb stops early).
//! - The result appears at `dest` only when complete (unpacked into a temp
//!   dir beside it, then renamed); on any error the temp dir is removed.
//! - The whole gzip stream is read to its end, so truncation or corruption
//!   anywhere (CRC included) is an error, not a silently short tree.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Errors of verification and unpacking; each names the tarball, entry or
/// folder involved.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("invalid app name {app:?}")]
    InvalidApp { app: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a gzip file")]
    NotGzip { path: PathBuf },
    #[error("{path} is truncated or corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: entry {entry:?} {problem}")]
    UnsafeEntry {
        path: PathBuf,
        entry: String,
        problem: String,
    },
    #[error("{path}: more than {max} entries")]
    TooManyEntries { path: PathBuf, max: u64 },
    #[error("{path}: unpacks to more than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("no bin/{app} in tarball {path}")]
    NoBinary { path: PathBuf, app: String },
    #[error("bin/{app} in tarball {path} is not an executable regular file")]
    BinaryNotExecutable { path: PathBuf, app: String },
    #[error("destination {dest} already exists")]
    DestExists { dest: PathBuf },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Hex SHA-256 of a file (lowercase), streamed.
pub fn sha256_file(path: &Path) -> Result<String, UnpackError> {
    let read_err = |source| UnpackError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Bounds on what a tarball may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of file content written (a release is ~6 MiB with ERTS).
    pub max_total_bytes: u64,
    /// Entries of any kind (a release has ~600).
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_total_bytes: 1024 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

impl UnpackLimits {
    /// Cap on the decompressed stream: content plus generous room for
    /// headers, padding and long-name records. Also bounds the memory the
    /// tar reader may spend on a long-name record.
    fn stream_cap(&self) -> u64 {
        self.max_total_bytes
            .saturating_add(self.max_entries.saturating_mul(2048))
            .saturating_add(16 * 1024 * 1024)
    }
}

/// What [`unpack_release`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedRelease {
    /// Folder names under `releases/` (the versions the tarball carries), sorted.
    pub version_dirs: Vec<String>,
    /// `bin/{app}` is an executable regular file (always true on success).
    pub has_bin: bool,
    /// Bytes of file content written.
    pub total_bytes: u64,
    /// Entries processed.
    pub entries: u64,
}

/// Unpacks `tarball` into `dest` (which must not exist), validating every
/// entry first. See the module doc for the guarantees.
pub fn unpack_release(
    tarball: &Path,
    dest: &Path,
    app: &str,
    limits: &UnpackLimits,
) -> Result<UnpackedRelease, UnpackError> {
    if super::validate_version(app).is_err() {
        return Err(UnpackError::InvalidApp {
            app: app.to_owned(),
        });
    }
    if fs::symlink_metadata(dest).is_ok() {
        return Err(UnpackError::DestExists {
            dest: dest.to_path_buf(),
        });
    }
    let input = open_gzip(tarball)?;
    let temp = TempDir::beside(dest)?;
    let mut unpacker = Unpacker {
        tarball,
        root: &temp.path,
        limits,
        total_bytes: 0,
        entries: 0,
        dir_modes: Vec::new(),
    };
    unpacker.run(input)?;
    let (total_bytes, entries) = (unpacker.total_bytes, unpacker.entries);

    check_binary(tarball, &temp.path, app)?;
    let version_dirs = list_version_dirs(&temp.path);

    if fs::symlink_metadata(dest).is_ok() {
        return Err(UnpackError::DestExists {
            dest: dest.to_path_buf(),
        });
    }
    fs::rename(&temp.path, dest)
        .and_then(|()| crate::storage::sync_parent_dir(dest))
        .map_err(|source| UnpackError::Write {
            path: dest.to_path_buf(),
            source,
        })?;
    temp.disarm();
    Ok(UnpackedRelease {
        version_dirs,
        has_bin: true,
        total_bytes,
        entries,
    })
}

/// The release version recorded in `releases/start_erl.data`
/// (`"ERTS_VSN APP_VSN"`). Hot upgrades rewrite it, so it tells which version
/// an unpacked or running release really is. `None` if missing or malformed.
pub fn release_version(root: &Path) -> Option<String> {
    let text = fs::read_to_string(root.join("releases").join("start_erl.data")).ok()?;
    let mut words = text.split_whitespace();
    let _erts = words.next()?;
    let version = words.next()?;
    if words.next().is_some() || super::validate_version(version).is_err() {
        return None;
    }
    Some(version.to_owned())
}

/// Opens the tarball after checking the gzip magic, so that "this is not a
/// .tar.gz at all" gets its own message.
fn open_gzip(tarball: &Path) -> Result<File, UnpackError> {
    let read_err = |source| UnpackError::Read {
        path: tarball.to_path_buf(),
        source,
    };
    let mut file = File::open(tarball).map_err(read_err)?;
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match file.read(&mut magic[got..]).map_err(read_err)? {
            0 => break,
            n => got += n,
        }
    }
    if got < 2 || magic != [0x1f, 0x8b] {
        return Err(UnpackError::NotGzip {
            path: tarball.to_path_buf(),
        });
    }
    File::open(tarball).map_err(read_err)
}

fn check_binary(tarball: &Path, root: &Path, app: &str) -> Result<(), UnpackError> {
    match fs::symlink_metadata(root.join("bin").join(app)) {
        Err(_) => Err(UnpackError::NoBinary {
            path: tarball.to_path_buf(),
            app: app.to_owned(),
        }),
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(UnpackError::BinaryNotExecutable {
            path: tarball.to_path_buf(),
            app: app.to_owned(),
        }),
    }
}

fn list_version_dirs(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(root.join("releases"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// A fresh folder beside the destination, removed on drop unless disarmed.
struct TempDir {
    path: PathBuf,
    armed: bool,
}

impl TempDir {
    fn beside(dest: &Path) -> Result<TempDir, UnpackError> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "release".to_owned());
        loop {
            let path = parent.join(format!(
                ".{name}.unpack-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path, armed: true }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(UnpackError::Write { path, source }),
            }
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

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

struct Unpacker<'a> {
    tarball: &'a Path,
    root: &'a Path,
    limits: &'a UnpackLimits,
    total_bytes: u64,
    entries: u64,
    /// Directory modes, applied at the end so a read-only directory cannot
    /// block its own children.
    dir_modes: Vec<(PathBuf, u32)>,
}

impl Unpacker<'_> {
    fn run(&mut self, file: File) -> Result<(), UnpackError> {
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
