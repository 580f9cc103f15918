//! Several applications (issue 17): `GET /api/v1/apps` (one status object
//! per app, today's `/api/v1/status` shape) and every per-app route under
//! `/api/v1/apps/{app}/…`: `status`, `versions`, `mode`, `ghosted/{v}`,
//! `instances/{i}/restart`, `instances/{i}/logs/{stream}`.
//!
//! Invariants: every route requires a session, as every API route; an
//! unknown app is 404; the handlers are the same thin calls as api.rs's,
//! on the named app's engine. The un-prefixed routes (api.rs) keep
//! answering for the first app configured at start. The list follows a
//! reload (SIGHUP): [`AppList`] is shared with the binary, which replaces it.

use std::sync::Arc;

use deployex_actors::engine::Engine;
use deployex_actors::model::Mode;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::AppState;
use crate::api::{STATUS_TIMEOUT, VersionsQuery, action_error, percent_decode};
use crate::guard::{Guard, Session, authed, json_error, json_status, with_state};
use crate::logs::LinesQuery;

/// Every app by name, in configuration order; replaced as a whole by a
/// reload (SIGHUP: an added app appears, a removed one is 404).
pub type AppList = Arc<std::sync::RwLock<Vec<(String, Arc<dyn Engine>)>>>;

/// A list to share between the server and whoever reloads it.
pub fn app_list(apps: Vec<(String, Arc<dyn Engine>)>) -> AppList {
    Arc::new(std::sync::RwLock::new(apps))
}

/// The apps now (a copy: no lock is held across an await).
fn current(state: &AppState) -> Vec<(String, Arc<dyn Engine>)> {
    state
        .apps
        .read()
        .map(|a| a.clone())
        .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
}

/// The engine of `app`, if configured.
fn engine_of(state: &AppState, app: &str) -> Option<Arc<dyn Engine>> {
    current(state)
        .into_iter()
        .find(|(name, _)| name == app)
        .map(|(_, e)| e)
}

fn unknown(app: &str) -> Response {
    json_error(StatusCode::NOT_FOUND, format!("no app named {app:?}"))
}

fn ok_json(status: StatusCode) -> Response {
    json_status(status, &serde_json::json!({"ok": true}))
}

async fn list(state: Arc<AppState>) -> Result<Response, Rejection> {
    let apps = current(&state);
    let all = futures::future::join_all(apps.iter().map(|(_, e)| e.status()));
    Ok(match tokio::time::timeout(STATUS_TIMEOUT, all).await {
        Ok(statuses) => json_status(StatusCode::OK, &statuses),
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine did not answer in time",
        ),
    })
}

async fn status(state: Arc<AppState>, app: String) -> Result<Response, Rejection> {
    let Some(engine) = engine_of(&state, &app) else {
        return Ok(unknown(&app));
    };
    Ok(
        match tokio::time::timeout(STATUS_TIMEOUT, engine.status()).await {
            Ok(s) => json_status(StatusCode::OK, &s),
            Err(_) => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the engine did not answer in time",
            ),
        },
    )
}

async fn versions(
    state: Arc<AppState>,
    app: String,
    q: VersionsQuery,
) -> Result<Response, Rejection> {
    let Some(engine) = engine_of(&state, &app) else {
        return Ok(unknown(&app));
    };
    Ok(json_status(
        StatusCode::OK,
        &engine.versions(q.instance).await,
    ))
}

async fn restart(state: Arc<AppState>, app: String, instance: u32) -> Result<Response, Rejection> {
    let Some(engine) = engine_of(&state, &app) else {
        return Ok(unknown(&app));
    };
    Ok(match engine.restart(instance).await {
        Ok(()) => ok_json(StatusCode::ACCEPTED),
        Err(e) => action_error(&e),
    })
}

async fn set_mode(
    state: Arc<AppState>,
    app: String,
    body: warp::hyper::body::Bytes,
) -> Result<Response, Rejection> {
    let Some(engine) = engine_of(&state, &app) else {
        return Ok(unknown(&app));
    };
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
    Ok(match engine.set_mode(mode).await {
        Ok(()) => ok_json(StatusCode::OK),
        Err(e) => action_error(&e),
    })
}

async fn unghost(
    state: Arc<AppState>,
    app: String,
    version: String,
) -> Result<Response, Rejection> {
    let Some(engine) = engine_of(&state, &app) else {
        return Ok(unknown(&app));
    };
    Ok(match engine.unghost(percent_decode(&version)).await {
        Ok(()) => ok_json(StatusCode::OK),
        Err(e) => action_error(&e),
    })
}

async fn logs(
    state: Arc<AppState>,
    app: String,
    instance: u32,
    stream: String,
    q: LinesQuery,
) -> Result<Response, Rejection> {
    let Some(engine) = engine_of(&state, &app) else {
        return Ok(unknown(&app));
    };
    // Instance 0 (deployex's own log) is host-wide: not under an app.
    if instance == 0 {
        return Ok(json_error(StatusCode::NOT_FOUND, "no instance 0"));
    }
    crate::logs::plain_for(&state, &*engine, instance, stream, q).await
}

pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    let st = || with_state(state.clone());
    let auth = || {
        authed(state.clone(), Guard::Api)
            .map(|_: Session| ())
            .untuple_one()
    };
    let apps = warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path("apps"));

    let list = apps
        .and(warp::path::end())
        .and(warp::get())
        .and(auth())
        .and(st())
        .and_then(list);
    let status = apps
        .and(warp::path!(String / "status"))
        .and(warp::get())
        .and(auth())
        .and(st())
        .and_then(|a, s| status(s, a));
    let versions = apps
        .and(warp::path!(String / "versions"))
        .and(warp::get())
        .and(auth())
        .and(st())
        .and(warp::query::<VersionsQuery>())
        .and_then(|a, s, q| versions(s, a, q));
    let restart = apps
        .and(warp::path!(String / "instances" / u32 / "restart"))
        .and(warp::post())
        .and(auth())
        .and(st())
        .and_then(|a, i, s| restart(s, a, i));
    let mode = apps
        .and(warp::path!(String / "mode"))
        .and(warp::post())
        .and(auth())
        .and(st())
        .and(warp::body::content_length_limit(16 * 1024))
        .and(warp::body::bytes())
        .and_then(|a, s, b| set_mode(s, a, b));
    let unghost = apps
        .and(warp::path!(String / "ghosted" / String))
        .and(warp::delete())
        .and(auth())
        .and(st())
        .and_then(|a, v, s| unghost(s, a, v));
    let logs = apps
        .and(warp::path!(String / "instances" / u32 / "logs" / String))
        .and(warp::get())
        .and(auth())
        .and(st())
        .and(warp::query::<LinesQuery>())
        .and_then(|a, i, stream, s, q| logs(s, a, i, stream, q));

    list.or(status)
        .unify()
        .or(versions)
        .unify()
        .or(restart)
        .unify()
        .or(mode)
        .unify()
        .or(unghost)
        .unify()
        .or(logs)
        .unify()
        .boxed()
}
