//! When a version is bad and what follows: crash loops inside the
//! rollback window, deployments not ready in time, start-first new
//! versions that fail before ready; ghosting; rolling an instance back to
//! its previous good version (its tarball fetched through a task).

use super::*;

impl DmState {
    /// A deployed instance that crash-loops inside its rollback window gets
    /// its version ghosted, even when the rollout has moved past it (a
    /// release that dies a few seconds after it looked ready).
    pub(super) async fn on_crash(&mut self, instance: u32, consecutive: u32) {
        let window = self.cfg.rollback_timeout;
        let limit = self.cfg.rollback_crashes;
        let Some(r) = self.recent.get_mut(&instance) else {
            return;
        };
        if r.since.elapsed() > window {
            self.recent.remove(&instance);
            return;
        }
        r.crashes = consecutive;
        if r.crashes <= limit {
            return;
        }
        let version = r.version.clone();
        let crashes = r.crashes;
        self.recent.remove(&instance);
        tracing::error!(instance, %version, crashes, "crash loop after deployment: ghosting the version");
        events::emit(
            &self.cfg.app,
            NewEvent::new(
                EventKind::CrashLoop,
                format!("crashed {crashes} times after its deployment"),
            )
            .instance(instance)
            .version(version.clone()),
        );
        self.ghost(&version, &format!("instance {instance} crash-looped"))
            .await;
        self.last_error = Some(format!(
            "version {version} rolled back: instance {instance} crashed {crashes} times after its deployment"
        ));
        if let Some(p) = &self.in_progress
            && p.instance == instance
            && p.kind != DeploymentKind::Rollback
        {
            self.in_progress = None;
        }
        if self.in_progress.is_none() {
            // The failing instance itself: rolled back, or stopped when it
            // has no previous version.
            self.rollback(instance, &version).await;
        }
        self.evaluate().await;
    }

    pub(super) async fn ghost(&mut self, version: &str, why: &str) {
        if !self.ghosted.iter().any(|v| v == version) {
            events::emit(
                &self.cfg.app,
                NewEvent::new(
                    EventKind::Ghosted,
                    format!("ghosted ({why}): it will not be deployed again automatically"),
                )
                .version(version),
            );
            self.ghosted.push(version.to_string());
            if let Err(e) = self.persist_ghosted().await {
                tracing::error!(error = %e, "cannot save the ghosted list");
            }
        }
        // Fleet: ghosted on every host.
        crate::fleet::ghosted(&self.cfg.app, version, why);
    }

    /// Roll back, one at a time, every instance that runs a ghosted
    /// version. Returns true when a rollback was started (or is needed but
    /// cannot start now).
    pub(super) async fn rollback_ghosted(&mut self) -> bool {
        if self.ghosted.is_empty() {
            return false;
        }
        for instance in 1..=self.cfg.replicas {
            let Some(monitor) = monitor(&self.cfg.app, instance) else {
                return true;
            };
            let Ok(status) = ractor::call_t!(monitor, |reply| InstanceMsg::Status { reply }, 1000)
            else {
                return true;
            };
            let Some(version) = status.version.clone() else {
                continue;
            };
            if !self.ghosted.contains(&version) {
                continue;
            }
            if let Mode::Manual { version: pinned } = &self.mode
                && pinned == &version
            {
                continue;
            }
            if self.previous_good(instance, &version).is_none() {
                // Nothing to roll back to: a running instance is left
                // alone (never stop a healthy instance for lack of an older
                // version); the failing one was stopped when it failed.
                continue;
            }
            self.rollback(instance, &version).await;
            return true;
        }
        false
    }

    /// Start-first: the new version of `instance` failed before it was
    /// ready; the old process never stopped, so nothing is rolled back.
    pub(super) async fn on_candidate_failed(
        &mut self,
        instance: u32,
        deploy_ref: &str,
        error: &str,
    ) {
        let Some(p) = self
            .in_progress
            .take_if(|p| p.instance == instance && p.deploy_ref == deploy_ref)
        else {
            return;
        };
        if p.kind == DeploymentKind::Rollback {
            tracing::error!(instance, version = %p.version, %error, "rollback's new process failed; the running one is kept");
            self.last_error = Some(format!(
                "rollback of instance {instance} to {} failed: {error}",
                p.version
            ));
            return;
        }
        tracing::error!(instance, version = %p.version, %error, "start-first: new version failed before it was ready; ghosting it");
        self.ghost(
            &p.version,
            &format!("instance {instance}: new version failed before it was ready: {error}"),
        )
        .await;
        self.last_error = Some(format!(
            "version {} ghosted: on instance {instance} it failed before it was ready ({error}); the old version kept serving",
            p.version
        ));
    }

    /// Start-first: ask the monitor to kill the new process and keep the
    /// old one (the answer is a `CandidateFailed`, ignored by then).
    pub(super) fn abort_candidate(
        &self,
        instance: u32,
        deploy_ref: &str,
        version: &str,
        why: &str,
    ) {
        if let Some(m) = monitor(&self.cfg.app, instance) {
            let _ = m.cast(InstanceMsg::AbortCandidate {
                deploy_ref: deploy_ref.to_string(),
                version: version.to_string(),
                why: why.to_string(),
            });
        }
    }

    /// Roll back the instance being deployed if it is clearly bad.
    pub(super) async fn check_rollback(&mut self) {
        let Some(p) = self.in_progress.as_ref() else {
            return;
        };
        let start_first = self.cfg.deploy_strategy == crate::config::DeployStrategy::StartFirst;
        if p.kind == DeploymentKind::Rollback {
            if p.started.elapsed() >= self.cfg.rollback_timeout {
                let instance = p.instance;
                if start_first {
                    self.abort_candidate(
                        instance,
                        &p.deploy_ref,
                        &p.version,
                        "rollback not ready in time",
                    );
                }
                tracing::error!(instance, version = %p.version, "rollback did not become ready in time; giving up");
                self.last_error = Some(format!(
                    "rollback of instance {instance} to {} did not become ready in time",
                    p.version
                ));
                self.in_progress = None;
            }
            return;
        }
        let timed_out = p.started.elapsed() >= self.cfg.rollback_timeout;
        let crash_loop = p.crashes > self.cfg.rollback_crashes;
        if !timed_out && !crash_loop {
            return;
        }
        let Some(p) = self.in_progress.take() else {
            return;
        };
        let why = if crash_loop {
            format!("{} crashes", p.crashes)
        } else {
            "not ready in time".to_string()
        };
        tracing::error!(instance = p.instance, version = %p.version, %why, "deployment unstable: rolling back and ghosting the version");
        if crash_loop {
            events::emit(
                &self.cfg.app,
                NewEvent::new(EventKind::CrashLoop, format!("{why} during its deployment"))
                    .instance(p.instance)
                    .version(p.version.clone()),
            );
        }
        self.ghost(&p.version, &format!("instance {}: {why}", p.instance))
            .await;
        if start_first && !crash_loop {
            // The old process still serves: kill the new one, nothing to
            // roll back on this instance.
            self.abort_candidate(p.instance, &p.deploy_ref, &p.version, &why);
            self.last_error = Some(format!(
                "version {} ghosted: instance {} {why}; the old version kept serving",
                p.version, p.instance
            ));
            return;
        }
        self.last_error = Some(format!(
            "version {} rolled back on instance {} ({why})",
            p.version, p.instance
        ));
        self.rollback(p.instance, &p.version).await;
    }

    /// The newest version of `instance`'s history that is neither `bad`
    /// nor ghosted.
    pub(super) fn previous_good(&self, instance: u32, bad: &str) -> Option<String> {
        previous_good(&self.history, &self.ghosted, instance, bad)
    }

    /// Deploy the previous good version of `instance` (kind `rollback`), or
    /// stop the instance when there is none.
    pub(super) async fn rollback(&mut self, instance: u32, bad: &str) {
        let previous = self.previous_good(instance, bad);
        let Some(monitor) = monitor(&self.cfg.app, instance) else {
            return;
        };
        let Some(previous) = previous else {
            tracing::error!(
                instance,
                "no previous version to roll back to; stopping the instance"
            );
            self.last_error = Some(format!(
                "version {bad} failed on instance {instance} and there is no previous version to roll back to"
            ));
            // Answered when it is stopped; nobody needs to wait for that.
            let (reply, _) = ractor::concurrency::oneshot();
            let _ = monitor.cast(InstanceMsg::Shutdown {
                reply: reply.into(),
            });
            return;
        };
        // The tarball comes from the fetcher through a task (`Ensured`);
        // no other step starts until this rollback has started.
        self.pending_rollback = Some(PendingRollback {
            instance,
            bad: bad.to_string(),
            previous: previous.clone(),
        });
        self.ensure(&previous);
    }

    /// Asks the fetcher for `version`'s tarball from a task; the answer
    /// comes back as `Ensured` (once per version in flight).
    pub(super) fn ensure(&mut self, version: &str) {
        if !self.ensuring.insert(version.to_string()) {
            return;
        }
        let Some(fetcher) = ractor::registry::where_is(release_fetcher::name(&self.cfg.app)) else {
            self.ensuring.remove(version);
            return;
        };
        let fetcher: ActorRef<FetcherMsg> = fetcher.into();
        let v = version.to_string();
        let version = version.to_string();
        crate::task::spawn_for(
            self.me.clone(),
            "asking the fetcher for a release",
            async move {
                ractor::call_t!(
                    fetcher,
                    |reply| FetcherMsg::Ensure { version: v, reply },
                    ENSURE_TIMEOUT_MS
                )
                .map_err(|e| release_fetcher::FetchError::NoAnswer(e.to_string()))?
            },
            move |result| DeployMsg::Ensured { version, result },
        );
    }

    pub(super) async fn on_ensured(
        &mut self,
        version: String,
        result: Result<std::path::PathBuf, release_fetcher::FetchError>,
    ) {
        self.ensuring.remove(&version);
        if self
            .pending_rollback
            .as_ref()
            .is_some_and(|p| p.previous == version)
            && let Some(p) = self.pending_rollback.take()
        {
            match result.clone() {
                Ok(tarball) => self.start_rollback(p, tarball),
                Err(e) => {
                    let e = crate::error::error_chain(&e);
                    self.last_error = Some(format!("rollback to {version}: {e}"));
                }
            }
        }
        if let Mode::Manual { version: pinned } = &self.mode
            && pinned == &version
        {
            match result {
                Ok(tarball) => self.pinned_tarball = Some((version, tarball)),
                Err(error) => {
                    let error = crate::error::error_chain(&error);
                    self.last_error = Some(format!("pinned version {version}: {error}"));
                }
            }
        }
        self.evaluate().await;
    }

    pub(super) fn start_rollback(&mut self, p: PendingRollback, tarball: std::path::PathBuf) {
        let PendingRollback {
            instance,
            bad,
            previous,
        } = p;
        let Some(monitor) = monitor(&self.cfg.app, instance) else {
            return;
        };
        let hash = self
            .history
            .iter()
            .find(|e| e.version == previous)
            .map(|e| e.hash.clone())
            .unwrap_or_default();
        tracing::warn!(instance, from = %bad, to = %previous, "rolling back");
        events::emit(
            &self.cfg.app,
            NewEvent::new(
                EventKind::Rollback,
                format!("rolling back from {bad} to {previous}"),
            )
            .instance(instance)
            .version(previous.clone()),
        );
        let target = Target {
            version: previous,
            hash,
            tarball,
            pre_commands: Vec::new(),
        };
        let deploy_ref = crate::storage::new_deploy_ref();
        self.start_deploy(
            &monitor,
            instance,
            &target,
            deploy_ref,
            DeploymentKind::Rollback,
        );
    }
}

/// The newest version in `history` (newest first) deployed on `instance`
/// that is neither `bad` nor ghosted: what a rollback goes back to.
pub(super) fn previous_good(
    history: &[HistoryEntry],
    ghosted: &[String],
    instance: u32,
    bad: &str,
) -> Option<String> {
    history
        .iter()
        .filter(|e| e.instance == instance)
        .map(|e| e.version.clone())
        .find(|v| v != bad && !ghosted.contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(instance: u32, version: &str) -> HistoryEntry {
        HistoryEntry {
            version: version.to_string(),
            hash: String::new(),
            instance,
            deployment: DeploymentKind::FullDeployment,
            deploy_ref: String::new(),
            inserted_at: String::new(),
        }
    }

    #[test]
    fn previous_good_is_the_newest_other_version_of_that_instance_not_ghosted() {
        // Newest first, as the DeployManager keeps it.
        let history = vec![
            entry(1, "0.4.0"),
            entry(2, "0.3.0"),
            entry(1, "0.3.0"),
            entry(1, "0.2.0"),
            entry(1, "0.1.0"),
        ];
        let ghosted = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: &[(u32, &str, &[&str], Option<&str>)] = &[
            (1, "0.4.0", &[], Some("0.3.0")),
            (1, "0.4.0", &["0.3.0"], Some("0.2.0")),
            (1, "0.4.0", &["0.3.0", "0.2.0", "0.1.0"], None),
            // The bad version is skipped wherever it is in the history.
            (1, "0.3.0", &[], Some("0.4.0")),
            (2, "0.3.0", &[], None),
            (3, "0.1.0", &[], None),
        ];
        for (instance, bad, g, want) in cases {
            assert_eq!(
                previous_good(&history, &ghosted(g), *instance, bad).as_deref(),
                *want,
                "instance {instance}, bad {bad}, ghosted {g:?}"
            );
        }
    }
}
