//! The `deployex` binary: command line, configuration, wiring of the engine
//! (`deployex-actors`) and the HTTP server (`deployex-web`).

mod cli;
mod config;
mod secrets;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "deployex",
    version,
    about = "Deploys and supervises BEAM releases on a single VM",
    long_about = "Deploys and supervises BEAM (mix release) releases on a single VM: fetches \
                  releases from a store, runs N replicas, restarts crashed ones with backoff, \
                  upgrades them one at a time, rolls back bad versions, and serves a dashboard.\n\n\
                  Configuration comes from environment variables (see `deployex check-config` and \
                  the README), optionally from a TOML file given with --config; the environment wins."
)]
struct Cli {
    /// TOML configuration file (keys: variable names in lower case without DEPLOYEX_).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run deployex (the default).
    Run,
    /// Read a password on stdin, print its bcrypt hash for DEPLOYEX_ADMIN_HASHED_PASSWORD.
    HashPassword {
        /// bcrypt cost.
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(10..=31))]
        cost: u32,
    },
    /// Validate the configuration and print the effective values (secrets redacted).
    CheckConfig,
    /// List every setting: variable, default, allowed values, scope (app or host), meaning.
    Settings,
    // The operator CLI (publish, login, status, ...): `src/cli/`.
    #[command(flatten)]
    Operator(cli::Command),
}

fn main() -> ExitCode {
    forbid_inspection();
    deployex_actors::process::limit_malloc_arenas((1 + ENGINE_WORKERS + WEB_WORKERS) as i32);
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::HashPassword { cost } => hash_password(cost),
        Command::Operator(command) => cli::run(command, cli.config.as_deref()),
        Command::Settings => {
            print!("{}", config::settings::reference());
            ExitCode::SUCCESS
        }
        Command::CheckConfig => match load_config(cli.config.as_deref()) {
            Ok(c) => {
                print!("{}", c.describe());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("deployex: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run => {
            let (cfg, secrets) = match load_config_keeping(cli.config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("deployex: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = cfg.check_local_store().and_then(|()| cfg.check_app_user()) {
                eprintln!("deployex: {e}");
                return ExitCode::from(2);
            }
            let own_log = init_tracing();
            let runtime = match engine_runtime() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("deployex: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let web_runtime = if cfg.web.enabled {
                match web_runtime() {
                    Ok(r) => Some(r),
                    Err(e) => {
                        eprintln!("deployex: cannot start the web server's runtime: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                None
            };
            let web = web_runtime.as_ref().map(|r| r.handle().clone());
            let reload = Reload {
                file: cli.config.clone(),
                secrets: std::sync::Arc::new(secrets),
            };
            let code = match runtime.block_on(run(cfg, web, own_log, reload)) {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            };
            if let Some(r) = web_runtime {
                r.shutdown_timeout(std::time::Duration::from_secs(2));
            }
            code
        }
    }
}

/// `PR_SET_DUMPABLE 0`: a process of the same user (an app, a pre-command)
/// can no longer ptrace deployex or read its `/proc/{pid}/environ` or
/// `mem` (they become root-owned), where the secrets are; no core dump
/// either. Children are unaffected: `execve` makes them dumpable again.
fn forbid_inspection() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("deployex: cannot mark the process non-dumpable: {e}");
    }
}

/// The engine's runtime: two worker threads for the actors and the process
/// watchers (the web server has its own, [`web_runtime`]), whatever the
/// machine's core count (bounded
/// threads, stacks and malloc arenas: RSS); blocking work (unpacking,
/// hashing, bcrypt, state files, log rotation) goes to tokio's blocking
/// pool. Not one thread: a handler that must block briefly (the fork of an
/// instance, the fsync of its pid file, the stray sweep at boot) would then
/// stall the dashboard and every other actor with it.
/// Worker threads of the engine's runtime.
const ENGINE_WORKERS: usize = 2;

fn engine_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ENGINE_WORKERS)
        .thread_name("deployex-engine")
        .enable_all()
        .build()
}

/// Worker threads of the web server's runtime.
const WEB_WORKERS: usize = 2;
/// The nice value of the web server's threads.
const WEB_NICE: i32 = 10;

/// The dashboard and API run on their own runtime whose threads (workers
/// and blocking pool: bcrypt, the IEx terminal's PTY) are niced to
/// [`WEB_NICE`]: when the CPU is short, supervision (a respawn, a
/// deployment step) and the instances themselves (a BEAM booting) go
/// first, and a flood of HTTP requests slows the dashboard instead of the
/// deployment (`bench/load.sh` measured a rolling deploy +36 % slower under
/// `wrk -c64` when both shared one runtime). With the CPU free, nice
/// changes nothing: requests are served at full speed. Processes started
/// from these threads inherit the nice value (the IEx terminal's remote
/// shell); instances are always started by the engine's threads.
fn web_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WEB_WORKERS)
        .thread_name("deployex-web")
        .on_thread_start(|| {
            if let Err(e) = deployex_actors::process::set_current_thread_nice(WEB_NICE) {
                tracing::warn!("cannot lower the web server thread's priority: {e}");
            }
        })
        .enable_all()
        .build()
}

/// The configuration from the environment and `file`; outside `local`,
/// missing secrets come from AWS Secrets Manager (a short-lived runtime:
/// the configuration is complete before the engine's runtime starts).
fn load_config(file: Option<&std::path::Path>) -> Result<config::Config, config::ConfigError> {
    load_config_keeping(file).map(|(c, _)| c)
}

/// Secrets fetched at start, reused as they are by a reload (SIGHUP): a
/// reload re-reads the file, not AWS Secrets Manager.
type FetchedSecrets = std::collections::HashMap<String, String>;

/// [`load_config`], also returning the secrets it fetched (empty when none).
fn load_config_keeping(
    file: Option<&std::path::Path>,
) -> Result<(config::Config, FetchedSecrets), config::ConfigError> {
    let mut kept = FetchedSecrets::new();
    let cfg = config::load_with_secrets(std::env::vars(), file, |req| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        runtime
            .block_on(secrets::fetch_secrets(
                &req.app,
                &req.env,
                req.region.clone(),
                req.endpoint.clone(),
            ))
            .map_err(|e| deployex_actors::release_fetcher::error_chain(&e))
            .inspect(|fetched| kept.clone_from(fetched))
    })?;
    Ok((cfg, kept))
}

/// The app list of a reload: the same environment and file as at start,
/// the secrets fetched at start.
fn reload_config(
    file: Option<&std::path::Path>,
    secrets: &FetchedSecrets,
) -> Result<Vec<deployex_actors::EngineConfig>, config::ConfigError> {
    let cfg = config::load_with_secrets(std::env::vars(), file, |_| Ok(secrets.clone()))?;
    cfg.check_local_store()?;
    Ok(std::iter::once(cfg.engine).chain(cfg.extra_apps).collect())
}

/// SIGHUP: re-read the configuration and apply the app list (added apps
/// start, removed ones stop, replica counts change); an invalid file is
/// refused with one error line and nothing changes.
async fn reload(
    handle: &deployex_actors::EngineHandle,
    web_apps: Option<&deployex_web::apps::AppList>,
    file: Option<std::path::PathBuf>,
    secrets: std::sync::Arc<FetchedSecrets>,
) {
    tracing::info!("SIGHUP: reloading the configuration");
    let loaded =
        tokio::task::spawn_blocking(move || reload_config(file.as_deref(), &secrets)).await;
    let apps = match loaded {
        Ok(Ok(apps)) => apps,
        Ok(Err(e)) => {
            tracing::error!("reload refused, nothing changed: {e}");
            return;
        }
        Err(e) => {
            tracing::error!("reload refused, nothing changed: {e}");
            return;
        }
    };
    let listed = web_list(handle, web_apps, &apps);
    match handle.reconfigure(apps).await {
        Some(plan) if plan.is_empty() => tracing::info!("reload: nothing changed"),
        Some(plan) => tracing::info!(
            added = ?plan.added,
            removed = ?plan.removed,
            scaled = ?plan.scaled,
            needs_restart = ?plan.needs_restart,
            "reload applied"
        ),
        None => tracing::error!("reload: the actor tree did not answer in time"),
    }
    // The web's list follows (added apps appear, removed ones are 404).
    if let (Some(list), Some(listed)) = (web_apps, listed) {
        match list.write() {
            Ok(mut l) => *l = listed,
            Err(poisoned) => *poisoned.into_inner() = listed,
        }
    }
}

/// The web's app list after a reload to `apps`: the handles it has for
/// apps that stay, new ones for added apps (`None` without a web server).
fn web_list(
    handle: &deployex_actors::EngineHandle,
    web_apps: Option<&deployex_web::apps::AppList>,
    apps: &[deployex_actors::EngineConfig],
) -> Option<Vec<(String, std::sync::Arc<dyn deployex_actors::Engine>)>> {
    let now = web_apps?
        .read()
        .map(|l| l.clone())
        .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
    Some(
        apps.iter()
            .map(|cfg| {
                let engine = now
                    .iter()
                    .find(|(name, _)| name == &cfg.app)
                    .map(|(_, e)| e.clone())
                    .unwrap_or_else(|| std::sync::Arc::new(handle.for_app(cfg.clone())));
                (cfg.app.clone(), engine)
            })
            .collect(),
    )
}

/// First trim of deployex's resident code, once start-up is over.
const FIRST_CODE_TRIM: std::time::Duration = std::time::Duration::from_secs(1);
/// Later trims: code that ran once in a while (a deployment, a hot upgrade)
/// leaves the resident set again.
const CODE_TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Unmaps deployex's own clean code pages now and then, so its RSS is the
/// code it uses, not all the code it ever ran (see
/// `deployex_actors::process::trim_resident_code`). Costs a few hundred
/// minor page faults per round (well under a millisecond of CPU).
async fn trim_resident_code_periodically() {
    tokio::time::sleep(FIRST_CODE_TRIM).await;
    let mut every = tokio::time::interval(CODE_TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match tokio::task::spawn_blocking(deployex_actors::process::trim_resident_code).await {
            Ok(bytes) => tracing::debug!(bytes, "trimmed resident code"),
            Err(e) => tracing::debug!("code trim failed: {e}"),
        }
    }
}

/// Lines of deployex's own log kept in memory for the dashboard.
const OWN_LOG_LINES: usize = 500;

/// Logs to stderr (the journal, or the unit's log file) and into a ring of
/// the last [`OWN_LOG_LINES`] lines, which the dashboard shows as
/// deployex's log (`/instances/0/logs/stdout`).
fn init_tracing() -> std::sync::Arc<deployex_web::ownlog::OwnLog> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_env("DEPLOYEX_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,ractor=warn,warp=warn,hyper=warn"));
    let own_log = deployex_web::ownlog::OwnLog::new(OWN_LOG_LINES);
    let ring = own_log.clone();
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || ring.writer())
                .with_ansi(false),
        )
        .init();
    own_log
}

fn hash_password(cost: u32) -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("deployex: cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = input.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("deployex: empty password on stdin");
        return ExitCode::from(2);
    }
    match bcrypt::hash(password, cost) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("deployex: cannot hash: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a reload (SIGHUP) reads again: the same file, the secrets of the
/// start.
struct Reload {
    file: Option<PathBuf>,
    secrets: std::sync::Arc<FetchedSecrets>,
}

/// Runs deployex until a signal (or the actor tree gives up); `web` is the
/// web server's runtime (`None` when the web server is disabled). SIGHUP
/// reloads the configuration (see [`reload`]).
async fn run(
    cfg: config::Config,
    web: Option<tokio::runtime::Handle>,
    own_log: std::sync::Arc<deployex_web::ownlog::OwnLog>,
    reload_from: Reload,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};

    tracing::info!(app = %cfg.engine.app, replicas = cfg.engine.replicas, "starting deployex {}", env!("CARGO_PKG_VERSION"));
    let stop_apps = cfg.engine.stop_apps_on_exit;
    let apps: Vec<_> = std::iter::once(cfg.engine.clone())
        .chain(cfg.extra_apps.iter().cloned())
        .collect();
    let running = deployex_actors::start_apps(apps).await?;
    let handle = running.handle.clone();
    let mut root_done = running.join;

    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let mut web_apps = None;
    let web = if let Some(web_runtime) = web {
        let web_cfg = deployex_web::WebConfig {
            own_log: Some(own_log),
            ..cfg.web.server.clone()
        };
        if !web_cfg.bind.ip().is_loopback() {
            tracing::warn!(bind = %web_cfg.bind, "the dashboard listens on a non-loopback address: put it behind a TLS reverse proxy (see README, Security)");
        }
        let apps: Vec<(String, std::sync::Arc<dyn deployex_actors::Engine>)> = running
            .apps
            .iter()
            .map(|h| {
                let engine: std::sync::Arc<dyn deployex_actors::Engine> =
                    std::sync::Arc::new(h.clone());
                (h.config().app.clone(), engine)
            })
            .collect();
        let list = deployex_web::apps::app_list(apps);
        web_apps = Some(list.clone());
        let (addr, join) = web_runtime
            .spawn(deployex_web::serve_app_list(list, web_cfg, async {
                let _ = shutdown_rx.await;
            }))
            .await??;
        tracing::info!("dashboard and API on http://{addr}");
        Some(join)
    } else {
        None
    };

    let trimmer = tokio::spawn(trim_resident_code_periodically());

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let code = loop {
        tokio::select! {
            _ = sigterm.recv() => break None,
            _ = sigint.recv() => break None,
            _ = &mut root_done => break Some(ExitCode::FAILURE),
            _ = sighup.recv() => {
                reload(&handle, web_apps.as_ref(), reload_from.file.clone(), reload_from.secrets.clone()).await;
            }
        }
    };
    if let Some(code) = code {
        tracing::error!("the actor tree stopped (restart intensity exceeded); exiting");
        let _ = shutdown_tx.send(());
        return Ok(code);
    }
    trimmer.abort();
    tracing::info!(stop_apps, "signal received: shutting down");
    let _ = shutdown_tx.send(());
    handle.shutdown(stop_apps).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), root_done).await;
    if let Some(web) = web {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), web).await;
    }
    tracing::info!("bye");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn deployex_is_not_dumpable() {
        super::forbid_inspection();
        assert_eq!(nix::sys::prctl::get_dumpable().ok(), Some(false));
    }
}
