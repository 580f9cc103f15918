//! The service folder `{var}/service/{app}/{i}`: `new/` → `current/` →
//! `previous/` rotation, repair after an interrupted rotation, and strays
//! (processes of this instance nobody knows) stopped before a start.

use super::*;
/// `previous/` removed, `current/` → `previous/`, `new/` → `current/`.
pub(super) fn rotate_folders(service: &Path) -> Result<(), StepError> {
    let new = service.join("new");
    let current = service.join("current");
    let previous = service.join("previous");
    if !new.is_dir() {
        return Err(StepError::Files(format!("{} is missing", new.display())));
    }
    if current.exists() {
        if previous.exists() {
            std::fs::remove_dir_all(&previous).map_err(|e| {
                StepError::Files(format!("cannot remove {}: {e}", previous.display()))
            })?;
        }
        std::fs::rename(&current, &previous).map_err(|e| {
            StepError::Files(format!(
                "cannot move {} to previous/: {e}",
                current.display()
            ))
        })?;
        sync_dir(service);
        crate::testhook::point("current_moved_to_previous");
    }
    std::fs::rename(&new, &current)
        .map_err(|e| StepError::Files(format!("cannot move {} to current/: {e}", new.display())))?;
    sync_dir(service);
    crate::testhook::point("new_moved_to_current");
    Ok(())
}

pub(super) fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Bring a service folder left by an interrupted deployment back to a
/// consistent shape: a missing `current/` is restored from `new/` (the
/// rotation had moved `current/` away already) or from `previous/`; a
/// leftover `new/` is removed.
pub fn repair_service_dir(service: &Path) {
    let new = service.join("new");
    let current = service.join("current");
    let previous = service.join("previous");
    if !current.exists() {
        if new.join("bin").is_dir() && previous.exists() {
            // Interrupted between the two renames of `rotate_folders`.
            if std::fs::rename(&new, &current).is_ok() {
                tracing::warn!(service = %service.display(), "repaired: new/ moved to current/");
            }
        } else if previous.join("bin").is_dir() && std::fs::rename(&previous, &current).is_ok() {
            tracing::warn!(service = %service.display(), "repaired: previous/ moved back to current/");
        }
    }
    if new.exists() {
        let _ = std::fs::remove_dir_all(&new);
    }
    sync_dir(service);
}

/// Stop every copy of this instance (process trees found by their
/// environment marker or command line, see [`process::instance_roots`]) but
/// the adopted one `keep`, and wait for them to be gone: left by a deployex
/// killed between spawn and pid file, or started by hand. Never two copies
/// of an instance.
pub(super) fn stop_strays(service: &Path, keep: Option<i32>) {
    let strays: Vec<i32> = process::instance_roots(service)
        .into_iter()
        .filter(|&pid| Some(pid) != keep)
        .collect();
    if strays.is_empty() {
        return;
    }
    for pid in &strays {
        tracing::warn!(service = %service.display(), pid, "stopping a stray process of this instance");
    }
    let deadline = Instant::now() + STRAY_KILL_TIMEOUT;
    loop {
        let left: Vec<i32> = strays
            .iter()
            .copied()
            .filter(|&pid| process::is_running(pid))
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::error!(service = %service.display(), pids = ?left, "stray processes survive SIGKILL");
            return;
        }
        for pid in left {
            process::kill_stray(service, pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long [`stop_strays`] waits for SIGKILLed strays to go (the kernel
/// frees a BEAM's memory before its pid: a big heap takes a moment).
pub(super) const STRAY_KILL_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_exponential_and_capped() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=9)
            .map(|n| backoff_delay(n, base, max).as_secs())
            .collect();
        assert_eq!(delays, vec![0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff_delay(1000, base, max), max);
    }

    #[test]
    fn rotation_moves_current_to_previous_and_new_to_current() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        for (d, v) in [("current", "1"), ("previous", "0"), ("new", "2")] {
            std::fs::create_dir_all(s.join(d)).unwrap();
            std::fs::write(s.join(d).join("v"), v).unwrap();
        }
        rotate_folders(s).unwrap();
        assert_eq!(std::fs::read_to_string(s.join("current/v")).unwrap(), "2");
        assert_eq!(std::fs::read_to_string(s.join("previous/v")).unwrap(), "1");
        assert!(!s.join("new").exists());
    }

    #[test]
    fn repair_restores_current_after_an_interrupted_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        // Interrupted after current → previous, before new → current.
        std::fs::create_dir_all(s.join("previous/bin")).unwrap();
        std::fs::create_dir_all(s.join("new/bin")).unwrap();
        std::fs::write(s.join("new/v"), "2").unwrap();
        repair_service_dir(s);
        assert_eq!(std::fs::read_to_string(s.join("current/v")).unwrap(), "2");
        assert!(s.join("previous/bin").is_dir());
        // Leftover new/ beside a good current/ is removed.
        std::fs::create_dir_all(s.join("new/bin")).unwrap();
        repair_service_dir(s);
        assert!(!s.join("new").exists());
        assert!(s.join("current").is_dir());
    }
}
