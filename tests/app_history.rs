//! The metrics history with two applications in one actor tree (issue
//! 17): each app's instances have their own rings, the host/OS sampler
//! samples every app, and follows a reload (a removed app's rings go, an
//! added app is sampled). Real releases of two differently named apps
//! (`dxtest` × 1, `dxsmoke` × 2), real OS processes, one EPMD; sampling
//! every 200 ms.
//!
//! Before the fix, rings were keyed by instance number only: A's and B's
//! instance 1 shared one ring, the sampler sampled the first app only,
//! and each app's `history_latest` listed every app's instances.
//!
//! Its own test binary: actor names and the history store are
//! process-global.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::apps::{AppGuard, publish};
use common::deployex::{APP, Site, kill_pids};
use deployex_actors::model::{InstanceState, Status};
use deployex_actors::{Engine, EngineConfig, EngineHandle};

/// The second app: another fixture release name.
const APP_B: &str = "dxsmoke";
const PERIOD: Duration = Duration::from_millis(200);

async fn running(engine: &EngineHandle, what: &str, replicas: usize) -> Status {
    common::wait_until(what, Duration::from_secs(90), || async {
        let s = engine.status().await;
        (s.instances.len() == replicas
            && s.instances
                .iter()
                .all(|i| i.state == InstanceState::Running && i.os_pid.is_some()))
        .then_some(s)
    })
    .await
}

fn app_config(site: &Site, app: &str, port: u16, replicas: u32) -> EngineConfig {
    let mut cfg = EngineConfig::with_defaults(app, site.dir.path());
    cfg.store = deployex_actors::StoreConfig::Local { root: site.store() };
    cfg.var_dir = site.var();
    cfg.log_dir = site.logs();
    cfg.replicas = replicas;
    cfg.app_port_base = port;
    cfg.epmd_port = site.epmd.port;
    cfg.hostname = common::short_hostname();
    cfg.cookie = "apphistorycookie".into();
    cfg.schedule_interval = Duration::from_millis(200);
    cfg.min_ready = Duration::from_millis(200);
    cfg.stop_grace = Duration::from_secs(5);
    cfg.beam_sample_interval = PERIOD;
    cfg.base_env = vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())];
    cfg
}

/// `engine`'s newest points: (instance, has an OS point newer than
/// `after`, has a BEAM point newer than `after`), by instance.
fn latest(engine: &EngineHandle, after: u64) -> Vec<(u32, bool, bool)> {
    engine
        .history_latest()
        .instances
        .iter()
        .map(|(i, os, beam)| {
            (
                *i,
                os.is_some_and(|p| p.t_ms > after),
                beam.is_some_and(|p| p.t_ms > after),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_has_its_own_rings_and_the_sampler_follows_the_apps() {
    let site = Site::new(1);
    let _b_guard = AppGuard {
        site: &site,
        app: APP_B,
        instances: 2,
    };
    publish(&site, APP, "0.1.0");
    publish(&site, APP_B, "0.1.0");
    let port_b = common::deployex::free_port_range(2);
    let (cfg_a, cfg_b) = (
        app_config(&site, APP, site.app_port, 1),
        app_config(&site, APP_B, port_b, 2),
    );
    let running_engine = deployex_actors::start_apps(vec![cfg_a.clone(), cfg_b.clone()])
        .await
        .expect("engine starts");
    let (a, b) = (
        running_engine.apps[0].clone(),
        running_engine.apps[1].clone(),
    );
    let sa = running(&a, "app A: 1 replica running", 1).await;
    let sb = running(&b, "app B: 2 replicas running", 2).await;
    let mut all_pids: Vec<i32> = sa.instances.iter().filter_map(|i| i.os_pid).collect();
    all_pids.extend(sb.instances.iter().filter_map(|i| i.os_pid));

    // 1. Each app's newest points are its own instances, each with an OS
    //    point (the sampler samples B too) and a BEAM point.
    common::wait_until(
        "A: [1], B: [1, 2], each with OS and BEAM points",
        Duration::from_secs(30),
        || async {
            (latest(&a, 0) == vec![(1, true, true)]
                && latest(&b, 0) == vec![(1, true, true), (2, true, true)])
            .then_some(())
        },
    )
    .await;
    let b2 = b.instance_history(2, None).await.expect("B's instance 2");
    assert!(!b2.series["rss_bytes"].is_empty(), "B's instance 2 sampled");

    // 2. B's instance 1 ring holds B's node's samples only: at most one
    //    BEAM point per period (the watcher samples a node once per tick;
    //    a ring shared with A's instance 1 got two).
    let b1 = b.instance_history(1, None).await.expect("B's instance 1");
    let from = b1.series["beam_processes"].last().unwrap().0;
    common::wait_until("4 s more of samples", Duration::from_secs(30), || async {
        let s = b.instance_history(1, Some(from)).await?;
        (s.series["beam_processes"].last()?.0 >= from + 4000).then_some(())
    })
    .await;
    for (engine, app) in [(&a, APP), (&b, APP_B)] {
        let s = engine.instance_history(1, Some(from)).await.unwrap();
        let points = s.series["beam_processes"]
            .iter()
            .filter(|p| p.0 <= from + 4000)
            .count();
        let most = (4000 / PERIOD.as_millis() + 2) as usize;
        assert!(
            (5..=most).contains(&points),
            "{app}'s instance 1: {points} BEAM points in 4 s at {PERIOD:?} (one ring per app: at most {most})"
        );
    }

    // 3. A reload removes B: B's rings go, A's stay.
    let plan = a.reconfigure(vec![cfg_a.clone()]).await.expect("reload");
    assert_eq!(plan.removed, vec![APP_B.to_string()]);
    common::wait_until("B's rings dropped", Duration::from_secs(10), || async {
        latest(&b, 0).is_empty().then_some(())
    })
    .await;
    assert!(
        b.instance_history(1, None)
            .await
            .is_none_or(|s| s.series.values().all(Vec::is_empty)),
        "no series left for B"
    );
    assert_eq!(latest(&a, 0), vec![(1, true, true)], "A's kept");

    // 4. A reload adds B back with one replica: sampled again (its new
    //    process, after the reload), only instance 1.
    let mut b_one = cfg_b.clone();
    b_one.replicas = 1;
    let added_at = deployex_actors::history::unix_ms_now();
    let plan = a
        .reconfigure(vec![cfg_a.clone(), b_one])
        .await
        .expect("reload");
    assert_eq!(plan.added, vec![APP_B.to_string()]);
    let sb = running(&b, "app B back: 1 replica running", 1).await;
    all_pids.extend(sb.instances.iter().filter_map(|i| i.os_pid));
    common::wait_until(
        "B's instance 1 sampled after the reload",
        Duration::from_secs(30),
        || async { (latest(&b, added_at) == vec![(1, true, true)]).then_some(()) },
    )
    .await;

    // Shutdown stops both apps' instances.
    a.shutdown(true).await;
    common::wait_until(
        "every instance of both apps stopped",
        Duration::from_secs(20),
        || async { (!all_pids.iter().any(|p| common::deployex::pid_alive(*p))).then_some(()) },
    )
    .await;
    kill_pids(&all_pids);
}
