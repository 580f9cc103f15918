//! Readiness probes (the node's boot status, the health path), the
//! liveness reports of the node's connector, and the memory watchdog.

use super::*;
impl MonitorState {
    /// Start a new chain of health ticks, `delay` from now; the previous
    /// chain dies at its next tick.
    pub(super) fn schedule_tick(&mut self, myself: &ActorRef<InstanceMsg>, delay: Duration) {
        self.tick_seq = self.tick_seq.wrapping_add(1);
        let seq = self.tick_seq;
        myself.send_after(delay, move || InstanceMsg::HealthTick { seq });
    }

    pub(super) fn health_tick(&mut self, myself: &ActorRef<InstanceMsg>) {
        // Log rotation, every 10 s: the size check is two `stat`s (here);
        // the copy, when one is due, runs off the handler. A blocking-pool
        // task per instance every 5 s kept ~40 pool threads alive at 200
        // replicas for nothing.
        if self.rotated_at.elapsed() >= ROTATION_CHECK {
            self.rotated_at = Instant::now();
            let (max, keep) = (self.cfg.log_max_bytes, self.cfg.log_keep);
            let due: Vec<PathBuf> = [LogStream::Stdout, LogStream::Stderr]
                .into_iter()
                .map(|stream| self.cfg.log_file(self.instance, stream))
                .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.len() > max))
                .collect();
            if !due.is_empty() {
                tokio::task::spawn_blocking(move || {
                    for path in due {
                        let _ = process::rotate_if_needed(&path, max, keep);
                    }
                });
            }
        }
        if self.process.is_none() {
            return;
        }
        // Idempotent: a restarted watcher learns the node again within
        // WATCH_REMINDER (every tick while the instance starts).
        if self.phase == InstanceState::Starting || self.watched_at.elapsed() >= WATCH_REMINDER {
            self.watched_at = Instant::now();
            self.tell_watcher(false);
        }
        // Probes decide readiness, and only that: once an instance runs, a
        // probe result changes nothing (an exit is seen by the pidfd, the
        // crash counter starts over on the clock in
        // `schedule_crash_restart`, and the status takes the node's
        // connection from the watcher). Probing running instances every
        // second cost 200 replicas ~1000 messages and tasks per second.
        if self.phase != InstanceState::Starting || self.probing {
            return;
        }
        self.probing = true;
        let generation = self.generation;
        let node = self.node.clone();
        let port = self.port;
        let health_path = self.cfg.health_path.clone();
        let otp_readiness = self.cfg.otp_readiness;
        let me = myself.clone();
        let probe = async move {
            // With OTP readiness the node must answer *and* have finished
            // its boot script: a node is on the distribution long before
            // its applications have started (or failed to).
            let (otp, boot) = if otp_readiness {
                match otp_node_watcher::boot_phase(&node, BOOT_QUERY_TIMEOUT).await {
                    Ok(phase) => (true, Some(phase)),
                    Err(_) => (false, None),
                }
            } else {
                (node_connected(&node).await, None)
            };
            let http = match health_path {
                None => true,
                Some(path) => crate::health::http_ok(port, &path, Duration::from_secs(1)).await,
            };
            Ok::<_, crate::task::TaskPanic>((otp, boot, http))
        };
        // A failed probe (even a panic in it) is a negative probe: the
        // next tick probes again.
        crate::task::spawn_for(me, "a readiness probe", probe, move |result| {
            let (otp, boot, http) = result.unwrap_or((false, None, false));
            InstanceMsg::Probed {
                generation,
                otp,
                boot,
                http,
            }
        });
    }

    /// Readiness: the process is alive, its node answers and has finished
    /// its boot (`init:get_status()` = `{started, _}`, unless
    /// `otp_readiness` is off), the health path answers 2xx (when set), all
    /// of it without a break for `min_ready`. A boot that fails before
    /// `started` is never ready, however long `min_ready` is.
    pub(super) fn on_probe(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        otp: bool,
        boot: Option<BootPhase>,
        http: bool,
    ) {
        self.otp_connected = otp;
        if boot.is_some() {
            self.boot = boot;
        }
        if self.process.is_none() || self.phase != InstanceState::Starting {
            return;
        }
        let node_ok = !self.cfg.otp_readiness || (otp && boot == Some(BootPhase::Started));
        if !(node_ok && http) {
            self.checks_since = None;
            return;
        }
        let now = Instant::now();
        let since = *self.checks_since.get_or_insert(if self.adopted {
            now.checked_sub(self.cfg.min_ready).unwrap_or(now)
        } else {
            now
        });
        if since.elapsed() < self.cfg.min_ready {
            return;
        }
        self.ready_since = Some(now);
        self.last_error = None;
        self.set_phase(InstanceState::Running, "ready");
        events::emit(
            &self.cfg.app,
            NewEvent::new(EventKind::InstanceReady, "ready")
                .instance(self.instance)
                .version(self.version.clone().unwrap_or_default()),
        );
        if self.switch.is_some() {
            // Start-first: the new version is ready; it takes over and the
            // old process stops (recorded first, see `start_first`). The
            // rollout moves on once the old one is gone (`OldStopped`): at
            // most one instance has two processes.
            self.switch_over(myself);
            return;
        }
        self.tell_dm_ready();
    }

    /// The rollout may move on: this instance is ready.
    pub(super) fn tell_dm_ready(&self) {
        if let Some(dm) = ractor::registry::where_is(deploy_manager::name(&self.cfg.app)) {
            let _ = dm.send_message(DeployMsg::InstanceReady {
                instance: self.instance,
                version: self.version.clone(),
            });
        }
    }

    /// Tells the OtpNodeWatcher about this node (`retry`: a new OS process
    /// of it was just started).
    pub(super) fn tell_watcher(&self, retry: bool) {
        let Some(w) = ractor::registry::where_is(otp_node_watcher::NAME) else {
            return;
        };
        let node = self.node.clone();
        let liveness = self.liveness.clone();
        let _ = w.send_message(if retry {
            WatcherMsg::Retry { node, liveness }
        } else {
            WatcherMsg::Watch { node, liveness }
        });
    }

    /// A liveness report from the node's connector: after
    /// `liveness_failures` failed checks in a row, a running instance is
    /// killed (SIGKILL: a hung or stopped BEAM does not handle SIGTERM) and
    /// started again. Counted apart from crashes (not a crash loop: the
    /// rollback rules do not see it).
    pub(super) fn on_liveness(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        failures: u32,
        error: Option<String>,
    ) {
        if failures == 0 {
            tracing::info!(instance = self.instance, "liveness check passes again");
            return;
        }
        if self.phase != InstanceState::Running || self.stopping.is_some() {
            return;
        }
        let Some(handle) = self.process.clone() else {
            return;
        };
        let error = error.unwrap_or_default();
        tracing::warn!(instance = self.instance, failures, limit = self.cfg.liveness_failures, %error, "liveness check failed");
        if failures < self.cfg.liveness_failures {
            return;
        }
        self.liveness_restarts += 1;
        self.last_error = Some(format!(
            "liveness: {failures} checks failed in a row ({error}); killed and restarted"
        ));
        self.restart_process(myself, handle, RestartReason::Liveness);
    }

    /// The watchdog found the node over a BEAM limit and its action is
    /// `restart` (the watcher recorded the warning event).
    pub(super) fn on_over_limit(&mut self, myself: &ActorRef<InstanceMsg>, message: String) {
        if self.phase != InstanceState::Running || self.stopping.is_some() {
            return;
        }
        let Some(handle) = self.process.clone() else {
            return;
        };
        self.watchdog_restarts += 1;
        self.last_error = Some(format!("watchdog: {message}; restarted"));
        // Counted with the memory restarts: a resource limit, not a crash.
        self.restart_process(myself, handle, RestartReason::Memory);
    }

    /// Every `beam_sample_interval` while the memory watchdog is on: the
    /// process group's resident memory above the limit for two samples in
    /// a row restarts the instance (or only warns, by configuration).
    pub(super) fn watchdog_tick(&mut self, myself: &ActorRef<InstanceMsg>) {
        let Some(limit) = self.cfg.watchdog.memory_bytes else {
            return;
        };
        if self.phase != InstanceState::Running || self.stopping.is_some() {
            self.memory_over = 0;
            return;
        }
        let Some(handle) = self.process.clone() else {
            return;
        };
        let rss = handle.group_rss_bytes();
        if rss <= limit {
            self.memory_over = 0;
            return;
        }
        self.memory_over += 1;
        tracing::warn!(
            instance = self.instance,
            rss,
            limit,
            samples = self.memory_over,
            "resident memory over the watchdog limit"
        );
        if self.memory_over < 2 {
            return;
        }
        self.memory_over = 0;
        let message = format!(
            "resident memory {} MiB over the limit of {} MiB for two samples",
            rss / (1024 * 1024),
            limit / (1024 * 1024)
        );
        match self.cfg.watchdog.memory_action() {
            crate::config::WatchdogAction::Warn => {
                events::emit(
                    &self.cfg.app,
                    NewEvent::new(EventKind::WatchdogWarning, message)
                        .instance(self.instance)
                        .version(self.version.clone().unwrap_or_default()),
                );
            }
            crate::config::WatchdogAction::Restart => {
                self.watchdog_restarts += 1;
                self.last_error = Some(format!("watchdog: {message}; restarted"));
                self.restart_process(myself, handle, RestartReason::Memory);
            }
        }
    }
}

/// What this instance asks of the OtpNodeWatcher: its liveness check (off
/// without OTP readiness: there is no link to check, and a release without
/// distribution is never hung-killed) and where to report.
pub(super) fn liveness_spec(
    cfg: &EngineConfig,
    myself: &ActorRef<InstanceMsg>,
    node: &str,
    port: u16,
) -> Option<Arc<NodeSpec>> {
    let interval = if cfg.otp_readiness {
        cfg.liveness_interval
    } else {
        Duration::ZERO
    };
    let me = myself.clone();
    let node = node.to_string();
    Some(Arc::new(NodeSpec {
        interval,
        http: cfg.health_path.clone().map(|path| (port, path)),
        report: Box::new(move |report| {
            let _ = me.cast(InstanceMsg::Node {
                node: node.clone(),
                report,
            });
        }),
    }))
}

pub(super) async fn node_connected(node: &str) -> bool {
    let Some(w) = ractor::registry::where_is(otp_node_watcher::NAME) else {
        return false;
    };
    let w: ActorRef<WatcherMsg> = w.into();
    let node = node.to_string();
    ractor::call_t!(w, |reply| WatcherMsg::IsConnected { node, reply }, 500).unwrap_or(false)
}
