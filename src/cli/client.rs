//! A small JSON client for deployex's API (hyper + rustls, the stack the
//! webhook sender already uses), and the token it authenticates with.
//!
//! Invariants: the token is sent only in the `Authorization` header, never
//! printed; the token file is created with mode 0600 (in a 0700 folder) and
//! replaced atomically. A non-2xx answer becomes an error carrying the API's
//! own `error` text.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::Method;

/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (the history of a long-lived deployex).
const MAX_BODY: usize = 16 * 1024 * 1024;

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: hyper_util::client::legacy::Client<Connector, Full<bytes::Bytes>>,
}

/// A non-2xx answer.
#[derive(Debug, thiserror::Error)]
#[error("{url}: HTTP {status}: {message}")]
pub struct ApiError {
    pub url: String,
    pub status: u16,
    pub message: String,
}

impl ApiClient {
    /// `base`: `http(s)://host:port`, without the `/api/v1` part.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<ApiClient> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url {base}: expected http://HOST:PORT or https://HOST:PORT");
        }
        base.parse::<hyper::Uri>()
            .with_context(|| format!("--url {base}: not a URL"))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .context("cannot load the system's TLS roots")?
            .https_or_http()
            .enable_http1()
            .build();
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(ApiClient { base, token, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `method path` with an optional JSON body; the answer's body on 2xx.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<bytes::Bytes> {
        let url = format!("{}{path}", self.base);
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("accept", "application/json")
            .header(
                "user-agent",
                concat!("deployex-cli/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let payload = match body {
            Some(v) => {
                request = request.header("content-type", "application/json");
                bytes::Bytes::from(serde_json::to_vec(v)?)
            }
            None => bytes::Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .with_context(|| format!("bad request {method} {url}"))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| anyhow::anyhow!("{url}: {}", deployex_actors::error::error_chain(&e)))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{url}: reading the answer: {e}"))?
            .to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        let mut message = if message.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            message
        };
        if status == hyper::StatusCode::UNAUTHORIZED && self.token.is_none() {
            message.push_str(" (run `deployex login` or set DEPLOYEX_TOKEN)");
        }
        Err(ApiError {
            url,
            status: status.as_u16(),
            message,
        }
        .into())
    }
}

/// `$XDG_CONFIG_HOME/deployex/token` (else `$HOME/.config/deployex/token`).
pub fn token_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => bail!("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the token"),
        },
    };
    Ok(base.join("deployex").join("token"))
}

/// The token: `DEPLOYEX_TOKEN`, else the token file, else none.
pub fn load_token() -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("DEPLOYEX_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(Some(t.trim().to_owned()));
    }
    let path = token_path()?;
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes `token` to `path` with mode 0600: a new temp file (created 0600,
/// never wider), fsynced, renamed over `path`.
pub fn save_token(path: &Path, token: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".token.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_file_is_private_and_replaced() {
        let dir = std::env::temp_dir().join(format!("dx-token-test-{}", std::process::id()));
        let path = dir.join("deployex").join("token");
        save_token(&path, "first").unwrap();
        save_token(&path, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_urls_that_are_not_http() {
        assert!(ApiClient::new("127.0.0.1:5001", None).is_err());
        assert!(ApiClient::new("http://127.0.0.1:5001/", None).is_ok());
    }
}
