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

fn esc(v: &str) -> String {
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

/// The exposition text.
pub fn render(
    state: &AppState,
    status: Option<&Status>,
    deploys: &[(DeploymentKind, u64)],
) -> String {
    let mut o = String::new();
    if let Some(s) = status {
        let _ = writeln!(
            o,
            "# HELP deployex_uptime_seconds Uptime of deployex.\n# TYPE deployex_uptime_seconds gauge"
        );
        let _ = writeln!(o, "deployex_uptime_seconds {}", s.deployex.uptime_s);
        let _ = writeln!(
            o,
            "# HELP deployex_instance_up 1 when the instance is running.\n# TYPE deployex_instance_up gauge"
        );
        for i in &s.instances {
            let up = u8::from(i.state == InstanceState::Running);
            let v = esc(i.version.as_deref().unwrap_or(""));
            let _ = writeln!(
                o,
                "deployex_instance_up{{instance=\"{}\",version=\"{v}\"}} {up}",
                i.instance
            );
        }
        let _ = writeln!(
            o,
            "# HELP deployex_instance_crash_restarts_total Restarts after a crash.\n# TYPE deployex_instance_crash_restarts_total counter"
        );
        for i in &s.instances {
            let _ = writeln!(
                o,
                "deployex_instance_crash_restarts_total{{instance=\"{}\"}} {}",
                i.instance, i.crash_restarts
            );
        }
        let _ = writeln!(
            o,
            "# HELP deployex_instance_forced_restarts_total Restarts by an operator or a deployment.\n# TYPE deployex_instance_forced_restarts_total counter"
        );
        for i in &s.instances {
            let _ = writeln!(
                o,
                "deployex_instance_forced_restarts_total{{instance=\"{}\"}} {}",
                i.instance, i.forced_restarts
            );
        }
        for (name, help, value) in [
            (
                "deployex_instance_liveness_restarts_total",
                "Restarts because the node stopped answering the liveness check.",
                (|i: &InstanceStatus| i.liveness_restarts) as fn(&InstanceStatus) -> u64,
            ),
            (
                "deployex_instance_watchdog_restarts_total",
                "Restarts by the resource watchdog.",
                |i: &InstanceStatus| i.watchdog_restarts,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for i in &s.instances {
                let _ = writeln!(o, "{name}{{instance=\"{}\"}} {}", i.instance, value(i));
            }
        }
        let _ = writeln!(
            o,
            "# HELP deployex_instance_boot_started 1 when the node finished its boot (init:get_status), 0 while it boots; absent when unknown.\n# TYPE deployex_instance_boot_started gauge"
        );
        for i in &s.instances {
            if let Some(boot) = i.boot {
                let _ = writeln!(
                    o,
                    "deployex_instance_boot_started{{instance=\"{}\"}} {}",
                    i.instance,
                    u8::from(boot == deployex_actors::model::BootPhase::Started)
                );
            }
        }
        let usage: Vec<_> = s
            .instances
            .iter()
            .filter_map(|i| Some((i.instance, proc_usage(i.os_pid?)?)))
            .collect();
        let _ = writeln!(
            o,
            "# HELP deployex_instance_rss_bytes Resident memory of the instance's OS process.\n# TYPE deployex_instance_rss_bytes gauge"
        );
        for (i, (rss, _)) in &usage {
            let _ = writeln!(o, "deployex_instance_rss_bytes{{instance=\"{i}\"}} {rss}");
        }
        let _ = writeln!(
            o,
            "# HELP deployex_instance_cpu_seconds_total CPU time of the instance's OS process.\n# TYPE deployex_instance_cpu_seconds_total counter"
        );
        for (i, (_, cpu)) in &usage {
            let _ = writeln!(
                o,
                "deployex_instance_cpu_seconds_total{{instance=\"{i}\"}} {cpu}"
            );
        }
        // BEAM telemetry: only instances with a current sample get a line
        // (a missing series is "unknown", a zero would be a lie).
        let beam =
            |name: &str, help: &str, o: &mut String, value: &dyn Fn(&BeamStats) -> Option<u64>| {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
                for i in &s.instances {
                    if let Some(v) = i.beam.as_ref().and_then(value) {
                        let _ = writeln!(o, "{name}{{instance=\"{}\"}} {v}", i.instance);
                    }
                }
            };
        beam(
            "deployex_beam_memory_bytes",
            "erlang:memory(total) of the instance's BEAM.",
            &mut o,
            &|b| Some(b.memory_bytes),
        );
        beam(
            "deployex_beam_processes",
            "Erlang processes on the instance's BEAM.",
            &mut o,
            &|b| Some(b.processes),
        );
        beam(
            "deployex_beam_run_queue",
            "Processes ready to run on the instance's BEAM (all schedulers).",
            &mut o,
            &|b| Some(b.run_queue),
        );
        beam(
            "deployex_beam_reductions_per_second",
            "Reductions per second on the instance's BEAM between the last two samples.",
            &mut o,
            &|b| b.reductions_per_s,
        );
        let d = &s.deploy_durations;
        let _ = writeln!(
            o,
            "# HELP deployex_deploy_duration_seconds Time from sending a deployment to its instance being ready, since deployex started.\n# TYPE deployex_deploy_duration_seconds summary"
        );
        let _ = writeln!(
            o,
            "deployex_deploy_duration_seconds_sum {}",
            d.total_ms as f64 / 1000.0
        );
        let _ = writeln!(o, "deployex_deploy_duration_seconds_count {}", d.count);
        if let Some(last) = &d.last {
            let k = kind_label(last.deployment);
            let _ = writeln!(
                o,
                "# HELP deployex_last_deploy_duration_seconds Duration of the most recent completed deployment.\n# TYPE deployex_last_deploy_duration_seconds gauge"
            );
            let _ = writeln!(
                o,
                "deployex_last_deploy_duration_seconds{{instance=\"{}\",version=\"{}\",kind=\"{}\"}} {}",
                last.instance,
                esc(&last.version),
                esc(&k),
                last.duration_ms as f64 / 1000.0
            );
        }
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
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}");
    }
    let _ = writeln!(
        o,
        "# HELP deployex_deploys_total Deployments in the history, by kind.\n# TYPE deployex_deploys_total counter"
    );
    for (kind, n) in deploys {
        let k = kind_label(*kind);
        let _ = writeln!(o, "deployex_deploys_total{{kind=\"{}\"}} {n}", esc(&k));
    }
    let _ = writeln!(
        o,
        "# HELP deployex_http_requests_total HTTP requests by route and status.\n# TYPE deployex_http_requests_total counter"
    );
    for ((route, code), n) in state.http_metrics.snapshot() {
        let _ = writeln!(
            o,
            "deployex_http_requests_total{{route=\"{}\",status=\"{code}\"}} {n}",
            esc(route)
        );
    }
    crate::charts::render_metrics(state, status, &mut o);
    o
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
    let status = tokio::time::timeout(STATUS_TIMEOUT, state.status())
        .await
        .ok();
    let history = state.history().await;
    let deploys: Vec<(DeploymentKind, u64)> = [
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
    let body = render(&state, status.as_deref(), &deploys);
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
