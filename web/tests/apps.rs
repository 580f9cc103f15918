//! `/api/v1/apps` and the per-app routes (scope.rs: `/api/v1/apps/{app}/…`,
//! `/apps/{app}/…`) through the real filter stack, against two canned
//! engines: each call reaches the named app's engine only; an unknown app
//! is 404 with a session and 401/302 without; every route needs a session;
//! `/` is the overview with several apps; `/metrics` labels each app.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use deployex_web::{AppState, routes_with_state};
use serde_json::Value;

fn two_apps() -> (Arc<FakeEngine>, Arc<FakeEngine>, Arc<AppState>) {
    let a = Arc::new(FakeEngine::default());
    let b = Arc::new(FakeEngine::default());
    let state = AppState::with_apps(
        a.clone(),
        vec![("api".into(), a.clone()), ("worker".into(), b.clone())],
        config(),
    );
    (a, b, state)
}

fn body_json(r: &warp::http::Response<warp::hyper::body::Bytes>) -> Value {
    serde_json::from_slice(r.body()).unwrap()
}

const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/api/v1/apps"),
    ("GET", "/api/v1/apps/worker/status"),
    ("GET", "/api/v1/apps/worker/versions"),
    ("POST", "/api/v1/apps/worker/instances/1/restart"),
    ("POST", "/api/v1/apps/worker/mode"),
    ("DELETE", "/api/v1/apps/worker/ghosted/1.0.0"),
    ("GET", "/api/v1/apps/worker/instances/1/logs/stdout"),
    ("GET", "/api/v1/apps/worker/events"),
    ("GET", "/api/v1/apps/worker/status/stream"),
    ("GET", "/api/v1/apps/worker/history/stream"),
    ("GET", "/api/v1/apps/worker/instances/1/history"),
    ("GET", "/api/v1/apps/worker/instances/1/processes"),
    (
        "GET",
        "/api/v1/apps/worker/instances/1/processes/%3C0.1.0%3E",
    ),
    ("GET", "/api/v1/apps/worker/instances/1/supervision"),
    ("GET", "/api/v1/apps/worker/instances/1/ets"),
    ("GET", "/api/v1/apps/worker/fleet"),
    // An unknown app is not told apart from a known one without a session.
    ("GET", "/api/v1/apps/nope/status"),
    ("POST", "/api/v1/apps/nope/instances/1/restart"),
];

/// Pages: without a session, a redirect to the login page.
const PROTECTED_PAGES: &[&str] = &[
    "/apps/worker",
    "/apps/worker/versions",
    "/apps/worker/events",
    "/apps/worker/instances/1/logs/stdout",
    "/apps/worker/instances/1/terminal",
    "/apps/worker/instances/1/observer",
    "/apps/worker/fleet",
    "/apps/nope",
    "/apps/nope/versions",
];

#[tokio::test]
async fn every_app_route_needs_a_session() {
    let (a, b, state) = two_apps();
    let f = routes_with_state(state);
    for (method, path) in PROTECTED {
        let r = warp::test::request()
            .method(method)
            .path(path)
            .remote_addr(SocketAddr::from(([10, 0, 0, 1], 5555)))
            .reply(&f)
            .await;
        assert_eq!(r.status(), 401, "{method} {path}");
    }
    for path in PROTECTED_PAGES {
        let r = warp::test::request().path(path).reply(&f).await;
        assert_eq!(r.status(), 302, "{path}");
        assert_eq!(r.headers()["location"], "/login", "{path}");
    }
    assert!(a.calls().is_empty() && b.calls().is_empty());
}

#[tokio::test]
async fn each_call_reaches_the_named_app_only() {
    let (a, b, state) = two_apps();
    let f = routes_with_state(state.clone());
    let call = |method: &str, path: &str, body: &str| {
        warp::test::request()
            .method(method)
            .path(path)
            .remote_addr(SocketAddr::from(([10, 0, 0, 1], 5555)))
            .header("authorization", bearer(&state))
            .body(body)
    };

    let r = call("GET", "/api/v1/apps", "").reply(&f).await;
    assert_eq!(r.status(), 200);
    let list = body_json(&r);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(
        list[0]["instances"].as_array().unwrap().len(),
        3,
        "today's status shape"
    );

    let r = call("GET", "/api/v1/apps/worker/status", "")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    assert!(body_json(&r)["instances"].is_array());
    let r = call("GET", "/api/v1/apps/worker/versions?instance=1", "")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    assert!(body_json(&r).is_array());

    let r = call("POST", "/api/v1/apps/worker/instances/1/restart", "")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(b.calls(), vec!["restart 1".to_string()]);
    assert!(a.calls().is_empty(), "app api untouched: {:?}", a.calls());

    let r = call("POST", "/api/v1/apps/api/mode", r#"{"mode":"automatic"}"#)
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(a.calls().len(), 1);
    assert_eq!(b.calls().len(), 1, "app worker untouched");

    // The un-prefixed routes answer for the first app.
    let r = call("POST", "/api/v1/instances/3/restart", "")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(a.calls().last().unwrap(), "restart 3");
    assert_eq!(b.calls().len(), 1);

    // Unknown app: 404 on every route, no engine called.
    for (method, path) in [
        ("GET", "/api/v1/apps/nope/status"),
        ("GET", "/api/v1/apps/nope/versions"),
        ("POST", "/api/v1/apps/nope/instances/1/restart"),
        ("POST", "/api/v1/apps/nope/mode"),
        ("DELETE", "/api/v1/apps/nope/ghosted/1.0.0"),
        ("GET", "/api/v1/apps/nope/instances/1/logs/stdout"),
        ("GET", "/api/v1/apps/nope/events"),
        ("GET", "/api/v1/apps/nope/instances/1/processes"),
        ("GET", "/apps/nope"),
        ("GET", "/apps/nope/instances/1/logs/stdout"),
    ] {
        let r = call(method, path, r#"{"mode":"automatic"}"#)
            .reply(&f)
            .await;
        assert_eq!(r.status(), 404, "{method} {path}");
        assert!(
            body_json(&r)["error"].as_str().unwrap().contains("nope"),
            "{method} {path}"
        );
    }
    assert_eq!((a.calls().len(), b.calls().len()), (2, 1));
}

type Resp = warp::http::Response<warp::hyper::body::Bytes>;

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(r.body()).into_owned()
}

/// Two apps whose instance logs say which app they belong to.
fn two_apps_with_logs() -> (tempfile::TempDir, Arc<AppState>) {
    let dir = tempfile::tempdir().unwrap();
    let mut engines = Vec::new();
    for app in ["api", "worker"] {
        let logs = dir.path().join(app);
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("1-stdout.log"), format!("line of {app}\n")).unwrap();
        let e: Arc<dyn deployex_actors::engine::Engine> = Arc::new(FakeEngine {
            log_dir: Some(logs),
            ..FakeEngine::default()
        });
        engines.push((app.to_string(), e));
    }
    let state = AppState::with_apps(engines[0].1.clone(), engines, config());
    (dir, state)
}

#[tokio::test]
async fn pages_under_an_app_prefix_show_that_app_and_link_within_it() {
    let (_dir, state) = two_apps_with_logs();
    let f = routes_with_state(state.clone());
    let cookie = format!("deployex_session={}", state.tokens.issue());
    let page = |path: &str| {
        warp::test::request()
            .path(path)
            .header("cookie", cookie.clone())
    };

    // `/` with two apps: the overview, a row and a link per app.
    let r = page("/").reply(&f).await;
    assert_eq!(r.status(), 200);
    let html = text(&r);
    assert!(html.contains(r#"data-page="overview""#), "{html}");
    for app in ["api", "worker"] {
        assert!(
            html.contains(&format!(r#"<tr data-app="{app}">"#)),
            "{app}: {html}"
        );
        assert!(
            html.contains(&format!(r#"href="/apps/{app}""#)),
            "{app}: {html}"
        );
    }
    assert!(html.contains("3 of 3") || html.contains("1.0.0"), "{html}");

    // One app's dashboard: today's cards, every link and script call under
    // its prefix.
    let r = page("/apps/worker").reply(&f).await;
    assert_eq!(r.status(), 200);
    let html = text(&r);
    assert!(html.contains(r#"data-page="dashboard""#), "{html}");
    assert!(html.contains(r#"data-api="/api/v1/apps/worker""#), "{html}");
    for link in [
        "/apps/worker/instances/1/logs/stdout",
        "/apps/worker/instances/1/terminal",
        "/apps/worker/versions?instance=1",
        "/apps/worker/events",
    ] {
        assert!(
            html.contains(&format!(r#"href="{link}""#)),
            "{link}: {html}"
        );
    }
    assert!(
        html.contains(r#"data-live="/api/v1/apps/worker/history/stream""#),
        "{html}"
    );
    assert!(
        !html.contains(r#"href="/instances/1/"#),
        "an un-prefixed instance link: {html}"
    );

    // Its log page reads its own instance's file and follows it under the
    // prefix; the un-prefixed page is the first app's.
    let r = page("/apps/worker/instances/1/logs/stdout").reply(&f).await;
    assert_eq!(r.status(), 200);
    let html = text(&r);
    assert!(
        html.contains("line of worker") && !html.contains("line of api"),
        "{html}"
    );
    assert!(
        html.contains(r#"data-ws="/apps/worker/instances/1/logs/stdout/ws?from="#),
        "{html}"
    );
    let r = page("/instances/1/logs/stdout").reply(&f).await;
    assert!(text(&r).contains("line of api"));
    // deployex's own log is host-wide: not under an app.
    let r = page("/apps/worker/instances/0/logs/stdout").reply(&f).await;
    assert_eq!(r.status(), 404);

    let r = page("/apps/worker/instances/2/terminal").reply(&f).await;
    assert_eq!(r.status(), 200);
    assert!(text(&r).contains(r#"data-ws="/apps/worker/instances/2/terminal/ws""#));

    for path in ["/apps/worker/versions", "/apps/worker/events"] {
        let r = page(path).reply(&f).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(text(&r).contains(r#"data-base="/apps/worker""#), "{path}");
    }

    // The API: the same, by the app's engine.
    let r = warp::test::request()
        .path("/api/v1/apps/worker/instances/1/logs/stdout")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(text(&r), "line of worker\n");
}

#[tokio::test]
async fn one_app_keeps_todays_dashboard_at_the_root() {
    let (_e, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let r = warp::test::request()
        .path("/")
        .header(
            "cookie",
            format!("deployex_session={}", state.tokens.issue()),
        )
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let html = text(&r);
    assert!(html.contains(r#"data-page="dashboard""#), "{html}");
    assert!(html.contains(r#"data-api="/api/v1""#), "{html}");
    assert!(
        html.contains(r#"href="/instances/1/logs/stdout""#),
        "{html}"
    );
}

#[tokio::test]
async fn metrics_label_every_series_with_its_app() {
    let (_a, _b, state) = two_apps();
    let f = routes_with_state(state.clone());
    let r = warp::test::request()
        .path("/metrics")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let body = text(&r);
    for app in ["api", "worker"] {
        for line in [
            format!("deployex_instance_up{{app=\"{app}\",instance=\"1\",version=\"1.0.0\"}} 1"),
            format!("deployex_deploys_total{{app=\"{app}\",kind=\"hot_upgrade\"}} 6"),
            format!("deployex_deploy_duration_seconds_count{{app=\"{app}\"}} 4"),
        ] {
            assert!(body.lines().any(|l| l == line), "{line} in\n{body}");
        }
    }
    // One HELP/TYPE per metric, both apps' series under it.
    assert_eq!(body.matches("# TYPE deployex_instance_up gauge").count(), 1);
    assert_eq!(
        body.matches("# TYPE deployex_uptime_seconds gauge").count(),
        1
    );
}

/// The per-app views (status single flights) are bounded by the
/// configuration: a reload that drops an app or replaces its engine
/// leaves no view behind, whatever was requested before.
#[tokio::test]
async fn views_follow_the_app_list() {
    let (_a, _b, state) = two_apps();
    let f = routes_with_state(state.clone());
    for app in ["api", "worker", "nope", "nope2"] {
        warp::test::request()
            .path(&format!("/api/v1/apps/{app}/status"))
            .header("authorization", bearer(&state))
            .reply(&f)
            .await;
    }
    assert_eq!(
        state.cached_views(),
        2,
        "one per configured app, none for unknown names"
    );
    // A reload: worker removed, api's engine replaced.
    let api2: Arc<dyn deployex_actors::engine::Engine> = Arc::new(FakeEngine::default());
    *state.apps.write().unwrap() = vec![("api".into(), api2)];
    let r = warp::test::request()
        .path("/api/v1/apps/worker/status")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 404, "a removed app");
    let r = warp::test::request()
        .path("/api/v1/status")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(state.cached_views(), 1);
}

/// Each app has its own fleet: `/api/v1/apps/{app}/fleet` and
/// `/apps/{app}/fleet` show that app's, the un-prefixed ones the first
/// app's.
#[tokio::test]
async fn each_app_has_its_own_fleet_view() {
    let api: Arc<dyn deployex_actors::engine::Engine> = Arc::new(FakeEngine::default());
    let view = serde_json::json!({
        "host_id": "h-worker", "max_parallel": 1, "lease_ms": 4000, "last_error": null,
        "hosts": [], "claims": [], "ghosts": ["9.9.9"],
    });
    let worker: Arc<dyn deployex_actors::engine::Engine> = Arc::new(FakeEngine {
        fleet_view: Some(view),
        ..FakeEngine::default()
    });
    let state = AppState::with_apps(
        api.clone(),
        vec![("api".into(), api), ("worker".into(), worker)],
        config(),
    );
    let f = routes_with_state(state.clone());
    let get = |path: &str| {
        warp::test::request()
            .path(path)
            .header("authorization", bearer(&state))
    };
    let r = get("/api/v1/apps/worker/fleet").reply(&f).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_json(&r)["host_id"], "h-worker");
    let r = get("/api/v1/fleet").reply(&f).await;
    assert_eq!(r.status(), 404, "the first app has no fleet");
    let r = get("/api/v1/apps/api/fleet").reply(&f).await;
    assert_eq!(r.status(), 404);
    let r = warp::test::request()
        .path("/apps/worker/fleet")
        .header(
            "cookie",
            format!("deployex_session={}", state.tokens.issue()),
        )
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let html = text(&r);
    assert!(
        html.contains("9.9.9") && html.contains(r#"data-base="/apps/worker""#),
        "{html}"
    );
}
