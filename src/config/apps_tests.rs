//! `[[apps]]` (apps.rs): each rule, with real files.

use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

fn load_file(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let f = file(text);
    load(
        env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
        Some(f.path()),
    )
}

const TWO: &str = r#"
monitored_replicas = 2
min_ready_ms = 500
[[apps]]
monitored_app_name = "api"
monitored_app_port = 4000
[apps.env]
POOL_SIZE = "10"
[[apps]]
monitored_app_name = "worker"
monitored_app_port = 4100
monitored_replicas = 3
deploy_strategy = "start_first"
"#;

#[test]
fn apps_take_their_keys_and_the_top_level_defaults() {
    let c = load_file(TWO, &[]).unwrap();
    assert_eq!(c.engine.app, "api");
    assert_eq!((c.engine.replicas, c.engine.app_port_base), (2, 4000));
    assert_eq!(c.extra_apps.len(), 1);
    let w = &c.extra_apps[0];
    assert_eq!(w.app, "worker");
    assert_eq!((w.replicas, w.app_port_base), (3, 4100));
    assert_eq!(
        w.deploy_strategy,
        deployex_actors::DeployStrategy::StartFirst
    );
    // Top-level defaults reach every app.
    assert_eq!(c.engine.min_ready, std::time::Duration::from_millis(500));
    assert_eq!(w.min_ready, std::time::Duration::from_millis(500));
    // Per-app stores and log dirs (defaults follow the app's name).
    assert_ne!(c.engine.store, w.store);
    // [apps.env] only for that app's instances.
    let has = |e: &deployex_actors::EngineConfig| {
        e.base_env
            .iter()
            .any(|(k, v)| k == "POOL_SIZE" && v == "10")
    };
    assert!(has(&c.engine));
    assert!(!has(w));
    // The secrets are shared.
    assert_eq!(c.engine.cookie, w.cookie);
    // check-config lists every app.
    let text = c.describe();
    assert!(
        text.contains("api: 2 replicas, ports 4000..=4001"),
        "{text}"
    );
    assert!(
        text.contains("worker: 3 replicas, ports 4100..=4103, start_first"),
        "{text}"
    );
}

#[test]
fn without_apps_the_single_app_file_is_unchanged() {
    let c = load_file(
        "monitored_app_name = \"solo\"\nmonitored_replicas = 1\n",
        &[],
    )
    .unwrap();
    assert_eq!((c.engine.app.as_str(), c.engine.replicas), ("solo", 1));
    assert!(c.extra_apps.is_empty());
    assert!(!c.describe().contains("\napps:\n"));
    // The environment still wins without [[apps]].
    let c = load_file(
        "monitored_app_name = \"solo\"\n",
        &[("DEPLOYEX_MONITORED_APP_NAME", "other")],
    )
    .unwrap();
    assert_eq!(c.engine.app, "other");
}

#[test]
fn a_per_app_environment_variable_is_an_error_with_apps() {
    for var in [
        "DEPLOYEX_MONITORED_APP_NAME",
        "DEPLOYEX_MONITORED_REPLICAS",
        "DEPLOYEX_RELEASE_DIR",
    ] {
        let err = load_file(TWO, &[(var, "3")]).unwrap_err();
        assert!(err.0.contains(var), "{var}: {err}");
    }
    // A host-wide variable is fine.
    load_file(TWO, &[("DEPLOYEX_LOG_KEEP", "3")]).unwrap();
}

#[test]
fn app_names_must_be_distinct_and_present() {
    let err = load_file(
        "[[apps]]\nmonitored_app_name = \"a\"\nmonitored_app_port = 4000\n[[apps]]\nmonitored_app_name = \"a\"\nmonitored_app_port = 5000\n",
        &[],
    )
    .unwrap_err();
    assert!(err.0.contains("\"a\" twice"), "{err}");
    let err = load_file("[[apps]]\nmonitored_app_port = 4000\n", &[]).unwrap_err();
    assert!(err.0.contains("monitored_app_name is required"), "{err}");
    let err = load_file(
        "[[apps]]\nmonitored_app_name = \"a\"\nerlang_cookie = \"x\"\n",
        &[],
    )
    .unwrap_err();
    assert!(err.0.contains("unknown key \"erlang_cookie\""), "{err}");
}

#[test]
fn port_ranges_must_not_overlap_counting_the_spare_port() {
    // 4000..=4001 and 4001..: overlap.
    let err = load_file(
        "monitored_replicas = 2\n[[apps]]\nmonitored_app_name = \"a\"\nmonitored_app_port = 4000\n[[apps]]\nmonitored_app_name = \"b\"\nmonitored_app_port = 4001\n",
        &[],
    )
    .unwrap_err();
    assert!(err.0.contains("overlap"), "{err}");
    // stop_first reserves no spare port: 4000..=4001 then 4002.. is fine.
    load_file(
        "monitored_replicas = 2\n[[apps]]\nmonitored_app_name = \"a\"\nmonitored_app_port = 4000\n[[apps]]\nmonitored_app_name = \"b\"\nmonitored_app_port = 4002\n",
        &[],
    )
    .unwrap();
    // start_first's spare port (4002) collides with b's first port.
    let err = load_file(
        "monitored_replicas = 2\n[[apps]]\nmonitored_app_name = \"a\"\nmonitored_app_port = 4000\ndeploy_strategy = \"start_first\"\n[[apps]]\nmonitored_app_name = \"b\"\nmonitored_app_port = 4002\n",
        &[],
    )
    .unwrap_err();
    assert!(err.0.contains("overlap"), "{err}");
}

/// Outside `local`, every app's local store is checked at start, not only
/// the first app's: another app's world-writable folder would let anyone
/// choose the code it runs.
#[test]
fn every_apps_local_store_is_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (api, worker) = (dir.path().join("api"), dir.path().join("worker"));
    for d in [&api, &worker] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let text = format!(
        "release_adapter = \"local\"\n\
         [[apps]]\nmonitored_app_name = \"api\"\nmonitored_app_port = 4000\nrelease_dir = \"{}\"\n\
         [[apps]]\nmonitored_app_name = \"worker\"\nmonitored_app_port = 4100\nrelease_dir = \"{}\"\n",
        api.display(),
        worker.display()
    );
    let secrets = [
        ("DEPLOYEX_CLOUD_ENVIRONMENT", "prod"),
        ("DEPLOYEX_SECRET_KEY_BASE", &"f".repeat(64)),
        ("DEPLOYEX_ERLANG_COOKIE", "fetchedcookie"),
        ("DEPLOYEX_ADMIN_HASHED_PASSWORD", LOCAL_ADMIN_HASH),
    ];
    let c = load_file(&text, &secrets).unwrap();
    assert!(c.check_local_store().is_ok());
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = c.check_local_store().unwrap_err();
    assert!(
        e.0.contains("writable by group or others") && e.0.contains("app worker"),
        "{e}"
    );
}
