//! The HTML pages (maud): login/logout, the dashboard, version history,
//! the debug view of the actor tree, and the shells of the log and terminal
//! pages. Live parts are filled by `assets/app.js` from SSE/websockets.
//!
//! Invariants: every page is rendered from [`Engine`] calls only; all data
//! goes through maud's escaping; pages carry a CSP that forbids inline
//! scripts, so page parameters travel in `data-*` attributes.
//!
//! [`Engine`]: deployex_actors::engine::Engine
//!
//! Where things are: `login`, `dashboard` (and the events page),
//! `versions`, `debug` (the actor tree), `shells` (logs and terminal
//! pages), `format` (values as shown); here the frame every page shares
//! ([`layout`], [`html_page`]) and the routes.

use std::sync::Arc;

use maud::{DOCTYPE, Markup, html};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;
use crate::guard::{Guard, Session, authed, client_ip, req_info, with_state};
use crate::scope::{Scope, page_scope};

mod dashboard;
mod debug;
mod format;
mod login;
mod overview;
mod shells;
mod versions;

pub use dashboard::recent_versions;
use dashboard::{dashboard_page, events_page};
pub use debug::actor_tree;
use debug::actors_page;
pub use format::{fmt_bytes, fmt_duration_ms, fmt_uptime};
pub use login::{LOGIN_FORM_LIMIT, LoginForm, encode_login_form, parse_login_form};
use login::{login_form_submit, login_page, logout};
pub use shells::logs_page;
use shells::terminal_page;
pub use versions::InstanceQuery;
use versions::versions_page;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// An HTML answer with the security headers every page carries.
pub fn html_page(status: StatusCode, m: Markup) -> Response {
    let mut r =
        warp::reply::with_status(warp::reply::html(m.into_string()), status).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn redirect(to: &'static str, cookie: Option<String>) -> Response {
    let mut b = warp::http::Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to);
    if let Some(c) = cookie {
        b = b.header(header::SET_COOKIE, c);
    }
    b.body(Vec::<u8>::new().into()).unwrap_or_default()
}

/// Which app a page is about: the header names it, its links and the
/// page's scripts (`data-base`, `data-api`) stay under its prefix.
#[derive(Debug, Clone, Copy)]
pub struct Here<'a> {
    pub app: &'a str,
    /// `""` or `/apps/{app}` (scope.rs).
    pub base: &'a str,
}

impl<'a> Here<'a> {
    /// A host-wide page (or the first app's un-prefixed one).
    pub fn top(app: &'a str) -> Self {
        Self { app, base: "" }
    }
}

impl crate::scope::Scope {
    pub fn here(&self) -> Here<'_> {
        Here {
            app: self.name(),
            base: &self.base,
        }
    }
}

/// The common frame: header with navigation and logout.
pub fn layout(title: &str, here: Here<'_>, page: &str, body: Markup, logged_in: bool) -> Markup {
    let Here { app, base } = here;
    let home = if base.is_empty() {
        "/".to_string()
    } else {
        base.to_string()
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                title { (title) " · deployex" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body data-page=(page) data-base=(base) data-api={ "/api/v1" (base) } {
                header.top {
                    a.brand href="/" { "deployex" span.app { (app) } }
                    @if logged_in {
                        nav {
                            a href=(home) { "Dashboard" }
                            a href={ (base) "/versions" } { "Versions" }
                            a href={ (base) "/events" } { "Events" }
                            a href="/instances/0/logs/stdout" { "Logs" }
                            a href="/debug/actors" { "Actors" }
                            a href="/metrics" { "Metrics" }
                            form.inline method="post" action="/logout" {
                                button.link type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
                div #toast role="status" aria-live="polite" {}
            }
        }
    }
}

/// Page routes (HTML; no session → 302 to `/login`).
pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    let st = || with_state(state.clone());
    let page = || {
        authed(state.clone(), Guard::Page)
            .map(|_: Session| ())
            .untuple_one()
    };
    let login_get = warp::path!("login")
        .and(warp::get())
        .and(st())
        .map(|s: Arc<AppState>| html_page(StatusCode::OK, login_page(&s.cfg.app_name, None)));
    let login_post = warp::path!("login")
        .and(warp::post())
        .and(st())
        .and(client_ip(state.clone()))
        .and(req_info())
        .and(warp::body::content_length_limit(LOGIN_FORM_LIMIT))
        .and(warp::body::bytes())
        .and_then(|st, ip, info, body: warp::hyper::body::Bytes| async move {
            match parse_login_form(&body) {
                Some(form) => login_form_submit(st, ip, info, form).await,
                None => Ok(html_page(
                    StatusCode::BAD_REQUEST,
                    login_page(&st.cfg.app_name, Some("Missing user or password.")),
                )),
            }
        });
    let logout = warp::path!("logout")
        .and(warp::get().or(warp::post()).unify())
        .and(st())
        .and(req_info())
        .and_then(logout);
    let scoped = || page_scope(state.clone());
    let dash = scoped()
        .and(warp::path::end())
        .and(warp::get())
        .and(page())
        .and(st())
        .and_then(dashboard_page);
    let versions = scoped()
        .and(warp::path!("versions"))
        .and(warp::get())
        .and(page())
        .and(st())
        .and(warp::query::<InstanceQuery>())
        .and_then(versions_page);
    let events = scoped()
        .and(warp::path!("events"))
        .and(warp::get())
        .and(page())
        .and(st())
        .and_then(events_page);
    let actors = warp::path!("debug" / "actors")
        .and(warp::get())
        .and(page())
        .and(st())
        .and_then(actors_page);
    let terminal = scoped()
        .and(warp::path!("instances" / u32 / "terminal"))
        .and(warp::get())
        .and(page())
        .map(|scope: Scope, i: u32| html_page(StatusCode::OK, terminal_page(scope.here(), i)));
    login_get
        .or(login_post)
        .unify()
        .or(logout)
        .unify()
        .or(dash)
        .unify()
        .or(versions)
        .unify()
        .or(events)
        .unify()
        .or(actors)
        .unify()
        .or(terminal)
        .unify()
        .boxed()
}
