//! `deployex publish TARBALL`: what an operator's CI does by hand today,
//! with the daemon's own checks.
//!
//! 1. The tarball is verified by [`verify_tarball`], the very function the
//!    release fetcher runs: a tarball the daemon would reject is refused
//!    here with the same message, and nothing is written.
//! 2. Its version comes from `releases/start_erl.data` inside it.
//! 3. The tarball is uploaded, then `current.json` (with the tarball's
//!    sha256) is written, each atomically: a deployex polling the store
//!    never sees a `current.json` naming a tarball that is not there yet,
//!    and the sha256 makes it reject a tarball replaced in between.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use deployex_actors::StoreConfig;
use deployex_actors::release_fetcher::{error_chain, verify_tarball};
use deployex_actors::store::{
    CurrentRelease, LocalStore, S3Store, parse_current_json, sha256_file,
};

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The release tarball (`mix release` / rebar3 tar output).
    pub tarball: PathBuf,
    /// A release command run before the new version replaces the old one
    /// (e.g. "eval MyApp.Migrator.migrate"); repeat for several.
    #[arg(long = "pre-command", value_name = "CMD")]
    pub pre_commands: Vec<String>,
    /// Publish to this local release store folder (DEPLOYEX_RELEASE_DIR).
    #[arg(long, value_name = "DIR", conflicts_with = "bucket")]
    pub store: Option<PathBuf>,
    /// Publish to this S3 bucket (DEPLOYEX_RELEASE_BUCKET; AWS_REGION,
    /// AWS_ENDPOINT_URL and the usual AWS credentials apply).
    #[arg(long, value_name = "BUCKET")]
    pub bucket: Option<String>,
    /// The app name (DEPLOYEX_MONITORED_APP_NAME).
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// The environment (DEPLOYEX_CLOUD_ENVIRONMENT).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// The `hash` field of current.json [default: the tarball's sha256].
    #[arg(long, value_name = "HASH")]
    pub hash: Option<String>,
}

/// Where to publish.
enum Target {
    Local(LocalStore),
    S3(S3Store),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Local(s) => s.describe(),
            Target::S3(s) => s.describe(),
        }
    }
}

pub async fn run(args: PublishArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let app = args.app.clone().unwrap_or(cfg.engine.app.clone());
    let env = args.env.clone().unwrap_or(cfg.engine.env.clone());
    let target = match (&args.store, &args.bucket, &cfg.engine.store) {
        (Some(dir), _, _) => Target::Local(LocalStore::new(dir.clone(), &app, &env)?),
        (
            None,
            Some(bucket),
            StoreConfig::S3 {
                region, endpoint, ..
            },
        ) => Target::S3(S3Store::new(bucket, region.clone(), endpoint.clone(), &app, &env).await?),
        (None, Some(bucket), StoreConfig::Local { .. }) => Target::S3(
            S3Store::new(
                bucket,
                std::env::var("AWS_REGION").ok(),
                std::env::var("AWS_ENDPOINT_URL").ok(),
                &app,
                &env,
            )
            .await?,
        ),
        (None, None, StoreConfig::Local { root }) => {
            Target::Local(LocalStore::new(root.clone(), &app, &env)?)
        }
        (
            None,
            None,
            StoreConfig::S3 {
                bucket,
                region,
                endpoint,
            },
        ) => Target::S3(S3Store::new(bucket, region.clone(), endpoint.clone(), &app, &env).await?),
    };
    for (i, c) in args.pre_commands.iter().enumerate() {
        if c.trim().is_empty() {
            bail!("--pre-command {}: empty command", i + 1);
        }
    }
    let tarball = args.tarball.clone();
    if !tarball.is_file() {
        bail!("{}: no such file", tarball.display());
    }

    let (version, sha256) = {
        let (tarball, app) = (tarball.clone(), app.clone());
        tokio::task::spawn_blocking(move || verify(&tarball, &app))
            .await
            .context("the verification task failed")??
    };
    let release = CurrentRelease {
        version: version.clone(),
        pre_commands: args.pre_commands.clone(),
        hash: args.hash.clone().unwrap_or_else(|| sha256.clone()),
        sha256: Some(sha256.clone()),
    };
    let json = serde_json::to_vec_pretty(&release)?;
    // What the daemon will read back must pass its own parser.
    parse_current_json(&json).map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))?;

    let store_err = |e: deployex_actors::store::StoreError| anyhow::anyhow!("{}", error_chain(&e));
    match &target {
        Target::Local(s) => {
            s.upload_tarball(&version, &tarball)
                .await
                .map_err(store_err)?;
            s.write_current(&json).await.map_err(store_err)?;
        }
        Target::S3(s) => {
            s.upload_tarball(&version, &tarball)
                .await
                .map_err(store_err)?;
            s.write_current(&json).await.map_err(store_err)?;
        }
    }
    println!(
        "published {app} {version} (sha256 {sha256}) to {}",
        target.describe()
    );
    Ok(())
}

/// Blocking: the fetcher's verification (unpack into a private scratch
/// folder, removed afterwards), then the sha256. Returns (version, sha256).
fn verify(tarball: &Path, app: &str) -> anyhow::Result<(String, String)> {
    let scratch = std::env::temp_dir().join(format!(
        "deployex-publish-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let version = verify_tarball(tarball, &scratch, app, None, None).map_err(|e| {
        anyhow::anyhow!(
            "refused: tarball {}: {}",
            tarball.display(),
            error_chain(&e)
        )
    })?;
    let sha256 = sha256_file(tarball).map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))?;
    Ok((version, sha256))
}
