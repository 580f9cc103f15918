//! The three supervisors under comparison, each running the same workload:
//! 3 copies of the fixture release's `bin/dxtest start`, with `PORT` and
//! `RELEASE_NODE_SUFFIX` per copy, on loopback ports, against the peer's own
//! EPMD port.
//!
//! - deployex: the release binary through the tests' `Site` harness;
//! - supervisord (Debian package): `supervisord -n -c` with a config in a
//!   temp dir, as our child;
//! - PM2 (npm): `pm2 start ecosystem.json` with `PM2_HOME` in a temp dir;
//!   its God daemon detaches, we find it through `PM2_HOME/pm2.pid`.
//!
//! Invariants: every process a peer starts is stopped when the peer is
//! dropped, by pid (checked against its start time, so a reused pid is never
//! signalled); nothing is killed by name. Each peer's environment is built
//! from scratch (`env_clear`), so nothing from the caller leaks into the apps.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::deployex::{APP, Deployex, Site, free_port_range};
use crate::common::{Epmd, fixture_tarball, unpack_tarball};
use crate::procfs;

/// The fixture version every peer runs.
pub const VERSION: &str = "0.1.0";
/// How many copies each supervisor runs.
pub const COPIES: usize = 3;
/// Heartbeat period of the fixture app: one hour, so that the apps print
/// nothing while idle and log plumbing does not count as supervisor work.
pub const TICK_MS: &str = "3600000";
/// Grace between SIGTERM and SIGKILL when stopping an app, for all three.
pub const STOP_GRACE_MS: u64 = 10_000;

/// One supervisor running the workload.
pub trait Peer {
    fn name(&self) -> &'static str;
    /// The supervisor daemon (the process whose RSS and CPU are measured).
    fn daemon_pid(&self) -> i32;
    /// The apps' ports, copy 1 first.
    fn ports(&self) -> &[u16];
    /// The supervisor's own view says every app is up (deployex: every
    /// instance `running`, which is what makes the next crash a first one).
    fn apps_ready(&self) -> bool {
        true
    }
    /// Starts the stop its service unit uses; returns at once.
    fn begin_stop(&mut self);
    /// After the daemon is gone: reap what `begin_stop` started.
    fn finish_stop(&mut self);
    /// Its version, for the report.
    fn version(&self) -> String;
    /// How it is configured, one line for the report.
    fn config_note(&self) -> String;
    /// Its own view and log tail, for a failure message.
    fn diagnose(&self) -> String;
}

/// The last `n` lines of a text file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("http request"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The app of copy `i` (1-based) listening on `port`, or `None`.
pub fn app_pid(daemon: i32, port: u16) -> Option<i32> {
    let port = port.to_string();
    procfs::children(daemon)
        .into_iter()
        .find(|&c| procfs::environ_var(c, "PORT").as_deref() == Some(port.as_str()))
}

/// Every port accepts a TCP connection.
pub fn all_accepting(ports: &[u16]) -> bool {
    ports
        .iter()
        .all(|&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok())
}

/// Waits until the peer runs all its copies, each accepting on its port.
pub fn wait_ready(peer: &dyn Peer, deadline: Duration) {
    let start = Instant::now();
    loop {
        let pids: Vec<Option<i32>> = peer
            .ports()
            .iter()
            .map(|&p| app_pid(peer.daemon_pid(), p))
            .collect();
        if pids.iter().all(Option::is_some) && all_accepting(peer.ports()) && peer.apps_ready() {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "{}: apps not up within {deadline:?} (pids by port {:?}, daemon alive {})\n{}",
            peer.name(),
            pids,
            procfs::alive(peer.daemon_pid()),
            peer.diagnose()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Processes seen as apps of a peer, killed on drop if still alive.
#[derive(Default)]
pub struct Leftovers(Vec<(i32, u64)>);

impl Leftovers {
    pub fn note_children_of(&mut self, daemon: i32) {
        for c in procfs::children(daemon) {
            if let Some(start) = procfs::start_ticks(c)
                && !self.0.contains(&(c, start))
            {
                self.0.push((c, start));
            }
        }
    }

    /// SIGKILLs (the group of) every noted process still alive.
    pub fn kill_survivors(&mut self) -> usize {
        let mut killed = 0;
        for &(pid, start) in &self.0 {
            if procfs::same_process_alive(pid, start) {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                killed += 1;
            }
        }
        self.0.clear();
        killed
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.kill_survivors();
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Waits up to `timeout` for `child` to exit; SIGKILLs it otherwise.
fn reap(child: &mut Child, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------- deployex

/// deployex (release binary) with 3 replicas of the fixture.
pub struct DeployexPeer {
    // Field order is drop order: the process, then what it left behind,
    // then its site (temp dir, EPMD).
    dx: Deployex,
    leftovers: Leftovers,
    /// Held for its temp dir and EPMD, released after the process.
    _site: Site,
    ports: Vec<u16>,
}

impl DeployexPeer {
    pub fn start() -> DeployexPeer {
        let mut site = Site::new(COPIES as u32)
            // Every kill is a first crash: the immediate-restart path (a
            // second crash within the reset window backs off on purpose).
            .env("DEPLOYEX_BACKOFF_RESET_MS", "1")
            .env("DEPLOYEX_MIN_READY_MS", "0")
            .env("DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS", "5000")
            .env("DEPLOYEX_STOP_TIMEOUT_MS", &STOP_GRACE_MS.to_string())
            .env("DEPLOYEX_LOG", "info")
            .env("FIXTURE_TICK_MS", TICK_MS);
        // `BENCH_DEPLOYEX_ENV="K=V;K=V"`: extra settings for this run (e.g.
        // `DEPLOYEX_LIVENESS_INTERVAL_MS=0` to compare with liveness off).
        for kv in std::env::var("BENCH_DEPLOYEX_ENV")
            .unwrap_or_default()
            .split(';')
            .filter(|kv| !kv.is_empty())
        {
            if let Some((k, v)) = kv.split_once('=') {
                site = site.env(k, v);
            }
        }
        site.publish(VERSION, &[]);
        let dx = site.start();
        let ports = (0..COPIES as u16).map(|i| site.app_port + i).collect();
        DeployexPeer {
            dx,
            _site: site,
            ports,
            leftovers: Leftovers::default(),
        }
    }
}

impl Peer for DeployexPeer {
    fn name(&self) -> &'static str {
        "deployex"
    }
    fn daemon_pid(&self) -> i32 {
        self.dx.pid()
    }
    fn ports(&self) -> &[u16] {
        &self.ports
    }
    fn apps_ready(&self) -> bool {
        let (code, body) = crate::common::deployex::http(
            self.dx.api_port,
            "GET",
            "/api/v1/status",
            self.dx.token.as_deref(),
            None,
        );
        code == 200
            && serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|s| {
                    Some(
                        s["instances"]
                            .as_array()?
                            .iter()
                            .all(|i| i["state"] == "running"),
                    )
                })
                .unwrap_or(false)
    }
    fn begin_stop(&mut self) {
        self.leftovers.note_children_of(self.dx.pid());
        let _ = kill(Pid::from_raw(self.dx.pid()), Signal::SIGTERM);
    }
    fn finish_stop(&mut self) {
        if let Some(mut child) = self.dx.child.take() {
            reap(&mut child, Duration::from_secs(30));
        }
    }
    fn version(&self) -> String {
        let s = self.dx.status();
        format!(
            "deployex {} (release build)",
            s["deployex"]["version"].as_str().unwrap_or("?")
        )
    }
    fn config_note(&self) -> String {
        "`DEPLOYEX_BACKOFF_RESET_MS=1` (each kill is a first crash: immediate restart), `DEPLOYEX_MIN_READY_MS=0`, default 5 s store poll, dashboard on".into()
    }
    fn diagnose(&self) -> String {
        let (_, status) = crate::common::deployex::http(
            self.dx.api_port,
            "GET",
            "/api/v1/status",
            self.dx.token.as_deref(),
            None,
        );
        format!("status: {status}\nlog:\n{}", self.dx.log_tail(40))
    }
}

impl Drop for DeployexPeer {
    fn drop(&mut self) {
        if self.dx.child.is_some() {
            self.leftovers.note_children_of(self.dx.pid());
        }
    }
}

// ------------------------------------------- shared by supervisord and PM2

/// The fixture release unpacked once per copy (like deployex's service
/// folders), on consecutive free ports, with the environment each copy gets.
struct Workload {
    dir: tempfile::TempDir,
    epmd: Epmd,
    ports: Vec<u16>,
    roots: Vec<PathBuf>,
}

impl Workload {
    fn new(prefix: &str) -> Workload {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        let tarball = fixture_tarball(APP, VERSION);
        let base = free_port_range(COPIES as u16);
        let mut roots = Vec::new();
        for i in 1..=COPIES {
            let root = dir.path().join("rel").join(i.to_string());
            unpack_tarball(&tarball, &root);
            roots.push(root);
        }
        std::fs::create_dir_all(dir.path().join("logs")).expect("logs dir");
        Workload {
            dir,
            epmd: Epmd::new(),
            ports: (0..COPIES as u16).map(|i| base + i).collect(),
            roots,
        }
    }

    /// The environment of copy `i` (0-based): what deployex gives its
    /// instances, so the three runs start the same program the same way.
    fn app_env(&self, i: usize) -> Vec<(&'static str, String)> {
        vec![
            ("PORT", self.ports[i].to_string()),
            ("RELEASE_NODE_SUFFIX", format!("-{}", i + 1)),
            ("RELEASE_DISTRIBUTION", "sname".into()),
            ("RELEASE_COOKIE", "benchcookie".into()),
            ("ERL_EPMD_PORT", self.epmd.port.to_string()),
            ("ERL_CRASH_DUMP_SECONDS", "0".into()),
            ("FIXTURE_TICK_MS", TICK_MS.into()),
        ]
    }

    fn base_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("LANG", "C.UTF-8")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }
}

// ------------------------------------------------------------- supervisord

/// supervisord from the Debian package, foreground, our child.
pub struct SupervisordPeer {
    child: Option<Child>,
    leftovers: Leftovers,
    work: Workload,
}

impl SupervisordPeer {
    pub fn start() -> SupervisordPeer {
        let work = Workload::new("bench-supervisord-");
        let d = work.dir.path();
        let mut conf = format!(
            "[unix_http_server]\nfile={d}/supervisor.sock\n\n\
             [supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}/logs\n\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n",
            d = d.display()
        );
        for i in 0..COPIES {
            let env = work
                .app_env(i)
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect::<Vec<_>>()
                .join(",");
            conf.push_str(&format!(
                "\n[program:{APP}-{n}]\ncommand={root}/bin/{APP} start\ndirectory={root}\nenvironment={env}\n\
                 autostart=true\nautorestart=true\nstartsecs=1\nstopsignal=TERM\nstopwaitsecs={grace}\n\
                 stdout_logfile={d}/logs/{APP}-{n}-stdout.log\nstderr_logfile={d}/logs/{APP}-{n}-stderr.log\n",
                n = i + 1,
                root = work.roots[i].display(),
                grace = STOP_GRACE_MS / 1000,
                d = d.display(),
            ));
        }
        let conf_path = d.join("supervisord.conf");
        std::fs::write(&conf_path, conf).expect("write supervisord.conf");
        let out = log_file(&d.join("supervisord.out"));
        let child = work
            .base_command("supervisord")
            .arg("-n")
            .arg("-c")
            .arg(&conf_path)
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn supervisord (apt-get install supervisor)");
        SupervisordPeer {
            child: Some(child),
            leftovers: Leftovers::default(),
            work,
        }
    }
}

impl Peer for SupervisordPeer {
    fn name(&self) -> &'static str {
        "supervisord"
    }
    fn daemon_pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }
    fn ports(&self) -> &[u16] {
        &self.work.ports
    }
    fn begin_stop(&mut self) {
        // Debian's unit stops it with `supervisorctl shutdown`, the same
        // code path as SIGTERM (both switch supervisord to SHUTDOWN).
        self.leftovers.note_children_of(self.daemon_pid());
        let _ = kill(Pid::from_raw(self.daemon_pid()), Signal::SIGTERM);
    }
    fn finish_stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            reap(&mut child, Duration::from_secs(30));
        }
    }
    fn version(&self) -> String {
        let v = Command::new("supervisord")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        format!("supervisord {v}")
    }
    fn config_note(&self) -> String {
        "`autorestart=true`, defaults otherwise (`startsecs=1`, no restart delay), output to log files through supervisord's pipes, `stopwaitsecs=10`".into()
    }
    fn diagnose(&self) -> String {
        tail(&self.work.dir.path().join("supervisord.log"), 30)
    }
}

impl Drop for SupervisordPeer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.leftovers.note_children_of(child.id() as i32);
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            reap(&mut child, Duration::from_secs(20));
        }
        self.leftovers.kill_survivors();
    }
}

// --------------------------------------------------------------------- PM2

/// PM2 from npm, fork mode, `PM2_HOME` in a temp dir.
pub struct Pm2Peer {
    god: i32,
    god_start: u64,
    kill_cli: Option<Child>,
    leftovers: Leftovers,
    work: Workload,
}

impl Pm2Peer {
    pub fn start() -> Pm2Peer {
        let work = Workload::new("bench-pm2-");
        let d = work.dir.path();
        let apps: Vec<serde_json::Value> = (0..COPIES)
            .map(|i| {
                let env: serde_json::Map<String, serde_json::Value> = work
                    .app_env(i)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
                    .collect();
                serde_json::json!({
                    "name": format!("{APP}-{}", i + 1),
                    "script": work.roots[i].join("bin").join(APP),
                    "args": "start",
                    "cwd": work.roots[i],
                    "interpreter": "none",
                    "exec_mode": "fork",
                    "autorestart": true,
                    "kill_timeout": STOP_GRACE_MS,
                    "out_file": d.join("logs").join(format!("{APP}-{}-stdout.log", i + 1)),
                    "error_file": d.join("logs").join(format!("{APP}-{}-stderr.log", i + 1)),
                    "env": env,
                })
            })
            .collect();
        let eco = d.join("ecosystem.json");
        std::fs::write(&eco, serde_json::json!({ "apps": apps }).to_string())
            .expect("write ecosystem.json");
        let out = log_file(&d.join("pm2-cli.out"));
        let status = Pm2Peer::cli(&work)
            .arg("start")
            .arg(&eco)
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .status()
            .expect("run pm2 (npm install -g pm2)");
        assert!(
            status.success(),
            "pm2 start failed ({status}); see {}",
            d.join("pm2-cli.out").display()
        );
        let pid_file = d.join("pm2home").join("pm2.pid");
        let god: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no PM2 daemon pid in {}", pid_file.display()));
        let god_start = procfs::start_ticks(god).expect("PM2 daemon is running");
        Pm2Peer {
            god,
            god_start,
            kill_cli: None,
            leftovers: Leftovers::default(),
            work,
        }
    }

    /// `pm2` with this run's `PM2_HOME` (every pm2 command starts a daemon
    /// when none runs there: never call it without one).
    fn cli(work: &Workload) -> Command {
        let mut cmd = work.base_command("pm2");
        cmd.env("PM2_HOME", work.dir.path().join("pm2home"));
        cmd
    }
}

impl Peer for Pm2Peer {
    fn name(&self) -> &'static str {
        "PM2"
    }
    fn daemon_pid(&self) -> i32 {
        self.god
    }
    fn ports(&self) -> &[u16] {
        &self.work.ports
    }
    fn begin_stop(&mut self) {
        // PM2's own systemd unit (`pm2 startup`) stops it with `pm2 kill`.
        self.leftovers.note_children_of(self.god);
        let out = log_file(&self.work.dir.path().join("pm2-cli.out"));
        self.kill_cli = Some(
            Pm2Peer::cli(&self.work)
                .arg("kill")
                .stdout(out.try_clone().expect("dup"))
                .stderr(out)
                .spawn()
                .expect("run pm2 kill"),
        );
    }
    fn finish_stop(&mut self) {
        if let Some(mut cli) = self.kill_cli.take() {
            reap(&mut cli, Duration::from_secs(30));
        }
    }
    fn version(&self) -> String {
        // The daemon's title is "PM2 vX.Y.Z: God Daemon (home)"; asking the
        // CLI would start a daemon of its own.
        let title = procfs::cmdline(self.god);
        let pm2 = title
            .split(':')
            .next()
            .filter(|t| t.starts_with("PM2"))
            .unwrap_or("PM2 ?")
            .to_owned();
        let node = Command::new("node")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        format!("{pm2} (node {node})")
    }
    fn config_note(&self) -> String {
        "fork mode, `interpreter: none` (PM2 execs `bin/dxtest start` itself), defaults otherwise (`min_uptime` 1 s, no restart delay, SIGINT then SIGKILL on stop), `kill_timeout: 10000`".into()
    }
    fn diagnose(&self) -> String {
        tail(&self.work.dir.path().join("pm2home").join("pm2.log"), 30)
    }
}

impl Drop for Pm2Peer {
    fn drop(&mut self) {
        if procfs::same_process_alive(self.god, self.god_start) {
            self.leftovers.note_children_of(self.god);
            if self.kill_cli.is_none() {
                self.begin_stop();
            }
            self.finish_stop();
            if procfs::same_process_alive(self.god, self.god_start) {
                let _ = kill(Pid::from_raw(self.god), Signal::SIGKILL);
            }
        } else {
            self.finish_stop();
        }
        self.leftovers.kill_survivors();
    }
}
