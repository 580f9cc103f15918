//! Metrics over time: the history API, its live stream, the charts
//! (server-rendered SVG; `assets/observe.js` redraws them as points arrive)
//! and the host/BEAM gauges appended to `/metrics`.
//!
//! Routes (all need a session):
//! - `GET /api/v1/instances/{i}/history[?since=unix_ms]`,
//!   `GET /api/v1/host/history[?since=unix_ms]` → `{"interval_ms", "series":
//!   {name: [[unix_ms, v], …]}, "deploys": [[unix_ms, version], …]}`;
//! - `GET /api/v1/history/stream` (SSE): every [`STREAM_PERIOD`], the points
//!   newer than the last ones sent, as `{"host": Series, "instances": {"i":
//!   Series}}` (nothing is sent when nothing is new).
//!
//! Invariants: the web layer reads the history only through the `Engine`;
//! a chart is SVG drawn here from numbers (no text from a node reaches it
//! but version names, which maud escapes); no script or style from
//! elsewhere.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use deployex_actors::history::{Point, Series};
use deployex_actors::model::Status;
use futures::Stream;
use maud::{Markup, html};
use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::sse::Event;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::guard::{Guard, Session, authed, json_error, json_status, with_state};
use crate::scope::{Scope, api_scope};

/// How often the live stream looks for new points.
pub const STREAM_PERIOD: Duration = Duration::from_millis(1000);

#[derive(Debug, Deserialize)]
pub struct SinceQuery {
    pub since: Option<u64>,
}

async fn instance_history(scope: Scope, i: u32, q: SinceQuery) -> Result<Response, Rejection> {
    Ok(match scope.engine().instance_history(i, q.since).await {
        Some(s) => json_status(StatusCode::OK, &s),
        None => json_error(StatusCode::NOT_FOUND, format!("no such instance: {i}")),
    })
}

async fn host_history(q: SinceQuery, state: Arc<AppState>) -> Result<Response, Rejection> {
    Ok(json_status(
        StatusCode::OK,
        &state.engine.host_history(q.since).await,
    ))
}

/// The newest time in `s`.
fn newest(s: &Series) -> Option<u64> {
    s.series
        .values()
        .filter_map(|v| v.last().map(|p| p.0))
        .max()
}

fn has_points(s: &Series) -> bool {
    s.series.values().any(|v| !v.is_empty()) || !s.deploys.is_empty()
}

/// The live stream: new points of the host and every instance of the
/// scope's app.
fn stream(
    state: Arc<AppState>,
    scope: Scope,
    replicas: u32,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(1);
    let stopped = state.stopped();
    tokio::spawn(async move {
        tokio::pin!(stopped);
        let now = deployex_actors::history::unix_ms_now();
        // The page drew everything up to its load: start from now.
        let mut host_since = Some(now);
        let mut since: BTreeMap<u32, Option<u64>> =
            (1..=replicas).map(|i| (i, Some(now))).collect();
        let mut tick = tokio::time::interval(STREAM_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
                _ = &mut stopped => return,
            }
            let host = state.engine.host_history(host_since).await;
            let mut instances = BTreeMap::new();
            for (i, s) in since.iter_mut() {
                if let Some(series) = scope.engine().instance_history(*i, *s).await
                    && has_points(&series)
                {
                    *s = newest(&series).or(*s);
                    instances.insert(i.to_string(), series);
                }
            }
            let host_new = has_points(&host);
            if !host_new && instances.is_empty() {
                continue;
            }
            host_since = newest(&host).or(host_since);
            let json = serde_json::json!({
                "host": host_new.then_some(&host),
                "instances": instances,
            });
            if tx.send(json.to_string()).await.is_err() {
                return;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let json = rx.recv().await?;
        Some((Ok(Event::default().data(json)), rx))
    })
}

async fn history_stream(scope: Scope, state: Arc<AppState>) -> Result<Response, Rejection> {
    let replicas = tokio::time::timeout(crate::api::STATUS_TIMEOUT, scope.app.status())
        .await
        .map_or(0, |s| s.instances.len() as u32);
    Ok(
        warp::sse::reply(warp::sse::keep_alive().stream(stream(state, scope, replicas)))
            .into_response(),
    )
}

pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    let st = || with_state(state.clone());
    let auth = || {
        authed(state.clone(), Guard::Api)
            .map(|_: Session| ())
            .untuple_one()
    };
    let instance = api_scope(state.clone())
        .and(warp::path!("instances" / u32 / "history"))
        .and(warp::get())
        .and(auth())
        .and(warp::query::<SinceQuery>())
        .and_then(instance_history);
    let host = warp::path!("api" / "v1" / "host" / "history")
        .and(warp::get())
        .and(auth())
        .and(warp::query::<SinceQuery>())
        .and(st())
        .and_then(host_history);
    let live = api_scope(state.clone())
        .and(warp::path!("history" / "stream"))
        .and(warp::get())
        .and(auth())
        .and(st())
        .and_then(history_stream);
    instance.or(host).unify().or(live).unify().boxed()
}

// ---------------------------------------------------------------- charts --

/// How a chart prints its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Percent,
    Count,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Percent => "pct",
            Unit::Count => "count",
        }
    }
}

/// One chart: which target, which series, in which unit.
pub struct ChartSpec {
    pub title: &'static str,
    pub series: &'static [&'static str],
    pub unit: Unit,
}

pub const HOST_CHARTS: &[ChartSpec] = &[
    ChartSpec {
        title: "Host CPU %",
        series: &["cpu_pct"],
        unit: Unit::Percent,
    },
    ChartSpec {
        title: "Host memory used",
        series: &["mem_used_bytes"],
        unit: Unit::Bytes,
    },
    ChartSpec {
        title: "Load (1 min)",
        series: &["load1"],
        unit: Unit::Count,
    },
    ChartSpec {
        title: "Disk used (var dir)",
        series: &["disk_used_bytes"],
        unit: Unit::Bytes,
    },
];

pub const INSTANCE_CHARTS: &[ChartSpec] = &[
    ChartSpec {
        title: "Memory",
        series: &[
            "rss_bytes",
            "beam_memory_total",
            "beam_memory_processes",
            "beam_memory_binary",
            "beam_memory_ets",
        ],
        unit: Unit::Bytes,
    },
    ChartSpec {
        title: "CPU % (process group)",
        series: &["cpu_pct"],
        unit: Unit::Percent,
    },
    ChartSpec {
        title: "Erlang processes",
        series: &["beam_processes"],
        unit: Unit::Count,
    },
    ChartSpec {
        title: "Run queue",
        series: &["run_queue"],
        unit: Unit::Count,
    },
];

const W: f64 = 300.0;
const H: f64 = 90.0;

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => crate::pages::fmt_bytes(v.max(0.0) as u64),
        Unit::Percent => format!("{v:.1} %"),
        Unit::Count => {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        }
    }
}

/// The SVG `points` of `pts` in a `W`×`H` box over `[t0, t1]`×`[0, max]`.
fn polyline(pts: &[Point], t0: u64, t1: u64, max: f64) -> String {
    let span = (t1.saturating_sub(t0)).max(1) as f64;
    let mut out = String::with_capacity(pts.len() * 12);
    for p in pts {
        let x = (p.0.saturating_sub(t0)) as f64 / span * W;
        let y = H - (p.1 / max) * (H - 4.0);
        let _ = write!(out, "{x:.1},{y:.1} ");
    }
    out
}

/// A chart of `spec` for `target` (`host` or an instance number), drawn
/// from `data`.
pub fn chart(target: &str, spec: &ChartSpec, data: &Series) -> Markup {
    let empty = Vec::new();
    let lines: Vec<(&str, &Vec<Point>)> = spec
        .series
        .iter()
        .map(|name| (*name, data.series.get(name).unwrap_or(&empty)))
        .collect();
    let t0 = lines
        .iter()
        .filter_map(|(_, v)| v.first().map(|p| p.0))
        .min()
        .unwrap_or(0);
    let t1 = lines
        .iter()
        .filter_map(|(_, v)| v.last().map(|p| p.0))
        .max()
        .unwrap_or(0);
    let max = lines
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let max = if max <= 0.0 { 1.0 } else { max * 1.1 };
    let last = |v: &Vec<Point>| v.last().map(|p| fmt_value(p.1, spec.unit));
    html! {
        figure.chart data-target=(target) data-series=(spec.series.join(",")) data-unit=(spec.unit.as_str()) {
            figcaption {
                span.title { (spec.title) }
                span.max data-f="max" { (fmt_value(max / 1.1, spec.unit)) }
            }
            svg viewBox={ "0 0 " (W) " " (H) } preserveAspectRatio="none" role="img" aria-label=(spec.title) {
                line.axis x1="0" y1=(H) x2=(W) y2=(H) {}
                g.deploys {
                    @for (t, version) in data.deploys.iter().filter(|(t, _)| *t >= t0 && t1 > t0) {
                        @let x = (t - t0) as f64 / (t1 - t0) as f64 * W;
                        line.deploy x1=(format!("{x:.1}")) y1="0" x2=(format!("{x:.1}")) y2=(H) {
                            title { "deployed " (version) }
                        }
                    }
                }
                @for (n, (name, pts)) in lines.iter().enumerate() {
                    polyline class={ "s" (n) } data-s=(name) points=(polyline(pts, t0, t1, max)) {}
                }
                line.cursor x1="0" y1="0" x2="0" y2=(H) visibility="hidden" {}
            }
            ul.legend {
                @for (n, (name, pts)) in lines.iter().enumerate() {
                    li class={ "s" (n) } data-s=(name) {
                        span.swatch {} (name) ": " span.v { (last(pts).unwrap_or_else(|| "—".into())) }
                    }
                }
            }
            div.hover data-f="hover" {}
        }
    }
}

/// The dashboard's charts: the host's, then each instance's.
pub async fn dashboard_section(state: &AppState, scope: &Scope, status: &Status) -> Markup {
    let host = state.engine.host_history(None).await;
    let mut instances = Vec::new();
    for i in &status.instances {
        if let Some(s) = scope.engine().instance_history(i.instance, None).await {
            instances.push((i.instance, s));
        }
    }
    html! {
        link rel="stylesheet" href="/static/observe.css";
        script src="/static/observe.js" defer {}
        section.card.charts #charts data-live={ (scope.api()) "/history/stream" } {
            header { h2 { "Host" } span.hint { "last hour, every " (host.interval_ms) " ms" } }
            div.chart-grid {
                @for spec in HOST_CHARTS { (chart("host", spec, &host)) }
            }
        }
        @for (i, s) in &instances {
            section.card.charts data-instance=(i) {
                header {
                    h2 { "Instance " (i) }
                    a href={ (scope.base) "/instances/" (i) "/observer" } { "observer" }
                }
                div.chart-grid {
                    @for spec in INSTANCE_CHARTS { (chart(&i.to_string(), spec, s)) }
                }
            }
        }
    }
}

// --------------------------------------------------------------- metrics --

/// The host gauges and the BEAM gauges of each app's history's newest
/// points, appended to `/metrics` (an instance's BEAM gauges only while
/// its status carries a current sample, as the other BEAM gauges; each
/// series labelled with its app).
pub fn render_metrics(state: &AppState, apps: &[crate::metrics::AppMetrics], o: &mut String) {
    let host = apps
        .iter()
        .find_map(|a| a.latest.host)
        .or_else(|| state.engine.history_latest().host);
    if let Some(h) = host {
        for (name, help, v) in [
            (
                "deployex_host_cpu_percent",
                "Host CPU use over the last sampling period (all cores, 0-100).",
                f64::from(h.cpu_pct),
            ),
            (
                "deployex_host_memory_used_bytes",
                "Host memory in use (MemTotal - MemAvailable).",
                h.mem_used_kib as f64 * 1024.0,
            ),
            (
                "deployex_host_load1",
                "Host load average over 1 minute.",
                f64::from(h.load1),
            ),
            (
                "deployex_host_disk_used_bytes",
                "Used bytes of the filesystem holding the var dir.",
                h.disk_used_kib as f64 * 1024.0,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    }
    let has = |status: Option<&Status>,
               i: u32,
               f: fn(&deployex_actors::model::InstanceStatus) -> bool| {
        status.is_some_and(|s| s.instances.iter().any(|x| x.instance == i && f(x)))
    };
    let _ = writeln!(
        o,
        "# HELP deployex_instance_cpu_percent CPU use of the instance's process group over the last sampling period (100 = one core).\n# TYPE deployex_instance_cpu_percent gauge"
    );
    for a in apps {
        let app = crate::metrics::esc(&a.app);
        for (i, os, _) in &a.latest.instances {
            if let Some(os) = os.filter(|_| has(a.status.as_deref(), *i, |x| x.os_pid.is_some())) {
                let _ = writeln!(
                    o,
                    "deployex_instance_cpu_percent{{app=\"{app}\",instance=\"{i}\"}} {}",
                    os.cpu_pct
                );
            }
        }
    }
    let current =
        |a: &crate::metrics::AppMetrics, i: u32| has(a.status.as_deref(), i, |x| x.beam.is_some());
    let _ = writeln!(
        o,
        "# HELP deployex_beam_memory_split_bytes erlang:memory() of the instance's BEAM, by kind.\n# TYPE deployex_beam_memory_split_bytes gauge"
    );
    for a in apps {
        let app = crate::metrics::esc(&a.app);
        for (i, _, beam) in &a.latest.instances {
            let Some(b) = beam.filter(|_| current(a, *i)) else {
                continue;
            };
            for (kind, kib) in [
                ("processes", b.mem_processes_kib),
                ("binary", b.mem_binary_kib),
                ("ets", b.mem_ets_kib),
                ("atom", b.mem_atom_kib),
                ("code", b.mem_code_kib),
            ] {
                let _ = writeln!(
                    o,
                    "deployex_beam_memory_split_bytes{{app=\"{app}\",instance=\"{i}\",kind=\"{kind}\"}} {}",
                    u64::from(kib) * 1024
                );
            }
        }
    }
    for (name, help, get) in [
        (
            "deployex_beam_ports",
            "Ports open on the instance's BEAM.",
            (|b: &deployex_actors::history::BeamPoint| b.port_count) as fn(&_) -> u32,
        ),
        (
            "deployex_beam_atoms",
            "Atoms in the instance's BEAM atom table.",
            |b| b.atom_count,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for a in apps {
            let app = crate::metrics::esc(&a.app);
            for (i, _, beam) in &a.latest.instances {
                if let Some(b) = beam.filter(|_| current(a, *i)) {
                    let _ = writeln!(o, "{name}{{app=\"{app}\",instance=\"{i}\"}} {}", get(&b));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_scales_its_points_into_the_box_and_marks_deploys() {
        let mut s = Series::empty(Duration::from_secs(1));
        s.series
            .insert("cpu_pct", vec![Point(1000, 0.0), Point(2000, 50.0)]);
        s.deploys.push((1500, "1.2.<script>".into()));
        let html = chart("1", &INSTANCE_CHARTS[1], &s).into_string();
        assert!(html.contains("points=\"0.0,90.0 300.0,"), "{html}");
        assert!(html.contains("x1=\"150.0\""), "{html}");
        assert!(html.contains("deployed 1.2.&lt;script&gt;"), "{html}");
        assert!(html.contains("50.0 %"), "{html}");
    }
}
