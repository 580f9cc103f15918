//! End-to-end tests of rebar3/relx releases (issue 20): the real `deployex`
//! binary with the rebar3 fixture (`tests/fixtures/build-rebar3.sh`): relx
//! releases run in the foreground, connect, roll, hot-upgrade through their
//! relup, run pre-commands and the web terminal; releases deployex cannot
//! supervise (a fixed node name, a daemonising start) are refused and leave
//! no VM behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::deployex::{Site, app_version, pid_alive, pids};
use nix::sys::signal::Signal;
use serde_json::Value;

fn all_running(status: &Value, version: &str) -> bool {
    status["instances"].as_array().unwrap().iter().all(|i| {
        i["state"] == "running"
            && i["version"] == version
            && i["otp_connected"] == true
            && i["release_kind"] == "relx"
    })
}

/// Pids of the BEAM nodes ([`common::process::is_beam_node`]) whose command line names a path under
/// `dir`: every VM of the site, wherever it was started from.
fn beams_under(dir: &Path) -> Vec<i32> {
    let needle = dir.to_str().unwrap().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !common::process::is_beam_node(pid) || !pid_alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

fn instance_error(status: &Value, i: usize) -> String {
    status["instances"][i]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Names registered in the site's EPMD (`epmd -names`).
fn epmd_names(site: &Site) -> String {
    let out = std::process::Command::new("epmd")
        .args(["-port", &site.epmd.port.to_string(), "-names"])
        .output()
        .expect("run epmd -names");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rebar3_replicas_run_in_the_foreground_roll_hot_upgrade_and_stop() {
    let started = Instant::now();
    let site = Site::new(2);
    let marker = site.dir.path().join("migrations.txt");
    let site = site
        .env("FIXTURE_MARKER", marker.to_str().unwrap())
        .env("DEPLOYEX_BEAM_SAMPLE_MS", "300");
    site.publish_rebar3("0.1.0", &[]);
    // This run leaves the VMs running when it stops: the next one adopts them.
    let mut dx = site.start_with(&[("DEPLOYEX_STOP_APPS_ON_EXIT", "false")]);

    let status = dx.wait_status(
        "2 relx replicas of 0.1.0 running and connected",
        Duration::from_secs(60),
        |s| all_running(s, "0.1.0"),
    );
    let first = pids(&status);
    for (i, &pid) in first.iter().enumerate() {
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
        assert_eq!(pgid.as_raw(), pid, "instance {} leads its group", i + 1);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "beam.smp", "the spawned pid is the VM itself");
        let (version, os_pid) = app_version(site.app_port + i as u16).unwrap();
        assert_eq!((version.as_str(), os_pid), ("0.1.0", pid.to_string()));
    }
    let mut beams = beams_under(site.dir.path());
    beams.sort();
    let mut expected = first.clone();
    expected.sort();
    assert_eq!(beams, expected, "exactly the 2 supervised BEAMs");
    assert!(
        status["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["crash_restarts"] == 0)
    );
    // Logs: the fixture prints its banner and every request on stdout.
    common::wait_until_blocking("stdout of instance 1", Duration::from_secs(10), || {
        std::fs::read_to_string(site.log_file(1, "stdout"))
            .is_ok_and(|l| l.contains("GET /version"))
            .then_some(())
    });

    // The web terminal runs `remote_console` on the relx node.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The relx remote console evaluates an Erlang expression.
    rt.block_on(common::terminal::answers(
        site.api_port,
        dx.token.as_deref().unwrap(),
        "io:format(\"rx~p~n\", [6*7]).",
        "rx42",
        || {},
    ));

    // kill -9 one VM: respawned.
    let victim = first[1];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    dx.wait_status("instance 2 respawned", Duration::from_secs(30), |s| {
        let p = pids(s)[1];
        p != 0 && p != victim && all_running(s, "0.1.0")
    });

    // 0.1.1 with a pre-command (relx `eval` in a VM of its own): both roll.
    site.publish_rebar3("0.1.1", &["eval fixture_rx_migrator:migrate()"]);
    let status = dx.wait_status("both on 0.1.1", Duration::from_secs(90), |s| {
        all_running(s, "0.1.1")
    });
    let rolled = pids(&status);
    assert!(rolled.iter().all(|p| !first.contains(p)), "new VMs");
    let lines = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        ["migrate 0.1.1 dxtest-1-eval", "migrate 0.1.1 dxtest-2-eval"]
    );

    // 0.1.2 ships a relup from 0.1.1: hot upgrade, same OS pids.
    site.publish_rebar3("0.1.2", &[]);
    let status = dx.wait_status("both hot-upgraded to 0.1.2", Duration::from_secs(90), |s| {
        all_running(s, "0.1.2")
    });
    assert_eq!(pids(&status), rolled, "a hot upgrade keeps the OS pids");
    for i in 0..2 {
        assert_eq!(status["instances"][i]["last_deployment"], "hot_upgrade");
        let (version, os_pid) = app_version(site.app_port + i as u16).unwrap();
        assert_eq!((version.as_str(), os_pid), ("0.1.2", rolled[i].to_string()));
    }
    assert_eq!(beams_under(site.dir.path()).len(), 2);
    // BEAM telemetry over the distribution link.
    dx.wait_status("BEAM telemetry of both", Duration::from_secs(10), |s| {
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["beam"]["processes"].as_u64().is_some_and(|n| n > 0))
    });

    // A new deployex adopts the running relx VMs (same pids, no restart).
    assert_eq!(
        dx.stop_with(Signal::SIGTERM, Duration::from_secs(30)),
        Some(0)
    );
    assert!(rolled.iter().all(|&p| pid_alive(p)), "VMs kept running");
    let mut dx = site.start();
    let status = dx.wait_status("adopted", Duration::from_secs(30), |s| {
        all_running(s, "0.1.2")
    });
    assert_eq!(pids(&status), rolled, "the same VMs are adopted");

    // SIGTERM of deployex stops every VM.
    let code = dx.stop_with(Signal::SIGTERM, Duration::from_secs(30));
    assert_eq!(code, Some(0));
    // Adopted VMs are not deployex's children: init reaps them.
    common::wait_until_blocking("no BEAM left", Duration::from_secs(10), || {
        beams_under(site.dir.path()).is_empty().then_some(())
    });
    eprintln!("relx e2e took {:?}", started.elapsed());
}

#[test]
fn rebar3_releases_deployex_cannot_supervise_are_refused() {
    // The template's vm.args: `-sname rxfixed` for every replica.
    let site = Site::new(2);
    site.publish_rebar3("0.2.0", &[]);
    let dx = site.start();
    let status = dx.wait_status("fixed node name refused", Duration::from_secs(60), |s| {
        instance_error(s, 0).contains("pins the node name")
    });
    let err = instance_error(&status, 0);
    assert!(
        err.contains("-sname rxfixed") && err.contains("${RELEASE_NODE}"),
        "{err}"
    );
    assert!(
        status["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["os_pid"].is_null() && i["state"] != "running"),
        "nothing started: {status:#}"
    );
    assert!(beams_under(site.dir.path()).is_empty());
    assert!(!epmd_names(&site).contains("rxfixed"));
    drop(dx);

    // relx's `start` daemonises the VM: refused, the VM stopped.
    let site = Site::new(1).env("DEPLOYEX_START_COMMAND", "start");
    site.publish_rebar3("0.1.0", &[]);
    let dx = site.start();
    let status = dx.wait_status("daemonising start refused", Duration::from_secs(60), |s| {
        instance_error(s, 0).contains("daemon")
    });
    let err = instance_error(&status, 0);
    assert!(err.contains("`bin/{app} start` exited 0"), "{err}");
    assert_eq!(status["instances"][0]["state"], "stopped");
    common::wait_until_blocking("the escaped VM is gone", Duration::from_secs(10), || {
        beams_under(site.dir.path()).is_empty().then_some(())
    });
    common::wait_until_blocking(
        "the escaped node left EPMD",
        Duration::from_secs(10),
        || (!epmd_names(&site).contains("dxtest-1")).then_some(()),
    );
    // Refused, not restarted: still nothing a moment later.
    let s = dx.status();
    assert_eq!(s["instances"][0]["crash_restarts"], 0, "{s:#}");
}
