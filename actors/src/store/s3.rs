//! The S3 backend of the release store: the same keys as the local store
//! (`versions/{app}/{env}/current.json`, `dist/{app}/{app}-{version}.tar.gz`)
//! in a bucket, read with the official AWS SDK.
//!
//! Invariants:
//! - app, env and version are validated before they become part of a key.
//! - A download streams to a temp file beside `dest` (the tarball is never
//!   held in memory), checks the byte count against Content-Length, fsyncs
//!   and renames; on any failure the temp file is removed, so `dest` is
//!   either the whole object or untouched.
//! - Only transient failures (timeouts, unreachable endpoint, 5xx,
//!   throttling, a cut body) are retried: [`ATTEMPTS`] tries with
//!   [`BACKOFF`] between them. A missing key, a missing bucket or a refused
//!   access fail at once: retrying cannot fix them.

mod write;

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tokio::io::AsyncWriteExt;

use super::{CurrentRelease, StoreError, parse_current_json_from, validate_name, validate_version};
use crate::storage::{create_temp_beside, sync_parent_dir};

/// A `current.json` is a few hundred bytes; refuse to slurp anything huge.
const MAX_CURRENT_JSON_BYTES: u64 = 1024 * 1024;
/// Tries per request, transient failures only.
const ATTEMPTS: usize = 3;
/// Waits between tries: 200 ms, then 1 s.
const BACKOFF: [Duration; ATTEMPTS - 1] = [Duration::from_millis(200), Duration::from_secs(1)];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to the first byte of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A body that sends nothing for this long is treated as a cut connection.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Error codes that mean "the credentials are missing, wrong or expired".
const CREDENTIAL_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
];
/// Error codes worth a retry whatever their HTTP status.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
];

/// A release store in an S3 bucket (or any S3-compatible endpoint).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    app: String,
    env: String,
    /// Where requests go, for messages: the endpoint override or AWS's host.
    endpoint: String,
}

impl S3Store {
    /// Credentials come from the standard chain (environment, profile, web
    /// identity, EC2/ECS instance role). With `endpoint` (e.g. a MinIO or
    /// moto server) requests use path-style addressing.
    pub async fn new(
        bucket: &str,
        region: Option<String>,
        endpoint: Option<String>,
        app: &str,
        env: &str,
    ) -> Result<Self, StoreError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk = loader.load().await;
        Self::from_sdk_config(&sdk, bucket, app, env)
    }

    /// Builds the store from an already loaded SDK configuration (tests pass
    /// static credentials this way instead of through the environment).
    pub fn from_sdk_config(
        sdk: &aws_config::SdkConfig,
        bucket: &str,
        app: &str,
        env: &str,
    ) -> Result<Self, StoreError> {
        validate_name("app name", app)?;
        validate_name("env name", env)?;
        if bucket.is_empty() {
            return Err(StoreError::InvalidName {
                what: "bucket",
                value: String::new(),
                problem: "is empty",
            });
        }
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .ok_or(StoreError::NoRegion {
                bucket: bucket.to_owned(),
            })?;
        let endpoint = sdk
            .endpoint_url()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let config = aws_sdk_s3::config::Builder::from(sdk)
            // Retries are ours (see the module doc), not the SDK's, so that
            // the policy and the errors are the same for every call.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            )
            .force_path_style(sdk.endpoint_url().is_some())
            .build();
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: bucket.to_owned(),
            app: app.to_owned(),
            env: env.to_owned(),
            endpoint,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `versions/{app}/{env}/current.json`.
    pub fn current_json_key(&self) -> String {
        format!("versions/{}/{}/current.json", self.app, self.env)
    }

    /// `dist/{app}/{app}-{version}.tar.gz` (version validated).
    pub fn tarball_key(&self, version: &str) -> Result<String, StoreError> {
        validate_version(version)?;
        Ok(format!("dist/{0}/{0}-{version}.tar.gz", self.app))
    }

    pub async fn current(&self) -> Result<CurrentRelease, StoreError> {
        let key = self.current_json_key();
        let bytes = retry(&key, || self.get_small(&key)).await?;
        parse_current_json_from(&bytes, &format!("s3://{}/{key}", self.bucket))
    }

    pub async fn download(&self, version: &str, dest: &Path) -> Result<u64, StoreError> {
        let key = self.tarball_key(version)?;
        retry(&key, || self.download_once(version, &key, dest)).await
    }

    pub fn describe(&self) -> String {
        format!(
            "s3 store s3://{} at {} (app {}, env {})",
            self.bucket, self.endpoint, self.app, self.env
        )
    }

    /// One GetObject of an object that must fit in memory.
    async fn get_small(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let resp = self.get_object(key).await?;
        let size = resp.content_length().unwrap_or(0).max(0) as u64;
        if size > MAX_CURRENT_JSON_BYTES {
            return Err(StoreError::ObjectTooLarge {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                size,
                max: MAX_CURRENT_JSON_BYTES,
            });
        }
        let expected = resp.content_length();
        let bytes = resp
            .body
            .collect()
            .await
            .map_err(|source| StoreError::S3Body {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                received: 0,
                source: Box::new(source),
            })?
            .to_vec();
        check_length(expected, bytes.len() as u64).map_err(|(expected, received)| {
            StoreError::S3Truncated {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                expected,
                received,
            }
        })?;
        Ok(bytes)
    }

    /// One streamed GetObject into a temp file beside `dest`, renamed over
    /// `dest` when complete.
    async fn download_once(
        &self,
        version: &str,
        key: &str,
        dest: &Path,
    ) -> Result<u64, StoreError> {
        let resp = self.get_object(key).await?;
        let expected = resp.content_length();
        let mut body = resp.body;
        let write_err = |source: io::Error| StoreError::Write {
            version: version.to_owned(),
            path: dest.to_path_buf(),
            source,
        };
        let (file, tmp) = create_temp_beside(dest).map_err(write_err)?;
        let mut file = tokio::fs::File::from_std(file);
        let result = async {
            let mut received: u64 = 0;
            loop {
                let chunk = match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next()).await {
                    Ok(None) => break,
                    Ok(Some(Ok(chunk))) => chunk,
                    Ok(Some(Err(source))) => {
                        return Err(self.body_error(key, received, Box::new(source)));
                    }
                    Err(_) => {
                        let idle = io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no data for {BODY_IDLE_TIMEOUT:?}"),
                        );
                        return Err(self.body_error(key, received, Box::new(idle)));
                    }
                };
                received += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(write_err)?;
            }
            check_length(expected, received).map_err(|(expected, received)| {
                StoreError::S3Truncated {
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                    expected,
                    received,
                }
            })?;
            file.flush().await.map_err(write_err)?;
            file.sync_all().await.map_err(write_err)?;
            drop(file);
            tokio::fs::rename(&tmp, dest).await.map_err(write_err)?;
            sync_parent_dir(dest).map_err(write_err)?;
            Ok(received)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn get_object(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StoreError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.request_error(key, e))
    }

    fn body_error(
        &self,
        key: &str,
        received: u64,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> StoreError {
        StoreError::S3Body {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            received,
            source,
        }
    }

    /// Turns an SDK error into the [`StoreError`] that says what to fix.
    fn request_error<E>(&self, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = err.code().map(str::to_owned);
        let status = err.raw_response().map(|r| r.status().as_u16());
        let kind = match &err {
            SdkError::ConstructionFailure(_) => Kind::Construction,
            SdkError::TimeoutError(_) => Kind::Unreachable,
            SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => Kind::Unreachable,
            SdkError::DispatchFailure(_) => Kind::Construction,
            SdkError::ResponseError(_) => Kind::Transient,
            _ => Kind::Service,
        };
        let mentions_credentials = error_chain_mentions(&err, &["credential", "identity"]);
        let bucket = self.bucket.clone();
        let key = key.to_owned();
        let failure = classify(kind, code.as_deref(), status, mentions_credentials);
        match failure {
            Failure::NoSuchBucket => StoreError::NoSuchBucket { bucket, key },
            Failure::NoSuchKey => StoreError::NoSuchKey { bucket, key },
            Failure::AccessDenied => StoreError::AccessDenied { bucket, key },
            Failure::Credentials => StoreError::Credentials {
                bucket,
                source: Box::new(err),
            },
            Failure::Unreachable => StoreError::Unreachable {
                endpoint: self.endpoint.clone(),
                source: Box::new(err),
            },
            Failure::Transient | Failure::Other => StoreError::S3Request {
                bucket,
                key,
                detail: match (status, code) {
                    (Some(s), Some(c)) => format!("HTTP {s}, {c}"),
                    (Some(s), None) => format!("HTTP {s}"),
                    (None, Some(c)) => c,
                    (None, None) => "no answer".to_owned(),
                },
                transient: failure == Failure::Transient,
                source: Box::new(err),
            },
        }
    }
}

/// How a request failed, before looking at the service's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The request could not be built or signed (no region, no credentials).
    Construction,
    /// No connection, or no answer in time.
    Unreachable,
    /// An answer came but could not be read.
    Transient,
    /// The service answered with an error.
    Service,
}

/// What a failure means for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    NoSuchBucket,
    NoSuchKey,
    AccessDenied,
    Credentials,
    Unreachable,
    Transient,
    Other,
}

fn classify(
    kind: Kind,
    code: Option<&str>,
    status: Option<u16>,
    mentions_credentials: bool,
) -> Failure {
    match kind {
        Kind::Unreachable => return Failure::Unreachable,
        Kind::Transient => return Failure::Transient,
        Kind::Construction if mentions_credentials => return Failure::Credentials,
        Kind::Construction => return Failure::Other,
        Kind::Service => {}
    }
    match code {
        Some("NoSuchBucket") => return Failure::NoSuchBucket,
        Some("NoSuchKey") => return Failure::NoSuchKey,
        Some("AccessDenied") => return Failure::AccessDenied,
        Some(c) if CREDENTIAL_CODES.contains(&c) => return Failure::Credentials,
        Some(c) if TRANSIENT_CODES.contains(&c) => return Failure::Transient,
        _ => {}
    }
    match status {
        // A 404 without a parsable body (HEAD-like answers): the key.
        Some(404) => Failure::NoSuchKey,
        Some(403) => Failure::AccessDenied,
        Some(429) => Failure::Transient,
        Some(s) if s >= 500 => Failure::Transient,
        _ => Failure::Other,
    }
}

/// Whether any error in `err`'s source chain mentions one of `words`
/// (the SDK reports a missing identity only as text).
fn error_chain_mentions(err: &dyn std::error::Error, words: &[&str]) -> bool {
    let mut current: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = current {
        let text = format!("{e:?}").to_ascii_lowercase();
        if words.iter().any(|w| text.contains(w)) {
            return true;
        }
        current = e.source();
    }
    false
}

/// `Ok` when `received` matches the announced `expected` length (or none was
/// announced); otherwise `(expected, received)`.
pub(crate) fn check_length(expected: Option<i64>, received: u64) -> Result<(), (u64, u64)> {
    match expected {
        None => Ok(()),
        Some(n) if n >= 0 && n as u64 == received => Ok(()),
        Some(n) => Err((n.max(0) as u64, received)),
    }
}

/// Runs `op` up to [`ATTEMPTS`] times while it fails transiently.
async fn retry<T, F, Fut>(key: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < BACKOFF.len() => {
                let wait = BACKOFF[attempt];
                attempt += 1;
                tracing::warn!(key, attempt, ?wait, error = %crate::release_fetcher::error_chain(&e), "S3 request failed, retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_count_must_match_content_length() {
        assert_eq!(check_length(Some(10), 10), Ok(()));
        assert_eq!(check_length(None, 7), Ok(()));
        assert_eq!(check_length(Some(10), 5), Err((10, 5)));
        assert_eq!(check_length(Some(10), 11), Err((10, 11)));
        assert_eq!(check_length(Some(-1), 0), Err((0, 0)));
        assert_eq!(check_length(Some(0), 0), Ok(()));
    }

    #[test]
    fn classification() {
        use Failure::*;
        let svc =
            |code: Option<&str>, status: u16| classify(Kind::Service, code, Some(status), false);
        assert_eq!(svc(Some("NoSuchBucket"), 404), NoSuchBucket);
        assert_eq!(svc(Some("NoSuchKey"), 404), NoSuchKey);
        assert_eq!(svc(None, 404), NoSuchKey);
        assert_eq!(svc(Some("AccessDenied"), 403), AccessDenied);
        assert_eq!(svc(Some("InvalidAccessKeyId"), 403), Credentials);
        assert_eq!(svc(Some("SignatureDoesNotMatch"), 403), Credentials);
        assert_eq!(svc(Some("ExpiredToken"), 400), Credentials);
        assert_eq!(svc(Some("SlowDown"), 503), Transient);
        assert_eq!(svc(None, 500), Transient);
        assert_eq!(svc(None, 429), Transient);
        assert_eq!(svc(Some("InvalidRange"), 416), Other);
        assert_eq!(classify(Kind::Unreachable, None, None, false), Unreachable);
        assert_eq!(classify(Kind::Transient, None, None, false), Transient);
        assert_eq!(classify(Kind::Construction, None, None, true), Credentials);
        assert_eq!(classify(Kind::Construction, None, None, false), Other);
    }

    #[test]
    fn transient_errors_are_the_retried_ones() {
        let unreachable = StoreError::Unreachable {
            endpoint: "http://127.0.0.1:1".into(),
            source: Box::new(io::Error::other("refused")),
        };
        assert!(unreachable.is_transient());
        let missing = StoreError::NoSuchKey {
            bucket: "b".into(),
            key: "k".into(),
        };
        assert!(!missing.is_transient());
        let denied = StoreError::AccessDenied {
            bucket: "b".into(),
            key: "k".into(),
        };
        assert!(!denied.is_transient());
        assert!(
            denied
                .to_string()
                .contains("s3:GetObject on arn:aws:s3:::b/*"),
            "{denied}"
        );
    }

    #[tokio::test]
    async fn retry_stops_after_three_attempts_and_not_on_missing_keys() {
        let mut calls = 0;
        let started = std::time::Instant::now();
        let r: Result<(), _> = retry("k", || {
            calls += 1;
            async {
                Err(StoreError::S3Truncated {
                    bucket: "b".into(),
                    key: "k".into(),
                    expected: 2,
                    received: 1,
                })
            }
        })
        .await;
        assert!(matches!(r, Err(StoreError::S3Truncated { .. })));
        assert_eq!(calls, 3);
        assert!(started.elapsed() >= Duration::from_millis(1200));

        let mut calls = 0;
        let r: Result<(), _> = retry("k", || {
            calls += 1;
            async {
                Err(StoreError::NoSuchKey {
                    bucket: "b".into(),
                    key: "k".into(),
                })
            }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);

        let mut calls = 0;
        let r = retry("k", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 2 {
                    Err(StoreError::Unreachable {
                        endpoint: "e".into(),
                        source: Box::new(io::Error::other("refused")),
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap_or(0), 2);
    }
}
