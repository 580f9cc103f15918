//! The app a request is about (issue 17: several applications).
//!
//! Every per-app route exists twice: under `/apps/{app}/…` (pages) or
//! `/api/v1/apps/{app}/…` (API) for the named app, and without the prefix
//! for the first configured app (today's single-app routes). A route takes
//! the [`Scope`] filter where the prefix may stand ([`page_scope`] at the
//! root, [`api_scope`] after `/api/v1`) and reads the app from it, never
//! from a global engine.
//!
//! Invariants:
//! - an unknown app is 404, and only for a request with a session: without
//!   one it gets the same 401/302 as any other route (an anonymous client
//!   cannot probe app names);
//! - the un-prefixed routes answer for the first app of the list as it is
//!   now (a reload that removes or reorders apps moves them);
//! - one [`AppView`] per configured app at most (views are cached by name,
//!   dropped when their app leaves the list or its engine is replaced):
//!   the status single flights are per app, so one app's slow engine never
//!   delays another app's pages.

use std::sync::{Arc, Mutex};

use deployex_actors::engine::Engine;
use deployex_actors::model::{HistoryEntry, Status};
use warp::{Filter, Rejection};

use crate::AppState;
use crate::flight::SingleFlight;
use crate::guard::{Guard, ReqInfo, check, req_info};

/// A request named an app that is not configured (404 once the session
/// is checked).
#[derive(Debug)]
pub struct UnknownApp(pub String);
impl warp::reject::Reject for UnknownApp {}

/// One configured app as the web layer serves it: its engine and its
/// shared queries (the status and history single flights).
pub struct AppView {
    pub name: String,
    pub engine: Arc<dyn Engine>,
    status_flight: SingleFlight<Arc<Status>>,
    status_json_flight: SingleFlight<Result<warp::hyper::body::Bytes, Arc<str>>>,
    /// The last snapshot encoded and its JSON: a snapshot served again
    /// (`STATUS_FRESH_FOR`) is not encoded again.
    #[allow(clippy::type_complexity)]
    last_json: Mutex<Option<(Arc<Status>, warp::hyper::body::Bytes)>>,
    history_flight: SingleFlight<Arc<Vec<HistoryEntry>>>,
}

impl AppView {
    pub fn new(name: impl Into<String>, engine: Arc<dyn Engine>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            engine,
            status_flight: SingleFlight::fresh_for(crate::STATUS_FRESH_FOR),
            status_json_flight: SingleFlight::default(),
            last_json: Mutex::new(None),
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

    /// An action may have changed the status: the next read starts a
    /// fresh snapshot.
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

    /// The newest `limit` events of this app (the event log is one for
    /// the host; each event names its app).
    pub async fn events(&self, limit: usize) -> Vec<deployex_actors::events::Event> {
        // The newest `limit` first: when they are all this app's (one app
        // configured, or its events are the newest), no wider read.
        let newest = self.engine.events(limit).await;
        if newest.len() < limit || newest.iter().all(|e| e.app == self.name) {
            return newest.into_iter().filter(|e| e.app == self.name).collect();
        }
        self.engine
            .events(deployex_actors::events::KEEP)
            .await
            .into_iter()
            .filter(|e| e.app == self.name)
            .take(limit)
            .collect()
    }
}

/// The views of the configured apps, kept in step with the app list.
#[derive(Default)]
pub(crate) struct Views {
    views: Mutex<Vec<Arc<AppView>>>,
}

impl Views {
    /// The view of `name` with `engine`, made once and kept while the app
    /// stays in `list` with the same engine; views of apps no longer in
    /// `list` are dropped.
    fn get(
        &self,
        list: &[(String, Arc<dyn Engine>)],
        name: &str,
        engine: &Arc<dyn Engine>,
    ) -> Arc<AppView> {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        views.retain(|v| {
            list.iter()
                .any(|(n, e)| *n == v.name && Arc::ptr_eq(e, &v.engine))
        });
        if let Some(v) = views
            .iter()
            .find(|v| v.name == name && Arc::ptr_eq(&v.engine, engine))
        {
            return v.clone();
        }
        let v = AppView::new(name, engine.clone());
        views.push(v.clone());
        v
    }

    /// The view of `name` with `engine` if made and the cache holds no
    /// more views than `apps` apps (else the caller takes the slow path,
    /// which prunes): every request's path, one lock, no allocation.
    fn find(&self, apps: usize, name: &str, engine: &Arc<dyn Engine>) -> Option<Arc<AppView>> {
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if views.len() > apps {
            return None;
        }
        views
            .iter()
            .find(|v| v.name == name && Arc::ptr_eq(&v.engine, engine))
            .cloned()
    }

    /// Every view made so far (for the action invalidation).
    fn all(&self) -> Vec<Arc<AppView>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn len(&self) -> usize {
        self.views.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl AppState {
    /// The apps now, in configuration order (a copy: no lock is held
    /// across an await).
    pub fn app_list(&self) -> Vec<(String, Arc<dyn Engine>)> {
        self.apps
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The view of `app`, if configured.
    pub fn view(&self, app: &str) -> Option<Arc<AppView>> {
        {
            let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
            let (name, engine) = apps.iter().find(|(n, _)| n == app)?;
            if let Some(v) = self.views.find(apps.len(), name, engine) {
                return Some(v);
            }
        }
        let list = self.app_list();
        let (name, engine) = list.iter().find(|(n, _)| n == app)?;
        Some(self.views.get(&list, name, engine))
    }

    /// The first configured app's view (the un-prefixed routes); the
    /// engine given at start if the list is empty.
    pub fn first_view(&self) -> Arc<AppView> {
        {
            let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
            if let Some((name, engine)) = apps.first()
                && let Some(v) = self.views.find(apps.len(), name, engine)
            {
                return v;
            }
        }
        let list = self.app_list();
        match list.first() {
            Some((name, engine)) => self.views.get(&list, name, engine),
            None => {
                let fallback = [(self.cfg.app_name.clone(), self.engine.clone())];
                self.views.get(&fallback, &self.cfg.app_name, &self.engine)
            }
        }
    }

    /// Every configured app's view, in configuration order.
    pub fn all_views(&self) -> Vec<Arc<AppView>> {
        let list = self.app_list();
        list.iter()
            .map(|(name, engine)| self.views.get(&list, name, engine))
            .collect()
    }

    /// Views held now: at most one per configured app (the bound's test:
    /// `views_follow_the_app_list` in web/tests/apps.rs).
    pub fn cached_views(&self) -> usize {
        self.views.len()
    }

    /// Several apps are configured (the dashboard's `/` is then an
    /// overview).
    pub fn several_apps(&self) -> bool {
        self.apps.read().unwrap_or_else(|e| e.into_inner()).len() > 1
    }

    /// An action (any request but GET/HEAD) may have changed a status:
    /// every app's next read starts a fresh snapshot, so a client sees its
    /// own action at once (no reuse window, no query from before it).
    pub fn status_changed(&self) {
        for v in self.views.all() {
            v.status_changed();
        }
    }
}

/// The app of a request, and where its pages and API live.
#[derive(Clone)]
pub struct Scope {
    pub app: Arc<AppView>,
    /// `""` (the first app's un-prefixed routes) or `/apps/{app}`.
    pub base: String,
}

impl Scope {
    fn first(app: Arc<AppView>) -> Self {
        Self {
            app,
            base: String::new(),
        }
    }

    fn named(app: Arc<AppView>) -> Self {
        // App names are `[a-z][a-z0-9_]*` (config): safe in a path as is.
        let base = format!("/apps/{}", app.name);
        Self { app, base }
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.app.engine
    }

    pub fn name(&self) -> &str {
        &self.app.name
    }

    /// A page of this app: `page("/versions")` → `/apps/b/versions`.
    pub fn page(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The API prefix of this app: `/api/v1` or `/api/v1/apps/{app}`.
    pub fn api(&self) -> String {
        format!("/api/v1{}", self.base)
    }

    /// True for the `/apps/{app}/…` form.
    pub fn prefixed(&self) -> bool {
        !self.base.is_empty()
    }
}

/// `apps/{app}` then the rest, or the rest alone for the first app; an
/// unknown app is [`UnknownApp`] for a request with a session, else the
/// `guard`'s answer.
fn scope(
    state: Arc<AppState>,
    guard: Guard,
) -> impl Filter<Extract = (Scope,), Error = Rejection> + Clone {
    let named_state = state.clone();
    let named = warp::path("apps")
        .and(warp::path::param::<String>())
        .and(req_info())
        .and_then(move |app: String, info: ReqInfo| {
            let state = named_state.clone();
            async move {
                let app = crate::api::percent_decode(&app);
                match state.view(&app) {
                    Some(v) => Ok(Scope::named(v)),
                    None => {
                        check(&state, &info, guard)?;
                        Err(warp::reject::custom(UnknownApp(app)))
                    }
                }
            }
        });
    // Not for `apps/…`: an unknown app's rejection must reach `recover`
    // instead of the path failing further on as the first app's.
    let first = warp::path::peek()
        .and_then(|rest: warp::path::Peek| async move {
            match rest.segments().next() {
                Some("apps") => Err(warp::reject::not_found()),
                _ => Ok(()),
            }
        })
        .untuple_one()
        .map(move || Scope::first(state.first_view()));
    named.or(first).unify()
}

/// The scope of a page route (at the root: `/apps/{app}/…` or `/…`).
pub fn page_scope(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Scope,), Error = Rejection> + Clone {
    scope(state, Guard::Page)
}

/// The scope of an API route (`/api/v1/apps/{app}/…` or `/api/v1/…`):
/// matches `/api/v1` itself.
pub fn api_scope(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Scope,), Error = Rejection> + Clone {
    warp::path("api")
        .and(warp::path("v1"))
        .and(scope(state, Guard::Api))
}
