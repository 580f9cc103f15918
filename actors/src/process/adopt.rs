//! Adoption of instances left running by a previous deployex: the pid file
//! written at spawn, and the checks that decide whether the pid it names is
//! still that instance. A pid that fails them is never signalled.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ProcessError;
use super::handle::{OpenError, ProcessHandle};
use super::procfs::read_stat;

/// What deployex remembers about a running instance, on disk (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidFile {
    pub pid: i32,
    /// With `pid`, identifies the process across pid reuse.
    pub start_time_ticks: u64,
    /// `{svc}/current/bin/{app}` as spawned; its grandparent is the release
    /// root that the process must still be running from.
    pub program: PathBuf,
    pub version: Option<String>,
    pub port: u16,
}

impl PidFile {
    pub fn new(handle: &ProcessHandle, program: &Path, version: Option<String>, port: u16) -> Self {
        PidFile {
            pid: handle.pid(),
            start_time_ticks: handle.start_time_ticks(),
            program: program.to_path_buf(),
            version,
            port,
        }
    }

    /// Atomic replace: `{path}.partial`, fsync, rename, fsync of the folder.
    /// A crash leaves either the old or the new file, never half of one.
    pub fn write(&self, path: &Path) -> Result<(), ProcessError> {
        let err = |source| ProcessError::PidFileWrite {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = dir {
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        }
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Self, ProcessError> {
        let bytes = fs::read(path).map_err(|source| ProcessError::PidFileRead {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ProcessError::PidFileParse {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The verdict on a pid file.
#[derive(Debug)]
pub enum Adoption {
    /// Still our instance: watch it (and stop it) through this handle.
    Adopt(ProcessHandle),
    /// The process no longer runs.
    Gone,
    /// The pid is alive but is not our instance (reused, other program, not
    /// a group leader). Never signal it.
    Mismatch { reason: String },
}

/// Decides whether the process named by `pidfile` is still the instance we
/// started: same pid and start time, leader of its own group, and running
/// from the release root (`/proc/{pid}/exe`, or a path in its command line
/// such as beam.smp's `-root`, `-boot` and `-config`, or a start script's
/// own path).
pub fn adopt(pidfile: &PidFile) -> Adoption {
    let pid = pidfile.pid;
    if pid <= 0 {
        return Adoption::Mismatch {
            reason: format!("invalid pid {pid}"),
        };
    }
    let handle = match ProcessHandle::open(pid, Some(pidfile.start_time_ticks)) {
        Ok(h) => h,
        Err(OpenError::Gone) => return Adoption::Gone,
        Err(OpenError::Reused { found_start }) => {
            return Adoption::Mismatch {
                reason: format!(
                    "pid {pid} started at tick {found_start}, not {}: reused",
                    pidfile.start_time_ticks
                ),
            };
        }
        Err(OpenError::Pidfd(e)) => {
            return Adoption::Mismatch {
                reason: format!("pid {pid} cannot be watched: {e}"),
            };
        }
    };
    if !handle.is_alive() {
        return Adoption::Gone;
    }
    if handle.pgid() != pid {
        return Adoption::Mismatch {
            reason: format!("pid {pid} is in group {}, not its own", handle.pgid()),
        };
    }
    let Some(root) = release_root(&pidfile.program) else {
        return Adoption::Mismatch {
            reason: format!("{} is not {{root}}/bin/{{app}}", pidfile.program.display()),
        };
    };
    if !runs_from(pid, root) {
        return Adoption::Mismatch {
            reason: format!("pid {pid} does not run from {}", root.display()),
        };
    }
    // A last look: the process may have exited during the checks.
    match read_stat(pid) {
        Some(s) if !s.is_exited() => Adoption::Adopt(handle),
        _ => Adoption::Gone,
    }
}

/// `{root}/bin/{app}` → `{root}`.
fn release_root(program: &Path) -> Option<&Path> {
    let bin = program.parent()?;
    (bin.file_name()? == "bin").then_some(())?;
    bin.parent().filter(|r| !r.as_os_str().is_empty())
}

fn runs_from(pid: i32, root: &Path) -> bool {
    let mut roots = vec![root.to_path_buf()];
    if let Ok(canon) = fs::canonicalize(root) {
        roots.push(canon);
    }
    let under = |p: &Path| roots.iter().any(|r| p.starts_with(r));
    if let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) {
        let exe = exe.to_string_lossy();
        if under(Path::new(exe.trim_end_matches(" (deleted)"))) {
            return true;
        }
    }
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
        raw.split(|b| *b == 0)
            .filter_map(|arg| std::str::from_utf8(arg).ok())
            .any(|arg| arg.starts_with('/') && under(Path::new(arg)))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod unit {
    use super::*;

    #[test]
    fn release_root_of_program() {
        assert_eq!(
            release_root(Path::new("/var/svc/app/1/current/bin/app")),
            Some(Path::new("/var/svc/app/1/current"))
        );
        assert_eq!(release_root(Path::new("/var/svc/app/1/current/app")), None);
        assert_eq!(release_root(Path::new("bin/app")), None);
    }

    #[test]
    fn pid_file_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/app-1.pid.json");
        let pf = PidFile {
            pid: 1234,
            start_time_ticks: 98765,
            program: PathBuf::from("/svc/app/1/current/bin/app"),
            version: Some("0.1.1".into()),
            port: 4000,
        };
        pf.write(&path).unwrap();
        assert_eq!(PidFile::read(&path).unwrap(), pf);
        assert!(!dir.path().join("state/app-1.pid.json.partial").exists());
        // Overwrite in place.
        let pf2 = PidFile {
            version: None,
            ..pf.clone()
        };
        pf2.write(&path).unwrap();
        assert_eq!(PidFile::read(&path).unwrap(), pf2);

        fs::write(&path, "{\"pid\": 12").unwrap();
        assert!(matches!(
            PidFile::read(&path),
            Err(ProcessError::PidFileParse { .. })
        ));
        assert!(matches!(
            PidFile::read(&dir.path().join("missing")),
            Err(ProcessError::PidFileRead { .. })
        ));
    }

    #[test]
    fn reads_the_documented_format() {
        let json = r#"{"pid":42,"start_time_ticks":7,"program":"/s/current/bin/a","version":null,"port":4001}"#;
        let pf: PidFile = serde_json::from_str(json).unwrap();
        assert_eq!(pf.pid, 42);
        assert_eq!(pf.port, 4001);
        assert_eq!(pf.version, None);
    }
}
