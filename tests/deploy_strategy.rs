//! Start-first deployments (`DEPLOYEX_DEPLOY_STRATEGY=start_first`), end to
//! end with the real binary and real releases: the new version starts on
//! the pool's spare port beside the old one, which is stopped only once the
//! new one is ready; capacity never drops, a failing version costs nothing,
//! a deployex killed mid-switch converges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::deployex::{Deployex, Site, app_version, pid_alive, pids, running_on};
use nix::sys::signal::Signal;
use serde_json::Value;

/// A site with `replicas` instances and a pool of `replicas + 1` ports.
fn site(replicas: u32) -> Site {
    let mut site = Site::new(replicas).env("DEPLOYEX_DEPLOY_STRATEGY", "start_first");
    site.app_port = common::net::free_port_range(replicas as u16 + 1);
    site
}

fn pool(site: &Site) -> Vec<u16> {
    (0..=site.replicas as u16)
        .map(|k| site.app_port + k)
        .collect()
}

/// The BEAM nodes of this site's instances (both slots).
fn beams(site: &Site) -> Vec<i32> {
    common::deployex::site_instance_pids(site)
        .into_iter()
        .filter(|&pid| common::process::is_beam_node(pid))
        .collect()
}

/// One line per BEAM of the site: pid, parent, start tick, node name,
/// release root and instance marker, to tell which process is extra.
fn describe_beams(site: &Site) -> String {
    beams(site)
        .into_iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let (ppid, start) = (
                fields.get(1).copied().unwrap_or("?"),
                fields.get(19).copied().unwrap_or("?"),
            );
            let args: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let after = |flag: &str| {
                args.iter()
                    .position(|a| a == flag)
                    .and_then(|i| args.get(i + 1))
                    .cloned()
                    .unwrap_or_default()
            };
            let marker = std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_default()
                .split(|&b| b == 0)
                .map(|kv| String::from_utf8_lossy(kv).into_owned())
                .find(|kv| kv.starts_with("DEPLOYEX_INSTANCE_DIR="))
                .unwrap_or_default();
            format!(
                "  pid {pid} ppid {ppid} start {start} name {}{} root {} {marker}",
                after("-sname"),
                after("-name"),
                after("-root")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Poll every 50 ms until every instance runs `version`: at every poll at
/// least `replicas` ports of the pool answer and at most `replicas + 1`
/// BEAMs of the app run. Returns the final status.
fn roll_watching_capacity(site: &Site, dx: &Deployex, version: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut polls, mut most_beams, mut fewest_ports) = (0, 0, usize::MAX);
    loop {
        let answering = pool(site)
            .into_iter()
            .filter(|&p| app_version(p).is_some())
            .count();
        let running = beams(site).len();
        polls += 1;
        most_beams = most_beams.max(running);
        fewest_ports = fewest_ports.min(answering);
        assert!(
            answering >= site.replicas as usize,
            "poll {polls}: only {answering} ports of {:?} answer\n{:#}\n{}",
            pool(site),
            dx.status(),
            dx.log_tail(30)
        );
        assert!(
            running <= site.replicas as usize + 1,
            "poll {polls}: {running} BEAMs of the app:\n{}\n{:#}\n{}",
            describe_beams(site),
            dx.status(),
            dx.log_tail(60)
        );
        let s = dx.status();
        if running_on(&s, version) && running == site.replicas as usize {
            eprintln!(
                "rolled to {version}: {polls} polls, ≥ {fewest_ports} ports answering, ≤ {most_beams} BEAMs"
            );
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "not rolled to {version} in time: {s:#}\n{}",
            dx.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each instance's port answers with its own version and OS pid; the ports
/// are distinct and in the pool.
fn check_placement(site: &Site, s: &Value, version: &str, slot: &str) {
    let mut ports = Vec::new();
    for inst in s["instances"].as_array().unwrap() {
        let i = inst["instance"].as_u64().unwrap();
        let port = inst["port"].as_u64().unwrap() as u16;
        assert!(pool(site).contains(&port), "{inst}");
        assert_eq!(inst["slot"], slot, "{inst}");
        let suffix = if slot == "b" { "b" } else { "" };
        let node = inst["node"].as_str().unwrap();
        assert!(
            node.starts_with(&format!("{}-{i}{suffix}@", common::deployex::APP)),
            "{node}"
        );
        let (v, pid) = app_version(port).unwrap();
        assert_eq!(v, version);
        assert_eq!(pid, inst["os_pid"].to_string());
        ports.push(port);
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), site.replicas as usize, "{s:#}");
}

/// 3 replicas, 0.1.0 → 0.1.1 → 0.1.0, polled every 50 ms: ≥ 3 ports of
/// the pool answer and ≤ 4 BEAMs run at every poll; each rollout moves
/// every instance to the other slot and the spare port moves along. The
/// placement survives a deployex restart (instances adopted, same pids).
#[test]
fn start_first_rolls_without_losing_capacity() {
    let site = site(3);
    site.publish("0.1.0", &[]);
    let mut dx = site.start();
    let s = dx.wait_status("3 on 0.1.0", Duration::from_secs(90), |s| {
        running_on(s, "0.1.0")
    });
    check_placement(&site, &s, "0.1.0", "a");
    let first_ports: Vec<u64> = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["port"].as_u64().unwrap())
        .collect();
    assert_eq!(
        first_ports,
        (0..3)
            .map(|k| u64::from(site.app_port) + k)
            .collect::<Vec<_>>()
    );

    site.publish("0.1.1", &[]);
    let s = roll_watching_capacity(&site, &dx, "0.1.1");
    check_placement(&site, &s, "0.1.1", "b");
    assert!(
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["last_deployment"] == "full_deployment"),
        "{s:#}"
    );

    // A restart of deployex adopts every instance where it now lives.
    let before = pids(&s);
    dx.stop_with(Signal::SIGKILL, Duration::from_secs(10));
    drop(dx);
    dx = site.start();
    let s = dx.wait_status("adopted on 0.1.1", Duration::from_secs(60), |s| {
        running_on(s, "0.1.1")
    });
    assert_eq!(pids(&s), before, "adopted, not restarted: {s:#}");
    check_placement(&site, &s, "0.1.1", "b");

    site.publish("0.1.0", &[]);
    let s = roll_watching_capacity(&site, &dx, "0.1.0");
    check_placement(&site, &s, "0.1.0", "a");
}

/// A test stand-in for nginx with `proxy_next_upstream error timeout`:
/// each client connection's request goes to the first pool port that
/// answers it with a response; a refused connection or a connection
/// closed without a response moves on to the next port.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(upstreams: Vec<u16>) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let upstreams = upstreams.clone();
                        std::thread::spawn(move || serve(client, &upstreams));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Proxy {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut client: TcpStream, upstreams: &[u16]) {
    client.set_nonblocking(false).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    for &port in upstreams {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let Ok(mut up) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            continue;
        };
        let _ = up.set_read_timeout(Some(Duration::from_secs(5)));
        if up.write_all(&request).is_err() {
            continue;
        }
        let mut response = Vec::new();
        let _ = up.read_to_end(&mut response);
        if response.is_empty() {
            continue;
        }
        let _ = client.write_all(&response);
        return;
    }
}

/// One replica: an HTTP client looping through the proxy during a
/// start-first deployment sees no failed request, and the one instance
/// moves to the spare port.
#[test]
fn one_replica_serves_through_a_proxy_during_the_deploy() {
    let site = site(1);
    site.publish("0.1.0", &[]);
    let dx = site.start();
    dx.wait_status("on 0.1.0", Duration::from_secs(90), |s| {
        running_on(s, "0.1.0")
    });
    let proxy = Proxy::start(pool(&site));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let versions = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let client = {
        let (stop, ok, failed, versions) =
            (stop.clone(), ok.clone(), failed.clone(), versions.clone());
        let port = proxy.port;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match common::http_get(port, "/version") {
                    Some((200, body)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let v: Value = serde_json::from_str(body.trim()).unwrap();
                        let v = v["version"].as_str().unwrap().to_string();
                        let mut seen = versions.lock().unwrap();
                        if seen.last() != Some(&v) {
                            seen.push(v);
                        }
                    }
                    other => {
                        eprintln!("request through the proxy failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    site.publish("0.1.1", &[]);
    let s = dx.wait_status("on 0.1.1", Duration::from_secs(90), |s| {
        running_on(s, "0.1.1")
    });
    // The old one is stopped after the switch: keep the client running
    // until it is gone.
    common::wait_until_blocking("one BEAM left", Duration::from_secs(30), || {
        (beams(&site).len() == 1).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("through the proxy: {ok} requests answered, {failed} failed");
    assert_eq!(failed, 0, "{ok} answered");
    assert!(ok > 20, "{ok} requests");
    assert_eq!(*versions.lock().unwrap(), vec!["0.1.0", "0.1.1"]);
    assert_eq!(s["instances"][0]["port"], site.app_port + 1, "{s:#}");
}

/// A release that crashes at boot: the old instances never stop (their
/// OS processes live and answer at every 50 ms poll), the version is
/// ghosted, and nothing is rolled back since nothing moved.
#[test]
fn a_release_crashing_at_boot_costs_no_capacity() {
    let site = site(2).env("DEPLOYEX_ROLLBACK_CRASHES", "1");
    site.publish("0.1.0", &[]);
    let dx = site.start();
    let s = dx.wait_status("on 0.1.0", Duration::from_secs(90), |s| {
        running_on(s, "0.1.0")
    });
    let before = pids(&s);
    let ports: Vec<u16> = (0..2).map(|k| site.app_port + k).collect();
    site.publish("0.2.0", &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut saw_candidate = false;
    loop {
        for (k, pid) in before.iter().enumerate() {
            assert!(pid_alive(*pid), "old process {pid} stopped");
            let (v, p) = app_version(ports[k]).unwrap_or_else(|| {
                panic!("port {} stopped answering\n{}", ports[k], dx.log_tail(30))
            });
            assert_eq!((v.as_str(), p), ("0.1.0", pid.to_string()));
        }
        let s = dx.status();
        if s["instances"][0]["slot"] == "b" {
            saw_candidate = true;
        }
        let ghosted = s["ghosted_versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "0.2.0");
        if ghosted && running_on(&s, "0.1.0") && pids(&s) == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ghosted in time: {s:#}\n{}",
            dx.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw_candidate, "the new version was started beside the old");
    let s = dx.status();
    assert_eq!(s["instances"][0]["slot"], "a", "{s:#}");
    assert_eq!(beams(&site).len(), 2);
    let versions = dx.get("/api/v1/versions");
    assert!(
        versions
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["version"] != "0.2.0"),
        "a version that never served is not in the history: {versions:#}"
    );
}

/// deployex SIGKILLed right after it started the new version beside the
/// old one, then right after it recorded the switch: each time the next
/// deployex converges with one BEAM per instance, every BEAM the one its
/// status names (no orphan, no duplicate node).
#[test]
fn a_deployex_killed_mid_switch_converges() {
    let site = site(2);
    site.publish("0.1.0", &[]);
    let mut dx = site.start();
    dx.wait_status("on 0.1.0", Duration::from_secs(90), |s| {
        running_on(s, "0.1.0")
    });
    dx.stop_with(Signal::SIGKILL, Duration::from_secs(10));
    drop(dx);

    for (point, version) in [("candidate_spawned", "0.1.1"), ("switched", "0.1.0")] {
        site.publish(version, &[]);
        let mut dying = site.spawn_with(&[("DEPLOYEX_TEST_CRASH_AT", point)]);
        let status = dying.wait_exit(Duration::from_secs(90));
        assert!(!status.success(), "deployex died at {point}");
        drop(dying);
        // Two processes of instance 1 (the new one's start script becomes
        // its BEAM a moment after the spawn).
        common::wait_until_blocking(
            &format!("two BEAMs of instance 1 after {point}"),
            Duration::from_secs(30),
            || (beams(&site).len() == 3).then_some(()),
        );
        let mut dx = site.start();
        let s = dx.wait_status(
            &format!("converged on {version} after {point}"),
            Duration::from_secs(90),
            |s| running_on(s, version),
        );
        common::wait_until_blocking("one BEAM per instance", Duration::from_secs(30), || {
            (beams(&site).len() == 2).then_some(())
        });
        let mut want = pids(&s);
        want.sort_unstable();
        let mut have = beams(&site);
        have.sort_unstable();
        assert_eq!(have, want, "after {point}: {s:#}");
        let nodes: Vec<&str> = s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["node"].as_str().unwrap())
            .collect();
        assert_ne!(nodes[0], nodes[1]);
        dx.stop_with(Signal::SIGKILL, Duration::from_secs(10));
    }
}
