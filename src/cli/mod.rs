//! The operator CLI: subcommands of the `deployex` binary that drive a
//! release store and a running deployex from a shell, a script or CI.
//!
//! - `publish` ([`publish`]) validates a release tarball with the fetcher's
//!   own code and writes it, then `current.json`, to the release store.
//! - `login`, `status`, `versions`, `events`, `restart`, `pin`, `unpin`,
//!   `unghost`, `fleet` ([`api`]) call the JSON API of a running deployex over
//!   HTTP ([`client`]).
//!
//! Invariants: a command exits 0 only when it did what it says; any failure
//! prints one line on stderr (the API's own error when there is one) and
//! exits non-zero. Tokens and passwords are never printed.

mod api;
mod client;
mod publish;
mod table;

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// The operator subcommands (flattened into the binary's command list).
#[derive(Subcommand)]
pub enum Command {
    /// Validate a release tarball and publish it (tarball, then current.json) to the release store.
    Publish(publish::PublishArgs),
    /// Log in to a running deployex and keep the token in $XDG_CONFIG_HOME/deployex/token.
    Login {
        #[command(flatten)]
        api: ApiOpts,
        /// Read the password from stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Show the instances of a running deployex (`--json`: the /api/v1/status object).
    Status(ApiOpts),
    /// Show the deployment history.
    Versions {
        #[command(flatten)]
        api: ApiOpts,
        /// Only this instance's history.
        #[arg(long)]
        instance: Option<u32>,
    },
    /// Show the newest events.
    Events {
        #[command(flatten)]
        api: ApiOpts,
        /// How many events.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Restart one instance (1..N).
    Restart {
        /// The instance number.
        instance: u32,
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Pin a version (manual mode): deploy it and ignore current.json.
    Pin {
        /// The version to run.
        version: String,
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Back to automatic mode: follow current.json.
    Unpin(ApiOpts),
    /// Remove a version from the ghosted list so it may be deployed again.
    Unghost {
        /// The ghosted version.
        version: String,
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Show the fleet (DEPLOYEX_FLEET=true): hosts, their instances, slots and fleet ghosts.
    Fleet(ApiOpts),
}

/// Options of every command that talks to a running deployex.
#[derive(Args, Clone, Debug, Default)]
pub struct ApiOpts {
    /// Base URL of deployex's API [default: http://DEPLOYEX_BIND_ADDR:DEPLOYEX_PHX_PORT of the configuration].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The app the command is for; refused when deployex runs another one
    /// (one app per deployex today: for the multi-app future).
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
}

/// Runs an operator command; `config` is the binary's `--config` file.
pub fn run(command: Command, config: Option<&Path>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("deployex: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Publish(args) => runtime.block_on(publish::run(args, config)),
        other => runtime.block_on(api::run(other, config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deployex: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon's configuration for a client command. The CLI needs no
/// secret (it reads names, the store and the API address), so the secrets
/// the environment lacks outside `local` are filled with placeholders
/// instead of being fetched from AWS Secrets Manager.
fn load_config(file: Option<&Path>) -> anyhow::Result<crate::config::Config> {
    crate::config::load_with_secrets(std::env::vars(), file, |req| {
        Ok(req
            .missing
            .iter()
            .map(|var| {
                let placeholder = match *var {
                    "DEPLOYEX_ADMIN_HASHED_PASSWORD" => crate::config::LOCAL_ADMIN_HASH.to_owned(),
                    _ => "unused-by-the-cli-".repeat(4),
                };
                ((*var).to_owned(), placeholder)
            })
            .collect())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))
}
