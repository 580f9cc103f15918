//! End to end of fleet mode: 2–3 real deployex "hosts" on this machine, each
//! with its own DEPLOYEX_HOST_ID, var dir, ports and EPMD, on one shared
//! local store or one moto S3 bucket, deploying real releases.
//!
//! - `two_hosts_on_a_local_store`: canary rollout host by host, a
//!   crash-at-boot version ghosted fleet-wide, un-ghost, a canary killed
//!   mid-deploy (its lease runs out), a store outage;
//! - `two_apps_each_have_their_own_fleet`: two hosts each running the same
//!   two apps (`[[apps]]` file, `dxtest` and `dxsmoke`): each app's
//!   `/api/v1/apps/{app}/fleet` and `fleet/{app}/local/` objects are its
//!   own, a new version of one app rolls through its own fleet (claims
//!   under its prefix only, behind its canary) while the other app's pids
//!   never change, and a ghost of one app is not the other's;
//! - `three_hosts_on_s3_with_two_slots`: MAX_PARALLEL=2 on moto S3, the
//!   fleet API, `deployex fleet` and the `/fleet` page.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use common::apps::{AppGuard, start_with_config};
use common::deployex::{APP, Deployex, Site, deployex_bin, pids, running_on};
use common::fixture_tarball;
use common::moto::{self, Moto};
use nix::sys::signal::Signal;
use serde_json::Value;

/// bcrypt of `deployex`: the harness logs in with that password.
const ADMIN_HASH: &str = "$2b$12$oTpgs.Vc4nxDsEB8MBkB.Obs9rCf4wB4WvKYErfgcY9BEFaYp48Rq";
/// Short enough for a test, long enough for a busy 2-core machine to renew.
const LEASE_MS: u64 = 4000;

fn host(id: &str, replicas: u32, extra: &[(&str, &str)]) -> Site {
    let mut site = Site::new(replicas)
        .env("DEPLOYEX_FLEET", "true")
        .env("DEPLOYEX_HOST_ID", id)
        .env("DEPLOYEX_FLEET_HEARTBEAT_MS", "200")
        .env("DEPLOYEX_FLEET_LEASE_MS", &LEASE_MS.to_string())
        .env("DEPLOYEX_ROLLBACK_CRASHES", "1");
    for (k, v) in extra {
        site = site.env(k, v);
    }
    site
}

/// `deployex publish` of the fixture `version` with `args` and `env`.
fn publish(version: &str, args: &[&str], env: &[(&str, &str)]) {
    publish_app(APP, version, args, env);
}

/// `deployex publish` of `app`'s fixture `version` with `args` and `env`.
fn publish_app(app: &str, version: &str, args: &[&str], env: &[(&str, &str)]) {
    let tarball = fixture_tarball(app, version);
    let mut cmd = Command::new(deployex_bin());
    cmd.arg("publish")
        .arg(&tarball)
        .args(["--app", app])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "publish {version}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where a host is with `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotStarted,
    InProgress,
    Done,
}

fn phase(status: &Value, version: &str) -> Phase {
    let instances = status["instances"].as_array().unwrap();
    if running_on(status, version) {
        Phase::Done
    } else if status["deploying"]["version"] == version
        || instances.iter().any(|i| i["version"] == version)
    {
        Phase::InProgress
    } else {
        Phase::NotStarted
    }
}

/// Polls every host until all run `version`, asserting at each round
/// that at most `parallel` hosts are between "started" and "ready on every
/// instance". Returns the order in which hosts started.
fn roll_out(hosts: &[&Deployex], version: &str, parallel: usize, timeout: Duration) -> Vec<usize> {
    roll_out_at(hosts, "/api/v1/status", version, parallel, timeout, || ())
}

/// [`roll_out`] of the app whose status is at `status_path`, calling
/// `each_round` (more assertions) at every round.
fn roll_out_at(
    hosts: &[&Deployex],
    status_path: &str,
    version: &str,
    parallel: usize,
    timeout: Duration,
    mut each_round: impl FnMut(),
) -> Vec<usize> {
    let deadline = Instant::now() + timeout;
    let mut order = Vec::new();
    loop {
        each_round();
        let statuses: Vec<Value> = hosts.iter().map(|d| d.get(status_path)).collect();
        let phases: Vec<Phase> = statuses.iter().map(|s| phase(s, version)).collect();
        let busy = phases.iter().filter(|p| **p == Phase::InProgress).count();
        assert!(
            busy <= parallel,
            "{busy} hosts deploying {version} at once (at most {parallel}): {phases:?}\n{statuses:#?}"
        );
        for (i, p) in phases.iter().enumerate() {
            if *p != Phase::NotStarted && !order.contains(&i) {
                order.push(i);
            }
        }
        if phases.iter().all(|p| *p == Phase::Done) {
            return order;
        }
        assert!(
            Instant::now() < deadline,
            "{version} not rolled out in {timeout:?}: {phases:?}\n{}",
            hosts
                .iter()
                .map(|d| d.log_tail(30))
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn claims_of(fleet: &Value, version: &str) -> Vec<Value> {
    fleet["claims"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["version"] == version)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Two hosts on one local store: host-by-host rollout behind a canary, a
/// crash-at-boot version ghosted fleet-wide by the canary and never started
/// on the other host, and a canary SIGKILLed mid-deploy whose slot the
/// other host takes after the lease.
#[test]
fn two_hosts_on_a_local_store() {
    let shared = tempfile::tempdir().unwrap();
    let store = shared.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let store_s = store.to_str().unwrap().to_owned();
    let on_store = [("DEPLOYEX_RELEASE_DIR", store_s.as_str())];
    let (a, b) = (host("host-a", 2, &on_store), host("host-b", 2, &on_store));
    publish("0.1.0", &["--store", &store_s], &[]);
    let dx_a = a.start();
    let dx_b = b.start();
    roll_out(&[&dx_a, &dx_b], "0.1.0", 1, Duration::from_secs(120));

    // A good version: host by host, behind the canary.
    publish("0.1.1", &["--store", &store_s], &[]);
    let order = roll_out(&[&dx_a, &dx_b], "0.1.1", 1, Duration::from_secs(120));
    let canary = if order[0] == 0 { "host-a" } else { "host-b" };
    // The fleet view is refreshed every heartbeat: the slot goes soon after
    // the last instance is ready.
    let fleet =
        common::wait_until_blocking("0.1.1's slot released", Duration::from_secs(10), || {
            // `store_time`: a view read since this host was first asked.
            let f = dx_a.get("/api/v1/fleet");
            (f["store_time"].is_string() && claims_of(&f, "0.1.1").is_empty()).then_some(f)
        });
    assert_eq!(fleet["canaries"]["0.1.1"], canary, "{fleet:#}");
    let hosts: Vec<&str> = fleet["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["host-a", "host-b"]);

    // A crash-at-boot version: ghosted on the canary, never started on the
    // other host (same OS pids, no 0.2.0 in its history).
    let before: Vec<Vec<i32>> = [&dx_a, &dx_b].iter().map(|d| pids(&d.status())).collect();
    publish("0.2.0", &["--store", &store_s], &[]);
    let ghosted =
        common::wait_until_blocking("0.2.0 ghosted fleet-wide", Duration::from_secs(120), || {
            let f = dx_a.get("/api/v1/fleet");
            f["ghosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == "0.2.0")
                .then_some(f)
        });
    let canary_02 = ghosted["canaries"]["0.2.0"].as_str().unwrap().to_owned();
    let (bad, other) = if canary_02 == "host-a" {
        (&dx_a, &dx_b)
    } else {
        (&dx_b, &dx_a)
    };
    let other_before = if canary_02 == "host-a" {
        &before[1]
    } else {
        &before[0]
    };
    bad.wait_status("the canary rolled back", Duration::from_secs(90), |s| {
        running_on(s, "0.1.1")
    });
    // Watch the other host for several heartbeats and rollout ticks.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let s = other.status();
        assert_eq!(&pids(&s), other_before, "the other host was touched: {s:#}");
        assert!(running_on(&s, "0.1.1"), "{s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let history = other.get("/api/v1/versions");
    assert!(
        !history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["version"] == "0.2.0"),
        "{history:#}"
    );

    // Un-ghosting on the other host (with the CLI) clears the ghost
    // fleet-wide, the canary's own list included. current.json goes back
    // to 0.1.1 first, so that nothing deploys 0.2.0 again.
    publish("0.1.1", &["--store", &store_s], &[]);
    let out = Command::new(deployex_bin())
        .args(["unghost", "0.2.0", "--url"])
        .arg(format!("http://127.0.0.1:{}", other.api_port))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DEPLOYEX_TOKEN", other.token.as_deref().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bad.wait_status(
        "0.2.0 un-ghosted on the canary",
        Duration::from_secs(30),
        |s| {
            !s["ghosted_versions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "0.2.0")
        },
    );
    common::wait_until_blocking("no fleet ghost", Duration::from_secs(10), || {
        dx_a.get("/api/v1/fleet")["ghosts"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });

    // The canary dies mid-deploy: the other host proceeds after the lease.
    publish("0.1.2", &["--store", &store_s], &[]);
    let claim = common::wait_until_blocking("a slot for 0.1.2", Duration::from_secs(60), || {
        claims_of(&dx_a.get("/api/v1/fleet"), "0.1.2")
            .first()
            .cloned()
    });
    let holder = claim["host"].as_str().unwrap().to_owned();
    let (mut dead, survivor) = if holder == "host-a" {
        (dx_a, dx_b)
    } else {
        (dx_b, dx_a)
    };
    dead.stop_with(Signal::SIGKILL, Duration::from_secs(5));
    let killed = Instant::now();
    let s = survivor.wait_status(
        "0.1.2 on the surviving host",
        Duration::from_secs(120),
        |s| running_on(s, "0.1.2"),
    );
    assert!(
        killed.elapsed() >= Duration::from_millis(LEASE_MS - 1000),
        "the survivor did not wait for {holder}'s lease: {:?}",
        killed.elapsed()
    );
    assert!(survivor.log_text().contains("took over an expired slot"));

    // Store outage: the host keeps running what it runs, reports the
    // error, and its heartbeats resume when the store is back.
    let running = pids(&s);
    let away = shared.path().join("store-away");
    std::fs::rename(&store, &away).unwrap();
    common::wait_until_blocking("the fleet error", Duration::from_secs(10), || {
        survivor.get("/api/v1/fleet")["last_error"]
            .as_str()
            .map(str::to_owned)
    });
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        let s = survivor.status();
        assert_eq!(pids(&s), running, "{s:#}");
        assert!(running_on(&s, "0.1.2"), "{s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !store.exists(),
        "the fleet does not recreate a missing store"
    );
    std::fs::rename(&away, &store).unwrap();
    common::wait_until_blocking("heartbeats again", Duration::from_secs(10), || {
        let f = survivor.get("/api/v1/fleet");
        let fresh = f["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["age_ms"].as_u64().is_some_and(|a| a < 1000));
        (f["last_error"].is_null() && fresh).then_some(())
    });
    drop(dead);
}

/// The second app of [`two_apps_each_have_their_own_fleet`] (the second
/// fixture of tests/multi_app.rs).
const APP_B: &str = "dxsmoke";

/// A fleet host's `[[apps]]` file: `APP` and `APP_B`, one replica each, on
/// the shared local `store`; the fleet settings are top-level (host-wide).
fn two_apps_config(site: &Site, id: &str, store: &Path, port_b: u16) -> PathBuf {
    let path = site.dir.path().join("deployex.toml");
    let text = format!(
        r#"
fleet = true
host_id = "{id}"
fleet_heartbeat_ms = 200
fleet_lease_ms = {LEASE_MS}
monitored_replicas = 1
release_dir = "{store}"
min_ready_ms = 300
rollback_crashes = 1

[[apps]]
monitored_app_name = "{APP}"
monitored_app_port = {port_a}

[[apps]]
monitored_app_name = "{APP_B}"
monitored_app_port = {port_b}
"#,
        store = store.display(),
        port_a = site.app_port,
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The files under `dir`, recursively (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() { files_under(&p) } else { vec![p] }
        })
        .collect()
}

/// The version of every instance of every host in a fleet view, by host.
fn fleet_versions(fleet: &Value) -> Vec<(String, Vec<String>)> {
    fleet["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .map(|h| {
                    let versions = h["instances"]
                        .as_array()
                        .map(|i| {
                            i.iter()
                                .map(|i| i["version"].as_str().unwrap_or("").to_owned())
                                .collect()
                        })
                        .unwrap_or_default();
                    (h["host"].as_str().unwrap_or("").to_owned(), versions)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Two hosts on one local store, each running the same two apps from an
/// `[[apps]]` file: each app has its own fleet (its own view, its own
/// objects under `fleet/{app}/local/`); a new version of B rolls through
/// B's fleet behind B's canary while A's pids never change and A's fleet
/// holds no claim; a crash-at-boot version of B is ghosted in B's fleet
/// only, never started on the other host. A runs 0.1.1 and B rolls to
/// 0.1.1 too: the same version name in both fleets.
#[test]
fn two_apps_each_have_their_own_fleet() {
    let shared = tempfile::tempdir().unwrap();
    let store = shared.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let store_s = store.to_str().unwrap().to_owned();
    let on_store = ["--store", store_s.as_str()];
    let ids = ["host-a", "host-b"];
    let sites = [Site::new(1), Site::new(1)];
    let _b_guards = sites.each_ref().map(|site| AppGuard {
        site,
        app: APP_B,
        instances: 1,
    });
    publish_app(APP, "0.1.1", &on_store, &[]);
    publish_app(APP_B, "0.1.0", &on_store, &[]);
    let dxs: Vec<Deployex> = sites
        .iter()
        .zip(ids)
        .map(|(site, id)| {
            let port_b = common::deployex::free_port_range(1);
            start_with_config(site, &two_apps_config(site, id, &store, port_b))
        })
        .collect();
    let hosts: Vec<&Deployex> = dxs.iter().collect();
    let status_b = format!("/api/v1/apps/{APP_B}/status");
    let fleet_of = |app: &str| format!("/api/v1/apps/{app}/fleet");
    // Both apps come up at once, each host by host behind its own fleet's
    // slot (B is watched while A rolls: it may be done first).
    roll_out_at(
        &hosts,
        "/api/v1/status",
        "0.1.1",
        1,
        Duration::from_secs(120),
        || {
            let busy = hosts
                .iter()
                .filter(|d| phase(&d.get(&status_b), "0.1.0") == Phase::InProgress)
                .count();
            assert!(busy <= 1, "{busy} hosts deploying {APP_B} 0.1.0 at once");
        },
    );
    roll_out_at(
        &hosts,
        &status_b,
        "0.1.0",
        1,
        Duration::from_secs(120),
        || (),
    );

    // Each app's fleet view, on either host, lists both hosts with that
    // app's instances.
    for dx in &hosts {
        for (app, version) in [(APP, "0.1.1"), (APP_B, "0.1.0")] {
            let want: Vec<(String, Vec<String>)> = ids
                .iter()
                .map(|id| (id.to_string(), vec![version.to_owned()]))
                .collect();
            common::wait_until_blocking(
                &format!("{app}'s fleet on port {}", dx.api_port),
                Duration::from_secs(15),
                || {
                    let f = dx.get(&fleet_of(app));
                    (f["store_time"].is_string() && fleet_versions(&f) == want).then_some(())
                },
            );
        }
    }
    // Each app's objects under its own prefix.
    for app in [APP, APP_B] {
        for id in ids {
            let beat = store.join(format!("fleet/{app}/local/hosts/{id}.json"));
            assert!(beat.is_file(), "{}", beat.display());
        }
    }

    // A new version of B rolls B through B's fleet; A is never touched
    // and A's fleet holds no claim and no ghost (checked at every round
    // from here on).
    let a_pids: Vec<Vec<i32>> = sites
        .iter()
        .map(|s| common::apps::instance_pids(s, APP, 1))
        .collect();
    assert!(a_pids.iter().all(|p| !p.is_empty()), "{a_pids:?}");
    let a_claims = store.join(format!("fleet/{APP}/local/claims"));
    let b_claims = store.join(format!("fleet/{APP_B}/local/claims"));
    let a_ghosts = store.join(format!("fleet/{APP}/local/ghosts"));
    let mut b_claimed = false;
    let check_a = |b_claimed: &mut bool| {
        for (site, before) in sites.iter().zip(&a_pids) {
            assert_eq!(
                &common::apps::instance_pids(site, APP, 1),
                before,
                "A touched"
            );
        }
        assert_eq!(
            files_under(&a_claims),
            Vec::<PathBuf>::new(),
            "a claim in A's fleet"
        );
        assert_eq!(
            files_under(&a_ghosts),
            Vec::<PathBuf>::new(),
            "a ghost in A's fleet"
        );
        *b_claimed |= !files_under(&b_claims).is_empty();
    };
    publish_app(APP_B, "0.1.1", &on_store, &[]);
    let order = roll_out_at(
        &hosts,
        &status_b,
        "0.1.1",
        1,
        Duration::from_secs(120),
        || {
            check_a(&mut b_claimed);
        },
    );
    assert!(b_claimed, "no claim seen under {}", b_claims.display());
    let b_fleet =
        common::wait_until_blocking("B's 0.1.1 slot released", Duration::from_secs(10), || {
            let f = hosts[1].get(&fleet_of(APP_B));
            (f["store_time"].is_string() && claims_of(&f, "0.1.1").is_empty()).then_some(f)
        });
    assert_eq!(b_fleet["canaries"]["0.1.1"], ids[order[0]], "{b_fleet:#}");
    let a_fleet = hosts[1].get(&fleet_of(APP));
    assert_eq!(a_fleet["claims"], serde_json::json!([]), "{a_fleet:#}");

    // A crash-at-boot version of B: ghosted in B's fleet by B's canary,
    // never started on the other host; A's fleet ghosts nothing.
    let b_before: Vec<Vec<i32>> = sites
        .iter()
        .map(|s| common::apps::instance_pids(s, APP_B, 1))
        .collect();
    publish_app(APP_B, "0.2.0", &on_store, &[]);
    let ghosted = common::wait_until_blocking(
        "B's 0.2.0 ghosted fleet-wide",
        Duration::from_secs(90),
        || {
            check_a(&mut b_claimed);
            let f = hosts[0].get(&fleet_of(APP_B));
            f["ghosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == "0.2.0")
                .then_some(f)
        },
    );
    let bad = ids
        .iter()
        .position(|id| ghosted["canaries"]["0.2.0"] == *id)
        .unwrap_or_else(|| panic!("no canary for 0.2.0: {ghosted:#}"));
    let other = 1 - bad;
    common::wait_until_blocking("B's canary rolled back", Duration::from_secs(90), || {
        let s = hosts[bad].get(&status_b);
        let ghosted = s["ghosted_versions"]
            .as_array()
            .is_some_and(|g| g.iter().any(|v| v == "0.2.0"));
        (ghosted && running_on(&s, "0.1.1")).then_some(())
    });
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        check_a(&mut b_claimed);
        let pids_b = common::apps::instance_pids(&sites[other], APP_B, 1);
        assert_eq!(pids_b, b_before[other], "the other host's B was touched");
        std::thread::sleep(Duration::from_millis(100));
    }
    let history = hosts[other].get(&format!("/api/v1/apps/{APP_B}/versions"));
    assert!(
        !history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["version"] == "0.2.0"),
        "{history:#}"
    );
    for dx in &hosts {
        let a_fleet = dx.get(&fleet_of(APP));
        assert_eq!(a_fleet["ghosts"], serde_json::json!([]), "{a_fleet:#}");
        let a = dx.status();
        assert_eq!(a["ghosted_versions"], serde_json::json!([]), "{a:#}");
        assert!(running_on(&a, "0.1.1"), "{a:#}");
    }
}

fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(moto::REGION))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            moto::ACCESS_KEY,
            moto::SECRET_KEY,
            None,
            None,
            "test",
        )))
        .build()
}

/// Three hosts on one S3 bucket (moto) with MAX_PARALLEL=2: never more than
/// two deploying at once, every host gets the version, the fleet API and
/// `deployex fleet` show every host.
#[test]
fn three_hosts_on_s3_with_two_slots() {
    const BUCKET: &str = "dxfleet-releases";
    let moto = Moto::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk(&moto.endpoint()))
            .force_path_style(true)
            .build(),
    );
    rt.block_on(client.create_bucket().bucket(BUCKET).send())
        .unwrap();
    let endpoint = moto.endpoint();
    let aws = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", moto::REGION),
        ("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let mut env: Vec<(&str, &str)> = aws.to_vec();
    env.extend([
        ("DEPLOYEX_CLOUD_ENVIRONMENT", "prod"),
        ("DEPLOYEX_RELEASE_ADAPTER", "s3"),
        ("DEPLOYEX_RELEASE_BUCKET", BUCKET),
        ("DEPLOYEX_ADMIN_HASHED_PASSWORD", ADMIN_HASH),
        ("DEPLOYEX_FLEET_MAX_PARALLEL", "2"),
    ]);
    let sites: Vec<Site> = ["h1", "h2", "h3"]
        .iter()
        .map(|id| host(id, 1, &env))
        .collect();
    publish("0.1.0", &["--bucket", BUCKET, "--env", "prod"], &aws);
    let hosts: Vec<Deployex> = sites.iter().map(Site::start).collect();
    let refs: Vec<&Deployex> = hosts.iter().collect();
    roll_out(&refs, "0.1.0", 2, Duration::from_secs(150));
    // Published while every host polls: all three want it at once.
    publish("0.1.1", &["--bucket", BUCKET, "--env", "prod"], &aws);
    let order = roll_out(&refs, "0.1.1", 2, Duration::from_secs(150));
    assert_eq!(order.len(), 3);

    // Every slot released by its holder (not left to expire: the lease is
    // 4 s, a renewal that broke the holder's record would leave them).
    let fleet =
        common::wait_until_blocking("0.1.1's slots released", Duration::from_secs(3), || {
            // `store_time`: a view read since this host was first asked.
            let f = hosts[0].get("/api/v1/fleet");
            (f["store_time"].is_string() && claims_of(&f, "0.1.1").is_empty()).then_some(f)
        });
    assert_eq!(fleet["max_parallel"], 2);
    assert_eq!(fleet["hosts"].as_array().unwrap().len(), 3, "{fleet:#}");
    // The CLI's view of it.
    let out = Command::new(deployex_bin())
        .args([
            "fleet",
            "--url",
            &format!("http://127.0.0.1:{}", hosts[0].api_port),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DEPLOYEX_TOKEN", hosts[0].token.as_deref().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for id in ["h1", "h2", "h3"] {
        assert!(table.contains(id), "{table}");
    }
    // And the dashboard's fleet page.
    let (code, page) = common::deployex::http(
        hosts[1].api_port,
        "GET",
        "/fleet",
        hosts[1].token.as_deref(),
        None,
    );
    assert_eq!(code, 200, "{page}");
    for needle in ["h1", "h2", "h3", "Deployment slots", "0.1.1 running"] {
        assert!(page.contains(needle), "{needle}: {page}");
    }
}
