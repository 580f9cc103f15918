//! Benchmark (not a test): deployex side by side with supervisord and PM2,
//! deployment timing, and scale. `make bench-compare` (release build).
//!
//! 1. `side`: the same workload (3 copies of the fixture release's
//!    `bin/dxtest start`, real BEAMs) under each supervisor: daemon RSS,
//!    crash → respawn / port accepting over `BENCH_KILLS` × `kill -9`, idle
//!    CPU and wakeups over `BENCH_IDLE_SECS`, stop time and leftovers.
//! 2. `deploy`: one instance's boot, rolling full deployment and hot upgrade
//!    of 3 replicas, detection latency after `current.json` changes.
//! 3. `scale`: `BENCH_SCALE` replicas of a light process.
//!
//! Prints one markdown report (ratios deployex/peer per row) and writes it
//! into `docs/BENCHMARKS.md` between its markers, plus one history row.
//!
//! Knobs (environment): `BENCH_PARTS` (side,deploy,scale), `BENCH_PEERS`
//! (deployex,supervisord,pm2), `BENCH_KILLS` (20), `BENCH_IDLE_SECS` (60),
//! `BENCH_POLL_US` (1000), `BENCH_BOOTS` (3), `BENCH_SCALE` (200),
//! `BENCH_SCALE_IDLE_SECS` (30), `BENCH_STATUS_REQUESTS` (50), `BENCH_DOC`
//! (path, `-` to not write it), `DEPLOYEX_BIN` (the binary under test).
//!
//! When run as `compare light-child` it is the light process of part 3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/common/mod.rs"]
mod common;
mod deploy;
mod peers;
mod procfs;
mod report;
mod scale;
mod side;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use report::{Table, num, ratio};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "missed",
        None => "n/a",
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some(scale::LIGHT_CHILD_ARG) {
        scale::light_child();
    }
    let started = Instant::now();
    let parts = env_list("BENCH_PARTS", "side,deploy,scale");
    let which = env_list("BENCH_PEERS", "deployex,supervisord,pm2");
    let plan = side::Plan {
        kills: env_or("BENCH_KILLS", 20),
        idle: Duration::from_secs(env_or("BENCH_IDLE_SECS", 60)),
        poll: Duration::from_micros(env_or("BENCH_POLL_US", 1000)),
    };
    let boots: usize = env_or("BENCH_BOOTS", 3);
    let scale_n: usize = env_or("BENCH_SCALE", 200);
    let scale_idle = Duration::from_secs(env_or("BENCH_SCALE_IDLE_SECS", 30));
    let status_requests: usize = env_or("BENCH_STATUS_REQUESTS", 50);
    let doc = std::env::var("BENCH_DOC")
        .unwrap_or_else(|_| format!("{}/docs/BENCHMARKS.md", env!("CARGO_MANIFEST_DIR")));

    let bin = common::deployex::deployex_bin();
    assert!(
        bin.is_file(),
        "no deployex binary at {} (cargo build --release --bin deployex)",
        bin.display()
    );
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let machine = procfs::machine();
    let load_before = procfs::loadavg();
    // Build (or find cached) fixtures before any clock starts.
    common::fixtures_dir(common::deployex::APP);

    // Each part runs on its own: a failing part (its processes cleaned up
    // by their guards while unwinding) is reported, the others still run.
    let mut failed = Vec::new();
    let mut part = |name: &str, f: &mut dyn FnMut() -> String| -> bool {
        if !parts.iter().any(|p| p == name) {
            return false;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(section) => {
                eprintln!("\n{section}\n");
                true
            }
            Err(_) => {
                failed.push(name.to_owned());
                false
            }
        }
    };
    let mut side = Vec::new();
    let mut deploy = None;
    let mut scale = None;
    let mut sections = Vec::new();
    if part("side", &mut || {
        side = side::run(&which, &plan);
        side_report(&side, &plan)
    }) {
        sections.push(side_report(&side, &plan));
    }
    if part("deploy", &mut || {
        let d = deploy::run(boots);
        let text = deploy_report(&d, boots);
        deploy = Some(d);
        text
    }) && let Some(d) = &deploy
    {
        sections.push(deploy_report(d, boots));
    }
    if part("scale", &mut || {
        let s = scale::run(scale_n, scale_idle, status_requests);
        let text = scale_report(&s);
        scale = Some(s);
        text
    }) && let Some(s) = &scale
    {
        sections.push(scale_report(s));
    }
    let load_after = procfs::loadavg();

    let mut out = vec![format!(
        "Run of {date} on {machine}; load average {load_before} before, {load_after} after; \
         deployex binary `{}`; {:.0} s in all.",
        bin.display(),
        started.elapsed().as_secs_f64()
    )];
    out.extend(sections);
    if !failed.is_empty() {
        out.push(format!(
            "Failed parts (see the panic messages above): {}.",
            failed.join(", ")
        ));
    }
    let latest = out.join("\n\n");
    println!("{latest}");

    if doc != "-" && failed.is_empty() {
        let row = history_row(
            &date,
            &load_before,
            &load_after,
            &side,
            deploy.as_ref(),
            scale.as_ref(),
        );
        let header = "| date (UTC) | load before → after | respawn median ms (dx / supervisord / PM2) | daemon RSS MiB (dx / supervisord / PM2) | dx idle CPU % | full deploy 3 replicas ms | hot upgrade per instance ms (median) | 200 light: dx RSS MiB / idle CPU % |\n|---|---|---|---|---|---|---|---|";
        let path = PathBuf::from(&doc);
        match report::update_doc(&path, &latest, header, &row) {
            Ok(()) => eprintln!("[bench] wrote {}", path.display()),
            Err(e) => eprintln!("[bench] could not write {}: {e}", path.display()),
        }
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

fn side_report(results: &[side::PeerResult], plan: &side::Plan) -> String {
    let get = |name: &str| results.iter().find(|r| r.name.eq_ignore_ascii_case(name));
    let dx = get("deployex");
    let sup = get("supervisord");
    let pm2 = get("pm2");
    let mut t = Table::new(&[
        "metric",
        "deployex",
        "supervisord",
        "PM2",
        "deployex / supervisord",
        "deployex / PM2",
        "target (deployex)",
    ]);
    let mut row = |metric: &str,
                   f: &dyn Fn(&side::PeerResult) -> Option<f64>,
                   decimals: usize,
                   target: String| {
        let v = |r: Option<&side::PeerResult>| r.and_then(f);
        t.row(vec![
            metric.to_string(),
            num(v(dx), decimals),
            num(v(sup), decimals),
            num(v(pm2), decimals),
            ratio(v(dx), v(sup)),
            ratio(v(dx), v(pm2)),
            target,
        ]);
    };
    let within = |v: Option<f64>, max: f64| v.map(|v| v <= max);
    let dxv = |f: &dyn Fn(&side::PeerResult) -> Option<f64>| dx.and_then(f);
    let rss0 = |r: &side::PeerResult| mib(r.rss_start_kib);
    let rss1 = |r: &side::PeerResult| mib(r.rss_after_kib);
    let resp_med = |r: &side::PeerResult| r.respawn_ms.median();
    row(
        "daemon RSS, 3 children (MiB)",
        &rss0,
        1,
        format!("≤ 10: {}", verdict(within(dxv(&rss0), 10.0))),
    );
    row(
        &format!("daemon RSS after {} restarts (MiB)", plan.kills),
        &rss1,
        1,
        format!("≤ 10: {}", verdict(within(dxv(&rss1), 10.0))),
    );
    row(
        "daemon threads",
        &|r| Some(r.threads as f64),
        0,
        String::new(),
    );
    row(
        "crash → new process, median (ms)",
        &resp_med,
        2,
        format!("≤ 6: {}", verdict(within(dxv(&resp_med), 6.0))),
    );
    row(
        "crash → new process, p90 (ms)",
        &|r| r.respawn_ms.p90(),
        2,
        String::new(),
    );
    row(
        "crash → new process, max (ms)",
        &|r| r.respawn_ms.max(),
        2,
        String::new(),
    );
    row(
        "… of which the kernel: kill → process exited, median (ms)",
        &|r| r.exit_ms.median(),
        2,
        "same for all (BEAM teardown)".into(),
    );
    row(
        "… of which the supervisor: exited → new process, median (ms)",
        &|r| r.own_ms.median(),
        2,
        String::new(),
    );
    row(
        "exited → new process, p90 (ms)",
        &|r| r.own_ms.p90(),
        2,
        String::new(),
    );
    row(
        "crash → port accepting, median (ms)",
        &|r| r.accept_ms.median(),
        0,
        String::new(),
    );
    row(
        "crash → port accepting, p90 (ms)",
        &|r| r.accept_ms.p90(),
        0,
        String::new(),
    );
    row(
        &format!("idle CPU over {} s (% of one core)", plan.idle.as_secs()),
        &|r| r.idle_cpu_pct,
        3,
        String::new(),
    );
    row(
        "idle wakeups (context switches/s, all threads)",
        &|r| r.idle_wakeups,
        1,
        String::new(),
    );
    row(
        "stop: until the daemon is gone (ms)",
        &|r| r.stop_ms,
        0,
        String::new(),
    );
    row(
        "stop: apps still alive when the daemon exited",
        &|r| r.left_at_exit.map(|n| n as f64),
        0,
        "0".into(),
    );
    row(
        "stop: until the last app is gone (ms)",
        &|r| r.apps_gone_ms,
        0,
        String::new(),
    );

    let mut s = format!(
        "### Side by side: 3 copies of the fixture release, {} × `kill -9`, /proc polled every {} µs\n\n{}\n",
        plan.kills,
        plan.poll.as_micros(),
        t.render()
    );
    for r in results {
        s.push_str(&format!(
            "\n- **{}**: {}; {}; {} kills measured.",
            r.name,
            r.version,
            r.config,
            r.respawn_ms.len()
        ));
    }
    s
}

fn deploy_report(d: &deploy::DeployResult, boots: usize) -> String {
    let boot = d.boot_ms.median();
    let full_target = boot.map(|b| 3.0 * b + 1000.0);
    let full_ok = d.full.total_ms.zip(full_target).map(|(t, m)| t <= m);
    let per_full = d.full.per_instance_ms();
    let per_hot = d.hot.per_instance_ms();
    let hot_ok = per_hot.max().map(|m| m <= 500.0);
    let list = |s: &[Option<f64>]| s.iter().map(|v| num(*v, 0)).collect::<Vec<_>>().join(", ");
    let per = |s: &deploy::Rollout| {
        let p = s.per_instance_ms();
        let mut v = Vec::new();
        for q in [0.0, 0.5, 1.0] {
            v.push(num(p.quantile(q), 0));
        }
        format!("{} (min, median, max of {})", v.join(", "), p.len())
    };
    let mut t = Table::new(&["metric", "value", "target", "verdict"]);
    t.row(vec![
        format!("one instance's boot: `bin/dxtest start` → port accepting (ms, median of {boots})"),
        format!(
            "{} (min {}, max {})",
            num(boot, 0),
            num(d.boot_ms.quantile(0.0), 0),
            num(d.boot_ms.max(), 0)
        ),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "rolling full deployment 0.1.0 → 0.1.1, 3 replicas: `current.json` written → every app answers 0.1.1 (ms)".into(),
        num(d.full.total_ms, 0),
        format!("≤ 3 × boot + 1 s = {}", num(full_target, 0)),
        verdict(full_ok).into(),
    ]);
    t.row(vec![
        "  instances done at (ms after the write)".into(),
        list(&d.full.instance_done_ms),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "  time per instance (ms)".into(),
        per(&d.full),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "  recorded as".into(),
        d.full.kinds.join(", "),
        "full_deployment".into(),
        verdict(Some(
            d.full.kinds.iter().all(|k| k == "full_deployment") && !d.full.kinds.is_empty(),
        ))
        .into(),
    ]);
    t.row(vec![
        "  fewest pool ports answering at one poll (stop_first)".into(),
        format!(
            "{} of 3 ({} polls)",
            d.full.min_answering.map_or("—".into(), |m| m.to_string()),
            d.full.polls
        ),
        String::new(),
        String::new(),
    ]);
    let sf = &d.start_first;
    let sf_ok = sf.total_ms.zip(full_target).map(|(t, m)| t <= m);
    t.row(vec![
        "the same with `DEPLOYEX_DEPLOY_STRATEGY=start_first` (ms)".into(),
        num(sf.total_ms, 0),
        format!("≤ 3 × boot + 1 s = {}", num(full_target, 0)),
        verdict(sf_ok).into(),
    ]);
    t.row(vec![
        "  instances done at (ms after the write)".into(),
        list(&sf.instance_done_ms),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "  time per instance (ms)".into(),
        per(sf),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "  fewest pool ports answering at one poll (start_first)".into(),
        format!(
            "{} of 3 ({} polls)",
            sf.min_answering.map_or("—".into(), |m| m.to_string()),
            sf.polls
        ),
        "3".into(),
        verdict(sf.min_answering.map(|m| m >= 3)).into(),
    ]);
    t.row(vec![
        "hot upgrade 0.1.1 → 0.1.2, 3 replicas: `current.json` written → every app answers 0.1.2 (ms)".into(),
        num(d.hot.total_ms, 0),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "  instances done at (ms after the write)".into(),
        list(&d.hot.instance_done_ms),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "  hot upgrade per instance (ms)".into(),
        per(&d.hot),
        "≤ 500 each".into(),
        verdict(hot_ok).into(),
    ]);
    t.row(vec![
        "  recorded as / same OS pids".into(),
        format!("{} / {}", d.hot.kinds.join(", "), d.hot.same_pids),
        "hot_upgrade / true".into(),
        verdict(Some(
            d.hot.same_pids
                && !d.hot.kinds.is_empty()
                && d.hot.kinds.iter().all(|k| k == "hot_upgrade"),
        ))
        .into(),
    ]);
    t.row(vec![
        format!(
            "detection: `current.json` written → deployex targets the version (ms; store polled every {} ms)",
            deploy::SCHEDULE_MS
        ),
        format!("{} (full), {} (hot)", num(d.full.detect_ms, 0), num(d.hot.detect_ms, 0)),
        format!("≤ poll interval + fetch"),
        String::new(),
    ]);
    let _ = per_full;
    format!(
        "### Deployment timing (real fixture release, `DEPLOYEX_MIN_READY_MS=0`, status API polled every 10 ms)\n\n{}",
        t.render()
    )
}

fn scale_report(s: &scale::ScaleResult) -> String {
    let mut t = Table::new(&["metric", "value", "target", "verdict"]);
    let n = s.replicas;
    t.row(vec![
        format!("first rollout of {n} instances, deployex start → all `running` (ms)"),
        num(s.initial_rollout_ms, 0),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        format!("deployex RSS with {n} instances (MiB)"),
        num(mib(s.rss_kib), 1),
        "≤ 30".into(),
        verdict(mib(s.rss_kib).map(|v| v <= 30.0)).into(),
    ]);
    t.row(vec![
        "deployex RSS after the mass restart (MiB)".into(),
        num(mib(s.rss_after_kib), 1),
        "≤ 30".into(),
        verdict(mib(s.rss_after_kib).map(|v| v <= 30.0)).into(),
    ]);
    t.row(vec![
        "deployex threads".into(),
        s.threads.to_string(),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "light child RSS, mean (MiB)".into(),
        num(s.child_rss_kib.map(|k| k / 1024.0), 2),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        format!("idle CPU over {:.0} s (% of one core)", s.idle_secs),
        num(s.idle_cpu_pct, 3),
        "≤ 1".into(),
        verdict(s.idle_cpu_pct.map(|v| v <= 1.0)).into(),
    ]);
    t.row(vec![
        "idle wakeups (context switches/s, all threads)".into(),
        num(s.idle_wakeups, 1),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        format!(
            "`GET /api/v1/status` latency, median / p90 / max of {} (ms)",
            s.status_ms.len()
        ),
        format!(
            "{} / {} / {} ({} KiB body)",
            num(s.status_ms.median(), 1),
            num(s.status_ms.p90(), 1),
            num(s.status_ms.max(), 1),
            s.status_bytes / 1024
        ),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        format!("mass `kill -9` of all {n} → {n} new processes (ms)"),
        num(s.mass_respawn_ms, 0),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        format!("  → all {n} ports accepting (ms)"),
        num(s.mass_accept_ms, 0),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        format!("  → all {n} `running` in the status API (ms)"),
        num(s.mass_running_ms, 0),
        String::new(),
        String::new(),
    ]);
    t.row(vec![
        "stop (SIGTERM): until deployex is gone (ms) / apps alive at its exit".into(),
        format!(
            "{} / {}",
            num(s.stop_ms, 0),
            s.left_at_exit
                .map(|n| n.to_string())
                .unwrap_or_else(|| "n/a".into())
        ),
        "— / 0".into(),
        verdict(s.left_at_exit.map(|n| n == 0)).into(),
    ]);
    format!(
        "### Scale: {n} replicas of a light process (`DEPLOYEX_OTP_READINESS=false`)\n\n{}",
        t.render()
    )
}

fn history_row(
    date: &str,
    load_before: &str,
    load_after: &str,
    side: &[side::PeerResult],
    deploy: Option<&deploy::DeployResult>,
    scale: Option<&scale::ScaleResult>,
) -> String {
    let get = |name: &str| side.iter().find(|r| r.name.eq_ignore_ascii_case(name));
    let trio = |f: &dyn Fn(&side::PeerResult) -> Option<f64>, d: usize| {
        ["deployex", "supervisord", "pm2"]
            .iter()
            .map(|n| num(get(n).and_then(f), d))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    format!(
        "| {} | {} → {} | {} | {} | {} | {} | {} | {} |",
        date.get(..16).unwrap_or(date),
        load_before,
        load_after,
        trio(&|r| r.respawn_ms.median(), 1),
        trio(&|r| mib(r.rss_start_kib), 1),
        num(get("deployex").and_then(|r| r.idle_cpu_pct), 3),
        num(deploy.and_then(|d| d.full.total_ms), 0),
        num(deploy.and_then(|d| d.hot.per_instance_ms().median()), 0),
        scale
            .map(|s| format!("{} / {}", num(mib(s.rss_kib), 1), num(s.idle_cpu_pct, 3)))
            .unwrap_or_else(|| "n/a".into()),
    )
}
