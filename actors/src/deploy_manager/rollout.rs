//! The rollout: which version each instance should run, the next step
//! (one instance at a time, 1 → N), the retry delay after a failed
//! preparation, and an operator's restart under the same lock.

use super::*;

/// How long a task waits for the fetcher's `Ensure` (a download).
pub(super) const ENSURE_TIMEOUT_MS: u64 = 600_000;

pub(super) fn retry_delay(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1u32 << attempts.min(10))
        .min(Duration::from_secs(300))
}

/// What to deploy.
pub(super) struct Target {
    pub(super) version: String,
    pub(super) hash: String,
    pub(super) tarball: std::path::PathBuf,
    pub(super) pre_commands: Vec<String>,
}

impl DmState {
    pub(super) async fn target(&mut self) -> Option<Target> {
        let fetcher: ActorRef<FetcherMsg> =
            ractor::registry::where_is(release_fetcher::name(&self.cfg.app))?.into();
        match self.mode.clone() {
            Mode::Manual { version } => {
                self.desired = Some(version.clone());
                let tarball = match &self.pinned_tarball {
                    Some((v, tarball)) if v == &version && tarball.is_file() => tarball.clone(),
                    _ => {
                        // Asked from a task; `Ensured` evaluates again.
                        self.ensure(&version);
                        return None;
                    }
                };
                let hash = self
                    .history
                    .iter()
                    .find(|e| e.version == version)
                    .map(|e| e.hash.clone())
                    .unwrap_or_default();
                Some(Target {
                    version,
                    hash,
                    tarball,
                    pre_commands: Vec::new(),
                })
            }
            Mode::Automatic => {
                let status =
                    ractor::call_t!(fetcher, |reply| FetcherMsg::Status { reply }, 2000).ok()?;
                let ready = status.ready?;
                self.desired = Some(ready.release.version.clone());
                if self.ghosted.contains(&ready.release.version) {
                    return None;
                }
                Some(Target {
                    version: ready.release.version,
                    hash: ready.release.hash,
                    tarball: ready.tarball,
                    pre_commands: ready.release.pre_commands,
                })
            }
        }
    }

    /// The instance an operator's restart is waiting for, if any; the lock
    /// lapses after the rollback timeout (an instance that never comes back
    /// must not block deployments forever).
    pub(super) fn restart_lock(&mut self) -> Option<u32> {
        let (instance, since) = self.restarting?;
        if since.elapsed() < self.cfg.rollback_timeout {
            return Some(instance);
        }
        tracing::warn!(
            instance,
            "restarted instance not ready in time; deployments resume"
        );
        self.restarting = None;
        None
    }

    /// An operator's restart, under the deploy lock.
    pub(super) async fn restart(&mut self, instance: u32) -> Result<(), ActionError> {
        if let Some(p) = &self.pending_rollback {
            return Err(ActionError::Busy(format!(
                "a rollback of instance {} to {} is starting: try again when it ends",
                p.instance, p.previous
            )));
        }
        if let Some(p) = &self.in_progress {
            return Err(ActionError::Busy(format!(
                "a deployment is in progress ({:?} of {} on instance {}, started {} s ago): try again when it ends",
                p.kind,
                p.version,
                p.instance,
                p.started.elapsed().as_secs()
            )));
        }
        if let Some(other) = self.restart_lock()
            && other != instance
        {
            return Err(ActionError::Busy(format!(
                "instance {other} is restarting: try again when it is ready"
            )));
        }
        let monitor = monitor(&self.cfg.app, instance).ok_or_else(|| {
            ActionError::Unavailable(format!("instance {instance} is not supervised right now"))
        })?;
        match ractor::call_t!(monitor, |reply| InstanceMsg::Restart { reply }, 2000) {
            Ok(Ok(())) => {
                self.restarting = Some((instance, Instant::now()));
                Ok(())
            }
            Ok(Err(refused)) => Err(refused),
            Err(e) => {
                tracing::warn!(instance, error = %e, "instance monitor did not answer a restart");
                Err(ActionError::Timeout)
            }
        }
    }

    /// Start the next deployment step, if any.
    pub(super) async fn evaluate(&mut self) {
        if self.in_progress.is_some() || self.pending_rollback.is_some() {
            return;
        }
        if self.restart_lock().is_some() {
            return;
        }
        if self.rollback_ghosted().await {
            return;
        }
        let Some(target) = self.target().await else {
            return;
        };
        for instance in 1..=self.cfg.replicas {
            let Some(monitor) = monitor(&self.cfg.app, instance) else {
                return;
            };
            let Ok(status) = ractor::call_t!(monitor, |reply| InstanceMsg::Status { reply }, 1000)
            else {
                return;
            };
            if status.version.as_deref() == Some(target.version.as_str()) {
                if status.state == InstanceState::Running {
                    continue;
                }
                // On the desired version but not ready (yet): wait for it.
                return;
            }
            if let Some((_, not_before)) = self.failures.get(&(instance, target.version.clone()))
                && Instant::now() < *not_before
            {
                return;
            }
            // Fleet: no deployment step without a slot for this version.
            if !crate::fleet::may_deploy(&self.cfg.app, &target.version) {
                return;
            }
            let deploy_ref = crate::storage::new_deploy_ref();
            tracing::info!(instance, from = status.version.as_deref().unwrap_or("<none>"), to = %target.version, %deploy_ref, "update needed: full deployment");
            self.start_deploy(
                &monitor,
                instance,
                &target,
                deploy_ref,
                DeploymentKind::FullDeployment,
            );
            return;
        }
        // Fleet: every instance runs the target and is ready.
        crate::fleet::rolled_out(&self.cfg.app, &target.version);
    }

    pub(super) fn start_deploy(
        &mut self,
        monitor: &ActorRef<InstanceMsg>,
        instance: u32,
        target: &Target,
        deploy_ref: String,
        kind: DeploymentKind,
    ) {
        let job = DeployJob {
            version: target.version.clone(),
            hash: target.hash.clone(),
            deploy_ref: deploy_ref.clone(),
            tarball: target.tarball.clone(),
            pre_commands: target.pre_commands.clone(),
            kind,
        };
        if kind != DeploymentKind::Rollback {
            events::emit(
                &self.cfg.app,
                NewEvent::new(
                    EventKind::DeployStarted,
                    format!("deploying ({deploy_ref})"),
                )
                .instance(instance)
                .version(target.version.clone()),
            );
        }
        if monitor.cast(InstanceMsg::Deploy { job }).is_ok() {
            self.in_progress = Some(InProgress {
                instance,
                version: target.version.clone(),
                deploy_ref,
                kind,
                started: Instant::now(),
                crashes: 0,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_preparation_is_retried_later_and_later_up_to_five_minutes() {
        let base = Duration::from_millis(5000);
        let cases = [
            (0, 5_000),
            (1, 10_000),
            (2, 20_000),
            (5, 160_000),
            (6, 300_000),
            (10, 300_000),
            (1000, 300_000),
        ];
        for (attempts, ms) in cases {
            assert_eq!(
                retry_delay(base, attempts),
                Duration::from_millis(ms),
                "attempt {attempts}"
            );
        }
        // A short store interval keeps its own scale.
        assert_eq!(
            retry_delay(Duration::from_millis(200), 3),
            Duration::from_millis(1600)
        );
    }
}
