//! `/api/v1/apps` and the per-app routes (apps.rs) through the real filter
//! stack, against two canned engines: each call reaches the named app's
//! engine only; an unknown app is 404; every route needs a session.

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
