//! End to end of the operator CLI: the real `deployex` binary as a client
//! (`publish`, `login`, `status`, `restart`, ...) against a real local store,
//! a real S3 API (moto) and a real running deployex with real releases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use common::deployex::{APP, Site, deployex_bin, pids, running_on};
use common::moto::{self, Moto};
use common::{evil_tarball_dotdot, fixture_tarball};
use serde_json::Value;

/// bcrypt of `deployex`: the harness logs in with that password.
const ADMIN_HASH: &str = "$2b$12$oTpgs.Vc4nxDsEB8MBkB.Obs9rCf4wB4WvKYErfgcY9BEFaYp48Rq";

/// The CLI with a clean environment plus `env`; `stdin` is fed when given.
fn cli(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(deployex_bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn deployex cli");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every regular file under `dir` (empty when `dir` is missing).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// The text after the tarball's path in an unpack error
/// (`{path}: entry "..." problem`): the part that must be the same
/// whoever ran the verification.
fn unpack_problem(message: &str) -> String {
    message
        .split_once(": entry ")
        .map(|(_, rest)| rest.trim().to_owned())
        .unwrap_or_else(|| panic!("no entry error in {message:?}"))
}

#[test]
fn every_operator_command_has_help() {
    for sub in [
        "publish", "login", "status", "versions", "events", "restart", "pin", "unpin", "unghost",
        "fleet",
    ] {
        let o = cli(&[sub, "--help"], &[], None);
        assert!(o.status.success(), "{sub} --help: {}", stderr(&o));
        assert!(stdout(&o).contains("Usage: deployex"), "{sub}");
    }
}

/// `deployex settings` prints the settings table (default, allowed values,
/// scope); `check-config` lists the variables in that table's order, a
/// file key the table does not know is refused with one line.
#[test]
fn settings_and_check_config_follow_the_table() {
    let o = cli(&["settings"], &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("DEPLOYEX_MONITORED_REPLICAS (file key monitored_replicas; app setting)\n    default: 3; values: 1..=1000"),
        "{text}"
    );
    assert!(
        text.contains("DEPLOYEX_WEBHOOK_SECRET (file key webhook_secret; host setting, secret)"),
        "{text}"
    );
    let o = cli(&["check-config"], &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let listed: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "variables:")
        .skip(1)
        .filter_map(|l| l.trim().split_once('=').map(|(k, _)| k))
        .collect();
    let settings = stdout(&cli(&["settings"], &[], None));
    let table: Vec<&str> = settings
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once(' ').map(|(k, _)| k))
        .collect();
    assert!(table.contains(&"DEPLOYEX_MONITORED_APP_NAME"), "{settings}");
    assert_eq!(listed, table, "check-config lists the table in its order");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deployex.toml");
    std::fs::write(&file, "monitored_replica = 3\n").unwrap();
    let o = cli(
        &["--config", file.to_str().unwrap(), "check-config"],
        &[],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("unknown key \"monitored_replica\""), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// publish to a local store: refused tarballs write nothing and carry the
/// fetcher's message; a good one is deployed. Then the API commands
/// against that deployex: status --json, restart 2, login, a wrong token.
#[test]
fn publish_to_a_local_store_and_drive_the_api() {
    let site = Site::new(2);
    let store = site.store();
    std::fs::create_dir_all(&store).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let store_arg = store.to_str().unwrap();

    // A tarball with a `..` entry, and a tarball of another app.
    let evil = scratch.path().join("evil.tar.gz");
    std::fs::write(&evil, evil_tarball_dotdot(APP)).unwrap();
    let o = cli(
        &[
            "publish",
            evil.to_str().unwrap(),
            "--store",
            store_arg,
            "--app",
            APP,
        ],
        &[],
        None,
    );
    assert!(!o.status.success());
    let cli_error = stderr(&o);
    assert!(cli_error.contains("refused"), "{cli_error}");
    let good = fixture_tarball(APP, "0.1.0");
    let o = cli(
        &[
            "publish",
            good.to_str().unwrap(),
            "--store",
            store_arg,
            "--app",
            "dxother",
        ],
        &[],
        None,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no bin/dxother in tarball"),
        "{}",
        stderr(&o)
    );
    assert_eq!(files_under(&store), Vec::<String>::new(), "nothing written");

    // The configuration the daemon reads picks the store and the app.
    let o = cli(
        &[
            "publish",
            good.to_str().unwrap(),
            "--pre-command",
            "eval IO.puts(:migrated)",
        ],
        &[
            ("DEPLOYEX_RELEASE_DIR", store_arg),
            ("DEPLOYEX_MONITORED_APP_NAME", APP),
        ],
        None,
    );
    assert!(o.status.success(), "publish: {}", stderr(&o));
    let current: Value = serde_json::from_slice(
        &std::fs::read(store.join(format!("versions/{APP}/local/current.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(current["version"], "0.1.0");
    assert_eq!(current["pre_commands"][0], "eval IO.puts(:migrated)");
    assert_eq!(current["sha256"].as_str().unwrap().len(), 64);

    let dx = site.start();
    let status = dx.wait_status("0.1.0 published by the CLI", Duration::from_secs(90), |s| {
        running_on(s, "0.1.0")
    });

    // The same `..` tarball handed to the daemon directly: its fetcher
    // rejects it with the message the CLI printed.
    site.publish_raw_tarball("0.2.0", &evil_tarball_dotdot(APP));
    site.write_current(r#"{"version":"0.2.0"}"#);
    let rejected = dx.wait_status("the fetcher's rejection", Duration::from_secs(30), |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("0.2.0"))
    });
    let fetcher_error = rejected["last_error"].as_str().unwrap().to_owned();
    assert_eq!(
        unpack_problem(&cli_error),
        unpack_problem(&fetcher_error),
        "CLI: {cli_error}\nfetcher: {fetcher_error}"
    );
    site.write_current(&current.to_string());

    // status --json: the API's object.
    let url = format!("http://127.0.0.1:{}", site.api_port);
    let token = dx.token.clone().unwrap();
    let auth = [("DEPLOYEX_TOKEN", token.as_str())];
    let o = cli(&["status", "--url", &url, "--json"], &auth, None);
    assert!(o.status.success(), "status: {}", stderr(&o));
    let printed: Value = serde_json::from_slice(&o.stdout).unwrap();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&printed), keys(&dx.status()));
    assert_eq!(printed["app"], APP);
    assert_eq!(pids(&printed), pids(&status));
    // The table, with the URL taken from the configuration.
    let port = site.api_port.to_string();
    let o = cli(&["status"], &[auth[0], ("DEPLOYEX_PHX_PORT", &port)], None);
    assert!(o.status.success(), "status: {}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.contains("INSTANCE") && table.contains("0.1.0"),
        "{table}"
    );
    // --app for another app is refused.
    let o = cli(&["status", "--url", &url, "--app", "dxother"], &auth, None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("runs app dxtest, not dxother"),
        "{}",
        stderr(&o)
    );

    // restart 2: a new OS process for instance 2, instance 1 untouched.
    let before = pids(&status);
    let o = cli(&["restart", "2", "--url", &url], &auth, None);
    assert!(o.status.success(), "restart: {}", stderr(&o));
    let after = dx.wait_status("instance 2 restarted", Duration::from_secs(60), |s| {
        let p = pids(s);
        running_on(s, "0.1.0") && p[1] != before[1] && p[1] != 0
    });
    assert_eq!(pids(&after)[0], before[0]);
    // An unknown instance: the API's 404 and its message.
    let o = cli(&["restart", "9", "--url", &url], &auth, None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HTTP 404"), "{}", stderr(&o));

    // A wrong token: non-zero, with the API's 401 message.
    let o = cli(
        &["status", "--url", &url],
        &[("DEPLOYEX_TOKEN", "not-a-token")],
        None,
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("HTTP 401") && e.contains("authentication required"),
        "{e}"
    );
    assert!(!e.contains(&token), "no token in messages");

    // login: the token file (0600), then commands without DEPLOYEX_TOKEN.
    let home = scratch.path().join("config");
    let xdg = [("XDG_CONFIG_HOME", home.to_str().unwrap())];
    let o = cli(
        &["login", "--url", &url, "--password-stdin"],
        &xdg,
        Some("wrong\n"),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("HTTP 401: invalid credentials"),
        "{}",
        stderr(&o)
    );
    let o = cli(
        &["login", "--url", &url, "--password-stdin"],
        &xdg,
        Some("deployex\n"),
    );
    assert!(o.status.success(), "login: {}", stderr(&o));
    let token_file = home.join("deployex/token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let o = cli(&["versions", "--url", &url, "--json"], &xdg, None);
    assert!(o.status.success(), "versions: {}", stderr(&o));
    let history: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["version"] == "0.1.0")
    );
    let o = cli(&["events", "--url", &url, "--limit", "5"], &xdg, None);
    assert!(o.status.success(), "events: {}", stderr(&o));
    assert!(stdout(&o).starts_with("AT"), "{}", stdout(&o));
    // pin / unpin / unghost go through too.
    let o = cli(&["pin", "0.1.0", "--url", &url], &xdg, None);
    assert!(o.status.success(), "pin: {}", stderr(&o));
    assert_eq!(dx.status()["mode"], "manual");
    let o = cli(&["unpin", "--url", &url], &xdg, None);
    assert!(o.status.success(), "unpin: {}", stderr(&o));
    assert_eq!(dx.status()["mode"], "automatic");
    let o = cli(&["unghost", "9.9.9", "--url", &url], &xdg, None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("version 9.9.9 is not ghosted"),
        "{}",
        stderr(&o)
    );
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

/// publish to S3 (moto): a refused tarball writes no object; a good one is
/// deployed by a deployex reading the bucket.
#[test]
fn publish_to_s3_is_deployed() {
    const BUCKET: &str = "dxcli-releases";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
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
        ("DEPLOYEX_MONITORED_APP_NAME", APP),
    ];
    let objects = || {
        rt.block_on(client.list_objects_v2().bucket(BUCKET).send())
            .unwrap()
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect::<Vec<_>>()
    };

    let scratch = tempfile::tempdir().unwrap();
    let evil = scratch.path().join("evil.tar.gz");
    std::fs::write(&evil, evil_tarball_dotdot(APP)).unwrap();
    let o = cli(
        &[
            "publish",
            evil.to_str().unwrap(),
            "--bucket",
            BUCKET,
            "--env",
            "prod",
        ],
        &aws,
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("refused"), "{}", stderr(&o));
    assert_eq!(objects(), Vec::<String>::new(), "nothing uploaded");

    let good = fixture_tarball(APP, "0.1.0");
    let o = cli(
        &[
            "publish",
            good.to_str().unwrap(),
            "--bucket",
            BUCKET,
            "--env",
            "prod",
        ],
        &aws,
        None,
    );
    assert!(o.status.success(), "publish: {}", stderr(&o));
    let mut keys = objects();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("dist/{APP}/{APP}-0.1.0.tar.gz"),
            format!("versions/{APP}/prod/current.json"),
        ]
    );

    let mut site = Site::new(1)
        .env("DEPLOYEX_CLOUD_ENVIRONMENT", "prod")
        .env("DEPLOYEX_RELEASE_ADAPTER", "s3")
        .env("DEPLOYEX_RELEASE_BUCKET", BUCKET)
        .env("DEPLOYEX_ADMIN_HASHED_PASSWORD", ADMIN_HASH);
    for (k, v) in aws {
        site = site.env(k, v);
    }
    let dx = site.start();
    let status = dx.wait_status(
        "0.1.0 published to S3 by the CLI",
        Duration::from_secs(90),
        |s| running_on(s, "0.1.0"),
    );
    assert_eq!(status["last_error"], Value::Null);
}
