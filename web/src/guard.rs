//! Cross-cutting HTTP plumbing: the session guard filter, rejection →
//! response mapping, JSON helpers, request logging and request counters.
//!
//! Invariants: a Bearer token, when present, is the only credential looked
//! at (a bad one is never rescued by a cookie); cookie sessions doing a
//! state change (any method but GET/HEAD/OPTIONS), opening a websocket, or
//! sending an `Origin`, must come from exactly a public origin
//! (`WebConfig::public_origins`), else 403. Unauthenticated API
//! calls get 401 JSON, pages a 302 to `/login`. Logs never carry tokens or
//! query strings.

use std::collections::{BTreeMap, HashMap};
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

#[derive(Debug)]
pub struct TooManyStreams;
impl warp::reject::Reject for TooManyStreams {}

/// Long-lived streams (SSE, log followers, terminals) one session may hold
/// open at once: a few tabs' worth.
pub const MAX_STREAMS_PER_SESSION: usize = 8;

/// Open streams per session id.
///
/// Invariant: a session holds at most [`MAX_STREAMS_PER_SESSION`] streams;
/// a [`StreamSlot`] is held for the stream's whole life and frees its
/// place when dropped, whatever path the stream ended by.
#[derive(Default)]
pub struct StreamCounts {
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream of a session (see [`StreamCounts`]).
pub struct StreamSlot {
    counts: Arc<StreamCounts>,
    session: String,
}

impl StreamCounts {
    pub fn open(self: &Arc<Self>, session: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(session.to_owned()).or_default();
        if *n >= MAX_STREAMS_PER_SESSION {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            counts: self.clone(),
            session: session.to_owned(),
        })
    }

    /// Streams `session` holds now.
    pub fn count(&self, session: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(session).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.session) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.session);
            }
        }
    }
}

/// Filter: a valid session with a free stream slot (429 otherwise).
pub fn stream_slot(
    state: Arc<AppState>,
    guard: Guard,
) -> impl Filter<Extract = ((Session, StreamSlot),), Error = Rejection> + Clone {
    authed(state.clone(), guard).and_then(move |session: Session| {
        let state = state.clone();
        async move {
            match state.streams.open(&session.claims.id) {
                Some(slot) => Ok((session, slot)),
                None => Err(warp::reject::custom(TooManyStreams)),
            }
        }
    })
}

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
    /// A websocket upgrade (then the origin is checked like a state change).
    pub websocket: bool,
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
                websocket: get(header::UPGRADE)
                    .is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
            }
        },
    )
}

/// The client address used for the login limiter and audit lines: the
/// peer, or, when the peer is a trusted proxy (`cfg.trusted_proxies`), the
/// right-most address of `X-Forwarded-For` that is not itself a trusted
/// proxy (the left part of the header is the client's to write).
pub fn client_ip(
    state: Arc<AppState>,
) -> impl Filter<Extract = (IpAddr,), Error = Infallible> + Clone {
    warp::addr::remote()
        .and(warp::header::headers_cloned())
        .map(
            move |a: Option<SocketAddr>, headers: warp::http::HeaderMap| {
                let peer = a
                    .map(|a| a.ip())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                // Several headers are one list, in order (RFC 9110 §5.3).
                let xff: Vec<&str> = headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let xff = (!xff.is_empty()).then(|| xff.join(","));
                forwarded_client(peer, xff.as_deref(), &state.cfg.trusted_proxies)
            },
        )
}

/// See [`client_ip`]. A header that does not parse is ignored (the peer
/// counts), so a client cannot pick its own key through a trusted proxy
/// that passes garbage along.
pub fn forwarded_client(peer: IpAddr, xff: Option<&str>, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(xff) = xff else { return peer };
    let mut hops = Vec::new();
    for hop in xff.split(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => hops.push(ip),
            Err(_) => return peer,
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// Same-origin check: the `Origin` (else the `Referer`) must be exactly
/// one of the dashboard's public origins (scheme, host and port); the
/// `Host` header is not trusted.
pub fn origin_ok(state: &AppState, info: &ReqInfo) -> bool {
    auth::origin_allowed(
        info.origin.as_deref(),
        info.referer.as_deref(),
        &state.cfg.public_origins,
    )
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
        .and_then(|c| auth::session_cookie(c, auth::cookie_name(state.cfg.secure_cookie)))
        .and_then(|t| state.tokens.verify(t).ok())
        .ok_or_else(|| warp::reject::custom(Unauthorized(guard)))?;
    let safe = matches!(info.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let needs_origin = !safe || info.origin.is_some() || info.websocket;
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
    if let Some(crate::scope::UnknownApp(app)) = rej.find() {
        return Ok(json_error(
            StatusCode::NOT_FOUND,
            format!("no app named {app:?}"),
        ));
    }
    if rej.find::<TooManyStreams>().is_some() {
        return Ok(json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many open streams for this session",
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

/// Most distinct (route, status) series `/metrics` keeps; any further
/// pair is counted under `("unmatched", 0)`. The route table below makes
/// the real set a few dozen; this is the backstop.
pub const MAX_SERIES: usize = 256;

/// HTTP request counters by route id and status, for `/metrics`.
///
/// Invariant: the label set is bounded: route ids are `&'static str` from
/// [`ROUTES`] (or `unmatched`) and at most [`MAX_SERIES`] pairs are kept,
/// whatever paths clients send.
#[derive(Default)]
pub struct HttpMetrics {
    counts: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl HttpMetrics {
    pub fn record(&self, route: &'static str, status: u16) {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let key = if m.len() < MAX_SERIES || m.contains_key(&(route, status)) {
            (route, status)
        } else {
            (UNMATCHED, 0)
        };
        *m.entry(key).or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<((&'static str, u16), u64)> {
        let m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// The route id of every request no route below matches.
pub const UNMATCHED: &str = "unmatched";

/// Every route the server answers, as its metrics label. A segment `:n` is
/// a number (u32), `:s` any one segment; the others are literal. Kept in
/// step with the filters (`route_table_matches_every_route` in the tests).
pub const ROUTES: &[&str] = &[
    "/",
    "/healthz",
    "/static/:s",
    "/metrics",
    "/login",
    "/logout",
    "/fleet",
    "/debug/actors",
    "/versions",
    "/events",
    "/instances/:n/terminal",
    "/instances/:n/terminal/ws",
    "/instances/:n/logs/:s",
    "/instances/:n/logs/:s/ws",
    "/instances/:n/observer",
    // One app's pages (scope.rs): `:s` is the app, a label never grows
    // with the apps' names.
    "/apps/:s",
    "/apps/:s/versions",
    "/apps/:s/events",
    "/apps/:s/instances/:n/terminal",
    "/apps/:s/instances/:n/terminal/ws",
    "/apps/:s/instances/:n/logs/:s",
    "/apps/:s/instances/:n/logs/:s/ws",
    "/apps/:s/instances/:n/observer",
    "/apps/:s/fleet",
    "/api/v1/login",
    "/api/v1/fleet",
    "/api/v1/host/history",
    "/api/v1/debug/actors",
    "/api/v1/debug/actors/stream",
    "/api/v1/apps",
    "/api/v1/status",
    "/api/v1/status/stream",
    "/api/v1/versions",
    "/api/v1/events",
    "/api/v1/mode",
    "/api/v1/ghosted/:s",
    "/api/v1/history/stream",
    "/api/v1/instances/:n/restart",
    "/api/v1/instances/:n/logs/:s",
    "/api/v1/instances/:n/history",
    "/api/v1/instances/:n/processes",
    "/api/v1/instances/:n/processes/:s",
    "/api/v1/instances/:n/supervision",
    "/api/v1/instances/:n/ets",
    "/api/v1/apps/:s/fleet",
    "/api/v1/apps/:s/status",
    "/api/v1/apps/:s/status/stream",
    "/api/v1/apps/:s/versions",
    "/api/v1/apps/:s/events",
    "/api/v1/apps/:s/mode",
    "/api/v1/apps/:s/ghosted/:s",
    "/api/v1/apps/:s/history/stream",
    "/api/v1/apps/:s/instances/:n/restart",
    "/api/v1/apps/:s/instances/:n/logs/:s",
    "/api/v1/apps/:s/instances/:n/history",
    "/api/v1/apps/:s/instances/:n/processes",
    "/api/v1/apps/:s/instances/:n/processes/:s",
    "/api/v1/apps/:s/instances/:n/supervision",
    "/api/v1/apps/:s/instances/:n/ets",
];

/// The route id of `path` (a fixed string from [`ROUTES`]), `unmatched`
/// for a path no route serves or any 404: a client cannot create labels.
pub fn route_id(path: &str, status: u16) -> &'static str {
    if status == 404 {
        return UNMATCHED;
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    ROUTES
        .iter()
        .find(|route| {
            let pat: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
            pat.len() == segs.len()
                && pat.iter().zip(&segs).all(|(p, s)| match *p {
                    ":n" => s.parse::<u32>().is_ok(),
                    ":s" => true,
                    lit => lit == *s,
                })
        })
        .copied()
        .unwrap_or(UNMATCHED)
}

/// Longest path written to the log: a client cannot grow the log by more
/// than this per request.
pub const MAX_LOGGED_PATH: usize = 256;

/// `path` cut to [`MAX_LOGGED_PATH`] bytes (on a character boundary), with
/// `…` when cut.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= MAX_LOGGED_PATH {
        return path.into();
    }
    let mut end = MAX_LOGGED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end]).into()
}

/// One log line per request: method, path (no query: tokens never appear;
/// cut to [`MAX_LOGGED_PATH`]), status, duration; after an action, ends the
/// status reuse window.
pub fn log_request(state: &AppState, info: warp::log::Info<'_>) {
    let status = info.status().as_u16();
    // Runs once the reply is ready, before it is sent: the client's next
    // read cannot be served a snapshot from before its action.
    if info.method() != warp::http::Method::GET && info.method() != warp::http::Method::HEAD {
        state.status_changed();
    }
    let elapsed = info.elapsed();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let path = loggable_path(info.path());
    // Reads that went well are what dashboards and scrapers poll all day:
    // debug level, so they neither flood the journal nor cost throughput
    // (one formatted line + one write per request was ~25 % of the status
    // API's capacity under load). Actions, failures (401s included) and slow
    // requests stay at info. `/metrics` counts every request either way.
    if is_routine(info.method(), status, elapsed) {
        tracing::debug!(method = %info.method(), path = %path, status, duration_ms, "http request");
    } else {
        tracing::info!(method = %info.method(), path = %path, status, duration_ms, "http request");
    }
    state
        .http_metrics
        .record(route_id(info.path(), status), status);
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
    fn route_ids_come_from_the_table() {
        assert_eq!(
            route_id("/api/v1/instances/3/restart", 202),
            "/api/v1/instances/:n/restart"
        );
        assert_eq!(route_id("/api/v1/ghosted/1.2.3", 200), "/api/v1/ghosted/:s");
        assert_eq!(route_id("/", 200), "/");
        assert_eq!(route_id("/nope", 404), UNMATCHED);
        // Unknown paths answered 401/302 (no session) are not labels.
        assert_eq!(route_id("/x/y/z", 401), UNMATCHED);
        assert_eq!(route_id("/api/v1/instances/abc/restart", 401), UNMATCHED);
        assert_eq!(route_id(&"/a".repeat(1000), 302), UNMATCHED);
    }

    #[test]
    fn the_label_set_is_capped() {
        let m = HttpMetrics::default();
        for status in 0..1000 {
            m.record("/", status);
        }
        let snap = m.snapshot();
        assert!(snap.len() <= MAX_SERIES + 1, "{}", snap.len());
        let total: u64 = snap.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 1000, "every request is still counted");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "10.1.1.1".parse().unwrap();
        let xff = Some("1.1.1.1, 2.2.2.2");
        assert_eq!(
            forwarded_client(lo, xff, &trusted),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(forwarded_client(other, xff, &trusted), other);
        assert_eq!(forwarded_client(lo, xff, &[]), lo);
        assert_eq!(forwarded_client(lo, Some("junk"), &trusted), lo);
        assert_eq!(forwarded_client(lo, None, &trusted), lo);
        assert_eq!(forwarded_client(lo, Some("127.0.0.1"), &trusted), lo);
    }

    #[test]
    fn logged_paths_are_cut() {
        assert_eq!(loggable_path("/a"), "/a");
        let long = "é".repeat(1000);
        let cut = loggable_path(&long);
        assert!(cut.len() <= MAX_LOGGED_PATH + "…".len());
        assert!(cut.ends_with('…'));
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
