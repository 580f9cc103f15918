//! A real `deployex` process for end-to-end tests: its own temp dir (store,
//! var, logs), free ports, its own EPMD port, a small HTTP/JSON client for
//! its API, and clean-up of every process it started (by pid).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use super::net::free_port_range;
use super::{Epmd, fixture_tarball, free_port, rebar3_tarball, twoapp_tarball};

pub const APP: &str = "dxtest";

/// A store + var dir + ports that outlive one deployex process (so tests
/// can restart deployex on the same state).
pub struct Site {
    pub dir: tempfile::TempDir,
    pub epmd: Epmd,
    pub api_port: u16,
    pub app_port: u16,
    pub replicas: u32,
    pub extra_env: Vec<(String, String)>,
}

impl Site {
    pub fn new(replicas: u32) -> Site {
        Site {
            dir: tempfile::Builder::new()
                .prefix("dx-e2e-")
                .tempdir()
                .unwrap(),
            epmd: Epmd::new(),
            api_port: free_port(),
            app_port: free_port_range(replicas as u16),
            replicas,
            extra_env: Vec::new(),
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Site {
        self.extra_env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn var(&self) -> PathBuf {
        self.dir.path().join("var")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }
    pub fn service(&self, i: u32) -> PathBuf {
        self.var().join("service").join(APP).join(i.to_string())
    }
    pub fn log_file(&self, i: u32, stream: &str) -> PathBuf {
        self.logs().join(format!("{APP}-{i}-{stream}.log"))
    }

    /// Copy the fixture tarball of `version` into the store.
    pub fn publish_tarball(&self, version: &str) {
        let dist = self.store().join("dist").join(APP);
        std::fs::create_dir_all(&dist).unwrap();
        std::fs::copy(
            fixture_tarball(APP, version),
            dist.join(format!("{APP}-{version}.tar.gz")),
        )
        .unwrap();
    }

    /// Tarball (the rebar3/relx fixture of `version`) then current.json.
    pub fn publish_rebar3(&self, version: &str, pre_commands: &[&str]) {
        let dist = self.store().join("dist").join(APP);
        std::fs::create_dir_all(&dist).unwrap();
        std::fs::copy(
            rebar3_tarball(APP, version),
            dist.join(format!("{APP}-{version}.tar.gz")),
        )
        .unwrap();
        let current = serde_json::json!({"version": version, "pre_commands": pre_commands, "hash": format!("h{version}")});
        self.write_current(&current.to_string());
    }

    /// Tarball (the two-application fixture of `version`) then
    /// current.json.
    pub fn publish_twoapp(&self, version: &str) {
        let dist = self.store().join("dist").join(APP);
        std::fs::create_dir_all(&dist).unwrap();
        std::fs::copy(
            twoapp_tarball(APP, version),
            dist.join(format!("{APP}-{version}.tar.gz")),
        )
        .unwrap();
        let current = serde_json::json!({"version": version, "hash": format!("h{version}")});
        self.write_current(&current.to_string());
    }

    /// Write a raw file as the tarball of `version`.
    pub fn publish_raw_tarball(&self, version: &str, bytes: &[u8]) {
        let dist = self.store().join("dist").join(APP);
        std::fs::create_dir_all(&dist).unwrap();
        std::fs::write(dist.join(format!("{APP}-{version}.tar.gz")), bytes).unwrap();
    }

    /// Write `current.json` atomically.
    pub fn write_current(&self, json: &str) {
        let dir = self.store().join("versions").join(APP).join("local");
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(".current.json.tmp");
        std::fs::write(&tmp, json).unwrap();
        std::fs::rename(tmp, dir.join("current.json")).unwrap();
    }

    /// Tarball then current.json, like an operator's CI does.
    pub fn publish(&self, version: &str, pre_commands: &[&str]) {
        self.publish_tarball(version);
        let current = serde_json::json!({"version": version, "pre_commands": pre_commands, "hash": format!("h{version}")});
        self.write_current(&current.to_string());
    }

    pub fn start(&self) -> Deployex {
        self.start_with(&[])
    }

    /// Start with extra environment variables for this run only.
    pub fn start_with(&self, extra: &[(&str, &str)]) -> Deployex {
        let dx = self.spawn_with(extra);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((200, _)) = super::http_get(self.api_port, "/healthz") {
                let mut dx = dx;
                dx.login();
                return dx;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("deployex did not answer /healthz; log:\n{}", dx.log_text());
    }

    /// Spawn deployex and return at once (for a run that is meant to die
    /// by itself, e.g. at a `DEPLOYEX_TEST_CRASH_AT` point).
    pub fn spawn_with(&self, extra: &[(&str, &str)]) -> Deployex {
        std::fs::create_dir_all(self.logs()).unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("deployex.log"))
            .unwrap();
        let mut cmd = Command::new(deployex_bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("DEPLOYEX_MONITORED_APP_NAME", APP)
            .env("DEPLOYEX_RELEASE_DIR", self.store())
            .env("DEPLOYEX_VAR_DIR", self.var())
            .env("DEPLOYEX_LOG_DIR", self.logs())
            .env("DEPLOYEX_MONITORED_REPLICAS", self.replicas.to_string())
            .env("DEPLOYEX_MONITORED_APP_PORT", self.app_port.to_string())
            .env("DEPLOYEX_PHX_PORT", self.api_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd.port.to_string())
            .env("DEPLOYEX_ERLANG_COOKIE", "e2ecookie")
            .env(
                "DEPLOYEX_SECRET_KEY_BASE",
                "e2e-secret-key-base-0123456789-abcdefghijklmnop",
            )
            .env("DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS", "200")
            .env("DEPLOYEX_MIN_READY_MS", "300")
            .env("DEPLOYEX_STOP_TIMEOUT_MS", "5000")
            .env("DEPLOYEX_LOG", "info,deployex_actors=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn deployex");
        Deployex {
            child: Some(child),
            api_port: self.api_port,
            token: None,
            log: self.dir.path().join("deployex.log"),
        }
    }
}

/// Every process of every instance of this site (found by the instance
/// marker in their environment), whoever started them.
pub fn site_instance_pids(site: &Site) -> Vec<i32> {
    let services = site.var().join("service").join(APP);
    let Ok(dirs) = std::fs::read_dir(&services) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dirs
        .flatten()
        .flat_map(|d| deployex_actors::process::instance_pids(&d.path()))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The guard that keeps a failed test from leaving BEAMs behind: when a
/// site goes (at the end of its test, passed or panicked, after its
/// deployex was stopped), every process still carrying one of its instance
/// markers is SIGKILLed with its group. Only processes of this site's own
/// service folders are touched, never anything by name.
impl Drop for Site {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = site_instance_pids(self);
            if left.is_empty() || Instant::now() >= deadline {
                if !left.is_empty() {
                    eprintln!("site clean-up: processes survive SIGKILL: {left:?}");
                }
                return;
            }
            for pid in left {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The deployex binary under test: cargo's for integration tests,
/// `DEPLOYEX_BIN` or `target/release/deployex` for benchmarks.
pub fn deployex_bin() -> PathBuf {
    // `DEPLOYEX_BIN` first: the benchmarks measure a release build without
    // the test hooks, while cargo's own binary for a bench target is built
    // with the dev-dependencies' features (`testhooks`).
    if let Ok(p) = std::env::var("DEPLOYEX_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_deployex") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/deployex")
}

/// A running deployex process.
pub struct Deployex {
    pub child: Option<Child>,
    pub api_port: u16,
    pub token: Option<String>,
    pub log: PathBuf,
}

/// One HTTP/1.1 request; returns (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Deployex {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("http request"))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn login(&mut self) {
        let (code, body) = http(
            self.api_port,
            "POST",
            "/api/v1/login",
            None,
            Some(r#"{"username":"admin","password":"deployex"}"#),
        );
        assert_eq!(code, 200, "login failed: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        self.token = Some(v["token"].as_str().unwrap().to_string());
    }

    pub fn get(&self, path: &str) -> Value {
        let (code, body) = http(self.api_port, "GET", path, self.token.as_deref(), None);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        http(
            self.api_port,
            "POST",
            path,
            self.token.as_deref(),
            Some(body),
        )
    }

    pub fn status(&self) -> Value {
        self.get("/api/v1/status")
    }

    pub fn instance(&self, i: u32) -> Value {
        self.status()["instances"][(i - 1) as usize].clone()
    }

    /// Poll the status until `pred` holds; panics with the status and the
    /// deployex log on timeout.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.status();
            if pred(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.log_text();
        let tail: String = log
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("timed out waiting for {what}\nstatus: {last:#}\nlog tail:\n{tail}");
    }

    /// Wait for deployex to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "deployex did not exit within {timeout:?}; log:\n{}",
            self.log_text()
        );
    }

    /// Send a signal and wait for the exit code.
    pub fn stop_with(
        &mut self,
        signal: nix::sys::signal::Signal,
        timeout: Duration,
    ) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("deployex did not exit within {timeout:?} after {signal:?}");
    }
}

impl Drop for Deployex {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kill (SIGKILL, whole group) every pid given; for test clean-up of
/// instances deployex was told to leave running.
pub fn kill_pids(pids: &[i32]) {
    for &pid in pids {
        if pid > 0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; count it as dead but report it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The app's own answer on its port: (version, os_pid).
pub fn app_version(port: u16) -> Option<(String, String)> {
    let (code, body) = super::http_get(port, "/version")?;
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    Some((
        v["version"].as_str()?.to_string(),
        v["os_pid"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v["os_pid"].to_string()),
    ))
}

/// Every instance running `version` with its node connected.
pub fn running_on(status: &Value, version: &str) -> bool {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["state"] == "running" && i["version"] == version && i["otp_connected"] == true)
}

/// The OS pid of each instance (0 when none).
pub fn pids(status: &Value) -> Vec<i32> {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["os_pid"].as_i64().unwrap_or(0) as i32)
        .collect()
}
