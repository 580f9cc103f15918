//! End-to-end tests of the web layer's hardening (issue 15): the real
//! binary, attacked the way an internet client would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::deployex::{Deployex, Site, http, pids, running_on};
use common::http_get;

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A cheap xorshift, so the paths differ without a dependency.
fn random_path(seed: &mut u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_/";
    let mut out = String::from("/");
    while out.len() < len {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        out.push(ALPHABET[(*seed % ALPHABET.len() as u64) as usize] as char);
    }
    out
}

fn metrics(dx: &Deployex) -> String {
    let (code, body) = http(dx.api_port, "GET", "/metrics", dx.token.as_deref(), None);
    assert_eq!(code, 200);
    body
}

/// Scope 1: unauthenticated requests to random long paths cannot grow
/// `/metrics`, deployex's memory or its log without bound.
#[test]
fn random_unauthenticated_paths_do_not_grow_metrics_memory_or_log() {
    let site = Site::new(1);
    let dx = site.start();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    // Warm-up: the first requests of each kind allocate once.
    for _ in 0..30 {
        let p = random_path(&mut seed, 2048);
        let _ = http(dx.api_port, "GET", &p, None, None);
    }
    let before_metrics = metrics(&dx);
    let before_rss = rss_kib(dx.pid());
    let before_log = std::fs::metadata(&dx.log).unwrap().len();
    let mut sent = Vec::new();
    for i in 0..300 {
        let p = random_path(&mut seed, 2048);
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let api = format!("/api/v1{p}");
        let path = if i % 3 == 0 { &api } else { &p };
        let (code, _) = http(dx.api_port, method, path, None, None);
        assert!([302, 401, 404, 405].contains(&code), "{code} for {path}");
        sent.push(path.clone());
    }
    let after = metrics(&dx);
    for p in &sent {
        let segment = &p[9..40];
        assert!(!after.contains(segment), "a path reached /metrics");
    }
    let grown = after.lines().count() as i64 - before_metrics.lines().count() as i64;
    assert!(grown <= 4, "/metrics grew by {grown} lines:\n{after}");
    let rss_growth = rss_kib(dx.pid()).saturating_sub(before_rss);
    assert!(rss_growth < 1024, "RSS grew by {rss_growth} KiB");
    let log_growth = std::fs::metadata(&dx.log).unwrap().len() - before_log;
    assert!(log_growth < 150 * 1024, "log grew by {log_growth} bytes");
}

/// Scope 3: a connection that sends half a request line and stalls is
/// closed within 15 s (slowloris).
#[test]
fn a_stalled_request_line_is_cut_off() {
    let site = Site::new(1);
    let dx = site.start();
    let mut s = TcpStream::connect(("127.0.0.1", dx.api_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    s.write_all(b"GET /heal").unwrap();
    let mut buf = [0u8; 256];
    // EOF (or a reset) once the server gives up on the head.
    let _ = s.read(&mut buf);
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(15), "closed after {waited:?}");
    assert!(
        waited >= Duration::from_secs(5),
        "closed too soon: {waited:?}"
    );
}

/// Scope 3: 600 idle connections (cap 512) leave `/healthz` answering at
/// once and an instance restartable.
#[test]
fn idle_connections_cannot_lock_out_healthz_or_operators() {
    let site = Site::new(1);
    site.publish("0.1.1", &[]);
    let dx = site.start();
    let s = dx.wait_status("0.1.1 running", Duration::from_secs(90), |s| {
        running_on(s, "0.1.1")
    });
    let before = pids(&s)[0];
    let idle: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", dx.api_port)).ok())
        .collect();
    assert!(idle.len() >= 512, "only {} connections opened", idle.len());
    let start = Instant::now();
    let answer = http_get(dx.api_port, "/healthz");
    assert_eq!(answer.map(|a| a.0), Some(200));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let (code, body) = dx.post("/api/v1/instances/1/restart", "");
    assert_eq!(code, 202, "{body}");
    dx.wait_status("a new OS process", Duration::from_secs(60), |s| {
        running_on(s, "0.1.1") && pids(s)[0] != before
    });
    drop(idle);
}

/// Scope 7: a cheap admin hash stops deployex (and `check-config`) with
/// exit status 2 and one line naming the variable.
#[test]
fn a_cheap_admin_hash_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let cheap = "$2b$04$abcdefghijklmnopqrstuuQjcH0D2v2l0cW1dJ.7P4oN3vJ8bR0y6";
    assert_eq!(cheap.len(), 60);
    for args in [&[][..], &["check-config"][..]] {
        let out = std::process::Command::new(common::deployex::deployex_bin())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("DEPLOYEX_VAR_DIR", dir.path().join("var"))
            .env("DEPLOYEX_LOG_DIR", dir.path().join("logs"))
            .env("DEPLOYEX_PHX_PORT", "0")
            .env("DEPLOYEX_ADMIN_HASHED_PASSWORD", cheap)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("DEPLOYEX_ADMIN_HASHED_PASSWORD"),
            "{stderr}"
        );
    }
}

/// Issue 16: the dashboard's link to deployex's own log answers 200 with
/// deployex's recent lines.
#[test]
fn deployex_own_log_page_shows_its_recent_lines() {
    let site = Site::new(1);
    let dx = site.start();
    let (code, body) = http(
        dx.api_port,
        "GET",
        "/instances/0/logs/stdout",
        dx.token.as_deref(),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("starting deployex"), "{body}");
    assert!(body.contains("web server listening"), "{body}");
}

/// Scope 6: a token issued before an admin password change is refused
/// after a restart with the new hash.
#[test]
fn a_new_admin_password_ends_old_sessions() {
    let site = Site::new(1);
    let mut dx = site.start();
    let old = dx.token.clone().unwrap();
    let (code, _) = http(dx.api_port, "GET", "/api/v1/status", Some(&old), None);
    assert_eq!(code, 200);
    dx.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
    drop(dx);
    // A new hash (a fresh salt: what `hash-password` gives even for the
    // same password, which start_with logs in with) is a password change.
    let new_hash = bcrypt::hash("deployex", 10).unwrap();
    let dx = site.start_with(&[("DEPLOYEX_ADMIN_HASHED_PASSWORD", new_hash.as_str())]);
    let (code, _) = http(
        dx.api_port,
        "GET",
        "/api/v1/status",
        dx.token.as_deref(),
        None,
    );
    assert_eq!(code, 200, "the new session works");
    let (code, _) = http(dx.api_port, "GET", "/api/v1/status", Some(&old), None);
    assert_eq!(code, 401, "a token from before the change is refused");
}

/// Scope 5: deployex's secrets (the metrics token included) never reach
/// an instance's environment.
#[test]
fn secrets_do_not_reach_the_instances() {
    let site = Site::new(1).env("DEPLOYEX_METRICS_TOKEN", "metrics-token-0123456789");
    site.publish("0.1.1", &[]);
    let dx = site.start();
    let s = dx.wait_status("0.1.1 running", Duration::from_secs(90), |s| {
        running_on(s, "0.1.1")
    });
    let pid = pids(&s)[0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for secret in [
        "metrics-token-0123456789",
        "DEPLOYEX_METRICS_TOKEN",
        "DEPLOYEX_SECRET_KEY_BASE",
        "DEPLOYEX_ADMIN_HASHED_PASSWORD",
        "DEPLOYEX_ERLANG_COOKIE",
    ] {
        assert!(!environ.contains(secret), "{secret} reached the instance");
    }
    assert!(
        environ.contains("RELEASE_COOKIE="),
        "the cookie goes as RELEASE_COOKIE"
    );
}
