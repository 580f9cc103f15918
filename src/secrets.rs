//! Secrets from AWS Secrets Manager: the secret `deployex-{app}-{env}-secrets`
//! is a JSON object holding [`REQUIRED`] (and optionally [`OPTIONAL`]).
//!
//! Invariants: a secret value never reaches a log line or an error message
//! (errors name the secret and the key, never the value); a secret that
//! lacks a required key is an error, never a silent default.

use std::collections::HashMap;

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

/// Keys the secret must hold.
pub const REQUIRED: &[&str] = &[
    "DEPLOYEX_SECRET_KEY_BASE",
    "DEPLOYEX_ERLANG_COOKIE",
    "DEPLOYEX_ADMIN_HASHED_PASSWORD",
];
/// Keys taken from the secret when present.
pub const OPTIONAL: &[&str] = &["DEPLOYEX_METRICS_TOKEN"];

#[cfg(test)]
#[test]
fn the_optional_list_is_the_configs() {
    assert_eq!(OPTIONAL, crate::config::settings::OPTIONAL_SECRETS);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "AWS Secrets Manager has no secret {secret_id} (region {region}); create it as a JSON object with {}",
        REQUIRED.join(", ")
    )]
    NotFound { secret_id: String, region: String },
    #[error("AWS Secrets Manager secret {secret_id} has no key {key}")]
    MissingKey {
        secret_id: String,
        key: &'static str,
    },
    #[error("AWS Secrets Manager secret {secret_id}: {key} must be a non-empty string")]
    NotAString {
        secret_id: String,
        key: &'static str,
    },
    #[error("AWS Secrets Manager secret {secret_id} is not valid JSON")]
    NotJson {
        secret_id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("AWS Secrets Manager secret {secret_id} must be a JSON object of strings")]
    NotAnObject { secret_id: String },
    #[error(
        "AWS Secrets Manager secret {secret_id} has no SecretString (binary secrets are not supported)"
    )]
    NoString { secret_id: String },
    #[error(
        "access denied to AWS Secrets Manager secret {secret_id}: check the IAM policy: secretsmanager:GetSecretValue on it"
    )]
    AccessDenied { secret_id: String },
    #[error(
        "no valid AWS credentials to read secret {secret_id} (environment, profile or instance role)"
    )]
    Credentials {
        secret_id: String,
        #[source]
        source: BoxError,
    },
    #[error("cannot reach AWS Secrets Manager at {endpoint} for secret {secret_id}")]
    Unreachable {
        endpoint: String,
        secret_id: String,
        #[source]
        source: BoxError,
    },
    #[error("reading AWS Secrets Manager secret {secret_id} failed ({detail})")]
    Request {
        secret_id: String,
        detail: String,
        #[source]
        source: BoxError,
    },
    #[error(
        "no AWS region to read secret {secret_id}: set AWS_REGION (or a region in the AWS profile)"
    )]
    NoRegion { secret_id: String },
}

/// The secret's name for `app` in `env`.
pub fn secret_id(app: &str, env: &str) -> String {
    format!("deployex-{app}-{env}-secrets")
}

/// Reads `deployex-{app}-{env}-secrets` with the standard credential chain;
/// `endpoint` overrides the service URL (e.g. a local moto server).
pub async fn fetch_secrets(
    app: &str,
    env: &str,
    region: Option<String>,
    endpoint: Option<String>,
) -> Result<HashMap<String, String>, SecretsError> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    fetch_secrets_with(&loader.load().await, app, env).await
}

/// [`fetch_secrets`] with an already loaded SDK configuration.
pub async fn fetch_secrets_with(
    sdk: &aws_config::SdkConfig,
    app: &str,
    env: &str,
) -> Result<HashMap<String, String>, SecretsError> {
    let secret_id = secret_id(app, env);
    let Some(region) = sdk.region().map(|r| r.to_string()) else {
        return Err(SecretsError::NoRegion { secret_id });
    };
    let endpoint = sdk
        .endpoint_url()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com"));
    let timeouts = aws_sdk_secretsmanager::config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .operation_timeout(std::time::Duration::from_secs(30))
        .build();
    let config = aws_sdk_secretsmanager::config::Builder::from(sdk)
        .timeout_config(timeouts)
        .build();
    let client = aws_sdk_secretsmanager::Client::from_conf(config);
    let out = client
        .get_secret_value()
        .secret_id(&secret_id)
        .send()
        .await
        .map_err(|e| request_error(e, &secret_id, &region, &endpoint))?;
    let Some(text) = out.secret_string() else {
        return Err(SecretsError::NoString { secret_id });
    };
    parse_secret(text, &secret_id)
}

/// The required and optional keys of the secret's JSON text.
fn parse_secret(text: &str, secret_id: &str) -> Result<HashMap<String, String>, SecretsError> {
    // Parse to a Value: serde's typed errors may quote the offending value.
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|source| SecretsError::NotJson {
            secret_id: secret_id.to_owned(),
            source,
        })?;
    let Some(obj) = value.as_object() else {
        return Err(SecretsError::NotAnObject {
            secret_id: secret_id.to_owned(),
        });
    };
    let mut out = HashMap::new();
    for (keys, required) in [(REQUIRED, true), (OPTIONAL, false)] {
        for &key in keys {
            match obj.get(key) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => {
                    out.insert(key.to_owned(), s.clone());
                }
                None | Some(serde_json::Value::Null) if required => {
                    return Err(SecretsError::MissingKey {
                        secret_id: secret_id.to_owned(),
                        key,
                    });
                }
                None | Some(serde_json::Value::Null) => {}
                Some(_) => {
                    return Err(SecretsError::NotAString {
                        secret_id: secret_id.to_owned(),
                        key,
                    });
                }
            }
        }
    }
    Ok(out)
}

fn request_error<E>(
    err: SdkError<E, HttpResponse>,
    secret_id: &str,
    region: &str,
    endpoint: &str,
) -> SecretsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let secret_id = secret_id.to_owned();
    let code = err.code().map(str::to_owned);
    let status = err.raw_response().map(|r| r.status().as_u16());
    match &err {
        SdkError::TimeoutError(_) => {
            return SecretsError::Unreachable {
                endpoint: endpoint.to_owned(),
                secret_id,
                source: Box::new(err),
            };
        }
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
            return SecretsError::Unreachable {
                endpoint: endpoint.to_owned(),
                secret_id,
                source: Box::new(err),
            };
        }
        SdkError::ConstructionFailure(_) | SdkError::DispatchFailure(_)
            if mentions_credentials(&err) =>
        {
            return SecretsError::Credentials {
                secret_id,
                source: Box::new(err),
            };
        }
        _ => {}
    }
    match code.as_deref() {
        Some("ResourceNotFoundException") => SecretsError::NotFound {
            secret_id,
            region: region.to_owned(),
        },
        Some("AccessDeniedException") => SecretsError::AccessDenied { secret_id },
        Some(
            "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "IncompleteSignature",
        ) => SecretsError::Credentials {
            secret_id,
            source: Box::new(err),
        },
        _ => SecretsError::Request {
            secret_id,
            detail: match (status, code) {
                (Some(s), Some(c)) => format!("HTTP {s}, {c}"),
                (Some(s), None) => format!("HTTP {s}"),
                (None, Some(c)) => c,
                (None, None) => "no answer".to_owned(),
            },
            source: Box::new(err),
        },
    }
}

/// The SDK reports a missing identity only as text in the error chain.
fn mentions_credentials(err: &dyn std::error::Error) -> bool {
    let mut current: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = current {
        let text = format!("{e:?}").to_ascii_lowercase();
        if text.contains("credential") || text.contains("identity") {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
#[path = "../tests/common/moto.rs"]
mod moto;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::moto;
    use super::*;
    use deployex_actors::release_fetcher::error_chain;

    const HASH: &str = "$2b$12$oTpgs.Vc4nxDsEB8MBkB.Obs9rCf4wB4WvKYErfgcY9BEFaYp48Rq";

    fn sdk(endpoint: &str) -> aws_config::SdkConfig {
        use aws_sdk_secretsmanager::config::{Credentials, SharedCredentialsProvider};
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

    async fn put_secret(sdk: &aws_config::SdkConfig, name: &str, json: &str) {
        aws_sdk_secretsmanager::Client::new(sdk)
            .create_secret()
            .name(name)
            .secret_string(json)
            .send()
            .await
            .unwrap();
    }

    fn full_secret() -> String {
        serde_json::json!({
            "DEPLOYEX_SECRET_KEY_BASE": "k".repeat(64),
            "DEPLOYEX_ERLANG_COOKIE": "moto-cookie",
            "DEPLOYEX_ADMIN_HASHED_PASSWORD": HASH,
            "OTHER": "ignored",
        })
        .to_string()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn fetches_from_a_real_secrets_manager_api() {
        let mut moto = moto::Moto::start();
        let sdk = sdk(&moto.endpoint());
        put_secret(&sdk, "deployex-shop-prod-secrets", &full_secret()).await;
        put_secret(
            &sdk,
            "deployex-shop-partial-secrets",
            r#"{"DEPLOYEX_SECRET_KEY_BASE": "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk", "DEPLOYEX_ERLANG_COOKIE": "c"}"#,
        )
        .await;
        put_secret(&sdk, "deployex-shop-broken-secrets", "{not json").await;

        let got = fetch_secrets_with(&sdk, "shop", "prod").await.unwrap();
        assert_eq!(got["DEPLOYEX_ERLANG_COOKIE"], "moto-cookie");
        assert_eq!(got["DEPLOYEX_ADMIN_HASHED_PASSWORD"], HASH);
        assert_eq!(got["DEPLOYEX_SECRET_KEY_BASE"], "k".repeat(64));
        assert!(!got.contains_key("OTHER"));

        let e = fetch_secrets_with(&sdk, "shop", "staging")
            .await
            .unwrap_err();
        let msg = error_chain(&e);
        assert!(matches!(e, SecretsError::NotFound { .. }), "{msg}");
        assert!(msg.contains("deployex-shop-staging-secrets"), "{msg}");

        let e = fetch_secrets_with(&sdk, "shop", "partial")
            .await
            .unwrap_err();
        let msg = error_chain(&e);
        assert!(
            msg.contains("has no key DEPLOYEX_ADMIN_HASHED_PASSWORD"),
            "{msg}"
        );
        assert!(!msg.contains("kkkk"), "no secret value in errors: {msg}");

        let e = fetch_secrets_with(&sdk, "shop", "broken")
            .await
            .unwrap_err();
        assert!(matches!(e, SecretsError::NotJson { .. }), "{e}");

        // No credentials at all: said so, not a vague failure.
        let mut no_creds = sdk.to_builder();
        no_creds.set_credentials_provider(None);
        let e = fetch_secrets_with(&no_creds.build(), "shop", "prod")
            .await
            .unwrap_err();
        let msg = error_chain(&e);
        assert!(matches!(e, SecretsError::Credentials { .. }), "{msg}");

        // Service gone: a clear "cannot reach", naming the endpoint.
        let endpoint = moto.endpoint();
        moto.stop();
        let e = fetch_secrets_with(&sdk, "shop", "prod").await.unwrap_err();
        let msg = error_chain(&e);
        assert!(matches!(e, SecretsError::Unreachable { .. }), "{msg}");
        assert!(msg.contains(&endpoint), "{msg}");
    }

    #[test]
    fn parse_rules() {
        let e = parse_secret("[1]", "s").unwrap_err();
        assert!(matches!(e, SecretsError::NotAnObject { .. }), "{e}");
        let e = parse_secret(
            r#"{"DEPLOYEX_SECRET_KEY_BASE": 5, "DEPLOYEX_ERLANG_COOKIE": "c", "DEPLOYEX_ADMIN_HASHED_PASSWORD": "h"}"#,
            "s",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "AWS Secrets Manager secret s: DEPLOYEX_SECRET_KEY_BASE must be a non-empty string"
        );
        let ok = parse_secret(
            r#"{"DEPLOYEX_SECRET_KEY_BASE": "a", "DEPLOYEX_ERLANG_COOKIE": "c", "DEPLOYEX_ADMIN_HASHED_PASSWORD": "h", "DEPLOYEX_METRICS_TOKEN": "t"}"#,
            "s",
        )
        .unwrap();
        assert_eq!(ok.len(), 4);
        assert_eq!(ok["DEPLOYEX_METRICS_TOKEN"], "t");
    }
}
