//! The one interface through which clients (the web layer, tests) talk to
//! the running engine. It is a trait so that the web crate can be unit-tested
//! without an actor tree; the real implementation (`EngineHandle`) turns each
//! call into actor queries with timeouts.

use futures::future::BoxFuture;

use std::path::PathBuf;

use crate::model::{ActionError, ActorInfo, HistoryEntry, LogStream, Mode, ShellCommand, Status};

pub trait Engine: Send + Sync + 'static {
    /// Snapshot of everything; never hangs: slow actors show as `stale`.
    fn status(&self) -> BoxFuture<'_, Status>;
    /// Deployment history, newest first, optionally for one instance.
    fn versions(&self, instance: Option<u32>) -> BoxFuture<'_, Vec<HistoryEntry>>;
    /// Operator restart (counted as a forced restart).
    fn restart(&self, instance: u32) -> BoxFuture<'_, Result<(), ActionError>>;
    /// Pin a version (manual) or go back to automatic.
    fn set_mode(&self, mode: Mode) -> BoxFuture<'_, Result<(), ActionError>>;
    /// Remove a version from the ghosted list.
    fn unghost(&self, version: String) -> BoxFuture<'_, Result<(), ActionError>>;
    /// The log file of an instance (`instance` 1..N), or of deployex itself
    /// (`instance` 0, when deployex logs to a file). `None`: no such instance.
    fn log_file(&self, instance: u32, stream: LogStream) -> Option<PathBuf>;
    /// The command that opens an IEx remote shell into a running instance.
    fn remote_shell(&self, instance: u32) -> BoxFuture<'_, Result<ShellCommand, ActionError>>;
    /// The live actor tree with each actor's recent messages.
    fn actors(&self) -> BoxFuture<'_, ActorInfo>;
    /// The newest `limit` events, newest first (empty when the event log
    /// does not answer).
    fn events(&self, limit: usize) -> BoxFuture<'_, Vec<crate::events::Event>> {
        let _ = limit;
        Box::pin(async { Vec::new() })
    }
    /// The fleet as this host last read it; `None` when fleet mode is off.
    fn fleet(&self) -> BoxFuture<'_, Option<serde_json::Value>> {
        Box::pin(async { None })
    }

    // ---- metrics history and observer (history.rs, observer.rs) ----

    /// The metrics history of an instance newer than `since` (unix ms),
    /// with its deployments; `None`: no such instance.
    fn instance_history(
        &self,
        instance: u32,
        since: Option<u64>,
    ) -> BoxFuture<'_, Option<crate::history::Series>> {
        let _ = (instance, since);
        Box::pin(async { None })
    }
    /// The host's metrics history newer than `since` (unix ms).
    fn host_history(&self, since: Option<u64>) -> BoxFuture<'_, crate::history::Series> {
        let _ = since;
        Box::pin(async { crate::history::Series::empty(std::time::Duration::from_secs(5)) })
    }
    /// The newest point of every history ring (for `/metrics`).
    fn history_latest(&self) -> crate::history::Latest {
        crate::history::Latest::default()
    }
    /// A look inside an instance's node (read-only).
    fn observe(
        &self,
        instance: u32,
        request: crate::observer::ObserveRequest,
    ) -> BoxFuture<'_, Result<crate::observer::Observed, crate::observer::ObserverError>> {
        let _ = request;
        Box::pin(async move { Err(crate::observer::ObserverError::NoSuchInstance(instance)) })
    }
}
