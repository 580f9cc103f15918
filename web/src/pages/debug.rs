//! The debug view of the actor tree: each actor's flight recorder.

use std::sync::Arc;

use deployex_actors::model::{ActorInfo, MessageRecord};
use maud::{Markup, html};
use warp::Rejection;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::AppState;

use super::{html_page, layout};

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

pub(super) async fn actors_page(state: Arc<AppState>) -> Result<Response, Rejection> {
    let root = state.engine.actors().await;
    let body = html! {
        h1 { "Actors" }
        p.hint { "Messages in flight are highlighted: a handler stuck there blocks its actor." }
        ul.tree #actors { (actor_tree(&root)) }
    };
    Ok(html_page(
        StatusCode::OK,
        layout(
            "Actors",
            super::Here::top(&state.cfg.app_name),
            "actors",
            body,
            true,
        ),
    ))
}
