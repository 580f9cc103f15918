//! A canned-data `Engine` for the web tests: the engine is not what these
//! tests check, the HTTP layer is.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployex_actors::engine::Engine;
use deployex_actors::model::*;
use deployex_web::{AppState, WebConfig};
use futures::future::BoxFuture;

pub const PASSWORD: &str = "s3cret-pass";

#[derive(Default)]
pub struct FakeEngine {
    pub calls: Mutex<Vec<String>>,
    pub slow_status: bool,
    pub log_dir: Option<PathBuf>,
    pub shell: Mutex<Option<ShellCommand>>,
    /// When set, uptimes grow with real time (for the demo server).
    pub started: Option<std::time::Instant>,
    /// The fleet view `fleet()` answers (`None`: fleet mode off).
    pub fleet_view: Option<serde_json::Value>,
}

pub fn sample_status() -> Status {
    Status {
        app: "myapp".into(),
        mode: "automatic".into(),
        manual_version: None,
        desired_version: Some("1.0.1".into()),
        ghosted_versions: vec!["0.9.0".into()],
        last_error: None,
        deploying: Some(DeployProgress {
            instance: 2,
            version: "1.0.1".into(),
            deploy_ref: "abc".into(),
            step: "unpack".into(),
        }),
        instances: (1..=3)
            .map(|i| InstanceStatus {
                instance: i,
                version: Some("1.0.0".into()),
                state: InstanceState::Running,
                os_pid: Some(1000 + i as i32),
                port: 4000 + i as u16,
                node: format!("myapp-{i}@localhost"),
                slot: deployex_actors::Slot::A,
                otp_connected: true,
                // Instance 1 over mutual TLS, the others plain TCP.
                tls: i == 1,
                last_deployment: Some(DeploymentKind::FullDeployment),
                deploy_ref: Some("r1".into()),
                crash_restarts: u64::from(i == 3) * 2,
                forced_restarts: 0,
                uptime_s: Some(42),
                last_error: None,
                stale: false,
                restart_times: Vec::new(),
                crash_times: Vec::new(),
                // Instance 3 has no telemetry sample (yet).
                beam: (i < 3).then(|| BeamStats {
                    memory_bytes: 50 * 1024 * 1024 + u64::from(i) * 1024 * 1024,
                    processes: 300 + u64::from(i),
                    run_queue: u64::from(i) - 1,
                    reductions_per_s: (i == 1).then_some(12_345),
                    sampled_at: "2026-11-27T10:00:00.000Z".into(),
                    atom_count: 20_000,
                    atom_limit: 1_048_576,
                    port_count: 10,
                    port_limit: 65_536,
                    process_limit: 262_144,
                }),
                boot: Some(BootPhase::Started),
                // Instance 2 was restarted by the liveness check once.
                liveness_restarts: u64::from(i == 2),
                watchdog_restarts: 0,
                last_restart_reason: (i == 2).then_some(RestartReason::Liveness),
                release_kind: None,
            })
            .collect(),
        deployex: DeployexStatus {
            version: "0.1.0".into(),
            tls: true,
            uptime_s: 100,
            os_pid: 1,
        },
        stale: false,
        deploy_durations: DeployDurations {
            count: 4,
            total_ms: 10_500,
            last: Some(DeployDuration {
                instance: 3,
                version: "1.0.0".into(),
                deployment: DeploymentKind::HotUpgrade,
                duration_ms: 1_500,
                finished_at: "2026-11-27T10:00:00.000Z".into(),
            }),
        },
    }
}

pub fn sample_history() -> Vec<HistoryEntry> {
    (0..12)
        .rev()
        .map(|n| HistoryEntry {
            version: format!("1.0.{n}"),
            hash: format!("h{n}"),
            instance: 1 + n % 3,
            deployment: if n % 2 == 0 {
                DeploymentKind::FullDeployment
            } else {
                DeploymentKind::HotUpgrade
            },
            deploy_ref: format!("ref{n}"),
            inserted_at: format!("2026-11-27T10:{n:02}:00Z"),
        })
        .collect()
}

impl FakeEngine {
    fn record(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Engine for FakeEngine {
    fn status(&self) -> BoxFuture<'_, Status> {
        Box::pin(async move {
            if self.slow_status {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let mut s = sample_status();
            if let Some(t) = self.started {
                let up = t.elapsed().as_secs();
                s.deployex.uptime_s += up;
                for i in &mut s.instances {
                    i.uptime_s = i.uptime_s.map(|u| u + up);
                }
            }
            s
        })
    }
    fn versions(&self, instance: Option<u32>) -> BoxFuture<'_, Vec<HistoryEntry>> {
        Box::pin(async move {
            sample_history()
                .into_iter()
                .filter(|h| instance.is_none_or(|i| h.instance == i))
                .collect()
        })
    }
    fn restart(&self, instance: u32) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async move {
            self.record(format!("restart {instance}"));
            match instance {
                1 | 3 => Ok(()),
                2 => Err(ActionError::Busy("deploying".into())),
                n => Err(ActionError::NoSuchInstance(n)),
            }
        })
    }
    fn set_mode(&self, mode: Mode) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async move {
            self.record(format!("mode {mode:?}"));
            match mode {
                Mode::Manual { version } if version == "bad" => {
                    Err(ActionError::Invalid("unknown version bad".into()))
                }
                _ => Ok(()),
            }
        })
    }
    fn unghost(&self, version: String) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async move {
            self.record(format!("unghost {version}"));
            Ok(())
        })
    }
    fn log_file(&self, instance: u32, stream: LogStream) -> Option<PathBuf> {
        let dir = self.log_dir.as_ref()?;
        (instance <= 3).then(|| dir.join(format!("{instance}-{}.log", stream.as_str())))
    }
    fn remote_shell(&self, instance: u32) -> BoxFuture<'_, Result<ShellCommand, ActionError>> {
        Box::pin(async move {
            if instance > 3 {
                return Err(ActionError::NoSuchInstance(instance));
            }
            self.shell
                .lock()
                .unwrap()
                .clone()
                .ok_or_else(|| ActionError::Invalid("not running".into()))
        })
    }
    fn fleet(&self) -> BoxFuture<'_, Option<serde_json::Value>> {
        Box::pin(async move { self.fleet_view.clone() })
    }
    fn actors(&self) -> BoxFuture<'_, ActorInfo> {
        Box::pin(async move {
            let msg = |kind: &str, us| MessageRecord {
                kind: kind.into(),
                summary: "<b>summary</b>".into(),
                at: "2026-11-27T10:00:00.000Z".into(),
                handling_us: us,
            };
            ActorInfo {
                name: "root".into(),
                id: "0.1".into(),
                status: "running".into(),
                restarts: 0,
                in_flight: None,
                messages: vec![msg("Tick", Some(12))],
                children: vec![ActorInfo {
                    name: "instance-1".into(),
                    id: "0.2".into(),
                    status: "running".into(),
                    restarts: 1,
                    in_flight: Some(msg("Deploy", None)),
                    messages: vec![],
                    children: vec![],
                }],
            }
        })
    }
}

pub fn hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| bcrypt::hash(PASSWORD, 4).unwrap())
        .clone()
}

pub fn config() -> WebConfig {
    let mut cfg = WebConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "deployex.example",
        "test-secret-key-base-0123456789",
        hash(),
        "myapp",
    );
    cfg.metrics_token = Some("metrics-tok".into());
    // As if served on http://127.0.0.1:4000 and behind https://deployex.example.
    cfg.public_origins = vec![
        "http://127.0.0.1:4000".into(),
        "https://deployex.example".into(),
    ];
    cfg.secure_cookie = false;
    cfg
}

pub fn state_with(engine: FakeEngine) -> (Arc<FakeEngine>, Arc<AppState>) {
    let engine = Arc::new(engine);
    let state = AppState::new(engine.clone(), config());
    (engine, state)
}

pub fn bearer(state: &AppState) -> String {
    format!("Bearer {}", state.tokens.issue())
}
