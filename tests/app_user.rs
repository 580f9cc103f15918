//! `DEPLOYEX_APP_USER` end to end (issue 15): deployex runs as root, the
//! instance, its pre-commands and the web terminal's remote shell run as
//! `nobody`; deployments, hot upgrades, logs and the terminal work; the
//! app cannot write its release's code nor deployex's state.
//!
//! Needs root (switching users does): run as another user, the test says
//! why and returns. CI runs as root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::deployex::{APP, Site, app_version, pids, running_on};

const NOBODY: u32 = 65534;

/// The real, effective, saved and filesystem uids of `pid`.
fn uids(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

fn owner(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Pids of the remote shells (`-remsh`) started for this site's EPMD.
fn remote_shells(epmd_port: u16) -> Vec<i32> {
    let needle = format!("ERL_EPMD_PORT={epmd_port}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains("remsh")
                && String::from_utf8_lossy(&env).contains(&needle)
        })
        .collect()
}

#[test]
fn apps_run_as_the_app_user_and_deploy_upgrade_log_and_open_terminals() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "skipped: DEPLOYEX_APP_USER needs deployex to run as root, and this test runs as uid {}",
            nix::unistd::Uid::effective()
        );
        return;
    }
    let site = Site::new(1);
    // The site's temp dir is 0700 root: the app user must be able to reach
    // the service folders below it (what an operator's var dir gives).
    std::fs::set_permissions(site.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    // A folder anyone may write: the pre-command's marker lands there.
    let shared = site.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = shared.join("migrations.txt");
    let site = site
        .env("DEPLOYEX_APP_USER", "nobody")
        .env("FIXTURE_MARKER", marker.to_str().unwrap());

    site.publish("0.1.1", &["eval Fixture.Migrator.migrate"]);
    let mut dx = site.start();
    let s = dx.wait_status("0.1.1 running as nobody", Duration::from_secs(90), |s| {
        running_on(s, "0.1.1")
    });
    let pid = pids(&s)[0];
    assert_eq!(uids(pid), vec![NOBODY; 4], "the BEAM runs as nobody");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "beam.smp"
    );
    // Deployed: it answers HTTP.
    assert_eq!(
        app_version(site.app_port).unwrap(),
        ("0.1.1".to_string(), pid.to_string())
    );
    // The pre-command ran as nobody too.
    assert!(
        std::fs::read_to_string(&marker)
            .unwrap()
            .contains("migrate 0.1.1")
    );
    assert_eq!(owner(&marker).0, NOBODY, "the pre-command's file");

    // Logs: the instance's lines reach its log file, which is the app's.
    common::wait_until_blocking(
        "a request in the stdout log",
        Duration::from_secs(15),
        || {
            std::fs::read_to_string(site.log_file(1, "stdout"))
                .is_ok_and(|l| l.contains("GET /version"))
                .then_some(())
        },
    );
    assert_eq!(owner(&site.log_file(1, "stdout")).0, NOBODY);

    // Ownership: the release and deployex's state are root's.
    let service = site.service(1);
    let current = service.join("current");
    let (uid, gid, mode) = owner(&service);
    assert_eq!((uid, gid, mode), (0, NOBODY, 0o750), "service folder");
    let (uid, gid, mode) = owner(&service.join("tmp"));
    assert_eq!((uid, gid, mode), (NOBODY, NOBODY, 0o700), "tmp/");
    for path in [
        current.join("lib"),
        current.join("releases"),
        current.join("bin").join(APP),
    ] {
        let (uid, gid, mode) = owner(&path);
        assert_eq!((uid, gid), (0, NOBODY), "{}", path.display());
        assert_eq!(mode & 0o022, 0, "{} mode {mode:o}", path.display());
    }
    assert_eq!(owner(&service.join("pid")).0, 0);

    // A hot upgrade (release_handler runs in the node, as nobody): same
    // process, new version, the release root's again afterwards.
    site.publish("0.1.2", &[]);
    let s = dx.wait_status("0.1.2 hot-upgraded", Duration::from_secs(120), |s| {
        running_on(s, "0.1.2")
    });
    assert_eq!(pids(&s), vec![pid], "same OS process");
    assert_eq!(s["instances"][0]["last_deployment"], "hot_upgrade", "{s:#}");
    assert_eq!(app_version(site.app_port).unwrap().0, "0.1.2");
    let start_erl = std::fs::read_to_string(current.join("releases/start_erl.data")).unwrap();
    assert!(start_erl.trim().ends_with("0.1.2"), "{start_erl}");
    for path in [
        current.join("lib"),
        current.join(format!("lib/{APP}-0.1.2")),
        current.join("releases"),
        current.join("releases/0.1.2"),
        current.join("releases/start_erl.data"),
        current.join("releases/RELEASES"),
    ] {
        let (uid, gid, mode) = owner(&path);
        assert_eq!(
            (uid, gid),
            (0, NOBODY),
            "{} after the upgrade",
            path.display()
        );
        assert_eq!(mode & 0o022, 0, "{} mode {mode:o}", path.display());
    }

    // The terminal: a remote shell, as nobody, into the node; from there
    // the app can write its tmp/ but neither its code nor its boot files.
    let input = concat!(
        "IO.puts(\"au\" <> inspect([",
        "File.write(Path.join(:code.root_dir(), \"lib/pwn.txt\"), \"x\"), ",
        "File.write(:code.which(Fixture.Counter), \"x\"), ",
        "File.write(Path.join(:code.root_dir(), \"releases/start_erl.data\"), \"x\"), ",
        "File.write(Path.join(System.fetch_env!(\"RELEASE_TMP\"), \"ok.txt\"), \"x\")]))"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let epmd_port = site.epmd.port;
    rt.block_on(common::terminal::answers(
        site.api_port,
        dx.token.as_deref().unwrap(),
        input,
        "au[{:error, :eacces}, {:error, :eacces}, {:error, :eacces}, :ok]",
        || {
            let shells = remote_shells(epmd_port);
            assert!(!shells.is_empty(), "no remote shell found");
            for shell in shells {
                assert_eq!(uids(shell), vec![NOBODY; 4], "the remote shell");
            }
        },
    ));
    assert_eq!(owner(&service.join("tmp/ok.txt")).0, NOBODY);
    assert!(!current.join("lib/pwn.txt").exists());

    // A crash restart still starts it as nobody.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = dx.wait_status("restarted after kill", Duration::from_secs(60), |s| {
        pids(s)[0] != pid && running_on(s, "0.1.2")
    });
    assert_eq!(uids(pids(&s)[0]), vec![NOBODY; 4]);
    dx.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
}

#[test]
fn an_unknown_app_user_is_a_configuration_error() {
    let out = std::process::Command::new(common::deployex::deployex_bin())
        .arg("check-config")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("DEPLOYEX_APP_USER", "no-such-user-dx")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("DEPLOYEX_APP_USER") && stderr.contains("no such user"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_deployex_that_cannot_switch_users_refuses_to_start() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: starting deployex as another user needs root");
        return;
    }
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // deployex as nobody, asked to run the apps as `daemon`.
    let mut child = std::process::Command::new(common::deployex::deployex_bin())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("DEPLOYEX_APP_USER", "daemon")
        .env("DEPLOYEX_VAR_DIR", dir.path().join("var"))
        .env("DEPLOYEX_LOG_DIR", dir.path().join("log"))
        .env("DEPLOYEX_RELEASE_DIR", dir.path().join("store"))
        .env("DEPLOYEX_PHX_PORT", common::free_port().to_string())
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    // Without the check it would start and run: bounded wait, then kill.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let status = status.unwrap_or_else(|| panic!("deployex started as nobody: {stderr}"));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("DEPLOYEX_APP_USER") && stderr.contains("CAP_SETUID"),
        "{stderr}"
    );
}

#[test]
fn a_relx_release_runs_as_the_app_user() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: DEPLOYEX_APP_USER needs deployex to run as root");
        return;
    }
    let site = Site::new(1);
    std::fs::set_permissions(site.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let site = site.env("DEPLOYEX_APP_USER", "nobody");
    // relx writes its vm.args/sys.config copies (RELX_REPLACE_OS_VARS)
    // next to the originals unless RELX_OUT_FILE_PATH says otherwise.
    site.publish_rebar3("0.1.0", &[]);
    let dx = site.start();
    let s = dx.wait_status(
        "relx 0.1.0 running as nobody",
        Duration::from_secs(90),
        |s| running_on(s, "0.1.0") && s["instances"][0]["release_kind"] == "relx",
    );
    let pid = pids(&s)[0];
    assert_eq!(uids(pid), vec![NOBODY; 4]);
    assert_eq!(
        app_version(site.app_port).unwrap(),
        ("0.1.0".to_string(), pid.to_string())
    );
    assert!(
        site.service(1).join("tmp/vm.args").is_file(),
        "relx's copy in tmp/"
    );
}
