//! The fleet page (`/fleet`, fleet mode): every host with its instances,
//! the deployment slots and the fleet ghosts, rendered from
//! [`Engine::fleet`](deployex_actors::engine::Engine::fleet) (the view the
//! host's fleet task last read; JSON at `GET /api/v1/fleet`).

use std::sync::Arc;

use maud::{Markup, html};
use serde_json::Value;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::AppState;
use crate::guard::{Guard, Session, authed};
use crate::pages::{html_page, layout};
use crate::scope::{Scope, page_scope};

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn seconds(v: &Value) -> String {
    format!("{:.1} s", v.as_u64().unwrap_or(0) as f64 / 1000.0)
}

fn empty() -> Vec<Value> {
    Vec::new()
}

fn fleet(view: &Value) -> Markup {
    let hosts = view["hosts"].as_array().cloned().unwrap_or_else(empty);
    let claims = view["claims"].as_array().cloned().unwrap_or_else(empty);
    let ghosts = view["ghosts"].as_array().cloned().unwrap_or_else(empty);
    html! {
        h1 { "Fleet" }
        p.hint {
            "This host: " strong { (text(&view["host_id"])) } ". "
            "At most " (text(&view["max_parallel"])) " host(s) deploy a version at once; "
            "a slot not renewed for " (seconds(&view["lease_ms"])) " is free. As JSON: "
            code { "GET /api/v1/fleet" } "."
        }
        @if let Some(e) = view["last_error"].as_str() {
            p.error { "Store: " (e) }
        }
        section.card {
            header { h2 { "Hosts" } }
            table {
                thead { tr { th { "Host" } th { "Last seen" } th { "Instances" } th { "Deploying" } th { "Last error" } } }
                tbody {
                    @for h in &hosts {
                        tr {
                            td { (text(&h["host"])) }
                            td { (seconds(&h["age_ms"])) " ago" }
                            td {
                                @for i in h["instances"].as_array().cloned().unwrap_or_else(empty) {
                                    span.instance { (text(&i["instance"])) ": " (text(&i["version"])) " " (text(&i["state"])) } " "
                                }
                            }
                            td { (text(&h["deploying"]["version"])) }
                            td { (text(&h["last_error"])) }
                        }
                    }
                }
            }
        }
        section.card {
            header { h2 { "Deployment slots" } }
            @if claims.is_empty() {
                p.empty { "No host holds a slot." }
            } @else {
                table {
                    thead { tr { th { "Version" } th { "Slot" } th { "Host" } th { "Renewed" } th { "Lease" } th { "Canary" } } }
                    tbody {
                        @for c in &claims {
                            tr {
                                td { (text(&c["version"])) }
                                td { (text(&c["slot"])) }
                                td { (text(&c["host"])) }
                                td { (seconds(&c["age_ms"])) " ago" }
                                td { @if c["expired"] == true { "expired" } @else { "live" } }
                                td { @if c["canary"] == true { "canary" } }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            header { h2 { "Fleet ghosts" } }
            @if ghosts.is_empty() {
                p.empty { "No version is ghosted fleet-wide." }
            } @else {
                ul { @for g in &ghosts { li { (text(g)) } } }
            }
        }
    }
}

async fn fleet_page(scope: Scope) -> Result<Response, Rejection> {
    let (status, body) = match scope.engine().fleet().await {
        Some(view) => (StatusCode::OK, fleet(&view)),
        None => (
            StatusCode::NOT_FOUND,
            html! { h1 { "Fleet" } p.hint { "Fleet mode is off (DEPLOYEX_FLEET=true turns it on)." } },
        ),
    };
    Ok(html_page(
        status,
        layout("Fleet", scope.here(), "fleet", body, true),
    ))
}

/// `GET /fleet`, `GET /apps/{app}/fleet` (a session, like every page):
/// each app has its own fleet.
pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    let page = authed(state.clone(), Guard::Page)
        .map(|_: Session| ())
        .untuple_one();
    page_scope(state)
        .and(warp::path!("fleet"))
        .and(warp::get())
        .and(page)
        .and_then(fleet_page)
        .boxed()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_hosts_slots_and_ghosts() {
        let view = serde_json::json!({
            "host_id": "h1", "max_parallel": 2, "lease_ms": 4000, "last_error": null,
            "hosts": [{"host": "h1", "age_ms": 200, "instances": [{"instance": 1, "version": "0.1.0", "state": "running"}], "deploying": null}],
            "claims": [{"version": "0.1.1", "slot": "slot-0", "host": "h2", "age_ms": 10, "expired": false, "canary": true}],
            "ghosts": ["0.2.0"],
        });
        let html = super::fleet(&view).into_string();
        for needle in [
            "h1",
            "1: 0.1.0 running",
            "slot-0",
            "h2",
            "canary",
            "0.2.0",
            "4.0 s",
        ] {
            assert!(html.contains(needle), "{needle}: {html}");
        }
    }
}
