//! BEAM telemetry over a node's link: the sample (memory, processes, run
//! queue, reductions, and the counts and limits the watchdog compares),
//! the reductions rate, and the watchdog's BEAM-limit check.
//!
//! Cost (idle CPU at 200 nodes, docs/BENCHMARKS.md): one sample is one RPC
//! (an expression evaluated on the node returns every gauge at once), and
//! the limits, fixed for a VM's life, are read with a connection's first
//! sample only.

use super::*;

/// Bound on one telemetry sample (one RPC).
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

/// The BEAM limits of a node. They are fixed for the life of its VM, so
/// they are read with a connection's first sample and reused after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeamLimits {
    pub atom_limit: u64,
    pub port_limit: u64,
    pub process_limit: u64,
}

impl BeamSample {
    /// The limits this sample carries.
    pub fn limits(&self) -> BeamLimits {
        BeamLimits {
            atom_limit: self.atom_limit,
            port_limit: self.port_limit,
            process_limit: self.process_limit,
        }
    }
}

/// What a sample reads, in the order of the answer's tuple: the name in
/// errors, then `erlang:Function(Arg)`.
type Reading = (&'static str, &'static str, Option<&'static str>);

const GAUGES: [Reading; 6] = [
    ("erlang:memory()", "memory", None),
    (
        "erlang:system_info(process_count)",
        "system_info",
        Some("process_count"),
    ),
    (
        "erlang:statistics(run_queue)",
        "statistics",
        Some("run_queue"),
    ),
    (
        "erlang:statistics(reductions)",
        "statistics",
        Some("reductions"),
    ),
    (
        "erlang:system_info(atom_count)",
        "system_info",
        Some("atom_count"),
    ),
    (
        "erlang:system_info(port_count)",
        "system_info",
        Some("port_count"),
    ),
];

const LIMITS: [Reading; 3] = [
    (
        "erlang:system_info(atom_limit)",
        "system_info",
        Some("atom_limit"),
    ),
    (
        "erlang:system_info(port_limit)",
        "system_info",
        Some("port_limit"),
    ),
    (
        "erlang:system_info(process_limit)",
        "system_info",
        Some("process_limit"),
    ),
];

/// `[{erlang:F1(A1), erlang:F2(A2), …}]` in the abstract format that
/// `erl_eval:exprs/2` evaluates: every reading in one RPC, built here (no
/// round trips to parse it, nothing loaded onto the node).
pub(super) fn sample_exprs(readings: &[Reading]) -> Term {
    use crate::dist::{atom, int, list, tuple};
    let lit = |a: &str| tuple(vec![atom("atom"), int(1), atom(a)]);
    let calls = readings
        .iter()
        .map(|&(_, function, arg)| {
            tuple(vec![
                atom("call"),
                int(1),
                tuple(vec![atom("remote"), int(1), lit("erlang"), lit(function)]),
                list(arg.map(lit).into_iter().collect()),
            ])
        })
        .collect();
    list(vec![tuple(vec![atom("tuple"), int(1), list(calls)])])
}

/// Reads a node's telemetry over `conn` in **one** RPC (`erl_eval:exprs/2`
/// of [`sample_exprs`]), bounded by `timeout`. The limits are read too
/// unless `known` (the same connection's earlier reading).
pub async fn sample_beam(
    conn: &NodeConnection,
    known: Option<BeamLimits>,
    timeout: Duration,
) -> Result<BeamSample, SampleError> {
    let node = conn.node();
    let readings: Vec<Reading> = match known {
        Some(_) => GAUGES.to_vec(),
        None => GAUGES.iter().chain(LIMITS.iter()).copied().collect(),
    };
    const WHAT: &str = "erl_eval:exprs(telemetry)";
    let reply = conn
        .rpc(
            "erl_eval",
            "exprs",
            vec![sample_exprs(&readings), crate::dist::list(vec![])],
            timeout,
        )
        .await
        .map_err(|source| SampleError::Rpc {
            node: node.to_string(),
            what: WHAT,
            source,
        })?;
    parse_sample(node, &reply, known)
}

/// `{value, {Memory, ProcessCount, …}, _Bindings}` → the sample.
pub(super) fn parse_sample(
    node: &str,
    reply: &Term,
    known: Option<BeamLimits>,
) -> Result<BeamSample, SampleError> {
    let unexpected = |what: &'static str, term: &Term| SampleError::Unexpected {
        node: node.to_string(),
        what,
        reply: crate::dist::pretty(term),
    };
    let values = match crate::dist::as_tuple(reply) {
        Some([tag, values, _]) if crate::dist::as_atom(tag) == Some("value") => {
            crate::dist::as_tuple(values)
        }
        _ => None,
    };
    let expected = if known.is_some() {
        GAUGES.len()
    } else {
        GAUGES.len() + LIMITS.len()
    };
    let values = values
        .filter(|v| v.len() == expected)
        .ok_or_else(|| unexpected("erl_eval:exprs(telemetry)", reply))?;
    let count = |i: usize| {
        let what = GAUGES
            .iter()
            .chain(LIMITS.iter())
            .nth(i)
            .map_or("?", |r| r.0);
        crate::dist::as_int(&values[i])
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| unexpected(what, &values[i]))
    };
    let memory = &values[0];
    // `{Total, SinceLastCall}`: only the total is ours (the second element
    // is shared with every other caller on the node).
    let reductions_total = match crate::dist::as_tuple(&values[3]) {
        Some([total, _]) => crate::dist::as_int(total)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| unexpected(GAUGES[3].0, &values[3]))?,
        _ => count(3)?,
    };
    // `[{total, N}, {processes, N}, …]`.
    let memory_of = |key: &str| {
        crate::dist::as_list(memory)
            .unwrap_or_default()
            .iter()
            .find_map(|kv| match crate::dist::as_tuple(kv) {
                Some([k, v]) if crate::dist::as_atom(k) == Some(key) => {
                    crate::dist::as_int(v).and_then(|n| u64::try_from(n).ok())
                }
                _ => None,
            })
    };
    let memory_bytes = memory_of("total").ok_or_else(|| unexpected(GAUGES[0].0, memory))?;
    let limits = match known {
        Some(limits) => limits,
        None => BeamLimits {
            atom_limit: count(6)?,
            port_limit: count(7)?,
            process_limit: count(8)?,
        },
    };
    Ok(BeamSample {
        memory_bytes,
        memory_processes: memory_of("processes").unwrap_or(0),
        memory_binary: memory_of("binary").unwrap_or(0),
        memory_ets: memory_of("ets").unwrap_or(0),
        memory_atom: memory_of("atom").unwrap_or(0),
        memory_code: memory_of("code").unwrap_or(0),
        processes: count(1)?,
        run_queue: count(2)?,
        reductions_total,
        atom_count: count(4)?,
        port_count: count(5)?,
        atom_limit: limits.atom_limit,
        port_limit: limits.port_limit,
        process_limit: limits.process_limit,
    })
}

/// One tick's samples, concurrently in one task (not a task per node);
/// each result is posted as soon as it comes, a slow node delaying no one.
pub(super) async fn sample_all(
    watcher: ActorRef<WatcherMsg>,
    samples: Vec<(String, u64, Option<BeamLimits>, NodeConnection)>,
) {
    use futures::StreamExt;
    let mut running: futures::stream::FuturesUnordered<_> = samples
        .into_iter()
        .map(|(node, conn_id, limits, conn)| async move {
            let result = sample_beam(&conn, limits, SAMPLE_TIMEOUT).await;
            (node, conn_id, result)
        })
        .collect();
    while let Some((node, conn_id, result)) = running.next().await {
        let sampled = WatcherMsg::Sampled {
            node,
            conn_id,
            at: Instant::now(),
            result,
        };
        if watcher.cast(sampled).is_err() {
            return;
        }
    }
}

impl WatcherState {
    /// A sample of `node` over connection `conn_id` came back: into the
    /// node's entry (unless that connection is gone), the metrics history
    /// and the BEAM-limit watchdog.
    pub(super) fn on_sampled(
        &mut self,
        node: String,
        conn_id: u64,
        at: Instant,
        result: Result<BeamSample, SampleError>,
    ) {
        if let Some(entry) = self.nodes.get_mut(&node)
            && entry.conn.is_some()
            && entry.conn_id == conn_id
        {
            entry.sampling = false;
            match result {
                Ok(sample) => {
                    entry.limits = Some(sample.limits());
                    // Metrics history (history.rs): one copy into
                    // the ring of the node's app and instance.
                    if let (Some(app), Some(i)) = (app_of(&node), instance_of(&node)) {
                        crate::history::record_beam(
                            app,
                            i,
                            crate::history::beam_point(crate::history::unix_ms_now(), &sample),
                        );
                    }
                    let now = (sample.reductions_total, at);
                    let rate = entry.reductions.and_then(|prev| reductions_rate(prev, now));
                    entry.reductions = Some(now);
                    entry.beam = Some(BeamStats {
                        memory_bytes: sample.memory_bytes,
                        processes: sample.processes,
                        run_queue: sample.run_queue,
                        reductions_per_s: rate,
                        sampled_at: crate::time::utc_now_millis(),
                        atom_count: sample.atom_count,
                        atom_limit: sample.atom_limit,
                        port_count: sample.port_count,
                        port_limit: sample.port_limit,
                        process_limit: sample.process_limit,
                    });
                    check_limits(&node, entry, &sample, &self.watchdog);
                }
                Err(error) => {
                    // A node too busy to answer shows "no data"
                    // rather than an old reading.
                    let error = error_chain(&error);
                    tracing::debug!(%node, %error, "telemetry sample failed");
                    entry.beam = None;
                    entry.reductions = None;
                }
            }
        }
    }
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
        crate::events::emit(app_of(node).unwrap_or_default(), event);
        if watchdog.limits_action() == crate::config::WatchdogAction::Restart
            && let Some(spec) = entry.liveness.get()
        {
            (spec.report)(NodeReport::OverLimit { message });
        }
    }
}

/// The app of node `{app}-{i}@host` (or `{app}-{i}b@host`).
pub(super) fn app_of(node: &str) -> Option<&str> {
    Some(node.split('@').next()?.rsplit_once('-')?.0)
}

/// The instance of node `{app}-{i}@host`, or `{app}-{i}b@host` (slot b of
/// a start-first deployment: the same instance).
pub(super) fn instance_of(node: &str) -> Option<u32> {
    let i = node.split('@').next()?.rsplit_once('-')?.1;
    i.strip_suffix('b').unwrap_or(i).parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dist::{atom, int, list, pretty, tuple};

    #[test]
    fn a_node_name_gives_its_app_and_instance() {
        assert_eq!(app_of("my_app-3@127.0.0.1"), Some("my_app"));
        assert_eq!(instance_of("my_app-3@127.0.0.1"), Some(3));
        assert_eq!(app_of("nodash@host"), None);
        // Slot b of a start-first deployment is the same instance.
        assert_eq!(app_of("my_app-3b@127.0.0.1"), Some("my_app"));
        assert_eq!(instance_of("my_app-3b@127.0.0.1"), Some(3));
        assert_eq!(instance_of("my_app-b@127.0.0.1"), None);
    }

    #[test]
    fn one_expression_reads_every_gauge() {
        let exprs = sample_exprs(&GAUGES[..2]);
        assert_eq!(
            pretty(&exprs),
            "[{tuple,1,[{call,1,{remote,1,{atom,1,erlang},{atom,1,memory}},[]},\
             {call,1,{remote,1,{atom,1,erlang},{atom,1,system_info}},[{atom,1,process_count}]}]}]"
        );
    }

    fn reply(values: Vec<Term>) -> Term {
        let memory = list(vec![
            tuple(vec![atom("total"), int(30_000_000)]),
            tuple(vec![atom("ets"), int(400_000)]),
        ]);
        let mut all = vec![memory];
        all.extend(values);
        tuple(vec![atom("value"), tuple(all), list(vec![])])
    }

    #[test]
    fn limits_are_read_once_then_carried_over() {
        let gauges = || {
            vec![
                int(60),
                int(0),
                tuple(vec![int(123_456), int(7)]),
                int(9_000),
                int(4),
            ]
        };
        let mut first = gauges();
        first.extend([int(1_048_576), int(65_536), int(262_144)]);
        let s = parse_sample("a@h", &reply(first), None).unwrap();
        assert_eq!(
            (
                s.memory_bytes,
                s.memory_ets,
                s.processes,
                s.reductions_total
            ),
            (30_000_000, 400_000, 60, 123_456)
        );
        assert_eq!((s.atom_count, s.port_count), (9_000, 4));
        let limits = s.limits();
        assert_eq!(
            limits,
            BeamLimits {
                atom_limit: 1_048_576,
                port_limit: 65_536,
                process_limit: 262_144
            }
        );
        let again = parse_sample("a@h", &reply(gauges()), Some(limits)).unwrap();
        assert_eq!(again, s);
        // Limits expected but missing, or junk: an error naming the node.
        let err = parse_sample("a@h", &reply(gauges()), None).unwrap_err();
        assert!(err.to_string().contains("a@h"), "{err}");
        assert!(parse_sample("a@h", &atom("undefined"), Some(limits)).is_err());
    }

    #[test]
    fn reductions_rate_is_per_second_and_never_negative() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(reductions_rate((1_000, t0), (6_000, t1)), Some(10_000));
        // A counter that went backwards (should not happen) reads as idle.
        assert_eq!(reductions_rate((6_000, t0), (1_000, t1)), Some(0));
        // No time between the readings, or readings out of order: no rate.
        assert_eq!(reductions_rate((1_000, t0), (2_000, t0)), None);
        assert_eq!(reductions_rate((1_000, t1), (2_000, t0)), None);
    }
}
