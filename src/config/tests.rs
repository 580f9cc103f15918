//! Loading from the environment, the file and a secrets fetcher; the
//! errors operators see.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use deployex_actors::StoreConfig;

use super::settings::secrets;
use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn defaults_for_local() {
    let c = load(env(&[]), None).unwrap();
    assert_eq!(c.engine.app, "myphoenixapp");
    assert_eq!(c.engine.replicas, 3);
    assert_eq!(c.engine.port(3), 4002);
    assert_eq!(c.web.server.bind.port(), 5001);
    assert_eq!(c.engine.var_dir, PathBuf::from("/tmp/deployex/varlib"));
    assert_eq!(
        c.engine.log_dir,
        PathBuf::from("/tmp/myphoenixapp/myphoenixapp")
    );
    assert_eq!(
        c.engine.store,
        StoreConfig::Local {
            root: PathBuf::from("/tmp/myphoenixapp")
        }
    );
    assert!(bcrypt::verify("deployex", &c.web.server.admin_hashed_password).unwrap());
    assert_eq!(c.engine.beam_sample_interval, Duration::from_millis(5000));
}

#[test]
fn app_user_must_exist() {
    let err = load(env(&[("DEPLOYEX_APP_USER", "no-such-user-dx")]), None).unwrap_err();
    assert!(
        err.0
            .contains("DEPLOYEX_APP_USER=\"no-such-user-dx\": no such user"),
        "{err}"
    );
    let c = load(env(&[("DEPLOYEX_APP_USER", "nobody")]), None).unwrap();
    if nix::unistd::Uid::effective().as_raw() == 65534 {
        assert_eq!(c.engine.app_user, None, "deployex's own user: no switch");
    } else {
        let user = c.engine.app_user.clone().unwrap();
        assert_eq!((user.name.as_str(), user.uid), ("nobody", 65534));
        assert!(c.describe().contains("app user: nobody (uid 65534"));
    }
    let c = load(env(&[]), None).unwrap();
    assert_eq!(c.engine.app_user, None);
}

#[test]
fn beam_sampling_period_is_off_or_at_least_100_ms() {
    let c = load(env(&[("DEPLOYEX_BEAM_SAMPLE_MS", "0")]), None).unwrap();
    assert!(c.engine.beam_sample_interval.is_zero());
    assert!(
        c.describe().contains("beam sampling: off"),
        "{}",
        c.describe()
    );
    let c = load(env(&[("DEPLOYEX_BEAM_SAMPLE_MS", "300")]), None).unwrap();
    assert_eq!(c.engine.beam_sample_interval, Duration::from_millis(300));
    let e = load(env(&[("DEPLOYEX_BEAM_SAMPLE_MS", "50")]), None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid configuration: DEPLOYEX_BEAM_SAMPLE_MS=\"50\": expected 0 (off) or a whole number from 100 to 3600000"
    );
    let e = load(env(&[("DEPLOYEX_BEAM_SAMPLE_MS", "-1")]), None).unwrap_err();
    assert!(e.to_string().contains("DEPLOYEX_BEAM_SAMPLE_MS"), "{e}");
}

#[test]
fn invalid_values_name_the_variable_and_value() {
    let e = load(env(&[("DEPLOYEX_MONITORED_REPLICAS", "many")]), None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid configuration: DEPLOYEX_MONITORED_REPLICAS=\"many\": expected a whole number from 1 to 1000"
    );
    let e = load(env(&[("DEPLOYEX_OTP_READINESS", "maybe")]), None).unwrap_err();
    assert!(
        e.to_string().contains("DEPLOYEX_OTP_READINESS=\"maybe\""),
        "{e}"
    );
    let e = load(
        env(&[
            ("DEPLOYEX_MONITORED_APP_PORT", "65535"),
            ("DEPLOYEX_MONITORED_REPLICAS", "2"),
        ]),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("past 65535"), "{e}");
}

#[test]
fn production_requires_secrets() {
    let e = load(
        env(&[
            ("DEPLOYEX_CLOUD_ENVIRONMENT", "prod"),
            ("DEPLOYEX_RELEASE_ADAPTER", "local"),
            ("DEPLOYEX_RELEASE_DIR", "/srv/deployex/store"),
        ]),
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("missing DEPLOYEX_SECRET_KEY_BASE"),
        "{e}"
    );
}

fn prod_secrets() -> HashMap<String, String> {
    [
        ("DEPLOYEX_SECRET_KEY_BASE", "f".repeat(64)),
        ("DEPLOYEX_ERLANG_COOKIE", "fetchedcookie".to_string()),
        (
            "DEPLOYEX_ADMIN_HASHED_PASSWORD",
            LOCAL_ADMIN_HASH.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[test]
fn s3_and_secrets_outside_local() {
    let mut asked = None;
    let c = load_with_secrets(
        env(&[
            ("DEPLOYEX_CLOUD_ENVIRONMENT", "prod"),
            ("DEPLOYEX_MONITORED_APP_NAME", "shop"),
            ("DEPLOYEX_ERLANG_COOKIE", "envcookie"),
            ("DEPLOYEX_ADMIN_HASHED_PASSWORD", ""),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ]),
        None,
        |req| {
            asked = Some(req.clone());
            let mut s = prod_secrets();
            s.insert("DEPLOYEX_METRICS_TOKEN".into(), "fetched-metrics".into());
            s.insert("DEPLOYEX_PHX_PORT".into(), "1".into());
            Ok(s)
        },
    )
    .unwrap();
    // The optional secret is taken; a setting in the secret is not.
    assert_eq!(
        c.web.server.metrics_token.as_deref(),
        Some("fetched-metrics")
    );
    assert_ne!(c.web.server.bind.port(), 1);
    let req = asked.unwrap();
    assert_eq!(
        req,
        SecretsRequest {
            app: "shop".into(),
            env: "prod".into(),
            region: Some("eu-west-1".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            missing: vec!["DEPLOYEX_SECRET_KEY_BASE", "DEPLOYEX_ADMIN_HASHED_PASSWORD"],
        }
    );
    // The environment wins over the secret.
    assert_eq!(c.engine.cookie, "envcookie");
    assert_eq!(c.web.server.secret_key_base, "f".repeat(64));
    assert_eq!(
        c.engine.store,
        StoreConfig::S3 {
            bucket: "shop-prod-distribution".into(),
            region: Some("eu-west-1".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
        }
    );
    // Fetched secrets stay out of the instances' environment and the text.
    assert!(
        !c.engine
            .base_env
            .iter()
            .any(|(k, _)| k == "DEPLOYEX_SECRET_KEY_BASE")
    );
    let text = c.describe();
    assert!(!text.contains(&"f".repeat(64)), "{text}");
    assert!(
        text.contains("DEPLOYEX_SECRET_KEY_BASE=<redacted, from AWS Secrets Manager>"),
        "{text}"
    );
    assert!(
        text.contains("DEPLOYEX_ERLANG_COOKIE=<redacted>\n"),
        "{text}"
    );
}

#[test]
fn secrets_fetch_failures_are_fatal_and_named() {
    let prod = env(&[("DEPLOYEX_CLOUD_ENVIRONMENT", "prod")]);
    let e = load_with_secrets(prod.clone(), None, |_| {
        Err("AWS Secrets Manager has no secret deployex-myphoenixapp-prod-secrets".into())
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("cannot read DEPLOYEX_SECRET_KEY_BASE, DEPLOYEX_ERLANG_COOKIE, DEPLOYEX_ADMIN_HASHED_PASSWORD from AWS Secrets Manager: "),
        "{e}"
    );
    assert!(e.contains("deployex-myphoenixapp-prod-secrets"), "{e}");
    // A fetcher that comes back without one of them: named, no default.
    let e = load_with_secrets(prod, None, |_| {
        let mut s = prod_secrets();
        s.remove("DEPLOYEX_ERLANG_COOKIE");
        Ok(s)
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing DEPLOYEX_ERLANG_COOKIE"), "{e}");
    assert!(e.contains("deployex-myphoenixapp-prod-secrets"), "{e}");
}

#[test]
fn no_fetch_in_local_or_when_everything_is_set() {
    let never = |_: &SecretsRequest| -> Result<HashMap<String, String>, String> {
        panic!("fetcher must not be called")
    };
    load_with_secrets(env(&[]), None, never).unwrap();
    let mut all: Vec<(String, String)> = prod_secrets().into_iter().collect();
    all.push(("DEPLOYEX_CLOUD_ENVIRONMENT".into(), "prod".into()));
    let c = load_with_secrets(all, None, never).unwrap();
    assert_eq!(c.engine.cookie, "fetchedcookie");
}

#[test]
fn file_values_are_overridden_by_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "monitored_replicas = 5\nmonitored_app_name = \"shop\"\n",
    )
    .unwrap();
    let c = load(env(&[("DEPLOYEX_MONITORED_REPLICAS", "2")]), Some(&f)).unwrap();
    assert_eq!(c.engine.replicas, 2);
    assert_eq!(c.engine.app, "shop");
    std::fs::write(&f, "monitored_replica = 5\n").unwrap();
    let e = load(env(&[]), Some(&f)).unwrap_err();
    assert!(
        e.to_string().contains("unknown key \"monitored_replica\""),
        "{e}"
    );
    std::fs::write(&f, "monitored_replicas = \"x\"\n").unwrap();
    let e = load(env(&[]), Some(&f)).unwrap_err();
    assert!(e.to_string().contains("monitored_replicas in"), "{e}");
}

#[test]
fn describe_redacts_secrets() {
    let c = load(
        env(&[
            ("DEPLOYEX_ERLANG_COOKIE", "supersecretcookie"),
            ("DEPLOYEX_SECRET_KEY_BASE", "k".repeat(64).as_str()),
        ]),
        None,
    )
    .unwrap();
    let text = c.describe();
    assert!(!text.contains("supersecretcookie"));
    assert!(!text.contains(&"k".repeat(64)));
    assert!(text.contains("DEPLOYEX_ERLANG_COOKIE=<redacted>"));
}

// -- web hardening --
#[test]
fn public_origin_secure_cookie_and_proxies() {
    let c = load(env(&[]), None).unwrap();
    assert_eq!(
        c.web.server.public_origins,
        vec!["http://localhost:5001", "http://127.0.0.1:5001"]
    );
    assert!(!c.web.server.secure_cookie);
    let c = load(env(&[("DEPLOYEX_PHX_HOST", "deploy.example.com")]), None).unwrap();
    assert_eq!(
        c.web.server.public_origins,
        vec!["https://deploy.example.com"]
    );
    assert!(
        c.web.server.secure_cookie,
        "https origin: Secure by default"
    );
    let c = load(
        env(&[
            ("DEPLOYEX_PHX_HOST", "deploy.example.com"),
            ("DEPLOYEX_SECURE_COOKIE", "false"),
        ]),
        None,
    )
    .unwrap();
    assert!(!c.web.server.secure_cookie, "false forces it off");
    let c = load(
        env(&[("DEPLOYEX_PUBLIC_URL", "http://10.0.0.5:8080/")]),
        None,
    )
    .unwrap();
    assert_eq!(c.web.server.public_origins, vec!["http://10.0.0.5:8080"]);
    let e = load(env(&[("DEPLOYEX_PUBLIC_URL", "deploy.example.com")]), None).unwrap_err();
    assert!(e.0.contains("DEPLOYEX_PUBLIC_URL"), "{e}");
    let c = load(
        env(&[("DEPLOYEX_TRUSTED_PROXIES", "127.0.0.1/32, ::1, 10.0.0.0/8")]),
        None,
    )
    .unwrap();
    assert_eq!(c.web.server.trusted_proxies.len(), 3);
    let e = load(env(&[("DEPLOYEX_TRUSTED_PROXIES", "10.0.0.0/33")]), None).unwrap_err();
    assert!(e.0.contains("DEPLOYEX_TRUSTED_PROXIES"), "{e}");
    assert_eq!(c.web.server.max_connections, 512);
}

#[test]
fn a_cheap_admin_hash_is_refused() {
    let cheap = bcrypt::hash("pw", 4).unwrap();
    let e = load(
        env(&[("DEPLOYEX_ADMIN_HASHED_PASSWORD", cheap.as_str())]),
        None,
    )
    .unwrap_err();
    assert!(e.0.contains("DEPLOYEX_ADMIN_HASHED_PASSWORD"), "{e}");
    assert!(e.0.contains("cost 4"), "{e}");
    assert!(!e.0.contains(&cheap), "the hash is not echoed");
    assert!(!e.0.contains('\n'));
}

#[test]
fn no_secret_reaches_the_apps_environment() {
    let c = load(
        env(&[
            ("DEPLOYEX_METRICS_TOKEN", "metrics-secret"),
            ("DEPLOYEX_SECRET_KEY_BASE", "k".repeat(64).as_str()),
            ("DEPLOYEX_ERLANG_COOKIE", "cookie-secret"),
            ("DEPLOYEX_ADMIN_HASHED_PASSWORD", LOCAL_ADMIN_HASH),
            ("PATH", "/usr/bin"),
        ]),
        None,
    )
    .unwrap();
    for secret in secrets() {
        assert!(
            !c.engine.base_env.iter().any(|(k, _)| k == secret),
            "{secret} in the apps' environment"
        );
    }
    assert!(c.engine.base_env.iter().any(|(k, _)| k == "PATH"));
}

#[test]
fn a_production_local_store_is_explicit_owned_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let prod = |extra: &[(&str, &str)]| {
        let mut e = prod_secrets();
        e.insert("DEPLOYEX_CLOUD_ENVIRONMENT".into(), "prod".into());
        e.insert("DEPLOYEX_RELEASE_ADAPTER".into(), "local".into());
        for (k, v) in extra {
            e.insert((*k).into(), (*v).into());
        }
        load(e, None)
    };
    let e = prod(&[]).unwrap_err();
    assert!(e.0.contains("DEPLOYEX_RELEASE_DIR must be set"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let root = store.to_str().unwrap();
    let c = prod(&[("DEPLOYEX_RELEASE_DIR", root)]).unwrap();
    let e = c.check_local_store().unwrap_err();
    assert!(e.0.contains("cannot read"), "{e}");
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = c.check_local_store().unwrap_err();
    assert!(e.0.contains("writable by group or others"), "{e}");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(c.check_local_store().is_ok());
    // In local, anything goes (the dev default is /tmp/{app}).
    assert!(load(env(&[]), None).unwrap().check_local_store().is_ok());
}

#[test]
fn fleet_mode_settings() {
    assert_eq!(load(env(&[]), None).unwrap().engine.fleet, None);
    let c = load(env(&[("DEPLOYEX_FLEET", "true")]), None).unwrap();
    let f = c.engine.fleet.unwrap();
    assert_eq!(f.host_id, c.engine.hostname, "the host name by default");
    assert_eq!(f.max_parallel, 1);
    assert_eq!(f.lease, Duration::from_secs(900));
    assert_eq!(f.heartbeat, Duration::from_secs(5));
    let c = load(
        env(&[
            ("DEPLOYEX_FLEET", "true"),
            ("DEPLOYEX_HOST_ID", "web-2"),
            ("DEPLOYEX_FLEET_MAX_PARALLEL", "3"),
            ("DEPLOYEX_FLEET_LEASE_MS", "60000"),
        ]),
        None,
    )
    .unwrap();
    let f = c.engine.fleet.unwrap();
    assert_eq!((f.host_id.as_str(), f.max_parallel), ("web-2", 3));
    let bad = |pairs: &[(&str, &str)]| {
        let mut all = vec![("DEPLOYEX_FLEET", "true")];
        all.extend_from_slice(pairs);
        load(env(&all), None).unwrap_err().to_string()
    };
    assert!(bad(&[("DEPLOYEX_HOST_ID", "../x")]).contains("DEPLOYEX_HOST_ID"));
    assert!(bad(&[("DEPLOYEX_HOST_ID", "a/b")]).contains("DEPLOYEX_HOST_ID"));
    assert!(bad(&[("DEPLOYEX_FLEET_MAX_PARALLEL", "0")]).contains("MAX_PARALLEL"));
    let e = bad(&[("DEPLOYEX_FLEET_LEASE_MS", "2000")]);
    assert!(e.contains("at least 4 heartbeats"), "{e}");
}
