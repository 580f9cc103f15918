//! Publishing into an S3 release store (`deployex publish`): the tarball
//! first (streamed from disk, one PutObject), then `current.json`. S3 makes
//! each PutObject atomic: readers see the old or the new object.
//!
//! Invariant: keys come from [`S3Store::tarball_key`] and
//! [`S3Store::current_json_key`] (validated names only). No retry here: a
//! publish is run by an operator or CI, who sees the error and runs it
//! again.

use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;

use super::S3Store;
use crate::store::StoreError;

impl S3Store {
    /// Uploads `tarball` as the tarball of `version`.
    pub async fn upload_tarball(&self, version: &str, tarball: &Path) -> Result<(), StoreError> {
        let key = self.tarball_key(version)?;
        let body = ByteStream::from_path(tarball)
            .await
            .map_err(|e| StoreError::Read {
                path: tarball.to_path_buf(),
                source: std::io::Error::other(e),
            })?;
        self.put(&key, body, "application/gzip").await
    }

    /// Replaces `current.json` with `bytes` (already validated JSON).
    pub async fn write_current(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let key = self.current_json_key();
        self.put(&key, ByteStream::from(bytes.to_vec()), "application/json")
            .await
    }

    /// The SDK client and the bucket, for the fleet's own objects
    /// (`crate::fleet::objects`).
    pub(crate) fn sdk_client(&self) -> (&aws_sdk_s3::Client, &str) {
        (&self.client, &self.bucket)
    }

    async fn put(&self, key: &str, body: ByteStream, content_type: &str) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.request_error(key, e))
    }
}
