//! The release store: where deployex learns which version to run
//! (`versions/{app}/{env}/current.json`) and fetches its tarball
//! (`dist/{app}/{app}-{version}.tar.gz`), plus the checks that make a fetched
//! tarball safe to unpack ([`unpack`]).
//!
//! Invariants:
//! - A version string that reaches the file system has passed
//!   [`validate_version`]: it can never name a path outside the store.
//! - [`ReleaseStore::download`] never leaves a partial file at its
//!   destination.
//! - [`ReleaseStore`] is an enum over backends (local folder, S3); callers
//!   only use its methods, so a new variant changes nothing for them.

mod local;
mod s3;
pub mod unpack;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use local::LocalStore;
pub use s3::S3Store;
pub use unpack::{
    UnpackError, UnpackLimits, UnpackedRelease, release_version, sha256_file, unpack_release,
};

/// Errors of the release store. Each names the path (or store) and version
/// involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{origin}: malformed JSON at line {line}, column {column}")]
    MalformedCurrent {
        origin: String,
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{origin}: `{field}` {problem}")]
    InvalidCurrent {
        origin: String,
        field: &'static str,
        problem: String,
    },
    #[error("invalid {what} {value:?}: {problem}")]
    InvalidName {
        what: &'static str,
        value: String,
        problem: &'static str,
    },
    #[error("release store folder {root} does not exist")]
    StoreMissing { root: PathBuf },
    #[error("no current.json at {path}")]
    CurrentMissing { path: PathBuf },
    #[error("{path} is {size} bytes, larger than the {max} bytes a current.json may have")]
    CurrentTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("no tarball for version {version} at {path}")]
    TarballMissing { version: String, path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy the tarball of version {version} from {from} to {to}")]
    Copy {
        version: String,
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the copy task for version {version} did not finish")]
    TaskFailed {
        version: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("cannot write the tarball of version {version} to {path}")]
    Write {
        version: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no AWS region for bucket {bucket}: set AWS_REGION (or a region in the AWS profile)")]
    NoRegion { bucket: String },
    #[error(
        "S3 bucket {bucket} does not exist (reading s3://{bucket}/{key}); check DEPLOYEX_RELEASE_BUCKET and AWS_REGION"
    )]
    NoSuchBucket { bucket: String, key: String },
    #[error("no object s3://{bucket}/{key}")]
    NoSuchKey { bucket: String, key: String },
    #[error(
        "access denied to s3://{bucket}/{key}: check the IAM policy: s3:GetObject on arn:aws:s3:::{bucket}/*"
    )]
    AccessDenied { bucket: String, key: String },
    #[error(
        "no valid AWS credentials to read bucket {bucket} (environment, profile or instance role)"
    )]
    Credentials {
        bucket: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot reach S3 at {endpoint}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("S3 request for s3://{bucket}/{key} failed ({detail})")]
    S3Request {
        bucket: String,
        key: String,
        detail: String,
        /// 5xx or throttling: worth another try.
        transient: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading s3://{bucket}/{key} failed after {received} bytes")]
    S3Body {
        bucket: String,
        key: String,
        received: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "s3://{bucket}/{key} was cut short: {received} bytes received, Content-Length {expected}"
    )]
    S3Truncated {
        bucket: String,
        key: String,
        expected: u64,
        received: u64,
    },
    #[error(
        "s3://{bucket}/{key} is {size} bytes, larger than the {max} bytes a current.json may have"
    )]
    ObjectTooLarge {
        bucket: String,
        key: String,
        size: u64,
        max: u64,
    },
}

impl StoreError {
    /// Whether trying again may succeed (network trouble, an overloaded
    /// service, a cut transfer), as opposed to a fact that needs a fix.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unreachable { .. }
            | StoreError::S3Body { .. }
            | StoreError::S3Truncated { .. } => true,
            StoreError::S3Request { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// The parsed `current.json`: which version to run and what to run before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentRelease {
    pub version: String,
    /// Release commands (e.g. `eval MyApp.Migrator.migrate`) run from the new
    /// release before it replaces the old one.
    #[serde(default)]
    pub pre_commands: Vec<String>,
    /// The build's source hash, informational (`"local"` for local builds).
    #[serde(default)]
    pub hash: String,
    /// Lowercase hex SHA-256 of the tarball; when present, a tarball with a
    /// different digest must be rejected.
    pub sha256: Option<String>,
}

/// Parses and validates a `current.json`.
pub fn parse_current_json(bytes: &[u8]) -> Result<CurrentRelease, StoreError> {
    parse_current_json_from(bytes, "current.json")
}

/// Like [`parse_current_json`], with `origin` (a path, a URL) in the errors.
pub fn parse_current_json_from(bytes: &[u8], origin: &str) -> Result<CurrentRelease, StoreError> {
    let invalid = |field: &'static str, problem: String| StoreError::InvalidCurrent {
        origin: origin.to_owned(),
        field,
        problem,
    };
    // Parse to a Value first: serde's derive errors on a typed struct are
    // vaguer than the field-by-field checks below.
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|source| StoreError::MalformedCurrent {
            origin: origin.to_owned(),
            line: source.line(),
            column: source.column(),
            source,
        })?;
    let obj = value.as_object().ok_or_else(|| {
        invalid(
            "(top level)",
            format!("must be a JSON object, found {}", json_kind(&value)),
        )
    })?;

    let version = match obj.get("version") {
        None | Some(serde_json::Value::Null) => {
            return Err(invalid("version", "is missing".to_owned()));
        }
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(invalid(
                "version",
                format!("must be a string, found {}", json_kind(other)),
            ));
        }
    };
    if let Err(problem) = check_name(&version) {
        return Err(invalid("version", format!("{version:?} {problem}")));
    }

    let pre_commands = match obj.get("pre_commands") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                serde_json::Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                serde_json::Value::String(_) => {
                    Err(invalid("pre_commands", format!("entry {i} is empty")))
                }
                other => Err(invalid(
                    "pre_commands",
                    format!("entry {i} must be a string, found {}", json_kind(other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(invalid(
                "pre_commands",
                format!("must be a list of strings, found {}", json_kind(other)),
            ));
        }
    };

    let hash = match obj.get("hash") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(invalid(
                "hash",
                format!("must be a string, found {}", json_kind(other)),
            ));
        }
    };

    let sha256 = match obj.get("sha256") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => {
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "sha256",
                    format!("{s:?} is not 64 hexadecimal characters"),
                ));
            }
            Some(s.to_ascii_lowercase())
        }
        Some(other) => {
            return Err(invalid(
                "sha256",
                format!("must be a string, found {}", json_kind(other)),
            ));
        }
    };

    Ok(CurrentRelease {
        version,
        pre_commands,
        hash,
        sha256,
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Checks that a version can safely become part of a file name: only
/// `[A-Za-z0-9._+-]`, not empty, no leading `.`, at most 128 characters.
pub fn validate_version(version: &str) -> Result<(), StoreError> {
    check_name(version).map_err(|problem| StoreError::InvalidName {
        what: "version",
        value: version.to_owned(),
        problem,
    })
}

/// Same rule for the app and env names that become folder names.
pub(crate) fn validate_name(what: &'static str, value: &str) -> Result<(), StoreError> {
    check_name(value).map_err(|problem| StoreError::InvalidName {
        what,
        value: value.to_owned(),
        problem,
    })
}

fn check_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.len() > 128 {
        return Err("is longer than 128 characters");
    }
    if s.starts_with('.') {
        return Err("must not start with '.'");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
    {
        return Err("may only contain letters, digits and . _ + -");
    }
    Ok(())
}

/// Where releases come from. Add a variant per backend.
#[derive(Debug, Clone)]
pub enum ReleaseStore {
    Local(LocalStore),
    S3(S3Store),
}

impl ReleaseStore {
    /// Reads and validates `current.json`.
    pub async fn current(&self) -> Result<CurrentRelease, StoreError> {
        match self {
            ReleaseStore::Local(s) => s.current().await,
            ReleaseStore::S3(s) => s.current().await,
        }
    }

    /// Copies the tarball of `version` to `dest` (whole or not at all) and
    /// returns its size in bytes.
    pub async fn download(&self, version: &str, dest: &Path) -> Result<u64, StoreError> {
        match self {
            ReleaseStore::Local(s) => s.download(version, dest).await,
            ReleaseStore::S3(s) => s.download(version, dest).await,
        }
    }

    /// One line for logs and the dashboard.
    pub fn describe(&self) -> String {
        match self {
            ReleaseStore::Local(s) => s.describe(),
            ReleaseStore::S3(s) => s.describe(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_minimal() {
        let c = parse_current_json(
            br#"{"version": "0.1.1", "pre_commands": ["eval MyApp.Migrator.migrate"], "hash": "local",
                "sha256": "ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789", "extra": 1}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            CurrentRelease {
                version: "0.1.1".into(),
                pre_commands: vec!["eval MyApp.Migrator.migrate".into()],
                hash: "local".into(),
                sha256: Some(
                    "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789".into()
                ),
            }
        );
        let c = parse_current_json(br#"{"version": "1.0.0-rc.1+build_7"}"#).unwrap();
        assert_eq!(c.version, "1.0.0-rc.1+build_7");
        assert!(c.pre_commands.is_empty());
        assert_eq!(c.hash, "");
        assert_eq!(c.sha256, None);
        // The struct round-trips through serde (used by the fetcher's logs/API).
        let back: CurrentRelease =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    fn err(json: &str) -> String {
        format!("{}", parse_current_json(json.as_bytes()).unwrap_err())
    }

    #[test]
    fn rejects_with_clear_messages() {
        let e = err("{\n  \"version\": \"0.1.1\",\n  oops\n}");
        assert!(e.contains("malformed JSON at line 3, column 3"), "{e}");
        assert!(err("").contains("malformed JSON at line 1"), "{}", err(""));
        assert!(err("{}").contains("`version` is missing"));
        assert!(err(r#"{"version": null}"#).contains("`version` is missing"));
        assert!(err(r#"{"version": ""}"#).contains("is empty"));
        assert!(err(r#"{"version": 1}"#).contains("must be a string, found a number"));
        assert!(err(r#"{"version": "../../etc"}"#).contains("must not start with '.'"));
        assert!(err(r#"{"version": "0.1/../x"}"#).contains("may only contain"));
        assert!(err(r#"{"version": "0.1 1"}"#).contains("may only contain"));
        assert!(err(r#"{"version": ".hidden"}"#).contains("must not start with '.'"));
        assert!(err("[1]").contains("must be a JSON object, found a list"));
        let e = err(r#"{"version": "1", "pre_commands": ["ok", 3]}"#);
        assert!(
            e.contains("`pre_commands` entry 1 must be a string, found a number"),
            "{e}"
        );
        assert!(err(r#"{"version": "1", "pre_commands": "eval x"}"#).contains("list of strings"));
        assert!(err(r#"{"version": "1", "sha256": "abc"}"#).contains("64 hexadecimal"));
        let bad_hex = format!(r#"{{"version": "1", "sha256": "{}"}}"#, "g".repeat(64));
        assert!(err(&bad_hex).contains("64 hexadecimal"));
        assert!(err(r#"{"version": "1", "hash": 5}"#).contains("`hash` must be a string"));
    }

    #[test]
    fn validate_version_rules() {
        for ok in ["0.1.1", "v2", "1.0.0-rc.1", "1+2", "a_b"] {
            validate_version(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", "é", &"1".repeat(129)] {
            assert!(validate_version(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod unpack_tests;
