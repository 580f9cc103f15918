//! End-to-end: OTP hot upgrades through deployex (same OS pid, state kept),
//! a dependency upgraded in place by its own appup, full deployment when an
//! appup does not match or a changed dependency has none, fallback to a
//! full deployment when the hot upgrade fails, and mutual-TLS distribution.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::deployex::{APP, Site, app_version, pid_exists, pids, running_on};
use serde_json::Value;

fn counter(port: u16) -> u64 {
    let (_, body) = common::http_get(port, "/version").unwrap();
    let v: Value = serde_json::from_str(body.trim()).unwrap();
    v["counter"].as_u64().unwrap()
}

/// `(greeting, runtime_mark)` as the app sees them (`GET /config`).
fn runtime_config(port: u16) -> (String, String) {
    let (_, body) = common::http_get(port, "/config").unwrap();
    let v: Value = serde_json::from_str(body.trim()).unwrap();
    (
        v["greeting"].as_str().unwrap().to_string(),
        v["runtime_mark"].as_str().unwrap().to_string(),
    )
}

#[test]
fn a_hot_upgradable_release_upgrades_every_instance_in_place() {
    // The fixture's config/runtime.exs reads this at boot.
    let site = Site::new(3).env("FIXTURE_RUNTIME_GREETING", "hello-runtime");
    site.publish("0.1.1", &[]);
    let dx = site.start();
    let s = dx.wait_status("3 x 0.1.1", Duration::from_secs(90), |s| {
        running_on(s, "0.1.1")
    });
    let before = pids(&s);
    assert_eq!(
        runtime_config(site.app_port),
        ("hello-runtime".to_string(), "runtime-0.1.1".to_string()),
        "runtime.exs applied at boot"
    );
    for i in 0..3u16 {
        common::http_get(site.app_port + i, "/bump").unwrap();
        common::http_get(site.app_port + i, "/bump").unwrap();
        assert_eq!(counter(site.app_port + i), 2);
    }
    site.publish("0.1.2", &[]);
    let s = dx.wait_status("3 x 0.1.2", Duration::from_secs(120), |s| {
        running_on(s, "0.1.2")
    });
    assert_eq!(pids(&s), before, "hot upgrade keeps the OS processes");
    for i in 0..3u16 {
        let (version, _) = app_version(site.app_port + i).unwrap();
        assert_eq!(version, "0.1.2", "the running code is the new version");
        assert_eq!(counter(site.app_port + i), 2, "in-memory state kept");
        let start_erl = std::fs::read_to_string(
            site.service(u32::from(i) + 1)
                .join("current/releases/start_erl.data"),
        )
        .unwrap();
        assert!(
            start_erl.trim().ends_with("0.1.2"),
            "a restart boots 0.1.2: {start_erl}"
        );
        // Runtime configuration survives the upgrade: the value runtime.exs
        // takes from the environment is kept, the one the new runtime.exs
        // changed is updated (before: install_release applied the bare
        // sys.config and both fell back to the config.exs defaults).
        assert_eq!(
            runtime_config(site.app_port + i),
            ("hello-runtime".to_string(), "runtime-0.1.2".to_string()),
            "instance {}",
            i + 1
        );
        // The release's own sys.config is back: a cold boot runs runtime.exs.
        let sys_config = std::fs::read_to_string(
            site.service(u32::from(i) + 1)
                .join("current/releases/0.1.2/sys.config"),
        )
        .unwrap();
        assert!(sys_config.contains("RUNTIME_CONFIG="), "{sys_config}");
        assert!(!sys_config.contains("hello-runtime"), "{sys_config}");
    }
    let history = dx.get("/api/v1/versions");
    let hot: Vec<&Value> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["version"] == "0.1.2")
        .collect();
    assert_eq!(hot.len(), 3);
    assert!(
        hot.iter().all(|r| r["deployment"] == "hot_upgrade"),
        "{history:#}"
    );
    assert!(
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["last_deployment"] == "hot_upgrade")
    );

    // A crash afterwards restarts the upgraded version.
    let victim = before[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = dx.wait_status("instance 1 back after kill", Duration::from_secs(60), |s| {
        pids(s)[0] != victim && running_on(s, "0.1.2")
    });
    assert!(!pid_exists(victim));
    assert_eq!(s["instances"][0]["crash_restarts"], 1);
    assert_eq!(app_version(site.app_port).unwrap().0, "0.1.2");
}

#[test]
fn an_appup_for_another_version_means_a_full_deployment_with_the_reason_logged() {
    let site = Site::new(1);
    site.publish("0.1.0", &[]);
    let dx = site.start();
    let s = dx.wait_status("0.1.0", Duration::from_secs(60), |s| running_on(s, "0.1.0"));
    let before = pids(&s)[0];
    site.publish("0.1.2", &[]);
    let s = dx.wait_status("0.1.2", Duration::from_secs(90), |s| running_on(s, "0.1.2"));
    assert_ne!(pids(&s)[0], before, "full deployment: a new process");
    assert_eq!(
        dx.get("/api/v1/versions")[0]["deployment"],
        "full_deployment"
    );
    let log = dx.log_text();
    assert!(
        log.contains("full deployment") && log.contains("0.1.0"),
        "the decision and its reason are logged"
    );
    assert!(
        site.service(1)
            .join("previous/releases/start_erl.data")
            .is_file()
    );
}

/// `FixtureDep.Info.version()` and the `:fixture_dep` application's
/// version, as instance `i`'s node answers them over `bin/APP rpc`.
fn dep_version(site: &Site, i: u32) -> String {
    let out = common::release_command(&site.service(i).join("current"), APP, &site.epmd)
        .env("RELEASE_NODE_SUFFIX", format!("-{i}"))
        .env("RELEASE_COOKIE", "e2ecookie")
        .args([
            "rpc",
            r##"IO.puts("#{FixtureDep.Info.version()} #{Application.spec(:fixture_dep, :vsn)}")"##,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "rpc: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The two-application fixture (tests/fixtures/build-twoapp.sh): release
/// 0.1.0 -> 0.1.1 changes only the dependency `fixture_dep` (0.1.0 ->
/// 0.1.1, with its appup); the app itself stays 0.1.0 and ships no appup.
/// Before every application's appup was looked at, deployex looked for
/// `lib/dxtest-0.1.1/ebin/dxtest.appup` only and restarted the instance.
#[test]
fn a_dependency_with_its_appup_is_hot_upgraded_in_place() {
    let site = Site::new(1);
    site.publish_twoapp("0.1.0");
    let dx = site.start();
    let s = dx.wait_status("0.1.0", Duration::from_secs(60), |s| running_on(s, "0.1.0"));
    let before = pids(&s)[0];
    assert_eq!(dep_version(&site, 1), "0.1.0 0.1.0");
    site.publish_twoapp("0.1.1");
    let s = dx.wait_status("0.1.1", Duration::from_secs(90), |s| running_on(s, "0.1.1"));
    assert_eq!(pids(&s)[0], before, "same OS process: {}", dx.log_tail(40));
    assert_eq!(s["instances"][0]["last_deployment"], "hot_upgrade");
    assert_eq!(dx.get("/api/v1/versions")[0]["deployment"], "hot_upgrade");
    assert_eq!(
        dep_version(&site, 1),
        "0.1.1 0.1.1",
        "the dependency's new code and version run on the node"
    );
    let start_erl =
        std::fs::read_to_string(site.service(1).join("current/releases/start_erl.data")).unwrap();
    assert!(start_erl.trim().ends_with("0.1.1"), "{start_erl}");
    assert!(
        dx.log_text()
            .contains("appups cover every changed application: fixture_dep 0.1.0 -> 0.1.1"),
        "the decision names the dependency"
    );
}

/// Release 0.1.1 -> 0.1.2 of the two-application fixture changes the
/// dependency (0.1.1 -> 0.1.2) without an appup: a full deployment, and the
/// reason names the dependency in the log and in a `hot_upgrade_skipped`
/// event.
#[test]
fn a_dependency_changed_without_an_appup_means_a_full_deployment_with_the_reason() {
    let site = Site::new(1);
    site.publish_twoapp("0.1.1");
    let dx = site.start();
    let s = dx.wait_status("0.1.1", Duration::from_secs(60), |s| running_on(s, "0.1.1"));
    let before = pids(&s)[0];
    site.publish_twoapp("0.1.2");
    let s = dx.wait_status("0.1.2", Duration::from_secs(90), |s| running_on(s, "0.1.2"));
    assert_ne!(pids(&s)[0], before, "full deployment: a new process");
    assert_eq!(s["instances"][0]["last_deployment"], "full_deployment");
    assert_eq!(
        dx.get("/api/v1/versions")[0]["deployment"],
        "full_deployment"
    );
    let reason =
        "fixture_dep 0.1.1 -> 0.1.2 has no appup (lib/fixture_dep-0.1.2/ebin/fixture_dep.appup)";
    assert!(dx.log_text().contains(reason), "{}", dx.log_tail(40));
    let events = dx.get("/api/v1/events?limit=50");
    let skipped: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "hot_upgrade_skipped")
        .collect();
    assert_eq!(skipped.len(), 1, "{events:#}");
    assert_eq!(skipped[0]["instance"], 1);
    assert_eq!(skipped[0]["version"], "0.1.2");
    assert_eq!(
        skipped[0]["message"],
        format!("full deployment from 0.1.1: {reason}")
    );
    assert_eq!(dep_version(&site, 1), "0.1.2 0.1.2");
}

/// The fixture's 0.1.2-with-relup tarball, with a relup that names 0.1.1
/// (so deployex chooses a hot upgrade) but loads code of an application
/// that does not exist: `check_install_release` fails on the node.
fn corrupt_relup_tarball(dest: &Path) {
    let src = common::fixture_relup_tarball(APP, "0.1.2");
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&src)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let relup = dir.path().join("releases/0.1.2/relup");
    assert!(relup.is_file(), "the relup variant ships a relup");
    std::fs::write(
        &relup,
        b"{\"0.1.2\",\n [{\"0.1.1\",[],[{load_object_code,{no_such_app,\"9.9.9\",[no_such_mod]}},point_of_no_return,{load,{no_such_mod,brutal_purge,brutal_purge}}]}],\n [{\"0.1.1\",[],[]}]}.\n",
    )
    .unwrap();
    let status = Command::new("tar")
        .arg("-czf")
        .arg(dest)
        .arg("-C")
        .arg(dir.path())
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_failing_hot_upgrade_falls_back_to_a_full_deployment() {
    let site = Site::new(1);
    site.publish("0.1.1", &[]);
    let dx = site.start();
    let s = dx.wait_status("0.1.1", Duration::from_secs(60), |s| running_on(s, "0.1.1"));
    let before = pids(&s)[0];
    let bad = site.dir.path().join("bad.tar.gz");
    corrupt_relup_tarball(&bad);
    let mut bytes = Vec::new();
    std::fs::File::open(&bad)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    site.publish_raw_tarball("0.1.2", &bytes);
    site.write_current(r#"{"version":"0.1.2","hash":"bad-relup"}"#);
    let s = dx.wait_status("0.1.2 after fallback", Duration::from_secs(120), |s| {
        running_on(s, "0.1.2")
    });
    assert_ne!(pids(&s)[0], before, "the fallback is a full deployment");
    assert_eq!(
        dx.get("/api/v1/versions")[0]["deployment"],
        "full_deployment"
    );
    let log = dx.log_text();
    assert!(log.contains("hot upgrade failed"), "the failure is logged");
    assert_eq!(app_version(site.app_port).unwrap().0, "0.1.2");

    // A second attempt of the same version works: back to 0.1.1 (manual
    // pin), then a good 0.1.2 tarball is published under the same version
    // (new hash) and automatic mode returns: a hot upgrade this time, not
    // a stale cached copy of the bad tarball nor an `existing_release`.
    let (code, body) = dx.post("/api/v1/mode", r#"{"mode":"manual","version":"0.1.1"}"#);
    assert_eq!(code, 200, "{body}");
    let s = dx.wait_status("pinned back to 0.1.1", Duration::from_secs(120), |s| {
        running_on(s, "0.1.1")
    });
    let on_011 = pids(&s)[0];
    let counter_before = counter(site.app_port);
    let ready = |dx: &common::deployex::Deployex| {
        dx.log_text()
            .matches("release verified and ready version=0.1.2")
            .count()
    };
    let seen = ready(&dx);
    site.publish("0.1.2", &[]);
    // Version is a release's identity (as upstream): let the fetcher see
    // the new tarball before automatic mode picks the store's release.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ready(&dx) == seen {
        assert!(
            std::time::Instant::now() < deadline,
            "republished 0.1.2 fetched"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = dx.post("/api/v1/mode", r#"{"mode":"automatic"}"#);
    assert_eq!(code, 200, "{body}");
    let s = dx.wait_status("0.1.2 again", Duration::from_secs(120), |s| {
        running_on(s, "0.1.2")
    });
    assert_eq!(
        pids(&s)[0],
        on_011,
        "the second attempt is a hot upgrade: {}",
        dx.log_tail(60)
    );
    let h = dx.get("/api/v1/versions");
    assert_eq!(h[0]["deployment"], "hot_upgrade", "{h:#}");
    assert_eq!(h[0]["hash"], "h0.1.2", "{h:#}");
    assert!(counter(site.app_port) >= counter_before, "state kept");
}

fn gen_certs(dir: &Path) {
    let status = Command::new("bash")
        .arg("devops/tls/gen-certs.sh")
        .arg(dir)
        .arg(common::short_hostname())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "gen-certs.sh");
}

#[test]
fn mutual_tls_distribution_connects_and_hot_upgrades() {
    let site = Site::new(1);
    let certs = site.dir.path().join("tls");
    gen_certs(&certs);
    let conf = certs.join("inet_tls.conf");
    let site = site
        .env("FIXTURE_TLS_OPTFILE", conf.to_str().unwrap())
        .env("DEPLOYEX_OTP_TLS_CERT_PATH", certs.to_str().unwrap());
    site.publish("0.1.1", &[]);
    let dx = site.start();
    let s = dx.wait_status("0.1.1 over TLS", Duration::from_secs(90), |s| {
        running_on(s, "0.1.1")
    });
    assert_eq!(s["instances"][0]["tls"], true, "{s:#}");
    assert_eq!(s["deployex"]["tls"], true);
    let before = pids(&s)[0];
    site.publish("0.1.2", &[]);
    let s = dx.wait_status("hot upgrade over TLS", Duration::from_secs(90), |s| {
        running_on(s, "0.1.2")
    });
    assert_eq!(pids(&s)[0], before);
    assert_eq!(dx.get("/api/v1/versions")[0]["deployment"], "hot_upgrade");
    drop(dx);

    // deployex with a certificate from another CA: refused, with a reason.
    let other = site.dir.path().join("other-ca");
    gen_certs(&other);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(site.dir.path().join("deployex.log"))
        .unwrap();
    writeln!(f, "---- second run, certificate from another CA ----").unwrap();
    let dx = site.start_with(&[("DEPLOYEX_OTP_TLS_CERT_PATH", other.to_str().unwrap())]);
    let s = dx.wait_status("a clear TLS error", Duration::from_secs(60), |s| {
        s["instances"][0]["os_pid"].as_i64().is_some()
            && s["instances"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("certificate") || e.contains("CA"))
    });
    assert_eq!(s["instances"][0]["otp_connected"], false);
    assert_eq!(
        s["instances"][0]["state"], "starting",
        "never ready without the link"
    );
}
