//! Smoke test of the fixture releases themselves (tests/fixtures): proves
//! each version behaves as the engine tests assume, including a hot
//! upgrade 0.1.1 -> 0.1.2 done by hand over `bin/APP rpc`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    Epmd, Instance, fixture_relup_tarball, fixture_tarball, free_port, hot_upgrade_expr, http_get,
    release_command, unpack_tarball, wait_until, wait_until_blocking,
};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const APP: &str = "dxsmoke";
const COOKIE: &str = "smoke-cookie";
const BOOT: Duration = Duration::from_secs(30);

/// Parsed `GET /` answer: (version, counter, os_pid).
fn status(port: u16, path: &str) -> Option<(String, u64, u32)> {
    let (code, body) = http_get(port, path)?;
    if code != 200 {
        return None;
    }
    let json: Value = serde_json::from_str(body.trim()).ok()?;
    Some((
        json["version"].as_str()?.to_owned(),
        json["counter"].as_u64()?,
        json["os_pid"].as_str()?.parse().ok()?,
    ))
}

/// `bin/APP start` of the release unpacked at `root`, replica suffix `-1`.
fn start(root: &Path, epmd: &Epmd, port: u16, log: &Path, extra: &[(&str, &str)]) -> Instance {
    let mut cmd = release_command(root, APP, epmd);
    cmd.arg("start")
        .env("PORT", port.to_string())
        .env("RELEASE_NODE_SUFFIX", "-1")
        .env("RELEASE_COOKIE", COOKIE)
        .envs(extra.iter().copied());
    Instance::spawn(&mut cmd, log)
}

fn rpc(root: &Path, epmd: &Epmd, expr: &str) -> std::process::Output {
    release_command(root, APP, epmd)
        .args(["rpc", expr])
        .env("RELEASE_NODE_SUFFIX", "-1")
        .env("RELEASE_COOKIE", COOKIE)
        .output()
        .expect("run bin/APP rpc")
}

/// Boots 0.1.1, bumps the counter, hot-upgrades to `tarball` (0.1.2) and
/// checks pid, version and counter; returns the rpc's stdout.
async fn hot_upgrade(tarball: &Path) -> String {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("current");
    unpack_tarball(&fixture_tarball(APP, "0.1.1"), &root);
    let epmd = Epmd::new();
    let port = free_port();
    let echo = r#"echo "quoted" $HOME `x` 'single' \ back"#;
    let mut node = start(
        &root,
        &epmd,
        port,
        &tmp.path().join("node.log"),
        &[("FIXTURE_ECHO", echo)],
    );

    let (vsn, _, pid) =
        wait_until("0.1.1 serving HTTP", BOOT, || async { status(port, "/") }).await;
    assert_eq!(vsn, "0.1.1");
    assert_eq!(pid, node.pid(), "bin/APP start must exec down to beam.smp");
    assert_eq!(http_get(port, "/health"), Some((200, "ok\n".to_owned())));
    assert_eq!(status(port, "/bump").map(|s| s.1), Some(1));
    assert_eq!(status(port, "/bump").map(|s| s.1), Some(2));
    let log = wait_until("request log lines", BOOT, || async {
        let out = node.output();
        out.contains("[info] GET /bump").then_some(out)
    })
    .await;
    assert!(
        log.lines().any(|l| l == echo),
        "FIXTURE_ECHO not printed verbatim:\n{log}"
    );

    let started = Instant::now();
    let out = rpc(&root, &epmd, &hot_upgrade_expr(APP, "0.1.2", tarball));
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("upgraded 0.1.1 -> 0.1.2"),
        "hot upgrade failed ({}):\n{stdout}\n{}\nnode log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        node.output()
    );
    eprintln!("hot upgrade rpc took {took:?}");

    assert_eq!(
        status(port, "/"),
        Some(("0.1.2".to_owned(), 2, pid)),
        "after upgrade"
    );
    assert_eq!(status(port, "/bump").map(|s| s.1), Some(3));
    wait_until("heartbeat from the new code", BOOT, || async {
        node.output()
            .contains("heartbeat version=0.1.2")
            .then_some(())
    })
    .await;
    let start_erl =
        std::fs::read_to_string(root.join("releases/start_erl.data")).expect("read start_erl.data");
    assert!(
        start_erl.trim().ends_with(" 0.1.2"),
        "start_erl.data: {start_erl}"
    );

    let exit = node.stop();
    assert!(
        exit.success(),
        "SIGTERM should stop the node cleanly: {exit:?}"
    );
    stdout
}

#[tokio::test]
async fn hot_upgrade_builds_relup_on_the_node() {
    let stdout = hot_upgrade(&fixture_tarball(APP, "0.1.2")).await;
    assert!(stdout.contains("relup: built"), "{stdout}");
}

#[tokio::test]
async fn hot_upgrade_with_shipped_relup() {
    let stdout = hot_upgrade(&fixture_relup_tarball(APP, "0.1.2")).await;
    assert!(stdout.contains("relup: shipped"), "{stdout}");
}

#[test]
fn crash_at_boot_exits_nonzero_quickly() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("current");
    unpack_tarball(&fixture_tarball(APP, "0.2.0"), &root);
    let epmd = Epmd::new();
    let started = Instant::now();
    let mut node = start(&root, &epmd, free_port(), &tmp.path().join("node.log"), &[]);
    let exit = node
        .wait_exit(Duration::from_secs(15))
        .expect("0.2.0 should exit by itself");
    eprintln!("0.2.0 exited with {exit:?} after {:?}", started.elapsed());
    assert!(!exit.success(), "0.2.0 must fail: {exit:?}");
    assert!(
        node.output().contains("fixture_crash_boot"),
        "{}",
        node.output()
    );
    assert!(
        !root.join("erl_crash.dump").exists(),
        "crash dump should be disabled"
    );
}

#[test]
fn crash_after_serves_then_halts_with_status_1() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("current");
    unpack_tarball(&fixture_tarball(APP, "0.3.0"), &root);
    let epmd = Epmd::new();
    let port = free_port();
    let log = tmp.path().join("node.log");
    let mut node = start(
        &root,
        &epmd,
        port,
        &log,
        &[("FIXTURE_CRASH_AFTER_MS", "2000")],
    );
    let vsn = wait_until_blocking("0.3.0 serving HTTP", BOOT, || status(port, "/"));
    assert_eq!(vsn.0, "0.3.0");
    let exit = node
        .wait_exit(Duration::from_secs(15))
        .expect("0.3.0 should halt by itself");
    assert_eq!(exit.code(), Some(1), "{}", node.output());
}

#[test]
fn no_dist_serves_http_but_refuses_rpc() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("current");
    unpack_tarball(&fixture_tarball(APP, "0.4.0"), &root);
    let epmd = Epmd::new();
    let port = free_port();
    let _node = start(&root, &epmd, port, &tmp.path().join("node.log"), &[]);
    let vsn = wait_until_blocking("0.4.0 serving HTTP", BOOT, || status(port, "/"));
    assert_eq!(vsn.0, "0.4.0");
    let out = rpc(&root, &epmd, "IO.puts(:pong)");
    assert!(!out.status.success(), "rpc must fail without distribution");
}

#[test]
fn migrator_runs_under_eval() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("current");
    unpack_tarball(&fixture_tarball(APP, "0.1.0"), &root);
    let epmd = Epmd::new();
    let marker = tmp.path().join("marker");
    let eval = |expr: &str| {
        release_command(&root, APP, &epmd)
            .args(["eval", expr])
            .env("RELEASE_NODE_SUFFIX", "-3")
            .env("FIXTURE_MARKER", &marker)
            .output()
            .expect("run bin/APP eval")
    };
    let ok = eval("Fixture.Migrator.migrate");
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("migrate 0.1.0 -3"),
        "{ok:?}"
    );
    let ok = eval("Fixture.Migrator.migrate");
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(
        std::fs::read_to_string(&marker).expect("read marker file"),
        "migrate 0.1.0 -3\nmigrate 0.1.0 -3\n"
    );
    let failed = eval("Fixture.Migrator.fail");
    assert_eq!(failed.status.code(), Some(3), "{failed:?}");
    assert!(!String::from_utf8_lossy(&failed.stderr).is_empty());
}

#[test]
fn build_script_is_cached_and_reports_missing_elixir() {
    let dir = common::fixtures_dir(APP);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build.sh");
    let started = Instant::now();
    let again = Command::new("bash")
        .arg(&script)
        .args(["--app", APP])
        .output()
        .expect("run build.sh");
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        dir.to_string_lossy()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cached call took {:?}",
        started.elapsed()
    );

    let bash = std::env::split_paths(&std::env::var_os("PATH").expect("PATH set"))
        .map(|dir| dir.join("bash"))
        .find(|path| path.is_file())
        .expect("bash in PATH");
    let no_elixir = Command::new(bash)
        .arg(&script)
        .args(["--app", APP])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run build.sh");
    assert!(!no_elixir.status.success());
    let stderr = String::from_utf8_lossy(&no_elixir.stderr);
    assert!(stderr.contains("'elixir' not found"), "{stderr}");
}
