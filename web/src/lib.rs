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
//! - Every per-app route also answers under `/apps/{app}/…` (pages) and
//!   `/api/v1/apps/{app}/…` (API) for the named app; without the prefix,
//!   for the first app [scope]; `GET /api/v1/apps` [apps]; `/` is the
//!   overview when several apps are configured [pages/overview].

pub mod api;
pub mod apps;
pub mod assets;
pub mod auth;
pub mod charts;
pub mod fleet_page;
pub mod flight;
pub mod guard;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod observer;
pub mod ownlog;
pub mod pages;
pub mod scope;
pub mod terminal;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use deployex_actors::engine::Engine;
use tokio::task::JoinHandle;
use warp::Filter;

use crate::auth::{LoginLimiter, TokenSigner};
use crate::guard::HttpMetrics;

/// Everything the web layer needs to know, built by the binary's config.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub bind: SocketAddr,
    /// Public host name (`DEPLOYEX_PHX_HOST`).
    pub host: String,
    pub secret_key_base: String,
    pub admin_hashed_password: String,
    /// Adds `Secure` and the `__Host-` prefix to the session cookie.
    pub secure_cookie: bool,
    pub session_ttl: Duration,
    pub terminal_idle: Duration,
    /// A terminal closes after this long whatever happens in it.
    pub terminal_lifetime: Duration,
    /// Bearer token that may read `/metrics` without a session.
    pub metrics_token: Option<String>,
    pub app_name: String,
    /// Where logged-out token ids are kept across restarts; `None`: memory.
    pub revoked_tokens_file: Option<std::path::PathBuf>,
    /// Peers whose `X-Forwarded-For` is believed (`DEPLOYEX_TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The only origins cookie sessions accept for state changes and
    /// websockets (`auth::public_origins`, normalized).
    pub public_origins: Vec<String>,
    /// Open connections at most (`DEPLOYEX_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// deployex's own recent log lines, served as instance 0's log when
    /// the engine has no own log file.
    pub own_log: Option<Arc<ownlog::OwnLog>>,
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
        let host: String = host.into();
        let public_origins = auth::public_origins(None, &host, bind.port()).unwrap_or_default();
        Self {
            bind,
            secure_cookie: public_origins.iter().any(|o| o.starts_with("https://")),
            public_origins,
            host,
            secret_key_base: secret_key_base.into(),
            admin_hashed_password: admin_hashed_password.into(),
            session_ttl: Duration::from_secs(12 * 3600),
            terminal_idle: Duration::from_secs(5 * 60),
            terminal_lifetime: Duration::from_secs(4 * 3600),
            metrics_token: None,
            app_name: app_name.into(),
            revoked_tokens_file: None,
            trusted_proxies: Vec::new(),
            max_connections: 512,
            own_log: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("no application to serve")]
    NoApps,
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
pub(crate) const STATUS_FRESH_FOR: std::time::Duration = std::time::Duration::from_millis(10);

/// Password checks that may run at once: a flood of logins (from many
/// clients) queues instead of taking every core from the engine.
pub const BCRYPT_CONCURRENCY: usize = 2;

/// IEx terminals open at once (each is a remote-shell BEAM, ~60 MB).
pub const MAX_TERMINALS: usize = 8;

/// Shared state of every handler.
pub struct AppState {
    /// The engine given at start (the first app's): host-wide queries
    /// (actor tree, host history, fleet); per-app routes take theirs from
    /// their [`scope::Scope`].
    pub engine: Arc<dyn Engine>,
    /// Every app by name, in configuration order (`apps[0]` is `engine`
    /// until a reload changes the list): `/api/v1/apps/…` (apps.rs).
    pub apps: apps::AppList,
    pub cfg: WebConfig,
    pub tokens: TokenSigner,
    pub limiter: LoginLimiter,
    /// bcrypt checks running at once (each holds a blocking thread and a
    /// core for ~250 ms at cost 12).
    pub bcrypt_slots: tokio::sync::Semaphore,
    pub http_metrics: HttpMetrics,
    /// Terminals open at once, over all sessions ([`MAX_TERMINALS`]).
    pub terminals: Arc<tokio::sync::Semaphore>,
    /// Long-lived streams open per session (guard::StreamCounts).
    pub streams: Arc<guard::StreamCounts>,
    /// Flips to true when the server shuts down: long-lived streams (SSE,
    /// log followers, terminals) end on it instead of holding shutdown up.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// One view per configured app, with its shared queries (scope.rs).
    views: scope::Views,
}

impl AppState {
    pub fn new(engine: Arc<dyn Engine>, cfg: WebConfig) -> Arc<Self> {
        let apps = vec![(cfg.app_name.clone(), engine.clone())];
        Self::with_apps(engine, apps, cfg)
    }

    /// Several apps: `engine` (the first) serves the un-prefixed routes.
    pub fn with_apps(
        engine: Arc<dyn Engine>,
        apps: Vec<(String, Arc<dyn Engine>)>,
        cfg: WebConfig,
    ) -> Arc<Self> {
        Self::with_app_list(engine, apps::app_list(apps), cfg)
    }

    /// Several apps in a list a reload may replace (apps.rs).
    pub fn with_app_list(
        engine: Arc<dyn Engine>,
        apps: apps::AppList,
        cfg: WebConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            apps,
            tokens: {
                let t = TokenSigner::for_admin(
                    &cfg.secret_key_base,
                    &cfg.admin_hashed_password,
                    cfg.session_ttl,
                );
                match &cfg.revoked_tokens_file {
                    Some(f) => t.with_revocation_file(f.clone()),
                    None => t,
                }
            },
            engine,
            cfg,
            limiter: LoginLimiter::default(),
            bcrypt_slots: tokio::sync::Semaphore::new(BCRYPT_CONCURRENCY),
            http_metrics: HttpMetrics::default(),
            streams: Arc::default(),
            terminals: Arc::new(tokio::sync::Semaphore::new(MAX_TERMINALS)),
            shutdown: tokio::sync::watch::Sender::new(false),
            views: scope::Views::default(),
        })
    }

    /// Resolves once the server is shutting down.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|down| *down).await;
        }
    }
}

/// A client that has not sent a whole request head within this is cut off
/// (slowloris). hyper starts the clock whenever the connection waits for a
/// request, so it is also the keep-alive idle timeout.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer of a connection, put in each request's extensions by
/// [`serve`]'s accept loop (warp's own `RemoteAddr` is private to warp).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// One open connection, as the accept loop sees it.
struct ConnState {
    /// Set once a request head arrived: the connection is in use.
    served: Arc<std::sync::atomic::AtomicBool>,
    /// Told when the connection must go to make room.
    evicted: Arc<tokio::sync::Notify>,
}

/// The open connections, oldest first, that may be closed to make room for
/// a new one: those that never delivered a request head (an idle or
/// slowloris connection must not lock out `/healthz` or an operator).
#[derive(Default)]
struct Unserved {
    conns: std::collections::VecDeque<(
        std::sync::Weak<std::sync::atomic::AtomicBool>,
        Arc<tokio::sync::Notify>,
    )>,
}

impl Unserved {
    fn track(&mut self) -> ConnState {
        let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let evicted = Arc::new(tokio::sync::Notify::new());
        self.conns
            .push_back((Arc::downgrade(&served), evicted.clone()));
        ConnState { served, evicted }
    }

    /// Tells the oldest connection that never sent a request to go; false
    /// when there is none (every connection is in use).
    fn evict_oldest(&mut self, max: usize) -> bool {
        use std::sync::atomic::Ordering;
        let usable = |(w, _): &(std::sync::Weak<std::sync::atomic::AtomicBool>, _)| {
            w.upgrade().is_some_and(|s| !s.load(Ordering::Relaxed))
        };
        if self.conns.len() > 2 * max {
            self.conns.retain(usable);
        }
        while let Some(front) = self.conns.pop_front() {
            if usable(&front) {
                front.1.notify_one();
                return true;
            }
        }
        false
    }
}

/// Binds `cfg.bind` (port 0 allowed), returns the bound address at once and
/// serves until `shutdown` completes.
///
/// Invariants: at most `cfg.max_connections` connections are open; at the
/// cap a new connection takes the place of the oldest one that never sent
/// a request head, or is closed at once when every connection is in use
/// (the file descriptors the instances need stay free); a connection that
/// does not deliver a request head within [`HEADER_READ_TIMEOUT`], be it
/// new or idle between requests, is closed. A websocket, once upgraded,
/// leaves the count: the per-session stream cap bounds those.
pub async fn serve(
    engine: Arc<dyn Engine>,
    cfg: WebConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>), WebError> {
    let apps = vec![(cfg.app_name.clone(), engine)];
    serve_apps(apps, cfg, shutdown).await
}

/// [`serve`] for several apps (name, engine), in configuration order; the
/// first one answers the un-prefixed routes. `apps` must not be empty.
pub async fn serve_apps(
    apps: Vec<(String, Arc<dyn Engine>)>,
    cfg: WebConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>), WebError> {
    serve_app_list(apps::app_list(apps), cfg, shutdown).await
}

/// [`serve_apps`] with a list the caller may replace later (a reload):
/// `/api/v1/apps/…` follows it; the un-prefixed routes keep the first app
/// of the list as it is now.
pub async fn serve_app_list(
    apps: apps::AppList,
    cfg: WebConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>), WebError> {
    let first = apps.read().ok().and_then(|a| a.first().cloned());
    let Some((_, engine)) = first else {
        return Err(WebError::NoApps);
    };
    let addr = cfg.bind;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WebError::Bind { addr, source })?;
    let max_connections = cfg.max_connections.max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let state = AppState::with_app_list(engine, apps, cfg);
    let filter = routes_with_state(state.clone());
    let handle = tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut stopped = std::pin::pin!(shutdown);
        let mut unserved = Unserved::default();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: wait a little instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut stopped => break,
            };
            let permit = slots.clone().try_acquire_owned().ok();
            if permit.is_none() && !unserved.evict_oldest(max_connections) {
                tracing::warn!(%peer, "connection limit reached: closing a new connection");
                drop(stream);
                continue;
            }
            let conn_state = unserved.track();
            let slots = slots.clone();
            let svc = warp::service(filter.clone());
            let served = conn_state.served.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    served.store(true, std::sync::atomic::Ordering::Relaxed);
                    req.extensions_mut().insert(PeerAddr(peer));
                    tower_service::Service::call(&mut svc.clone(), req)
                },
            );
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                // At the cap an idle connection was told to go: its slot
                // is free within moments.
                let _permit = match permit {
                    Some(p) => p,
                    None => {
                        match tokio::time::timeout(Duration::from_secs(1), slots.acquire_owned())
                            .await
                        {
                            Ok(Ok(p)) => p,
                            _ => return,
                        }
                    }
                };
                let mut builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .keep_alive(true);
                let builder = builder.http1_only();
                let conn = builder
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc);
                tokio::select! {
                    r = watcher.watch(conn) => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    },
                    _ = conn_state.evicted.notified() => {
                        tracing::debug!(%peer, "idle connection closed: connection limit reached");
                    }
                }
            });
        }
        state.shutdown.send_replace(true);
        drop(listener);
        graceful.shutdown().await;
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
        .or(apps::routes(state.clone()))
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
        .or(fleet_page::routes(state.clone()))
        .unify()
        .recover(guard::recover)
        .unify()
        .with(warp::log::custom(move |info| {
            guard::log_request(&log_state, info)
        }))
}
