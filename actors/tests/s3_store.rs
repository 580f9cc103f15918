//! The S3 release store against a real S3 HTTP API: a `moto_server` started
//! by each test on a free loopback port (stopped by its pid at the end).

#![allow(clippy::unwrap_used)]

#[path = "../../tests/common/moto.rs"]
mod moto;

use std::io::Write;
use std::path::Path;

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_s3::primitives::ByteStream;
use deployex_actors::release_fetcher::error_chain;
use deployex_actors::store::{
    ReleaseStore, S3Store, StoreError, UnpackError, UnpackLimits, sha256_file, unpack_release,
};
use moto::Moto;

const BUCKET: &str = "dx-releases";
const APP: &str = "myapp";
const ENV: &str = "prod";

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

fn admin(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    )
}

fn store(sdk: &aws_config::SdkConfig, bucket: &str) -> ReleaseStore {
    ReleaseStore::S3(S3Store::from_sdk_config(sdk, bucket, APP, ENV).unwrap())
}

async fn put(client: &aws_sdk_s3::Client, key: &str, body: ByteStream) {
    client
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(body)
        .send()
        .await
        .unwrap();
}

/// A moto with the bucket created.
async fn moto_with_bucket() -> (Moto, aws_config::SdkConfig) {
    let moto = Moto::start();
    let sdk = sdk(&moto.endpoint());
    admin(&sdk)
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    (moto, sdk)
}

/// `len` bytes that do not compress (xorshift), so the tarball is as large.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A real gzip tarball shaped like a release of `APP` (bin/APP,
/// releases/VSN/, a multi-MB lib file).
fn release_tarball(path: &Path, version: &str) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, name, data).unwrap();
    };
    add(&format!("bin/{APP}"), b"#!/bin/sh\necho fixture\n", 0o755);
    add(
        "releases/start_erl.data",
        format!("13.2 {version}\n").as_bytes(),
        0o644,
    );
    add(
        &format!("releases/{version}/{APP}.rel"),
        format!("{{release,{{\"{APP}\",\"{version}\"}},{{erts,\"13.2\"}},[]}}.\n").as_bytes(),
        0o644,
    );
    add(
        &format!("lib/{APP}-{version}/priv/blob.bin"),
        &noise(6 * 1024 * 1024, 7),
        0o644,
    );
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_current_and_streams_a_multi_megabyte_tarball() {
    let (_moto, sdk) = moto_with_bucket().await;
    let client = admin(&sdk);
    let tmp = tempfile::tempdir().unwrap();
    let tarball = tmp.path().join("upload.tar.gz");
    release_tarball(&tarball, "0.1.1");
    let size = std::fs::metadata(&tarball).unwrap().len();
    assert!(size > 5 * 1024 * 1024, "multi-MB tarball, got {size}");
    let sha = sha256_file(&tarball).unwrap();
    put(
        &client,
        &format!("dist/{APP}/{APP}-0.1.1.tar.gz"),
        ByteStream::from_path(&tarball).await.unwrap(),
    )
    .await;
    let current = format!(
        r#"{{"version": "0.1.1", "pre_commands": ["eval M.f"], "hash": "abc", "sha256": "{sha}"}}"#
    );
    put(
        &client,
        "versions/myapp/prod/current.json",
        ByteStream::from(current.into_bytes()),
    )
    .await;

    let s = store(&sdk, BUCKET);
    assert!(
        s.describe().contains("s3://dx-releases"),
        "{}",
        s.describe()
    );
    let c = s.current().await.unwrap();
    assert_eq!(c.version, "0.1.1");
    assert_eq!(c.pre_commands, vec!["eval M.f"]);
    assert_eq!(c.sha256.as_deref(), Some(sha.as_str()));

    let out = tmp.path().join("cache");
    std::fs::create_dir(&out).unwrap();
    let dest = out.join("myapp-0.1.1.tar.gz");
    std::fs::write(&dest, b"stale").unwrap();
    let n = s.download("0.1.1", &dest).await.unwrap();
    assert_eq!(n, size);
    assert_eq!(sha256_file(&dest).unwrap(), sha);
    assert_eq!(
        entries(&out),
        vec!["myapp-0.1.1.tar.gz"],
        "no temp file left"
    );
    // What came down unpacks as a release.
    let unpacked = unpack_release(&dest, &out.join("x"), APP, &UnpackLimits::default());
    assert!(unpacked.is_ok(), "{unpacked:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_objects_and_buckets_are_named() {
    let (_moto, sdk) = moto_with_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("t.tar.gz");
    let s = store(&sdk, BUCKET);

    let e = s.current().await.unwrap_err();
    assert!(matches!(e, StoreError::NoSuchKey { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "no object s3://dx-releases/versions/myapp/prod/current.json"
    );
    let e = s.download("0.9.9", &dest).await.unwrap_err();
    assert!(matches!(e, StoreError::NoSuchKey { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("s3://dx-releases/dist/myapp/myapp-0.9.9.tar.gz"),
        "{e}"
    );
    assert!(entries(tmp.path()).is_empty(), "nothing written");

    let e = s.download("../x", &dest).await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidName { .. }), "{e:?}");

    let wrong = store(&sdk, "no-such-bucket");
    let e = wrong.current().await.unwrap_err();
    assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("S3 bucket no-such-bucket does not exist"),
        "{msg}"
    );
    let e = wrong.download("0.1.1", &dest).await.unwrap_err();
    assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e:?}");
    assert!(entries(tmp.path()).is_empty());

    // A malformed current.json names where it came from.
    put(
        &admin(&sdk),
        "versions/myapp/prod/current.json",
        ByteStream::from_static(b"{\"version\": "),
    )
    .await;
    let e = s.current().await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("s3://dx-releases/versions/myapp/prod/current.json: malformed JSON"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_tarball_downloads_but_fails_unpack_validation() {
    let (_moto, sdk) = moto_with_bucket().await;
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole.tar.gz");
    release_tarball(&whole, "0.2.0");
    let bytes = std::fs::read(&whole).unwrap();
    let half = bytes[..bytes.len() / 2].to_vec();
    put(
        &admin(&sdk),
        "dist/myapp/myapp-0.2.0.tar.gz",
        ByteStream::from(half.clone()),
    )
    .await;
    let dest = tmp.path().join("got.tar.gz");
    let n = store(&sdk, BUCKET).download("0.2.0", &dest).await.unwrap();
    assert_eq!(n, half.len() as u64);
    let e =
        unpack_release(&dest, &tmp.path().join("x"), APP, &UnpackLimits::default()).unwrap_err();
    assert!(
        matches!(e, UnpackError::Corrupt { .. }),
        "{}",
        error_chain(&e)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_endpoint_is_unreachable_and_leaves_no_file() {
    let (mut moto, sdk) = moto_with_bucket().await;
    put(
        &admin(&sdk),
        "dist/myapp/myapp-0.1.1.tar.gz",
        ByteStream::from(noise(100_000, 3)),
    )
    .await;
    let endpoint = moto.endpoint();
    moto.stop();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("t.tar.gz");
    let s = store(&sdk, BUCKET);
    let started = std::time::Instant::now();
    let e = s.download("0.1.1", &dest).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(e.to_string(), format!("cannot reach S3 at {endpoint}"));
    // Three attempts: 200 ms + 1 s of backoff between them.
    assert!(
        elapsed >= std::time::Duration::from_millis(1200),
        "{elapsed:?}"
    );
    assert!(entries(tmp.path()).is_empty(), "no partial file");
    let e = s.current().await.unwrap_err();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
}

/// A credentials provider of the standard chain (the profile file) that
/// finds nothing, as on a host without credentials.
#[allow(deprecated)] // the aliases' new home (aws-runtime) is not a dependency
fn no_credentials() -> SharedCredentialsProvider {
    use aws_config::profile::ProfileFileCredentialsProvider;
    use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
    let files = ProfileFiles::builder()
        .with_contents(ProfileFileKind::Credentials, "")
        .with_contents(ProfileFileKind::Config, "")
        .build();
    SharedCredentialsProvider::new(
        ProfileFileCredentialsProvider::builder()
            .profile_files(files)
            .profile_name("deployex-test-nobody")
            .build(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_credentials_are_said_so() {
    let (_moto, sdk) = moto_with_bucket().await;
    let no_creds = sdk
        .to_builder()
        .credentials_provider(no_credentials())
        .build();
    let s = store(&no_creds, BUCKET);
    let e = s.current().await.unwrap_err();
    let msg = error_chain(&e);
    assert!(matches!(e, StoreError::Credentials { .. }), "{msg}");
    assert!(
        msg.starts_with("no valid AWS credentials to read bucket dx-releases"),
        "{msg}"
    );
    assert!(!e.is_transient());
}

/// A scripted HTTP server standing in for S3 where moto cannot misbehave on
/// demand: every connection gets `response` (raw bytes), then is closed.
/// Returns its endpoint and the number of requests served so far.
fn scripted_s3(response: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Read;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(&response);
        }
    });
    (endpoint, served)
}

fn http_response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nconnection: close\r\n{headers}\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

fn s3_error(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>scripted</Message></Error>"
    );
    http_response(
        status,
        &format!(
            "content-type: application/xml\r\ncontent-length: {}\r\n",
            body.len()
        ),
        body.as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_shorter_than_content_length_is_retried_and_leaves_no_file() {
    let cut = http_response(
        "200 OK",
        "content-type: application/octet-stream\r\ncontent-length: 100000\r\n",
        &noise(40_000, 5),
    );
    let (endpoint, served) = scripted_s3(cut);
    let s = store(&sdk(&endpoint), BUCKET);
    let tmp = tempfile::tempdir().unwrap();
    let e = s
        .download("0.1.1", &tmp.path().join("t.tar.gz"))
        .await
        .unwrap_err();
    let msg = error_chain(&e);
    assert!(
        matches!(
            e,
            StoreError::S3Body { .. } | StoreError::S3Truncated { .. }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("s3://dx-releases/dist/myapp/myapp-0.1.1.tar.gz"),
        "{msg}"
    );
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "retried"
    );
    assert!(entries(tmp.path()).is_empty(), "no partial file");
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_is_retried_access_denied_is_not() {
    let (endpoint, served) = scripted_s3(s3_error("503 Slow Down", "SlowDown"));
    let e = store(&sdk(&endpoint), BUCKET).current().await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::S3Request {
                transient: true,
                ..
            }
        ),
        "{}",
        error_chain(&e)
    );
    assert!(e.to_string().contains("HTTP 503, SlowDown"), "{e}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);

    let (endpoint, served) = scripted_s3(s3_error("403 Forbidden", "AccessDenied"));
    let e = store(&sdk(&endpoint), BUCKET)
        .download("0.1.1", Path::new("/nonexistent/t.tar.gz"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::AccessDenied { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "access denied to s3://dx-releases/dist/myapp/myapp-0.1.1.tar.gz: check the IAM policy: s3:GetObject on arn:aws:s3:::dx-releases/*"
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
}
