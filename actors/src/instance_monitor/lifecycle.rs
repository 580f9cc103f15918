//! One instance's OS process: adoption at boot, start, exit and crash
//! backoff, stop (how: [`StopPlan`]) and restart.

use super::*;
impl MonitorState {
    /// Adopt the process a previous monitor (or deployex) left running, or
    /// start a fresh one when a release is installed.
    pub(super) fn boot(&mut self, myself: &ActorRef<InstanceMsg>) {
        repair_service_dir(&self.service);
        // The other slot (start-first): whatever runs there is a new version
        // that was never recorded ready, or an old one whose stop was cut
        // short: either way not this instance's process.
        let other = self.cfg.slot_service_dir(self.instance, self.slot.other());
        let other = other.is_dir().then(|| {
            repair_service_dir(&other);
            other
        });
        if let Some(other) = &other {
            stop_strays(other, None);
            slot::forget_pid(other);
        }
        self.version = crate::store::release_version(&self.current_dir());
        self.release_kind = crate::release_kind::detect(&self.current_dir(), &self.cfg.app);
        if let Ok(pidfile) = PidFile::read(&self.pidfile()) {
            match process::adopt(&pidfile) {
                Adoption::Adopt(handle) => {
                    tracing::info!(
                        instance = self.instance,
                        pid = pidfile.pid,
                        "adopted running instance"
                    );
                    stop_strays(&self.service, Some(handle.pid()));
                    self.attach(myself, handle);
                    // It was already running: readiness only needs the
                    // checks to pass once.
                    self.adopted = true;
                    return;
                }
                other => {
                    tracing::info!(instance = self.instance, pid = pidfile.pid, outcome = ?other, "pid file does not name a live instance");
                    let _ = std::fs::remove_file(self.pidfile());
                }
            }
        }
        // Nothing of this instance may run unless adopted above: a deployex
        // killed between spawn and pid file leaves a process nobody knows.
        stop_strays(&self.service, None);
        if self.version.is_some() {
            self.start(myself);
        }
    }

    pub(super) fn attach(&mut self, myself: &ActorRef<InstanceMsg>, handle: ProcessHandle) {
        if std::mem::take(&mut self.crash_restart_pending) {
            push_bounded(&mut self.restart_times, crate::time::utc_now_millis());
        }
        if let Some(reason) = self.next_start_reason.take() {
            self.last_restart_reason = Some(reason);
            events::emit(
                &self.cfg.app,
                NewEvent::new(
                    EventKind::Restart,
                    format!("new process {} ({})", handle.pid(), reason.as_str()),
                )
                .instance(self.instance)
                .version(self.version.clone().unwrap_or_default()),
            );
        }
        self.generation = self.generation.max(self.generation_high) + 1;
        self.generation_high = self.generation;
        let generation = self.generation;
        let handle = Arc::new(handle);
        self.process = Some(handle.clone());
        self.started_at = Some(Instant::now());
        self.ready_since = None;
        self.checks_since = None;
        self.boot = None;
        self.adopted = false;
        self.memory_over = 0;
        self.otp_connected = false;
        self.stopping = None;
        self.set_phase(InstanceState::Starting, "process started");
        // Back to the fast clock: readiness paces the rollout.
        self.schedule_tick(myself, FAST_TICK);
        self.tell_watcher(true);
        let me = myself.clone();
        tokio::spawn(async move {
            // pidfd readiness -> this task -> one cast: the whole way from
            // the kernel to the respawn (no timer involved).
            let info = handle.wait_exit_then_kill_group().await;
            let _ = me.cast(InstanceMsg::Exited { generation, info });
        });
    }

    /// Spawn `current/bin/{app} start`. Fork+exec returns at once, so this
    /// runs in the handler: the crash→respawn path stays in one message.
    pub(super) fn start(&mut self, myself: &ActorRef<InstanceMsg>) {
        if self.shut_down {
            tracing::info!(
                instance = self.instance,
                "not starting: deployex is shutting down"
            );
            return;
        }
        let current = self.current_dir();
        let program = current.join("bin").join(&self.cfg.app);
        if !program.is_file() {
            self.version = None;
            self.set_phase(InstanceState::Stopped, "no release installed");
            return;
        }
        self.release_kind = crate::release_kind::detect(&current, &self.cfg.app);
        if let Err(error) = crate::release_kind::check_release(&current, &self.cfg.app) {
            tracing::error!(instance = self.instance, %error, "release refused");
            self.last_error = Some(error.to_string());
            self.set_phase(InstanceState::Stopped, "release refused");
            return;
        }
        if let Some(user) = &self.cfg.app_user
            && let Err(e) = user
                .prepare_service(&self.cfg.var_dir, &self.service)
                .and_then(|()| user.seal_tree_once(&current))
        {
            let error = format!("cannot prepare the files of app user {}: {e}", user.name);
            tracing::error!(instance = self.instance, %error);
            self.last_error = Some(error);
            self.schedule_crash_restart(myself);
            return;
        }
        let spec = InstanceSpec {
            program: program.clone(),
            args: crate::release_kind::start_args(
                self.release_kind,
                self.cfg.start_command.as_deref(),
            ),
            cwd: current.clone(),
            env: self.env(),
            stdout_log: self.cfg.log_file(self.instance, LogStream::Stdout),
            stderr_log: self.cfg.log_file(self.instance, LogStream::Stderr),
            user: self.cfg.app_user.clone(),
        };
        match process::spawn_instance(&spec) {
            Ok(handle) => {
                crate::testhook::point("spawned");
                self.version = crate::store::release_version(&current);
                let pidfile = PidFile {
                    pid: handle.pid(),
                    start_time_ticks: handle.start_time_ticks(),
                    program,
                    version: self.version.clone(),
                    port: self.port,
                };
                if let Err(e) = pidfile.write(&self.pidfile()) {
                    tracing::error!(instance = self.instance, error = %e, "cannot write pid file");
                }
                crate::testhook::point("pid_file_written");
                tracing::info!(
                    instance = self.instance,
                    pid = handle.pid(),
                    version = self.version.as_deref().unwrap_or("?"),
                    "instance started"
                );
                self.attach(myself, handle);
            }
            Err(e) => {
                let error = format!("cannot start {}: {e}", spec.program.display());
                tracing::error!(instance = self.instance, %error);
                self.last_error = Some(error);
                self.schedule_crash_restart(myself);
            }
        }
    }

    pub(super) fn env(&self) -> Vec<(String, String)> {
        let mut overrides = vec![
            (
                "RELEASE_NODE_SUFFIX".to_string(),
                format!("-{}{}", self.instance, self.slot.suffix()),
            ),
            ("RELEASE_DISTRIBUTION".to_string(), "sname".to_string()),
            (
                "RELEASE_NODE".to_string(),
                self.cfg.slot_node_basename(self.instance, self.slot),
            ),
            ("RELX_REPLACE_OS_VARS".to_string(), "true".to_string()),
            ("RELEASE_COOKIE".to_string(), self.cfg.cookie.clone()),
            ("PORT".to_string(), self.port.to_string()),
            ("ERL_EPMD_PORT".to_string(), self.cfg.epmd_port.to_string()),
            ("ERL_CRASH_DUMP_SECONDS".to_string(), "0".to_string()),
            (
                process::INSTANCE_MARKER.to_string(),
                self.service.to_string_lossy().into_owned(),
            ),
        ];
        if let Some(user) = &self.cfg.app_user {
            overrides.extend(user.env(&self.service));
        }
        process::instance_env(self.cfg.base_env.iter().cloned(), &overrides)
    }

    /// The crash -> respawn path: the respawn (`schedule_crash_restart` ->
    /// `start`) comes first, the bookkeeping after it. The exit watcher
    /// already killed what was left of the old process group.
    pub(super) fn on_exit(&mut self, myself: &ActorRef<InstanceMsg>, info: ExitInfo) {
        self.process = None;
        self.otp_connected = false;
        if self.switch.is_some() && self.stopping.is_none() {
            // Start-first: the new version died before it was ready; the
            // old process never stopped.
            let _ = std::fs::remove_file(self.pidfile());
            self.candidate_failed(
                myself,
                format!("the new version exited before it was ready ({info:?})"),
            );
            return;
        }
        if self.stopping.is_some() {
            // An intended stop; StopDone drives what happens next.
            let _ = std::fs::remove_file(self.pidfile());
            return;
        }
        if info.code == Some(0) && self.refuse_escaped_daemon() {
            return;
        }
        let crashed_at = crate::time::utc_now_millis();
        let crashed_version = self.version.clone();
        self.crash_restarts += 1;
        self.crash_restart_pending = true;
        self.next_start_reason = Some(RestartReason::Crash);
        self.schedule_crash_restart(myself);
        if self.process.is_none() {
            // Backing off (or the start failed): the pid file names a dead
            // process. After a respawn, `start` has already replaced it.
            let _ = std::fs::remove_file(self.pidfile());
        }
        push_bounded(&mut self.crash_times, crashed_at);
        tracing::warn!(instance = self.instance, exit = ?info, version = crashed_version.as_deref().unwrap_or("?"), "instance exited unexpectedly");
        // After the backoff bookkeeping: `consecutive_crashes` counts the
        // crashes without a stable period in between (a crash loop), not a
        // process killed once in a while (OOM killer, operator).
        if let Some(dm) = ractor::registry::where_is(deploy_manager::name(&self.cfg.app)) {
            let _ = dm.send_message(DeployMsg::InstanceCrashed {
                instance: self.instance,
                consecutive: self.consecutive_crashes,
            });
        }
    }

    pub(super) fn schedule_crash_restart(&mut self, myself: &ActorRef<InstanceMsg>) {
        let was_ready_long = self
            .ready_since
            .is_some_and(|t| t.elapsed() >= self.cfg.backoff_reset_after);
        if was_ready_long {
            self.consecutive_crashes = 0;
        }
        self.ready_since = None;
        self.consecutive_crashes += 1;
        let delay = backoff_delay(
            self.consecutive_crashes,
            self.cfg.backoff_base,
            self.cfg.backoff_max,
        );
        if delay.is_zero() && self.deploying.is_none() {
            self.start(myself);
        } else {
            self.set_phase(InstanceState::CrashBackoff, "crashed");
            let generation = self.generation;
            myself.send_after(delay, move || InstanceMsg::RestartAfterBackoff {
                generation,
            });
        }
    }

    /// Stop the process (as `reason` wants) and start it again.
    pub(super) fn restart_process(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        handle: Arc<ProcessHandle>,
        reason: RestartReason,
    ) {
        tracing::warn!(
            instance = self.instance,
            reason = reason.as_str(),
            "restarting the instance"
        );
        self.stop_process(myself, handle, StopReason::Restart(reason));
    }

    /// How to stop the current process: a process that no longer answers
    /// (liveness) is killed at once; otherwise the stop task asks the node
    /// how far it booted ([`StopPlan::run`]).
    pub(super) fn stop_plan(&self, kill: bool) -> StopPlan {
        StopPlan {
            node: self.node.clone(),
            grace: self.cfg.stop_grace,
            kill,
            was_ready: self.ready_since.is_some() || self.adopted,
            otp: self.cfg.otp_readiness,
        }
    }

    pub(super) fn forced_restart(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
    ) -> Result<(), ActionError> {
        if self.deploying.is_some() {
            return Err(ActionError::Busy(
                "a deployment is in progress on this instance".to_string(),
            ));
        }
        if self.stopping.is_some() {
            return Err(ActionError::Busy(
                "the instance is already being stopped".to_string(),
            ));
        }
        self.forced_restarts += 1;
        match self.process.clone() {
            Some(handle) => {
                self.stop_process(myself, handle, StopReason::Restart(RestartReason::Forced));
            }
            None => {
                self.consecutive_crashes = 0;
                self.next_start_reason = Some(RestartReason::Forced);
                self.start(myself);
            }
        }
        Ok(())
    }

    pub(super) fn stop_process(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        handle: Arc<ProcessHandle>,
        reason: StopReason,
    ) {
        self.stopping = Some(reason);
        let generation = self.generation;
        let plan = self.stop_plan(reason == StopReason::Restart(RestartReason::Liveness));
        let me = myself.clone();
        tokio::spawn(async move {
            plan.run(&handle).await;
            let _ = me.cast(InstanceMsg::StopDone { generation, reason });
        });
    }

    pub(super) fn on_stopped(&mut self, myself: &ActorRef<InstanceMsg>, reason: StopReason) {
        self.process = None;
        self.stopping = None;
        let _ = std::fs::remove_file(self.pidfile());
        match reason {
            StopReason::Restart(why) => {
                if why == RestartReason::Forced {
                    self.consecutive_crashes = 0;
                }
                self.next_start_reason = Some(why);
                self.start(myself);
            }
            StopReason::Deploy => {
                crate::testhook::point("old_stopped");
                self.rotate(myself)
            }
            StopReason::Shutdown => self.set_phase(InstanceState::Stopped, "stopped"),
        }
    }

    /// The start command exited 0: if it left a VM of this instance running
    /// outside its process group (relx's `start`/`daemon` fork the VM away),
    /// stop that VM and refuse the release instead of restarting it. True
    /// when refused.
    pub(super) fn refuse_escaped_daemon(&mut self) -> bool {
        let escaped = process::instance_roots(&self.service);
        if escaped.is_empty() {
            return false;
        }
        let args =
            crate::release_kind::start_args(self.release_kind, self.cfg.start_command.as_deref());
        let error = crate::release_kind::escaped_daemon_error(&args, &escaped);
        tracing::error!(instance = self.instance, %error, "release refused");
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || crate::release_kind::stop_escaped(&service));
        let _ = std::fs::remove_file(self.pidfile());
        self.last_error = Some(error.clone());
        self.set_phase(InstanceState::Stopped, "release refused");
        if let (Some(dm), Some(deploy_ref)) = (
            ractor::registry::where_is(deploy_manager::name(&self.cfg.app)),
            self.deploy_ref.clone(),
        ) {
            let _ = dm.send_message(DeployMsg::DeployFailed {
                instance: self.instance,
                deploy_ref,
                error,
            });
        }
        true
    }
}

/// How long a probe waits for the node's `init:get_status()`.
pub(super) const BOOT_QUERY_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a stop waits for a node that does not answer yet.
pub(super) const BOOT_QUERY_PATIENCE: Duration = Duration::from_secs(1);

/// How long asking a node to stop (`init:stop()`) may take to answer.
pub(super) const STOP_RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// How one process is stopped; runs in a task (never in a handler).
pub(super) struct StopPlan {
    pub(super) node: String,
    pub(super) grace: Duration,
    /// Kill at once (the node no longer answers).
    pub(super) kill: bool,
    /// The process was ever ready (or adopted).
    pub(super) was_ready: bool,
    /// Nodes are expected on the distribution.
    pub(super) otp: bool,
}

impl StopPlan {
    /// A node whose boot has not finished serves nothing and ignores
    /// SIGTERM until its boot script ends: its group is killed at once. A
    /// started node is asked to stop over the distribution
    /// (`init:stop()`), with SIGTERM as the fallback, SIGKILL after the
    /// grace period. A node that cannot be asked is stopped with SIGTERM
    /// if it was ever ready, killed otherwise.
    pub(super) async fn run(self, handle: &ProcessHandle) {
        let start = Instant::now();
        if self.kill {
            process::kill_group(handle).await;
            return;
        }
        // A node whose link is being set up (just adopted, or the watcher
        // restarted) gets a moment to answer before it counts as mute.
        let mut phase = None;
        if self.otp {
            let asked = Instant::now();
            loop {
                phase = otp_node_watcher::boot_phase(&self.node, BOOT_QUERY_TIMEOUT)
                    .await
                    .ok();
                if phase.is_some() || asked.elapsed() >= BOOT_QUERY_PATIENCE || !handle.is_alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        match phase {
            Some(BootPhase::Starting) => {
                tracing::info!(node = %self.node, "stopping a node that has not finished booting: killing it at once");
                process::kill_group(handle).await;
            }
            Some(BootPhase::Started) => {
                if otp_node_watcher::stop_node(&self.node, STOP_RPC_TIMEOUT)
                    .await
                    .is_ok()
                    && process::wait_group_gone(handle, self.grace).await
                {
                    process::stop_group(handle, Duration::ZERO).await;
                    return;
                }
                let left = self.grace.saturating_sub(start.elapsed());
                process::stop_group(handle, left).await;
            }
            None if !self.was_ready && self.otp => {
                tracing::info!(node = %self.node, "stopping a node that never answered: killing it at once");
                process::kill_group(handle).await;
            }
            None => {
                process::stop_group(handle, self.grace).await;
            }
        }
    }
}

pub(super) fn push_bounded(list: &mut VecDeque<String>, value: String) {
    if list.len() == 20 {
        list.pop_front();
    }
    list.push_back(value);
}

/// Delay before restart number `consecutive` (1-based): 0, base, 2·base,
/// 4·base … capped at `max`.
pub fn backoff_delay(consecutive: u32, base: Duration, max: Duration) -> Duration {
    if consecutive <= 1 {
        return Duration::ZERO;
    }
    let exp = (consecutive - 2).min(20);
    base.saturating_mul(1u32 << exp).min(max)
}
