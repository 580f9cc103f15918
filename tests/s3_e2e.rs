//! End to end with the S3 store and AWS Secrets Manager: the real
//! `deployex` binary against a real `moto_server` (S3 + Secrets Manager HTTP
//! APIs on loopback), real fixture releases, real instances.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_s3::primitives::ByteStream;
use common::deployex::{APP, Site};
use common::fixture_tarball;
use common::moto::{self, Moto};
use serde_json::Value;

const ENV: &str = "prod";
/// The default bucket name for APP in ENV.
const BUCKET: &str = "dxtest-prod-distribution";
/// bcrypt of `deployex`: the harness logs in with that password.
const ADMIN_HASH: &str = "$2b$12$oTpgs.Vc4nxDsEB8MBkB.Obs9rCf4wB4WvKYErfgcY9BEFaYp48Rq";
const COOKIE: &str = "cookie-from-secrets-manager";

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

fn s3(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    )
}

/// Tarball first, then current.json, as an operator's CI does.
async fn publish(client: &aws_sdk_s3::Client, version: &str) {
    client
        .put_object()
        .bucket(BUCKET)
        .key(format!("dist/{APP}/{APP}-{version}.tar.gz"))
        .body(
            ByteStream::from_path(fixture_tarball(APP, version))
                .await
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let current =
        serde_json::json!({"version": version, "pre_commands": [], "hash": format!("h{version}")});
    client
        .put_object()
        .bucket(BUCKET)
        .key(format!("versions/{APP}/{ENV}/current.json"))
        .body(ByteStream::from(current.to_string().into_bytes()))
        .send()
        .await
        .unwrap();
}

async fn create_bucket(client: &aws_sdk_s3::Client) {
    client.create_bucket().bucket(BUCKET).send().await.unwrap();
}

fn running(status: &Value, version: &str) -> bool {
    let i = &status["instances"][0];
    i["state"] == "running" && i["version"] == version && i["otp_connected"] == true
}

fn pid_of(status: &Value) -> i64 {
    status["instances"][0]["os_pid"].as_i64().unwrap_or(0)
}

#[test]
fn deploys_from_s3_with_secrets_and_rides_out_an_outage() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut moto = Moto::start();
    let sdk = sdk(&moto.endpoint());
    let client = s3(&sdk);
    rt.block_on(async {
        create_bucket(&client).await;
        let secret = serde_json::json!({
            "DEPLOYEX_SECRET_KEY_BASE": "s".repeat(64),
            "DEPLOYEX_ERLANG_COOKIE": COOKIE,
            "DEPLOYEX_ADMIN_HASHED_PASSWORD": ADMIN_HASH,
        });
        aws_sdk_secretsmanager::Client::new(&sdk)
            .create_secret()
            .name(format!("deployex-{APP}-{ENV}-secrets"))
            .secret_string(secret.to_string())
            .send()
            .await
            .unwrap();
        publish(&client, "0.1.0").await;
    });

    // The harness sets a cookie and key base for the local store: blank
    // them so every secret comes from Secrets Manager.
    let site = Site::new(1)
        .env("DEPLOYEX_CLOUD_ENVIRONMENT", ENV)
        .env("DEPLOYEX_RELEASE_ADAPTER", "s3")
        .env("AWS_ENDPOINT_URL", &moto.endpoint())
        .env("AWS_REGION", moto::REGION)
        .env("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("DEPLOYEX_ERLANG_COOKIE", "")
        .env("DEPLOYEX_SECRET_KEY_BASE", "");
    let dx = site.start();

    let status = dx.wait_status("0.1.0 running from S3", Duration::from_secs(90), |s| {
        running(s, "0.1.0")
    });
    // The instance got the cookie that only Secrets Manager knows.
    let pid = pid_of(&status);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let needle = format!("RELEASE_COOKIE={COOKIE}");
    assert!(
        environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()),
        "instance runs with the cookie from Secrets Manager"
    );
    let log = dx.log_text();
    assert!(!log.contains(COOKIE), "no secret in deployex's log");
    assert!(
        !log.contains(&"s".repeat(64)),
        "no secret in deployex's log"
    );

    rt.block_on(publish(&client, "0.1.1"));
    let status = dx.wait_status("0.1.1 running from S3", Duration::from_secs(120), |s| {
        running(s, "0.1.1")
    });
    let pid = pid_of(&status);
    assert!(pid > 0);

    // Outage: S3 gone. The fetcher reports it; nothing is restarted.
    let endpoint = moto.endpoint();
    moto.stop();
    let status = dx.wait_status("the outage reported", Duration::from_secs(30), |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("cannot reach S3 at {endpoint}")))
    });
    assert!(running(&status, "0.1.1"), "{status:#}");
    let window = Instant::now() + Duration::from_secs(3);
    while Instant::now() < window {
        let s = dx.status();
        assert_eq!(
            pid_of(&s),
            pid,
            "instance untouched during the outage: {s:#}"
        );
        assert!(running(&s, "0.1.1"), "{s:#}");
        assert_eq!(s["instances"][0]["crash_restarts"], 0);
        std::thread::sleep(Duration::from_millis(100));
    }

    // Back (moto restarts empty: publish again). The error clears, the same
    // process keeps running.
    let mut moto = Moto::start_on(moto.port);
    rt.block_on(async {
        create_bucket(&client).await;
        publish(&client, "0.1.1").await;
    });
    let status = dx.wait_status("the store readable again", Duration::from_secs(30), |s| {
        s["last_error"].is_null()
    });
    assert_eq!(pid_of(&status), pid);
    assert!(running(&status, "0.1.1"), "{status:#}");
    assert!(
        dx.log_text().contains("release store readable again"),
        "resumption logged"
    );
    drop(dx);
    moto.stop();
}

/// `deployex check-config` outside `local`: the secret is read from Secrets
/// Manager, never printed; a missing secret or service is exit status 2.
#[test]
fn check_config_reads_secrets_and_fails_clearly_without_them() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut moto = Moto::start();
    let sdk = sdk(&moto.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let check = |endpoint: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_deployex"))
            .arg("check-config")
            .env_clear()
            .env("HOME", dir.path())
            .env("DEPLOYEX_MONITORED_APP_NAME", APP)
            .env("DEPLOYEX_CLOUD_ENVIRONMENT", ENV)
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_REGION", moto::REGION)
            .env("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("DEPLOYEX_ERLANG_COOKIE", "env-cookie")
            .output()
            .unwrap()
    };
    let endpoint = moto.endpoint();

    let out = check(&endpoint);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("no secret deployex-{APP}-{ENV}-secrets")),
        "{stderr}"
    );
    assert!(stderr.contains("DEPLOYEX_SECRET_KEY_BASE"), "{stderr}");

    rt.block_on(async {
        aws_sdk_secretsmanager::Client::new(&sdk)
            .create_secret()
            .name(format!("deployex-{APP}-{ENV}-secrets"))
            .secret_string(
                serde_json::json!({
                    "DEPLOYEX_SECRET_KEY_BASE": "q".repeat(64),
                    "DEPLOYEX_ERLANG_COOKIE": COOKIE,
                    "DEPLOYEX_ADMIN_HASHED_PASSWORD": ADMIN_HASH,
                })
                .to_string(),
            )
            .send()
            .await
            .unwrap();
    });
    let out = check(&endpoint);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("s3 bucket=dxtest-prod-distribution"),
        "{stdout}"
    );
    assert!(
        stdout.contains("DEPLOYEX_SECRET_KEY_BASE=<redacted, from AWS Secrets Manager>"),
        "{stdout}"
    );
    assert!(
        stdout.contains("DEPLOYEX_ERLANG_COOKIE=<redacted>\n"),
        "{stdout}"
    );
    assert!(!stdout.contains(&"q".repeat(64)) && !stdout.contains(COOKIE));

    moto.stop();
    let out = check(&endpoint);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach AWS Secrets Manager at {endpoint}")),
        "{stderr}"
    );
}
