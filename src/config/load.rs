//! The order of loading: who the app is and where it runs, the release
//! store, the secrets (fetched once, outside `local`), then the engine's
//! and the web server's settings, and last the effective values that
//! `check-config` prints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use deployex_actors::{EngineConfig, StoreConfig};

use super::settings::{FETCHED_SECRETS, OPTIONAL_SECRETS, SETTINGS, is_secret};
use super::source::Source;
use super::{
    Config, ConfigError, LOCAL_ADMIN_HASH, MIN_BCRYPT_COST, SecretsRequest, apps, engine, web,
};

/// Who the app is and where it runs: every other default depends on it.
pub(super) struct Identity {
    pub app: String,
    pub cloud_env: String,
    /// `DEPLOYEX_CLOUD_ENVIRONMENT=local`: development defaults, no fetch.
    pub local: bool,
}

/// The secrets deployex itself uses (the optional ones are read where
/// they are used).
struct Secrets {
    secret_key_base: String,
    cookie: String,
    admin_hashed_password: String,
}

/// Load from `env` (normally `std::env::vars()`) and an optional file;
/// outside `local`, the secrets missing from `env` and the
/// file are asked of `fetch` (at most one call; its error is one line for
/// the operator). Values already set win over fetched ones.
pub fn load_with_secrets(
    env: impl IntoIterator<Item = (String, String)>,
    file: Option<&Path>,
    fetch: impl FnOnce(&SecretsRequest) -> Result<HashMap<String, String>, String>,
) -> Result<Config, ConfigError> {
    load_inner(env, file, Some(fetch))
}

pub(super) fn load_inner(
    env: impl IntoIterator<Item = (String, String)>,
    file: Option<&Path>,
    fetch: Option<impl FnOnce(&SecretsRequest) -> Result<HashMap<String, String>, String>>,
) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env.into_iter().collect();
    let base = Source::new(env.clone(), file)?;
    let app_tables = match file {
        Some(f) => apps::read_apps(f)?,
        None => None,
    };
    if app_tables.is_some() {
        apps::check_env(&env)?;
    }
    let app_tables = app_tables.unwrap_or_default();
    let mut src = base.overlaid(
        &app_tables
            .first()
            .map(|a| a.keys.clone())
            .unwrap_or_default(),
    );

    let id = identity(&src)?;
    let store = store(&src, &id)?;
    if !id.local
        && let Some(fetch) = fetch
    {
        src.fetched = fetch_secrets(&src, &id, fetch)?;
    }
    let secrets = secrets(&src, &id)?;
    let mut engine = engine::settings(&src, &id, store)?;
    engine.cookie = secrets.cookie;
    // -- web hardening: no secret of deployex reaches an app, a pre-command
    // or a terminal (every secret of the settings table, present and future).
    engine.base_env = env.into_iter().filter(|(k, _)| !is_secret(k)).collect();
    engine.base_env.sort();
    let mut extra_apps = Vec::new();
    for table in app_tables.iter().skip(1) {
        let mut app_src = base.overlaid(&table.keys);
        app_src.fetched = src.fetched.clone();
        let app_id = identity(&app_src)?;
        let app_store = self::store(&app_src, &app_id)?;
        let mut app = engine::settings(&app_src, &app_id, app_store)?;
        app.cookie = engine.cookie.clone();
        app.base_env = apps::with_env(engine.base_env.clone(), &table.env);
        extra_apps.push(app);
    }
    if let Some(first) = app_tables.first() {
        engine.base_env = apps::with_env(std::mem::take(&mut engine.base_env), &first.env);
    }
    if !app_tables.is_empty() {
        let all: Vec<EngineConfig> = std::iter::once(engine.clone())
            .chain(extra_apps.iter().cloned())
            .collect();
        apps::validate(&all)?;
    }
    let web = web::settings(
        &src,
        &engine,
        secrets.secret_key_base,
        secrets.admin_hashed_password,
    )?;

    Ok(Config {
        engine,
        extra_apps,
        web,
        effective: effective(&src),
    })
}

fn identity(src: &Source) -> Result<Identity, ConfigError> {
    let app = src.string("DEPLOYEX_MONITORED_APP_NAME", "myphoenixapp");
    if !valid_app_name(&app) {
        return Err(src.invalid(
            "DEPLOYEX_MONITORED_APP_NAME",
            &app,
            "expected a release name: lower-case letters, digits and _, starting with a letter",
        ));
    }
    let cloud_env = src.string("DEPLOYEX_CLOUD_ENVIRONMENT", "local");
    if !cloud_env
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(src.invalid(
            "DEPLOYEX_CLOUD_ENVIRONMENT",
            &cloud_env,
            "expected letters, digits, - and _",
        ));
    }
    let local = cloud_env == "local";
    Ok(Identity {
        app,
        cloud_env,
        local,
    })
}

fn valid_app_name(app: &str) -> bool {
    !app.is_empty()
        && app.len() <= 64
        && app.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && app
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn store(src: &Source, id: &Identity) -> Result<StoreConfig, ConfigError> {
    let Identity {
        app,
        cloud_env,
        local,
    } = id;
    let adapter = src.string(
        "DEPLOYEX_RELEASE_ADAPTER",
        if *local { "local" } else { "s3" },
    );
    let store = match adapter.as_str() {
        "local" => StoreConfig::Local {
            root: PathBuf::from(src.string("DEPLOYEX_RELEASE_DIR", &format!("/tmp/{app}"))),
        },
        "s3" => StoreConfig::S3 {
            bucket: src.string(
                "DEPLOYEX_RELEASE_BUCKET",
                &format!("{app}-{cloud_env}-distribution"),
            ),
            region: src.opt("AWS_REGION"),
            endpoint: src.opt("AWS_ENDPOINT_URL"),
        },
        other => {
            return Err(src.invalid("DEPLOYEX_RELEASE_ADAPTER", other, "expected local or s3"));
        }
    };
    // -- web hardening: a production local store is never a default path
    // (the default, /tmp/{app}, is writable by anyone: a planted tarball
    // would run as the apps).
    if !local
        && matches!(store, StoreConfig::Local { .. })
        && src.opt("DEPLOYEX_RELEASE_DIR").is_none()
    {
        return Err(ConfigError(format!(
            "invalid configuration: DEPLOYEX_RELEASE_DIR must be set when DEPLOYEX_RELEASE_ADAPTER=local and DEPLOYEX_CLOUD_ENVIRONMENT={cloud_env}"
        )));
    }
    Ok(store)
}

/// Asks `fetch` for the required secrets that are not set (nothing when
/// all are); keeps only those and the optional ones not set, so a secret
/// cannot override settings.
fn fetch_secrets(
    src: &Source,
    id: &Identity,
    fetch: impl FnOnce(&SecretsRequest) -> Result<HashMap<String, String>, String>,
) -> Result<HashMap<String, String>, ConfigError> {
    let missing: Vec<&'static str> = FETCHED_SECRETS
        .iter()
        .copied()
        .filter(|var| src.opt(var).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(HashMap::new());
    }
    let request = SecretsRequest {
        app: id.app.clone(),
        env: id.cloud_env.clone(),
        region: src.opt("AWS_REGION"),
        endpoint: src.opt("AWS_ENDPOINT_URL"),
        missing: missing.clone(),
    };
    let fetched = fetch(&request).map_err(|e| {
        ConfigError(format!(
            "cannot read {} from AWS Secrets Manager: {e}",
            missing.join(", ")
        ))
    })?;
    let optional_unset: Vec<&str> = OPTIONAL_SECRETS
        .iter()
        .copied()
        .filter(|var| src.opt(var).is_none())
        .collect();
    Ok(fetched
        .into_iter()
        .filter(|(k, _)| missing.contains(&k.as_str()) || optional_unset.contains(&k.as_str()))
        .collect())
}

/// The required secrets: set, fetched, or (only in `local`) a default.
fn secrets(src: &Source, id: &Identity) -> Result<Secrets, ConfigError> {
    let secret_name = format!("deployex-{}-{}-secrets", id.app, id.cloud_env);
    let secret = |var: &str, local_default: Option<String>| -> Result<String, ConfigError> {
        match src.opt(var) {
            Some(v) => Ok(v),
            None if id.local => Ok(local_default.unwrap_or_default()),
            None => Err(ConfigError(format!(
                "missing {var}: required when DEPLOYEX_CLOUD_ENVIRONMENT={} (set it in the environment or in the AWS Secrets Manager secret {secret_name})",
                id.cloud_env
            ))),
        }
    };
    let secret_key_base = secret("DEPLOYEX_SECRET_KEY_BASE", Some(random_secret()))?;
    if secret_key_base.len() < 32 {
        return Err(ConfigError(
            "invalid configuration: DEPLOYEX_SECRET_KEY_BASE is too short: expected at least 32 characters".to_string(),
        ));
    }
    let cookie = secret("DEPLOYEX_ERLANG_COOKIE", Some("cookie".to_string()))?;
    if cookie.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError(
            "invalid configuration: DEPLOYEX_ERLANG_COOKIE contains white space or control characters".to_string(),
        ));
    }
    let admin_hashed_password = secret(
        "DEPLOYEX_ADMIN_HASHED_PASSWORD",
        Some(LOCAL_ADMIN_HASH.to_string()),
    )?;
    if !(admin_hashed_password.starts_with("$2b$")
        || admin_hashed_password.starts_with("$2a$")
        || admin_hashed_password.starts_with("$2y$"))
        || admin_hashed_password.len() != 60
    {
        return Err(ConfigError(
            "invalid configuration: DEPLOYEX_ADMIN_HASHED_PASSWORD is not a bcrypt hash ($2b$..., 60 characters); make one with `deployex hash-password`".to_string(),
        ));
    }
    // -- web hardening: a cheap hash falls to an offline guess in minutes.
    let cost = admin_hashed_password
        .get(4..6)
        .and_then(|c| c.parse::<u32>().ok())
        .unwrap_or(0);
    if cost < MIN_BCRYPT_COST {
        return Err(ConfigError(format!(
            "invalid configuration: DEPLOYEX_ADMIN_HASHED_PASSWORD has bcrypt cost {cost}: expected at least {MIN_BCRYPT_COST}; make one with `deployex hash-password`"
        )));
    }

    Ok(Secrets {
        secret_key_base,
        cookie,
        admin_hashed_password,
    })
}

fn random_secret() -> String {
    let bytes: [u8; 48] = rand::random();
    hex::encode(bytes)
}

/// Every variable's value as `check-config` shows it, in the settings
/// table's order: set, or `<default>`; secrets only say where they came
/// from.
fn effective(src: &Source) -> Vec<(&'static str, String)> {
    SETTINGS
        .iter()
        .map(|s| {
            let value = if s.secret {
                if src.fetched.contains_key(s.name) {
                    "<redacted, from AWS Secrets Manager>".to_string()
                } else if src.get(s.name).is_some_and(|v| !v.is_empty()) {
                    "<redacted>".to_string()
                } else {
                    "<default>".to_string()
                }
            } else {
                // `get`, not `opt`: listing a value is not reading it.
                src.get(s.name)
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "<default>".to_string())
            };
            (s.name, value)
        })
        .collect()
}
