//! BEAM telemetry over a node's link: the sample (memory, processes, run
//! queue, reductions, and the counts and limits the watchdog compares),
//! the reductions rate, and the watchdog's BEAM-limit check.

use super::*;

/// Bound on one telemetry sample (its RPCs run concurrently).
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a telemetry sample failed.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("telemetry RPC {what} on node {node} failed")]
    Rpc {
        node: String,
        what: &'static str,
        #[source]
        source: DistError,
    },
    #[error("telemetry RPC {what} on node {node} answered {reply}")]
    Unexpected {
        node: String,
        what: &'static str,
        reply: String,
    },
}

/// One raw reading of a node; [`BeamStats`] adds the rate and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeamSample {
    pub memory_bytes: u64,
    /// The split of `erlang:memory()` kept in the metrics history.
    pub memory_processes: u64,
    pub memory_binary: u64,
    pub memory_ets: u64,
    pub memory_atom: u64,
    pub memory_code: u64,
    pub processes: u64,
    pub run_queue: u64,
    /// `erlang:statistics(reductions)`'s total since the node started.
    pub reductions_total: u64,
    /// `erlang:system_info/1`: the counts and the limits the watchdog
    /// compares (`atom_count`/`atom_limit`, `port_count`/`port_limit`,
    /// `process_limit`).
    pub atom_count: u64,
    pub atom_limit: u64,
    pub port_count: u64,
    pub port_limit: u64,
    pub process_limit: u64,
}

impl BeamSample {
    /// The limits used above `pct` percent, as `(what, used, limit)`.
    pub fn over_limits(
        &self,
        watchdog: &crate::config::WatchdogConfig,
    ) -> Vec<(&'static str, u64, u64)> {
        [
            (
                "atoms",
                self.atom_count,
                self.atom_limit,
                watchdog.atoms_pct,
            ),
            (
                "processes",
                self.processes,
                self.process_limit,
                watchdog.processes_pct,
            ),
            (
                "ports",
                self.port_count,
                self.port_limit,
                watchdog.ports_pct,
            ),
        ]
        .into_iter()
        .filter(|&(_, used, limit, pct)| limit > 0 && used * 100 > limit * u64::from(pct))
        .map(|(what, used, limit, _)| (what, used, limit))
        .collect()
    }
}

/// Read a node's telemetry over `conn`: four RPCs in flight at once, the
/// whole bounded by `timeout`.
pub async fn sample_beam(
    conn: &NodeConnection,
    timeout: Duration,
) -> Result<BeamSample, SampleError> {
    use crate::dist::atom;
    let node = conn.node();
    let call = |what: &'static str, function: &'static str, arg: &'static str| async move {
        conn.rpc("erlang", function, vec![atom(arg)], timeout)
            .await
            .map_err(|source| SampleError::Rpc {
                node: node.to_string(),
                what,
                source,
            })
    };
    let info = |what: &'static str| call(what, "system_info", what);
    let (
        (memory, processes, run_queue, reductions),
        (atom_count, atom_limit, port_count, port_limit, process_limit),
    ) = futures::try_join!(
        async {
            futures::try_join!(
                async {
                    conn.rpc("erlang", "memory", vec![], timeout)
                        .await
                        .map_err(|source| SampleError::Rpc {
                            node: node.to_string(),
                            what: "erlang:memory()",
                            source,
                        })
                },
                info("process_count"),
                call("erlang:statistics(run_queue)", "statistics", "run_queue"),
                call("erlang:statistics(reductions)", "statistics", "reductions"),
            )
        },
        async {
            futures::try_join!(
                info("atom_count"),
                info("atom_limit"),
                info("port_count"),
                info("port_limit"),
                info("process_limit"),
            )
        },
    )?;
    let count = |what: &'static str, term: &Term| {
        crate::dist::as_int(term)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| SampleError::Unexpected {
                node: node.to_string(),
                what,
                reply: crate::dist::pretty(term),
            })
    };
    // `{Total, SinceLastCall}`: only the total is ours (the second element
    // is shared with every other caller on the node).
    let reductions_total = match crate::dist::as_tuple(&reductions) {
        Some([total, _]) => count("erlang:statistics(reductions)", total)?,
        _ => count("erlang:statistics(reductions)", &reductions)?,
    };
    // `[{total, N}, {processes, N}, …]`.
    let memory_of = |key: &str| {
        crate::dist::as_list(&memory)
            .unwrap_or_default()
            .iter()
            .find_map(|kv| match crate::dist::as_tuple(kv) {
                Some([k, v]) if crate::dist::as_atom(k) == Some(key) => {
                    crate::dist::as_int(v).and_then(|n| u64::try_from(n).ok())
                }
                _ => None,
            })
    };
    let memory_bytes = memory_of("total").ok_or_else(|| SampleError::Unexpected {
        node: node.to_string(),
        what: "erlang:memory()",
        reply: crate::dist::pretty(&memory),
    })?;
    Ok(BeamSample {
        memory_bytes,
        memory_processes: memory_of("processes").unwrap_or(0),
        memory_binary: memory_of("binary").unwrap_or(0),
        memory_ets: memory_of("ets").unwrap_or(0),
        memory_atom: memory_of("atom").unwrap_or(0),
        memory_code: memory_of("code").unwrap_or(0),
        processes: count("erlang:system_info(process_count)", &processes)?,
        run_queue: count("erlang:statistics(run_queue)", &run_queue)?,
        reductions_total,
        atom_count: count("atom_count", &atom_count)?,
        atom_limit: count("atom_limit", &atom_limit)?,
        port_count: count("port_count", &port_count)?,
        port_limit: count("port_limit", &port_limit)?,
        process_limit: count("process_limit", &process_limit)?,
    })
}

/// Reductions per second between two readings of the same node.
pub fn reductions_rate(prev: (u64, Instant), now: (u64, Instant)) -> Option<u64> {
    let secs = now.1.checked_duration_since(prev.1)?.as_secs_f64();
    (secs > 0.0).then(|| (now.0.saturating_sub(prev.0) as f64 / secs).round() as u64)
}

/// The watchdog's BEAM limits: a `watchdog_warning` event when the node
/// crosses one (once per crossing, again after it went back below), and a
/// report to the node's owner when the watchdog's action is `restart`.
pub(super) fn check_limits(
    node: &str,
    entry: &mut Entry,
    sample: &BeamSample,
    watchdog: &crate::config::WatchdogConfig,
) {
    let over = sample.over_limits(watchdog);
    entry
        .over
        .retain(|what| over.iter().any(|(w, _, _)| w == what));
    for (what, used, limit) in over {
        if entry.over.contains(&what) {
            continue;
        }
        entry.over.push(what);
        let message = format!(
            "node {node} uses {used} of its {limit} {what} ({} %)",
            used * 100 / limit.max(1)
        );
        tracing::warn!(%node, what, used, limit, "BEAM limit nearly reached");
        let mut event = crate::events::NewEvent::new(
            crate::events::EventKind::WatchdogWarning,
            message.clone(),
        );
        if let Some(i) = instance_of(node) {
            event = event.instance(i);
        }
        crate::events::emit(event);
        if watchdog.limits_action() == crate::config::WatchdogAction::Restart
            && let Some(spec) = entry.liveness.get()
        {
            (spec.report)(NodeReport::OverLimit { message });
        }
    }
}

/// `i` of a node named `{app}-{i}@{host}`.
pub(super) fn instance_of(node: &str) -> Option<u32> {
    node.split('@').next()?.rsplit_once('-')?.1.parse().ok()
}
