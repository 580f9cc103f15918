//! The local-folder backend of the release store (`DEPLOYEX_RELEASE_DIR`):
//! `{root}/versions/{app}/{env}/current.json` and
//! `{root}/dist/{app}/{app}-{version}.tar.gz`.
//!
//! Invariant: app, env and version are validated before they are joined into
//! a path, so every path this module touches is under `root`.

mod write;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::{CurrentRelease, StoreError, parse_current_json_from, validate_name, validate_version};
use crate::storage::{create_temp_beside, sync_parent_dir};

/// A `current.json` is a few hundred bytes; refuse to slurp anything huge.
const MAX_CURRENT_JSON_BYTES: u64 = 1024 * 1024;

/// A release store in a local folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStore {
    root: PathBuf,
    app: String,
    env: String,
}

impl LocalStore {
    /// `app` and `env` must be plain names (they become folder names).
    pub fn new(root: impl Into<PathBuf>, app: &str, env: &str) -> Result<Self, StoreError> {
        validate_name("app name", app)?;
        validate_name("env name", env)?;
        Ok(LocalStore {
            root: root.into(),
            app: app.to_owned(),
            env: env.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `{root}/versions/{app}/{env}/current.json`.
    pub fn current_json_path(&self) -> PathBuf {
        self.root
            .join("versions")
            .join(&self.app)
            .join(&self.env)
            .join("current.json")
    }

    /// `{root}/dist/{app}/{app}-{version}.tar.gz` (version validated).
    pub fn tarball_path(&self, version: &str) -> Result<PathBuf, StoreError> {
        validate_version(version)?;
        Ok(self
            .root
            .join("dist")
            .join(&self.app)
            .join(format!("{}-{version}.tar.gz", self.app)))
    }

    pub async fn current(&self) -> Result<CurrentRelease, StoreError> {
        let path = self.current_json_path();
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self
                    .missing_root_or(StoreError::CurrentMissing { path })
                    .await);
            }
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        if meta.len() > MAX_CURRENT_JSON_BYTES {
            return Err(StoreError::CurrentTooLarge {
                path,
                size: meta.len(),
                max: MAX_CURRENT_JSON_BYTES,
            });
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        parse_current_json_from(&bytes, &path.display().to_string())
    }

    pub async fn download(&self, version: &str, dest: &Path) -> Result<u64, StoreError> {
        let src = self.tarball_path(version)?;
        match tokio::fs::metadata(&src).await {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(StoreError::Read {
                    path: src,
                    source: io::Error::other("not a regular file"),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let missing = StoreError::TarballMissing {
                    version: version.to_owned(),
                    path: src,
                };
                return Err(self.missing_root_or(missing).await);
            }
            Err(source) => return Err(StoreError::Read { path: src, source }),
        }
        let (from, to, v) = (src.clone(), dest.to_path_buf(), version.to_owned());
        tokio::task::spawn_blocking(move || copy_atomic(&from, &to))
            .await
            .map_err(|source| StoreError::TaskFailed { version: v, source })?
            .map_err(|source| StoreError::Copy {
                version: version.to_owned(),
                from: src,
                to: dest.to_path_buf(),
                source,
            })
    }

    pub fn describe(&self) -> String {
        format!(
            "local store {} (app {}, env {})",
            self.root.display(),
            self.app,
            self.env
        )
    }

    /// A missing root folder explains every missing file: say that instead.
    async fn missing_root_or(&self, err: StoreError) -> StoreError {
        match tokio::fs::metadata(&self.root).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => StoreError::StoreMissing {
                root: self.root.clone(),
            },
            _ => err,
        }
    }
}

/// Copies `from` to a temp file beside `to`, fsyncs it, renames it over `to`
/// and fsyncs the folder. Returns the number of bytes copied.
fn copy_atomic(from: &Path, to: &Path) -> io::Result<u64> {
    let mut src = File::open(from)?;
    let (mut file, tmp) = create_temp_beside(to)?;
    let result = (|| {
        let n = io::copy(&mut src, &mut file)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, to)?;
        sync_parent_dir(to)?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::ReleaseStore;

    fn store(root: &Path) -> ReleaseStore {
        ReleaseStore::Local(LocalStore::new(root, "myapp", "prod").unwrap())
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[tokio::test]
    async fn reads_current_and_downloads() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        write(
            &root.join("versions/myapp/prod/current.json"),
            br#"{"version": "0.1.1", "pre_commands": ["eval M.f"], "hash": "local"}"#,
        );
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        write(&root.join("dist/myapp/myapp-0.1.1.tar.gz"), &payload);
        let s = store(&root);
        assert!(s.describe().contains("myapp"), "{}", s.describe());

        let c = s.current().await.unwrap();
        assert_eq!(c.version, "0.1.1");
        assert_eq!(c.pre_commands, vec!["eval M.f"]);

        let out = tmp.path().join("work");
        std::fs::create_dir(&out).unwrap();
        let dest = out.join("myapp-0.1.1.tar.gz");
        std::fs::write(&dest, b"old content").unwrap();
        let n = s.download("0.1.1", &dest).await.unwrap();
        assert_eq!(n, payload.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), payload);
        let names: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    #[tokio::test]
    async fn distinct_errors_for_missing_things() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        let s = store(&root);
        let dest = tmp.path().join("x.tar.gz");

        let e = s.current().await.unwrap_err();
        assert!(matches!(e, StoreError::StoreMissing { .. }), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = s.download("0.1.1", &dest).await.unwrap_err();
        assert!(matches!(e, StoreError::StoreMissing { .. }), "{e}");

        std::fs::create_dir_all(&root).unwrap();
        let e = s.current().await.unwrap_err();
        assert!(matches!(e, StoreError::CurrentMissing { .. }), "{e}");
        assert!(
            e.to_string().contains("versions/myapp/prod/current.json"),
            "{e}"
        );
        let e = s.download("0.1.1", &dest).await.unwrap_err();
        assert!(matches!(e, StoreError::TarballMissing { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("0.1.1") && msg.contains("dist/myapp/myapp-0.1.1.tar.gz"),
            "{msg}"
        );
        assert!(!dest.exists());

        let e = s.download("../../etc/passwd", &dest).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidName { .. }), "{e}");
    }

    #[tokio::test]
    async fn malformed_current_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            &root.join("versions/myapp/prod/current.json"),
            b"{\"version\": \"0.1.1\"",
        );
        let e = store(root).current().await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("current.json: malformed JSON at line 1"),
            "{msg}"
        );
        assert!(msg.contains(&root.display().to_string()), "{msg}");
    }

    #[tokio::test]
    async fn failed_download_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(&root.join("dist/myapp/myapp-1.tar.gz"), b"data");
        // Destination folder does not exist: the copy fails, cleanly.
        let dest = root.join("missing-dir/out.tar.gz");
        let e = store(root).download("1", &dest).await.unwrap_err();
        assert!(matches!(e, StoreError::Copy { .. }), "{e}");
        assert!(e.to_string().contains("missing-dir/out.tar.gz"), "{e}");
        // Tarball path is a directory.
        std::fs::create_dir_all(root.join("dist/myapp/myapp-2.tar.gz")).unwrap();
        let e = store(root)
            .download("2", &root.join("out.tar.gz"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Read { .. }), "{e}");
        assert!(!root.join("out.tar.gz").exists());
    }

    #[test]
    fn rejects_unsafe_app_or_env() {
        assert!(LocalStore::new("/x", "../a", "prod").is_err());
        assert!(LocalStore::new("/x", "a", "p/q").is_err());
        assert!(LocalStore::new("/x", "", "p").is_err());
    }
}
