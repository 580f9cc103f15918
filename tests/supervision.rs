//! Supervision of the actor tree, in-process: a panicking InstanceMonitor
//! is restarted by its AppSupervisor and adopts its running OS process
//! (never orphaned, never duplicated); too many restarts in the period
//! escalate and stop the tree, leaving the apps running for adoption.
//!
//! One test function: actor names are process-global in ractor's registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::deployex::{Site, kill_pids, pid_alive};
use deployex_actors::instance_monitor::{self, InstanceMsg};
use deployex_actors::model::{ActorInfo, Status};
use deployex_actors::otp_node_watcher::{self, WatcherMsg};
use deployex_actors::{Engine, EngineConfig};

fn find<'a>(tree: &'a ActorInfo, name: &str) -> Option<&'a ActorInfo> {
    if tree.name == name {
        return Some(tree);
    }
    tree.children.iter().find_map(|c| find(c, name))
}

async fn wait_status(
    engine: &dyn Engine,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Status) -> bool,
) -> Status {
    common::wait_until(what, timeout, || async {
        let s = engine.status().await;
        pred(&s).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_monitor_adopts_its_process_and_too_many_restarts_escalate() {
    let site = Site::new(2);
    site.publish("0.1.0", &[]);
    let mut cfg = EngineConfig::with_defaults(common::deployex::APP, site.dir.path());
    cfg.store = deployex_actors::StoreConfig::Local { root: site.store() };
    cfg.var_dir = site.var();
    cfg.log_dir = site.logs();
    cfg.replicas = 2;
    cfg.app_port_base = site.app_port;
    cfg.epmd_port = site.epmd.port;
    cfg.hostname = common::short_hostname();
    cfg.cookie = "supervisioncookie".into();
    cfg.schedule_interval = Duration::from_millis(200);
    cfg.min_ready = Duration::from_millis(200);
    cfg.stop_grace = Duration::from_secs(5);
    cfg.base_env = vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())];
    let running = deployex_actors::start(cfg).await.expect("engine starts");
    let handle = running.handle.clone();
    let engine: Arc<dyn Engine> = Arc::new(handle.clone());

    let s = wait_status(
        &*engine,
        "2 replicas running",
        Duration::from_secs(60),
        |s| {
            s.instances
                .iter()
                .all(|i| i.state == deployex_actors::model::InstanceState::Running)
        },
    )
    .await;
    let pids: Vec<i32> = s.instances.iter().map(|i| i.os_pid.unwrap()).collect();

    // 1. Panic instance_monitor:dxtest-1: restarted, adopts the same OS process.
    let monitor: ractor::ActorRef<InstanceMsg> =
        ractor::registry::where_is(instance_monitor::name(common::deployex::APP, 1))
            .unwrap()
            .into();
    let old_id = monitor.get_id();
    monitor.cast(InstanceMsg::InjectPanic).unwrap();
    common::wait_until(
        "instance_monitor:dxtest-1 restarted",
        Duration::from_secs(10),
        || async {
            let tree = engine.actors().await;
            let m = find(&tree, &instance_monitor::name(common::deployex::APP, 1))?;
            (m.restarts == 1 && m.id != old_id.to_string()).then_some(())
        },
    )
    .await;
    let s = wait_status(
        &*engine,
        "instance 1 adopted and running",
        Duration::from_secs(20),
        |s| s.instances[0].state == deployex_actors::model::InstanceState::Running,
    )
    .await;
    assert_eq!(
        s.instances[0].os_pid,
        Some(pids[0]),
        "the same OS process, adopted"
    );
    assert_eq!(
        s.instances[0].crash_restarts, 0,
        "the app was not restarted"
    );
    let current = site.service(1).join("current");
    let running_copies = deployex_actors::process::pids_running_under(&current);
    assert_eq!(
        running_copies,
        vec![pids[0]],
        "exactly one copy of instance 1"
    );
    // The debug tree lists every actor of the tree.
    let tree = engine.actors().await;
    let app = common::deployex::APP;
    for name in [
        "root_supervisor".to_string(),
        "otp_node_watcher".to_string(),
        format!("release_fetcher:{app}"),
        format!("deploy_manager:{app}"),
        format!("instance_monitor:{app}-1"),
        format!("instance_monitor:{app}-2"),
    ] {
        assert!(
            find(&tree, &name).is_some(),
            "{name} in the tree: {tree:#?}"
        );
    }
    assert!(
        !find(&tree, &instance_monitor::name(app, 2))
            .unwrap()
            .messages
            .is_empty()
    );

    // 2. Panic the OtpNodeWatcher: its connections are closed with its
    // state (ractor skips `post_stop` on a panic), the new watcher learns
    // every node from the monitors at once, and every node reconnects
    // within seconds (before: the old links stayed parked, nodes answered
    // the new handshake with `alive`, and no node came back).
    let cell = ractor::registry::where_is(otp_node_watcher::NAME).unwrap();
    let old_watcher = cell.get_id();
    let watcher: ractor::ActorRef<WatcherMsg> = cell.into();
    let s = wait_status(
        &*engine,
        "both nodes connected before the watcher panics",
        Duration::from_secs(20),
        |s| s.instances.iter().all(|i| i.otp_connected),
    )
    .await;
    assert_eq!(s.instances.len(), 2);
    watcher.cast(WatcherMsg::InjectPanic).unwrap();
    common::wait_until("watcher respawned", Duration::from_secs(5), || async {
        ractor::registry::where_is(otp_node_watcher::NAME)
            .is_some_and(|c| c.get_id() != old_watcher)
            .then_some(())
    })
    .await;
    let panicked_at = std::time::Instant::now();
    wait_status(
        &*engine,
        "every node reconnected after the watcher panic",
        Duration::from_secs(10),
        |s| s.instances.iter().all(|i| i.otp_connected),
    )
    .await;
    eprintln!(
        "nodes reconnected {} ms after the watcher's restart",
        panicked_at.elapsed().as_millis()
    );
    assert!(pids.iter().all(|p| pid_alive(*p)), "no app was touched");

    // 3. Restart intensity: more than MAX_RESTARTS restarts within the
    // period escalate. The root restarted one child above (the watcher; the
    // monitor's restart was its AppSupervisor's, counted per app); panic
    // the watcher until the root gives up, and check it gave up at exactly
    // the limit.
    let mut panics = 0;
    while !running.join.is_finished() {
        assert!(
            panics <= deployex_actors::root::MAX_RESTARTS,
            "the root never escalated"
        );
        let Some(cell) = ractor::registry::where_is(otp_node_watcher::NAME) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let id = cell.get_id();
        let watcher: ractor::ActorRef<WatcherMsg> = cell.into();
        watcher.cast(WatcherMsg::InjectPanic).unwrap();
        panics += 1;
        common::wait_until(
            "watcher respawned or root stopped",
            Duration::from_secs(5),
            || async {
                let respawned = ractor::registry::where_is(otp_node_watcher::NAME)
                    .is_some_and(|c| c.get_id() != id);
                (respawned || running.join.is_finished()).then_some(())
            },
        )
        .await;
    }
    assert_eq!(
        panics,
        deployex_actors::root::MAX_RESTARTS,
        "1 + {panics} restarts at the root"
    );
    // The apps are left running for the next deployex to adopt.
    assert!(pids.iter().all(|p| pid_alive(*p)));
    kill_pids(&pids);
}
