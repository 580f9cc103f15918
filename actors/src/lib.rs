//! deployex's engine: the actor tree that fetches releases, runs instances,
//! deploys and upgrades them. See ARCHITECTURE.md for the map, and
//! [`root`] for the supervision tree.

pub mod app_supervisor;
pub mod app_user;
pub mod config;
pub mod deploy_manager;
pub mod dist;
pub mod engine;
pub mod error;
pub mod events;
pub mod fleet;
pub mod handle;
pub mod health;
pub mod history;
pub mod instance_monitor;
pub mod model;
pub mod observer;
pub mod otp_node_watcher;
pub mod process;
pub mod reconfigure;
pub mod recorder;
pub mod release_fetcher;
pub mod release_kind;
pub mod root;
pub mod storage;
pub mod store;
pub mod task;
pub mod testhook;
pub mod time;
pub mod upgrade;

pub use config::{
    DeployStrategy, EngineConfig, Slot, StoreConfig, WatchdogAction, WatchdogConfig, WebhookConfig,
};
pub use engine::Engine;
pub use handle::{EngineHandle, Running, StartError, start, start_apps};
