//! deployex's HTTP side: the JSON API (`/api/v1/*`), the dashboard pages,
//! live logs, the web terminal, `/metrics`.
//!
//! Invariants: the web layer talks to the engine only through the
//! [`Engine`] trait (it never mutates state itself); every route except
//! `/healthz`, `/login` and `/static/*` requires a session (Bearer token or
//! session cookie); cookie-authenticated state changes pass a same-origin
//! check.
//!
//! Route map (module in brackets):
//! - `GET /healthz` — `ok`, no auth.
//! - `POST /api/v1/login` → `{"token"}`; `GET /api/v1/status`, `GET
//!   /api/v1/versions[?instance=i]`, `POST /api/v1/instances/{i}/restart`,
//!   `POST /api/v1/mode`, `DELETE /api/v1/ghosted/{version}` [api].
//! - `GET /api/v1/status/stream`, `/api/v1/debug/actors[/stream]` (SSE) [live].
//! - `GET /api/v1/instances/{i}/logs/{stdout|stderr}?lines=N` (text),
//!   `/instances/{i}/logs/{stream}` (page), `.../ws?from=OFFSET` [logs].
//! - `/instances/{i}/terminal` (page), `/instances/{i}/terminal/ws` [terminal].
//! - `/`, `/versions`, `/debug/actors`, `/login`, `/logout` [pages];
//!   `/metrics` [metrics]; `/static/*` [assets].

pub mod api;
pub mod assets;
pub mod auth;
pub mod charts;
pub mod flight;
pub mod guard;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod observer;
pub mod pages;
pub mod terminal;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use deployex_actors::engine::Engine;
use deployex_actors::model::{HistoryEntry, Status};
use tokio::task::JoinHandle;
use warp::Filter;

use crate::auth::{LoginLimiter, TokenSigner};
use crate::flight::SingleFlight;
use crate::guard::HttpMetrics;

/// Everything the web layer needs to know, built by the binary's config.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub bind: SocketAddr,
    /// Public host name (`DEPLOYEX_PHX_HOST`); accepted as an origin.
    pub host: String,
    pub secret_key_base: String,
    pub admin_hashed_password: String,
    /// Adds `Secure` to the session cookie (behind https).
    pub secure_cookie: bool,
    pub session_ttl: Duration,
    pub terminal_idle: Duration,
    /// Bearer token that may read `/metrics` without a session.
    pub metrics_token: Option<String>,
    pub app_name: String,
    /// Where logged-out token ids are kept across restarts; `None`: memory.
    pub revoked_tokens_file: Option<std::path::PathBuf>,
}

impl WebConfig {
    /// A config with the documented defaults for the optional parts.
    pub fn new(
        bind: SocketAddr,
        host: impl Into<String>,
        secret_key_base: impl Into<String>,
        admin_hashed_password: impl Into<String>,
        app_name: impl Into<String>,
    ) -> Self {
        Self {
            bind,
            host: host.into(),
            secret_key_base: secret_key_base.into(),
            admin_hashed_password: admin_hashed_password.into(),
            secure_cookie: false,
            session_ttl: Duration::from_secs(12 * 3600),
            terminal_idle: Duration::from_secs(5 * 60),
            metrics_token: None,
            app_name: app_name.into(),
            revoked_tokens_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot bind the web server to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How long a finished status query is served again. Under a
/// request flood each status query is a round trip through the engine's
/// actors on the engine's runtime (the web server runs on its own, niced:
/// src/main.rs); sharing its answer for 10 ms caps those round trips at
/// ~100/s whatever the load, and no client can tell (the dashboard polls
/// every second, an instance's state changes over hundreds of ms), except
/// right after its own action: any request but GET/HEAD ends the window
/// (`AppState::status_changed`, called from the request log filter).
const STATUS_FRESH_FOR: std::time::Duration = std::time::Duration::from_millis(10);

/// Shared state of every handler.
pub struct AppState {
    pub engine: Arc<dyn Engine>,
    pub cfg: WebConfig,
    pub tokens: TokenSigner,
    pub limiter: LoginLimiter,
    pub http_metrics: HttpMetrics,
    /// Flips to true when the server shuts down: long-lived streams (SSE,
    /// log followers, terminals) end on it instead of holding shutdown up.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Concurrent status / history reads share one engine query (flight.rs).
    status_flight: SingleFlight<Arc<Status>>,
    /// The same snapshot as JSON: concurrent API reads share one encoding.
    status_json_flight: SingleFlight<Result<warp::hyper::body::Bytes, Arc<str>>>,
    /// The last snapshot encoded and its JSON: a snapshot served again
    /// (`STATUS_FRESH_FOR`) is not encoded again.
    #[allow(clippy::type_complexity)]
    last_json: std::sync::Mutex<Option<(Arc<Status>, warp::hyper::body::Bytes)>>,
    history_flight: SingleFlight<Arc<Vec<HistoryEntry>>>,
}

impl AppState {
    pub fn new(engine: Arc<dyn Engine>, cfg: WebConfig) -> Arc<Self> {
        Arc::new(Self {
            tokens: {
                let t = TokenSigner::new(&cfg.secret_key_base, cfg.session_ttl);
                match &cfg.revoked_tokens_file {
                    Some(f) => t.with_revocation_file(f.clone()),
                    None => t,
                }
            },
            engine,
            cfg,
            limiter: LoginLimiter::default(),
            http_metrics: HttpMetrics::default(),
            shutdown: tokio::sync::watch::Sender::new(false),
            status_flight: SingleFlight::fresh_for(STATUS_FRESH_FOR),
            status_json_flight: SingleFlight::default(),
            last_json: std::sync::Mutex::new(None),
            history_flight: SingleFlight::default(),
        })
    }

    /// The engine's status snapshot, shared with concurrent callers.
    pub async fn status(&self) -> Arc<Status> {
        let engine = self.engine.clone();
        self.status_flight
            .run(move || async move { Arc::new(engine.status().await) })
            .await
    }

    /// The status snapshot encoded as JSON, shared with concurrent callers
    /// (joins the encoding in flight; a snapshot served again by
    /// [`Self::status`] is not encoded again).
    pub async fn status_json(self: &Arc<Self>) -> Result<warp::hyper::body::Bytes, Arc<str>> {
        let me = self.clone();
        self.status_json_flight
            .run(move || async move {
                let status = me.status().await;
                if let Some((encoded, json)) =
                    me.last_json.lock().ok().as_deref().and_then(Option::as_ref)
                    && Arc::ptr_eq(encoded, &status)
                {
                    return Ok(json.clone());
                }
                let json = serde_json::to_vec(&*status)
                    .map(warp::hyper::body::Bytes::from)
                    .map_err(|e| Arc::from(e.to_string()))?;
                if let Ok(mut last) = me.last_json.lock() {
                    *last = Some((status, json.clone()));
                }
                Ok(json)
            })
            .await
    }

    /// An action (any request but GET/HEAD) may have changed the status:
    /// the next read starts a fresh snapshot, so a client sees its own
    /// action at once (no reuse window, no query from before it).
    pub fn status_changed(&self) {
        self.status_flight.invalidate();
        self.status_json_flight.invalidate();
    }

    /// The whole deployment history, shared with concurrent callers.
    pub async fn history(&self) -> Arc<Vec<HistoryEntry>> {
        let engine = self.engine.clone();
        self.history_flight
            .run(move || async move { Arc::new(engine.versions(None).await) })
            .await
    }

    /// Resolves once the server is shutting down.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|down| *down).await;
        }
    }
}

/// Binds `cfg.bind` (port 0 allowed), returns the bound address at once and
/// serves until `shutdown` completes.
pub async fn serve(
    engine: Arc<dyn Engine>,
    cfg: WebConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>), WebError> {
    let addr = cfg.bind;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WebError::Bind { addr, source })?;
    let state = AppState::new(engine, cfg);
    let filter = routes_with_state(state.clone());
    let shutdown = async move {
        shutdown.await;
        state.shutdown.send_replace(true);
    };
    let handle = tokio::spawn(async move {
        warp::serve(filter)
            .incoming(listener)
            .graceful(shutdown)
            .run()
            .await;
    });
    tracing::info!(%bound, "web server listening");
    Ok((bound, handle))
}

/// All routes, with rejection handling and request logging (tests drive
/// this with `warp::test`).
pub fn routes(
    engine: Arc<dyn Engine>,
    cfg: WebConfig,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let state = AppState::new(engine, cfg);
    routes_with_state(state)
}

/// [`routes`] over an existing state (tests inspect the state).
pub fn routes_with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::Reply::into_response("ok"));
    let log_state = state.clone();
    healthz
        .or(assets::routes())
        .unify()
        .or(api::routes(state.clone()))
        .unify()
        .or(live::routes(state.clone()))
        .unify()
        .or(logs::routes(state.clone()))
        .unify()
        .or(metrics::routes(state.clone()))
        .unify()
        .or(terminal::routes(state.clone()))
        .unify()
        .or(charts::routes(state.clone()))
        .unify()
        .or(observer::routes(state.clone()))
        .unify()
        .or(pages::routes(state.clone()))
        .unify()
        .recover(guard::recover)
        .unify()
        .with(warp::log::custom(move |info| {
            guard::log_request(&log_state, info)
        }))
}
