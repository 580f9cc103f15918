//! deployex's own durable state: the deployment history, the ghosted
//! versions and the mode, one JSON file each under `{var}/storage/{app}/`.
//!
//! Invariants:
//! - Every write goes through [`write_atomic`]: a crash at any moment leaves
//!   either the old or the new file, never a half-written one, and an
//!   acknowledged write survives a power loss (file and directory fsynced).
//! - Opening never fails: a corrupt or unreadable file is reported and the
//!   state starts empty; the bad file is kept (renamed to
//!   `{name}.corrupt-{timestamp}`) just before the first write replaces it,
//!   so nothing an operator may want to inspect is ever destroyed.
//! - Files carry a `"format": 1` envelope so the layout can evolve; a file
//!   with an unknown format is treated like a corrupt one (kept, not parsed).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{HistoryEntry, Mode};

/// The only format this code writes and reads.
pub const FORMAT_VERSION: u64 = 1;

const HISTORY_FILE: &str = "history.json";
const GHOSTED_FILE: &str = "ghosted.json";
const MODE_FILE: &str = "mode.json";

/// Errors of the state files. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the storage folder {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is corrupt (state starts empty; the file is kept)")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path} has format {found}, this deployex reads format {FORMAT_VERSION} (state starts empty; the file is kept)"
    )]
    UnsupportedFormat { path: PathBuf, found: u64 },
    #[error("cannot keep a copy of the corrupt {path} as {backup}")]
    Backup {
        path: PathBuf,
        backup: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode the state for {path}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes `bytes` to `path` so that readers and crashes only ever see the old
/// or the new content: a uniquely named temp file in the same folder is
/// written and fsynced, renamed over `path`, then the folder is fsynced so the
/// rename itself is durable. The temp file is removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (mut file, tmp) = create_temp_beside(path)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_parent_dir(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new, uniquely named hidden file next to `path`
/// (`.{name}.tmp-{pid}-{n}-{random}`), failing rather than reusing an existing
/// one. Shared with the release store's download.
pub(crate) fn create_temp_beside(path: &Path) -> io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{n}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Makes a rename or a new entry in `path`'s folder durable.
pub(crate) fn sync_parent_dir(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The current UTC time as RFC 3339 with milliseconds,
/// e.g. `2026-11-27T16:32:46.123Z` (history rows, message records).
pub fn utc_now_rfc3339() -> String {
    format_rfc3339_ms(time::OffsetDateTime::now_utc())
}

fn format_rfc3339_ms(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let t = t.to_offset(time::UtcOffset::UTC);
    // Formatting a valid UTC date with a fixed description cannot fail; fall
    // back to the Unix time rather than panic if the crate ever disagrees.
    t.format(&fmt)
        .unwrap_or_else(|_| format!("@{}", t.unix_timestamp()))
}

/// A short random id tying together the log lines and history rows of one
/// deployment: 8 lowercase hex characters.
pub fn new_deploy_ref() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Everything read back by [`Storage::open`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StorageState {
    /// Newest first.
    pub history: Vec<HistoryEntry>,
    pub ghosted: Vec<String>,
    pub mode: Mode,
}

#[derive(Serialize)]
struct HistoryOut<'a> {
    format: u64,
    history: &'a [HistoryEntry],
}
#[derive(Deserialize)]
struct HistoryIn {
    history: Vec<HistoryEntry>,
}
#[derive(Serialize)]
struct GhostedOut<'a> {
    format: u64,
    ghosted: &'a [String],
}
#[derive(Deserialize)]
struct GhostedIn {
    ghosted: Vec<String>,
}
#[derive(Serialize)]
struct ModeOut<'a> {
    format: u64,
    mode: &'a Mode,
}
#[derive(Deserialize)]
struct ModeIn {
    mode: Mode,
}

/// Read first to decide whether the rest can be parsed.
#[derive(Deserialize)]
struct Envelope {
    format: u64,
}

/// The three state files of one app. Writes are serialised by an internal
/// lock so that the "keep the corrupt file" step happens exactly once.
#[derive(Debug)]
pub struct Storage {
    dir: PathBuf,
    /// File names whose current content could not be loaded and must be kept
    /// aside before the first overwrite.
    unreadable: Mutex<Vec<&'static str>>,
}

impl Storage {
    /// Opens (creating the folder if needed) and loads the state. Never fails:
    /// problems come back in the `Vec` and the affected part starts empty.
    pub fn open(dir: &Path) -> (Storage, StorageState, Vec<StorageError>) {
        let mut errors = Vec::new();
        let mut unreadable = Vec::new();
        if let Err(source) = fs::create_dir_all(dir) {
            errors.push(StorageError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            });
        }
        let mut state = StorageState::default();
        let mut failed = |name: &'static str, e: StorageError| {
            errors.push(e);
            unreadable.push(name);
        };
        match load::<HistoryIn>(&dir.join(HISTORY_FILE)) {
            Ok(v) => state.history = v.map(|v| v.history).unwrap_or_default(),
            Err(e) => failed(HISTORY_FILE, e),
        }
        match load::<GhostedIn>(&dir.join(GHOSTED_FILE)) {
            Ok(v) => state.ghosted = v.map(|v| v.ghosted).unwrap_or_default(),
            Err(e) => failed(GHOSTED_FILE, e),
        }
        match load::<ModeIn>(&dir.join(MODE_FILE)) {
            Ok(v) => state.mode = v.map(|v| v.mode).unwrap_or_default(),
            Err(e) => failed(MODE_FILE, e),
        }
        let storage = Storage {
            dir: dir.to_path_buf(),
            unreadable: Mutex::new(unreadable),
        };
        (storage, state, errors)
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the history (newest first).
    pub fn save_history(&self, history: &[HistoryEntry]) -> Result<(), StorageError> {
        self.save(
            HISTORY_FILE,
            &HistoryOut {
                format: FORMAT_VERSION,
                history,
            },
        )
    }

    /// Replaces the ghosted versions.
    pub fn save_ghosted(&self, ghosted: &[String]) -> Result<(), StorageError> {
        self.save(
            GHOSTED_FILE,
            &GhostedOut {
                format: FORMAT_VERSION,
                ghosted,
            },
        )
    }

    /// Replaces the mode.
    pub fn save_mode(&self, mode: &Mode) -> Result<(), StorageError> {
        self.save(
            MODE_FILE,
            &ModeOut {
                format: FORMAT_VERSION,
                mode,
            },
        )
    }

    fn save<T: Serialize>(&self, name: &'static str, value: &T) -> Result<(), StorageError> {
        let path = self.dir.join(name);
        let mut bytes =
            serde_json::to_vec_pretty(value).map_err(|source| StorageError::Encode {
                path: path.clone(),
                source,
            })?;
        bytes.push(b'\n');
        // A poisoned lock only means another save panicked; the list is
        // still meaningful.
        let mut unreadable = self
            .unreadable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(i) = unreadable.iter().position(|n| *n == name) {
            keep_corrupt(&path)?;
            unreadable.remove(i);
        }
        write_atomic(&path, &bytes).map_err(|source| StorageError::Write { path, source })
    }
}

/// Renames a file that could not be loaded to `{name}.corrupt-{timestamp}`
/// (renaming needs no read access and preserves the bytes exactly).
fn keep_corrupt(path: &Path) -> Result<(), StorageError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(()); // gone already: nothing to keep
    }
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "unknown".to_owned());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut backup = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut n = 1;
    while fs::symlink_metadata(&backup).is_ok() {
        backup = path.with_file_name(format!("{name}.corrupt-{stamp}-{n}"));
        n += 1;
    }
    fs::rename(path, &backup)
        .and_then(|()| sync_parent_dir(path))
        .map_err(|source| StorageError::Backup {
            path: path.to_path_buf(),
            backup,
            source,
        })
}

/// Reads a state file, checks its envelope, decodes it. `Ok(None)` when the
/// file does not exist (a fresh install).
fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StorageError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StorageError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |source| StorageError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let envelope: Envelope = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if envelope.format != FORMAT_VERSION {
        return Err(StorageError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: envelope.format,
        });
    }
    serde_json::from_slice(&bytes).map(Some).map_err(corrupt)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on setup failures
mod tests {
    use super::*;
    use crate::model::DeploymentKind;

    fn entry(version: &str, instance: u32) -> HistoryEntry {
        HistoryEntry {
            version: version.to_owned(),
            hash: "local".to_owned(),
            instance,
            deployment: DeploymentKind::FullDeployment,
            deploy_ref: new_deploy_ref(),
            inserted_at: utc_now_rfc3339(),
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn fresh_folder_opens_empty_and_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("storage").join("myapp");
        let (_s, state, errors) = Storage::open(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(state, StorageState::default());
        assert!(dir.is_dir());
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, _, _) = Storage::open(tmp.path());
        let history = vec![entry("0.1.2", 2), entry("0.1.1", 1)];
        let ghosted = vec!["0.1.3".to_owned()];
        let mode = Mode::Manual {
            version: "0.1.1".to_owned(),
        };
        s.save_history(&history).unwrap();
        s.save_ghosted(&ghosted).unwrap();
        s.save_mode(&mode).unwrap();
        let (_s2, state, errors) = Storage::open(tmp.path());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(state.history, history);
        assert_eq!(state.ghosted, ghosted);
        assert_eq!(state.mode, mode);
        // Pretty JSON with the envelope.
        let text = fs::read_to_string(tmp.path().join("mode.json")).unwrap();
        assert!(text.contains("\"format\": 1"), "{text}");
        assert!(text.contains('\n'));
        assert_eq!(
            names_in(tmp.path()),
            vec!["ghosted.json", "history.json", "mode.json"],
            "no temp file left behind"
        );
    }

    #[test]
    fn truncated_file_is_reported_kept_then_set_aside_on_first_write() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, _, _) = Storage::open(tmp.path());
        s.save_history(&[entry("0.1.1", 1), entry("0.1.0", 1)])
            .unwrap();
        let path = tmp.path().join("history.json");
        let full = fs::read(&path).unwrap();
        let cut = &full[..full.len() / 2];
        fs::write(&path, cut).unwrap();

        let (s, state, errors) = Storage::open(tmp.path());
        assert!(state.history.is_empty());
        assert_eq!(errors.len(), 1, "{errors:?}");
        let msg = format!("{}", errors[0]);
        assert!(msg.contains("history.json"), "{msg}");
        assert!(matches!(errors[0], StorageError::Corrupt { .. }));
        assert_eq!(fs::read(&path).unwrap(), cut, "file untouched by open");

        // Unrelated writes leave it alone too.
        s.save_mode(&Mode::Automatic).unwrap();
        assert_eq!(fs::read(&path).unwrap(), cut);

        let fresh = vec![entry("0.2.0", 1)];
        s.save_history(&fresh).unwrap();
        let names = names_in(tmp.path());
        let backups: Vec<_> = names
            .iter()
            .filter(|n| n.starts_with("history.json.corrupt-"))
            .collect();
        assert_eq!(backups.len(), 1, "{names:?}");
        assert_eq!(fs::read(tmp.path().join(backups[0])).unwrap(), cut);
        // Only the first overwrite sets the file aside.
        s.save_history(&fresh).unwrap();
        assert_eq!(names_in(tmp.path()).len(), names.len());
        let (_s, state, errors) = Storage::open(tmp.path());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(state.history, fresh);
    }

    #[test]
    fn wrong_content_and_unknown_format_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("mode.json"),
            r#"{"format": 1, "mode": {"mode": "sideways"}}"#,
        )
        .unwrap();
        fs::write(
            tmp.path().join("ghosted.json"),
            r#"{"format": 2, "ghosted": ["x"]}"#,
        )
        .unwrap();
        let (s, state, errors) = Storage::open(tmp.path());
        assert_eq!(state, StorageState::default());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| matches!(e,
            StorageError::Corrupt { path, .. } if path.ends_with("mode.json"))));
        assert!(errors.iter().any(|e| matches!(e,
            StorageError::UnsupportedFormat { path, found: 2 } if path.ends_with("ghosted.json"))));
        s.save_mode(&Mode::Automatic).unwrap();
        s.save_ghosted(&[]).unwrap();
        let names = names_in(tmp.path());
        assert!(names.iter().any(|n| n.starts_with("mode.json.corrupt-")));
        assert!(names.iter().any(|n| n.starts_with("ghosted.json.corrupt-")));
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(names_in(tmp.path()), vec!["f.json"]);
    }

    #[test]
    fn write_atomic_into_missing_folder_fails_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let err = write_atomic(&tmp.path().join("nope").join("f.json"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(names_in(tmp.path()), Vec::<String>::new());
    }

    #[test]
    fn concurrent_writes_never_produce_an_unparsable_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (s, _, _) = Storage::open(&dir);
        let s = std::sync::Arc::new(s);
        s.save_history(&[entry("0.0.0", 1)]).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..150 {
                        // Different lengths so a mix-up would show.
                        let h: Vec<_> = (0..(i % 7 + t * 5 + 1))
                            .map(|k| entry(&format!("{t}.{i}.{k}"), t as u32))
                            .collect();
                        s.save_history(&h).unwrap();
                    }
                })
            })
            .collect();
        let reader = {
            let done = done.clone();
            let path = dir.join("history.json");
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let bytes = fs::read(&path).unwrap();
                    let v: HistoryIn = serde_json::from_slice(&bytes).unwrap();
                    assert!(!v.history.is_empty());
                    reads += 1;
                }
                reads
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        let (_s, state, errors) = Storage::open(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!state.history.is_empty());
        assert_eq!(names_in(&dir), vec!["history.json"]);
    }

    #[test]
    fn concurrent_write_atomic_without_lock_is_still_whole() {
        // write_atomic alone (no Storage lock) must also be safe.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.json");
        write_atomic(&path, b"[0]").unwrap();
        let threads: Vec<_> = (0..2u8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..200usize {
                        let body = serde_json::to_vec(&vec![t; i % 50 + 1]).unwrap();
                        write_atomic(&path, &body).unwrap();
                        let read = fs::read(&path).unwrap();
                        let v: Vec<u8> = serde_json::from_slice(&read).unwrap();
                        assert!(!v.is_empty());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(names_in(tmp.path()), vec!["x.json"]);
    }

    #[test]
    fn time_and_ref_formats() {
        let t = time::macros::datetime!(2026-11-27 16:32:46.123456 UTC);
        assert_eq!(format_rfc3339_ms(t), "2026-11-27T16:32:46.123Z");
        let now = utc_now_rfc3339();
        time::OffsetDateTime::parse(&now, &time::format_description::well_known::Rfc3339).unwrap();
        let r = new_deploy_ref();
        assert_eq!(r.len(), 8);
        assert!(
            r.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(new_deploy_ref(), new_deploy_ref());
    }
}
