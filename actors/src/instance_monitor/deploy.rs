//! A full deployment's steps (unpack + pre-commands into `new/`, stop,
//! rotate folders, start) and the hot-upgrade branch.

use super::*;
impl MonitorState {
    pub(super) fn deploy(&mut self, myself: &ActorRef<InstanceMsg>, job: DeployJob) {
        crate::testhook::point("deploy_requested");
        if self.shut_down {
            tracing::info!(instance = self.instance, refused = %job.deploy_ref, "deployment refused: deployex is shutting down");
            return;
        }
        if let Some(current) = &self.deploying {
            tracing::warn!(instance = self.instance, busy = %current.deploy_ref, refused = %job.deploy_ref, "deployment refused: another one is running");
            return;
        }
        tracing::info!(instance = self.instance, version = %job.version, deploy_ref = %job.deploy_ref, "full deployment: preparing new/");
        self.deploy_ref = Some(job.deploy_ref.clone());
        self.deploying = Some(job.clone());
        self.set_phase(
            if job.pre_commands.is_empty() {
                InstanceState::Deploying
            } else {
                InstanceState::PreCommands
            },
            "deployment",
        );
        let cfg = self.cfg.clone();
        let instance = self.instance;
        let service = self.service.clone();
        let env = self.env();
        let me = myself.clone();
        let running = self
            .version
            .clone()
            .filter(|_| self.process.is_some() && job.kind != DeploymentKind::Rollback)
            .map(|version| (version, self.current_dir()));
        let deploy_ref = job.deploy_ref.clone();
        crate::task::spawn_for(
            me,
            "preparing the deployment",
            async move { prepare(&cfg, instance, &service, &job, env, running).await },
            move |result| InstanceMsg::Prepared { deploy_ref, result },
        );
    }

    pub(super) fn on_prepared(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        deploy_ref: String,
        result: Result<Prepared, StepError>,
    ) {
        let Some(job) = self.deploying.clone() else {
            return;
        };
        if job.deploy_ref != deploy_ref {
            return;
        }
        if let Err(step) = &result {
            let pre_commands_failed = matches!(step, StepError::PreCommand { .. });
            let error = step.to_string();
            tracing::error!(instance = self.instance, %deploy_ref, %error, "deployment preparation failed; the running version is kept");
            self.deploying = None;
            self.last_error = Some(error.clone());
            self.set_phase(
                if pre_commands_failed {
                    InstanceState::PreCommandsFailed
                } else if self.process.is_some() {
                    InstanceState::Running
                } else {
                    InstanceState::Stopped
                },
                "preparation failed",
            );
            if let Some(dm) = ractor::registry::where_is(deploy_manager::name(&self.cfg.app)) {
                let _ = dm.send_message(DeployMsg::DeployFailed {
                    instance: self.instance,
                    deploy_ref,
                    error,
                });
            }
            return;
        }
        let prepared = match result {
            Ok(p) => p,
            Err(_) => unreachable!("handled above"),
        };
        let from = self.version.clone().unwrap_or_default();
        if prepared.hot && self.process.is_some() {
            tracing::info!(instance = self.instance, %deploy_ref, from = %from, to = %job.version, reason = %prepared.reason, "HOT UPGRADE version detected");
            self.set_phase(InstanceState::Deploying, "hot upgrade");
            let rpc = crate::otp_node_watcher::WatcherRpc {
                node: self.node.clone(),
            };
            let current = self.current_dir();
            let new = self.service.join("new");
            let app = self.cfg.app.clone();
            let me = myself.clone();
            let deploy_ref = job.deploy_ref.clone();
            let user = self.cfg.app_user.clone();
            crate::task::spawn_for(
                me,
                "the hot upgrade",
                async move {
                    let window = match &user {
                        Some(user) => match UpgradeWindow::open(user, &current).await {
                            Ok(w) => Some(w),
                            Err(e) => return Err(e),
                        },
                        None => None,
                    };
                    let result = crate::upgrade::hot_upgrade(
                        &rpc,
                        &current,
                        &job.tarball,
                        &app,
                        &from,
                        &job.version,
                        Duration::from_secs(60),
                    )
                    .await;
                    let closed = match window {
                        Some(w) => w.close().await,
                        None => Ok(()),
                    };
                    let result = result
                        .map(|report| {
                            format!(
                                "{} -> {} in {} ms (relup {:?})",
                                report.from,
                                report.to,
                                report.total.as_millis(),
                                report.relup
                            )
                        })
                        .map_err(|e| StepError::Upgrade(crate::release_fetcher::error_chain(&e)))
                        .and_then(|summary| closed.map(|()| summary));
                    if result.is_ok() {
                        let _ =
                            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(new)).await;
                    }
                    result
                },
                move |result| InstanceMsg::HotUpgraded { deploy_ref, result },
            );
            return;
        }
        tracing::info!(instance = self.instance, %deploy_ref, from = %from, to = %job.version, reason = %prepared.reason, strategy = self.cfg.deploy_strategy.as_str(), "full deployment");
        if self.process.is_some() && job.kind != DeploymentKind::Rollback {
            // A hot upgrade was considered and ruled out: say why (a
            // dependency without an appup restarts the instance).
            events::emit(
                &self.cfg.app,
                NewEvent::new(
                    EventKind::HotUpgradeSkipped,
                    format!("full deployment from {from}: {}", prepared.reason),
                )
                .instance(self.instance)
                .version(job.version.clone()),
            );
        }
        if self.cfg.deploy_strategy == crate::config::DeployStrategy::StartFirst
            && self.process.is_some()
            && self.stopping.is_none()
        {
            self.start_first(myself);
        } else {
            self.full_deploy(myself);
        }
    }

    pub(super) fn full_deploy(&mut self, myself: &ActorRef<InstanceMsg>) {
        self.set_phase(InstanceState::Deploying, "stopping the old version");
        match self.process.clone() {
            Some(handle) => self.stop_process(myself, handle, StopReason::Deploy),
            None => self.rotate(myself),
        }
    }

    pub(super) fn on_hot_upgraded(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        deploy_ref: String,
        result: Result<String, StepError>,
    ) {
        let Some(job) = self.deploying.clone() else {
            return;
        };
        if job.deploy_ref != deploy_ref {
            return;
        }
        match result {
            Ok(summary) => {
                tracing::info!(instance = self.instance, %deploy_ref, %summary, "release upgrade executed with success");
                self.deploying = None;
                self.version = crate::store::release_version(&self.current_dir());
                self.last_deployment = Some(DeploymentKind::HotUpgrade);
                self.last_error = None;
                self.set_phase(
                    if self.process.is_some() {
                        InstanceState::Running
                    } else {
                        InstanceState::CrashBackoff
                    },
                    "hot upgrade done",
                );
                if let Some(dm) = ractor::registry::where_is(deploy_manager::name(&self.cfg.app)) {
                    let _ = dm.send_message(DeployMsg::Deployed {
                        instance: self.instance,
                        version: job.version.clone(),
                        hash: job.hash.clone(),
                        deploy_ref: job.deploy_ref.clone(),
                        kind: DeploymentKind::HotUpgrade,
                    });
                    if self.process.is_some() {
                        let _ = dm.send_message(DeployMsg::InstanceReady {
                            instance: self.instance,
                            version: self.version.clone(),
                        });
                    }
                }
            }
            Err(error) => {
                tracing::error!(instance = self.instance, %deploy_ref, %error, "hot upgrade failed; falling back to a full deployment");
                events::emit(
                    &self.cfg.app,
                    NewEvent::new(
                        EventKind::HotUpgradeFailed,
                        format!("{error}; a full deployment follows"),
                    )
                    .instance(self.instance)
                    .version(job.version.clone()),
                );
                self.last_error = Some(format!("hot upgrade failed: {error}"));
                self.full_deploy(myself);
            }
        }
    }

    pub(super) fn rotate(&mut self, myself: &ActorRef<InstanceMsg>) {
        let Some(job) = self.deploying.clone() else {
            return;
        };
        let service = self.service.clone();
        let me = myself.clone();
        let deploy_ref = job.deploy_ref;
        crate::task::spawn_for(
            me,
            "rotating the service folders",
            async move {
                tokio::task::spawn_blocking(move || rotate_folders(&service))
                    .await
                    .map_err(|e| StepError::Task(format!("rotation task failed: {e}")))
                    .and_then(|r| r)
            },
            move |result| InstanceMsg::Rotated { deploy_ref, result },
        );
    }

    pub(super) fn on_rotated(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        deploy_ref: String,
        result: Result<(), StepError>,
    ) {
        let Some(job) = self.deploying.take() else {
            return;
        };
        if job.deploy_ref != deploy_ref {
            self.deploying = Some(job);
            return;
        }
        if let Err(error) = result {
            let error = error.to_string();
            tracing::error!(instance = self.instance, %deploy_ref, %error, "folder rotation failed");
            self.last_error = Some(error.clone());
            if let Some(dm) = ractor::registry::where_is(deploy_manager::name(&self.cfg.app)) {
                let _ = dm.send_message(DeployMsg::DeployFailed {
                    instance: self.instance,
                    deploy_ref,
                    error,
                });
            }
            // Start whatever `current/` holds now.
            self.start(myself);
            return;
        }
        self.consecutive_crashes = 0;
        self.last_deployment = Some(job.kind);
        self.next_start_reason = Some(RestartReason::Deploy);
        self.start(myself);
        if let Some(dm) = ractor::registry::where_is(deploy_manager::name(&self.cfg.app)) {
            let _ = dm.send_message(DeployMsg::Deployed {
                instance: self.instance,
                version: job.version.clone(),
                hash: job.hash.clone(),
                deploy_ref: job.deploy_ref.clone(),
                kind: job.kind,
            });
        }
    }
}

/// Unpack the tarball into `new/` and run the pre-commands from there.
pub(super) async fn prepare(
    cfg: &EngineConfig,
    instance: u32,
    service: &Path,
    job: &DeployJob,
    env: Vec<(String, String)>,
    running: Option<(String, PathBuf)>,
) -> Result<Prepared, StepError> {
    let new = service.join("new");
    let tarball = job.tarball.clone();
    let app = cfg.app.clone();
    let new2 = new.clone();
    tokio::task::spawn_blocking(move || {
        if new2.exists() {
            std::fs::remove_dir_all(&new2)
                .map_err(|e| StepError::Files(format!("cannot remove {}: {e}", new2.display())))?;
        }
        if let Some(parent) = new2.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                StepError::Files(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        crate::store::unpack_release(
            &tarball,
            &new2,
            &app,
            &crate::store::UnpackLimits::default(),
        )
        .map(|_| ())
        .map_err(|e| {
            StepError::Files(format!(
                "unpack: {}",
                crate::release_fetcher::error_chain(&e)
            ))
        })
    })
    .await
    .map_err(|e| StepError::Task(format!("unpack task failed: {e}")))??;
    if let Some(user) = cfg.app_user.clone() {
        // The pre-commands run as the app user from new/; a full
        // deployment rotates it to current/ as it is.
        let (var_dir, service, new2) = (cfg.var_dir.clone(), service.to_path_buf(), new.clone());
        tokio::task::spawn_blocking(move || {
            user.prepare_service(&var_dir, &service)
                .and_then(|()| user.seal_tree(&new2))
                .map_err(|e| {
                    StepError::Files(format!("cannot give new/ to app user {}: {e}", user.name))
                })
        })
        .await
        .map_err(|e| StepError::Task(format!("ownership task failed: {e}")))??;
    }
    crate::testhook::point("new_unpacked");
    crate::release_kind::check_release(&new, &cfg.app)
        .map_err(|e| StepError::Refused(e.to_string()))?;

    let program = new.join("bin").join(&cfg.app);
    let kind = crate::release_kind::detect(&new, &cfg.app);
    let mut env = env;
    if kind == Some(crate::release_kind::ReleaseKind::Relx) {
        let node = crate::release_kind::pre_command_node(&cfg.app, instance);
        env.retain(|(k, _)| k != "RELEASE_NODE");
        env.push(("RELEASE_NODE".to_string(), node));
    }
    for (n, command) in job.pre_commands.iter().enumerate() {
        let command = command.trim();
        let (sub, rest) = match command.split_once(char::is_whitespace) {
            Some((sub, rest)) => (sub, Some(rest.trim())),
            None => (command, None),
        };
        let args = crate::release_kind::pre_command_args(kind, &new, sub, rest);
        tracing::info!(instance, deploy_ref = %job.deploy_ref, command, "running pre-command");
        let outcome = process::run_command(
            &program,
            &args,
            &new,
            &env,
            &cfg.log_file(instance, LogStream::Stdout),
            &cfg.log_file(instance, LogStream::Stderr),
            cfg.pre_command_timeout,
            cfg.app_user.as_ref(),
        )
        .await;
        match outcome {
            Ok(info) if info.code == Some(0) => {}
            Ok(info) => {
                return Err(StepError::PreCommand {
                    n: n + 1,
                    command: command.to_string(),
                    what: format!("failed: {info:?}"),
                });
            }
            Err(e) => {
                return Err(StepError::PreCommand {
                    n: n + 1,
                    command: command.to_string(),
                    what: format!("could not run: {e}"),
                });
            }
        }
    }
    crate::testhook::point("pre_commands_done");
    let decision = match running {
        None => crate::upgrade::Decision::FullDeployment {
            reason: "no running instance to upgrade".to_string(),
        },
        Some((running, current)) => {
            let app = cfg.app.clone();
            let to = job.version.clone();
            let new2 = new.clone();
            tokio::task::spawn_blocking(move || {
                crate::upgrade::detect(&new2, &current, &app, &to, &running)
            })
            .await
            .map_err(|e| StepError::Task(format!("detection task failed: {e}")))?
        }
    };
    Ok(Prepared {
        hot: decision.is_hot(),
        reason: decision.reason().to_string(),
    })
}

/// The time a hot upgrade of a node running as the app user may write its
/// release's `lib/` and `releases/` (`release_handler` unpacks and
/// installs from inside the node). [`UpgradeWindow::close`] gives them
/// back to deployex; dropping an unclosed window (the task was aborted)
/// does it on the blocking pool.
struct UpgradeWindow {
    user: crate::app_user::AppUser,
    root: PathBuf,
    closed: bool,
}

impl UpgradeWindow {
    async fn open(
        user: &crate::app_user::AppUser,
        root: &Path,
    ) -> Result<UpgradeWindow, StepError> {
        let window = UpgradeWindow {
            user: user.clone(),
            root: root.to_path_buf(),
            closed: false,
        };
        let (u, r) = (user.clone(), root.to_path_buf());
        tokio::task::spawn_blocking(move || u.open_for_upgrade(&r))
            .await
            .map_err(|e| StepError::Task(format!("ownership task failed: {e}")))?
            .map_err(|e| {
                StepError::Files(format!(
                    "cannot open the release to app user {} for the upgrade: {e}",
                    user.name
                ))
            })?;
        Ok(window)
    }

    async fn close(mut self) -> Result<(), StepError> {
        self.closed = true;
        let (u, r) = (self.user.clone(), self.root.clone());
        tokio::task::spawn_blocking(move || u.close_after_upgrade(&r))
            .await
            .map_err(|e| StepError::Task(format!("ownership task failed: {e}")))?
            .map_err(|e| {
                StepError::Files(format!(
                    "cannot give the release back to deployex after the upgrade: {e}"
                ))
            })
    }
}

impl Drop for UpgradeWindow {
    fn drop(&mut self) {
        if !self.closed {
            let (u, r) = (self.user.clone(), self.root.clone());
            let close = move || {
                if let Err(e) = u.close_after_upgrade(&r) {
                    tracing::error!(root = %r.display(), error = %e, "cannot give the release back to deployex");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(close)),
                Err(_) => close(),
            }
        }
    }
}
