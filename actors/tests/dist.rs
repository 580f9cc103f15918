//! The distribution client against real Erlang nodes. Each test starts its
//! own `erl` node on its own EPMD port and stops both at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deployex_actors::dist::{
    self, CloseReason, DistConfig, DistError, NodeConnection, Term, as_atom, as_int, as_list, atom,
    binary, charlist, int, list, term_to_string,
};

const RPC: Duration = Duration::from_secs(5);

fn short_host() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A real node plus its private EPMD; both die on drop.
struct TestNode {
    child: Child,
    node: String,
    cookie: String,
    epmd_port: u16,
}

impl TestNode {
    async fn start(extra: &[&str]) -> TestNode {
        let epmd_port = free_port();
        let node = format!("dxd{}@{}", random_suffix(), short_host());
        let cookie = format!("c{}", random_suffix());
        let child = Command::new("erl")
            .args([
                "-sname",
                &node,
                "-setcookie",
                &cookie,
                "-noshell",
                "-noinput",
            ])
            .args(extra)
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("ERL_CRASH_DUMP_SECONDS", "0")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let test_node = TestNode {
            child,
            node,
            cookie,
            epmd_port,
        };
        let name = test_node.node.split('@').next().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) =
                dist::epmd::port_please("127.0.0.1", epmd_port, &test_node.node, &name).await
            {
                return test_node;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never registered",
                test_node.node
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn config(&self) -> DistConfig {
        DistConfig {
            cookie: self.cookie.clone(),
            epmd_host: "127.0.0.1".to_owned(),
            epmd_port: self.epmd_port,
            local_node: format!("dxc{}@{}", random_suffix(), short_host()),
            connect_timeout: Duration::from_secs(10),
            tls: None,
        }
    }

    async fn connect(&self) -> NodeConnection {
        NodeConnection::connect(&self.node, &self.config())
            .await
            .unwrap()
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn ints(term: &Term) -> Vec<i64> {
    as_list(term)
        .unwrap_or_else(|| panic!("not a list: {term:?}"))
        .iter()
        .map(|t| as_int(t).unwrap())
        .collect()
}

#[tokio::test]
async fn rpc_calls_return_results_and_readable_errors() {
    let n = TestNode::start(&[]).await;
    let conn = n.connect().await;
    assert_eq!(conn.node(), n.node);
    assert!(conn.is_alive());

    let me = conn.rpc("erlang", "node", vec![], RPC).await.unwrap();
    assert_eq!(as_atom(&me), Some(n.node.as_str()));

    let reversed = conn
        .rpc(
            "lists",
            "reverse",
            vec![list(vec![int(1), int(2), int(3)])],
            RPC,
        )
        .await
        .unwrap();
    assert_eq!(ints(&reversed), [3, 2, 1]);

    let big = conn
        .rpc("erlang", "abs", vec![int(-(1 << 40))], RPC)
        .await
        .unwrap();
    assert_eq!(as_int(&big), Some(1 << 40));

    let text = conn
        .rpc("string", "uppercase", vec![charlist("héllo")], RPC)
        .await
        .unwrap();
    assert_eq!(term_to_string(&text).as_deref(), Some("HÉLLO"));

    let size = conn
        .rpc("erlang", "byte_size", vec![binary("abc")], RPC)
        .await
        .unwrap();
    assert_eq!(as_int(&size), Some(3));

    match conn.rpc("nomod", "nofun", vec![atom("x")], RPC).await {
        Err(DistError::BadRpc { node, reason }) => {
            assert_eq!(node, n.node);
            assert_eq!(reason, "undefined function nomod:nofun/1");
        }
        other => panic!("expected BadRpc, got {other:?}"),
    }
    match conn.rpc("erlang", "error", vec![atom("boom")], RPC).await {
        Err(DistError::BadRpc { reason, .. }) => assert!(reason.contains("boom"), "{reason}"),
        other => panic!("expected BadRpc, got {other:?}"),
    }
    // The connection survives failed calls.
    assert!(conn.rpc("erlang", "node", vec![], RPC).await.is_ok());

    // We are a hidden node: the peer lists us only among hidden nodes.
    let visible = conn.rpc("erlang", "nodes", vec![], RPC).await.unwrap();
    assert_eq!(as_list(&visible).map(|v| v.len()), Some(0));
    let hidden = conn
        .rpc("erlang", "nodes", vec![atom("hidden")], RPC)
        .await
        .unwrap();
    assert_eq!(as_list(&hidden).map(|v| v.len()), Some(1));
}

#[tokio::test]
async fn concurrent_rpcs_get_their_own_answers() {
    let n = TestNode::start(&[]).await;
    let conn = n.connect().await;
    let calls = (0..50i64).map(|i| {
        let conn = conn.clone();
        async move {
            // Different durations so replies come back out of order.
            let sleep = int((50 - i) % 7);
            let args = vec![atom("timer"), atom("sleep"), list(vec![sleep])];
            conn.rpc("erlang", "apply", args, RPC).await.unwrap();
            let got = conn
                .rpc("lists", "seq", vec![int(1), int(i)], RPC)
                .await
                .unwrap();
            (i, ints(&got).len() as i64)
        }
    });
    let results = futures::future::join_all(calls).await;
    assert_eq!(results.len(), 50);
    for (i, len) in results {
        assert_eq!(i, len);
    }
}

#[tokio::test]
async fn wrong_cookie_is_a_clear_handshake_error() {
    let n = TestNode::start(&[]).await;
    let mut cfg = n.config();
    cfg.cookie = "not-the-cookie".to_owned();
    match NodeConnection::connect(&n.node, &cfg).await {
        Err(e @ DistError::Handshake { .. }) => {
            let text = e.to_string();
            assert!(text.contains("cookie rejected?"), "{text}");
            assert!(text.contains(&n.node), "{text}");
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_node_and_missing_epmd_are_told_apart() {
    let n = TestNode::start(&[]).await;
    let cfg = n.config();
    let ghost = format!("ghost@{}", short_host());
    match NodeConnection::connect(&ghost, &cfg).await {
        Err(DistError::NodeNotRegistered { node }) => assert_eq!(node, ghost),
        other => panic!("expected NodeNotRegistered, got {other:?}"),
    }

    let mut no_epmd = cfg.clone();
    no_epmd.epmd_port = free_port();
    match NodeConnection::connect(&n.node, &no_epmd).await {
        Err(e @ DistError::Epmd { .. }) => assert!(e.to_string().contains("ERL_EPMD_PORT")),
        other => panic!("expected an EPMD error, got {other:?}"),
    }

    match NodeConnection::connect("no-at-sign", &cfg).await {
        Err(DistError::InvalidNodeName { .. }) => {}
        other => panic!("expected InvalidNodeName, got {other:?}"),
    }
}

/// The watcher's EPMD registry (one `NAMES` poller for every connector
/// waiting for its node): a registered node ends the wait, an unknown one
/// keeps it until it registers, a connector that found EPMD down waits
/// until it answers, and every waiter is forgotten afterwards.
#[tokio::test]
async fn the_epmd_registry_wakes_exactly_the_waiters_whose_node_registered() {
    use deployex_actors::otp_node_watcher::EpmdRegistry;
    use tokio_util::compat::TokioAsyncReadCompatExt;

    let n = TestNode::start(&[]).await;
    let cfg = std::sync::Arc::new(n.config());
    let registry = EpmdRegistry::start(cfg.clone());
    let name = n.node.split('@').next().unwrap().to_owned();
    let late = format!("late{}", random_suffix());

    let since = Instant::now();
    let late_wait = {
        let (registry, late) = (registry.clone(), late.clone());
        tokio::spawn(async move { registry.wait_registered(Some(&late), since).await })
    };
    tokio::time::timeout(
        Duration::from_secs(3),
        registry.wait_registered(Some(&name), since),
    )
    .await
    .expect("a registered node ends the wait");
    // That answer did not list `late`: its waiter still waits.
    assert!(
        !late_wait.is_finished(),
        "woken for a node that is not there"
    );
    assert_eq!(registry.waiting(), 1);

    // Register `late` (EPMD keeps it while this connection is open).
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", n.epmd_port))
        .await
        .unwrap();
    let (_registration, _creation) = erl_dist::epmd::EpmdClient::new(stream.compat())
        .register(erl_dist::epmd::NodeEntry::new_hidden(&late, free_port()))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), late_wait)
        .await
        .expect("a node registering later ends its wait")
        .unwrap();
    assert_eq!(registry.waiting(), 0);

    // No EPMD yet: a connector that found it down waits for it to answer.
    let mut later = n.config();
    later.epmd_port = free_port();
    let lost = EpmdRegistry::start(std::sync::Arc::new(later.clone()));
    let epmd_wait = {
        let lost = lost.clone();
        tokio::spawn(async move { lost.wait_registered(None, Instant::now()).await })
    };
    let mut epmd = Command::new("epmd")
        .args(["-port", &later.epmd_port.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(5), epmd_wait).await;
    let _ = epmd.kill();
    let _ = epmd.wait();
    waited.expect("EPMD answering again ends the wait").unwrap();

    // Nobody waits now: the parked poller holds no reference of its own,
    // so the watcher's (here: the test's) is the only one and dropping it
    // ends the registry and its task.
    for reg in [&registry, &lost] {
        let deadline = Instant::now() + Duration::from_secs(3);
        while std::sync::Arc::strong_count(reg) > 1 {
            assert!(
                Instant::now() < deadline,
                "the poller keeps its registry alive"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn killed_node_closes_the_connection_at_once() {
    let n = TestNode::start(&[]).await;
    let conn = n.connect().await;
    nix::sys::signal::kill(n.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(1), conn.closed())
        .await
        .expect("closed() did not resolve within 1 s");
    eprintln!("lost node noticed after {:?}", started.elapsed());
    assert!(!conn.is_alive());
    assert!(
        matches!(
            conn.close_reason(),
            Some(CloseReason::PeerClosed | CloseReason::Local)
        ),
        "{:?}",
        conn.close_reason()
    );
    match conn.rpc("erlang", "node", vec![], RPC).await {
        Err(DistError::Closed { .. }) => {}
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[tokio::test]
async fn ticks_keep_an_idle_connection_and_catch_a_frozen_node() {
    let n = TestNode::start(&["-kernel", "net_ticktime", "4"]).await;
    let conn = n.connect().await;

    // Idle for longer than the peer's net_ticktime: without our ticks the
    // peer would drop us after 4-5 s.
    tokio::select! {
        () = conn.closed() => panic!("connection dropped while idle: {:?}", conn.close_reason()),
        () = tokio::time::sleep(Duration::from_secs(6)) => {}
    }
    let me = conn.rpc("erlang", "node", vec![], RPC).await.unwrap();
    assert_eq!(as_atom(&me), Some(n.node.as_str()));

    // A frozen node keeps its socket open but stops ticking.
    nix::sys::signal::kill(n.pid(), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let noticed = tokio::time::timeout(Duration::from_secs(8), conn.closed()).await;
    let _ = nix::sys::signal::kill(n.pid(), nix::sys::signal::Signal::SIGCONT);
    noticed.expect("a frozen node was not noticed");
    eprintln!("frozen node noticed after {:?}", started.elapsed());
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(
        matches!(conn.close_reason(), Some(CloseReason::TickTimeout(_))),
        "{:?}",
        conn.close_reason()
    );
}

#[tokio::test]
async fn rpc_timeout_returns_quickly_and_the_connection_goes_on() {
    let n = TestNode::start(&[]).await;
    let conn = n.connect().await;
    let started = Instant::now();
    match conn
        .rpc(
            "timer",
            "sleep",
            vec![int(5000)],
            Duration::from_millis(300),
        )
        .await
    {
        Err(DistError::Timeout { what, .. }) => assert_eq!(what, "rpc timer:sleep/1"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let me = conn.rpc("erlang", "node", vec![], RPC).await.unwrap();
    assert_eq!(as_atom(&me), Some(n.node.as_str()));
}

#[tokio::test]
async fn close_ends_the_connection_for_every_clone() {
    let n = TestNode::start(&[]).await;
    let conn = n.connect().await;
    let other = conn.clone();
    conn.close();
    assert!(!other.is_alive());
    tokio::time::timeout(Duration::from_secs(1), other.closed())
        .await
        .unwrap();
    assert!(matches!(other.close_reason(), Some(CloseReason::Local)));
    assert_eq!(
        other.close_reason().map(|r| r.to_string()).as_deref(),
        Some("closed locally")
    );
    assert!(matches!(
        other.rpc("erlang", "node", vec![], RPC).await,
        Err(DistError::Closed { .. })
    ));
    // The node has seen us go: a fresh connection with the same name works.
    let again = NodeConnection::connect(&n.node, &n.config()).await.unwrap();
    assert!(again.rpc("erlang", "node", vec![], RPC).await.is_ok());
}

/// RPC round-trip benchmark: `cargo test -p deployex-actors --release
/// --test dist -- --ignored --nocapture rpc_round_trip_benchmark`.
#[tokio::test]
#[ignore]
async fn rpc_round_trip_benchmark() {
    let n = TestNode::start(&[]).await;
    let cfg = n.config();
    let started = Instant::now();
    let conn = NodeConnection::connect(&n.node, &cfg).await.unwrap();
    let connect = started.elapsed();
    let mut samples = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        conn.rpc("erlang", "node", vec![], RPC).await.unwrap();
        samples.push(t.elapsed());
    }
    samples.sort();
    let burst = Instant::now();
    let calls = (0..1000).map(|_| conn.rpc("erlang", "node", vec![], RPC));
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    let burst = burst.elapsed();
    eprintln!(
        "connect {connect:?}; rpc erlang:node/0 x1000 sequential: median {:?}, p99 {:?}, max {:?}; \
         1000 concurrent: {burst:?}",
        samples[500], samples[990], samples[999]
    );
    assert!(samples[500] < Duration::from_millis(5));
}

#[tokio::test]
async fn beam_sample_reads_real_counts_and_reductions_grow() {
    use deployex_actors::otp_node_watcher::{SampleError, sample_beam};
    let n = TestNode::start(&[]).await;
    let conn = n.connect().await;
    // One RPC; the limits come with a connection's first sample only.
    let first = sample_beam(&conn, None, RPC).await.unwrap();
    assert!(first.memory_bytes > 1 << 20, "{first:?}");
    assert!(first.atom_limit > first.atom_count && first.atom_count > 1000);
    assert!(first.process_limit > first.processes && first.port_limit > 0);
    assert!(first.processes > 10, "{first:?}");
    assert!(first.reductions_total > 0, "{first:?}");

    // 200 more processes on the node: the next sample counts them.
    let spawns = (0..200).map(|_| {
        conn.rpc(
            "erlang",
            "spawn",
            vec![atom("timer"), atom("sleep"), list(vec![atom("infinity")])],
            RPC,
        )
    });
    for r in futures::future::join_all(spawns).await {
        r.unwrap();
    }
    let second = sample_beam(&conn, Some(first.limits()), RPC).await.unwrap();
    assert_eq!(second.limits(), first.limits());
    // A few of the first count were rex's short-lived call handlers.
    assert!(
        second.processes >= first.processes + 190,
        "{first:?} -> {second:?}"
    );
    assert!(second.reductions_total > first.reductions_total);

    // A lost connection is an error naming the node and the call.
    conn.close();
    match sample_beam(&conn, Some(first.limits()), RPC).await {
        Err(e @ SampleError::Rpc { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&n.node) && text.contains("telemetry"),
                "{text}"
            );
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// The OtpNodeWatcher actor itself: it samples a watched node on its own,
/// computes a reductions rate from two samples, and drops the sample the
/// moment the node is gone.
#[tokio::test]
async fn watcher_samples_connected_nodes_and_forgets_lost_ones() {
    use deployex_actors::config::EngineConfig;
    use deployex_actors::model::BeamStats;
    use deployex_actors::otp_node_watcher::{NodeInfo, OtpNodeWatcher, WatcherMsg};
    use ractor::Actor;

    let n = TestNode::start(&[]).await;
    let base = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::with_defaults("dxd", base.path());
    cfg.cookie = n.cookie.clone();
    cfg.epmd_port = n.epmd_port;
    cfg.hostname = short_host();
    cfg.beam_sample_interval = Duration::from_millis(150);
    let (watcher, join) = Actor::spawn(None, OtpNodeWatcher, std::sync::Arc::new(cfg))
        .await
        .unwrap();
    watcher
        .cast(WatcherMsg::Watch {
            node: n.node.clone(),
            liveness: None,
        })
        .unwrap();
    let snapshot = || async {
        let all = ractor::call_t!(watcher, |reply| WatcherMsg::Snapshot { reply }, 1000).unwrap();
        all.get(&n.node).cloned().unwrap_or_default()
    };
    let wait = |what: &'static str, cond: fn(&NodeInfo) -> bool| {
        let snapshot = &snapshot;
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let info = snapshot().await;
                if cond(&info) {
                    return info;
                }
                assert!(Instant::now() < deadline, "{what}: last {info:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let info = wait("a first sample", |i| i.connected && i.beam.is_some()).await;
    let beam: BeamStats = info.beam.unwrap();
    assert!(
        beam.memory_bytes > 1 << 20 && beam.processes > 10,
        "{beam:?}"
    );
    let info = wait("a reductions rate from two samples", |i| {
        i.beam
            .as_ref()
            .is_some_and(|b| b.reductions_per_s.is_some())
    })
    .await;
    let later = info.beam.unwrap();
    assert!(
        later.sampled_at > beam.sampled_at,
        "{beam:?} then {later:?}"
    );

    nix::sys::signal::kill(n.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let info = wait("the sample dropped with the node", |i| !i.connected).await;
    assert_eq!(info.beam, None, "no sample outlives its connection");
    // ...and none comes back while the node stays down.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(snapshot().await.beam, None);
    }

    watcher.stop(None);
    join.await.unwrap();
}
