//! The overview (`/` when several apps are configured): one row per app
//! with its versions, its instances' states, its last deployment and its
//! alerts, linking to the app's own dashboard (`/apps/{app}`); the host's
//! recent events below. `assets/app.js` refreshes the rows from
//! `GET /api/v1/apps`.
//!
//! Invariant: the row of an app whose engine did not answer in time says
//! so (it is never left out or shown as empty).

use std::sync::Arc;

use deployex_actors::model::{InstanceState, Status};
use maud::{Markup, html};
use warp::Rejection;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::AppState;
use crate::api::STATUS_TIMEOUT;

use super::dashboard::event_row_of;
use super::format::{fmt_duration_ms, state_name};
use super::{Here, html_page, layout};

/// The distinct versions the app's instances run, in instance order.
pub fn running_versions(s: &Status) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in s.instances.iter().filter_map(|i| i.version.clone()) {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// What an operator must look at, worst first: engine not answering,
/// last error, instances not running, ghosted versions, a deployment in
/// progress. Empty: nothing to see.
pub fn alerts(s: &Status) -> Vec<String> {
    let mut out = Vec::new();
    if s.stale {
        out.push("some actors did not answer in time".to_string());
    }
    if let Some(e) = &s.last_error {
        out.push(e.clone());
    }
    let down = s
        .instances
        .iter()
        .filter(|i| i.state != InstanceState::Running)
        .count();
    if down > 0 {
        out.push(format!(
            "{down} of {} instances not running",
            s.instances.len()
        ));
    }
    if !s.ghosted_versions.is_empty() {
        out.push(format!("ghosted: {}", s.ghosted_versions.join(", ")));
    }
    if let Some(p) = &s.deploying {
        out.push(format!(
            "deploying {} to instance {}",
            p.version, p.instance
        ));
    }
    out
}

fn last_deploy(s: &Status) -> String {
    match &s.deploy_durations.last {
        Some(l) => format!(
            "{} to instance {} in {} ({})",
            l.version,
            l.instance,
            fmt_duration_ms(l.duration_ms),
            l.finished_at
        ),
        None => "—".into(),
    }
}

fn row(app: &str, status: Option<&Status>) -> Markup {
    html! {
        tr data-app=(app) {
            td { a href={ "/apps/" (app) } { (app) } }
            @match status {
                Some(s) => {
                    td data-f="versions" { (running_versions(s).join(", ")) }
                    td data-f="states" {
                        @for i in &s.instances {
                            span.badge data-state=(state_name(i.state)) title={ "instance " (i.instance) } { (i.instance) ": " (state_name(i.state).replace('_', " ")) }
                            " "
                        }
                    }
                    td data-f="mode" { (s.mode) }
                    td data-f="last_deploy" { (last_deploy(s)) }
                    td data-f="alerts" .warn[!alerts(s).is_empty()] {
                        @let a = alerts(s);
                        @if a.is_empty() { "—" } @else { (a.join("; ")) }
                    }
                }
                None => {
                    td colspan="5" .warn data-f="alerts" { "The engine did not answer in time." }
                }
            }
        }
    }
}

pub(super) async fn overview_page(state: Arc<AppState>) -> Result<Response, Rejection> {
    let views = state.all_views();
    let statuses = futures::future::join_all(
        views
            .iter()
            .map(|v| tokio::time::timeout(STATUS_TIMEOUT, v.status())),
    )
    .await;
    let events = state.engine.events(10).await;
    let body = html! {
        section.card.overview {
            header { h2 { "Applications" } span.hint { (views.len()) " on this host" } }
            div.table-wrap {
                table #apps {
                    thead { tr { th { "App" } th { "Versions" } th { "Instances" } th { "Mode" } th { "Last deploy" } th { "Alerts" } } }
                    tbody {
                        @for (v, s) in views.iter().zip(&statuses) {
                            (row(&v.name, s.as_ref().ok().map(|s| &**s)))
                        }
                    }
                }
            }
        }
        section.card.events {
            header { h2 { "Recent events" } a href="/events" { "all" } }
            ol.timeline #events {
                @for e in &events { (event_row_of(e, true)) }
                @if events.is_empty() { li.empty { "No event yet." } }
            }
        }
    };
    Ok(html_page(
        StatusCode::OK,
        layout("Overview", Here::top("all apps"), "overview", body, true),
    ))
}
