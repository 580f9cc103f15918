//! Cross-cutting HTTP plumbing: the session guard filter, rejection →
//! response mapping, JSON helpers, request logging and request counters.
//!
//! Invariants: a Bearer token, when present, is the only credential looked
//! at (a bad one is never rescued by a cookie); cookie sessions doing a
//! state change (any method but GET/HEAD/OPTIONS), or opening a websocket
//! with an `Origin`, must be same-origin, else 403. Unauthenticated API
//! calls get 401 JSON, pages a 302 to `/login`. Logs never carry tokens or
//! query strings.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use warp::http::{Method, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::auth::{self, Claims};

/// Which answer an unauthenticated request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// 401 JSON.
    Api,
    /// 302 to `/login`.
    Page,
}

/// A request's valid session.
#[derive(Debug, Clone)]
pub struct Session {
    pub claims: Claims,
    /// True when it came from the cookie (then CSRF rules apply).
    pub via_cookie: bool,
}

#[derive(Debug)]
pub struct Unauthorized(pub Guard);
impl warp::reject::Reject for Unauthorized {}

#[derive(Debug)]
pub struct Forbidden;
impl warp::reject::Reject for Forbidden {}

/// `{"error": msg}` with `status`.
pub fn json_error(status: StatusCode, msg: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct E {
        error: String,
    }
    json_status(status, &E { error: msg.into() })
}

/// `value` as JSON with `status`.
pub fn json_status<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// Headers the guard looks at, gathered in one filter.
#[derive(Debug, Default)]
pub struct ReqInfo {
    pub method: Method,
    pub authorization: Option<String>,
    pub cookie: Option<String>,
    pub origin: Option<String>,
    pub referer: Option<String>,
    pub host: Option<String>,
}

pub fn req_info() -> impl Filter<Extract = (ReqInfo,), Error = Infallible> + Clone {
    warp::method().and(warp::header::headers_cloned()).map(
        |method, headers: warp::http::HeaderMap| {
            let get = |name: header::HeaderName| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            ReqInfo {
                method,
                authorization: get(header::AUTHORIZATION),
                cookie: get(header::COOKIE),
                origin: get(header::ORIGIN),
                referer: get(header::REFERER),
                host: get(header::HOST),
            }
        },
    )
}

/// The client address used for the login limiter.
pub fn client_ip() -> impl Filter<Extract = (IpAddr,), Error = Infallible> + Clone {
    warp::addr::remote().map(|a: Option<SocketAddr>| {
        a.map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    })
}

/// Same-origin check: the origin must name the `Host` the request was
/// sent to, or the configured public host (any port: a reverse proxy may
/// rewrite `Host` and serve on another port).
pub fn origin_ok(state: &AppState, info: &ReqInfo) -> bool {
    let origin = info.origin.as_deref();
    let referer = info.referer.as_deref();
    auth::same_origin(origin, referer, info.host.as_deref())
        || auth::origin_hostname(origin, referer)
            .is_some_and(|h| h.eq_ignore_ascii_case(strip_port(&state.cfg.host)))
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Decides whether a request is authenticated (see the module invariants).
pub fn check(state: &AppState, info: &ReqInfo, guard: Guard) -> Result<Session, Rejection> {
    if let Some(h) = info.authorization.as_deref() {
        let claims = auth::bearer(h)
            .and_then(|t| state.tokens.verify(t).ok())
            .ok_or_else(|| warp::reject::custom(Unauthorized(guard)))?;
        return Ok(Session {
            claims,
            via_cookie: false,
        });
    }
    let claims = info
        .cookie
        .as_deref()
        .and_then(auth::session_cookie)
        .and_then(|t| state.tokens.verify(t).ok())
        .ok_or_else(|| warp::reject::custom(Unauthorized(guard)))?;
    let safe = matches!(info.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let needs_origin = !safe || info.origin.is_some();
    if needs_origin && !origin_ok(state, info) {
        return Err(warp::reject::custom(Forbidden));
    }
    Ok(Session {
        claims,
        via_cookie: true,
    })
}

/// Filter: a valid session, or a rejection answered per `guard`.
pub fn authed(
    state: Arc<AppState>,
    guard: Guard,
) -> impl Filter<Extract = (Session,), Error = Rejection> + Clone {
    req_info().and_then(move |info: ReqInfo| {
        let state = state.clone();
        async move { check(&state, &info, guard) }
    })
}

/// Filter: the shared state.
pub fn with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Maps rejections to answers: 401 JSON / 302 for missing sessions, 403 for
/// failed origin checks, JSON errors for the rest.
pub async fn recover(rej: Rejection) -> Result<Response, Infallible> {
    if let Some(Unauthorized(guard)) = rej.find() {
        return Ok(match guard {
            Guard::Api => json_error(StatusCode::UNAUTHORIZED, "authentication required"),
            Guard::Page => warp::http::Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, "/login")
                .body(warp::hyper::body::Bytes::new().into())
                .unwrap_or_default(),
        });
    }
    if rej.find::<Forbidden>().is_some() {
        return Ok(json_error(
            StatusCode::FORBIDDEN,
            "cross-origin request refused",
        ));
    }
    if rej.is_not_found() {
        return Ok(json_error(StatusCode::NOT_FOUND, "not found"));
    }
    if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        return Ok(json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        ));
    }
    if let Some(e) = rej.find::<warp::filters::body::BodyDeserializeError>() {
        return Ok(json_error(StatusCode::BAD_REQUEST, e.to_string()));
    }
    if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
        return Ok(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    }
    if rej.find::<warp::reject::UnsupportedMediaType>().is_some() {
        return Ok(json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported content type",
        ));
    }
    if rej.find::<warp::reject::InvalidQuery>().is_some() {
        return Ok(json_error(StatusCode::BAD_REQUEST, "invalid query string"));
    }
    Ok(json_error(StatusCode::BAD_REQUEST, "bad request"))
}

/// HTTP request counters by route pattern and status, for `/metrics`.
#[derive(Default)]
pub struct HttpMetrics {
    counts: Mutex<BTreeMap<(String, u16), u64>>,
}

impl HttpMetrics {
    pub fn record(&self, route: String, status: u16) {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((route, status)).or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<((String, u16), u64)> {
        let m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// The route pattern of a path: numbers and free-form segments replaced, so
/// that metrics labels stay few.
pub fn route_pattern(path: &str, status: u16) -> String {
    if status == 404 {
        return "unmatched".into();
    }
    if path.starts_with("/static/") {
        return "/static/:file".into();
    }
    let mut out = String::new();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, seg) in segs.iter().enumerate() {
        out.push('/');
        let after_ghosted = i > 0 && segs[i - 1] == "ghosted";
        if after_ghosted {
            out.push_str(":version");
        } else if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(":n");
        } else {
            out.push_str(seg);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// One log line per request: method, path (no query: tokens never appear),
/// status, duration; after an action, ends the status reuse window.
pub fn log_request(state: &AppState, info: warp::log::Info<'_>) {
    let status = info.status().as_u16();
    // Runs once the reply is ready, before it is sent: the client's next
    // read cannot be served a snapshot from before its action.
    if info.method() != warp::http::Method::GET && info.method() != warp::http::Method::HEAD {
        state.status_changed();
    }
    let elapsed = info.elapsed();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    // Reads that went well are what dashboards and scrapers poll all day:
    // debug level, so they neither flood the journal nor cost throughput
    // (one formatted line + one write per request was ~25 % of the status
    // API's capacity under load). Actions, failures (401s included) and slow
    // requests stay at info. `/metrics` counts every request either way.
    if is_routine(info.method(), status, elapsed) {
        tracing::debug!(method = %info.method(), path = info.path(), status, duration_ms, "http request");
    } else {
        tracing::info!(method = %info.method(), path = info.path(), status, duration_ms, "http request");
    }
    state
        .http_metrics
        .record(route_pattern(info.path(), status), status);
}

/// Requests slower than this are logged at info even when routine.
const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

/// A successful, fast read (GET/HEAD, status < 400).
fn is_routine(method: &warp::http::Method, status: u16, elapsed: std::time::Duration) -> bool {
    (method == warp::http::Method::GET || method == warp::http::Method::HEAD)
        && status < 400
        && elapsed < SLOW_REQUEST
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(
            route_pattern("/api/v1/instances/3/restart", 202),
            "/api/v1/instances/:n/restart"
        );
        assert_eq!(
            route_pattern("/api/v1/ghosted/1.2.3", 200),
            "/api/v1/ghosted/:version"
        );
        assert_eq!(route_pattern("/", 200), "/");
        assert_eq!(route_pattern("/nope", 404), "unmatched");
    }

    #[test]
    fn routine_requests_are_fast_successful_reads() {
        use std::time::Duration;
        use warp::http::Method;
        let fast = Duration::from_millis(2);
        assert!(is_routine(&Method::GET, 200, fast));
        assert!(is_routine(&Method::HEAD, 304, fast));
        assert!(!is_routine(&Method::POST, 200, fast), "actions are logged");
        assert!(
            !is_routine(&Method::DELETE, 204, fast),
            "actions are logged"
        );
        assert!(!is_routine(&Method::GET, 401, fast), "failures are logged");
        assert!(!is_routine(&Method::GET, 500, fast), "failures are logged");
        assert!(
            !is_routine(&Method::GET, 200, Duration::from_secs(2)),
            "slow is logged"
        );
    }
}
