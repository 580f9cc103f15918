//! EventLog: every significant thing deployex does, as an event operators
//! can read (`GET /api/v1/events`, the dashboard's timeline) and be told
//! about (`DEPLOYEX_WEBHOOK_URL`). Each event carries the app of the actor
//! that emitted it (`emit(app, event)`); one EventLog serves every app.
//!
//! Any actor emits with [`emit`], a cast to the EventLog found by name: it
//! never waits, and an event emitted while the EventLog restarts is lost
//! (logged). The EventLog keeps the newest [`KEEP`] events in memory and
//! appends each to `{storage}/events.jsonl` (one JSON object a line); the
//! file is rotated to `events.jsonl.1` past [`FILE_MAX_BYTES`], so the two
//! files hold at most twice that. At start the newest [`KEEP`] events are
//! read back from both files (a restart of deployex keeps the timeline; a
//! line that does not parse is skipped).
//!
//! Webhook: events go to a bounded queue ([`QUEUE`]) drained by one
//! delivery task, which POSTs them in order and retries a receiver that is
//! down or slow with backoff (0.5 s doubling to 30 s) until it answers 2xx.
//! A full queue drops the new event and counts it ([`webhook_dropped`]).
//! The delivery task belongs to the EventLog's state: it is aborted when
//! the state is dropped (stop or panic).

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::config::{EngineConfig, WebhookConfig};
use crate::recorder::{Describe, Recorder};

pub const NAME: &str = "event_log";
/// Events kept in memory (and read back at start).
pub const KEEP: usize = 1000;
/// The events file is rotated past this size.
pub const FILE_MAX_BYTES: u64 = 1024 * 1024;
/// Events waiting for the webhook receiver, at most.
pub const QUEUE: usize = 1000;
/// Longest wait between two delivery attempts of one event.
const RETRY_MAX: Duration = Duration::from_secs(30);
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// One POST, connection included.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

static DELIVERED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static FAILED_ATTEMPTS: AtomicU64 = AtomicU64::new(0);

/// Events delivered to the webhook since start.
pub fn webhook_delivered() -> u64 {
    DELIVERED.load(Ordering::Relaxed)
}
/// Events dropped because the webhook queue was full.
pub fn webhook_dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}
/// Failed delivery attempts (each retried).
pub fn webhook_failed_attempts() -> u64 {
    FAILED_ATTEMPTS.load(Ordering::Relaxed)
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DeployStarted,
    DeployFinished,
    InstanceReady,
    Rollback,
    Ghosted,
    CrashLoop,
    Restart,
    WatchdogWarning,
    ReleaseRejected,
    StoreError,
    HotUpgradeFailed,
    /// A running instance gets a full deployment because the release
    /// cannot be hot-upgraded (the reason is the message).
    HotUpgradeSkipped,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeployStarted => "deploy_started",
            EventKind::DeployFinished => "deploy_finished",
            EventKind::InstanceReady => "instance_ready",
            EventKind::Rollback => "rollback",
            EventKind::Ghosted => "ghosted",
            EventKind::CrashLoop => "crash_loop",
            EventKind::Restart => "restart",
            EventKind::WatchdogWarning => "watchdog_warning",
            EventKind::ReleaseRejected => "release_rejected",
            EventKind::StoreError => "store_error",
            EventKind::HotUpgradeFailed => "hot_upgrade_failed",
            EventKind::HotUpgradeSkipped => "hot_upgrade_skipped",
        }
    }
}

/// One event, the JSON object of the API and of the webhook (which adds
/// `text`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing, unique within one var dir.
    pub id: u64,
    /// UTC, RFC 3339 with milliseconds.
    pub at: String,
    /// The app of the actor that emitted it. Lines written before events
    /// carried their own app (or without the field) load as the first
    /// configured app's, which was the only one then.
    #[serde(default)]
    pub app: String,
    pub event: EventKind,
    pub version: Option<String>,
    pub instance: Option<u32>,
    pub message: String,
}

impl Event {
    /// One human line, for chat receivers.
    pub fn text(&self) -> String {
        let mut line = format!("[{}] {}", self.app, self.event.as_str());
        if let Some(i) = self.instance {
            line.push_str(&format!(" instance {i}"));
        }
        if let Some(v) = &self.version {
            line.push_str(&format!(" version {v}"));
        }
        line.push_str(": ");
        line.push_str(&self.message);
        line
    }
}

/// An event before the EventLog numbers and stamps it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Set by [`emit`]: the emitting actor's app.
    pub app: Option<String>,
    pub event: EventKind,
    pub version: Option<String>,
    pub instance: Option<u32>,
    pub message: String,
}

impl NewEvent {
    pub fn new(event: EventKind, message: impl Into<String>) -> NewEvent {
        NewEvent {
            app: None,
            event,
            version: None,
            instance: None,
            message: message.into(),
        }
    }
    pub fn version(mut self, version: impl Into<String>) -> NewEvent {
        self.version = Some(version.into());
        self
    }
    pub fn instance(mut self, instance: u32) -> NewEvent {
        self.instance = Some(instance);
        self
    }
}

/// Record an event of `app` (the emitting actor's app; never waits).
pub fn emit(app: &str, mut event: NewEvent) {
    event.app = Some(app.to_string());
    match ractor::registry::where_is(NAME) {
        Some(log) => {
            let _ = log.send_message(EventMsg::Emit(event));
        }
        None => {
            tracing::warn!(event = event.event.as_str(), message = %event.message, "event log not running; event lost")
        }
    }
}

pub enum EventMsg {
    Emit(NewEvent),
    /// The newest `limit` events, newest first.
    Recent {
        limit: usize,
        reply: RpcReplyPort<Vec<Event>>,
    },
}

impl Describe for EventMsg {
    fn kind(&self) -> &'static str {
        match self {
            EventMsg::Emit(_) => "Emit",
            EventMsg::Recent { .. } => "Recent",
        }
    }
    fn summary(&self) -> String {
        match self {
            EventMsg::Emit(e) => format!("{} {}", e.event.as_str(), e.message),
            EventMsg::Recent { limit, .. } => format!("limit={limit}"),
        }
    }
}

pub struct EventLog;

pub struct EventState {
    app: String,
    file: PathBuf,
    events: VecDeque<Event>,
    next_id: u64,
    webhook: Option<Webhook>,
    recorder: Recorder,
}

/// The webhook's queue and its delivery task (aborted on drop).
struct Webhook {
    queue: tokio::sync::mpsc::Sender<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Actor for EventLog {
    type Msg = EventMsg;
    type State = EventState;
    type Arguments = Arc<EngineConfig>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        cfg: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let dir = cfg.storage_dir();
        let file = dir.join("events.jsonl");
        let file2 = file.clone();
        let app = cfg.app.clone();
        let events = tokio::task::spawn_blocking(move || {
            let _ = std::fs::create_dir_all(&dir);
            load(&file2, &app)
        })
        .await?;
        let next_id = events.back().map_or(1, |e| e.id + 1);
        let webhook = match &cfg.webhook {
            Some(hook) => Some(start_webhook(hook.clone())?),
            None => None,
        };
        Ok(EventState {
            app: cfg.app.clone(),
            file,
            events,
            next_id,
            webhook,
            recorder: Recorder::for_actor(NAME),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _rec = state.recorder.begin(&msg);
        match msg {
            EventMsg::Emit(new) => state.record(new),
            EventMsg::Recent { limit, reply } => {
                let _ = reply.send(state.events.iter().rev().take(limit).cloned().collect());
            }
        }
        Ok(())
    }
}

impl EventState {
    fn record(&mut self, new: NewEvent) {
        let event = Event {
            id: self.next_id,
            at: crate::time::utc_now_millis(),
            app: new
                .app
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| self.app.clone()),
            event: new.event,
            version: new.version,
            instance: new.instance,
            message: new.message,
        };
        self.next_id += 1;
        tracing::info!(app = %event.app, event = event.event.as_str(), instance = ?event.instance, version = ?event.version, message = %event.message, "event");
        // One short append to a file this actor owns: it only ever blocks
        // this actor's own mailbox, for microseconds.
        if let Err(e) = append(&self.file, &event) {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot append to the events file");
        }
        if let Some(hook) = &self.webhook
            && hook.queue.try_send(event.clone()).is_err()
        {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(id = event.id, "webhook queue full; event dropped");
        }
        if self.events.len() == KEEP {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

/// Appends one line; rotates the file first when it is over the bound.
fn append(file: &Path, event: &Event) -> std::io::Result<()> {
    if std::fs::metadata(file).is_ok_and(|m| m.len() >= FILE_MAX_BYTES) {
        std::fs::rename(file, rotated(file))?;
    }
    let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    f.write_all(&line)
}

fn rotated(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The newest [`KEEP`] events of the rotated file and the current one; a
/// line without an app (written before events carried theirs) is `app`'s.
fn load(file: &Path, app: &str) -> VecDeque<Event> {
    let mut events = VecDeque::new();
    for path in [rotated(file), file.to_path_buf()] {
        let Ok(f) = std::fs::File::open(&path) else {
            continue;
        };
        for line in std::io::BufReader::new(f).lines() {
            let Ok(line) = line else { break };
            let Ok(mut event) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            if event.app.is_empty() {
                event.app = app.to_string();
            }
            if events.len() == KEEP {
                events.pop_front();
            }
            events.push_back(event);
        }
    }
    events
}

fn start_webhook(hook: WebhookConfig) -> Result<Webhook, ActorProcessingErr> {
    let client = http_client()?;
    let (queue, mut rx) = tokio::sync::mpsc::channel::<Event>(QUEUE);
    let task = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let body = webhook_body(&event);
            let signature = hook.secret.as_deref().map(|s| sign(s, &body));
            let mut wait = RETRY_FIRST;
            loop {
                match post(&client, &hook.url, &body, signature.as_deref()).await {
                    Ok(()) => {
                        DELIVERED.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(error) => {
                        FAILED_ATTEMPTS.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(id = event.id, %error, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    });
    Ok(Webhook { queue, task })
}

/// An absolute `http://` or `https://` URL with a host.
pub fn valid_webhook_url(url: &str) -> bool {
    url.parse::<hyper::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    })
}

/// The event's JSON plus `text`.
pub fn webhook_body(event: &Event) -> Vec<u8> {
    let mut value = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert("text".into(), serde_json::Value::String(event.text()));
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// `sha256=<hex HMAC-SHA256 of body>`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

fn http_client() -> Result<Client, ActorProcessingErr> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https),
    )
}

async fn post(
    client: &Client,
    url: &str,
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), DeliveryError> {
    let mut request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("deployex/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(sig) = signature {
        request = request.header("x-deployex-signature", sig);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            body,
        )))
        .map_err(DeliveryError::Request)?;
    let response = tokio::time::timeout(POST_TIMEOUT, client.request(request))
        .await
        .map_err(|_| DeliveryError::Timeout(POST_TIMEOUT))?
        .map_err(DeliveryError::Http)?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(DeliveryError::Status(status))
    }
}

/// Why one webhook delivery attempt failed (logged, then retried). The
/// texts are the log's: the source's text is part of the message, and no
/// `#[source]` repeats it in a chain.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("bad webhook request: {0}")]
    Request(hyper::http::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Http(hyper_util::client::legacy::Error),
    #[error("receiver answered {0}")]
    Status(hyper::StatusCode),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64) -> Event {
        Event {
            id,
            at: "2026-12-04T00:00:00.000Z".into(),
            app: "app".into(),
            event: EventKind::Ghosted,
            version: Some("0.2.0".into()),
            instance: Some(1),
            message: "crash loop".into(),
        }
    }

    #[test]
    fn the_file_is_bounded_and_read_back_newest_last() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        // Enough events to rotate more than once.
        let per_event = serde_json::to_vec(&event(1)).unwrap().len() as u64 + 1;
        let n = (FILE_MAX_BYTES / per_event) * 3;
        for id in 1..=n {
            append(&file, &event(id)).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(&file) <= FILE_MAX_BYTES + per_event);
        assert!(size(&rotated(&file)) <= FILE_MAX_BYTES + per_event);
        std::fs::write(dir.path().join("events.jsonl.2"), "stale").unwrap();
        let loaded = load(&file, "app");
        assert_eq!(loaded.len(), KEEP);
        assert_eq!(loaded.back().unwrap().id, n);
        assert_eq!(loaded.front().unwrap().id, n - KEEP as u64 + 1);
    }

    #[test]
    fn a_broken_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        append(&file, &event(1)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"{not json\n")
            .unwrap();
        append(&file, &event(2)).unwrap();
        let ids: Vec<u64> = load(&file, "app").iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn each_event_keeps_its_app_and_old_lines_without_one_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        // A line of an older deployex: no `app` field.
        std::fs::write(
            &file,
            "{\"id\":1,\"at\":\"2026-12-04T00:00:00.000Z\",\"event\":\"deploy_started\",\"version\":\"0.1.0\",\"instance\":1,\"message\":\"m\"}\n",
        )
        .unwrap();
        let mut b = event(2);
        b.app = "worker".into();
        append(&file, &b).unwrap();
        let apps: Vec<(u64, String)> = load(&file, "api")
            .into_iter()
            .map(|e| (e.id, e.app))
            .collect();
        assert_eq!(apps, vec![(1, "api".into()), (2, "worker".into())]);
    }

    #[test]
    fn an_emitted_event_is_labelled_with_the_emitters_app() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = EventState {
            app: "api".into(),
            file: dir.path().join("events.jsonl"),
            events: VecDeque::new(),
            next_id: 1,
            webhook: None,
            recorder: Recorder::for_actor("event_log_test"),
        };
        let mut new = NewEvent::new(EventKind::DeployStarted, "deploying");
        new.app = Some("worker".into());
        state.record(new);
        state.record(NewEvent::new(EventKind::DeployStarted, "no app given"));
        let apps: Vec<&str> = state.events.iter().map(|e| e.app.as_str()).collect();
        assert_eq!(apps, vec!["worker", "api"]);
        let body = webhook_body(&state.events[0]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["app"], "worker");
        assert!(v["text"].as_str().unwrap().starts_with("[worker] "));
    }

    #[test]
    fn webhook_urls() {
        assert!(valid_webhook_url("https://hooks.slack.com/services/T/B/X"));
        assert!(valid_webhook_url("http://127.0.0.1:9000/hook"));
        assert!(!valid_webhook_url("ftp://example.com/"));
        assert!(!valid_webhook_url("/relative"));
        assert!(!valid_webhook_url("https://"));
    }

    #[test]
    fn webhook_body_has_text_and_the_signature_is_hmac_sha256() {
        let body = webhook_body(&event(7));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["event"], "ghosted");
        assert_eq!(v["id"], 7);
        assert_eq!(
            v["text"],
            "[app] ghosted instance 1 version 0.2.0: crash loop"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
