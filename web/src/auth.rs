//! Authentication: the signed session token, the admin password check, the
//! per-client limit on failed logins and the same-origin check.
//!
//! Invariants: a token is `base64url(payload).hex(hmac_sha256(payload))`,
//! keyed by `secret_key_base`; it is valid only when the MAC matches (checked
//! in constant time), it has not expired and its id was not revoked by a
//! logout. Secrets (password, token, key) are never logged.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The one user of the dashboard.
pub const ADMIN_USER: &str = "admin";
/// Name of the session cookie.
pub const COOKIE_NAME: &str = "deployex_session";
/// Failed logins allowed per client within [`FAIL_WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// Window over which failed logins are counted.
pub const FAIL_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    #[error("password check task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// What a valid token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Random id, so that a logout can revoke exactly this token.
    pub id: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expiry, unix seconds.
    pub exp: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs and verifies tokens; remembers revoked ids until they expire, on
/// disk too when given a file (a logged-out token must stay dead across a
/// restart of deployex, since tokens themselves survive it).
pub struct TokenSigner {
    key: Vec<u8>,
    ttl: Duration,
    revoked: Mutex<HashMap<String, u64>>,
    revoked_file: Option<std::path::PathBuf>,
}

impl TokenSigner {
    pub fn new(secret_key_base: &str, ttl: Duration) -> Self {
        Self {
            key: secret_key_base.as_bytes().to_vec(),
            ttl,
            revoked: Mutex::new(HashMap::new()),
            revoked_file: None,
        }
    }

    /// Keep the revoked ids in `path` (JSON `{id: exp}`, written atomically
    /// at each logout). An unreadable or corrupt file is reported and kept
    /// aside as `{path}.corrupt`; the signer starts with what it can read.
    pub fn with_revocation_file(mut self, path: std::path::PathBuf) -> Self {
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<HashMap<String, u64>>(&bytes) {
                Ok(map) => {
                    let now = now_unix();
                    let map: HashMap<String, u64> =
                        map.into_iter().filter(|(_, exp)| *exp > now).collect();
                    self.revoked = Mutex::new(map);
                }
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    tracing::error!(path = %path.display(), error = %e, aside = %aside.display(), "revoked tokens file is corrupt: kept aside, starting without it");
                    let _ = std::fs::rename(&path, &aside);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the revoked tokens file");
            }
        }
        self.revoked_file = Some(path);
        self
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length: this cannot fail.
        match HmacSha256::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }

    /// A fresh token valid for the configured TTL.
    pub fn issue(&self) -> String {
        let iat = now_unix();
        self.issue_with(iat, iat + self.ttl.as_secs())
    }

    /// A token with explicit times (tests make expired ones with it).
    pub fn issue_with(&self, iat: u64, exp: u64) -> String {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let claims = Claims { id, iat, exp };
        let payload = match serde_json::to_vec(&claims) {
            Ok(p) => p,
            Err(_) => unreachable!("claims always serialize"),
        };
        let body = URL_SAFE_NO_PAD.encode(payload);
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// The claims of a valid token.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let (body, sig) = token.split_once('.').ok_or(AuthError::Malformed)?;
        let sig = hex::decode(sig).map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| AuthError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
        let now = now_unix();
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        let revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        if revoked.contains_key(&claims.id) {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }

    /// Logout: the token stops working even before it expires.
    pub fn revoke(&self, claims: &Claims) {
        let now = now_unix();
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.retain(|_, exp| *exp > now);
        revoked.insert(claims.id.clone(), claims.exp);
        if let Some(path) = &self.revoked_file
            && let Err(e) = write_atomically(path, &revoked)
        {
            tracing::error!(path = %path.display(), error = %e, "cannot save the revoked tokens");
        }
    }
}

/// The revoked ids, written with the engine's atomic write (temp + fsync +
/// rename + directory fsync).
fn write_atomically(path: &std::path::Path, map: &HashMap<String, u64>) -> std::io::Result<()> {
    let json = serde_json::to_vec(map).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    deployex_actors::storage::write_atomic(path, &json)
}

/// Checks `password` against the bcrypt hash on a blocking thread (bcrypt
/// costs tens of milliseconds: never on the async workers). The username is
/// compared too; a bad hash counts as a wrong password.
pub async fn check_credentials(
    hash: &str,
    username: &str,
    password: &str,
) -> Result<bool, AuthError> {
    let hash = hash.to_owned();
    let password = password.to_owned();
    let user_ok = username == ADMIN_USER;
    let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
        .await
        .map_err(AuthError::Join)?;
    Ok(ok && user_ok)
}

/// Counts failed logins per client address over a sliding window.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// True when this client may try a login now.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match map.get_mut(&ip) {
            Some(q) => {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= FAIL_WINDOW)
                {
                    q.pop_front();
                }
                q.len() < MAX_FAILURES
            }
            None => true,
        }
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Drop idle clients so the map cannot grow without bound.
        map.retain(|_, q| {
            q.back()
                .is_some_and(|t| now.duration_since(*t) < FAIL_WINDOW)
        });
        map.entry(ip).or_default().push_back(now);
    }
}

/// Extracts the bearer token from an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Extracts the session cookie from a `Cookie` header value.
pub fn session_cookie(header: &str) -> Option<&str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == COOKIE_NAME).then_some(v)
    })
}

/// The `Set-Cookie` value for a session.
pub fn cookie_header(token: &str, ttl: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        ttl.as_secs()
    )
}

/// The `Set-Cookie` value that deletes the session.
pub fn clear_cookie_header(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
}

/// The `scheme://authority` source of a request: the `Origin`, or else the
/// `Referer` (an `Origin` of `null` counts as absent).
fn source_authority<'a>(origin: Option<&'a str>, referer: Option<&'a str>) -> Option<&'a str> {
    let source = origin.filter(|o| *o != "null").or(referer)?;
    let rest = source
        .strip_prefix("https://")
        .or_else(|| source.strip_prefix("http://"))?;
    rest.split(['/', '?', '#']).next()
}

/// Same-origin check for cookie-authenticated state changes: the `Origin`
/// (or else the `Referer`) must name the host the request was sent to.
/// Neither header present → refused.
pub fn same_origin(origin: Option<&str>, referer: Option<&str>, host: Option<&str>) -> bool {
    match (source_authority(origin, referer), host) {
        (Some(a), Some(h)) => a.eq_ignore_ascii_case(h),
        _ => false,
    }
}

/// The host name (no port) of the request's `Origin`/`Referer`.
pub fn origin_hostname<'a>(origin: Option<&'a str>, referer: Option<&'a str>) -> Option<&'a str> {
    let a = source_authority(origin, referer)?;
    let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
    if a.starts_with('[') {
        return a.split_inclusive(']').next();
    }
    a.split(':').next()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn token_roundtrip_and_tamper() {
        let s = TokenSigner::new("k", Duration::from_secs(60));
        let t = s.issue();
        assert!(s.verify(&t).is_ok());
        let other = TokenSigner::new("other", Duration::from_secs(60));
        assert!(matches!(other.verify(&t), Err(AuthError::BadSignature)));
        let mut bad = t.clone();
        bad.insert(0, 'x');
        assert!(s.verify(&bad).is_err());
        let old = s.issue_with(1, 2);
        assert!(matches!(s.verify(&old), Err(AuthError::Expired)));
        let claims = s.verify(&t).unwrap();
        s.revoke(&claims);
        assert!(matches!(s.verify(&t), Err(AuthError::Revoked)));
    }

    #[test]
    fn revoked_tokens_stay_revoked_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/revoked_tokens.json");
        let s = TokenSigner::new("k", Duration::from_secs(60)).with_revocation_file(file.clone());
        let (t, kept) = (s.issue(), s.issue());
        s.revoke(&s.verify(&t).unwrap());
        assert!(file.is_file());
        // A new signer (deployex restarted) with the same key and file.
        let s2 = TokenSigner::new("k", Duration::from_secs(60)).with_revocation_file(file.clone());
        assert!(matches!(s2.verify(&t), Err(AuthError::Revoked)));
        assert!(s2.verify(&kept).is_ok());
        // A corrupt file: reported, kept aside, the signer starts empty.
        std::fs::write(&file, b"{\"trunc").unwrap();
        let s3 = TokenSigner::new("k", Duration::from_secs(60)).with_revocation_file(file.clone());
        assert!(s3.verify(&t).is_ok());
        assert!(
            dir.path()
                .join("state/revoked_tokens.json.corrupt")
                .is_file()
        );
    }

    #[test]
    fn origin_check() {
        assert!(same_origin(Some("http://h:4000"), None, Some("h:4000")));
        assert!(same_origin(
            None,
            Some("https://h:4000/x?y"),
            Some("h:4000")
        ));
        assert!(!same_origin(
            Some("http://evil"),
            Some("http://h:4000/"),
            Some("h:4000")
        ));
        assert!(!same_origin(None, None, Some("h:4000")));
        assert!(!same_origin(
            Some("http://h:4000.evil"),
            None,
            Some("h:4000")
        ));
    }

    #[test]
    fn header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(session_cookie("a=b; deployex_session=t1"), Some("t1"));
        assert_eq!(session_cookie("a=b"), None);
    }
}
