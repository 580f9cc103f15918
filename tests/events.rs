//! Events and the webhook, end to end: a real HTTP receiver gets the
//! `ghosted` event of a crash-looping release with a correct signature; a
//! receiver that is down for 30 s gets every event late, none lost; the
//! deployments made while it is down are not slowed by it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::deployex::{Site, running_on};
use hmac::Mac;
use serde_json::Value;

const SECRET: &str = "webhook-test-secret";

/// One POST the receiver got: its signature header and body.
#[derive(Clone, Debug)]
struct Received {
    signature: Option<String>,
    body: Vec<u8>,
}

/// A plain HTTP/1.1 receiver on `port`, answering 200 to every request,
/// until `stop` is set.
fn receiver(
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let (stream, _) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(_) => continue,
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            // Keep-alive: several requests per connection.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let mut len = 0usize;
                let mut signature = None;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                    let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                    if k == "content-length" {
                        len = v.parse().unwrap_or(0);
                    } else if k == "x-deployex-signature" {
                        signature = Some(v);
                    }
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    break;
                }
                got.lock().unwrap().push(Received { signature, body });
                let _ = reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        }
    })
}

fn expected_signature(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn received_events(got: &Mutex<Vec<Received>>) -> Vec<Value> {
    got.lock()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(
                r.signature.as_deref(),
                Some(expected_signature(&r.body).as_str()),
                "every body is signed"
            );
            serde_json::from_slice(&r.body).unwrap()
        })
        .collect()
}

#[test]
fn events_reach_the_webhook_signed_and_a_receiver_that_was_down_loses_none() {
    let hook_port = common::free_port();
    let site = Site::new(1)
        .env(
            "DEPLOYEX_WEBHOOK_URL",
            &format!("http://127.0.0.1:{hook_port}/hooks/deployex"),
        )
        .env("DEPLOYEX_WEBHOOK_SECRET", SECRET)
        .env("DEPLOYEX_ROLLBACK_CRASHES", "1");
    let got = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let up = receiver(hook_port, got.clone(), stop.clone());

    // 1. Receiver up: a crash-looping release is ghosted; the receiver gets
    // the event, signed, with a human `text`.
    site.publish("0.1.0", &[]);
    let dx = site.start();
    let s = dx.wait_status("0.1.0 running", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    let up_ms = s["deploy_durations"]["last"]["duration_ms"]
        .as_u64()
        .unwrap();
    site.publish("0.2.0", &[]);
    let ghosted = common::wait_until_blocking(
        "the ghosted event at the receiver",
        Duration::from_secs(60),
        || {
            received_events(&got)
                .into_iter()
                .find(|e| e["event"] == "ghosted" && e["version"] == "0.2.0")
        },
    );
    let text = ghosted["text"].as_str().unwrap();
    assert!(text.contains("ghosted") && text.contains("0.2.0"), "{text}");
    assert_eq!(ghosted["app"], common::deployex::APP);
    dx.wait_status("rolled back to 0.1.0", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });

    // 2. Receiver down for 30 s; a deployment meanwhile is not slowed.
    stop.store(true, Ordering::SeqCst);
    up.join().unwrap();
    let down_at = Instant::now();
    site.publish("0.1.1", &[]);
    let s = dx.wait_status("0.1.1 running", Duration::from_secs(60), |s| {
        running_on(s, "0.1.1")
    });
    let down_ms = s["deploy_durations"]["last"]["duration_ms"]
        .as_u64()
        .unwrap();
    eprintln!("deployment with the receiver up: {up_ms} ms; with it down: {down_ms} ms");
    assert!(
        down_ms <= up_ms * 2 + 1000,
        "a deployment with the receiver down took {down_ms} ms (up: {up_ms} ms)"
    );
    let emitted_while_down = dx.get("/api/v1/events?limit=1000");
    let last_id = emitted_while_down[0]["id"].as_u64().unwrap();
    while down_at.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }

    // 3. Back up: every event arrives, in order, none lost.
    let stop = Arc::new(AtomicBool::new(false));
    let again = receiver(hook_port, got.clone(), stop.clone());
    let all_ids: Vec<u64> = {
        let mut ids: Vec<u64> = dx
            .get("/api/v1/events?limit=1000")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    };
    assert!(all_ids.contains(&last_id));
    let received = common::wait_until_blocking(
        "every event at the receiver",
        Duration::from_secs(60),
        || {
            let ids: Vec<u64> = received_events(&got)
                .iter()
                .map(|e| e["id"].as_u64().unwrap())
                .collect();
            all_ids.iter().all(|id| ids.contains(id)).then_some(ids)
        },
    );
    let mut in_order = received.clone();
    in_order.sort_unstable();
    in_order.dedup();
    assert_eq!(received, in_order, "delivered once each, in order");
    let metrics =
        common::deployex::http(dx.api_port, "GET", "/metrics", dx.token.as_deref(), None).1;
    assert!(
        metrics.contains("deployex_webhook_events_dropped_total 0"),
        "{metrics}"
    );
    stop.store(true, Ordering::SeqCst);
    drop(dx);
    again.join().unwrap();
}
