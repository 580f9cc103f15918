//! The HTML pages (maud): login/logout, the dashboard, version history,
//! the debug view of the actor tree, and the shells of the log and terminal
//! pages. Live parts are filled by `assets/app.js` from SSE/websockets.
//!
//! Invariants: every page is rendered from [`Engine`] calls only; all data
//! goes through maud's escaping; pages carry a CSP that forbids inline
//! scripts, so page parameters travel in `data-*` attributes.
//!
//! [`Engine`]: deployex_actors::engine::Engine

use std::net::IpAddr;
use std::sync::Arc;

use deployex_actors::events::Event;
use deployex_actors::model::{
    ActorInfo, BeamStats, BootPhase, DeploymentKind, HistoryEntry, InstanceState, InstanceStatus,
    MessageRecord, Status,
};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::api::{LoginOutcome, STATUS_TIMEOUT, attempt_login};
use crate::assets::{XTERM_FIT_VERSION, XTERM_VERSION};
use crate::auth;
use crate::guard::{Guard, ReqInfo, Session, authed, client_ip, origin_ok, req_info, with_state};

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

fn redirect(to: &'static str, cookie: Option<String>) -> Response {
    let mut b = warp::http::Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to);
    if let Some(c) = cookie {
        b = b.header(header::SET_COOKIE, c);
    }
    b.body(Vec::<u8>::new().into()).unwrap_or_default()
}

/// `1d 2h`, `3h 4m`, `5m 6s`, `7s`.
pub fn fmt_uptime(s: u64) -> String {
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

/// `512 B`, `1.5 KiB`, `52.3 MiB`, `1.2 GiB`: binary units, as `erlang:memory` counts.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `1.5 s`, `2m 5s`: how long a deployment took.
pub fn fmt_duration_ms(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        fmt_uptime(ms / 1000)
    }
}

fn state_name(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Starting => "starting",
        InstanceState::Running => "running",
        InstanceState::PreCommands => "pre_commands",
        InstanceState::PreCommandsFailed => "pre_commands_failed",
        InstanceState::CrashBackoff => "crash_backoff",
        InstanceState::Stopped => "stopped",
        InstanceState::Deploying => "deploying",
    }
}

fn kind_name(k: DeploymentKind) -> &'static str {
    match k {
        DeploymentKind::FullDeployment => "full_deployment",
        DeploymentKind::HotUpgrade => "hot_upgrade",
        DeploymentKind::Rollback => "rollback",
    }
}

/// The common frame: header with navigation and logout.
pub fn layout(title: &str, app: &str, page: &str, body: Markup, logged_in: bool) -> Markup {
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
            body data-page=(page) {
                header.top {
                    a.brand href="/" { "deployex" span.app { (app) } }
                    @if logged_in {
                        nav {
                            a href="/" { "Dashboard" }
                            a href="/versions" { "Versions" }
                            a href="/events" { "Events" }
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

// ---------------------------------------------------------------- login --

#[derive(Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
}

/// Longest login form body read.
pub const LOGIN_FORM_LIMIT: u64 = 16 * 1024;

/// The login form body (`application/x-www-form-urlencoded`); `None` when
/// it is not one (missing field, bad encoding). Fuzzed (`login_form`).
pub fn parse_login_form(body: &[u8]) -> Option<LoginForm> {
    serde_urlencoded::from_bytes(body).ok()
}

/// The body a browser would send for `form` (the fuzz check's inverse).
pub fn encode_login_form(form: &LoginForm) -> String {
    serde_urlencoded::to_string(form).unwrap_or_default()
}

fn login_page(app: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        app,
        "login",
        html! {
            form.card.login method="post" action="/login" {
                h1 { "Log in" }
                @if let Some(e) = error { p.error { (e) } }
                label { "User" input name="username" value="admin" autocomplete="username" required; }
                label { "Password" input name="password" type="password" autocomplete="current-password" required autofocus; }
                button.primary type="submit" { "Log in" }
            }
        },
        false,
    )
}

/// The form login. A browser always sends an `Origin` with a form POST:
/// one that is not the dashboard's is refused (login CSRF); a client
/// without any (curl) is let through, it carries no victim's cookies.
async fn login_form_submit(
    state: Arc<AppState>,
    ip: IpAddr,
    info: ReqInfo,
    form: LoginForm,
) -> Result<Response, Rejection> {
    if (info.origin.is_some() || info.referer.is_some()) && !origin_ok(&state, &info) {
        return Err(warp::reject::custom(crate::guard::Forbidden));
    }
    let app = &state.cfg.app_name;
    Ok(
        match attempt_login(&state, ip, &form.username, &form.password).await {
            LoginOutcome::Ok(token) => redirect(
                "/",
                Some(auth::cookie_header(
                    &token,
                    state.cfg.session_ttl,
                    state.cfg.secure_cookie,
                )),
            ),
            LoginOutcome::Wrong => html_page(
                StatusCode::UNAUTHORIZED,
                login_page(app, Some("Invalid user or password.")),
            ),
            LoginOutcome::Limited => html_page(
                StatusCode::TOO_MANY_REQUESTS,
                login_page(app, Some("Too many failed logins: wait a minute.")),
            ),
            LoginOutcome::Failed => html_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                login_page(app, Some("The login check failed.")),
            ),
        },
    )
}

/// Logout revokes the token and clears the cookie. A cross-origin POST is
/// refused like any other cookie-session state change.
async fn logout(state: Arc<AppState>, info: ReqInfo) -> Result<Response, Rejection> {
    let is_post = info.method == warp::http::Method::POST;
    if is_post && info.cookie.is_some() && !origin_ok(&state, &info) {
        return Err(warp::reject::custom(crate::guard::Forbidden));
    }
    if let Some(claims) = info
        .cookie
        .as_deref()
        .and_then(|c| auth::session_cookie(c, auth::cookie_name(state.cfg.secure_cookie)))
        .and_then(|t| state.tokens.verify(t).ok())
    {
        state.tokens.revoke(&claims);
    }
    Ok(redirect(
        "/login",
        Some(auth::clear_cookie_header(state.cfg.secure_cookie)),
    ))
}

// ------------------------------------------------------------ dashboard --

/// The last `n` distinct versions of the history, newest first.
pub fn recent_versions(history: &[HistoryEntry], n: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in history {
        if !out.contains(&h.version) {
            out.push(h.version.clone());
            if out.len() == n {
                break;
            }
        }
    }
    out
}

fn field(label: &str, key: &str, value: Markup) -> Markup {
    html! {
        div.field { dt { (label) } dd data-f=(key) { (value) } }
    }
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "—".into())
}

/// The mTLS badge: shown when distribution runs over mutual TLS.
fn tls_badge(tls: bool) -> Markup {
    html! {
        span.badge.tls data-f="tls" hidden[!tls] title="Erlang distribution over mutual TLS" { "mTLS" }
    }
}

/// A BEAM telemetry value, `—` without a sample.
fn beam_value(beam: Option<&BeamStats>, f: impl Fn(&BeamStats) -> Option<String>) -> String {
    beam.and_then(f).unwrap_or_else(|| "—".into())
}

fn boot_name(boot: Option<BootPhase>) -> &'static str {
    match boot {
        Some(BootPhase::Starting) => "starting",
        Some(BootPhase::Started) => "started",
        None => "—",
    }
}

/// One event as a timeline row (text only: messages come from the engine
/// and may quote what a release printed).
fn event_row(e: &Event) -> Markup {
    html! {
        li.event data-event=(e.event.as_str()) {
            span.at { (e.at) }
            " "
            span.badge.kind { (e.event.as_str().replace('_', " ")) }
            @if let Some(i) = e.instance { " " span.instance { "instance " (i) } }
            @if let Some(v) = &e.version { " " span.version { (v) } }
            " "
            span.message { (e.message) }
        }
    }
}

fn instance_card(i: &InstanceStatus) -> Markup {
    let state = state_name(i.state);
    let beam = i.beam.as_ref();
    html! {
        section.card.instance data-instance=(i.instance) .stale[i.stale] {
            header {
                h2 { "Instance " (i.instance) }
                span.badges {
                    (tls_badge(i.tls))
                    " "
                    span.badge data-f="state" data-state=(state) { (state.replace('_', " ")) }
                }
            }
            dl {
                (field("Version", "version", html!{ (opt(&i.version)) }))
                (field("OTP", "otp_connected", html!{ (if i.otp_connected { "connected" } else { "not connected" }) }))
                (field("BEAM memory", "beam_memory", html!{ (beam_value(beam, |b| Some(fmt_bytes(b.memory_bytes)))) }))
                (field("BEAM processes", "beam_processes", html!{ (beam_value(beam, |b| Some(b.processes.to_string()))) }))
                (field("Run queue", "beam_run_queue", html!{ (beam_value(beam, |b| Some(b.run_queue.to_string()))) }))
                (field("Reductions/s", "beam_reductions", html!{ (beam_value(beam, |b| b.reductions_per_s.map(|r| r.to_string()))) }))
                (field("Last deployment", "last_deployment", html!{ (i.last_deployment.map(kind_name).unwrap_or("—").replace('_', " ")) }))
                div.field.warn[i.crash_restarts > 0] data-k="crash_restarts" { dt { "Crash restarts" } dd data-f="crash_restarts" { (i.crash_restarts) } }
                div.field.warn[i.forced_restarts > 0] data-k="forced_restarts" { dt { "Forced restarts" } dd data-f="forced_restarts" { (i.forced_restarts) } }
                div.field.warn[i.liveness_restarts > 0] data-k="liveness_restarts" { dt { "Liveness restarts" } dd data-f="liveness_restarts" { (i.liveness_restarts) } }
                div.field.warn[i.watchdog_restarts > 0] data-k="watchdog_restarts" { dt { "Watchdog restarts" } dd data-f="watchdog_restarts" { (i.watchdog_restarts) } }
                (field("Last restart", "last_restart_reason", html!{ (i.last_restart_reason.map(|r| r.as_str()).unwrap_or("—")) }))
                (field("Boot", "boot", html!{ (boot_name(i.boot)) }))
                (field("Uptime", "uptime", html!{ (i.uptime_s.map(fmt_uptime).unwrap_or_else(|| "—".into())) }))
                (field("Port", "port", html!{ (i.port) }))
                (field("Node", "node", html!{ (i.node) }))
                (field("OS pid", "os_pid", html!{ (i.os_pid.map(|p| p.to_string()).unwrap_or_else(|| "—".into())) }))
            }
            p.error data-f="last_error" hidden[i.last_error.is_none()] { (opt(&i.last_error)) }
            footer.actions {
                a href={ "/instances/" (i.instance) "/logs/stdout" } { "stdout" }
                a href={ "/instances/" (i.instance) "/logs/stderr" } { "stderr" }
                a href={ "/instances/" (i.instance) "/terminal" } { "terminal" }
                a href={ "/versions?instance=" (i.instance) } { "history" }
                button data-action="restart" data-instance=(i.instance) { "Restart" }
            }
        }
    }
}

fn dashboard(status: &Status, versions: &[String], events: &[Event]) -> Markup {
    let d = &status.deployex;
    let mode = match &status.manual_version {
        Some(v) => format!("{} ({v})", status.mode),
        None => status.mode.clone(),
    };
    let last_deploy = match &status.deploy_durations.last {
        Some(l) => format!(
            "{} ({} on {})",
            fmt_duration_ms(l.duration_ms),
            l.version,
            l.instance
        ),
        None => "—".into(),
    };
    let deploying = status.deploying.as_ref().map(|p| {
        format!(
            "Deploying {} to instance {}: {}",
            p.version, p.instance, p.step
        )
    });
    html! {
        div #deploying .banner hidden[deploying.is_none()] { (deploying.unwrap_or_default()) }
        div #stale .banner.warn hidden[!status.stale] { "Some parts of the engine did not answer in time: data may be stale." }
        div.cards {
            section.card.deployex #deployex {
                header {
                    h2 { "deployex" }
                    span.badges { (tls_badge(d.tls)) " " span.badge data-state="running" { "running" } }
                }
                dl {
                    (field("Version", "version", html!{ (d.version) }))
                    (field("Distribution", "distribution", html!{ (if d.tls { "mutual TLS" } else { "plain TCP" }) }))
                    (field("Last deploy took", "last_deploy", html!{ (last_deploy) }))
                    (field("Uptime", "uptime", html!{ (fmt_uptime(d.uptime_s)) }))
                    (field("Mode", "mode", html!{ (mode) }))
                    (field("Desired version", "desired_version", html!{ (opt(&status.desired_version)) }))
                    (field("Last ghosted", "last_ghosted", html!{ (status.ghosted_versions.last().cloned().unwrap_or_else(|| "—".into())) }))
                }
                p.error data-f="last_error" hidden[status.last_error.is_none()] { (opt(&status.last_error)) }
                div.actions {
                    label { "Pin version "
                        select #pin-version {
                            @for v in versions { option value=(v) { (v) } }
                        }
                    }
                    button data-action="pin" { "Pin" }
                    button data-action="automatic" { "Back to automatic" }
                }
                div.ghosted {
                    h3 { "Ghosted versions" }
                    ul #ghosted {
                        @for v in &status.ghosted_versions {
                            li { span { (v) } " " button data-action="unghost" data-version=(v) { "Un-ghost" } }
                        }
                    }
                }
            }
            @for i in &status.instances { (instance_card(i)) }
        }
        section.card.events {
            header { h2 { "Recent events" } a href="/events" { "all" } }
            ol.timeline #events {
                @for e in events { (event_row(e)) }
                @if events.is_empty() { li.empty { "No event yet." } }
            }
        }
    }
}

async fn events_page(state: Arc<AppState>) -> Result<Response, Rejection> {
    let events = state.engine.events(deployex_actors::events::KEEP).await;
    let body = html! {
        h1 { "Events" }
        p.hint { "Newest first; kept across restarts of deployex (the newest " (deployex_actors::events::KEEP) "). As JSON: " code { "GET /api/v1/events?limit=N" } "." }
        ol.timeline #events {
            @for e in &events { (event_row(e)) }
            @if events.is_empty() { li.empty { "No event yet." } }
        }
    };
    Ok(html_page(
        StatusCode::OK,
        layout("Events", &state.cfg.app_name, "events", body, true),
    ))
}

async fn dashboard_page(state: Arc<AppState>) -> Result<Response, Rejection> {
    let app = state.cfg.app_name.clone();
    let status = tokio::time::timeout(STATUS_TIMEOUT, state.status()).await;
    let Ok(status) = status else {
        return Ok(html_page(
            StatusCode::SERVICE_UNAVAILABLE,
            layout(
                "Dashboard",
                &app,
                "dashboard",
                html! { p.error { "The engine did not answer in time; reload to retry." } },
                true,
            ),
        ));
    };
    let history = state.history().await;
    let versions = recent_versions(&history, 10);
    let events = state.engine.events(10).await;
    let charts = crate::charts::dashboard_section(&state, &status).await;
    Ok(html_page(
        StatusCode::OK,
        layout(
            "Dashboard",
            &app,
            "dashboard",
            html! { (dashboard(&status, &versions, &events)) (charts) },
            true,
        ),
    ))
}

// -------------------------------------------------------------- versions --

#[derive(Debug, Deserialize)]
pub struct InstanceQuery {
    pub instance: Option<u32>,
}

async fn versions_page(state: Arc<AppState>, q: InstanceQuery) -> Result<Response, Rejection> {
    let history = state.engine.versions(q.instance).await;
    let title = match q.instance {
        Some(i) => format!("Version history of instance {i}"),
        None => "Version history".to_string(),
    };
    let body = html! {
        h1 { (title) }
        @if q.instance.is_some() { p { a href="/versions" { "All instances" } } }
        div.table-wrap {
            table {
                thead { tr { th { "Version" } th { "Instance" } th { "Deployment" } th { "Ref" } th { "Hash" } th { "At (UTC)" } } }
                tbody {
                    @for h in &history {
                        tr {
                            td { (h.version) }
                            td { a href={ "/versions?instance=" (h.instance) } { (h.instance) } }
                            td { (kind_name(h.deployment).replace('_', " ")) }
                            td.mono { (h.deploy_ref) }
                            td.mono { (h.hash.chars().take(12).collect::<String>()) }
                            td { (h.inserted_at) }
                        }
                    }
                    @if history.is_empty() { tr { td colspan="6" { "No deployment yet." } } }
                }
            }
        }
    };
    Ok(html_page(
        StatusCode::OK,
        layout("Versions", &state.cfg.app_name, "versions", body, true),
    ))
}

// ----------------------------------------------------------------- debug --

fn message_row(m: &MessageRecord, in_flight: bool) -> Markup {
    html! {
        li.msg.inflight[in_flight] {
            span.kind { (m.kind) }
            " "
            span.summary { (m.summary) }
            " "
            span.at { (m.at) }
            " "
            span.us { (m.handling_us.map(|u| format!("{u} µs")).unwrap_or_else(|| "in flight".into())) }
        }
    }
}

/// The actor tree, rendered the same way `app.js` renders updates.
pub fn actor_tree(a: &ActorInfo) -> Markup {
    html! {
        li.actor {
            div.actor-head .stuck[a.in_flight.is_some()] {
                strong { (a.name) } " "
                span.mono { (a.id) } " "
                span.badge data-state=(a.status) { (a.status) } " "
                span.restarts.warn[a.restarts > 0] { "restarts: " (a.restarts) }
            }
            ul.msgs {
                @if let Some(m) = &a.in_flight { (message_row(m, true)) }
                @for m in &a.messages { (message_row(m, false)) }
            }
            @if !a.children.is_empty() {
                ul.tree { @for c in &a.children { (actor_tree(c)) } }
            }
        }
    }
}

async fn actors_page(state: Arc<AppState>) -> Result<Response, Rejection> {
    let root = state.engine.actors().await;
    let body = html! {
        h1 { "Actors" }
        p.hint { "Messages in flight are highlighted: a handler stuck there blocks its actor." }
        ul.tree #actors { (actor_tree(&root)) }
    };
    Ok(html_page(
        StatusCode::OK,
        layout("Actors", &state.cfg.app_name, "actors", body, true),
    ))
}

// --------------------------------------------------- logs and terminal --

/// The logs page: the last lines rendered here, then followed over a
/// websocket from `data-offset`.
/// `follow`: the page follows new lines over a websocket (log files);
/// deployex's in-memory log is shown as of the request.
pub fn logs_page(
    app: &str,
    instance: u32,
    stream: &str,
    tail: &crate::logs::Tail,
    follow: bool,
) -> Markup {
    let who = if instance == 0 {
        "deployex".to_string()
    } else {
        format!("instance {instance}")
    };
    let other = if stream == "stdout" {
        "stderr"
    } else {
        "stdout"
    };
    layout(
        "Logs",
        app,
        "logs",
        html! {
            h1 { "Logs of " (who) " (" (stream) ")" }
            p.actions {
                a href={ "/instances/" (instance) "/logs/" (other) } { "switch to " (other) }
                @if follow {
                    " "
                    label { input #follow type="checkbox" checked; " follow" }
                }
            }
            @if let Some(n) = &tail.notice { p.notice #log-notice { (n) } } @else { p.notice #log-notice hidden {} }
            @if follow {
                pre #log .log data-ws={ "/instances/" (instance) "/logs/" (stream) "/ws?from=" (tail.offset) } {
                    @for l in &tail.lines { (crate::logs::render_line(l)) }
                }
            } @else {
                pre #log .log {
                    @for l in &tail.lines { (crate::logs::render_line(l)) }
                }
            }
        },
        true,
    )
}

fn terminal_page(app: &str, instance: u32) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                title { "Terminal " (instance) " · deployex" }
                link rel="stylesheet" href="/static/app.css";
                link rel="stylesheet" href={ "/static/xterm-" (XTERM_VERSION) ".css" };
                script src={ "/static/xterm-" (XTERM_VERSION) ".js" } defer {}
                script src={ "/static/addon-fit-" (XTERM_FIT_VERSION) ".js" } defer {}
                script src="/static/app.js" defer {}
            }
            body data-page="terminal" {
                header.top {
                    a.brand href="/" { "deployex" span.app { (app) } }
                    span { "Remote shell into instance " (instance) }
                    span #term-status {}
                }
                div #terminal data-ws={ "/instances/" (instance) "/terminal/ws" } {}
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
    let dash = warp::path::end()
        .and(warp::get())
        .and(page())
        .and(st())
        .and_then(dashboard_page);
    let versions = warp::path!("versions")
        .and(warp::get())
        .and(page())
        .and(st())
        .and(warp::query::<InstanceQuery>())
        .and_then(versions_page);
    let events = warp::path!("events")
        .and(warp::get())
        .and(page())
        .and(st())
        .and_then(events_page);
    let actors = warp::path!("debug" / "actors")
        .and(warp::get())
        .and(page())
        .and(st())
        .and_then(actors_page);
    let terminal = warp::path!("instances" / u32 / "terminal")
        .and(warp::get())
        .and(page())
        .and(st())
        .map(|i: u32, s: Arc<AppState>| {
            html_page(StatusCode::OK, terminal_page(&s.cfg.app_name, i))
        });
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
