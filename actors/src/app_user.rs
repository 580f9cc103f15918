//! Running the apps as a user of their own (`DEPLOYEX_APP_USER`): who that
//! user is, and the file ownership that lets it run a release without
//! being able to change it.
//!
//! deployex (root) keeps owning everything; the app user's group gets read
//! access to what the app must read, the app user owns only what it must
//! write:
//!
//! ```text
//! {var}, {var}/service, {var}/service/{app}   o+x added (search only, no listing)
//! {var}/service/{app}/{i}[b]                  deployex:appgroup 0750
//!     new/ current/ previous/                 deployex:appgroup, g+r (g+x on folders and executables), no g/o write
//!     tmp/                                    app:appgroup 0700 (RELEASE_TMP, RELX_OUT_FILE_PATH, HOME if the user has none)
//!     pid                                     deployex's
//! {log}/{app}-{i}-{stdout,stderr}.log         app:appgroup (the app writes them through the fds deployex opened)
//! ```
//!
//! Hot upgrades: `release_handler` runs inside the node, as the app user,
//! and writes `lib/{app}-{to}`, `releases/{to}/`, `releases/RELEASES` and
//! `releases/start_erl.data`. For the length of the upgrade
//! ([`AppUser::open_for_upgrade`]) the `lib/` and `releases/` folders and
//! those two files belong to the app user; afterwards, success or not,
//! [`AppUser::seal_tree`] gives both trees back to deployex.
//!
//! The switch itself (supplementary groups, gid, uid, in that order, in
//! the child between fork and exec) is [`AppUser::switch_hook`], applied by
//! `process::run_as_*` for instances and pre-commands and by the web
//! terminal for its remote shell.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// The capabilities a deployex that is not root needs to run the apps as
/// another user: give files away and take them back (CHOWN, FOWNER),
/// clean up what a failed hot upgrade left in the app's folders
/// (DAC_OVERRIDE), signal the app's processes (KILL), switch ids
/// (SETGID, SETUID), read the app's `/proc/{pid}/environ` and `cwd` to
/// find its processes (SYS_PTRACE). The installer's unit grants exactly
/// these.
pub const NEEDED_CAPS: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (19, "CAP_SYS_PTRACE"),
];

#[derive(Debug, thiserror::Error)]
pub enum AppUserError {
    #[error("no such user")]
    Unknown,
    #[error("cannot look the user up")]
    Lookup(#[source] nix::Error),
    #[error("cannot read the user's groups")]
    Groups(#[source] nix::Error),
    #[error(
        "deployex runs as uid {uid} without {missing}: run it as root (or grant those capabilities) or unset the variable"
    )]
    NotPrivileged { uid: u32, missing: String },
}

/// The user the apps run as, resolved once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUser {
    pub name: String,
    pub uid: u32,
    /// Primary group: the group that may read the release trees.
    pub gid: u32,
    /// Supplementary groups (from the group database), primary included.
    pub groups: Vec<u32>,
    /// The user's home folder from the passwd entry (may not exist:
    /// `nobody` has `/nonexistent`).
    pub home: PathBuf,
}

impl AppUser {
    /// Looks `name` up in the user and group databases.
    pub fn lookup(name: &str) -> Result<AppUser, AppUserError> {
        let user = User::from_name(name)
            .map_err(AppUserError::Lookup)?
            .ok_or(AppUserError::Unknown)?;
        let cname = std::ffi::CString::new(name).map_err(|_| AppUserError::Unknown)?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(AppUserError::Groups)?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        Ok(AppUser {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            home: user.dir,
        })
    }

    /// Whether running as this user changes anything (it is not deployex's
    /// own effective user).
    pub fn is_other(&self) -> bool {
        self.uid != Uid::effective().as_raw()
    }

    /// deployex must be root, or hold [`NEEDED_CAPS`], to run the apps as
    /// another user. Checked at start (not by `check-config`, which an
    /// installer runs as root).
    pub fn check_privileges(&self) -> Result<(), AppUserError> {
        let uid = Uid::effective().as_raw();
        if uid == 0 || !self.is_other() {
            return Ok(());
        }
        let effective = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(0);
        let missing: Vec<&str> = NEEDED_CAPS
            .iter()
            .filter(|(bit, _)| effective & (1u64 << bit) == 0)
            .map(|(_, name)| *name)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(AppUserError::NotPrivileged {
                uid,
                missing: missing.join(", "),
            })
        }
    }

    /// What runs in the child between fork and exec: supplementary groups,
    /// then the gid, then the uid (after `setuid` the others are no longer
    /// allowed), then no capability left (from root, `setuid` drops the
    /// permitted and ambient ones by itself; from a deployex holding
    /// capabilities it does not). Only async-signal-safe syscalls, no allocation: the group
    /// list is built here, before the fork.
    pub fn switch_hook(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        move || {
            let os = |e: nix::Error| io::Error::from_raw_os_error(e as i32);
            nix::unistd::setgroups(&groups).map_err(os)?;
            nix::unistd::setgid(gid).map_err(os)?;
            nix::unistd::setuid(uid).map_err(os)?;
            crate::process::drop_all_caps()
        }
    }

    /// Environment for a process running as this user from the service
    /// folder `service`: its writable `tmp/` for the release scripts
    /// (Elixir's `RELEASE_TMP`, relx's `RELX_OUT_FILE_PATH`, which default
    /// to folders inside the release), its home (the passwd one when it
    /// exists, else that `tmp/`), `USER` and `LOGNAME`.
    pub fn env(&self, service: &Path) -> Vec<(String, String)> {
        let tmp = tmp_dir(service);
        let home = if self.home.is_dir() {
            self.home.clone()
        } else {
            tmp.clone()
        };
        let tmp = tmp.to_string_lossy().into_owned();
        vec![
            ("RELEASE_TMP".to_string(), tmp.clone()),
            ("RELX_OUT_FILE_PATH".to_string(), tmp),
            ("HOME".to_string(), home.to_string_lossy().into_owned()),
            ("USER".to_string(), self.name.clone()),
            ("LOGNAME".to_string(), self.name.clone()),
        ]
    }

    /// Makes `service` (an instance's slot folder, created if missing)
    /// reachable and readable for the app's group, and its `tmp/` the app
    /// user's. The folders from `var_dir` down to it get search permission
    /// for others (`o+x`). Idempotent and cheap (a few `stat`s): runs
    /// before every start.
    pub fn prepare_service(&self, var_dir: &Path, service: &Path) -> io::Result<()> {
        std::fs::create_dir_all(service).map_err(at(service))?;
        if let Ok(below) = service.strip_prefix(var_dir) {
            let mut dir = var_dir.to_path_buf();
            let mut chain = vec![dir.clone()];
            for part in below.parent().into_iter().flat_map(Path::components) {
                dir.push(part);
                chain.push(dir.clone());
            }
            for dir in chain {
                add_mode(&dir, 0o001)?;
            }
        }
        set_owner(service, None, Some(self.gid))?;
        set_mode(service, 0o750)?;
        let tmp = tmp_dir(service);
        match std::fs::create_dir(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(at(&tmp)(e)),
        }
        set_owner(&tmp, Some(self.uid), Some(self.gid))?;
        set_mode(&tmp, 0o700)
    }

    /// Gives the release tree at `root` to deployex and the app's group:
    /// every entry owned by deployex's user and the app's group, readable
    /// by the group (folders and executables searchable/executable), never
    /// writable by group or others. Symbolic links are not followed. Top
    /// down: a folder is deployex's before its entries are looked at, so
    /// the app cannot swap an entry while it is being handled.
    pub fn seal_tree(&self, root: &Path) -> io::Result<()> {
        let me = Uid::effective().as_raw();
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            let meta = std::fs::symlink_metadata(&path).map_err(at(&path))?;
            if !meta.is_dir() && meta.nlink() > 1 {
                // A hard link may name a file outside the tree (the app could
                // link its own files during an upgrade): never hand it to
                // the group; one that is not deployex's is refused.
                if meta.uid() == me {
                    continue;
                }
                return Err(io::Error::other(format!(
                    "{}: a hard-linked file owned by uid {} in the release",
                    path.display(),
                    meta.uid()
                )));
            }
            if meta.uid() != me || meta.gid() != self.gid {
                std::os::unix::fs::lchown(&path, Some(me), Some(self.gid)).map_err(at(&path))?;
            }
            if meta.file_type().is_symlink() {
                continue;
            }
            let mode = meta.mode() & 0o7777;
            let exec = meta.is_dir() || mode & 0o100 != 0;
            let wanted = (mode & !0o022) | 0o040 | if exec { 0o010 } else { 0 };
            // chown clears set-id bits: compare with what is there now.
            let now = std::fs::symlink_metadata(&path).map_err(at(&path))?.mode() & 0o7777;
            if now != wanted {
                set_mode(&path, wanted)?;
            }
            if meta.is_dir() {
                for entry in std::fs::read_dir(&path).map_err(at(&path))? {
                    stack.push(entry.map_err(at(&path))?.path());
                }
            }
        }
        Ok(())
    }

    /// [`Self::seal_tree`] unless `root` already belongs to the app's
    /// group (one `stat`: the crash-restart path stays cheap).
    pub fn seal_tree_once(&self, root: &Path) -> io::Result<()> {
        match std::fs::symlink_metadata(root) {
            Ok(meta) if meta.gid() == self.gid && meta.mode() & 0o040 != 0 => Ok(()),
            Ok(_) => self.seal_tree(root),
            Err(e) => Err(at(root)(e)),
        }
    }

    /// Lets the node write what `release_handler` writes during a hot
    /// upgrade of the release at `root`: the `lib/` and `releases/`
    /// folders and `releases/RELEASES`, `releases/start_erl.data`. Undo
    /// with [`Self::close_after_upgrade`].
    pub fn open_for_upgrade(&self, root: &Path) -> io::Result<()> {
        let releases = root.join("releases");
        for path in [
            root.join("lib"),
            releases.join("RELEASES"),
            releases.join("start_erl.data"),
            releases,
        ] {
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {}
                Ok(_) => {
                    set_owner(&path, Some(self.uid), Some(self.gid))?;
                    add_mode(&path, 0o200)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(at(&path)(e)),
            }
        }
        Ok(())
    }

    /// Gives `lib/` and `releases/` of `root` back to deployex (everything
    /// the node created in them during the upgrade included).
    pub fn close_after_upgrade(&self, root: &Path) -> io::Result<()> {
        self.seal_tree(&root.join("lib"))?;
        self.seal_tree(&root.join("releases"))
    }

    /// Makes an instance's log file the app user's (deployex opened it;
    /// the app writes it through the inherited descriptor).
    pub fn own_log(&self, file: &File, path: &Path) -> io::Result<()> {
        let meta = file.metadata().map_err(at(path))?;
        if meta.uid() != self.uid || meta.gid() != self.gid {
            std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid)).map_err(at(path))?;
        }
        Ok(())
    }
}

/// Gives `path` the owner and group of `from` when they differ (no-op when
/// the app runs as deployex's user). The hot upgrade creates
/// `releases/{to}/` and copies the tarball into it; while the node runs as
/// the app user, `releases/` is that user's ([`AppUser::open_for_upgrade`])
/// and so must be what `release_handler` unpacks into.
pub fn inherit_owner(path: &Path, from: &Path) -> io::Result<()> {
    let parent = std::fs::metadata(from).map_err(at(from))?;
    set_owner(path, Some(parent.uid()), Some(parent.gid()))
}

/// `{service}/tmp`: the one folder of an instance its app may write.
pub fn tmp_dir(service: &Path) -> PathBuf {
    service.join("tmp")
}

/// Adds the path to an I/O error (the std error names no file).
fn at(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn set_owner(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(at(path))?;
    if uid.is_some_and(|u| u != meta.uid()) || gid.is_some_and(|g| g != meta.gid()) {
        std::os::unix::fs::lchown(path, uid, gid).map_err(at(path))?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(at(path))
}

fn add_mode(path: &Path, bits: u32) -> io::Result<()> {
    let mode = std::fs::metadata(path).map_err(at(path))?.mode() & 0o7777;
    if mode & bits != bits {
        set_mode(path, mode | bits)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod unit {
    use super::*;

    #[test]
    fn nobody_is_found_and_unknown_users_are_not() {
        let nobody = AppUser::lookup("nobody").unwrap();
        assert_eq!(nobody.uid, 65534);
        assert!(nobody.groups.contains(&nobody.gid));
        assert!(matches!(
            AppUser::lookup("no-such-user-dx"),
            Err(AppUserError::Unknown)
        ));
    }

    #[test]
    fn env_points_tmp_and_home_at_the_service_folder() {
        let user = AppUser {
            name: "app".into(),
            uid: 12345,
            gid: 12345,
            groups: vec![12345],
            home: PathBuf::from("/nonexistent/dx"),
        };
        let env = user.env(Path::new("/var/lib/deployex/service/a/1"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("RELEASE_TMP"),
            Some("/var/lib/deployex/service/a/1/tmp")
        );
        assert_eq!(get("HOME"), Some("/var/lib/deployex/service/a/1/tmp"));
        assert_eq!(get("USER"), Some("app"));
    }

    #[test]
    fn seal_tree_strips_group_and_other_write_and_adds_group_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rel");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/app"), "#!/bin/sh\n").unwrap();
        std::fs::write(root.join("data"), "x").unwrap();
        set_mode(&root.join("bin/app"), 0o777).unwrap();
        set_mode(&root.join("data"), 0o600).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let me = nix::unistd::getegid().as_raw();
        let user = AppUser {
            name: "x".into(),
            uid: Uid::effective().as_raw(),
            gid: me,
            groups: vec![me],
            home: PathBuf::from("/"),
        };
        user.seal_tree(&root).unwrap();
        let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode("bin/app"), 0o755);
        assert_eq!(mode("data"), 0o640);
        assert_eq!(mode("bin") & 0o070, 0o050);
        // The link's target is untouched.
        assert_ne!(
            std::fs::metadata("/etc/passwd").unwrap().mode() & 0o777,
            0o640
        );
    }
}
