//! The dashboard (instances, recent versions, events, charts) and the
//! events page.

use std::sync::Arc;

use deployex_actors::events::Event;
use deployex_actors::model::{BeamStats, BootPhase, HistoryEntry, InstanceStatus, Status};
use maud::{Markup, html};
use warp::Rejection;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::AppState;
use crate::api::STATUS_TIMEOUT;
use crate::scope::Scope;

use super::format::{fmt_bytes, fmt_duration_ms, fmt_uptime, kind_name, state_name};
use super::{html_page, layout};

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
    event_row_of(e, false)
}

/// [`event_row`], naming the event's app when `with_app`.
pub(super) fn event_row_of(e: &Event, with_app: bool) -> Markup {
    html! {
        li.event data-event=(e.event.as_str()) data-app=(e.app) {
            span.at { (e.at) }
            " "
            @if with_app { span.badge.app { (e.app) } " " }
            span.badge.kind { (e.event.as_str().replace('_', " ")) }
            @if let Some(i) = e.instance { " " span.instance { "instance " (i) } }
            @if let Some(v) = &e.version { " " span.version { (v) } }
            " "
            span.message { (e.message) }
        }
    }
}

fn instance_card(base: &str, i: &InstanceStatus) -> Markup {
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
                a href={ (base) "/instances/" (i.instance) "/logs/stdout" } { "stdout" }
                a href={ (base) "/instances/" (i.instance) "/logs/stderr" } { "stderr" }
                a href={ (base) "/instances/" (i.instance) "/terminal" } { "terminal" }
                a href={ (base) "/versions?instance=" (i.instance) } { "history" }
                button data-action="restart" data-instance=(i.instance) { "Restart" }
            }
        }
    }
}

fn dashboard(base: &str, status: &Status, versions: &[String], events: &[Event]) -> Markup {
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
            @for i in &status.instances { (instance_card(base, i)) }
        }
        section.card.events {
            header { h2 { "Recent events" } a href={ (base) "/events" } { "all" } }
            ol.timeline #events {
                @for e in events { (event_row(e)) }
                @if events.is_empty() { li.empty { "No event yet." } }
            }
        }
    }
}

/// The events page: one app's (`/apps/{app}/events`), or the host's
/// timeline of every app (`/events`; each row names its app when several
/// are configured).
pub(super) async fn events_page(scope: Scope, state: Arc<AppState>) -> Result<Response, Rejection> {
    let keep = deployex_actors::events::KEEP;
    let (events, api) = if scope.prefixed() {
        (
            scope.app.events(keep).await,
            format!("{}/events", scope.api()),
        )
    } else {
        (
            scope.engine().events(keep).await,
            "/api/v1/events".to_string(),
        )
    };
    let with_app = !scope.prefixed() && state.several_apps();
    let body = html! {
        h1 { "Events" }
        p.hint { "Newest first; kept across restarts of deployex (the newest " (keep) " of the host). As JSON: " code { "GET " (api) "?limit=N" } "." }
        ol.timeline #events {
            @for e in &events { (event_row_of(e, with_app)) }
            @if events.is_empty() { li.empty { "No event yet." } }
        }
    };
    Ok(html_page(
        StatusCode::OK,
        layout("Events", scope.here(), "events", body, true),
    ))
}

/// `/` with several apps and no prefix: the overview; else one app's
/// dashboard (the deployex card and the instance cards).
pub(super) async fn dashboard_page(
    scope: Scope,
    state: Arc<AppState>,
) -> Result<Response, Rejection> {
    if !scope.prefixed() && state.several_apps() {
        return super::overview::overview_page(state).await;
    }
    let status = tokio::time::timeout(STATUS_TIMEOUT, scope.app.status()).await;
    let Ok(status) = status else {
        return Ok(html_page(
            StatusCode::SERVICE_UNAVAILABLE,
            layout(
                "Dashboard",
                scope.here(),
                "dashboard",
                html! { p.error { "The engine did not answer in time; reload to retry." } },
                true,
            ),
        ));
    };
    let history = scope.app.history().await;
    let versions = recent_versions(&history, 10);
    let events = scope.app.events(10).await;
    let charts = crate::charts::dashboard_section(&state, &scope, &status).await;
    Ok(html_page(
        StatusCode::OK,
        layout(
            "Dashboard",
            scope.here(),
            "dashboard",
            html! { (dashboard(&scope.base, &status, &versions, &events)) (charts) },
            true,
        ),
    ))
}
