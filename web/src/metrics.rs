//! `/metrics` in the Prometheus text format: instance liveness and
//! restarts, per-instance RSS/CPU from `/proc`, per-instance BEAM telemetry
//! (memory, processes, run queue, reductions, from the engine's samples over
//! distribution), deploys by kind from the history, deploy durations, HTTP
//! requests by route and status.
//!
//! Invariants: readable with a session or with `Bearer <metrics_token>`
//! (compared in constant time); label values are escaped.

use std::fmt::Write as _;
use std::sync::Arc;

use deployex_actors::model::{BeamStats, DeploymentKind, InstanceState, InstanceStatus, Status};
use warp::http::{StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::AppState;
use crate::api::STATUS_TIMEOUT;
use crate::guard::{self, Guard, ReqInfo, req_info, with_state};

pub(crate) fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RSS bytes and CPU seconds of a process (the `/proc` reader of the
/// process module: the kernel's page size and clock tick, not assumed).
fn proc_usage(pid: i32) -> Option<(u64, f64)> {
    use deployex_actors::process::{proc_stats, ticks_per_second};
    let st = proc_stats(pid)?;
    Some((
        st.rss_bytes,
        st.cpu_ticks as f64 / ticks_per_second() as f64,
    ))
}

/// `full_deployment`, `hot_upgrade`, `rollback`: the JSON names.
fn kind_label(kind: DeploymentKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What `/metrics` shows of one app: its status (if it answered in time),
/// deploys by kind from its history, the newest points of its metrics
/// history.
pub struct AppMetrics {
    pub app: String,
    pub status: Option<Arc<Status>>,
    pub deploys: Vec<(DeploymentKind, u64)>,
    pub latest: deployex_actors::history::Latest,
}

/// `# HELP` and `# TYPE` of a metric (once per name, all apps' series
/// under it).
fn head(o: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Every app's instances, with the app's name escaped once.
fn instances(apps: &[AppMetrics]) -> impl Iterator<Item = (String, &InstanceStatus)> {
    apps.iter().flat_map(|a| {
        let app = esc(&a.app);
        a.status
            .iter()
            .flat_map(|s| s.instances.iter())
            .map(move |i| (app.clone(), i))
    })
}

/// The exposition text. Every per-app series carries an `app` label
/// (issue 17); host-wide ones (uptime, host gauges, HTTP, webhooks) do not.
pub fn render(state: &AppState, apps: &[AppMetrics]) -> String {
    let mut o = String::new();
    if let Some(s) = apps.iter().find_map(|a| a.status.as_ref()) {
        head(
            &mut o,
            "deployex_uptime_seconds",
            "Uptime of deployex.",
            "gauge",
        );
        let _ = writeln!(o, "deployex_uptime_seconds {}", s.deployex.uptime_s);
    }
    head(
        &mut o,
        "deployex_instance_up",
        "1 when the instance is running.",
        "gauge",
    );
    for (app, i) in instances(apps) {
        let up = u8::from(i.state == InstanceState::Running);
        let v = esc(i.version.as_deref().unwrap_or(""));
        let _ = writeln!(
            o,
            "deployex_instance_up{{app=\"{app}\",instance=\"{}\",version=\"{v}\"}} {up}",
            i.instance
        );
    }
    type Count = fn(&InstanceStatus) -> u64;
    for (name, help, value) in [
        (
            "deployex_instance_crash_restarts_total",
            "Restarts after a crash.",
            (|i: &InstanceStatus| i.crash_restarts) as Count,
        ),
        (
            "deployex_instance_forced_restarts_total",
            "Restarts by an operator or a deployment.",
            |i: &InstanceStatus| i.forced_restarts,
        ),
        (
            "deployex_instance_liveness_restarts_total",
            "Restarts because the node stopped answering the liveness check.",
            |i: &InstanceStatus| i.liveness_restarts,
        ),
        (
            "deployex_instance_watchdog_restarts_total",
            "Restarts by the resource watchdog.",
            |i: &InstanceStatus| i.watchdog_restarts,
        ),
    ] {
        head(&mut o, name, help, "counter");
        for (app, i) in instances(apps) {
            let _ = writeln!(
                o,
                "{name}{{app=\"{app}\",instance=\"{}\"}} {}",
                i.instance,
                value(i)
            );
        }
    }
    head(
        &mut o,
        "deployex_instance_boot_started",
        "1 when the node finished its boot (init:get_status), 0 while it boots; absent when unknown.",
        "gauge",
    );
    for (app, i) in instances(apps) {
        if let Some(boot) = i.boot {
            let _ = writeln!(
                o,
                "deployex_instance_boot_started{{app=\"{app}\",instance=\"{}\"}} {}",
                i.instance,
                u8::from(boot == deployex_actors::model::BootPhase::Started)
            );
        }
    }
    let usage: Vec<_> = instances(apps)
        .filter_map(|(app, i)| Some((app, i.instance, proc_usage(i.os_pid?)?)))
        .collect();
    head(
        &mut o,
        "deployex_instance_rss_bytes",
        "Resident memory of the instance's OS process.",
        "gauge",
    );
    for (app, i, (rss, _)) in &usage {
        let _ = writeln!(
            o,
            "deployex_instance_rss_bytes{{app=\"{app}\",instance=\"{i}\"}} {rss}"
        );
    }
    head(
        &mut o,
        "deployex_instance_cpu_seconds_total",
        "CPU time of the instance's OS process.",
        "counter",
    );
    for (app, i, (_, cpu)) in &usage {
        let _ = writeln!(
            o,
            "deployex_instance_cpu_seconds_total{{app=\"{app}\",instance=\"{i}\"}} {cpu}"
        );
    }
    // BEAM telemetry: only instances with a current sample get a line
    // (a missing series is "unknown", a zero would be a lie).
    type Beam = fn(&BeamStats) -> Option<u64>;
    for (name, help, value) in [
        (
            "deployex_beam_memory_bytes",
            "erlang:memory(total) of the instance's BEAM.",
            (|b: &BeamStats| Some(b.memory_bytes)) as Beam,
        ),
        (
            "deployex_beam_processes",
            "Erlang processes on the instance's BEAM.",
            |b: &BeamStats| Some(b.processes),
        ),
        (
            "deployex_beam_run_queue",
            "Processes ready to run on the instance's BEAM (all schedulers).",
            |b: &BeamStats| Some(b.run_queue),
        ),
        (
            "deployex_beam_reductions_per_second",
            "Reductions per second on the instance's BEAM between the last two samples.",
            |b: &BeamStats| b.reductions_per_s,
        ),
    ] {
        head(&mut o, name, help, "gauge");
        for (app, i) in instances(apps) {
            if let Some(v) = i.beam.as_ref().and_then(value) {
                let _ = writeln!(o, "{name}{{app=\"{app}\",instance=\"{}\"}} {v}", i.instance);
            }
        }
    }
    head(
        &mut o,
        "deployex_deploy_duration_seconds",
        "Time from sending a deployment to its instance being ready, since deployex started.",
        "summary",
    );
    for a in apps {
        let Some(s) = &a.status else { continue };
        let app = esc(&a.app);
        let d = &s.deploy_durations;
        let _ = writeln!(
            o,
            "deployex_deploy_duration_seconds_sum{{app=\"{app}\"}} {}\ndeployex_deploy_duration_seconds_count{{app=\"{app}\"}} {}",
            d.total_ms as f64 / 1000.0,
            d.count
        );
    }
    head(
        &mut o,
        "deployex_last_deploy_duration_seconds",
        "Duration of the most recent completed deployment.",
        "gauge",
    );
    for a in apps {
        let Some(last) = a
            .status
            .as_ref()
            .and_then(|s| s.deploy_durations.last.as_ref())
        else {
            continue;
        };
        let _ = writeln!(
            o,
            "deployex_last_deploy_duration_seconds{{app=\"{}\",instance=\"{}\",version=\"{}\",kind=\"{}\"}} {}",
            esc(&a.app),
            last.instance,
            esc(&last.version),
            esc(&kind_label(last.deployment)),
            last.duration_ms as f64 / 1000.0
        );
    }
    for (name, help, n) in [
        (
            "deployex_webhook_events_delivered_total",
            "Events the webhook receiver accepted.",
            deployex_actors::events::webhook_delivered(),
        ),
        (
            "deployex_webhook_events_dropped_total",
            "Events dropped because the webhook queue was full.",
            deployex_actors::events::webhook_dropped(),
        ),
        (
            "deployex_webhook_failed_attempts_total",
            "Failed webhook deliveries (each retried).",
            deployex_actors::events::webhook_failed_attempts(),
        ),
    ] {
        head(&mut o, name, help, "counter");
        let _ = writeln!(o, "{name} {n}");
    }
    head(
        &mut o,
        "deployex_deploys_total",
        "Deployments in the history, by kind.",
        "counter",
    );
    for a in apps {
        let app = esc(&a.app);
        for (kind, n) in &a.deploys {
            let k = kind_label(*kind);
            let _ = writeln!(
                o,
                "deployex_deploys_total{{app=\"{app}\",kind=\"{}\"}} {n}",
                esc(&k)
            );
        }
    }
    head(
        &mut o,
        "deployex_http_requests_total",
        "HTTP requests by route and status.",
        "counter",
    );
    for ((route, code), n) in state.http_metrics.snapshot() {
        let _ = writeln!(
            o,
            "deployex_http_requests_total{{route=\"{}\",status=\"{code}\"}} {n}",
            esc(route)
        );
    }
    crate::charts::render_metrics(state, apps, &mut o);
    o
}

/// One app's part of `/metrics`.
async fn app_metrics(view: Arc<crate::scope::AppView>) -> AppMetrics {
    let status = tokio::time::timeout(STATUS_TIMEOUT, view.status())
        .await
        .ok();
    let history = view.history().await;
    let deploys = [
        DeploymentKind::FullDeployment,
        DeploymentKind::HotUpgrade,
        DeploymentKind::Rollback,
    ]
    .into_iter()
    .map(|k| {
        (
            k,
            history.iter().filter(|h| h.deployment == k).count() as u64,
        )
    })
    .collect();
    AppMetrics {
        app: view.name.clone(),
        latest: view.engine.history_latest(),
        status,
        deploys,
    }
}

async fn metrics(state: Arc<AppState>, info: ReqInfo) -> Result<Response, Rejection> {
    let token_ok = match (
        &state.cfg.metrics_token,
        info.authorization.as_deref().and_then(crate::auth::bearer),
    ) {
        (Some(want), Some(got)) => ct_eq(want.as_bytes(), got.as_bytes()),
        _ => false,
    };
    if !token_ok {
        guard::check(&state, &info, Guard::Api)?;
    }
    let apps = futures::future::join_all(state.all_views().into_iter().map(app_metrics)).await;
    let body = render(&state, &apps);
    Ok(warp::http::Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(body.into())
        .unwrap_or_default())
}

pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .and(req_info())
        .and_then(metrics)
        .boxed()
}
