//! The JSON API through the real filter stack (`warp::test`), against the
//! canned engine.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use deployex_web::routes_with_state;
use serde_json::Value;

fn ip(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 5555))
}

fn body_json(r: &warp::http::Response<warp::hyper::body::Bytes>) -> Value {
    serde_json::from_slice(r.body()).unwrap()
}

const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/versions"),
    ("GET", "/api/v1/versions?instance=1"),
    ("POST", "/api/v1/instances/1/restart"),
    ("POST", "/api/v1/mode"),
    ("DELETE", "/api/v1/ghosted/1.0.0"),
];

#[tokio::test]
async fn healthz_needs_no_auth() {
    let (_, state) = state_with(FakeEngine::default());
    let r = warp::test::request()
        .path("/healthz")
        .reply(&routes_with_state(state))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().as_ref(), b"ok");
}

#[tokio::test]
async fn every_api_route_refuses_missing_bad_or_expired_tokens() {
    let (engine, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let expired = format!("Bearer {}", state.tokens.issue_with(1, 2));
    let forged = {
        let other =
            deployex_web::auth::TokenSigner::new("other-key", std::time::Duration::from_secs(60));
        format!("Bearer {}", other.issue())
    };
    for (method, path) in PROTECTED {
        for auth in [
            None,
            Some("Bearer garbage".to_string()),
            Some(expired.clone()),
            Some(forged.clone()),
        ] {
            let mut req = warp::test::request()
                .method(method)
                .path(path)
                .body(r#"{"mode":"automatic"}"#);
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let r = req.reply(&f).await;
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            assert!(body_json(&r)["error"].is_string());
        }
    }
    assert!(engine.calls().is_empty(), "no action may reach the engine");
}

#[tokio::test]
async fn login_wrong_then_right() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state);
    let r = warp::test::request()
        .method("POST")
        .path("/api/v1/login")
        .remote_addr(ip(1))
        .json(&serde_json::json!({"username": "admin", "password": "nope"}))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 401);
    assert!(body_json(&r)["error"].is_string());
    let r = warp::test::request()
        .method("POST")
        .path("/api/v1/login")
        .remote_addr(ip(1))
        .json(&serde_json::json!({"username": "root", "password": PASSWORD}))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 401, "only admin exists");

    let r = warp::test::request()
        .method("POST")
        .path("/api/v1/login")
        .remote_addr(ip(1))
        .json(&serde_json::json!({"username": "admin", "password": PASSWORD}))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let token = body_json(&r)["token"].as_str().unwrap().to_string();
    let r = warp::test::request()
        .path("/api/v1/status")
        .header("authorization", format!("Bearer {token}"))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v = body_json(&r);
    assert_eq!(v["app"], "myapp");
    assert_eq!(v["instances"].as_array().unwrap().len(), 3);
    assert_eq!(v["deploying"]["instance"], 2);
}

#[tokio::test]
async fn sixth_failed_login_in_a_minute_is_429_per_client() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state);
    let attempt = |who: u8, pw: &'static str| {
        warp::test::request()
            .method("POST")
            .path("/api/v1/login")
            .remote_addr(ip(who))
            .json(&serde_json::json!({"username": "admin", "password": pw}))
    };
    for n in 1..=5 {
        let r = attempt(7, "bad").reply(&f).await;
        assert_eq!(r.status(), 401, "attempt {n}");
    }
    let r = attempt(7, "bad").reply(&f).await;
    assert_eq!(r.status(), 429);
    // Even the right password is refused while limited.
    let r = attempt(7, PASSWORD).reply(&f).await;
    assert_eq!(r.status(), 429);
    // Another client is not affected.
    let r = attempt(8, PASSWORD).reply(&f).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn versions_newest_first_and_filtered() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let r = warp::test::request()
        .path("/api/v1/versions")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let all = body_json(&r);
    assert_eq!(all.as_array().unwrap().len(), 12);
    assert_eq!(all[0]["version"], "1.0.11");
    let r = warp::test::request()
        .path("/api/v1/versions?instance=2")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    let some = body_json(&r);
    assert!(!some.as_array().unwrap().is_empty());
    assert!(some.as_array().unwrap().iter().all(|h| h["instance"] == 2));
}

#[tokio::test]
async fn actions_map_engine_errors() {
    let (engine, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let call = |method: &str, path: &str, body: &str| {
        warp::test::request()
            .method(method)
            .path(path)
            .header("authorization", bearer(&state))
            .body(body)
    };
    let r = call("POST", "/api/v1/instances/1/restart", "")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(body_json(&r), serde_json::json!({"ok": true}));
    let r = call("POST", "/api/v1/instances/9/restart", "")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 404);
    assert!(body_json(&r)["error"].as_str().unwrap().contains('9'));
    let r = call("POST", "/api/v1/instances/2/restart", "")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 409);

    let r = call(
        "POST",
        "/api/v1/mode",
        r#"{"mode":"manual","version":"1.0.3"}"#,
    )
    .reply(&f)
    .await;
    assert_eq!(r.status(), 200);
    let r = call("POST", "/api/v1/mode", r#"{"mode":"automatic"}"#)
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let r = call(
        "POST",
        "/api/v1/mode",
        r#"{"mode":"manual","version":"bad"}"#,
    )
    .reply(&f)
    .await;
    assert_eq!(r.status(), 422);
    assert!(
        body_json(&r)["error"]
            .as_str()
            .unwrap()
            .contains("unknown version")
    );
    let r = call("POST", "/api/v1/mode", r#"{"mode":"sideways"}"#)
        .reply(&f)
        .await;
    assert_eq!(r.status(), 422);

    let r = call("DELETE", "/api/v1/ghosted/0.9.0%2Bb1", "")
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);

    assert_eq!(
        engine.calls(),
        vec![
            "restart 1",
            "restart 9",
            "restart 2",
            "mode Manual { version: \"1.0.3\" }",
            "mode Automatic",
            "mode Manual { version: \"bad\" }",
            "unghost 0.9.0+b1",
        ]
    );
}

#[tokio::test]
async fn status_carries_beam_telemetry_tls_and_deploy_durations() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let r = warp::test::request()
        .path("/api/v1/status")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 200);
    let s = body_json(&r);
    let beam = &s["instances"][0]["beam"];
    assert_eq!(beam["memory_bytes"], 51 * 1024 * 1024, "{s:#}");
    assert_eq!(beam["processes"], 301);
    assert_eq!(beam["run_queue"], 0);
    assert_eq!(beam["reductions_per_s"], 12_345);
    assert_eq!(beam["sampled_at"], "2026-11-27T10:00:00.000Z");
    assert!(s["instances"][1]["beam"]["reductions_per_s"].is_null());
    assert!(s["instances"][2]["beam"].is_null(), "no sample: null");
    assert_eq!(s["instances"][0]["tls"], true);
    assert_eq!(s["instances"][1]["tls"], false);
    assert_eq!(s["deployex"]["tls"], true);
    assert_eq!(s["deploy_durations"]["count"], 4);
    assert_eq!(s["deploy_durations"]["total_ms"], 10_500);
    assert_eq!(s["deploy_durations"]["last"]["duration_ms"], 1_500);
    assert_eq!(s["deploy_durations"]["last"]["deployment"], "hot_upgrade");

    // A status written before telemetry existed still reads (clients and
    // tests that keep old JSON): the new fields default to "nothing".
    let mut old = s.clone();
    old.as_object_mut().unwrap().remove("deploy_durations");
    for i in old["instances"].as_array_mut().unwrap() {
        i.as_object_mut().unwrap().remove("beam");
    }
    let parsed: deployex_actors::model::Status = serde_json::from_value(old).unwrap();
    assert!(parsed.instances.iter().all(|i| i.beam.is_none()));
    assert_eq!(parsed.deploy_durations.count, 0);
}

#[tokio::test]
async fn status_times_out_with_503() {
    let (_, state) = state_with(FakeEngine {
        slow_status: true,
        ..Default::default()
    });
    let f = routes_with_state(state.clone());
    let r = warp::test::request()
        .path("/api/v1/status")
        .header("authorization", bearer(&state))
        .reply(&f)
        .await;
    assert_eq!(r.status(), 503);
    assert!(body_json(&r)["error"].is_string());
}

#[tokio::test]
async fn serve_binds_port_zero_and_shuts_down() {
    let engine = std::sync::Arc::new(FakeEngine::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, handle) = deployex_web::serve(engine, config(), async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    assert_ne!(addr.port(), 0);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("ok"));
    tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap();
}

/// Every entry of the metrics route table is a real route (a request to it
/// is not a 404), and is labelled with itself.
#[tokio::test]
async fn route_table_matches_every_route() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    for route in deployex_web::guard::ROUTES {
        let path = route
            .replace(":n", "1")
            .replace("/static/:s", "/static/app.css")
            .replace(":s", "stdout");
        // A GET of a stream never ends: POST (405) shows the route exists.
        let methods: &[&str] = if route.ends_with("/stream") {
            &["POST"]
        } else {
            &["GET", "POST"]
        };
        for method in methods {
            let r = warp::test::request()
                .method(method)
                .path(&path)
                .header("authorization", bearer(&state))
                .reply(&f)
                .await;
            if r.status() != 404 {
                assert_eq!(
                    deployex_web::guard::route_id(&path, r.status().as_u16()),
                    *route
                );
            }
        }
    }
}

/// Unknown paths, answered 401/302/404, never become metrics labels.
#[tokio::test]
async fn unknown_paths_do_not_grow_metrics() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    for i in 0..50 {
        for prefix in ["/api/v1/nope", "/nope", "/instances/x"] {
            let _ = warp::test::request()
                .path(&format!("{prefix}/{i}/{}", "z".repeat(100)))
                .reply(&f)
                .await;
        }
    }
    let r = warp::test::request()
        .path("/metrics")
        .header("authorization", "Bearer metrics-tok")
        .reply(&f)
        .await;
    let text = String::from_utf8_lossy(r.body()).to_string();
    assert!(!text.contains("zzzz"), "{text}");
    let http_lines = text
        .lines()
        .filter(|l| l.starts_with("deployex_http_requests_total{"))
        .count();
    assert!(http_lines <= 4, "{text}");
}

/// 20 concurrent wrong logins from one client: only 5 reach the password
/// check (401), the others are refused before it (429).
#[tokio::test]
async fn concurrent_wrong_logins_cannot_pass_the_limit() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state);
    let attempts = (0..20).map(|_| {
        warp::test::request()
            .method("POST")
            .path("/api/v1/login")
            .remote_addr(ip(9))
            .json(&serde_json::json!({"username": "admin", "password": "wrong"}))
            .reply(&f)
    });
    let codes: Vec<u16> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 15, "{codes:?}");
}

/// Behind a trusted proxy, clients named by `X-Forwarded-For` are limited
/// separately; an untrusted peer's header is ignored.
#[tokio::test]
async fn trusted_proxies_limit_forwarded_clients_separately() {
    let engine = std::sync::Arc::new(FakeEngine::default());
    let mut cfg = config();
    cfg.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let state = deployex_web::AppState::new(engine, cfg);
    let f = routes_with_state(state);
    let attempt = |peer: [u8; 4], xff: &str, pw: &str| {
        warp::test::request()
            .method("POST")
            .path("/api/v1/login")
            .remote_addr(SocketAddr::from((peer, 4444)))
            .header("x-forwarded-for", xff)
            .json(&serde_json::json!({"username": "admin", "password": pw}))
            .reply(&f)
    };
    for _ in 0..5 {
        assert_eq!(
            attempt([127, 0, 0, 1], "203.0.113.1", "bad").await.status(),
            401
        );
    }
    assert_eq!(
        attempt([127, 0, 0, 1], "203.0.113.1", "bad").await.status(),
        429
    );
    // Another client behind the same proxy still logs in.
    assert_eq!(
        attempt([127, 0, 0, 1], "203.0.113.2", PASSWORD)
            .await
            .status(),
        200
    );
    // An untrusted peer cannot pick its key with the header.
    for _ in 0..5 {
        assert_eq!(
            attempt([10, 9, 9, 9], "198.51.100.7", "bad").await.status(),
            401
        );
    }
    assert_eq!(
        attempt([10, 9, 9, 9], "198.51.100.8", "bad").await.status(),
        429
    );
}

/// A session holds at most MAX_STREAMS_PER_SESSION streams; another
/// session is not affected.
#[tokio::test]
async fn streams_per_session_are_capped() {
    let (_, state) = state_with(FakeEngine::default());
    let f = routes_with_state(state.clone());
    let token = state.tokens.issue();
    let id = state.tokens.verify(&token).unwrap().id;
    let held: Vec<_> = (0..deployex_web::guard::MAX_STREAMS_PER_SESSION)
        .map(|_| state.streams.open(&id).unwrap())
        .collect();
    for path in ["/api/v1/status/stream", "/instances/1/terminal/ws"] {
        let r = warp::test::request()
            .path(path)
            .header("authorization", format!("Bearer {token}"))
            .reply(&f)
            .await;
        assert_eq!(r.status(), 429, "{path}");
    }
    drop(held);
    assert_eq!(state.streams.count(&id), 0, "slots are given back");
}
