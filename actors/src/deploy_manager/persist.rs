//! The DeployManager's state files (history, ghosted versions, mode):
//! written atomically before a change is acknowledged.

use super::*;

impl DmState {
    pub(super) async fn persist_history(&mut self) {
        let storage = self.storage.clone();
        let history = self.history.clone();
        match tokio::task::spawn_blocking(move || storage.save_history(&history)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let error = crate::release_fetcher::error_chain(&e);
                tracing::error!(%error, "cannot save the history");
                self.last_error = Some(error);
            }
            Err(e) => tracing::error!(error = %e, "history save task failed"),
        }
    }

    /// Writes the ghosted list; a failure is recorded in `last_error` and
    /// answered as [`ActionError::Failed`] (a 5xx: not the caller's fault).
    pub(super) async fn persist_ghosted(&mut self) -> Result<(), ActionError> {
        let storage = self.storage.clone();
        let ghosted = self.ghosted.clone();
        let result = tokio::task::spawn_blocking(move || storage.save_ghosted(&ghosted)).await;
        self.state_written(result)
    }

    /// The outcome of a state write run on the blocking pool: a failure is
    /// logged, kept in `last_error` and answered as a 5xx.
    pub(super) fn state_written<E: std::error::Error>(
        &mut self,
        joined: Result<Result<(), E>, tokio::task::JoinError>,
    ) -> Result<(), ActionError> {
        let error = match joined {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => crate::release_fetcher::error_chain(&e),
            Err(e) => format!("the write task failed: {e}"),
        };
        tracing::error!(%error, "cannot save the state");
        self.last_error = Some(format!("cannot save the state: {error}"));
        Err(ActionError::Failed(error))
    }

    pub(super) async fn set_mode(&mut self, mode: Mode) -> Result<(), ActionError> {
        if let Mode::Manual { version } = &mode {
            if !self.history.iter().any(|e| &e.version == version) {
                return Err(ActionError::Invalid(format!(
                    "version {version} is not in the history; pin one of the deployed versions"
                )));
            }
            if self.ghosted.contains(version) {
                self.ghosted.retain(|v| v != version);
                self.persist_ghosted().await?;
            }
        }
        let storage = self.storage.clone();
        let m = mode.clone();
        let written = tokio::task::spawn_blocking(move || storage.save_mode(&m)).await;
        self.state_written(written)?;
        tracing::info!(?mode, "deployment mode changed");
        self.mode = mode;
        Ok(())
    }
}
