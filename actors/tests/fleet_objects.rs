//! The fleet's conditional operations against a real S3 HTTP API (a
//! `moto_server` on a free loopback port, stopped by its pid) and a local
//! folder: the same scenario, the same answers.

#![allow(clippy::unwrap_used)]

#[path = "../../tests/common/moto.rs"]
mod moto;

use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use deployex_actors::fleet::objects::Objects;
use deployex_actors::store::{LocalStore, ReleaseStore, S3Store};
use moto::Moto;

const BUCKET: &str = "dx-fleet";

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

/// Two contenders for one slot, a renewal, a stale holder, a take-over, a
/// release, the listing of active versions.
async fn scenario(o: &Objects) {
    let slot = "fleet/app/prod/claims/1.0/slot-0";
    let mine = o.create(slot, b"{\"host\":\"a\"}".to_vec()).await.unwrap();
    let mine = mine.expect("the first create wins");
    assert!(
        o.create(slot, b"{\"host\":\"b\"}".to_vec())
            .await
            .unwrap()
            .is_none(),
        "the second create loses"
    );
    let got = o.get(slot).await.unwrap().unwrap();
    assert_eq!(got.bytes, b"{\"host\":\"a\"}");
    assert_eq!(got.etag, mine);
    let age = SystemTime::now()
        .duration_since(got.modified)
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(30),
        "store time is recent: {age:?}"
    );

    let renewed = o
        .renew(slot, b"{\"host\":\"a\",\"nonce\":1}".to_vec(), &mine)
        .await
        .unwrap()
        .expect("the holder renews");
    // A take-over with what was read before the renewal fails...
    assert!(
        o.replace(slot, b"{\"host\":\"b\"}".to_vec(), &mine)
            .await
            .unwrap()
            .is_none()
    );
    // ...with the current version it wins, and the old holder's renewal fails.
    let theirs = o
        .replace(slot, b"{\"host\":\"b\"}".to_vec(), &renewed)
        .await
        .unwrap()
        .expect("take-over");
    assert!(
        o.renew(slot, b"{\"host\":\"a\",\"nonce\":2}".to_vec(), &renewed)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        o.get(slot).await.unwrap().unwrap().bytes,
        b"{\"host\":\"b\"}"
    );

    o.put("fleet/app/prod/hosts/a.json", b"{}".to_vec())
        .await
        .unwrap();
    o.put("fleet/app/prod/hosts/b.json", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        o.list("fleet/app/prod/hosts/").await.unwrap(),
        ["fleet/app/prod/hosts/a.json", "fleet/app/prod/hosts/b.json"]
    );
    assert_eq!(
        o.list("fleet/app/prod/claims/").await.unwrap(),
        ["fleet/app/prod/claims/1.0/"]
    );
    // A stale delete keeps the object; the right one removes it, and the
    // version leaves the listing.
    o.delete(slot, Some(&renewed)).await.unwrap();
    assert!(o.get(slot).await.unwrap().is_some());
    o.delete(slot, Some(&theirs)).await.unwrap();
    assert!(o.get(slot).await.unwrap().is_none());
    let left = o.list("fleet/app/prod/claims/").await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    o.delete(slot, None).await.unwrap();
}

#[tokio::test]
async fn conditional_operations_on_s3() {
    let moto = Moto::start();
    let sdk = sdk(&moto.endpoint());
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    )
    .create_bucket()
    .bucket(BUCKET)
    .send()
    .await
    .unwrap();
    let store = ReleaseStore::S3(S3Store::from_sdk_config(&sdk, BUCKET, "app", "prod").unwrap());
    scenario(&Objects::from_store(&store)).await;
}

#[tokio::test]
async fn conditional_operations_in_a_local_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ReleaseStore::Local(LocalStore::new(tmp.path(), "app", "prod").unwrap());
    scenario(&Objects::from_store(&store)).await;
}
