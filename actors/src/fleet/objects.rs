//! The fleet's objects in the release store: small JSON files under
//! `fleet/{app}/{env}/`, with the three operations coordination needs and
//! the store's own clock.
//!
//! - S3: `If-None-Match: *` (create), `If-Match: etag` (replace, delete),
//!   `LastModified` as the store's time.
//! - Local folder (one machine, or a shared file system): create = write a
//!   temp file and `link()` it to its name (fails if it exists, like
//!   `O_EXCL`, and the object appears whole); replace-if-match = `rename()`
//!   the object aside (only one contender can), check it is the expected
//!   version, `link()` the new one; renew = set the mtime through an open
//!   descriptor of the expected inode. The etag is `{inode}-{mtime ns}`;
//!   the store's time is a file's mtime.
//!
//! Invariant: every key is built from validated names (app, env, host id,
//! version), so every path stays under the store's root.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::SystemTime;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use crate::store::ReleaseStore;

/// One object: its bytes, its version tag and the store's time of its last
/// write.
#[derive(Debug, Clone)]
pub struct Obj {
    pub bytes: Vec<u8>,
    pub etag: String,
    pub modified: SystemTime,
}

#[derive(Debug, Clone)]
pub enum Objects {
    Local {
        root: PathBuf,
    },
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
}

/// Failures of the fleet's store operations, with the key involved.
#[derive(Debug, thiserror::Error)]
pub enum ObjError {
    #[error("fleet object {key}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fleet object s3 {key}: {detail}")]
    S3 { key: String, detail: String },
}

impl Objects {
    pub fn from_store(store: &ReleaseStore) -> Objects {
        match store {
            ReleaseStore::Local(s) => Objects::Local {
                root: s.root().to_path_buf(),
            },
            ReleaseStore::S3(s) => {
                let (client, bucket) = s.sdk_client();
                Objects::S3 {
                    client: client.clone(),
                    bucket: bucket.to_owned(),
                }
            }
        }
    }

    fn path(root: &std::path::Path, key: &str) -> PathBuf {
        root.join(key)
    }

    /// The object at `key`, `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Obj>, ObjError> {
        match self {
            Objects::Local { root } => {
                let path = Self::path(root, key);
                let key = key.to_owned();
                blocking(&key.clone(), move || {
                    let file = match std::fs::File::open(&path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    let meta = file.metadata()?;
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(&file, 1 << 20),
                        &mut bytes,
                    )?;
                    Ok(Some(Obj {
                        bytes,
                        etag: local_etag(&meta),
                        modified: meta.modified()?,
                    }))
                })
                .await
            }
            Objects::S3 { client, bucket } => {
                match client.get_object().bucket(bucket).key(key).send().await {
                    Ok(out) => {
                        let etag = out.e_tag().unwrap_or_default().to_owned();
                        let modified = out
                            .last_modified()
                            .and_then(|t| SystemTime::try_from(*t).ok())
                            .unwrap_or(SystemTime::UNIX_EPOCH);
                        let bytes = out.body.collect().await.map_err(|e| ObjError::S3 {
                            key: key.to_owned(),
                            detail: e.to_string(),
                        })?;
                        Ok(Some(Obj {
                            bytes: bytes.to_vec(),
                            etag,
                            modified,
                        }))
                    }
                    Err(e) if e.code() == Some("NoSuchKey") => Ok(None),
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                        Ok(None)
                    }
                    Err(e) => Err(s3_err(key, &e)),
                }
            }
        }
    }

    /// The keys under `prefix` (a folder, ending in `/`), one level deep.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ObjError> {
        match self {
            Objects::Local { root } => {
                let dir = Self::path(root, prefix);
                let prefix = prefix.to_owned();
                blocking(&prefix.clone(), move || {
                    let mut keys = Vec::new();
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
                        Err(e) => return Err(e),
                    };
                    for entry in entries.flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.starts_with('.') {
                            continue;
                        }
                        // Folders end in `/`, like S3's common prefixes.
                        let slash = if entry.path().is_dir() { "/" } else { "" };
                        keys.push(format!("{prefix}{name}{slash}"));
                    }
                    keys.sort();
                    Ok(keys)
                })
                .await
            }
            Objects::S3 { client, bucket } => {
                let mut keys = Vec::new();
                let mut token = None;
                loop {
                    let out = client
                        .list_objects_v2()
                        .bucket(bucket)
                        .prefix(prefix)
                        .delimiter("/")
                        .set_continuation_token(token)
                        .send()
                        .await
                        .map_err(|e| s3_err(prefix, &e))?;
                    keys.extend(
                        out.contents()
                            .iter()
                            .filter_map(|o| o.key().map(str::to_owned)),
                    );
                    keys.extend(
                        out.common_prefixes()
                            .iter()
                            .filter_map(|p| p.prefix().map(str::to_owned)),
                    );
                    match out.next_continuation_token() {
                        Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                        _ => break,
                    }
                }
                keys.sort();
                Ok(keys)
            }
        }
    }

    /// Writes `bytes` at `key` whatever is there; returns the new etag.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<String, ObjError> {
        match self {
            Objects::Local { root } => {
                let path = Self::path(root, key);
                let root = root.clone();
                blocking(key, move || {
                    mkdir_parent(&root, &path)?;
                    crate::storage::write_atomic(&path, &bytes)?;
                    Ok(local_etag(&std::fs::metadata(&path)?))
                })
                .await
            }
            Objects::S3 { client, bucket } => client
                .put_object()
                .bucket(bucket)
                .key(key)
                .content_type("application/json")
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map(|o| o.e_tag().unwrap_or_default().to_owned())
                .map_err(|e| s3_err(key, &e)),
        }
    }

    /// Creates `key` only if no object is there: `Some(etag)` when this call
    /// created it, `None` when another was there.
    pub async fn create(&self, key: &str, bytes: Vec<u8>) -> Result<Option<String>, ObjError> {
        match self {
            Objects::Local { root } => {
                let path = Self::path(root, key);
                let root = root.clone();
                blocking(key, move || {
                    mkdir_parent(&root, &path)?;
                    link_new(&path, &bytes)
                })
                .await
            }
            Objects::S3 { client, bucket } => {
                match client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .if_none_match("*")
                    .content_type("application/json")
                    .body(ByteStream::from(bytes))
                    .send()
                    .await
                {
                    Ok(o) => Ok(Some(o.e_tag().unwrap_or_default().to_owned())),
                    Err(e) if precondition_failed(&e) => Ok(None),
                    Err(e) => Err(s3_err(key, &e)),
                }
            }
        }
    }

    /// Replaces `key` only if it is still the version `etag`: `Some(new
    /// etag)`, or `None` when it changed (or went) meanwhile.
    pub async fn replace(
        &self,
        key: &str,
        bytes: Vec<u8>,
        etag: &str,
    ) -> Result<Option<String>, ObjError> {
        match self {
            Objects::Local { root } => {
                let path = Self::path(root, key);
                let etag = etag.to_owned();
                blocking(key, move || {
                    let aside = aside_name(&path);
                    match std::fs::rename(&path, &aside) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e),
                    }
                    let was = local_etag(&std::fs::metadata(&aside)?);
                    if was != etag {
                        // Not the version we meant: put it back if the name
                        // is still free, else the newer one stays.
                        let _ = std::fs::hard_link(&aside, &path);
                        let _ = std::fs::remove_file(&aside);
                        return Ok(None);
                    }
                    let _ = std::fs::remove_file(&aside);
                    link_new(&path, &bytes)
                })
                .await
            }
            Objects::S3 { client, bucket } => {
                match client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .if_match(etag)
                    .content_type("application/json")
                    .body(ByteStream::from(bytes))
                    .send()
                    .await
                {
                    Ok(o) => Ok(Some(o.e_tag().unwrap_or_default().to_owned())),
                    Err(e) if precondition_failed(&e) || e.code() == Some("NoSuchKey") => Ok(None),
                    Err(e) => Err(s3_err(key, &e)),
                }
            }
        }
    }

    /// Moves the store's time of `key` forward (a lease renewal) if it is
    /// still the version `etag`: `Some(new etag)`, else `None`. On S3 the
    /// object is rewritten with `bytes`, which must differ from the current
    /// content (S3's ETag is the content's MD5: the same bytes would keep
    /// the same ETag, and a take-over prepared before the renewal would
    /// still match). A local renewal only touches the mtime.
    pub async fn renew(
        &self,
        key: &str,
        bytes: Vec<u8>,
        etag: &str,
    ) -> Result<Option<String>, ObjError> {
        match self {
            Objects::Local { root } => {
                let path = Self::path(root, key);
                let etag = etag.to_owned();
                blocking(key, move || {
                    let file = match std::fs::OpenOptions::new().write(true).open(&path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    let meta = file.metadata()?;
                    if local_etag(&meta) != etag {
                        return Ok(None);
                    }
                    // Through the descriptor: if the name was taken over
                    // meanwhile, only the old inode is touched.
                    file.set_modified(SystemTime::now())?;
                    Ok(Some(local_etag(&file.metadata()?)))
                })
                .await
            }
            Objects::S3 { .. } => self.replace(key, bytes, etag).await,
        }
    }

    /// Deletes `key` if it is still the version `etag` (`None`: whatever
    /// is there). A missing object is success.
    pub async fn delete(&self, key: &str, etag: Option<&str>) -> Result<(), ObjError> {
        match self {
            Objects::Local { root } => {
                let path = Self::path(root, key);
                let etag = etag.map(str::to_owned);
                blocking(key, move || {
                    let target = match &etag {
                        None => path.clone(),
                        Some(etag) => {
                            let aside = aside_name(&path);
                            match std::fs::rename(&path, &aside) {
                                Ok(()) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                    return Ok(());
                                }
                                Err(e) => return Err(e),
                            }
                            if &local_etag(&std::fs::metadata(&aside)?) != etag {
                                let _ = std::fs::hard_link(&aside, &path);
                            }
                            aside
                        }
                    };
                    match std::fs::remove_file(&target) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                    // An emptied version folder goes, like an S3 prefix
                    // without objects (fails harmlessly when not empty).
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::remove_dir(dir);
                    }
                    Ok(())
                })
                .await
            }
            Objects::S3 { client, bucket } => {
                let mut req = client.delete_object().bucket(bucket).key(key);
                if let Some(etag) = etag {
                    req = req.if_match(etag);
                }
                match req.send().await {
                    Ok(_) => Ok(()),
                    Err(e) if precondition_failed(&e) || e.code() == Some("NoSuchKey") => Ok(()),
                    Err(e) => Err(s3_err(key, &e)),
                }
            }
        }
    }
}

fn local_etag(meta: &std::fs::Metadata) -> String {
    format!("{}-{}.{}", meta.ino(), meta.mtime(), meta.mtime_nsec())
}

fn aside_name(path: &std::path::Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.aside-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Creates the folders of `path` below `root`, never `root` itself: a store
/// folder that is gone (unmounted, moved) is an outage, not a new store.
fn mkdir_parent(root: &std::path::Path, path: &std::path::Path) -> std::io::Result<()> {
    if !root.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("release store folder {} does not exist", root.display()),
        ));
    }
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir),
        None => Ok(()),
    }
}

/// Writes a temp file, fsyncs it and links it to `path` (fails if `path`
/// exists): the object appears whole, once.
fn link_new(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<Option<String>> {
    use std::io::Write;
    let (mut file, tmp) = crate::storage::create_temp_beside(path)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(Some(local_etag(&std::fs::metadata(path)?))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

async fn blocking<T: Send + 'static>(
    key: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ObjError> {
    let key = key.to_owned();
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|source| ObjError::Io { key, source }),
        Err(e) => Err(ObjError::Io {
            key,
            source: std::io::Error::other(e),
        }),
    }
}

type S3Err<E> = aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>;

/// A conditional write or delete that lost (HTTP 412).
fn precondition_failed<E: ProvideErrorMetadata>(e: &S3Err<E>) -> bool {
    e.code() == Some("PreconditionFailed")
        || e.raw_response().is_some_and(|r| r.status().as_u16() == 412)
}

fn s3_err<E>(key: &str, e: &S3Err<E>) -> ObjError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    ObjError::S3 {
        key: key.to_owned(),
        detail: crate::release_fetcher::error_chain(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_conditional_operations() {
        let tmp = tempfile::tempdir().unwrap();
        let o = Objects::Local {
            root: tmp.path().to_path_buf(),
        };
        let key = "fleet/a/b/claims/1.0/slot-0.json";
        let e1 = o.create(key, b"one".to_vec()).await.unwrap().unwrap();
        assert!(o.create(key, b"two".to_vec()).await.unwrap().is_none());
        assert_eq!(o.get(key).await.unwrap().unwrap().bytes, b"one");
        assert!(
            o.replace(key, b"x".to_vec(), "0-0.0")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(o.get(key).await.unwrap().unwrap().bytes, b"one", "kept");
        let e2 = o
            .replace(key, b"three".to_vec(), &e1)
            .await
            .unwrap()
            .unwrap();
        assert!(
            o.renew(key, Vec::new(), &e1).await.unwrap().is_none(),
            "stale etag"
        );
        let e3 = o.renew(key, Vec::new(), &e2).await.unwrap().unwrap();
        assert_ne!(e2, e3);
        o.delete(key, Some(&e2)).await.unwrap();
        assert!(o.get(key).await.unwrap().is_some(), "stale delete keeps it");
        o.delete(key, Some(&e3)).await.unwrap();
        assert!(o.get(key).await.unwrap().is_none());
        assert!(
            o.list("fleet/a/b/claims/").await.unwrap().is_empty(),
            "the emptied version folder went, no temp or aside file left"
        );
    }
}
