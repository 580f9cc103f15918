//! Publishing into a local release store (`deployex publish`): the tarball
//! first, then `current.json`, each written to a temp file beside its final
//! name, fsynced and renamed, so a deployex polling the same folder sees the
//! old or the new object, never a partial one.
//!
//! Invariant: the store's root folder must exist (a typo in
//! `DEPLOYEX_RELEASE_DIR` is an error, not a new store); the folders below
//! it are created.

use std::path::Path;

use super::LocalStore;
use crate::store::{StoreError, validate_version};

impl LocalStore {
    /// Copies `tarball` into the store as the tarball of `version`.
    pub async fn upload_tarball(&self, version: &str, tarball: &Path) -> Result<(), StoreError> {
        validate_version(version)?;
        let dest = self.tarball_path(version)?;
        self.ensure_parent(&dest).await?;
        let (from, to) = (tarball.to_path_buf(), dest.clone());
        tokio::task::spawn_blocking(move || super::copy_atomic(&from, &to))
            .await
            .map_err(|source| StoreError::TaskFailed {
                version: version.to_owned(),
                source,
            })?
            .map(|_| ())
            .map_err(|source| StoreError::Copy {
                version: version.to_owned(),
                from: tarball.to_path_buf(),
                to: dest,
                source,
            })
    }

    /// Replaces `current.json` with `bytes` (already validated JSON).
    pub async fn write_current(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.current_json_path();
        self.ensure_parent(&path).await?;
        let (to, data) = (path.clone(), bytes.to_vec());
        tokio::task::spawn_blocking(move || crate::storage::write_atomic(&to, &data))
            .await
            .map_err(|e| StoreError::WriteFile {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| StoreError::WriteFile { path, source })
    }

    async fn ensure_parent(&self, path: &Path) -> Result<(), StoreError> {
        if !tokio::fs::metadata(self.root())
            .await
            .is_ok_and(|m| m.is_dir())
        {
            return Err(StoreError::StoreMissing {
                root: self.root().to_path_buf(),
            });
        }
        let Some(dir) = path.parent() else {
            return Ok(());
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| StoreError::WriteFile {
                path: dir.to_path_buf(),
                source,
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::ReleaseStore;

    #[tokio::test]
    async fn publishes_what_the_reader_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        let s = LocalStore::new(&root, "myapp", "prod").unwrap();
        let src = tmp.path().join("in.tar.gz");
        std::fs::write(&src, b"tarball bytes").unwrap();

        let e = s.upload_tarball("1.0.0", &src).await.unwrap_err();
        assert!(matches!(e, StoreError::StoreMissing { .. }), "{e}");
        assert!(!root.exists(), "no store created out of a typo");

        std::fs::create_dir(&root).unwrap();
        s.upload_tarball("1.0.0", &src).await.unwrap();
        s.write_current(br#"{"version":"1.0.0"}"#).await.unwrap();
        let store = ReleaseStore::Local(s.clone());
        assert_eq!(store.current().await.unwrap().version, "1.0.0");
        let out = tmp.path().join("out.tar.gz");
        store.download("1.0.0", &out).await.unwrap();
        assert_eq!(std::fs::read(out).unwrap(), b"tarball bytes");
        assert!(s.upload_tarball("../x", &src).await.is_err());
    }
}
