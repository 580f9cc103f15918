//! Hot upgrades against real fixture releases (tests/fixtures): each test
//! unpacks 0.1.1 into its own temp `current/`, boots it on its own EPMD port
//! and HTTP port, talks to it over distribution, and kills what it started
//! (the node by pid, epmd by port).

// Test helpers panic on purpose: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deployex_actors::dist::{DistConfig, NodeConnection};
use deployex_actors::upgrade::{self, RelupSource, Step, UpgradeError};

const APP: &str = "upg";
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Runs a fixture build script for `app`; returns the directory holding
/// its tarballs (built once per machine, cached by the script).
fn build(script: &str, app: &str) -> PathBuf {
    let script = repo_root().join("tests/fixtures").join(script);
    let out = Command::new("bash")
        .arg(&script)
        .args(["--app", app])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(stdout.lines().last().unwrap().trim())
}

/// The fixture tarballs (tests/fixtures/build.sh).
fn fixtures_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| build("build.sh", APP)).clone()
}

fn tarball(vsn: &str) -> PathBuf {
    fixtures_dir().join(format!("{APP}-{vsn}.tar.gz"))
}

/// The two-application fixture (tests/fixtures/build-twoapp.sh): the app
/// stays 0.1.0, its dependency `fixture_dep` moves (0.1.1 with an appup).
const TWO_APP: &str = "upgtwo";

fn twoapp_tarball(vsn: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| build("build-twoapp.sh", TWO_APP))
        .join(format!("{TWO_APP}-{vsn}.tar.gz"))
}

fn relup_tarball() -> PathBuf {
    fixtures_dir()
        .join("relup")
        .join(format!("{APP}-0.1.2.tar.gz"))
}

fn unpack(tarball: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let file = std::fs::File::open(tarball).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(dest)
        .unwrap();
}

/// A copy of `src` with `path`'s content replaced by `data`.
fn repack_with(src: &Path, dest: &Path, path: &str, data: &[u8]) {
    let file = std::fs::File::open(src).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let out = std::fs::File::create(dest).unwrap();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        out,
        flate2::Compression::fast(),
    ));
    let mut replaced = false;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name.trim_start_matches("./") == path {
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, data).unwrap();
            replaced = true;
        } else {
            let mut body = Vec::new();
            entry.read_to_end(&mut body).unwrap();
            builder.append(&header, body.as_slice()).unwrap();
        }
    }
    assert!(replaced, "{path} not in {}", src.display());
    builder.into_inner().unwrap().finish().unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn short_host() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.trim().to_owned())
}

/// `/version` as JSON.
fn version(port: u16) -> serde_json::Value {
    serde_json::from_str(&http_get(port, "/version").expect("GET /version")).unwrap()
}

/// A running fixture node in its own temp dir; killed (by pid) with its
/// epmd (by port) on drop.
struct Node {
    _dir: tempfile::TempDir,
    current: PathBuf,
    child: Child,
    http_port: u16,
    epmd_port: u16,
    conn: NodeConnection,
}

impl Node {
    /// The fixture app `vsn`, serving HTTP.
    async fn start(vsn: &str) -> Node {
        let node = Node::launch(&tarball(vsn), APP).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(node.http_port, "/health").is_none() {
            assert!(Instant::now() < deadline, "node never served HTTP");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    /// The two-application fixture `vsn`, booted (`init:get_status()` is
    /// `{started, started}`).
    async fn start_twoapp(vsn: &str) -> Node {
        let node = Node::launch(&twoapp_tarball(vsn), TWO_APP).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let reply = node
                .conn
                .rpc("init", "get_status", vec![], STEP_TIMEOUT)
                .await
                .unwrap();
            if deployex_actors::dist::pretty(&reply) == "{started,started}" {
                return node;
            }
            assert!(Instant::now() < deadline, "node never booted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn launch(tarball: &Path, app: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().canonicalize().unwrap().join("current");
        unpack(tarball, &current);
        let http_port = free_port();
        let epmd_port = free_port();
        let cookie = format!("c{:08x}", rand::random::<u32>());
        let mut cmd = Command::new(current.join("bin").join(app));
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("RELEASE_")
                || name.starts_with("FIXTURE_")
                || ["ROOTDIR", "BINDIR", "ELIXIR_ERL_OPTIONS", "ERL_FLAGS"].contains(&&*name)
            {
                cmd.env_remove(&key);
            }
        }
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let child = cmd
            .arg("start")
            .env("RELEASE_NODE_SUFFIX", "-1")
            .env("RELEASE_COOKIE", &cookie)
            .env("PORT", http_port.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("ERL_CRASH_DUMP_SECONDS", "0")
            .current_dir(&current)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let node_name = format!("{app}-1@{}", short_host());
        let cfg = DistConfig {
            cookie,
            epmd_host: "127.0.0.1".to_owned(),
            epmd_port,
            local_node: format!("dxt{:08x}@{}", rand::random::<u32>(), short_host()),
            connect_timeout: Duration::from_secs(5),
            tls: None,
        };
        Node {
            _dir: dir,
            current,
            child,
            http_port,
            epmd_port,
            conn: connect_until(&node_name, &cfg).await,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn start_erl_vsn(&self) -> String {
        let text = std::fs::read_to_string(self.current.join("releases/start_erl.data")).unwrap();
        text.split_whitespace().nth(1).unwrap().to_owned()
    }
}

async fn connect_until(node: &str, cfg: &DistConfig) -> NodeConnection {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match NodeConnection::connect(node, cfg).await {
            Ok(conn) => return conn,
            Err(err) => assert!(Instant::now() < deadline, "cannot connect to {node}: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.conn.close();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Versions release_handler knows (`which_releases`, any status).
async fn known_versions(conn: &NodeConnection) -> Vec<String> {
    use deployex_actors::dist::{as_list, as_tuple, term_to_string};
    let reply = conn
        .rpc("release_handler", "which_releases", vec![], STEP_TIMEOUT)
        .await
        .unwrap();
    as_list(&reply)
        .unwrap()
        .iter()
        .map(|r| term_to_string(&as_tuple(r).unwrap()[1]).unwrap())
        .collect()
}

fn print_timings(label: &str, report: &upgrade::HotUpgradeReport) {
    let steps: Vec<String> = report
        .steps
        .iter()
        .map(|(s, d)| format!("{s}={:.1}ms", d.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "{label}: total {:.1} ms ({})",
        report.total.as_secs_f64() * 1000.0,
        steps.join(" ")
    );
}

#[test]
fn detect_on_real_tarballs() {
    let dir = tempfile::tempdir().unwrap();
    let root = |vsn: &str| {
        let path = dir.path().join(vsn);
        unpack(&tarball(vsn), &path);
        path
    };
    let (v010, v011, v012) = (root("0.1.0"), root("0.1.1"), root("0.1.2"));
    let d = upgrade::detect(&v012, &v011, APP, "0.1.2", "0.1.1");
    assert!(d.is_hot(), "{d:?}");
    assert_eq!(
        d.reason(),
        format!("appups cover every changed application: {APP} 0.1.1 -> 0.1.2")
    );
    let d = upgrade::detect(&v012, &v010, APP, "0.1.2", "0.1.0");
    assert!(!d.is_hot(), "{d:?}");
    assert_eq!(
        d.reason(),
        format!("appup of {APP} 0.1.2 only upgrades from 0.1.1, the instance runs {APP} 0.1.0")
    );

    let d = upgrade::detect(&v011, &v010, APP, "0.1.1", "0.1.0");
    assert!(!d.is_hot(), "{d:?}");
    assert_eq!(
        d.reason(),
        format!("{APP} 0.1.0 -> 0.1.1 has no appup (lib/{APP}-0.1.1/ebin/{APP}.appup)")
    );

    let shipped = dir.path().join("relup");
    unpack(&relup_tarball(), &shipped);
    let d = upgrade::detect(&shipped, &v011, APP, "0.1.2", "0.1.1");
    assert_eq!(
        d.reason(),
        "relup of 0.1.2 lists 0.1.1 as an upgrade source"
    );
    assert!(!upgrade::detect(&shipped, &v010, APP, "0.1.2", "0.1.0").is_hot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_upgrade_keeps_the_process_and_its_state() {
    let node = Node::start("0.1.1").await;
    let before = version(node.http_port);
    assert_eq!(before["version"], "0.1.1");
    http_get(node.http_port, "/bump").unwrap();
    http_get(node.http_port, "/bump").unwrap();
    let os_pid = version(node.http_port)["os_pid"].clone();
    assert_eq!(os_pid, node.pid().to_string());

    let report = upgrade::hot_upgrade(
        &node.conn,
        &node.current,
        &tarball("0.1.2"),
        APP,
        "0.1.1",
        "0.1.2",
        STEP_TIMEOUT,
    )
    .await
    .unwrap();
    print_timings("hot upgrade (relup built on the node)", &report);
    assert_eq!(report.relup, RelupSource::Built);
    assert!(report.duration(Step::MakeRelup) > Duration::ZERO);

    let after = version(node.http_port);
    assert_eq!(after["version"], "0.1.2");
    assert_eq!(after["os_pid"], os_pid, "same OS process");
    assert_eq!(after["counter"], 2, "state kept by code_change");
    assert_eq!(node.start_erl_vsn(), "0.1.2");
    // The uploaded tarball is consumed by unpack_release.
    assert!(!node.current.join("releases/0.1.2/upg.tar.gz").exists());

    // Same version again: refused before touching anything.
    let err = upgrade::hot_upgrade(
        &node.conn,
        &node.current,
        &tarball("0.1.2"),
        APP,
        "0.1.1",
        "0.1.2",
        STEP_TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, UpgradeError::Precondition { .. }), "{err}");
    assert!(
        err.to_string().contains("permanent release is 0.1.2"),
        "{err}"
    );
    assert_eq!(version(node.http_port)["version"], "0.1.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_relup_is_used() {
    let node = Node::start("0.1.1").await;
    http_get(node.http_port, "/bump").unwrap();
    let report = upgrade::hot_upgrade(
        &node.conn,
        &node.current,
        &relup_tarball(),
        APP,
        "0.1.1",
        "0.1.2",
        STEP_TIMEOUT,
    )
    .await
    .unwrap();
    print_timings("hot upgrade (shipped relup)", &report);
    assert_eq!(report.relup, RelupSource::Shipped);
    assert_eq!(report.duration(Step::MakeRelup), Duration::ZERO);
    let after = version(node.http_port);
    assert_eq!(after["version"], "0.1.2");
    assert_eq!(after["counter"], 1);
    assert_eq!(after["os_pid"], node.pid().to_string());
    assert_eq!(node.start_erl_vsn(), "0.1.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upgrade_is_cleaned_up_and_a_retry_works() {
    let node = Node::start("0.1.1").await;
    http_get(node.http_port, "/bump").unwrap();
    let work = tempfile::tempdir().unwrap();
    let corrupt = work.path().join("corrupt.tar.gz");
    repack_with(
        &relup_tarball(),
        &corrupt,
        "releases/0.1.2/relup",
        b"this is { not an erlang term",
    );

    let err = upgrade::hot_upgrade(
        &node.conn,
        &node.current,
        &corrupt,
        APP,
        "0.1.1",
        "0.1.2",
        STEP_TIMEOUT,
    )
    .await
    .unwrap_err();
    println!("corrupt relup: {err}");
    assert_eq!(err.step(), Step::CheckInstall, "{err}");
    assert!(matches!(err, UpgradeError::Step { .. }), "{err:?}");
    assert!(
        err.to_string().contains("check_install_release failed"),
        "{err}"
    );

    // The node is untouched, and nothing of 0.1.2 is left behind.
    let now = version(node.http_port);
    assert_eq!(now["version"], "0.1.1");
    assert_eq!(now["counter"], 1);
    assert_eq!(node.start_erl_vsn(), "0.1.1");
    assert!(!node.current.join("releases/0.1.2").exists());
    assert!(!node.current.join("lib/upg-0.1.2").exists());
    let known = known_versions(&node.conn).await;
    assert_eq!(known, ["0.1.1"], "0.1.2 was set_removed");

    // The retry with the good tarball succeeds: 0.1.2 was set_removed, so
    // unpack_release does not answer {existing_release, "0.1.2"}.
    let report = upgrade::hot_upgrade(
        &node.conn,
        &node.current,
        &tarball("0.1.2"),
        APP,
        "0.1.1",
        "0.1.2",
        STEP_TIMEOUT,
    )
    .await
    .unwrap();
    print_timings("hot upgrade after a failed attempt", &report);
    let after = version(node.http_port);
    assert_eq!(after["version"], "0.1.2");
    assert_eq!(after["counter"], 1);
    assert_eq!(after["os_pid"], node.pid().to_string());
    assert_eq!(node.start_erl_vsn(), "0.1.2");
}

/// A failed upgrade of a dependency removes the dependency's new `lib/`
/// folder too (not only `lib/{app}-{to}`): else `unpack_release` (and
/// `copy_new_entries`) would keep its stale files, and the retry would
/// fail the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dependency_upgrade_is_cleaned_up_and_a_retry_works() {
    let node = Node::start_twoapp("0.1.0").await;
    let work = tempfile::tempdir().unwrap();
    let corrupt = work.path().join("corrupt.tar.gz");
    repack_with(
        &twoapp_tarball("0.1.1"),
        &corrupt,
        "lib/fixture_dep-0.1.1/ebin/fixture_dep.appup",
        b"{\"0.1.1\", [{\"0.1.0\", [{load_module, 'Elixir.FixtureDep.Nope'}]}], []}.",
    );
    let dep_version = || async {
        let reply = node
            .conn
            .rpc("Elixir.FixtureDep.Info", "version", vec![], STEP_TIMEOUT)
            .await
            .unwrap();
        deployex_actors::dist::pretty(&reply)
    };
    assert_eq!(dep_version().await, r#"<<"0.1.0">>"#);
    let err = upgrade::hot_upgrade(
        &node.conn,
        &node.current,
        &corrupt,
        TWO_APP,
        "0.1.0",
        "0.1.1",
        STEP_TIMEOUT,
    )
    .await
    .unwrap_err();
    println!("appup naming a missing module: {err}");
    assert_eq!(err.step(), Step::MakeRelup, "{err}");
    assert!(!node.current.join("releases/0.1.1").exists());
    assert!(!node.current.join("lib/fixture_dep-0.1.1").exists());
    assert!(node.current.join("lib/fixture_dep-0.1.0").exists());
    assert!(node.current.join(format!("lib/{TWO_APP}-0.1.0")).exists());
    assert_eq!(dep_version().await, r#"<<"0.1.0">>"#);

    upgrade::hot_upgrade(
        &node.conn,
        &node.current,
        &twoapp_tarball("0.1.1"),
        TWO_APP,
        "0.1.0",
        "0.1.1",
        STEP_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(dep_version().await, r#"<<"0.1.1">>"#);
    assert_eq!(node.start_erl_vsn(), "0.1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_over_unpack_does_not_block_the_upgrade() {
    // An attempt that died after unpack_release (deployex killed, no
    // clean-up): the next hot_upgrade set_removes the leftover first.
    let node = Node::start("0.1.1").await;
    let rel_dir = node.current.join("releases/0.1.2");
    std::fs::create_dir_all(&rel_dir).unwrap();
    std::fs::copy(tarball("0.1.2"), rel_dir.join("upg.tar.gz")).unwrap();
    let reply = node
        .conn
        .rpc(
            "release_handler",
            "unpack_release",
            vec![deployex_actors::dist::charlist("0.1.2/upg")],
            STEP_TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(deployex_actors::dist::pretty(&reply), r#"{ok,"0.1.2"}"#);

    // A root that is not the node's: refused before anything is touched.
    let elsewhere = tempfile::tempdir().unwrap();
    let err = upgrade::hot_upgrade(
        &node.conn,
        elsewhere.path(),
        &tarball("0.1.2"),
        APP,
        "0.1.1",
        "0.1.2",
        STEP_TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, UpgradeError::Precondition { .. }), "{err}");
    assert!(err.to_string().contains("the node runs from"), "{err}");
    assert!(node.current.join("lib/upg-0.1.2").is_dir());

    let report = upgrade::hot_upgrade(
        &node.conn,
        &node.current,
        &tarball("0.1.2"),
        APP,
        "0.1.1",
        "0.1.2",
        STEP_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(report.relup, RelupSource::Built);
    assert_eq!(version(node.http_port)["version"], "0.1.2");

    // And cleanup_failed on an unknown version is harmless.
    upgrade::cleanup_failed(&node.conn, &node.current, APP, "9.9.9", STEP_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(node.start_erl_vsn(), "0.1.2");
}
