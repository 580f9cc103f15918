//! The JSON API under `/api/v1/`: login, status, history, operator
//! actions. Handlers are thin: extract, call the [`Engine`], render JSON.
//!
//! Invariants: every route but `login` requires a session; the status call
//! answers within [`STATUS_TIMEOUT`] (503 otherwise); action errors map to
//! fixed codes (404 no such instance, 409 busy, 422 invalid, 504 timeout).
//!
//! [`Engine`]: deployex_actors::engine::Engine

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use deployex_actors::model::{ActionError, Mode};
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::AppState;
use crate::guard::{Guard, Session, authed, client_ip, json_error, json_status, with_state};
use crate::scope::{Scope, api_scope};

/// Longest wait for the engine's status snapshot.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LoginResponse {
    pub token: String,
}

#[derive(Debug, Deserialize)]
pub struct VersionsQuery {
    pub instance: Option<u32>,
}

/// Result of a login attempt, shared by the API and the HTML form.
pub enum LoginOutcome {
    Ok(String),
    Wrong,
    Limited,
    Failed,
}

/// Rate limit, bcrypt check, token issue. The attempt is counted before
/// the password is checked (auth::LoginLimiter) and bcrypt runs at most
/// [`crate::BCRYPT_CONCURRENCY`] at a time.
pub async fn attempt_login(
    state: &AppState,
    ip: IpAddr,
    username: &str,
    password: &str,
) -> LoginOutcome {
    if !state.tokens.available() {
        tracing::error!(
            "login refused: the revoked tokens file is unreadable (see the error above)"
        );
        return LoginOutcome::Failed;
    }
    let Some(attempt) = state.limiter.begin(ip) else {
        tracing::warn!(%ip, "login rate limited");
        return LoginOutcome::Limited;
    };
    let Ok(_permit) = state.bcrypt_slots.acquire().await else {
        return LoginOutcome::Failed;
    };
    match crate::auth::check_credentials(&state.cfg.admin_hashed_password, username, password).await
    {
        Ok(true) => {
            state.limiter.succeeded(attempt);
            LoginOutcome::Ok(state.tokens.issue())
        }
        Ok(false) => {
            tracing::warn!(%ip, "failed login");
            LoginOutcome::Wrong
        }
        Err(err) => {
            tracing::error!(error = %err, "password check failed");
            LoginOutcome::Failed
        }
    }
}

/// Maps an engine action error to its HTTP answer.
pub fn action_error(err: &ActionError) -> Response {
    let status = match err {
        ActionError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ActionError::NoSuchInstance(_) => StatusCode::NOT_FOUND,
        ActionError::Busy(_) => StatusCode::CONFLICT,
        ActionError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ActionError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ActionError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_error(status, err.to_string())
}

fn ok_json(status: StatusCode) -> Response {
    json_status(status, &serde_json::json!({"ok": true}))
}

/// Decodes `%XX` escapes of a path segment (versions may carry `+`).
pub fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn login(state: Arc<AppState>, ip: IpAddr, req: LoginRequest) -> Result<Response, Rejection> {
    Ok(
        match attempt_login(&state, ip, &req.username, &req.password).await {
            LoginOutcome::Ok(token) => json_status(StatusCode::OK, &LoginResponse { token }),
            LoginOutcome::Wrong => json_error(StatusCode::UNAUTHORIZED, "invalid credentials"),
            LoginOutcome::Limited => json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins, retry later",
            ),
            LoginOutcome::Failed => {
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "login check failed")
            }
        },
    )
}

async fn status(scope: Scope) -> Result<Response, Rejection> {
    Ok(
        match tokio::time::timeout(STATUS_TIMEOUT, scope.app.status_json()).await {
            Ok(Ok(json)) => {
                let mut response = Response::new(json.into());
                response.headers_mut().insert(
                    warp::http::header::CONTENT_TYPE,
                    warp::http::HeaderValue::from_static("application/json"),
                );
                response
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot encode the status");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode the status",
                )
            }
            Err(_) => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the engine did not answer in time",
            ),
        },
    )
}

async fn versions(scope: Scope, q: VersionsQuery) -> Result<Response, Rejection> {
    let v = scope.engine().versions(q.instance).await;
    Ok(json_status(StatusCode::OK, &v))
}

#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
}

/// Events kept by deployex (at most this many are kept).
const EVENTS_MAX: usize = deployex_actors::events::KEEP;

/// `/api/v1/events`: the host's timeline, every app's events (each names
/// its app); `/api/v1/apps/{app}/events`: that app's only.
async fn events(scope: Scope, q: EventsQuery) -> Result<Response, Rejection> {
    let limit = q.limit.unwrap_or(100).min(EVENTS_MAX);
    let events = if scope.prefixed() {
        scope.app.events(limit).await
    } else {
        scope.engine().events(limit).await
    };
    Ok(json_status(StatusCode::OK, &events))
}

async fn restart(scope: Scope, instance: u32) -> Result<Response, Rejection> {
    Ok(match scope.engine().restart(instance).await {
        Ok(()) => ok_json(StatusCode::ACCEPTED),
        Err(e) => action_error(&e),
    })
}

async fn set_mode(scope: Scope, body: warp::hyper::body::Bytes) -> Result<Response, Rejection> {
    let mode: Mode = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return Ok(json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "expected {{\"mode\":\"automatic\"}} or {{\"mode\":\"manual\",\"version\":\"...\"}}: {e}"
                ),
            ));
        }
    };
    Ok(match scope.engine().set_mode(mode).await {
        Ok(()) => ok_json(StatusCode::OK),
        Err(e) => action_error(&e),
    })
}

async fn unghost(scope: Scope, version: String) -> Result<Response, Rejection> {
    Ok(
        match scope.engine().unghost(percent_decode(&version)).await {
            Ok(()) => ok_json(StatusCode::OK),
            Err(e) => action_error(&e),
        },
    )
}

/// The fleet as this host last read it (fleet mode), else 404.
async fn fleet(scope: Scope) -> Result<Response, Rejection> {
    Ok(match scope.engine().fleet().await {
        Some(view) => json_status(StatusCode::OK, &view),
        None => json_error(
            StatusCode::NOT_FOUND,
            "fleet mode is off (DEPLOYEX_FLEET=true turns it on)",
        ),
    })
}

/// The phase-1 JSON API.
pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    let st = || with_state(state.clone());
    let auth = || {
        authed(state.clone(), Guard::Api)
            .map(|_: Session| ())
            .untuple_one()
    };
    let api = warp::path("api").and(warp::path("v1"));

    let login = api
        .and(warp::path!("login"))
        .and(warp::post())
        .and(st())
        .and(client_ip(state.clone()))
        .and(warp::body::content_length_limit(16 * 1024))
        .and(warp::body::json())
        .and_then(login);
    let scoped = || api_scope(state.clone());
    let status = scoped()
        .and(warp::path!("status"))
        .and(warp::get())
        .and(auth())
        .and_then(status);
    let versions = scoped()
        .and(warp::path!("versions"))
        .and(warp::get())
        .and(auth())
        .and(warp::query::<VersionsQuery>())
        .and_then(versions);
    let events = scoped()
        .and(warp::path!("events"))
        .and(warp::get())
        .and(auth())
        .and(warp::query::<EventsQuery>())
        .and_then(events);
    let restart = scoped()
        .and(warp::path!("instances" / u32 / "restart"))
        .and(warp::post())
        .and(auth())
        .and_then(restart);
    let mode = scoped()
        .and(warp::path!("mode"))
        .and(warp::post())
        .and(auth())
        .and(warp::body::content_length_limit(16 * 1024))
        .and(warp::body::bytes())
        .and_then(set_mode);
    let unghost = scoped()
        .and(warp::path!("ghosted" / String))
        .and(warp::delete())
        .and(auth())
        .and_then(unghost);

    let fleet = scoped()
        .and(warp::path!("fleet"))
        .and(warp::get())
        .and(auth())
        .and_then(fleet);

    login
        .or(status)
        .unify()
        .or(fleet)
        .unify()
        .or(versions)
        .unify()
        .or(events)
        .unify()
        .or(restart)
        .unify()
        .or(mode)
        .unify()
        .or(unghost)
        .unify()
        .boxed()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn action_errors_map_to_the_right_status() {
        for (err, code) in [
            (ActionError::Invalid("x".into()), 422),
            (ActionError::NoSuchInstance(9), 404),
            (ActionError::Busy("x".into()), 409),
            (ActionError::Timeout, 504),
            (ActionError::Unavailable("x".into()), 503),
            (ActionError::Failed("disk full".into()), 500),
        ] {
            assert_eq!(action_error(&err).status().as_u16(), code, "{err:?}");
        }
    }

    #[test]
    fn decode() {
        assert_eq!(percent_decode("1.0.0%2Bbuild"), "1.0.0+build");
        assert_eq!(percent_decode("abc%"), "abc%");
        assert_eq!(percent_decode("a%zz"), "a%zz");
    }
}
