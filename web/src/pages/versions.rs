//! The version history page (all instances, or one).

use std::sync::Arc;

use maud::html;
use serde::Deserialize;
use warp::Rejection;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::AppState;
use crate::scope::Scope;

use super::format::kind_name;
use super::{html_page, layout};

#[derive(Debug, Deserialize)]
pub struct InstanceQuery {
    pub instance: Option<u32>,
}

pub(super) async fn versions_page(
    scope: Scope,
    _state: Arc<AppState>,
    q: InstanceQuery,
) -> Result<Response, Rejection> {
    let history = scope.engine().versions(q.instance).await;
    let base = &scope.base;
    let title = match q.instance {
        Some(i) => format!("Version history of instance {i}"),
        None => "Version history".to_string(),
    };
    let body = html! {
        h1 { (title) }
        @if q.instance.is_some() { p { a href={ (base) "/versions" } { "All instances" } } }
        div.table-wrap {
            table {
                thead { tr { th { "Version" } th { "Instance" } th { "Deployment" } th { "Ref" } th { "Hash" } th { "At (UTC)" } } }
                tbody {
                    @for h in &history {
                        tr {
                            td { (h.version) }
                            td { a href={ (base) "/versions?instance=" (h.instance) } { (h.instance) } }
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
        layout("Versions", scope.here(), "versions", body, true),
    ))
}
