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

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

mod entries;

use entries::Unpacker;

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
