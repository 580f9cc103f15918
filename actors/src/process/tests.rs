//! Tests against real processes: /bin/sh scripts as instances, a process
//! started through `setsid` as a non-child to adopt, and a real `mix
//! release`. Every process started here is killed by its own pid/pgid.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::handle::ProcessHandle;
use super::*;

/// Kills the group of a handle when the test ends, pass or fail.
struct Cleanup(ProcessHandle);

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.signal_group(Signal::SIGKILL);
    }
}

/// Polls `cond` until it holds or `within` passes.
async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn script(dir: &Path, rel: &str, body: &str) -> PathBuf {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn spec(dir: &Path, program: PathBuf, args: &[&str]) -> InstanceSpec {
    InstanceSpec {
        program,
        args: args.iter().map(|s| s.to_string()).collect(),
        cwd: dir.to_path_buf(),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("MARKER".into(), "m-42".into()),
        ],
        stdout_log: dir.join("logs/app-1-stdout.log"),
        stderr_log: dir.join("logs/app-1-stderr.log"),
        user: None,
    }
}

/// Gone from /proc entirely (reaped), not merely a zombie.
fn pid_gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn child_exit_code_logs_env_and_no_zombie() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "current/bin/app",
        "echo \"out $1 $MARKER home=${HOME:-unset}\"\necho err >&2\nexit 3",
    );
    let sp = spec(dir.path(), prog, &["start"]);
    fs::create_dir_all(dir.path().join("logs")).unwrap();
    fs::write(&sp.stdout_log, "previous run\n").unwrap();

    let h = spawn_instance(&sp).unwrap();
    let _c = Cleanup(h.clone());
    assert_eq!(h.pgid(), h.pid(), "instance must lead its own group");
    let h2 = h.clone();
    let (a, b) = tokio::join!(h.wait_exit(), h2.wait_exit());
    assert_eq!(
        a,
        ExitInfo {
            code: Some(3),
            signal: None,
            reaped: true
        }
    );
    assert_eq!(a, b, "concurrent waiters share one status");
    assert!(!a.success());
    assert!(pid_gone(h.pid()), "zombie left behind");
    assert!(!h.is_alive());
    let out = fs::read_to_string(&sp.stdout_log).unwrap();
    assert_eq!(out, "previous run\nout start m-42 home=unset\n");
    assert_eq!(fs::read_to_string(&sp.stderr_log).unwrap(), "err\n");
}

#[tokio::test]
async fn spawn_error_names_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let sp = spec(dir.path(), dir.path().join("current/bin/missing"), &[]);
    let err = spawn_instance(&sp).unwrap_err();
    assert!(
        matches!(&err, ProcessError::Spawn { program, .. } if program == &sp.program),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_is_reported_within_a_millisecond_or_so() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(dir.path(), "current/bin/app", "exec sleep 60");
    let mut delays = Vec::new();
    for _ in 0..15 {
        let h = spawn_instance(&spec(dir.path(), prog.clone(), &[])).unwrap();
        let _c = Cleanup(h.clone());
        assert!(h.is_alive());
        let stats = proc_stats(h.pid()).unwrap();
        assert_eq!(stats.start_time_ticks, h.start_time_ticks());
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move {
                let info = h.wait_exit().await;
                (info, Instant::now())
            })
        };
        // Let the waiter register its pidfd before the kill.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t0 = Instant::now();
        kill(Pid::from_raw(h.pid()), Signal::SIGKILL).unwrap();
        let (info, t1) = waiter.await.unwrap();
        assert_eq!(info.signal, Some(9));
        assert_eq!(info.code, None);
        assert!(info.reaped);
        assert!(pid_gone(h.pid()));
        delays.push(t1.duration_since(t0));
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    println!(
        "kill -9 → wait_exit: median {median:?}, min {:?}, max {:?}",
        delays[0],
        delays[delays.len() - 1]
    );
    assert!(median < Duration::from_millis(20), "median {median:?}");
}

#[tokio::test]
async fn stop_escalates_to_sigkill_and_kills_grandchildren() {
    let dir = tempfile::tempdir().unwrap();
    let gpid_file = dir.path().join("grandchild.pid");
    let prog = script(
        dir.path(),
        "current/bin/app",
        &format!(
            "trap '' TERM\nsh -c 'while :; do sleep 1; done' &\necho $! > {}\nwhile :; do sleep 1; done",
            gpid_file.display()
        ),
    );
    let h = spawn_instance(&spec(dir.path(), prog, &[])).unwrap();
    let _c = Cleanup(h.clone());
    assert!(wait_until(Duration::from_secs(5), || read_pid(&gpid_file).is_some()).await);
    let gpid = read_pid(&gpid_file).unwrap();
    assert!(h.group_members().contains(&gpid));

    let t0 = Instant::now();
    let outcome = stop_group(&h, Duration::from_millis(300)).await;
    let took = t0.elapsed();
    assert_eq!(
        outcome,
        StopOutcome::Killed(ExitInfo {
            code: None,
            signal: Some(9),
            reaped: true
        })
    );
    assert!(outcome.is_stopped());
    assert!(
        took >= Duration::from_millis(300),
        "SIGTERM was ignored: {took:?}"
    );
    assert!(pid_gone(h.pid()));
    assert!(h.group_members().is_empty());
    // The grandchild was reparented (to init) which reaps it.
    assert!(
        wait_until(Duration::from_secs(5), || pid_gone(gpid)).await,
        "grandchild {gpid} survived"
    );
}

#[tokio::test]
async fn stop_terminates_gracefully_and_already_exited_is_success() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(dir.path(), "current/bin/app", "exec sleep 60");
    let h = spawn_instance(&spec(dir.path(), prog, &[])).unwrap();
    let _c = Cleanup(h.clone());
    let outcome = stop_group(&h, Duration::from_secs(10)).await;
    assert_eq!(
        outcome,
        StopOutcome::Terminated(ExitInfo {
            code: None,
            signal: Some(15),
            reaped: true
        })
    );
    // Stopping again: nothing left, the cached status comes back.
    assert!(matches!(
        stop_group(&h, Duration::from_secs(1)).await,
        StopOutcome::AlreadyExited(ExitInfo {
            signal: Some(15),
            ..
        })
    ));

    let quick = script(dir.path(), "current/bin/quick", "exit 0");
    let h = spawn_instance(&spec(dir.path(), quick, &[])).unwrap();
    let _c2 = Cleanup(h.clone());
    assert!(wait_until(Duration::from_secs(5), || !h.is_alive()).await);
    assert_eq!(
        stop_group(&h, Duration::from_secs(1)).await,
        StopOutcome::AlreadyExited(ExitInfo {
            code: Some(0),
            signal: None,
            reaped: true
        })
    );
    assert!(pid_gone(h.pid()));
}

/// Starts `program args` as a non-child: `setsid` in the background of a
/// shell that exits at once, so the process is reparented away from us.
fn spawn_orphan(program: &Path, args: &str) -> i32 {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "setsid {} {args} </dev/null >/dev/null 2>&1 & echo $!",
            program.display()
        ))
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn adopts_a_non_child_and_notices_its_death() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of `sleep` installed as the release's program: /proc/{pid}/exe
    // points into the release root.
    let program = dir.path().join("svc/1/current/bin/app");
    fs::create_dir_all(program.parent().unwrap()).unwrap();
    fs::copy("/bin/sleep", &program).unwrap();
    let pid = spawn_orphan(&program, "60");
    let probe = ProcessHandle::open(pid, None).unwrap();
    let _c = Cleanup(probe.clone());
    // setsid execs in place: same pid, its own group and session.
    assert!(
        wait_until(Duration::from_secs(5), || {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == program)
        })
        .await
    );
    let me = i32::try_from(std::process::id()).unwrap();
    let stat = super::procfs::read_stat(pid).unwrap();
    assert_ne!(stat.ppid, me, "must not be our child");

    let pidfile = PidFile::new(&probe, &program, Some("0.1.0".into()), 4000);
    let path = dir.path().join("state/app-1.json");
    pidfile.write(&path).unwrap();
    let Adoption::Adopt(h) = adopt(&PidFile::read(&path).unwrap()) else {
        panic!("not adopted");
    };
    assert_eq!(h.pid(), pid);
    assert!(h.is_alive());

    // Pid reuse: same pid, other start time → never ours.
    let reused = PidFile {
        start_time_ticks: pidfile.start_time_ticks + 1,
        ..pidfile.clone()
    };
    assert!(matches!(adopt(&reused), Adoption::Mismatch { .. }));
    // Same process, but not from this release root.
    let elsewhere = PidFile {
        program: dir.path().join("svc/2/current/bin/app"),
        ..pidfile.clone()
    };
    assert!(matches!(adopt(&elsewhere), Adoption::Mismatch { .. }));

    let waiter = tokio::spawn({
        let h = h.clone();
        async move { h.wait_exit().await }
    });
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let info = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info, ExitInfo::UNKNOWN, "not our child: no status");
    assert!(!h.is_alive());
    assert!(wait_until(Duration::from_secs(5), || pid_gone(pid)).await);
    assert!(matches!(adopt(&pidfile), Adoption::Gone));
}

#[tokio::test]
async fn adopted_script_is_matched_by_cmdline_and_stopped_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let gpid_file = dir.path().join("grandchild.pid");
    let program = script(
        dir.path(),
        "svc/1/current/bin/app",
        &format!(
            "sleep 60 &\necho $! > {}\nwhile :; do sleep 1; done",
            gpid_file.display()
        ),
    );
    let pid = spawn_orphan(&program, "start");
    let probe = ProcessHandle::open(pid, None).unwrap();
    let _c = Cleanup(probe.clone());
    assert!(wait_until(Duration::from_secs(5), || read_pid(&gpid_file).is_some()).await);
    let gpid = read_pid(&gpid_file).unwrap();

    let Adoption::Adopt(h) = adopt(&PidFile::new(&probe, &program, None, 4000)) else {
        panic!("script not adopted");
    };
    let outcome = stop_group(&h, Duration::from_secs(5)).await;
    assert_eq!(outcome, StopOutcome::Terminated(ExitInfo::UNKNOWN));
    assert!(h.group_members().is_empty());
    assert!(wait_until(Duration::from_secs(5), || pid_gone(pid) && pid_gone(gpid)).await);
}

#[tokio::test]
async fn run_command_reports_code_and_appends_output() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "rel/bin/app",
        "echo \"migrating $1 $MARKER\"\nexit 3",
    );
    let sp = spec(dir.path(), prog.clone(), &[]);
    for _ in 0..2 {
        let info = run_command(
            &prog,
            &["eval".to_string()],
            dir.path(),
            &sp.env,
            &sp.stdout_log,
            &sp.stderr_log,
            Duration::from_secs(10),
            None,
        )
        .await
        .unwrap();
        assert_eq!(info.code, Some(3));
    }
    assert_eq!(
        fs::read_to_string(&sp.stdout_log).unwrap(),
        "migrating eval m-42\nmigrating eval m-42\n"
    );
}

#[tokio::test]
async fn run_command_kills_its_group_on_success_timeout_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
    let out = dir.path().join("out.log");
    let err = dir.path().join("err.log");
    let prog = script(
        dir.path(),
        "rel/bin/app",
        "sleep 60 &\necho $! > \"$1\"\n[ \"$2\" = wait ] && sleep 60\nexit 0",
    );
    let run = |pidf: PathBuf, mode: &'static str, timeout: Duration| {
        let (prog, env, out, err, cwd) = (
            prog.clone(),
            env.clone(),
            out.clone(),
            err.clone(),
            dir.path().to_path_buf(),
        );
        async move {
            let args = vec![pidf.display().to_string(), mode.to_string()];
            run_command(&prog, &args, &cwd, &env, &out, &err, timeout, None).await
        }
    };

    // Success: the background `sleep` it left behind is killed.
    let p1 = dir.path().join("g1.pid");
    let info = run(p1.clone(), "exit", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(info.success());
    let g1 = read_pid(&p1).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || pid_gone(g1)).await,
        "leftover survived"
    );

    // Timeout: error, whole group killed.
    let p2 = dir.path().join("g2.pid");
    let t0 = Instant::now();
    let res = run(p2.clone(), "wait", Duration::from_millis(500)).await;
    assert!(matches!(res, Err(ProcessError::Timeout { .. })), "{res:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let g2 = read_pid(&p2).unwrap();
    assert!(wait_until(Duration::from_secs(5), || pid_gone(g2)).await);

    // Dropped future: whole group killed too.
    let p3 = dir.path().join("g3.pid");
    let task = tokio::spawn(run(p3.clone(), "wait", Duration::from_secs(60)));
    assert!(wait_until(Duration::from_secs(5), || read_pid(&p3).is_some()).await);
    let g3 = read_pid(&p3).unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(
        wait_until(Duration::from_secs(5), || pid_gone(g3)).await,
        "group survived drop"
    );
}

#[tokio::test]
async fn rotation_under_a_live_appending_child() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "current/bin/app",
        "i=0\nwhile :; do i=$((i+1)); echo \"line $i\"; sleep 0.002; done",
    );
    let sp = spec(dir.path(), prog, &[]);
    let h = spawn_instance(&sp).unwrap();
    let _c = Cleanup(h.clone());
    let log = sp.stdout_log.clone();
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    for _ in 0..3 {
        assert!(wait_until(Duration::from_secs(10), || size(&log) > 300).await);
        assert!(rotate_if_needed(&log, 300, 2).unwrap());
    }
    assert!(wait_until(Duration::from_secs(10), || size(&log) > 50).await);
    stop_group(&h, Duration::from_secs(5)).await;

    let numbers = |p: &Path| -> Vec<u64> {
        let raw = fs::read(p).unwrap();
        assert!(!raw.contains(&0), "{} has a hole of NULs", p.display());
        String::from_utf8(raw)
            .unwrap()
            .lines()
            .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
            .collect()
    };
    let (old, mid, cur) = (
        numbers(&log.with_extension("log.2")),
        numbers(&log.with_extension("log.1")),
        numbers(&log),
    );
    assert!(!log.with_extension("log.3").exists());
    for part in [&old, &mid, &cur] {
        assert!(!part.is_empty());
        assert!(
            part.windows(2).all(|w| w[1] == w[0] + 1),
            "gap inside a file"
        );
    }
    assert!(old.last() < mid.first() && mid.last() < cur.first());
    // The writer continued at the start of the truncated file.
    assert!(size(&log) < size(&log.with_extension("log.1")) * 10);
}

/// Stops the test's own epmd (found by its port) when dropped.
struct Epmd(u16);

impl Epmd {
    fn kill(&self) -> bool {
        std::process::Command::new("epmd")
            .args(["-port", &self.0.to_string(), "-kill"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Killed"))
    }
    fn names(&self) -> String {
        std::process::Command::new("epmd")
            .args(["-port", &self.0.to_string(), "-names"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Epmd {
    /// epmd refuses to die while a node is registered; a node killed a
    /// moment ago may still be listed, so retry for a while.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.kill() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Builds a zero-dependency `mix release` into `dir`, returns its root.
fn build_release(dir: &Path) -> PathBuf {
    let ok = |c: &mut std::process::Command| {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(std::process::Command::new("mix")
        .args(["new", "relapp"])
        .current_dir(dir));
    ok(std::process::Command::new("mix")
        .args(["release", "--overwrite"])
        .env("MIX_ENV", "prod")
        .current_dir(dir.join("relapp")));
    dir.join("relapp/_build/prod/rel/relapp")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_release_spawn_adopt_stop_leaves_no_beam() {
    let dir = tempfile::tempdir().unwrap();
    let root = build_release(dir.path());
    let program = root.join("bin/relapp");
    let epmd = Epmd(free_port());
    let overrides: Vec<(String, String)> = [
        ("ERL_EPMD_PORT", epmd.0.to_string()),
        // mix's default env.sh ignores RELEASE_NODE_SUFFIX (the seed app's
        // uses it), so name the node directly.
        ("RELEASE_NODE", "relapp-1".into()),
        ("RELEASE_DISTRIBUTION", "sname".into()),
        ("RELEASE_COOKIE", "process-test-cookie".into()),
        ("ERL_CRASH_DUMP_SECONDS", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let sp = InstanceSpec {
        program: program.clone(),
        args: vec!["start".into()],
        cwd: dir.path().to_path_buf(),
        env: instance_env(std::env::vars(), &overrides),
        stdout_log: dir.path().join("log/relapp-1-stdout.log"),
        stderr_log: dir.path().join("log/relapp-1-stderr.log"),
        user: None,
    };
    let h = spawn_instance(&sp).unwrap();
    let _c = Cleanup(h.clone());
    // `bin/relapp start` execs down to beam.smp: same pid.
    assert!(
        wait_until(Duration::from_secs(30), || epmd
            .names()
            .contains("name relapp-1 "))
        .await,
        "node never registered; stderr: {}",
        fs::read_to_string(&sp.stderr_log).unwrap_or_default()
    );
    let exe = fs::read_link(format!("/proc/{}/exe", h.pid())).unwrap();
    assert!(
        exe.ends_with("bin/beam.smp") && exe.starts_with(&root),
        "{exe:?}"
    );
    let cmdline = fs::read(format!("/proc/{}/cmdline", h.pid())).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == "-root").unwrap();
    assert_eq!(Path::new(&args[at + 1]), root.as_path());
    // epmd daemonized out of the group: only the VM and its helpers remain.
    for member in h.group_members() {
        let exe = fs::read_link(format!("/proc/{member}/exe")).unwrap_or_default();
        assert!(
            !exe.ends_with("epmd"),
            "epmd {member} is in the instance's group"
        );
    }

    let pidfile = PidFile::new(&h, &program, Some("0.1.0".into()), 4000);
    let Adoption::Adopt(adopted) = adopt(&pidfile) else {
        panic!("a running release must be adoptable");
    };
    assert_eq!(adopted.pid(), h.pid());
    let other = PidFile {
        program: dir.path().join("elsewhere/current/bin/relapp"),
        ..pidfile.clone()
    };
    assert!(matches!(adopt(&other), Adoption::Mismatch { .. }));
    let stats = proc_stats(h.pid()).unwrap();
    assert!(stats.threads > 1 && stats.rss_bytes > 1 << 20, "{stats:?}");

    let outcome = stop_group(&h, Duration::from_secs(15)).await;
    assert_eq!(
        outcome,
        StopOutcome::Terminated(ExitInfo {
            code: Some(0),
            signal: None,
            reaped: true
        })
    );
    assert!(pid_gone(h.pid()));
    assert!(h.group_members().is_empty(), "a beam.smp helper survived");
    assert!(matches!(adopt(&pidfile), Adoption::Gone));
    assert!(wait_until(Duration::from_secs(10), || epmd.kill()).await);
}

#[test]
fn only_clean_read_only_mappings_of_the_executable_are_trimmed() {
    let exe = "/opt/deployex/bin/deployex";
    let smaps = format!(
        "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:00 42 {exe}
Rss:                 100 kB
Anonymous:             0 kB
55d0a0100000-55d0a0900000 r-xp 00100000 fe:00 42 {exe}
Rss:                5000 kB
Anonymous:             0 kB
55d0a0900000-55d0a0960000 r--p 00900000 fe:00 42 {exe}
Rss:                 380 kB
Anonymous:           380 kB
55d0a0960000-55d0a0966000 rw-p 00960000 fe:00 42 {exe}
Anonymous:            24 kB
55d0a0966000-55d0a0967000 r--p 00966000 fe:00 42 {exe}
Rss:                   4 kB
7f0000000000-7f0000200000 r-xp 00000000 fe:00 7 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f0000300000-7f0000301000 r-xp 00000000 fe:00 9 {exe} (deleted)
Anonymous:             0 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0 [heap]
Anonymous:          1024 kB
"
    );
    let found = procfs::clean_image_mappings(&smaps, exe);
    assert_eq!(
        found,
        vec![
            procfs::CleanImageMapping {
                start: 0x55d0a0000000,
                len: 0x100000
            },
            procfs::CleanImageMapping {
                start: 0x55d0a0100000,
                len: 0x800000
            },
        ],
        "the relocated RELRO (anonymous pages), writable data, a mapping \
         without an Anonymous field, other files, a replaced binary and the \
         heap are never trimmed"
    );
}

#[test]
fn trimming_resident_code_keeps_the_process_working() {
    fn rss_file_kib() -> u64 {
        fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
    let before = rss_file_kib();
    let advised = trim_resident_code();
    assert!(advised > 0, "this test binary has clean code mappings");
    let after = rss_file_kib();
    assert!(
        after < before,
        "file-backed RSS must drop: {before} KiB -> {after} KiB"
    );
    // Code and read-only data come back on use, unchanged.
    let text = format!("{:?}", std::hint::black_box(vec![1u8, 2, 3]));
    assert_eq!(text, "[1, 2, 3]");
    let me = procfs::read_stat(std::process::id() as i32).unwrap();
    assert!(me.pgid > 0 && me.threads >= 1);
}
