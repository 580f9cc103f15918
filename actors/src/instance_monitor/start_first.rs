//! Start-first deployments (`DEPLOYEX_DEPLOY_STRATEGY=start_first`): the
//! new version starts in the instance's other slot (its own folder and
//! node name) on the pool's spare port while the old process keeps
//! serving; the old process is stopped only once the new one is ready.
//!
//! Steps: `new/` prepared as for any deployment → moved into the other
//! slot's `current/` (a task: [`place_candidate`]) → the monitor moves to
//! that slot and starts the new process, keeping the old one in a
//! [`Switch`] → ready: the placement is recorded (atomically, before
//! anything else), `Deployed` goes to the DeployManager and the old process
//! is stopped gracefully in a task → or it exits / is aborted before ready:
//! it is killed, the monitor goes back to the old process as if nothing
//! happened, and the DeployManager is told (`CandidateFailed`: the version
//! is ghosted, nothing is rolled back since nothing moved).
//!
//! Invariants:
//! - At most two processes of an instance exist, and only during a switch;
//!   at most one instance switches at a time (the DeployManager's rollout),
//!   so at most `replicas + 1` BEAMs of the app run
//!   (`tests/deploy_strategy.rs`: `start_first_rolls_without_losing_capacity`).
//! - The slot record changes only when the new process is ready: a deployex
//!   killed before that adopts the old process and stops the new one as a
//!   stray at boot (`lifecycle::boot`); killed after, it adopts the new one
//!   and stops the old (`a_deployex_killed_mid_switch_converges`).

use super::*;
use crate::config::Slot;

/// A start-first deployment whose new process is not ready yet.
pub(crate) struct Switch {
    job: DeployJob,
    /// Where the old process lives.
    slot: Slot,
    node: String,
    port: u16,
    service: PathBuf,
    liveness: Option<Arc<NodeSpec>>,
    version: Option<String>,
    release_kind: Option<crate::release_kind::ReleaseKind>,
    last_deployment: Option<DeploymentKind>,
    old: Option<OldProcess>,
}

/// The old process while the new one boots.
struct OldProcess {
    handle: Arc<ProcessHandle>,
    generation: u64,
    started_at: Option<Instant>,
    ready_since: Option<Instant>,
    boot: Option<BootPhase>,
    adopted: bool,
    otp_connected: bool,
    /// It exited meanwhile (its exit carries its old generation).
    exited: bool,
}

/// Stopping the old process after a switch (or at shutdown).
pub(crate) struct OldStop {
    handle: Arc<ProcessHandle>,
    plan: StopPlan,
    service: PathBuf,
    node: String,
}

impl OldStop {
    /// Graceful stop (`init:stop()`, SIGTERM, SIGKILL after the grace),
    /// then its pid file and its node's link go.
    pub(crate) async fn run(self) {
        self.plan.run(&self.handle).await;
        slot::forget_pid(&self.service);
        if let Some(w) = ractor::registry::where_is(otp_node_watcher::NAME) {
            let _ = w.send_message(WatcherMsg::Unwatch { node: self.node });
        }
    }
}

impl Switch {
    /// How to stop the old process, if it still runs.
    pub(crate) fn into_old_stop(self) -> Option<OldStop> {
        let old = self.old.filter(|o| !o.exited)?;
        Some(OldStop {
            handle: old.handle,
            plan: StopPlan {
                node: self.node.clone(),
                grace: Duration::ZERO,
                kill: false,
                was_ready: true,
                otp: true,
            },
            service: self.service,
            node: self.node,
        })
    }
}

impl MonitorState {
    /// A full deployment with the process running: start-first when so
    /// configured and a spare port exists, else stop-first.
    pub(super) fn start_first(&mut self, myself: &ActorRef<InstanceMsg>) {
        let Some(job) = self.deploying.clone() else {
            return;
        };
        if slot::spare_port(&self.cfg, self.instance, self.port).is_none() {
            tracing::warn!(
                instance = self.instance,
                pool = ?self.cfg.port_pool(),
                "no spare port in the pool (slot records disagree); this deployment stops first"
            );
            self.full_deploy(myself);
            return;
        }
        self.set_phase(
            InstanceState::Deploying,
            "placing the new version in the other slot",
        );
        let new = self.service.join("new");
        let target = self.cfg.slot_service_dir(self.instance, self.slot.other());
        let deploy_ref = job.deploy_ref;
        crate::task::spawn_for(
            myself.clone(),
            "placing the new version",
            async move {
                tokio::task::spawn_blocking(move || place_candidate(&new, &target))
                    .await
                    .map_err(|e| StepError::Task(format!("placement task failed: {e}")))
                    .and_then(|r| r)
            },
            move |result| InstanceMsg::CandidatePlaced { deploy_ref, result },
        );
    }

    pub(super) fn on_candidate_placed(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        deploy_ref: String,
        result: Result<(), StepError>,
    ) {
        let Some(job) = self.deploying.clone() else {
            return;
        };
        if job.deploy_ref != deploy_ref || self.shut_down {
            return;
        }
        if let Err(error) = result {
            let error = error.to_string();
            tracing::error!(instance = self.instance, %deploy_ref, %error, "cannot place the new version; the running one is kept");
            self.deploying = None;
            self.last_error = Some(error.clone());
            self.set_phase(
                if self.process.is_some() {
                    InstanceState::Running
                } else {
                    InstanceState::Stopped
                },
                "placement failed",
            );
            tell_dm(
                &self.cfg.app,
                DeployMsg::DeployFailed {
                    instance: self.instance,
                    deploy_ref,
                    error,
                },
            );
            return;
        }
        let Some(port) = slot::spare_port(&self.cfg, self.instance, self.port) else {
            // Cannot happen between `start_first` and here (one rollout
            // at a time), but never start two processes on one port.
            self.deploying = None;
            self.set_phase(InstanceState::Running, "no spare port");
            tell_dm(
                &self.cfg.app,
                DeployMsg::DeployFailed {
                    instance: self.instance,
                    deploy_ref,
                    error: "no spare port in the pool".to_string(),
                },
            );
            return;
        };
        let old = self.process.take().map(|handle| OldProcess {
            handle,
            generation: self.generation,
            started_at: self.started_at,
            ready_since: self.ready_since,
            boot: self.boot,
            adopted: self.adopted,
            otp_connected: self.otp_connected,
            exited: false,
        });
        if old.is_some()
            && let Some(w) = ractor::registry::where_is(otp_node_watcher::NAME)
        {
            // Keep the old node's link (its stop goes over it) without
            // liveness verdicts: it is about to be stopped on purpose.
            let _ = w.send_message(WatcherMsg::Watch {
                node: self.node.clone(),
                liveness: None,
            });
        }
        let new_slot = self.slot.other();
        let new_node = self.cfg.slot_node_name(self.instance, new_slot);
        self.switch = Some(Switch {
            job: job.clone(),
            slot: self.slot,
            node: std::mem::replace(&mut self.node, new_node),
            port: std::mem::replace(&mut self.port, port),
            service: std::mem::replace(
                &mut self.service,
                self.cfg.slot_service_dir(self.instance, new_slot),
            ),
            liveness: self.liveness.take(),
            version: self.version.clone(),
            release_kind: self.release_kind,
            last_deployment: self.last_deployment,
            old,
        });
        self.slot = new_slot;
        self.liveness = liveness_spec(&self.cfg, myself, &self.node, self.port);
        tracing::info!(instance = self.instance, %deploy_ref, node = %self.node, port = self.port, version = %job.version, "start-first: starting the new version beside the old one");
        self.consecutive_crashes = 0;
        self.next_start_reason = Some(RestartReason::Deploy);
        self.start(myself);
        crate::testhook::point("candidate_spawned");
        if self.process.is_none() {
            let error = self
                .last_error
                .clone()
                .unwrap_or_else(|| "the new version could not start".to_string());
            self.candidate_failed(myself, error);
        }
    }

    /// The new process is ready: record the switch, report the deployment,
    /// stop the old process.
    pub(super) fn switch_over(&mut self, myself: &ActorRef<InstanceMsg>) {
        let Some(switch) = self.switch.take() else {
            return;
        };
        let placed = slot::Placement {
            slot: self.slot,
            port: self.port,
        };
        if let Err(e) = slot::write(&self.cfg, self.instance, placed) {
            // The new process runs; a next deployex would start from the
            // old slot and deploy again. Said loudly, nothing else to do.
            tracing::error!(instance = self.instance, error = %e, "cannot record the switch to the new slot");
        }
        crate::testhook::point("switched");
        let job = switch.job.clone();
        tracing::info!(instance = self.instance, deploy_ref = %job.deploy_ref, node = %self.node, port = self.port, from_port = switch.port, "start-first: new version ready; stopping the old one");
        self.deploying = None;
        self.last_deployment = Some(job.kind);
        tell_dm(
            &self.cfg.app,
            DeployMsg::Deployed {
                instance: self.instance,
                version: job.version.clone(),
                hash: job.hash.clone(),
                deploy_ref: job.deploy_ref.clone(),
                kind: job.kind,
            },
        );
        let old_service = switch.service.clone();
        let old_node = switch.node.clone();
        let generation = self.generation;
        match switch.into_old_stop() {
            Some(mut stop) => {
                stop.plan.grace = self.cfg.stop_grace;
                stop.plan.otp = self.cfg.otp_readiness;
                crate::task::spawn_for(
                    myself.clone(),
                    "stopping the old process",
                    async move {
                        stop.run().await;
                        Ok::<_, crate::task::TaskPanic>(())
                    },
                    move |_| InstanceMsg::OldStopped { generation },
                );
            }
            None => {
                slot::forget_pid(&old_service);
                if let Some(w) = ractor::registry::where_is(otp_node_watcher::NAME) {
                    let _ = w.send_message(WatcherMsg::Unwatch { node: old_node });
                }
                let _ = myself.cast(InstanceMsg::OldStopped { generation });
            }
        }
    }

    /// The new process failed (exited, could not start, or aborted): kill
    /// it, go back to the old process, tell the DeployManager.
    pub(super) fn candidate_failed(&mut self, myself: &ActorRef<InstanceMsg>, error: String) {
        let Some(switch) = self.switch.take() else {
            return;
        };
        tracing::error!(instance = self.instance, deploy_ref = %switch.job.deploy_ref, %error, "start-first: the new version failed; the old process keeps serving");
        if let Some(handle) = self.process.take() {
            let pidfile = self.pidfile();
            tokio::spawn(async move {
                process::kill_group(&handle).await;
                let _ = std::fs::remove_file(pidfile);
            });
        }
        if let Some(w) = ractor::registry::where_is(otp_node_watcher::NAME) {
            let _ = w.send_message(WatcherMsg::Unwatch {
                node: self.node.clone(),
            });
        }
        self.slot = switch.slot;
        self.node = switch.node;
        self.port = switch.port;
        self.service = switch.service;
        self.liveness = switch.liveness;
        self.version = switch.version;
        self.release_kind = switch.release_kind;
        self.last_deployment = switch.last_deployment;
        self.deploying = None;
        self.next_start_reason = None;
        self.last_error = Some(format!("start-first: {error}"));
        match switch.old.filter(|o| !o.exited) {
            Some(old) => {
                self.process = Some(old.handle);
                self.generation = old.generation;
                self.started_at = old.started_at;
                self.ready_since = old.ready_since;
                self.checks_since = None;
                self.boot = old.boot;
                self.adopted = old.adopted;
                self.otp_connected = old.otp_connected;
                self.set_phase(
                    if old.ready_since.is_some() || old.adopted {
                        InstanceState::Running
                    } else {
                        InstanceState::Starting
                    },
                    "new version failed; old process kept",
                );
                self.tell_watcher(false);
            }
            None => {
                // The old process died meanwhile: start it again.
                self.set_phase(InstanceState::Stopped, "new version failed");
                self.start(myself);
            }
        }
        tell_dm(
            &self.cfg.app,
            DeployMsg::CandidateFailed {
                instance: self.instance,
                deploy_ref: switch.job.deploy_ref,
                error,
            },
        );
    }

    /// The DeployManager gave up waiting for the new process.
    pub(super) fn abort_candidate(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        deploy_ref: &str,
        version: String,
        why: String,
    ) {
        if self
            .switch
            .as_ref()
            .is_some_and(|s| s.job.deploy_ref == deploy_ref)
        {
            self.candidate_failed(myself, why);
            return;
        }
        // No new process beside an old one: this deployment went
        // stop-first (nothing was running) and is rolled back as such.
        if self.deploy_ref.as_deref() == Some(deploy_ref) {
            tell_dm(
                &self.cfg.app,
                DeployMsg::NoCandidate {
                    instance: self.instance,
                    bad: version,
                },
            );
        }
    }

    /// An exit of an older process: during a switch, the old process's.
    pub(super) fn on_old_exit(&mut self, generation: u64, info: &ExitInfo) {
        if let Some(old) = self
            .switch
            .as_mut()
            .and_then(|s| s.old.as_mut())
            .filter(|o| o.generation == generation)
        {
            tracing::warn!(instance = self.instance, exit = ?info, "the old process exited while the new version boots");
            old.exited = true;
        }
    }
}

fn tell_dm(app: &str, msg: DeployMsg) {
    if let Some(dm) = ractor::registry::where_is(deploy_manager::name(app)) {
        let _ = dm.send_message(msg);
    }
}

/// Move the prepared `new/` into the other slot's `current/` (its
/// `current/` → `previous/`), after stopping anything that still runs from
/// that slot (a half-started new version of a deployex that died).
fn place_candidate(new: &Path, target: &Path) -> Result<(), StepError> {
    let files = StepError::Files;
    if !new.is_dir() {
        return Err(files(format!("{} is missing", new.display())));
    }
    if target.is_dir() {
        stop_strays(target, None);
    }
    std::fs::create_dir_all(target)
        .map_err(|e| files(format!("cannot create {}: {e}", target.display())))?;
    slot::forget_pid(target);
    let staged = target.join("new");
    if staged.exists() {
        std::fs::remove_dir_all(&staged)
            .map_err(|e| files(format!("cannot remove {}: {e}", staged.display())))?;
    }
    std::fs::rename(new, &staged).map_err(|e| {
        files(format!(
            "cannot move {} to {}: {e}",
            new.display(),
            staged.display()
        ))
    })?;
    rotate_folders(target)
}
