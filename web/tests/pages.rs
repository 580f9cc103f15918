//! Pages, cookie sessions, CSRF, logs, metrics, static assets and the
//! terminal, through the real filter stack against the canned engine.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use deployex_web::routes_with_state;

type Resp = warp::http::Response<warp::hyper::body::Bytes>;

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(r.body()).into_owned()
}

fn cookie_of(state: &deployex_web::AppState) -> String {
    format!("deployex_session={}", state.tokens.issue())
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The HTML of one card: from its `<section` to its `</section>`.
fn card<'a>(html: &'a str, marker: &str) -> &'a str {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in {html}"));
    let start = html[..start].rfind("<section").unwrap();
    let end = start + html[start..].find("</section>").unwrap();
    &html[start..end]
}

/// The opening tag that holds `needle`.
fn tag_with<'a>(html: &'a str, needle: &str) -> &'a str {
    let at = html
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} in {html}"));
    let start = html[..at].rfind('<').unwrap();
    let end = at + html[at..].find('>').unwrap();
    &html[start..=end]
}

/// The text of the `<dd>` of field `key`.
fn field_text<'a>(html: &'a str, key: &str) -> &'a str {
    let tag = format!("data-f=\"{key}\">");
    let at = html.find(&tag).unwrap_or_else(|| panic!("{key} in {html}")) + tag.len();
    &html[at..at + html[at..].find('<').unwrap()]
}

#[tokio::test]
async fn pages_redirect_to_login_without_session() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state);
    for path in [
        "/",
        "/versions",
        "/debug/actors",
        "/instances/1/logs/stdout",
        "/instances/1/terminal",
    ] {
        let r = warp::test::request().path(path).reply(&f).await;
        assert_eq!(r.status(), 302, "{path}");
        assert_eq!(r.headers()["location"], "/login", "{path}");
    }
    let r = warp::test::request().path("/login").reply(&f).await;
    assert_eq!(r.status(), 200);
    assert!(text(&r).contains("type=\"password\""));
    for path in [
        "/api/v1/debug/actors",
        "/api/v1/status/stream",
        "/api/v1/instances/1/logs/stdout",
        "/metrics",
    ] {
        let r = warp::test::request().path(path).reply(&f).await;
        assert_eq!(r.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn form_login_sets_cookie_and_logout_revokes_it() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state);
    let r = warp::test::request()
        .method("POST")
        .path("/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=admin&password=wrong")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(text(&r).contains("Invalid user or password"));

    let r = warp::test::request()
        .method("POST")
        .path("/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username=admin&password={PASSWORD}"))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    assert!(
        !set.contains("Secure"),
        "secure_cookie is off in this config"
    );
    let cookie = set.split(';').next().unwrap().to_string();

    let r = warp::test::request()
        .path("/")
        .header("cookie", &cookie)
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );

    let r = warp::test::request()
        .method("POST")
        .path("/logout")
        .header("cookie", &cookie)
        .header("host", "localhost:4000")
        .header("origin", "http://127.0.0.1:4000")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = warp::test::request()
        .path("/")
        .header("cookie", &cookie)
        .reply(&f)
        .await;
    assert_eq!(r.status(), 302, "a logged-out token no longer works");
}

#[tokio::test]
async fn secure_cookie_flag() {
    let engine = std::sync::Arc::new(FakeEngine::default());
    let mut cfg = config();
    cfg.secure_cookie = true;
    let f = deployex_web::routes(engine, cfg);
    let r = warp::test::request()
        .method("POST")
        .path("/login")
        .remote_addr(SocketAddr::from(([10, 1, 1, 1], 1)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username=admin&password={PASSWORD}"))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
}

/// `DEPLOYEX_PHX_HOST=deploy.example.com` (the defaults): a form login
/// from `https://deploy.example.com` gets a `Secure`, `__Host-` cookie that
/// then works; a form login from another origin is refused.
#[tokio::test]
async fn public_host_means_https_origin_and_secure_host_cookie() {
    let engine = std::sync::Arc::new(FakeEngine::default());
    let mut cfg = deployex_web::WebConfig::new(
        "127.0.0.1:5001".parse().unwrap(),
        "deploy.example.com",
        "test-secret-key-base-0123456789",
        hash(),
        "myapp",
    );
    cfg.metrics_token = None;
    let f = deployex_web::routes(engine, cfg);
    let login = |origin: &str| {
        warp::test::request()
            .method("POST")
            .path("/login")
            .remote_addr(SocketAddr::from(([10, 1, 1, 2], 1)))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("username=admin&password={PASSWORD}"))
    };
    let r = login("https://evil.example").reply(&f).await;
    assert_eq!(r.status(), 403);
    let r = login("http://deploy.example.com").reply(&f).await;
    assert_eq!(r.status(), 403, "http is another origin");
    let r = login("https://deploy.example.com").reply(&f).await;
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.starts_with("__Host-deployex_session="), "{set}");
    assert!(set.contains("; Secure") && set.contains("Path=/"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let r = warp::test::request()
        .path("/")
        .header("cookie", &cookie)
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    // The plain-http name is not read when the cookie is secure.
    let plain = cookie.replace("__Host-", "");
    let r = warp::test::request()
        .path("/")
        .header("cookie", &plain)
        .reply(&f)
        .await;
    assert_eq!(r.status(), 302);
    // A websocket must carry the origin (no Origin → refused).
    let r = warp::test::ws()
        .path("/instances/1/terminal/ws")
        .header("cookie", &cookie)
        .handshake(f.clone())
        .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn form_login_shares_the_rate_limit() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state);
    let ip = SocketAddr::from(([10, 9, 9, 9], 1));
    for _ in 0..5 {
        let r = warp::test::request()
            .method("POST")
            .path("/api/v1/login")
            .remote_addr(ip)
            .json(&serde_json::json!({"username":"admin","password":"x"}))
            .reply(&f)
            .await;
        assert_eq!(r.status(), 401);
    }
    let r = warp::test::request()
        .method("POST")
        .path("/login")
        .remote_addr(ip)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username=admin&password={PASSWORD}"))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn dashboard_renders_cards_and_versions() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let r = warp::test::request()
        .path("/")
        .header("cookie", cookie_of(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let html = text(&r);
    for i in 1..=3 {
        assert!(html.contains(&format!("data-instance=\"{i}\"")), "card {i}");
    }
    assert!(html.contains("Deploying 1.0.1 to instance 2: unpack"));
    // The last 10 distinct versions are offered for pinning, newest first.
    assert_eq!(html.matches("<option").count(), 10);
    assert!(html.contains("value=\"1.0.11\""));
    assert!(!html.contains("value=\"1.0.1\">"));
    // Crash restarts highlighted for instance 3, the liveness restart for
    // instance 2, nothing else.
    assert_eq!(html.matches("field warn").count(), 2);
    assert!(
        card(&html, "data-instance=\"2\"").contains("field warn\" data-k=\"liveness_restarts\"")
    );
    assert_eq!(
        field_text(card(&html, "data-instance=\"2\""), "last_restart_reason"),
        "liveness"
    );
    assert_eq!(
        field_text(card(&html, "data-instance=\"1\""), "boot"),
        "started"
    );
    assert!(html.contains("0.9.0"), "ghosted version listed");

    // BEAM telemetry in human units; "—" where there is no sample.
    let one = card(&html, "data-instance=\"1\"");
    assert_eq!(field_text(one, "beam_memory"), "51.0 MiB");
    assert_eq!(field_text(one, "beam_processes"), "301");
    assert_eq!(field_text(one, "beam_run_queue"), "0");
    assert_eq!(field_text(one, "beam_reductions"), "12345");
    let two = card(&html, "data-instance=\"2\"");
    assert_eq!(field_text(two, "beam_memory"), "52.0 MiB");
    assert_eq!(field_text(two, "beam_reductions"), "—");
    let three = card(&html, "data-instance=\"3\"");
    assert_eq!(field_text(three, "beam_memory"), "—");
    assert_eq!(field_text(three, "beam_processes"), "—");
    // The mTLS badge shows on the instance that uses it, and on deployex.
    assert!(one.contains(">mTLS</span>"), "{one}");
    assert!(!tag_with(one, "data-f=\"tls\"").contains("hidden"), "{one}");
    assert!(tag_with(two, "data-f=\"tls\"").contains("hidden"), "{two}");
    let dx = card(&html, "id=\"deployex\"");
    assert!(!tag_with(dx, "data-f=\"tls\"").contains("hidden"), "{dx}");
    assert_eq!(field_text(dx, "distribution"), "mutual TLS");
    assert_eq!(field_text(dx, "last_deploy"), "1.5 s (1.0.0 on 3)");

    let r = warp::test::request()
        .path("/versions?instance=2")
        .header("cookie", cookie_of(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let html = text(&r);
    assert!(html.contains("Version history of instance 2"));
    assert!(html.contains(">1.0.10<") && !html.contains(">1.0.11<"));
}

#[tokio::test]
async fn csrf_cookie_state_changes_need_same_origin() {
    let (engine, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let cookie = cookie_of(&state);
    let post = |origin: Option<&str>, referer: Option<&str>| {
        let mut r = warp::test::request()
            .method("POST")
            .path("/api/v1/instances/1/restart")
            .header("host", "127.0.0.1:4000")
            .header("cookie", &cookie);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(o) = referer {
            r = r.header("referer", o);
        }
        r
    };
    assert_eq!(post(None, None).reply(&f).await.status(), 403);
    assert_eq!(
        post(Some("http://evil.example"), None)
            .reply(&f)
            .await
            .status(),
        403
    );
    assert_eq!(
        post(None, Some("http://evil.example/x"))
            .reply(&f)
            .await
            .status(),
        403
    );
    assert_eq!(
        post(Some("http://127.0.0.1:4000.evil.example"), None)
            .reply(&f)
            .await
            .status(),
        403
    );
    assert!(engine.calls().is_empty());
    assert_eq!(
        post(Some("http://127.0.0.1:4000"), None)
            .reply(&f)
            .await
            .status(),
        202
    );
    assert_eq!(
        post(None, Some("http://127.0.0.1:4000/"))
            .reply(&f)
            .await
            .status(),
        202
    );
    // The other public origin is accepted too (behind a proxy).
    assert_eq!(
        post(Some("https://deployex.example"), None)
            .reply(&f)
            .await
            .status(),
        202
    );
    for (origin, want) in [
        // Exactly the origin: another port or scheme is another origin.
        ("https://deployex.example:8443", 403),
        ("http://deployex.example", 403),
        ("http://localhost:4000", 403),
        ("https://deployex.example.evil", 403),
        ("https://evil.example/deployex.example", 403),
    ] {
        assert_eq!(
            post(Some(origin), None).reply(&f).await.status(),
            want,
            "{origin}"
        );
    }
    // Bearer calls are exempt.
    let r = warp::test::request()
        .method("POST")
        .path("/api/v1/instances/1/restart")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(engine.calls().len(), 4);
    // Cross-origin logout is refused too.
    let r = warp::test::request()
        .method("POST")
        .path("/logout")
        .header("host", "127.0.0.1:4000")
        .header("origin", "http://evil.example")
        .header("cookie", &cookie)
        .reply(&f)
        .await;
    assert_eq!(r.status(), 403);
}

const EVIL: &str = "<script>alert(1)</script>";

fn log_engine() -> (tempfile::TempDir, FakeEngine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine {
        log_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    (dir, engine)
}

#[tokio::test]
async fn logs_page_and_plain_api_escape_and_tail() {
    let (dir, engine) = log_engine();
    let mut content = String::new();
    for n in 0..300 {
        content.push_str(&format!("line {n}\n"));
    }
    content.push_str(&format!("10:00 [error] \x1b[31m{EVIL}\x1b[0m\n"));
    std::fs::write(dir.path().join("1-stdout.log"), &content).unwrap();
    let (_, state) = state_with(engine);
    let f = routes_with_state(state.clone());

    let r = warp::test::request()
        .path("/instances/1/logs/stdout")
        .header("cookie", cookie_of(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let html = text(&r);
    assert!(!html.contains(EVIL), "log data must be escaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("lv-error") && html.contains("class=\"c31\""));
    assert!(
        html.contains("line 299") && !html.contains("line 100\n"),
        "last 200 lines only"
    );
    assert!(html.contains(&format!("ws?from={}", content.len())));

    let r = warp::test::request()
        .path("/api/v1/instances/1/logs/stdout?lines=2")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        text(&r),
        format!("line 299\n10:00 [error] \x1b[31m{EVIL}\x1b[0m\n")
    );

    let r = warp::test::request()
        .path("/api/v1/instances/2/logs/stderr")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 404, "missing file");
    let r = warp::test::request()
        .path("/api/v1/instances/9/logs/stdout")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 404, "no such instance");
    let r = warp::test::request()
        .path("/api/v1/instances/1/logs/other")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 404);
}

async fn recv_json(ws: &mut warp::test::WsClient) -> serde_json::Value {
    let m = tokio::time::timeout(Duration::from_secs(10), ws.recv())
        .await
        .expect("a websocket message in time")
        .unwrap();
    serde_json::from_str(m.to_str().unwrap()).unwrap()
}

#[tokio::test]
async fn logs_follow_over_websocket_with_truncation_and_rotation() {
    use std::io::Write;
    let (dir, engine) = log_engine();
    let path = dir.path().join("1-stderr.log");
    let (_, state) = state_with(engine);
    let f = routes_with_state(state.clone());

    let mut ws = warp::test::ws()
        .path("/instances/1/logs/stderr/ws?from=0")
        .header("cookie", cookie_of(&state))
        .header("origin", "http://127.0.0.1:4000")
        .handshake(f.clone())
        .await
        .unwrap();
    let m = recv_json(&mut ws).await;
    assert!(
        m["notice"].as_str().unwrap().contains("does not exist"),
        "{m}"
    );

    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "[info] {EVIL}").unwrap();
    write!(file, "partial").unwrap();
    file.flush().unwrap();
    let m = recv_json(&mut ws).await;
    let line = &m["lines"][0];
    assert_eq!(line["level"], "info");
    assert_eq!(
        line["segs"][0]["t"],
        format!("[info] {EVIL}"),
        "sent as text for textContent"
    );
    assert_eq!(
        m["lines"].as_array().unwrap().len(),
        1,
        "partial line held back"
    );
    writeln!(file, " done").unwrap();
    let m = recv_json(&mut ws).await;
    assert_eq!(m["lines"][0]["segs"][0]["t"], "partial done");

    // Truncation: start over at 0.
    drop(file);
    std::fs::write(&path, "").unwrap();
    let m = recv_json(&mut ws).await;
    assert!(m["notice"].as_str().unwrap().contains("truncated"), "{m}");
    std::fs::write(&path, "after truncate\n").unwrap();
    let m = recv_json(&mut ws).await;
    assert_eq!(m["lines"][0]["segs"][0]["t"], "after truncate");

    // Rotation: rename, new file with a new inode.
    std::fs::rename(&path, dir.path().join("1-stderr.log.1")).unwrap();
    std::fs::write(&path, "fresh file\n").unwrap();
    let m = recv_json(&mut ws).await;
    assert!(m["notice"].as_str().unwrap().contains("rotated"), "{m}");
    let m = recv_json(&mut ws).await;
    assert_eq!(m["lines"][0]["segs"][0]["t"], "fresh file");
}

#[tokio::test]
async fn websocket_refuses_cross_origin_and_anonymous() {
    let (_dir, engine) = log_engine();
    let (_, state) = state_with(engine);
    let f = routes_with_state(state.clone());
    let r = warp::test::ws()
        .path("/instances/1/logs/stderr/ws")
        .handshake(f.clone())
        .await;
    assert!(r.is_err());
    let r = warp::test::ws()
        .path("/instances/1/logs/stderr/ws")
        .header("cookie", cookie_of(&state))
        .header("host", "127.0.0.1:4000")
        .header("origin", "http://evil.example")
        .handshake(f.clone())
        .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn actors_json_and_page() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let r = warp::test::request()
        .path("/api/v1/debug/actors")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["name"], "root");
    assert_eq!(v["children"][0]["in_flight"]["kind"], "Deploy");
    let r = warp::test::request()
        .path("/debug/actors")
        .header("cookie", cookie_of(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let html = text(&r);
    assert!(html.contains("&lt;b&gt;summary&lt;/b&gt;") && !html.contains("<b>summary"));
    assert!(html.contains("msg inflight") && html.contains("actor-head stuck"));
}

#[tokio::test]
async fn metrics_need_session_or_metrics_token() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let _ = warp::test::request().path("/healthz").reply(&f).await;
    let r = warp::test::request()
        .path("/metrics")
        .header("authorization", "Bearer wrong")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 401);
    let r = warp::test::request()
        .path("/metrics")
        .header("authorization", "Bearer metrics-tok")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let body = text(&r);
    assert!(
        body.contains("deployex_instance_up{app=\"myapp\",instance=\"1\",version=\"1.0.0\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("deployex_instance_crash_restarts_total{app=\"myapp\",instance=\"3\"} 2")
    );
    assert!(body.contains("deployex_deploys_total{app=\"myapp\",kind=\"hot_upgrade\"} 6"));
    // BEAM telemetry per instance; no line for an instance without a sample.
    for line in [
        "deployex_beam_memory_bytes{app=\"myapp\",instance=\"1\"} 53477376",
        "deployex_beam_memory_bytes{app=\"myapp\",instance=\"2\"} 54525952",
        "deployex_beam_processes{app=\"myapp\",instance=\"1\"} 301",
        "deployex_beam_processes{app=\"myapp\",instance=\"2\"} 302",
        "deployex_beam_run_queue{app=\"myapp\",instance=\"2\"} 1",
        "deployex_beam_reductions_per_second{app=\"myapp\",instance=\"1\"} 12345",
        "# TYPE deployex_beam_memory_bytes gauge",
        "# TYPE deployex_deploy_duration_seconds summary",
        "deployex_deploy_duration_seconds_sum{app=\"myapp\"} 10.5",
        "deployex_deploy_duration_seconds_count{app=\"myapp\"} 4",
        "deployex_last_deploy_duration_seconds{app=\"myapp\",instance=\"3\",version=\"1.0.0\",kind=\"hot_upgrade\"} 1.5",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} in\n{body}");
    }
    assert!(!body.contains("deployex_beam_memory_bytes{app=\"myapp\",instance=\"3\"}"));
    assert!(!body.contains("deployex_beam_reductions_per_second{app=\"myapp\",instance=\"2\"}"));
    assert!(body.contains("deployex_http_requests_total{route=\"/healthz\",status=\"200\"} 1"));
    assert!(body.contains("deployex_http_requests_total{route=\"/metrics\",status=\"401\"} 1"));
    let r = warp::test::request()
        .path("/metrics")
        .header("cookie", cookie_of(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn static_assets_are_public_and_cached() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state);
    let r = warp::test::request().path("/static/app.js").reply(&f).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    assert!(text(&r).contains("textContent"));
    let r = warp::test::request()
        .path("/static/xterm-6.0.0.js")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert!(r.body().len() > 100_000);
    let r = warp::test::request()
        .path("/static/nope.js")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 404);
}

fn alive(pid: i32) -> bool {
    // A zombie counts as dead: it runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s[s.rfind(')').unwrap() + 2..].starts_with('Z'),
        Err(_) => false,
    }
}

#[tokio::test]
async fn terminal_bridges_pty_and_kills_group_on_close() {
    use deployex_actors::model::ShellCommand;
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine::default();
    *engine.shell.lock().unwrap() = Some(ShellCommand {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "sleep 1000 & echo PIDS $$ $! END; stty -echo; while read l; do echo \"got:$l\"; done"
                .into(),
        ],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: dir.path().to_path_buf(),
        user: None,
    });
    let (_, state) = state_with(engine);
    let f = routes_with_state(state.clone());
    let mut ws = warp::test::ws()
        .path("/instances/1/terminal/ws")
        .header("cookie", cookie_of(&state))
        .header("origin", "http://127.0.0.1:4000")
        .handshake(f.clone())
        .await
        .unwrap();
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.contains("END") {
        assert!(Instant::now() < deadline, "no PIDS line: {out:?}");
        let m = tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .unwrap()
            .unwrap();
        out.push_str(&String::from_utf8_lossy(m.as_bytes()));
    }
    let pids: Vec<i32> = out
        .split("PIDS")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .take(2)
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.iter().all(|p| alive(*p)));
    ws.send_text(r#"{"cols":100,"rows":30}"#).await;
    ws.send(warp::ws::Message::binary(b"hello\n".to_vec()))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.contains("got:hello") {
        assert!(Instant::now() < deadline, "no echo: {out:?}");
        let m = tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .unwrap()
            .unwrap();
        out.push_str(&String::from_utf8_lossy(m.as_bytes()));
    }
    drop(ws);
    wait_until("the shell and its background child to die", || {
        pids.iter().all(|p| !alive(*p))
    })
    .await;
}

#[tokio::test]
async fn terminal_idle_timeout_closes_and_kills() {
    use deployex_actors::model::ShellCommand;
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(FakeEngine::default());
    *engine.shell.lock().unwrap() = Some(ShellCommand {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "echo PID $$ END; exec sleep 1000".into()],
        env: vec![],
        cwd: dir.path().to_path_buf(),
        user: None,
    });
    let mut cfg = config();
    cfg.terminal_idle = Duration::from_millis(300);
    let state = deployex_web::AppState::new(engine, cfg);
    let f = routes_with_state(state.clone());
    let mut ws = warp::test::ws()
        .path("/instances/2/terminal/ws")
        .header("cookie", cookie_of(&state))
        .header("origin", "http://127.0.0.1:4000")
        .handshake(f.clone())
        .await
        .unwrap();
    let mut out = String::new();
    let mut notice = String::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .unwrap();
        let Ok(m) = m else { break };
        if m.is_text() {
            notice = m.to_str().unwrap().to_string();
        } else if m.is_close() {
            break;
        } else {
            out.push_str(&String::from_utf8_lossy(m.as_bytes()));
        }
    }
    assert!(notice.contains("inactivity"), "{notice}");
    let pid: i32 = out
        .split("PID")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    wait_until("the shell to die", || !alive(pid)).await;
}

#[tokio::test]
async fn terminal_reports_engine_refusal() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let mut ws = warp::test::ws()
        .path("/instances/1/terminal/ws")
        .header("cookie", cookie_of(&state))
        .header("origin", "http://127.0.0.1:4000")
        .handshake(f.clone())
        .await
        .unwrap();
    let m = recv_json(&mut ws).await;
    assert!(m["notice"].as_str().unwrap().contains("not running"), "{m}");
}

#[tokio::test]
async fn status_stream_pushes_sse_over_a_real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let engine = std::sync::Arc::new(FakeEngine::default());
    let cfg = config();
    let token = deployex_web::auth::TokenSigner::for_admin(
        &cfg.secret_key_base,
        &cfg.admin_hashed_password,
        cfg.session_ttl,
    )
    .issue();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, handle) = deployex_web::serve(engine, cfg, async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /api/v1/status/stream HTTP/1.1\r\nHost: x\r\nCookie: deployex_session={token}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains("\"instances\"") {
        assert!(
            Instant::now() < deadline,
            "no SSE data: {}",
            String::from_utf8_lossy(&got)
        );
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"));
    assert!(got.contains("text/event-stream"));
    assert!(got.contains("data:{\"app\":\"myapp\""));
    drop(s);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_ends_terminals_and_log_followers() {
    use deployex_actors::model::ShellCommand;
    let (dir, engine) = log_engine();
    *engine.shell.lock().unwrap() = Some(ShellCommand {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "echo PID $$ END; exec sleep 1000".into()],
        env: vec![],
        cwd: dir.path().to_path_buf(),
        user: None,
    });
    let (_, state) = state_with(engine);
    let f = routes_with_state(state.clone());
    let mut term = warp::test::ws()
        .path("/instances/1/terminal/ws")
        .header("cookie", cookie_of(&state))
        .header("origin", "http://127.0.0.1:4000")
        .handshake(f.clone())
        .await
        .unwrap();
    let mut logs = warp::test::ws()
        .path("/instances/1/logs/stdout/ws")
        .header("cookie", cookie_of(&state))
        .header("origin", "http://127.0.0.1:4000")
        .handshake(f.clone())
        .await
        .unwrap();
    let mut out = String::new();
    while !out.contains("END") {
        let m = tokio::time::timeout(Duration::from_secs(10), term.recv())
            .await
            .unwrap()
            .unwrap();
        out.push_str(&String::from_utf8_lossy(m.as_bytes()));
    }
    let pid: i32 = out
        .split("PID")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    state.shutdown.send_replace(true);
    let notice = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), term.recv())
            .await
            .unwrap()
            .unwrap();
        if m.is_text() {
            break m.to_str().unwrap().to_string();
        }
    };
    assert!(notice.contains("shutting down"), "{notice}");
    wait_until("the shell to die", || !alive(pid)).await;
    // The log follower closes its socket (a missing-file notice may come first).
    loop {
        match tokio::time::timeout(Duration::from_secs(10), logs.recv())
            .await
            .unwrap()
        {
            Ok(m) if m.is_close() => break,
            Ok(m) => assert!(m.is_text(), "only notices before the close"),
            Err(_) => break,
        }
    }
}

#[test]
fn byte_and_duration_formats() {
    use deployex_web::pages::{fmt_bytes, fmt_duration_ms};
    assert_eq!(fmt_bytes(0), "0 B");
    assert_eq!(fmt_bytes(1023), "1023 B");
    assert_eq!(fmt_bytes(1536), "1.5 KiB");
    assert_eq!(fmt_bytes(33 * 1024 * 1024 + 300 * 1024), "33.3 MiB");
    assert_eq!(fmt_bytes(3 << 30), "3.0 GiB");
    assert_eq!(fmt_bytes(u64::MAX), "16777216.0 TiB");
    assert_eq!(fmt_duration_ms(1500), "1.5 s");
    assert_eq!(fmt_duration_ms(125_000), "2m 5s");
}

/// deployex's own log (instance 0) without a log file: the page holds the
/// recent lines from the in-memory ring, and is not followed.
#[tokio::test]
async fn own_log_page_shows_recent_lines_from_memory() {
    let engine = std::sync::Arc::new(FakeEngine::default());
    let mut cfg = config();
    let own = deployex_web::ownlog::OwnLog::new(100);
    own.push("INFO deployex: starting deployex 0.1.0");
    own.push("WARN deployex_web: <b>not html</b>");
    cfg.own_log = Some(own);
    let state = deployex_web::AppState::new(engine, cfg);
    let f = routes_with_state(state.clone());
    let r = warp::test::request()
        .path("/instances/0/logs/stdout")
        .header("cookie", cookie_of(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let html = String::from_utf8_lossy(r.body());
    assert!(html.contains("starting deployex 0.1.0"), "{html}");
    assert!(html.contains("&lt;b&gt;not html"), "escaped");
    assert!(!html.contains("data-ws"), "not followed");
    let r = warp::test::request()
        .path("/api/v1/instances/0/logs/stdout?lines=1")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        String::from_utf8_lossy(r.body()),
        "WARN deployex_web: <b>not html</b>\n"
    );
}

/// A logged-out session's open terminal closes within seconds (and its
/// shell dies with it).
#[tokio::test]
async fn logout_closes_the_sessions_open_terminal() {
    use deployex_actors::model::ShellCommand;
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(FakeEngine::default());
    *engine.shell.lock().unwrap() = Some(ShellCommand {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "echo PID $$ END; exec sleep 1000".into()],
        env: vec![],
        cwd: dir.path().to_path_buf(),
        user: None,
    });
    let state = deployex_web::AppState::new(engine, config());
    let f = routes_with_state(state.clone());
    let token = state.tokens.issue();
    let mut ws = warp::test::ws()
        .path("/instances/2/terminal/ws")
        .header("cookie", format!("deployex_session={token}"))
        .header("origin", "http://127.0.0.1:4000")
        .handshake(f.clone())
        .await
        .unwrap();
    let mut out = String::new();
    while !out.contains(" END") {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .unwrap()
            .unwrap();
        out.push_str(&String::from_utf8_lossy(m.as_bytes()));
    }
    let pid: i32 = out
        .split("PID")
        .nth(1)
        .and_then(|s| s.split("END").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap();
    // Logout from elsewhere (another tab): the token is revoked.
    let r = warp::test::request()
        .method("POST")
        .path("/logout")
        .header("cookie", format!("deployex_session={token}"))
        .header("origin", "http://127.0.0.1:4000")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 303);
    let start = Instant::now();
    let mut notice = String::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .unwrap();
        let Ok(m) = m else { break };
        if m.is_text() {
            notice = m.to_str().unwrap().to_string();
        } else if m.is_close() {
            break;
        }
    }
    assert!(notice.contains("session ended"), "{notice}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    wait_until("the shell to die", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
}
