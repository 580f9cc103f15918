//! The real dashboard of a real deployex (3 replicas of fixture 0.1.0) in
//! headless Chromium, driven over the Chrome DevTools Protocol: login form,
//! live instance cards, a restart through the confirm dialog, log
//! following, the web terminal (and that closing it kills the remote shell)
//! and the actor tree.
//!
//! A second test runs two differently named apps (`[[apps]]`, issue 17):
//! the overview at `/` going live for both, B's own dashboard at
//! `/apps/{app}` restarting B's instance (A's OS pids unchanged), B's log
//! page following B's file and B's terminal, all under `/apps/{app}`.
//!
//! Invariants: every wait polls the DOM (or /proc) against a deadline;
//! Chromium runs in its own process group with a fresh profile and is
//! killed by that group's id; screenshots go to
//! `<target dir>/browser-screenshots/` for a human to look at.
//!
//! CDP rather than WebDriver: no chromedriver, and the websocket client
//! (`tokio-tungstenite`) is already in the tree through warp.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::deployex::{APP, Site};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";
/// How often DOM conditions are polled.
const POLL_EVERY: Duration = Duration::from_millis(100);

// ------------------------------------------------------------------ chromium

/// A headless Chromium with a throw-away profile; killed (whole process
/// group) on drop.
struct Chromium {
    child: Child,
    /// Browser-level DevTools websocket URL.
    ws_url: String,
    profile: tempfile::TempDir,
}

impl Chromium {
    fn launch() -> Chromium {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run devops/deps.sh"
        );
        let profile = tempfile::Builder::new()
            .prefix("dx-chromium-")
            .tempdir()
            .unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromium");
        let mut chromium = Chromium {
            child,
            ws_url: String::new(),
            profile,
        };
        // Chromium writes "<port>\n<browser ws path>" once it listens.
        let port_file = chromium.profile.path().join("DevToolsActivePort");
        chromium.ws_url = common::wait_until_blocking(
            "chromium's DevToolsActivePort",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = chromium.child.try_wait() {
                    panic!("chromium exited early: {status}");
                }
                let text = std::fs::read_to_string(&port_file).ok()?;
                let mut lines = text.lines();
                let port = lines.next()?.trim().parse::<u16>().ok()?;
                let path = lines.next()?.trim().to_string();
                Some(format!("ws://127.0.0.1:{port}{path}"))
            },
        );
        chromium
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

// ----------------------------------------------------------------- CDP client

/// One browser-level CDP connection; pages are flattened sessions on it.
/// JavaScript dialogs are accepted as they open (and recorded), so a
/// `confirm()` never blocks the page.
struct Cdp {
    out: mpsc::UnboundedSender<Message>,
    next_id: AtomicU64,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    /// Messages of the dialogs accepted so far.
    dialogs: Arc<Mutex<Vec<String>>>,
    /// Uncaught page exceptions and console errors, for the final check.
    problems: Arc<Mutex<Vec<String>>>,
}

impl Cdp {
    async fn connect(ws_url: &str) -> Arc<Cdp> {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .expect("connect to chromium's devtools");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let cdp = Arc::new(Cdp {
            out,
            next_id: AtomicU64::new(1),
            pending: Arc::default(),
            dialogs: Arc::default(),
            problems: Arc::default(),
        });
        let reader = cdp.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                reader.dispatch(v);
            }
        });
        cdp
    }

    fn dispatch(&self, v: Value) {
        if let Some(id) = v["id"].as_u64() {
            if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
                let _ = tx.send(v);
            }
            return;
        }
        let session = v["sessionId"].as_str().map(str::to_string);
        match v["method"].as_str() {
            Some("Page.javascriptDialogOpening") => {
                let message = v["params"]["message"].as_str().unwrap_or("").to_string();
                self.dialogs.lock().unwrap().push(message);
                self.send(
                    "Page.handleJavaScriptDialog",
                    json!({"accept": true}),
                    session,
                );
            }
            Some("Runtime.exceptionThrown") => self
                .problems
                .lock()
                .unwrap()
                .push(format!("exception: {}", v["params"]["exceptionDetails"])),
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => self
                .problems
                .lock()
                .unwrap()
                .push(format!("console.error: {}", v["params"]["args"])),
            _ => {}
        }
    }

    /// Sends a command without waiting for its answer.
    fn send(&self, method: &str, params: Value, session: Option<String>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s);
        }
        let _ = self.out.send(Message::Text(msg.to_string().into()));
        id
    }

    /// Sends a command and returns its `result`; panics on a CDP error.
    async fn call(&self, method: &str, params: Value, session: Option<&str>) -> Value {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s.to_string());
        }
        self.out
            .send(Message::Text(msg.to_string().into()))
            .expect("cdp writer gone");
        let answer = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"))
            .expect("cdp reader gone");
        if !answer["error"].is_null() {
            panic!("{method} failed: {}", answer["error"]);
        }
        answer["result"].clone()
    }

    /// Opens a new tab and attaches to it.
    async fn new_page(self: &Arc<Self>) -> Page {
        let target = self
            .call("Target.createTarget", json!({"url": "about:blank"}), None)
            .await["targetId"]
            .as_str()
            .unwrap()
            .to_string();
        let session = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
                None,
            )
            .await["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        let page = Page {
            cdp: self.clone(),
            session,
            target,
        };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        page
    }
}

/// One tab.
struct Page {
    cdp: Arc<Cdp>,
    session: String,
    target: String,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(method, params, Some(&self.session)).await
    }

    /// Evaluates `expr` (awaiting promises) and returns its JSON value.
    async fn eval(&self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if !r["exceptionDetails"].is_null() {
            panic!("evaluating {expr}: {}", r["exceptionDetails"]);
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; returns that value. On timeout,
    /// panics with `what`, the last value and `diag` evaluated.
    async fn wait_js(&self, what: &str, timeout: Duration, expr: &str, diag: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(expr).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if start.elapsed() >= timeout {
                let d = self.eval(diag).await;
                panic!("timed out after {timeout:?} waiting for {what}; last: {v}; page: {d}");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Navigates and waits for the new document to be complete.
    async fn goto(&self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(
            r["errorText"].is_null(),
            "navigate {url}: {}",
            r["errorText"]
        );
        self.wait_js(
            &format!("{url} to load"),
            Duration::from_secs(15),
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            "location.href",
        )
        .await;
    }

    /// A real mouse click in the middle of the element `selector`.
    async fn click(&self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let rect = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (x, y) = (
            rect[0].as_f64().unwrap_or_else(|| panic!("no {selector}")),
            rect[1].as_f64().unwrap(),
        );
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Focuses `selector`, clears it and types `text` as keyboard input.
    async fn type_into(&self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return false; \
                 e.focus(); e.select(); return true; }})()"
            ))
            .await;
        assert_eq!(found, json!(true), "no {selector}");
        self.call("Input.insertText", json!({"text": text})).await;
    }

    async fn press_enter(&self) {
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyDown", "key": "Enter", "code": "Enter",
                   "windowsVirtualKeyCode": 13, "text": "\r"}),
        )
        .await;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn close(self) {
        self.cdp
            .call("Target.closeTarget", json!({"targetId": self.target}), None)
            .await;
    }
}

/// `<target dir>/browser-screenshots`, found from the binary under test so
/// `CARGO_TARGET_DIR` is honoured.
fn screenshot_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_deployex"));
    bin.parent()
        .and_then(Path::parent)
        .map(|target| target.join("browser-screenshots"))
        .unwrap_or_else(|| PathBuf::from("target/browser-screenshots"))
}

// -------------------------------------------------------------------- helpers

/// Pids of remote shells into the release in `folder`: `bin/APP remote`
/// execs `beam.smp ... --remsh NODE`, so the flag is what names it.
fn remote_shell_pids(folder: &Path) -> Vec<i32> {
    let folder = folder.to_string_lossy().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        let remote = cmdline.contains("remote") || cmdline.contains("--remsh");
        if remote && cmdline.contains(&folder) {
            pids.push(pid);
        }
    }
    pids
}

/// Command lines mentioning `folder`, for failure messages.
fn cmdlines_mentioning(folder: &Path) -> Vec<String> {
    let folder = folder.to_string_lossy().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&folder) {
            out.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    out
}

/// Drops ANSI SGR sequences (the page renders them as classes).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first heartbeat line written to `log` after byte `from`.
/// A heartbeat written to `log` after byte `from` (so it can only have
/// come over the page's follow websocket) shows on the log page open in
/// `page`, with no disconnect notice.
async fn followed_line_shows(page: &Page, log: &Path, from: u64, what: &str, timeout: Duration) {
    let fresh = common::wait_until(
        &format!("a heartbeat in {} after byte {from}", log.display()),
        Duration::from_secs(15),
        || {
            let log = log.to_path_buf();
            async move { heartbeat_after(&log, from) }
        },
    )
    .await;
    let fresh_js = serde_json::to_string(&fresh).unwrap();
    page.wait_js(
        &format!("the followed line {fresh:?} on {what}"),
        timeout,
        &format!(
            "document.querySelector('#log-notice').hidden && \
             Array.from(document.querySelectorAll('#log .line')).some(l => l.textContent.trim() === {fresh_js})"
        ),
        "document.querySelector('#log-notice').textContent + ' | ' + document.querySelector('#log').textContent.slice(-600)",
    )
    .await;
}

fn heartbeat_after(log: &Path, from: u64) -> Option<String> {
    let bytes = std::fs::read(log).ok()?;
    let tail = String::from_utf8_lossy(bytes.get(from as usize..)?).to_string();
    // Only complete lines: the last piece may still be being written.
    let (complete, _) = tail.rsplit_once('\n')?;
    complete
        .lines()
        .map(|l| strip_ansi(l).trim().to_string())
        .find(|l| l.contains("heartbeat"))
}

// ----------------------------------------------------------------------- test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let site = Arc::new(Site::new(3));
    site.publish("0.1.0", &[]);
    // Apps survive the restart of deployex in step 4b; the second deployex
    // has the default (stop them on exit) for the clean-up.
    let dx = {
        let site = site.clone();
        tokio::task::spawn_blocking(move || {
            site.start_with(&[
                ("DEPLOYEX_STOP_APPS_ON_EXIT", "false"),
                ("DEPLOYEX_BEAM_SAMPLE_MS", "500"),
            ])
        })
        .await
        .unwrap()
    };
    let base = format!("http://127.0.0.1:{}", dx.api_port);
    let browser = tokio::task::spawn_blocking(Chromium::launch).await.unwrap();
    let cdp = Cdp::connect(&browser.ws_url).await;
    let page = cdp.new_page().await;
    let mut shots = Vec::new();

    // 1. Log in through the form.
    page.goto(&format!("{base}/")).await;
    assert_eq!(
        page.eval("location.pathname").await,
        json!("/login"),
        "an anonymous visit goes to the login page"
    );
    page.type_into("input[name=username]", "admin").await;
    page.type_into("input[name=password]", "deployex").await;
    shots.push(page.screenshot("1-login").await);
    page.click("form.login button[type=submit]").await;
    page.wait_js(
        "the dashboard after login",
        Duration::from_secs(15),
        "location.pathname === '/' && document.readyState === 'complete' \
         && document.body.dataset.page === 'dashboard'",
        "location.href + ' ' + document.body.innerText.slice(0, 300)",
    )
    .await;

    // 2. Three instance cards, all running (live over SSE).
    let card_states = "JSON.stringify(Array.from(document.querySelectorAll('section.instance')).map(c => \
         [c.dataset.instance, c.querySelector('[data-f=state]').dataset.state]))";
    page.wait_js(
        "3 instance cards running",
        Duration::from_secs(90),
        "(() => { const c = Array.from(document.querySelectorAll('section.instance')); \
         return c.length === 3 && c.every(e => e.querySelector('[data-f=state]').dataset.state === 'running'); })()",
        card_states,
    )
    .await;
    // BEAM telemetry reaches the cards live (sampled over distribution).
    page.wait_js(
        "BEAM memory and processes on every card",
        Duration::from_secs(30),
        "Array.from(document.querySelectorAll('section.instance')).every(c => \
           /[0-9.]+ MiB/.test(c.querySelector('[data-f=beam_memory]').textContent) && \
           parseInt(c.querySelector('[data-f=beam_processes]').textContent, 10) > 10)",
        "Array.from(document.querySelectorAll('section.instance [data-f^=beam]')).map(e => e.textContent).join(',')",
    )
    .await;
    assert_eq!(
        page.eval(card_states).await,
        json!(r#"[["1","running"],["2","running"],["3","running"]]"#)
    );
    shots.push(page.screenshot("2-dashboard").await);

    // 3. Restart instance 2 through its button and the confirm dialog; the
    //    card's forced-restart count goes to 1 with no reload.
    let forced = "document.querySelector('section.instance[data-instance=\"2\"] [data-f=forced_restarts]').textContent";
    assert_eq!(page.eval(forced).await, json!("0"));
    page.eval("window.__sameDocument = true").await;
    let pid_of_2 = "document.querySelector('section.instance[data-instance=\"2\"] [data-f=os_pid]').textContent";
    let old_pid = page.eval(pid_of_2).await;
    page.click("button[data-action=restart][data-instance=\"2\"]")
        .await;
    page.wait_js(
        "instance 2's forced restarts to reach 1",
        Duration::from_secs(60),
        &format!("window.__sameDocument === true && {forced} === '1'"),
        &format!(
            "String(window.__sameDocument) + ' forced=' + {forced} + ' toast=' + document.querySelector('#toast').textContent"
        ),
    )
    .await;
    assert_eq!(
        *cdp.dialogs.lock().unwrap(),
        vec!["Restart instance 2?".to_string()],
        "exactly the restart confirmation was shown (and accepted)"
    );
    page.wait_js(
        "the restart toast",
        Duration::from_secs(10),
        "/Restart of instance 2: done/.test(document.querySelector('#toast').textContent)",
        "document.querySelector('#toast').textContent",
    )
    .await;
    page.wait_js(
        "instance 2 running again under a new OS pid",
        Duration::from_secs(60),
        &format!(
            "document.querySelector('section.instance[data-instance=\"2\"] [data-f=state]').dataset.state === 'running' \
             && {pid_of_2} !== {old_pid}"
        ),
        card_states,
    )
    .await;
    assert_eq!(
        page.eval("window.__sameDocument").await,
        json!(true),
        "no reload"
    );
    shots.push(page.screenshot("3-dashboard-after-restart").await);

    // 4. The stdout log page of instance 1 follows the file: a heartbeat
    //    written after the page opened shows up.
    let log = site.log_file(1, "stdout");
    let opened_at = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    page.goto(&format!("{base}/instances/1/logs/stdout")).await;
    let fresh = common::wait_until(
        "a heartbeat in instance 1's stdout after the page opened",
        Duration::from_secs(15),
        || {
            let log = log.clone();
            async move { heartbeat_after(&log, opened_at) }
        },
    )
    .await;
    let fresh_js = serde_json::to_string(&fresh).unwrap();
    page.wait_js(
        &format!("the fresh line {fresh:?} on the log page"),
        Duration::from_secs(15),
        &format!(
            "Array.from(document.querySelectorAll('#log .line')).some(l => l.textContent.trim() === {fresh_js})"
        ),
        "document.querySelector('#log').textContent.slice(-600)",
    )
    .await;
    assert_eq!(
        page.eval(
            "Array.from(document.querySelectorAll('#log .line')).filter(l => /heartbeat/.test(l.textContent)) \
             .every(l => l.classList.contains('lv-info'))"
        )
        .await,
        json!(true),
        "every heartbeat line (from the page and from the stream) is coloured as info"
    );
    assert_eq!(
        page.eval("document.querySelector('#log-notice').hidden")
            .await,
        json!(true),
        "the log stream is still connected"
    );
    shots.push(page.screenshot("4-logs-stdout").await);

    // 4b. deployex restarts (the apps keep running): the open log page
    //     reconnects by itself and follows the file again.
    let dx = {
        let site = site.clone();
        tokio::task::spawn_blocking(move || {
            let mut dx = dx;
            assert_eq!(
                dx.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15)),
                Some(0)
            );
            site.start()
        })
        .await
        .unwrap()
    };
    let restarted_at = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    followed_line_shows(
        &page,
        &log,
        restarted_at,
        "instance 1's log page, after the reconnect",
        Duration::from_secs(30),
    )
    .await;

    // 5. The terminal: `1+1` gives `2` in the remote shell, and closing
    //    the tab kills that shell.
    let service = site.service(1).join("current");
    assert!(
        remote_shell_pids(&service).is_empty(),
        "no remote shell before the terminal opens"
    );
    let term = cdp.new_page().await;
    term.goto(&format!("{base}/instances/1/terminal")).await;
    let rows = "Array.from(document.querySelectorAll('.xterm-rows > div')).map(r => r.textContent.replace(/\\u00a0/g, ' ').trimEnd())";
    term.wait_js(
        "the iex prompt in the terminal",
        Duration::from_secs(30),
        &format!("{rows}.some(r => /iex\\(.*\\)\\d+>/.test(r))"),
        &format!("document.querySelector('#term-status').textContent + ' | ' + {rows}.join(' / ')"),
    )
    .await;
    let shells = remote_shell_pids(&service);
    assert!(
        !shells.is_empty(),
        "a `remote` process runs for {}; processes there: {:#?}",
        service.display(),
        cmdlines_mentioning(&service)
    );
    assert_eq!(
        term.eval(
            "document.documentElement.scrollWidth <= innerWidth \
             && document.documentElement.scrollHeight <= innerHeight"
        )
        .await,
        json!(true),
        "the terminal fits the window (no scrollbars)"
    );
    term.click(".xterm").await;
    term.call("Input.insertText", json!({"text": "1+1"})).await;
    term.press_enter().await;
    term.wait_js(
        "`2` after `1+1` in the terminal",
        Duration::from_secs(15),
        &format!(
            "(() => {{ const r = {rows}; const i = r.findIndex(x => /> ?1\\+1$/.test(x)); \
             return i >= 0 && r.slice(i + 1).some(x => x.trim() === '2'); }})()"
        ),
        &format!("{rows}.join(' / ')"),
    )
    .await;
    shots.push(term.screenshot("5-terminal").await);
    term.close().await;
    common::wait_until(
        "the remote shell to exit after the terminal closed",
        Duration::from_secs(2),
        || {
            let service = service.clone();
            let shells = shells.clone();
            async move {
                let left: Vec<i32> = remote_shell_pids(&service)
                    .into_iter()
                    .filter(|p| shells.contains(p))
                    .collect();
                left.is_empty().then_some(())
            }
        },
    )
    .await;
    assert!(
        remote_shell_pids(&service).is_empty(),
        "no remote shell left"
    );

    // 6. The actor tree, live.
    page.goto(&format!("{base}/debug/actors")).await;
    let names = "JSON.stringify(Array.from(document.querySelectorAll('#actors .actor-head strong')).map(e => e.textContent).sort())";
    let expected = [
        "deploy_manager:dxtest",
        "instance_monitor:dxtest-1",
        "instance_monitor:dxtest-2",
        "instance_monitor:dxtest-3",
        "otp_node_watcher",
        "release_fetcher:dxtest",
        "root_supervisor",
    ];
    let expected_js = serde_json::to_string(&expected).unwrap();
    page.wait_js(
        "every actor of the tree",
        Duration::from_secs(15),
        &format!("(() => {{ const n = {names}; return {expected_js}.every(x => JSON.parse(n).includes(x)); }})()"),
        names,
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('#actors .actor-head strong').textContent")
            .await,
        json!("root_supervisor"),
        "the root of the tree"
    );
    // Long message histories are folded: at most 3 recent messages (plus
    // one in flight) in view per actor, the rest behind "older messages".
    page.wait_js(
        "the instance monitors' older messages folded",
        Duration::from_secs(15),
        "Array.from(document.querySelectorAll('#actors li.actor')).every(a => a.querySelectorAll(':scope > ul.msgs > li.msg:not(.inflight)').length <= 3) \
         && document.querySelectorAll('#actors details.more-msgs').length > 0",
        "document.querySelector('#actors').innerText.slice(0, 400)",
    )
    .await;
    shots.push(page.screenshot("6-actors").await);

    // 7-8. Metrics charts and the observer (charts.rs, observer.rs).
    charts_and_observer(&page, &base, &mut shots).await;

    let problems = cdp.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "errors in the pages: {problems:#?}");
    for shot in &shots {
        assert!(std::fs::metadata(shot).unwrap().len() > 1000, "{shot:?}");
        eprintln!("screenshot: {}", shot.display());
    }

    cdp.send("Browser.close", json!({}), None);
    drop(browser);
    drop(dx);
}

/// The dashboard's charts grow live (no reload) and show values on hover;
/// the observer page shows the supervision tree, the process table
/// (refreshing) and a process's details with its OTP state.
async fn charts_and_observer(page: &Page, base: &str, shots: &mut Vec<PathBuf>) {
    page.goto(&format!("{base}/")).await;
    page.eval("window.__sameDocument = true").await;
    let polyline =
        "document.querySelector('figure.chart[data-target=\"1\"] polyline[data-s=beam_processes]')";
    let count = format!(
        "({polyline}.getAttribute('points') || '').trim().split(' ').filter(x => x).length"
    );
    page.wait_js(
        "the instance's process chart drawn from the history",
        Duration::from_secs(30),
        &format!("{count} >= 2"),
        "document.querySelector('#charts') ? document.querySelector('#charts').outerHTML.slice(0, 400) : 'no charts'",
    )
    .await;
    let before = page.eval(&count).await.as_u64().unwrap();
    page.wait_js(
        "new points streamed into the chart without a reload",
        Duration::from_secs(20),
        &format!("window.__sameDocument === true && Number(document.body.dataset.chartUpdates || 0) >= 1 && {count} > {before}"),
        &format!("[document.body.dataset.chartUpdates, {count}]"),
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('figure.chart[data-target=host] polyline').length")
            .await,
        json!(4),
        "four host charts"
    );
    // Hover: a value appears under the chart.
    let rect = page
        .eval(&format!(
            "(() => {{ const f = {polyline}.closest('figure'); f.scrollIntoView({{block: 'center'}}); \
             const r = f.querySelector('svg').getBoundingClientRect(); return [r.x + r.width * 0.9, r.y + r.height / 2]; }})()"
        ))
        .await;
    page.call(
        "Input.dispatchMouseEvent",
        json!({"type": "mouseMoved", "x": rect[0], "y": rect[1]}),
    )
    .await;
    page.wait_js(
        "a hover value under the chart",
        Duration::from_secs(5),
        &format!("/beam_processes [0-9]+/.test({polyline}.closest('figure').querySelector('[data-f=hover]').textContent)"),
        &format!("{polyline}.closest('figure').querySelector('[data-f=hover]').textContent"),
    )
    .await;
    page.eval("document.querySelector('#charts').scrollIntoView({block: 'start'})")
        .await;
    shots.push(page.screenshot("7-charts").await);

    page.goto(&format!("{base}/instances/1/observer")).await;
    page.wait_js(
        "the supervision tree and the process table",
        Duration::from_secs(10),
        "document.querySelector('#supervision').textContent.includes('Elixir.Fixture.Supervisor') \
         && document.querySelectorAll('#proc-rows tr').length >= 10",
        "document.body.innerText.slice(0, 600)",
    )
    .await;
    // Sort by reductions; the table refreshes from the API.
    page.click("th.sort[data-sort=reductions]").await;
    page.wait_js(
        "the process table refreshed, sorted by reductions",
        Duration::from_secs(10),
        "Number(document.body.dataset.procRefreshes || 0) >= 1 && \
         (() => { const v = Array.from(document.querySelectorAll('#proc-rows tr td:nth-child(6)')).map(t => Number(t.textContent)); \
                  return v.length >= 10 && v.every((x, i) => i === 0 || v[i - 1] >= x); })()",
        "(() => { const th = document.querySelector('th.sort[data-sort=reductions]'); const r = th.getBoundingClientRect(); const at = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2); return [document.body.dataset.procRefreshes, document.body.dataset.procError, document.querySelector('th[aria-sort]').dataset.sort, at && at.outerHTML.slice(0, 100), JSON.stringify(r), document.querySelector('#proc-rows').innerText.slice(0, 200)].join(' | '); })()",
    )
    .await;
    // A worker's details, with its OTP state.
    page.eval(
        "Array.from(document.querySelectorAll('#supervision li')).find(l => l.textContent.includes('Elixir.Fixture.Counter')).querySelector('button.pid').id = 'counter-pid'",
    )
    .await;
    page.click("#counter-pid").await;
    page.wait_js(
        "the Counter's details and state",
        Duration::from_secs(10),
        "!document.querySelector('#process-detail').hidden \
         && document.querySelector('#detail-fields').textContent.includes('Elixir.Fixture.Counter:init/1') \
         && document.querySelector('#detail-state').textContent.length > 0 \
         && !document.querySelector('#detail-state').textContent.startsWith('(not')",
        "document.querySelector('#process-detail').innerText.slice(0, 400)",
    )
    .await;
    shots.push(page.screenshot("9-process-detail").await);
    page.eval("window.scrollTo(0, 0)").await;
    shots.push(page.screenshot("8-observer").await);
}

// ------------------------------------------------------------ several apps

/// The second app of the several-apps test (the same fixture as
/// `tests/multi_app.rs`, built under another name).
const APP_B: &str = "dxsmoke";
/// Printed once by each of B's instances as it starts (`FIXTURE_ECHO`,
/// given to B only through `[apps.env]`): a line only B's logs have.
const B_ECHO: &str = "only-in-dxsmoke-stdout";

/// Two apps on one deployex (issue 17): A (`dxtest`) × 1, B (`dxsmoke`) × 2.
fn two_apps_config(site: &Site, port_b: u16) -> PathBuf {
    let path = site.dir.path().join("deployex.toml");
    let text = format!(
        r#"
release_dir = "{store}"
min_ready_ms = 300

[[apps]]
monitored_app_name = "{APP}"
monitored_app_port = {port_a}
monitored_replicas = 1

[[apps]]
monitored_app_name = "{APP_B}"
monitored_app_port = {port_b}
monitored_replicas = 2
[apps.env]
FIXTURE_ECHO = "{B_ECHO}"
"#,
        store = site.store().display(),
        port_a = site.app_port,
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Several apps in the browser: the overview at `/` goes live for both
/// apps, B's own dashboard restarts B's instance 1 (A's and B's other
/// OS pids unchanged), B's log page follows B's file and B's terminal
/// opens a shell into B's node, all under `/apps/dxsmoke`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_apps_overview_and_per_app_dashboard_in_headless_chromium() {
    use common::apps::{AppGuard, instance_pids, publish, start_with_config};

    let site = Site::new(1);
    let port_b = common::deployex::free_port_range(2);
    let _b_guard = AppGuard {
        site: &site,
        app: APP_B,
        instances: 2,
    };
    let dx = tokio::task::block_in_place(|| {
        publish(&site, APP, "0.1.0");
        publish(&site, APP_B, "0.1.0");
        start_with_config(&site, &two_apps_config(&site, port_b))
    });
    let base = format!("http://127.0.0.1:{}", dx.api_port);
    let browser = tokio::task::spawn_blocking(Chromium::launch).await.unwrap();
    let cdp = Cdp::connect(&browser.ws_url).await;
    let page = cdp.new_page().await;
    let mut shots = Vec::new();

    // 1. Log in through the form: `/` is the overview, one row per app in
    //    the configuration's order.
    page.goto(&format!("{base}/")).await;
    assert_eq!(page.eval("location.pathname").await, json!("/login"));
    page.type_into("input[name=username]", "admin").await;
    page.type_into("input[name=password]", "deployex").await;
    page.click("form.login button[type=submit]").await;
    page.wait_js(
        "the overview after login",
        Duration::from_secs(15),
        "location.pathname === '/' && document.readyState === 'complete' \
         && document.body.dataset.page === 'overview'",
        "location.href + ' ' + document.body.innerText.slice(0, 300)",
    )
    .await;
    assert_eq!(
        page.eval("JSON.stringify(Array.from(document.querySelectorAll('#apps tr[data-app]')).map(r => r.dataset.app))")
            .await,
        json!(format!(r#"["{APP}","{APP_B}"]"#)),
        "one row per app, in the configuration's order"
    );

    // 2. The rows go live (the page's refresh from /api/v1/apps, no
    //    reload): every instance of both apps running, nothing to alert.
    //    The server-rendered cells are blanked first, so only the refresh
    //    can fill them (whether the instances were up at render or not).
    page.eval(
        "window.__sameDocument = true; \
         document.querySelectorAll('#apps [data-f]').forEach(c => c.textContent = 'blanked')",
    )
    .await;
    let rows = "JSON.stringify(Array.from(document.querySelectorAll('#apps tr[data-app]')).map(r => r.innerText))";
    let badges = |app: &str| {
        format!(
            "Array.from(document.querySelectorAll('#apps tr[data-app=\"{app}\"] [data-f=states] .badge')).map(b => b.dataset.state)"
        )
    };
    let cell = |app: &str, f: &str| {
        format!("document.querySelector('#apps tr[data-app=\"{app}\"] [data-f={f}]').textContent")
    };
    page.wait_js(
        "both overview rows refreshed with every instance running",
        Duration::from_secs(90),
        &format!(
            "(() => {{ const a = {}, b = {}; \
             return window.__sameDocument === true && Number(document.body.dataset.overviewRefreshes || 0) >= 1 \
               && a.length === 1 && b.length === 2 && a.concat(b).every(s => s === 'running') \
               && {} === '0.1.0' && {} === '0.1.0' && {} === '—' && {} === '—'; }})()",
            badges(APP),
            badges(APP_B),
            cell(APP, "versions"),
            cell(APP_B, "versions"),
            cell(APP, "alerts"),
            cell(APP_B, "alerts"),
        ),
        &format!("document.body.dataset.overviewRefreshes + ' ' + {rows}"),
    )
    .await;
    shots.push(page.screenshot("apps-1-overview").await);

    // 3. B's link opens B's dashboard: B's API, B's nodes, live over SSE.
    page.click(&format!(
        "#apps tr[data-app=\"{APP_B}\"] a[href=\"/apps/{APP_B}\"]"
    ))
    .await;
    page.wait_js(
        "B's dashboard",
        Duration::from_secs(15),
        &format!(
            "location.pathname === '/apps/{APP_B}' && document.readyState === 'complete' \
             && document.body.dataset.page === 'dashboard'"
        ),
        "location.href + ' ' + document.body.innerText.slice(0, 300)",
    )
    .await;
    assert_eq!(
        page.eval("[document.body.dataset.api, document.body.dataset.base, document.querySelector('header.top .app').textContent]")
            .await,
        json!([format!("/api/v1/apps/{APP_B}"), format!("/apps/{APP_B}"), APP_B])
    );
    let card_states = "JSON.stringify(Array.from(document.querySelectorAll('section.instance')).map(c => \
         [c.dataset.instance, c.querySelector('[data-f=state]').dataset.state, c.querySelector('[data-f=node]').textContent]))";
    page.wait_js(
        "B's 2 instance cards running",
        Duration::from_secs(30),
        &format!(
            "(() => {{ const c = Array.from(document.querySelectorAll('section.instance')); \
             return c.length === 2 && c.every(e => e.querySelector('[data-f=state]').dataset.state === 'running' \
               && e.querySelector('[data-f=node]').textContent.startsWith('{APP_B}-' + e.dataset.instance + '@')); }})()"
        ),
        card_states,
    )
    .await;
    let pid_of_1 = "document.querySelector('section.instance[data-instance=\"1\"] [data-f=os_pid]').textContent";
    let card_pid: i32 = page
        .eval(pid_of_1)
        .await
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("B's instance 1 shows an OS pid");
    let a_before = instance_pids(&site, APP, 1);
    let b1_before = instance_pids(&site, APP_B, 1);
    let b2_before = instance_pids(&site, APP_B, 2);
    assert!(
        b1_before.contains(&card_pid),
        "the card's pid {card_pid} is B's instance 1 ({b1_before:?}), not A's ({a_before:?})"
    );
    assert!(!a_before.is_empty() && !b2_before.is_empty());
    shots.push(page.screenshot("apps-2-dashboard-b").await);

    // 4. Restart B's instance 1 through its button and the confirm dialog:
    //    a new OS process for it, nothing else restarted, the card's
    //    forced-restart count at 1 with no reload.
    let forced = "document.querySelector('section.instance[data-instance=\"1\"] [data-f=forced_restarts]').textContent";
    assert_eq!(page.eval(forced).await, json!("0"));
    page.eval("window.__sameDocument = true").await;
    page.click("button[data-action=restart][data-instance=\"1\"]")
        .await;
    page.wait_js(
        "B's instance 1 running again under a new OS pid, forced restarts at 1",
        Duration::from_secs(60),
        &format!(
            "window.__sameDocument === true && {forced} === '1' \
             && document.querySelector('section.instance[data-instance=\"1\"] [data-f=state]').dataset.state === 'running' \
             && {pid_of_1} !== '{card_pid}' && /^[0-9]+$/.test({pid_of_1})"
        ),
        &format!(
            "String(window.__sameDocument) + ' forced=' + {forced} + ' toast=' + document.querySelector('#toast').textContent + ' ' + {card_states}"
        ),
    )
    .await;
    assert_eq!(
        *cdp.dialogs.lock().unwrap(),
        vec!["Restart instance 1?".to_string()],
        "exactly the restart confirmation was shown (and accepted)"
    );
    let b1_after = common::wait_until(
        "B's instance 1 under new OS pids in /proc",
        Duration::from_secs(15),
        || {
            let now = instance_pids(&site, APP_B, 1);
            let fresh = !now.is_empty() && now.iter().all(|p| !b1_before.contains(p));
            async move { fresh.then_some(now) }
        },
    )
    .await;
    let new_card_pid: i32 = page
        .eval(pid_of_1)
        .await
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert!(
        b1_after.contains(&new_card_pid),
        "the card shows the new process: {new_card_pid} among {b1_after:?}"
    );
    assert_eq!(instance_pids(&site, APP, 1), a_before, "A's pids unchanged");
    assert_eq!(
        instance_pids(&site, APP_B, 2),
        b2_before,
        "B's instance 2 unchanged"
    );
    let a_status = tokio::task::block_in_place(|| dx.get(&format!("/api/v1/apps/{APP}/status")));
    assert_eq!(
        a_status["instances"][0]["forced_restarts"],
        json!(0),
        "A was not asked to restart: {a_status:#}"
    );
    shots.push(page.screenshot("apps-3-dashboard-b-after-restart").await);

    // 5. The card's stdout link: B's log page under /apps/dxsmoke, with B's
    //    own line, following B's file over its websocket.
    page.click("section.instance[data-instance=\"1\"] a[href$=\"/logs/stdout\"]")
        .await;
    page.wait_js(
        "B's instance 1 stdout page",
        Duration::from_secs(15),
        &format!(
            "location.pathname === '/apps/{APP_B}/instances/1/logs/stdout' \
             && document.readyState === 'complete' && document.body.dataset.page === 'logs'"
        ),
        "location.href + ' ' + document.body.innerText.slice(0, 300)",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('header.top .app').textContent")
            .await,
        json!(APP_B)
    );
    let ws_path = page.eval("document.querySelector('#log').dataset.ws").await;
    let ws_path = ws_path.as_str().unwrap_or_default().to_string();
    let prefix = format!("/apps/{APP_B}/instances/1/logs/stdout/ws?from=");
    let from: u64 = ws_path
        .strip_prefix(&prefix)
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("the page follows B's file: {ws_path:?}"));
    let echo_js = serde_json::to_string(B_ECHO).unwrap();
    page.wait_js(
        "B's own start-up line on B's log page",
        Duration::from_secs(5),
        &format!(
            "Array.from(document.querySelectorAll('#log .line')).some(l => l.textContent.includes({echo_js}))"
        ),
        "document.querySelector('#log').textContent.slice(-600)",
    )
    .await;
    let a_log = site.log_file(1, "stdout");
    assert!(
        !std::fs::read_to_string(&a_log)
            .unwrap_or_default()
            .contains(B_ECHO),
        "the marker is B's only"
    );
    // A heartbeat written after the page's offset can only come over the
    // websocket.
    let b_log = site.logs().join(format!("{APP_B}-1-stdout.log"));
    followed_line_shows(&page, &b_log, from, "B's log page", Duration::from_secs(15)).await;
    shots.push(page.screenshot("apps-4-logs-b").await);

    // 6. B's terminal: a remote shell into B's node, gone with the tab.
    let service = common::apps::service(&site, APP_B, 1).join("current");
    let term = cdp.new_page().await;
    term.goto(&format!("{base}/apps/{APP_B}/instances/1/terminal"))
        .await;
    let rows = "Array.from(document.querySelectorAll('.xterm-rows > div')).map(r => r.textContent.replace(/\\u00a0/g, ' ').trimEnd())";
    term.wait_js(
        "an iex prompt of B's node in the terminal",
        Duration::from_secs(30),
        &format!("{rows}.some(r => /iex\\({APP_B}-1@[^)]*\\)\\d+>/.test(r))"),
        &format!("document.querySelector('#term-status').textContent + ' | ' + {rows}.join(' / ')"),
    )
    .await;
    let shells = remote_shell_pids(&service);
    assert!(
        !shells.is_empty(),
        "a `remote` process runs for {}; processes there: {:#?}",
        service.display(),
        cmdlines_mentioning(&service)
    );
    shots.push(term.screenshot("apps-5-terminal-b").await);
    term.close().await;
    common::wait_until(
        "B's remote shell to exit after the terminal closed",
        Duration::from_secs(5),
        || {
            let left = remote_shell_pids(&service)
                .into_iter()
                .any(|p| shells.contains(&p));
            async move { (!left).then_some(()) }
        },
    )
    .await;

    let problems = cdp.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "errors in the pages: {problems:#?}");
    for shot in &shots {
        assert!(std::fs::metadata(shot).unwrap().len() > 1000, "{shot:?}");
        eprintln!("screenshot: {}", shot.display());
    }

    cdp.send("Browser.close", json!({}), None);
    drop(browser);
    drop(dx);
}
