//! The observer: a read-only look inside an instance's node (processes,
//! one process in detail, supervision trees, ETS tables), as JSON and as a
//! page. The work happens on the node (`deployex_actors::observer`).
//!
//! Routes (all need a session):
//! - `GET /api/v1/instances/{i}/processes?sort=memory|reductions|message_queue_len&limit=N`
//!   (default memory, 50; at most 1000): sorted descending; the header
//!   `x-deployex-reply-bytes` gives the size of the node's reply;
//! - `GET /api/v1/instances/{i}/processes/{pid}` (`<0.123.0>`, URL-encoded);
//! - `GET /api/v1/instances/{i}/supervision`, `GET /api/v1/instances/{i}/ets`;
//! - `GET /instances/{i}/observer`: the page, rendered with the supervision
//!   trees, the process table and the ETS tables; `observe.js` refreshes
//!   the table and opens process details.
//!
//! Errors: 400 bad input, 404 no such instance or process, 502 the node
//! failed or is not connected, 504 the node did not finish in time.
//! Everything from a node is rendered as text (maud escapes; the script
//! uses `textContent`).

use std::sync::Arc;

use deployex_actors::dist::DistError;
use deployex_actors::error::RpcError;
use deployex_actors::observer::{MAX_LIMIT, ObserveRequest, Observed, ObserverError, SortKey};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::guard::{Guard, Session, authed, json_error, json_status};
use crate::pages::{html_page, layout};
use crate::scope::{Scope, api_scope, page_scope};

/// Default number of processes listed.
pub const DEFAULT_LIMIT: u32 = 50;

#[derive(Debug, Deserialize)]
pub struct ProcessesQuery {
    pub sort: Option<String>,
    pub limit: Option<u32>,
}

fn error_response(e: &ObserverError) -> Response {
    let status = match e {
        ObserverError::NoSuchInstance(_) | ObserverError::NoSuchProcess(_) => StatusCode::NOT_FOUND,
        ObserverError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ObserverError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ObserverError::Rpc { error, .. } => match error {
            RpcError::WatcherDown | RpcError::NotConnected { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RpcError::Dist(DistError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        },
        ObserverError::Node { .. } => StatusCode::BAD_GATEWAY,
    };
    json_error(status, e.to_string())
}

fn answer(r: Result<Observed, ObserverError>) -> Response {
    match r {
        Ok(o) => {
            let mut resp = json_status(StatusCode::OK, &o.json);
            if let Ok(v) = warp::http::HeaderValue::from_str(&o.reply_bytes.to_string()) {
                resp.headers_mut().insert("x-deployex-reply-bytes", v);
            }
            resp
        }
        Err(e) => error_response(&e),
    }
}

/// The processes request of a query, or why it is invalid.
pub fn processes_request(q: &ProcessesQuery) -> Result<ObserveRequest, ObserverError> {
    let sort = match q.sort.as_deref() {
        None => SortKey::Memory,
        Some(s) => SortKey::parse(s).ok_or_else(|| {
            ObserverError::BadRequest("sort must be memory, reductions or message_queue_len".into())
        })?,
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ObserverError::BadRequest(format!(
            "limit must be 1..={MAX_LIMIT}"
        )));
    }
    Ok(ObserveRequest::Processes { sort, limit })
}

async fn processes(scope: Scope, i: u32, q: ProcessesQuery) -> Result<Response, Rejection> {
    Ok(match processes_request(&q) {
        Ok(req) => answer(scope.engine().observe(i, req).await),
        Err(e) => error_response(&e),
    })
}

async fn process(scope: Scope, i: u32, pid: String) -> Result<Response, Rejection> {
    let pid = percent_decode(&pid);
    Ok(answer(
        scope
            .engine()
            .observe(i, ObserveRequest::Process { pid })
            .await,
    ))
}

/// `%3C0.1.0%3E` → `<0.1.0>` (only `%XX` escapes; anything odd is kept
/// and then refused by the pid check).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn simple(scope: Scope, i: u32, req: ObserveRequest) -> Result<Response, Rejection> {
    Ok(answer(scope.engine().observe(i, req).await))
}

// ------------------------------------------------------------------ page --

fn s(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn process_rows(list: &Value) -> Markup {
    html! {
        @for p in list.as_array().map(Vec::as_slice).unwrap_or_default() {
            tr {
                td { button.link.pid data-pid=(s(&p["pid"])) { (s(&p["pid"])) } }
                td { (s(&p["name"])) }
                td.mono { (s(&p["current_function"])) }
                td.mono { (s(&p["initial_call"])) }
                td.num { (s(&p["memory"])) }
                td.num { (s(&p["reductions"])) }
                td.num { (s(&p["message_queue_len"])) }
            }
        }
    }
}

fn tree(children: &Value) -> Markup {
    html! {
        ul.tree {
            @for c in children.as_array().map(Vec::as_slice).unwrap_or_default() {
                li data-type=(s(&c["type"])) {
                    span.kind { (s(&c["type"])) }
                    " "
                    span.id { (s(&c["id"])) }
                    " "
                    @if let Some(pid) = c["pid"].as_str().filter(|p| p.starts_with('<')) {
                        button.link.pid data-pid=(pid) { (pid) }
                    } @else {
                        span.muted { (s(&c["pid"])) }
                    }
                    " "
                    span.mods { (c["modules"].as_array().map(|m| m.iter().map(s).collect::<Vec<_>>().join(", ")).unwrap_or_else(|| s(&c["modules"]))) }
                    @if c["children"].as_array().is_some_and(|a| !a.is_empty()) {
                        (tree(&c["children"]))
                    }
                }
            }
        }
    }
}

fn failed(what: &str, e: &ObserverError) -> Markup {
    html! { p.error { (what) ": " (e.to_string()) } }
}

async fn observer_page(scope: Scope, i: u32) -> Result<Response, Rejection> {
    let e = scope.engine();
    let (procs, sup, ets, history) = futures::join!(
        e.observe(
            i,
            ObserveRequest::Processes {
                sort: SortKey::Memory,
                limit: DEFAULT_LIMIT
            }
        ),
        e.observe(i, ObserveRequest::Supervision),
        e.observe(i, ObserveRequest::Ets),
        e.instance_history(i, None),
    );
    let Some(history) = history else {
        return Ok(html_page(
            StatusCode::NOT_FOUND,
            layout(
                "Observer",
                scope.here(),
                "observer",
                html! { p.error { "No such instance: " (i) } },
                true,
            ),
        ));
    };
    let body = html! {
        link rel="stylesheet" href="/static/observe.css";
        script src="/static/observe.js" defer {}
        h1 { "Observer · instance " (i) }
        p.hint { "Read-only. Computed on the node; refreshes every 2 s while “auto-refresh” is on." }
        section.card.charts #charts data-live={ (scope.api()) "/history/stream" } data-instance=(i) {
            header { h2 { "Metrics" } span.hint { "last hour, every " (history.interval_ms) " ms" } }
            div.chart-grid {
                @for spec in crate::charts::INSTANCE_CHARTS { (crate::charts::chart(&i.to_string(), spec, &history)) }
            }
        }
        div.observer-grid {
            section.card #processes data-instance=(i) {
                header {
                    h2 { "Processes" }
                    label { input #auto-refresh type="checkbox" checked; " auto-refresh" }
                }
                table.proc {
                    thead { tr {
                        th { "pid" } th { "name" } th { "current function" } th { "initial call" }
                        th.num.sort data-sort="memory" aria-sort="descending" { "memory" }
                        th.num.sort data-sort="reductions" { "reductions" }
                        th.num.sort data-sort="message_queue_len" { "queue" }
                    } }
                    tbody #proc-rows {
                        @match &procs {
                            Ok(o) => (process_rows(&o.json)),
                            Err(err) => tr { td colspan="7" { (failed("processes", err)) } },
                        }
                    }
                }
            }
            section.card #process-detail hidden {
                header { h2 { "Process " span #detail-pid {} } button #detail-close { "Close" } }
                dl #detail-fields {}
                h3 { "Current stacktrace" } pre #detail-stack {}
                h3 { "State (sys:get_state)" } pre #detail-state {}
            }
            section.card #supervision {
                header { h2 { "Supervision trees" } }
                @match &sup {
                    Ok(o) => {
                        @for app in o.json.as_array().map(Vec::as_slice).unwrap_or_default() {
                            @if !app["supervisor"].is_null() {
                                details open[app["children"].as_array().is_some_and(|c| c.len() < 50)] {
                                    summary {
                                        strong { (s(&app["application"])) } " "
                                        span.id { (s(&app["supervisor"]["name"])) } " "
                                        span.mods { (s(&app["supervisor"]["module"])) } " "
                                        button.link.pid data-pid=(s(&app["supervisor"]["pid"])) { (s(&app["supervisor"]["pid"])) }
                                    }
                                    (tree(&app["children"]))
                                }
                            }
                        }
                    }
                    Err(err) => (failed("supervision", err)),
                }
            }
            section.card #ets {
                header { h2 { "ETS tables" } }
                @match &ets {
                    Ok(o) => {
                        table {
                            thead { tr { th { "name" } th { "owner" } th.num { "size" } th.num { "memory" } th { "type" } th { "protection" } } }
                            tbody {
                                @for t in o.json.as_array().map(Vec::as_slice).unwrap_or_default() {
                                    tr {
                                        td { (s(&t["name"])) }
                                        td { button.link.pid data-pid=(s(&t["owner"])) { (s(&t["owner"])) } }
                                        td.num { (s(&t["size"])) }
                                        td.num { (crate::pages::fmt_bytes(t["memory"].as_u64().unwrap_or(0))) }
                                        td { (s(&t["type"])) }
                                        td { (s(&t["protection"])) }
                                    }
                                }
                            }
                        }
                    }
                    Err(err) => (failed("ets", err)),
                }
            }
        }
    };
    Ok(html_page(
        StatusCode::OK,
        layout("Observer", scope.here(), "observer", body, true),
    ))
}

pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    let api = || {
        authed(state.clone(), Guard::Api)
            .map(|_: Session| ())
            .untuple_one()
    };
    let page = || {
        authed(state.clone(), Guard::Page)
            .map(|_: Session| ())
            .untuple_one()
    };
    let scoped = || api_scope(state.clone());
    let list = scoped()
        .and(warp::path!("instances" / u32 / "processes"))
        .and(warp::get())
        .and(api())
        .and(warp::query::<ProcessesQuery>())
        .and_then(processes);
    let one = scoped()
        .and(warp::path!("instances" / u32 / "processes" / String))
        .and(warp::get())
        .and(api())
        .and_then(process);
    let sup = scoped()
        .and(warp::path!("instances" / u32 / "supervision"))
        .and(warp::get())
        .and(api())
        .and_then(|sc, i| simple(sc, i, ObserveRequest::Supervision));
    let ets = scoped()
        .and(warp::path!("instances" / u32 / "ets"))
        .and(warp::get())
        .and(api())
        .and_then(|sc, i| simple(sc, i, ObserveRequest::Ets));
    let page = page_scope(state.clone())
        .and(warp::path!("instances" / u32 / "observer"))
        .and(warp::get())
        .and(page())
        .and_then(observer_page);
    list.or(one)
        .unify()
        .or(sup)
        .unify()
        .or(ets)
        .unify()
        .or(page)
        .unify()
        .map(Reply::into_response)
        .boxed()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rpc_failures_map_to_their_status() {
        let rpc = |error| ObserverError::Rpc {
            node: "a@h".into(),
            error,
        };
        let cases = [
            (rpc(RpcError::WatcherDown), 503),
            (rpc(RpcError::NotConnected { node: "a@h".into() }), 503),
            (
                rpc(RpcError::Dist(DistError::Timeout {
                    node: "a@h".into(),
                    what: "rpc".into(),
                })),
                504,
            ),
            (
                rpc(RpcError::Dist(DistError::BadRpc {
                    node: "a@h".into(),
                    reason: "undef".into(),
                })),
                502,
            ),
            (ObserverError::Timeout, 504),
        ];
        for (error, status) in cases {
            assert_eq!(error_response(&error).status().as_u16(), status, "{error}");
        }
        let text = rpc(RpcError::NotConnected { node: "a@h".into() }).to_string();
        assert_eq!(text, "node a@h: node a@h is not connected");
    }

    #[test]
    fn query_checks() {
        let q = |sort: Option<&str>, limit| ProcessesQuery {
            sort: sort.map(str::to_owned),
            limit,
        };
        assert_eq!(
            processes_request(&q(None, None)).unwrap(),
            ObserveRequest::Processes {
                sort: SortKey::Memory,
                limit: 50
            }
        );
        assert!(processes_request(&q(Some("reductions"), Some(1000))).is_ok());
        assert!(processes_request(&q(Some("x"), None)).is_err());
        assert!(processes_request(&q(None, Some(1001))).is_err());
        assert!(processes_request(&q(None, Some(0))).is_err());
    }

    #[test]
    fn pid_in_the_path() {
        assert_eq!(percent_decode("%3C0.12.0%3E"), "<0.12.0>");
        assert_eq!(percent_decode("<0.1.0>"), "<0.1.0>");
        assert_eq!(percent_decode("%3"), "%3");
    }
}
