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
/// Name of the session cookie over plain http.
pub const COOKIE_NAME: &str = "deployex_session";
/// Name of the session cookie when it is `Secure`: the `__Host-` prefix
/// makes browsers refuse it unless Secure, `Path=/` and without `Domain`,
/// so no sibling (sub)domain or plain-http page can plant or shadow it.
pub const SECURE_COOKIE_NAME: &str = "__Host-deployex_session";

/// The session cookie's name for this configuration.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_COOKIE_NAME
    } else {
        COOKIE_NAME
    }
}
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
    #[error("the revoked tokens file is unreadable: no session is valid until it is fixed")]
    RevocationUnavailable,
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
    /// Set while the revocation file cannot be read: every token is then
    /// refused (a logged-out token must never come back to life).
    unavailable: std::sync::atomic::AtomicBool,
}

impl TokenSigner {
    pub fn new(secret_key_base: &str, ttl: Duration) -> Self {
        Self {
            key: secret_key_base.as_bytes().to_vec(),
            ttl,
            revoked: Mutex::new(HashMap::new()),
            revoked_file: None,
            unavailable: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Keep the revoked ids in `path` (JSON `{id: exp}`, written atomically
    /// at each logout). An unreadable or corrupt file fails closed: it is
    /// reported, left in place, and no token is valid until it reads again
    /// (checked at each verification, so fixing or removing it is enough).
    pub fn with_revocation_file(mut self, path: std::path::PathBuf) -> Self {
        self.revoked_file = Some(path);
        self.reload();
        self
    }

    /// Reads the revocation file; false (and the signer fails closed) when
    /// it cannot be read or parsed.
    fn reload(&self) -> bool {
        use std::sync::atomic::Ordering;
        let Some(path) = &self.revoked_file else {
            return true;
        };
        let read = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<HashMap<String, u64>>(&bytes)
                .map_err(|e| format!("not valid JSON: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(map) => {
                let now = now_unix();
                let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
                revoked.extend(map.into_iter().filter(|(_, exp)| *exp > now));
                if self.unavailable.swap(false, Ordering::SeqCst) {
                    tracing::warn!(path = %path.display(), "revoked tokens file readable again: sessions accepted");
                }
                true
            }
            Err(e) => {
                if !self.unavailable.swap(true, Ordering::SeqCst) {
                    tracing::error!(path = %path.display(), error = %e, "cannot read the revoked tokens file: every session is refused until it is fixed or removed");
                }
                false
            }
        }
    }

    /// False while the revocation file is unreadable (no token is valid).
    pub fn available(&self) -> bool {
        !self.unavailable.load(std::sync::atomic::Ordering::SeqCst) || self.reload()
    }

    /// The signer of the dashboard's sessions: its key is derived from
    /// `secret_key_base` *and* the admin password hash, so a new admin
    /// password ends every session issued under the old one.
    pub fn for_admin(secret_key_base: &str, admin_hash: &str, ttl: Duration) -> Self {
        let mut mac = match HmacSha256::new_from_slice(secret_key_base.as_bytes()) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(b"deployex session key v1\0");
        mac.update(admin_hash.as_bytes());
        let mut signer = Self::new("", ttl);
        signer.key = mac.finalize().into_bytes().to_vec();
        signer
    }

    /// Whether a token whose signature was verified earlier is still good:
    /// not expired, not revoked, revocation readable (a long-lived
    /// connection re-checks its session with it).
    pub fn still_valid(&self, claims: &Claims) -> bool {
        if claims.exp <= now_unix() || !self.available() {
            return false;
        }
        let revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        !revoked.contains_key(&claims.id)
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
        if !self.available() {
            return Err(AuthError::RevocationUnavailable);
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

/// The key the login limiter counts under: the client's IPv4 address, or
/// its IPv6 /64 (one host usually holds a whole /64: per-address limits
/// would be no limit at all). IPv4-mapped IPv6 counts as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let masked = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(masked))
            }
        },
    }
}

/// Counts login attempts per client key ([`client_key`]) over a sliding
/// window.
///
/// Invariant: an attempt is counted *before* its password is checked
/// ([`LoginLimiter::begin`]) and forgotten only when it succeeded, so N
/// concurrent wrong attempts cannot all pass the check: at most
/// [`MAX_FAILURES`] per key and window ever reach bcrypt.
#[derive(Default)]
pub struct LoginLimiter {
    attempts: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// One counted attempt ([`LoginLimiter::begin`]).
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    key: IpAddr,
    at: Instant,
}

impl LoginLimiter {
    /// Counts an attempt of `ip` now, or `None` when the client already
    /// used its [`MAX_FAILURES`] attempts in the window (then nothing is
    /// counted: a limited client does not extend its own ban).
    pub fn begin(&self, ip: IpAddr) -> Option<Attempt> {
        let key = client_key(ip);
        let mut map = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Drop idle clients so the map cannot grow without bound.
        map.retain(|_, q| {
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) >= FAIL_WINDOW)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
        let q = map.entry(key).or_default();
        if q.len() >= MAX_FAILURES {
            return None;
        }
        q.push_back(now);
        Some(Attempt { key, at: now })
    }

    /// The attempt was right: it no longer counts.
    pub fn succeeded(&self, attempt: Attempt) {
        let mut map = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = map.get_mut(&attempt.key) {
            if let Some(i) = q.iter().position(|t| *t == attempt.at) {
                q.remove(i);
            }
            if q.is_empty() {
                map.remove(&attempt.key);
            }
        }
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

/// Extracts the session cookie named `name` from a `Cookie` header value.
pub fn session_cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The `Set-Cookie` value for a session.
pub fn cookie_header(token: &str, ttl: Duration, secure: bool) -> String {
    let attr = if secure { "; Secure" } else { "" };
    format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{attr}",
        cookie_name(secure),
        ttl.as_secs()
    )
}

/// The `Set-Cookie` value that deletes the session.
pub fn clear_cookie_header(secure: bool) -> String {
    let attr = if secure { "; Secure" } else { "" };
    format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{attr}",
        cookie_name(secure)
    )
}

/// `scheme://host[:port]` in canonical form (lower case, no default port),
/// from an origin or a URL (its path, query and fragment are dropped);
/// `None` for anything else (no scheme, user info, an empty host, a bad
/// port, `null`).
pub fn normalize_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{h}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'))
    {
        return None;
    }
    let port = match port {
        None => default_port,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok()?
        }
        Some(_) => return None,
    };
    let host = host.to_ascii_lowercase();
    Some(if port == default_port {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    })
}

/// Why no public origin can be made (a configuration error: the loader
/// names the variable and its value around it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("expected an origin like https://deploy.example.com[:port]")]
    BadPublicUrl,
    #[error("DEPLOYEX_PHX_HOST={0:?} gives no valid origin")]
    BadHost(String),
}

/// The dashboard's public origins: `public_url` when set; else
/// `https://{host}` when `host` is not local (deployex sits behind a TLS
/// proxy); else `http://{host}:{port}` and `http://127.0.0.1:{port}`.
pub fn public_origins(
    public_url: Option<&str>,
    host: &str,
    port: u16,
) -> Result<Vec<String>, OriginError> {
    if let Some(url) = public_url {
        return normalize_origin(url)
            .map(|o| vec![o])
            .ok_or(OriginError::BadPublicUrl);
    }
    let local = matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1");
    let origins = if local {
        vec![
            format!("http://{host}:{port}"),
            format!("http://127.0.0.1:{port}"),
        ]
    } else {
        vec![format!("https://{host}")]
    };
    let mut out: Vec<String> = origins.iter().filter_map(|o| normalize_origin(o)).collect();
    out.dedup();
    if out.is_empty() {
        return Err(OriginError::BadHost(host.to_string()));
    }
    Ok(out)
}

/// The origin a request comes from: its `Origin`, or else its `Referer`'s
/// (an `Origin` of `null` counts as absent), normalized.
pub fn request_origin(origin: Option<&str>, referer: Option<&str>) -> Option<String> {
    let source = origin.filter(|o| *o != "null").or(referer)?;
    normalize_origin(source)
}

/// Same-origin check for cookie-authenticated state changes and
/// websockets: the request's origin must be exactly one of `allowed`
/// (scheme, host and port). Neither header present → refused.
pub fn origin_allowed(origin: Option<&str>, referer: Option<&str>, allowed: &[String]) -> bool {
    request_origin(origin, referer).is_some_and(|o| allowed.contains(&o))
}

#[cfg(test)]
mod tests;
