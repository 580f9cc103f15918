//! Two applications in one actor tree (issue 17): each app has its own
//! AppSupervisor, so a panic in app A's DeployManager restarts A's
//! DeployManager only; app B's actors keep their actor ids and B's
//! instances their OS pids. Real releases of two differently named apps
//! (`dxtest`, `dxsmoke`), real OS processes, one EPMD.
//!
//! Its own test binary: actor names (the root, the watcher) are
//! process-global in ractor's registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::deployex::{APP, Site, kill_pids};
use deployex_actors::deploy_manager::{self, DeployMsg};
use deployex_actors::model::{ActorInfo, InstanceState, Status};
use deployex_actors::{Engine, EngineConfig, EngineHandle};

/// The second app: another fixture release name.
const APP_B: &str = "dxsmoke";

use common::apps::publish;

fn find<'a>(tree: &'a ActorInfo, name: &str) -> Option<&'a ActorInfo> {
    if tree.name == name {
        return Some(tree);
    }
    tree.children.iter().find_map(|c| find(c, name))
}

/// Every actor of `app`'s subtree: name → actor id.
fn subtree_ids(tree: &ActorInfo, app: &str) -> BTreeMap<String, String> {
    fn walk(node: &ActorInfo, out: &mut BTreeMap<String, String>) {
        out.insert(node.name.clone(), node.id.clone());
        for c in &node.children {
            walk(c, out);
        }
    }
    let mut out = BTreeMap::new();
    if let Some(sup) = find(tree, &format!("app_supervisor:{app}")) {
        walk(sup, &mut out);
    }
    out
}

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

fn pids(s: &Status) -> Vec<i32> {
    s.instances.iter().filter_map(|i| i.os_pid).collect()
}

fn app_config(site: &Site, app: &str, port: u16) -> EngineConfig {
    let mut cfg = EngineConfig::with_defaults(app, site.dir.path());
    cfg.store = deployex_actors::StoreConfig::Local { root: site.store() };
    cfg.var_dir = site.var();
    cfg.log_dir = site.logs();
    cfg.replicas = 2;
    cfg.app_port_base = port;
    cfg.epmd_port = site.epmd.port;
    cfg.hostname = common::short_hostname();
    cfg.cookie = "appsupervisioncookie".into();
    cfg.schedule_interval = Duration::from_millis(200);
    cfg.min_ready = Duration::from_millis(200);
    cfg.stop_grace = Duration::from_secs(5);
    cfg.base_env = vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_apps_deploy_manager_restarts_only_that_actor() {
    let site = Site::new(2);
    publish(&site, APP, "0.1.0");
    publish(&site, APP_B, "0.1.0");
    let port_b = common::deployex::free_port_range(2);
    let running_engine = deployex_actors::start_apps(vec![
        app_config(&site, APP, site.app_port),
        app_config(&site, APP_B, port_b),
    ])
    .await
    .expect("engine starts");
    let (a, b) = (
        running_engine.apps[0].clone(),
        running_engine.apps[1].clone(),
    );
    let sa = running(&a, "app A: 2 replicas running", 2).await;
    let sb = running(&b, "app B: 2 replicas running", 2).await;
    assert_eq!(sa.app, APP);
    assert_eq!(sb.app, APP_B);
    let (pids_a, pids_b) = (pids(&sa), pids(&sb));
    let mut all_pids = pids_a.clone();
    all_pids.extend(&pids_b);

    // The tree: root → one AppSupervisor per app → its actors.
    let tree = a.actors().await;
    for app in [APP, APP_B] {
        let sup = find(&tree, &format!("app_supervisor:{app}"))
            .unwrap_or_else(|| panic!("app_supervisor:{app} in the tree: {tree:#?}"));
        for name in [
            format!("deploy_manager:{app}"),
            format!("release_fetcher:{app}"),
            format!("instance_monitor:{app}-1"),
            format!("instance_monitor:{app}-2"),
        ] {
            assert!(find(sup, &name).is_some(), "{name} under {}", sup.name);
        }
    }
    let b_before = subtree_ids(&tree, APP_B);
    assert_eq!(b_before.len(), 5, "B's supervisor and its 4 actors");

    // Panic A's DeployManager.
    let dm: ractor::ActorRef<DeployMsg> = ractor::registry::where_is(deploy_manager::name(APP))
        .unwrap()
        .into();
    let old_id = dm.get_id().to_string();
    dm.cast(DeployMsg::InjectPanic).unwrap();
    let tree = common::wait_until(
        "A's DeployManager restarted",
        Duration::from_secs(10),
        || async {
            let tree = a.actors().await;
            let m = find(&tree, &deploy_manager::name(APP))?;
            (m.restarts == 1 && m.id != old_id).then_some(tree)
        },
    )
    .await;
    let a_after = subtree_ids(&tree, APP);
    assert!(
        a_after.contains_key(&format!("instance_monitor:{APP}-1")),
        "A's monitors still there"
    );
    assert_eq!(
        subtree_ids(&tree, APP_B),
        b_before,
        "B's actors untouched (same ids)"
    );
    let sa = running(&a, "app A still running", 2).await;
    let sb = running(&b, "app B still running", 2).await;
    assert_eq!(pids(&sa), pids_a, "A's instances untouched");
    assert_eq!(pids(&sb), pids_b, "B's instances untouched");
    assert!(!sa.stale && !sb.stale, "both apps answer");

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
