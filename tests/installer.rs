//! The Ubuntu installer (devops/installer/deployex.sh) run for real against a
//! scratch root (`--root`): every file it writes, idempotence, --update and
//! --uninstall; plus shellcheck, `systemd-analyze verify` on the generated
//! unit and a real logrotate run of the generated rule. The release is a
//! tarball built here around a tiny shell-script `bin/deployex`, so no
//! release build is needed. A test skips (printing why) only when a tool is
//! missing from the machine.

// Helpers outside #[test] fns unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};

const APP: &str = "shop";
/// A value systemd and bash must both keep literally: `$`, spaces, `#`, `"`.
const DATABASE_URL: &str = "ecto://shop:pa$$ w#rd\"x@db.internal/shop_prod";
const FAKE_HASH: &str = "$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn installer() -> PathBuf {
    repo().join("devops/installer/deployex.sh")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A fake `bin/deployex`: answers the sub-commands the installer uses.
/// `check-config` fails (exit 2) unless the environment file reached it.
fn fake_binary(marker: &str) -> String {
    format!(
        r#"#!/bin/sh
# fake deployex {marker}
case "$1" in
  --version) echo "deployex {marker}" ;;
  hash-password) cat >/dev/null; echo '{FAKE_HASH}' ;;
  check-config)
    [ "$DEPLOYEX_MONITORED_APP_NAME" = "{APP}" ] || {{ echo "no app name" >&2; exit 2; }}
    [ -n "$DATABASE_URL" ] || {{ echo "no DATABASE_URL" >&2; exit 2; }}
    echo "app: $DEPLOYEX_MONITORED_APP_NAME" ;;
  *) exit 64 ;;
esac
"#
    )
}

/// deployex-{version}-x86_64-unknown-linux-gnu.tar.gz with the fake binary
/// and the real unit / logrotate templates (as `make dist` lays them out).
fn fake_release(dir: &Path, version: &str) -> PathBuf {
    release_with(dir, version, fake_binary(version).as_bytes())
}

fn release_with(dir: &Path, version: &str, binary: &[u8]) -> PathBuf {
    let path = dir.join(format!(
        "deployex-{version}-x86_64-unknown-linux-gnu.tar.gz"
    ));
    let file = fs::File::create(&path).unwrap();
    let mut tar = tar::Builder::new(GzEncoder::new(file, Compression::fast()));
    let mut add = |name: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    };
    add("bin/deployex", binary, 0o755);
    for f in [
        "devops/systemd/deployex.service",
        "devops/logrotate/deployex",
    ] {
        add(f, &fs::read(repo().join(f)).unwrap(), 0o644);
    }
    add("README.md", b"# deployex\n", 0o644);
    tar.into_inner().unwrap().finish().unwrap();
    path
}

/// The shipped example config, pointed at `release`, with `env` and secrets
/// exercising quoting and the generated-secret path.
fn write_config(dir: &Path, release: &Path) -> PathBuf {
    let example = repo().join("devops/installer/deployex-config.json");
    let mut cfg: Value = serde_json::from_str(&fs::read_to_string(example).unwrap()).unwrap();
    cfg["app_name"] = json!(APP);
    cfg["replicas"] = json!(2);
    cfg["release"] = json!(release.to_str().unwrap());
    cfg["read_write_paths"] = json!(["/srv/shop-uploads"]);
    cfg["otp_tls_cert_path"] = json!("/etc/deployex/tls");
    cfg["secrets"] = json!({"erlang_cookie": "given-cookie"});
    cfg["env"] =
        json!({"DATABASE_URL": DATABASE_URL, "POOL_SIZE": 10, "DEPLOYEX_PHX_PORT": "5555"});
    let path = dir.join("config.json");
    fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    path
}

fn run(root: &Path, args: &[&str]) -> Output {
    let out = Command::new("bash")
        .arg(installer())
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("DEPLOYEX_INSTALLER_DRY_RUN")
        .output()
        .unwrap();
    eprintln!(
        "installer {args:?}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_ok(root: &Path, args: &[&str]) -> String {
    let out = run(root, args);
    assert!(out.status.success(), "installer {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// Every file and directory under `root`: relative path -> (mode, content).
fn snapshot(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (mode, Vec::new()));
                walk(root, &p, out);
            } else {
                out.insert(rel, (mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Value of `key` as bash reads the environment file (systemd's
/// EnvironmentFile= gives single-quoted values the same literal meaning).
fn sourced(env_file: &Path, key: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -a; . \"$1\"; printf %s \"${key}\""))
        .arg("bash")
        .arg(env_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "sourcing {}", env_file.display());
    String::from_utf8(out.stdout).unwrap()
}

struct Scratch {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    config: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let root = base.join("root");
    fs::create_dir(&root).unwrap();
    let release = fake_release(&base, "0.1.0");
    let config = write_config(&base, &release);
    Scratch {
        _dir: dir,
        base,
        root,
        config,
    }
}

fn tools_present(tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            eprintln!("SKIPPED: `{t}` is not installed on this machine");
            return false;
        }
    }
    true
}

#[test]
fn shellcheck_is_clean() {
    if !tools_present(&["shellcheck"]) {
        return;
    }
    let mut scripts = Vec::new();
    for dir in ["devops/installer", "devops/tls"] {
        if let Ok(entries) = fs::read_dir(repo().join(dir)) {
            for e in entries {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "sh") {
                    scripts.push(p);
                }
            }
        }
    }
    assert!(scripts.contains(&installer()), "{scripts:?}");
    let out = Command::new("shellcheck").args(&scripts).output().unwrap();
    assert!(
        out.status.success(),
        "shellcheck {scripts:?}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn install_writes_everything_twice_identically_update_and_uninstall() {
    if !tools_present(&["jq", "tar", "sha256sum"]) {
        return;
    }
    let s = scratch();
    let root = &s.root;
    let cfg = s.config.to_str().unwrap();

    let stdout = run_ok(root, &["--install", cfg]);
    assert!(stdout.contains("dry-run: useradd --system"), "{stdout}");
    // The apps' own user, by default (issue 15).
    assert!(
        stdout.contains(
            "dry-run: useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin --comment deployex applications deployex-app"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("dry-run: systemctl enable deployex.service"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dry-run: systemctl restart deployex.service"),
        "{stdout}"
    );

    // Binary.
    let bin = root.join("opt/deployex/bin/deployex");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(fs::read_to_string(&bin).unwrap(), fake_binary("0.1.0"));

    // Folders.
    for (d, m) in [
        ("var/lib/deployex", 0o750),
        ("var/log/deployex", 0o750),
        ("var/log/shop", 0o750),
        ("etc/deployex", 0o750),
        ("srv/shop-uploads", 0o750),
        ("srv/deployex/myphoenixapp", 0o755),
    ] {
        assert!(root.join(d).is_dir(), "{d}");
        assert_eq!(mode(&root.join(d)), m, "{d}");
    }

    // Environment file.
    let env_file = root.join("etc/deployex/deployex.env");
    assert_eq!(mode(&env_file), 0o600);
    let env = fs::read_to_string(&env_file).unwrap();
    for line in [
        "DEPLOYEX_MONITORED_APP_NAME='shop'",
        "DEPLOYEX_CLOUD_ENVIRONMENT='prod'",
        "DEPLOYEX_MONITORED_REPLICAS='2'",
        "DEPLOYEX_VAR_DIR='/var/lib/deployex'",
        "DEPLOYEX_LOG_DIR='/var/log/shop'",
        "DEPLOYEX_STOP_APPS_ON_EXIT='false'",
        "DEPLOYEX_APP_USER='deployex-app'",
        "AWS_REGION='us-east-2'",
        "DEPLOYEX_OTP_TLS_CERT_PATH='/etc/deployex/tls'",
        "DEPLOYEX_ERLANG_COOKIE='given-cookie'",
        "DEPLOYEX_PHX_PORT='5555'",
        "POOL_SIZE='10'",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing in\n{env}");
    }
    assert_eq!(
        env.matches("DEPLOYEX_PHX_PORT=").count(),
        1,
        "config env overrides"
    );
    assert_eq!(sourced(&env_file, "DATABASE_URL"), DATABASE_URL);
    assert_eq!(
        sourced(&env_file, "DEPLOYEX_ADMIN_HASHED_PASSWORD"),
        FAKE_HASH
    );
    let skb = sourced(&env_file, "DEPLOYEX_SECRET_KEY_BASE");
    assert_eq!(skb.len(), 96, "{skb}");
    assert!(skb.chars().all(|c| c.is_ascii_hexdigit()), "{skb}");
    let pw = root.join("etc/deployex/admin-password");
    assert_eq!(mode(&pw), 0o600);
    assert_eq!(fs::read_to_string(&pw).unwrap().trim().len(), 24);

    // systemd unit.
    let unit = fs::read_to_string(root.join("etc/systemd/system/deployex.service")).unwrap();
    for line in [
        "Type=simple",
        "User=deployex",
        "EnvironmentFile=/etc/deployex/deployex.env",
        "ExecStart=/opt/deployex/bin/deployex",
        // systemctl reload deployex: SIGHUP re-reads the configuration.
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=no",
        "ReadWritePaths=/var/lib/deployex /var/log/deployex /var/log/shop /tmp /srv/shop-uploads",
        "Restart=on-failure",
        "RestartSec=5",
        "KillMode=process",
        "TimeoutStopSec=30",
        "LimitNOFILE=65536",
        "StandardOutput=append:/var/log/deployex/deployex-stdout.log",
        "StandardError=append:/var/log/deployex/deployex-stderr.log",
        "WantedBy=multi-user.target",
        "CapabilityBoundingSet=CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_KILL CAP_SETGID CAP_SETUID CAP_SYS_PTRACE",
        "AmbientCapabilities=CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_KILL CAP_SETGID CAP_SETUID CAP_SYS_PTRACE",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing in\n{unit}");
    }
    assert!(
        !unit.contains("@APP@")
            && !unit.contains("@EXTRA_RW_PATHS@")
            && !unit.contains("@CONFIG_ARG@")
    );
    assert!(!unit.contains("@CAPABILITIES@"));
    assert_eq!(
        mode(&root.join("etc/systemd/system/deployex.service")),
        0o644
    );

    // logrotate rule.
    let rule = fs::read_to_string(root.join("etc/logrotate.d/deployex")).unwrap();
    for needle in [
        "/var/log/shop/*.log {",
        "/var/log/deployex/*.log {",
        "copytruncate",
        "compress",
        "rotate 7",
        "size 200M",
        "su deployex deployex",
    ] {
        assert!(rule.contains(needle), "{needle} missing in\n{rule}");
    }

    // Twice: identical files, same generated secrets, binary untouched.
    let first = snapshot(root);
    let stdout = run_ok(root, &["--install", cfg]);
    assert!(stdout.contains("binary unchanged"), "{stdout}");
    assert!(!stdout.contains("generated the dashboard admin password"));
    let second = snapshot(root);
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    for (k, v) in &first {
        assert!(second[k] == *v, "{k} changed on the second --install");
    }

    // --update with a new release: binary replaced, old one kept, restart.
    let release2 = fake_release(&s.base, "0.2.0");
    let mut c: Value = serde_json::from_str(&fs::read_to_string(&s.config).unwrap()).unwrap();
    c["release"] = json!(release2.to_str().unwrap());
    fs::write(&s.config, c.to_string()).unwrap();
    let stdout = run_ok(root, &["--update", cfg]);
    assert!(
        stdout.contains("dry-run: systemctl restart deployex.service"),
        "{stdout}"
    );
    assert_eq!(fs::read_to_string(&bin).unwrap(), fake_binary("0.2.0"));
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(
        fs::read_to_string(root.join("opt/deployex/bin/deployex.previous")).unwrap(),
        fake_binary("0.1.0")
    );
    assert_eq!(
        fs::read(&env_file).unwrap(),
        first["etc/deployex/deployex.env"].1
    );

    // --uninstall keeps state and logs; --purge removes them.
    fs::write(root.join("var/log/shop/shop-1-stdout.log"), "kept\n").unwrap();
    let stdout = run_ok(root, &["--uninstall"]);
    assert!(
        stdout.contains("dry-run: systemctl disable --now deployex.service"),
        "{stdout}"
    );
    for gone in [
        "etc/systemd/system/deployex.service",
        "etc/deployex/deployex.env",
        "etc/logrotate.d/deployex",
        "opt/deployex/bin/deployex",
    ] {
        assert!(!root.join(gone).exists(), "{gone} still there");
    }
    assert!(root.join("var/lib/deployex").is_dir());
    assert!(root.join("var/log/shop/shop-1-stdout.log").is_file());
    run_ok(root, &["--install", cfg]);
    let stdout = run_ok(root, &["--uninstall", "--purge"]);
    assert!(stdout.contains("dry-run: userdel deployex-app"), "{stdout}");
    for gone in [
        "var/lib/deployex",
        "var/log/deployex",
        "var/log/shop",
        "opt/deployex",
    ] {
        assert!(
            !root.join(gone).exists(),
            "{gone} still there after --purge"
        );
    }
}

#[test]
fn an_empty_app_user_runs_the_apps_as_deployex_without_capabilities() {
    if !tools_present(&["jq", "tar", "sha256sum"]) {
        return;
    }
    let s = scratch();
    let mut c: Value = serde_json::from_str(&fs::read_to_string(&s.config).unwrap()).unwrap();
    c["app_user"] = json!("");
    fs::write(&s.config, c.to_string()).unwrap();
    let stdout = run_ok(&s.root, &["--install", s.config.to_str().unwrap()]);
    assert!(!stdout.contains("deployex-app"), "{stdout}");
    let env = fs::read_to_string(s.root.join("etc/deployex/deployex.env")).unwrap();
    assert!(!env.contains("DEPLOYEX_APP_USER"), "{env}");
    let unit = fs::read_to_string(s.root.join("etc/systemd/system/deployex.service")).unwrap();
    for line in ["CapabilityBoundingSet=", "AmbientCapabilities="] {
        assert!(unit.lines().any(|l| l == line), "{line} missing in\n{unit}");
    }
}

#[test]
fn bad_configs_fail_clearly_and_write_nothing() {
    if !tools_present(&["jq"]) {
        return;
    }
    let s = scratch();
    let base: Value = serde_json::from_str(&fs::read_to_string(&s.config).unwrap()).unwrap();
    let cases: [(&str, Value, &str); 7] = [
        ("app_name", json!("Bad-Name"), "app_name=\"Bad-Name\""),
        ("replicas", json!("three"), "replicas=\"three\""),
        (
            "release",
            json!("/nonexistent/deployex.tar.gz"),
            "not found",
        ),
        (
            "release",
            json!("http://example.invalid/x.tar.gz"),
            "only https",
        ),
        ("env", json!({"A": "it's"}), "single quote"),
        (
            "app_user",
            json!("root"),
            "must not be deployex's own user nor root",
        ),
        ("app_user", json!("Bad User"), "app_user=\"Bad User\""),
    ];
    for (key, value, expected) in cases {
        let mut c = base.clone();
        c[key] = value;
        fs::write(&s.config, c.to_string()).unwrap();
        let out = run(&s.root, &["--install", s.config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key} accepted");
        assert!(stderr.contains(expected), "{key}: {stderr}");
        assert!(!s.root.join("etc/deployex/deployex.env").exists(), "{key}");
    }
    // --update refuses a host without deployex.
    fs::write(&s.config, base.to_string()).unwrap();
    let out = run(&s.root, &["--update", s.config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use --install"));
}

#[test]
fn generated_unit_passes_systemd_analyze_verify() {
    if !tools_present(&["jq", "systemd-analyze"]) {
        return;
    }
    let s = scratch();
    run_ok(&s.root, &["--install", s.config.to_str().unwrap()]);
    let unit = fs::read_to_string(s.root.join("etc/systemd/system/deployex.service")).unwrap();
    // verify checks that ExecStart is executable: point it at the scratch
    // root's binary (the only change), on this host's real unit search path.
    let bin = s.root.join("opt/deployex/bin/deployex");
    let copy = unit.replace(
        "ExecStart=/opt/deployex/bin/deployex",
        &format!("ExecStart={}", bin.display()),
    );
    assert_ne!(copy, unit);
    let verify = |text: &str| {
        let dir = s.base.join("verify");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("deployex.service");
        fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = verify(&copy);
    assert!(ok && stderr.trim().is_empty(), "verify: {stderr}");
    // The check can fail: a misspelt directive is reported.
    let (_, stderr) = verify(&copy.replace("KillMode=process", "KilMode=process"));
    assert!(stderr.contains("KilMode"), "typo not reported: {stderr}");
}

#[test]
fn generated_logrotate_rule_rotates_with_copytruncate() {
    if !tools_present(&["jq", "logrotate"]) {
        return;
    }
    let s = scratch();
    run_ok(&s.root, &["--install", s.config.to_str().unwrap()]);
    let rule = fs::read_to_string(s.root.join("etc/logrotate.d/deployex")).unwrap();
    // Same rule, paths moved into the scratch root; `su root root` because
    // the deployex user exists only on an installed host.
    let logs = s.root.join("var/log");
    let copy = rule
        .replace("/var/log/", &format!("{}/", logs.display()))
        .replace("su deployex deployex", "su root root");
    let conf = s.base.join("logrotate.conf");
    fs::write(&conf, copy).unwrap();
    let app_log = logs.join("shop/shop-1-stdout.log");
    let own_log = logs.join("deployex/deployex-stderr.log");
    fs::write(&app_log, "app line\n").unwrap();
    fs::write(&own_log, "deployex line\n").unwrap();
    let out = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(s.base.join("logrotate.state"))
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    for (log, line) in [(&app_log, "app line\n"), (&own_log, "deployex line\n")] {
        // copytruncate: same file, now empty; the copy has a date suffix that
        // cannot collide with deployex's own `.N` rotation.
        assert_eq!(fs::read_to_string(log).unwrap(), "");
        let name = log.file_name().unwrap().to_string_lossy().into_owned();
        let rotated: Vec<PathBuf> = fs::read_dir(log.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let f = p.file_name().unwrap().to_string_lossy();
                f.starts_with(&format!("{name}-")) && !f.ends_with(".1")
            })
            .collect();
        assert_eq!(rotated.len(), 1, "{rotated:?}");
        assert_eq!(fs::read_to_string(&rotated[0]).unwrap(), line);
    }
}

#[test]
fn real_deployex_accepts_the_generated_environment() {
    if !tools_present(&["jq"]) {
        return;
    }
    let s = scratch();
    // The real binary of this crate: its `hash-password` makes the admin
    // hash and its `check-config` (run by the installer) must accept the file.
    let real = fs::read(env!("CARGO_BIN_EXE_deployex")).unwrap();
    let release = release_with(&s.base, "0.1.0", &real);
    let mut c: Value = serde_json::from_str(&fs::read_to_string(&s.config).unwrap()).unwrap();
    c["release"] = json!(release.to_str().unwrap());
    c["otp_tls_cert_path"] = json!("");
    // A user that exists here: check-config looks it up.
    c["app_user"] = json!("nobody");
    fs::write(&s.config, c.to_string()).unwrap();
    let stdout = run_ok(&s.root, &["--install", s.config.to_str().unwrap()]);
    assert!(
        stdout.contains("checked by deployex check-config"),
        "{stdout}"
    );

    // Same check here, with nothing but the environment file.
    let env_file = s.root.join("etc/deployex/deployex.env");
    let out = Command::new("bash")
        .arg("-c")
        .arg("set -a; . \"$1\"; set +a; exec \"$2\" check-config")
        .arg("bash")
        .arg(&env_file)
        .arg(s.root.join("opt/deployex/bin/deployex"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "app: shop",
        "environment: prod",
        "replicas: 2",
        "var dir: /var/lib/deployex",
        "log dir: /var/log/shop",
        "stop apps on exit: false",
        "app user: nobody (uid 65534",
        "DEPLOYEX_PHX_PORT=5555",
        "DEPLOYEX_ADMIN_HASHED_PASSWORD=<redacted>",
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }
    let password = fs::read_to_string(s.root.join("etc/deployex/admin-password")).unwrap();
    let hash = sourced(&env_file, "DEPLOYEX_ADMIN_HASHED_PASSWORD");
    assert!(bcrypt::verify(password.trim(), &hash).unwrap());
}

#[test]
fn a_list_of_apps_makes_apps_tables_and_check_config_prints_every_app() {
    if !tools_present(&["jq"]) {
        return;
    }
    let s = scratch();
    let real = fs::read(env!("CARGO_BIN_EXE_deployex")).unwrap();
    let release = release_with(&s.base, "0.1.0", &real);
    let mut c: Value = serde_json::from_str(&fs::read_to_string(&s.config).unwrap()).unwrap();
    c["release"] = json!(release.to_str().unwrap());
    c["otp_tls_cert_path"] = json!("");
    c["app_user"] = json!("nobody");
    // The list form: top-level per-app keys (replicas, release_dir) are
    // every app's defaults; app_name moves into the list.
    c.as_object_mut().unwrap().remove("app_name");
    c.as_object_mut().unwrap().remove("app_port");
    c["apps"] = json!([
        {"app_name": APP, "app_port": 4000, "env": {"POOL_SIZE": 3}},
        {"app_name": "worker", "app_port": 4100, "replicas": 1, "release_dir": "/srv/worker",
         "health_path": "/health", "min_ready_ms": 1500, "otp_readiness": false,
         "rollback_crashes": 4, "deploy_strategy": "start_first", "watchdog_action": "restart",
         "watchdog_memory_mb": 512, "liveness_failures": 5, "liveness_interval_ms": 2000}
    ]);
    fs::write(&s.config, c.to_string()).unwrap();
    let stdout = run_ok(&s.root, &["--install", s.config.to_str().unwrap()]);
    assert!(
        stdout.contains("checked by deployex check-config"),
        "{stdout}"
    );

    let toml_path = s.root.join("etc/deployex/deployex.toml");
    let text = fs::read_to_string(&toml_path).unwrap();
    let table: toml::Table = text.parse().expect("the generated file is TOML");
    let apps = table["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 2, "{text}");
    assert_eq!(apps[0]["monitored_app_name"].as_str(), Some(APP));
    assert_eq!(apps[0]["monitored_replicas"].as_integer(), Some(2));
    assert_eq!(apps[0]["env"]["POOL_SIZE"].as_str(), Some("3"));
    assert_eq!(apps[1]["monitored_app_name"].as_str(), Some("worker"));
    assert_eq!(apps[1]["monitored_replicas"].as_integer(), Some(1));
    assert_eq!(apps[1]["monitored_app_port"].as_integer(), Some(4100));
    assert_eq!(apps[1]["release_dir"].as_str(), Some("/srv/worker"));
    // Every per-app key reaches the app's table (and check-config accepts
    // it, below).
    for (key, want) in [
        ("health_path", "/health"),
        ("otp_readiness", "false"),
        ("deploy_strategy", "start_first"),
        ("watchdog_action", "restart"),
    ] {
        assert_eq!(apps[1][key].as_str(), Some(want), "{key} in {text}");
    }
    for (key, want) in [
        ("min_ready_ms", 1500),
        ("rollback_crashes", 4),
        ("watchdog_memory_mb", 512),
        ("liveness_failures", 5),
        ("liveness_interval_ms", 2000),
    ] {
        assert_eq!(apps[1][key].as_integer(), Some(want), "{key} in {text}");
    }
    assert!(
        apps[0].get("health_path").is_none(),
        "not given for the first app: {text}"
    );
    // No per-app variable in the environment file; the unit passes the file.
    let env_file = s.root.join("etc/deployex/deployex.env");
    let env_text = fs::read_to_string(&env_file).unwrap();
    for var in [
        "DEPLOYEX_MONITORED_APP_NAME",
        "DEPLOYEX_MONITORED_REPLICAS",
        "DEPLOYEX_MONITORED_APP_PORT",
        "DEPLOYEX_RELEASE_DIR",
    ] {
        assert!(!env_text.contains(var), "{var} in\n{env_text}");
    }
    let unit = fs::read_to_string(s.root.join("etc/systemd/system/deployex.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/deployex/bin/deployex --config /etc/deployex/deployex.toml"),
        "{unit}"
    );

    // check-config on the generated files prints every app.
    let out = Command::new("bash")
        .arg("-c")
        .arg("set -a; . \"$1\"; set +a; exec \"$2\" --config \"$3\" check-config")
        .arg("bash")
        .arg(&env_file)
        .arg(s.root.join("opt/deployex/bin/deployex"))
        .arg(&toml_path)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        &format!("  {APP}: 2 replicas, ports 4000..=4001"),
        // start_first reserves a spare port: the strategy reached deployex.
        "  worker: 1 replicas, ports 4100..=4101, start_first",
    ] {
        assert!(printed.contains(needle), "{needle} missing in\n{printed}");
    }

    // The single-app form afterwards removes the file and the flag.
    c.as_object_mut().unwrap().remove("apps");
    c["app_name"] = json!(APP);
    fs::write(&s.config, c.to_string()).unwrap();
    run_ok(&s.root, &["--update", s.config.to_str().unwrap()]);
    assert!(!toml_path.exists());
    let unit = fs::read_to_string(s.root.join("etc/systemd/system/deployex.service")).unwrap();
    assert!(!unit.contains("--config"), "{unit}");
}
