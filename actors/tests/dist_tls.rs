//! The distribution client over mutual TLS against real `erl` nodes started
//! with `-proto_dist inet_tls`, using certificates made by
//! `devops/tls/gen-certs.sh`. Each test has its own temp dir, node and EPMD.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deployex_actors::dist::{
    self, DistConfig, DistError, NodeConnection, TlsError, TlsSettings, as_atom, as_list, atom,
    int, pretty,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

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

/// Runs the project's script: `gen-certs.sh dir [host]`.
fn gen_certs(dir: &Path, host: Option<&str>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../devops/tls/gen-certs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .args(host)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gen-certs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real node plus its private EPMD; both die on drop.
struct TestNode {
    child: Child,
    node: String,
    cookie: String,
    epmd_port: u16,
}

impl TestNode {
    /// A node using TLS distribution with `certs/inet_tls.conf`, or plain
    /// TCP when `certs` is `None`.
    async fn start(certs: Option<&Path>) -> TestNode {
        Self::start_with(certs, &[]).await
    }

    async fn start_with(certs: Option<&Path>, extra: &[&str]) -> TestNode {
        let epmd_port = free_port();
        let node = format!("dxt{}@{}", random_suffix(), short_host());
        let cookie = format!("c{}", random_suffix());
        let mut cmd = Command::new("erl");
        cmd.args([
            "-sname",
            &node,
            "-setcookie",
            &cookie,
            "-noshell",
            "-noinput",
        ]);
        if let Some(certs) = certs {
            cmd.args(["-proto_dist", "inet_tls", "-ssl_dist_optfile"])
                .arg(certs.join("inet_tls.conf"));
        }
        let child = cmd
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

    fn config(&self, tls: Option<TlsSettings>) -> DistConfig {
        let mut cfg = DistConfig::new(
            self.cookie.clone(),
            format!("dxc{}@{}", random_suffix(), short_host()),
        );
        cfg.epmd_port = self.epmd_port;
        cfg.connect_timeout = Duration::from_secs(10);
        cfg.tls = tls.map(Arc::new);
        cfg
    }

    async fn connect(&self, tls: Option<TlsSettings>) -> Result<NodeConnection, DistError> {
        NodeConnection::connect(&self.node, &self.config(tls)).await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The reason of a `DistError::Tls`, or a panic naming what came instead.
fn tls_reason(result: Result<NodeConnection, DistError>) -> String {
    match result {
        Err(e @ DistError::Tls { .. }) => {
            eprintln!("refused as expected: {e}");
            e.to_string()
        }
        Err(other) => panic!("expected a TLS error, got {other:?}: {other}"),
        Ok(conn) => panic!("expected a TLS error, connected to {}", conn.node()),
    }
}

fn copy(from: &Path, to: &Path, files: &[&str]) {
    for f in files {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn erl_has_the_ssl_application() {
    let out = Command::new("erl")
        .args([
            "-noshell",
            "-eval",
            "io:format(\"~p\", [application:load(ssl)]), halt().",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
}

#[test]
fn gen_certs_writes_a_complete_set() {
    let tmp = tempfile::tempdir().unwrap();
    gen_certs(tmp.path(), Some("somehost"));
    for f in [
        "ca.crt",
        "ca.key",
        "deployex.crt",
        "deployex.key",
        "node.crt",
        "node.key",
        "inet_tls.conf",
    ] {
        assert!(tmp.path().join(f).is_file(), "{f} missing");
    }
    let sans = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(tmp.path().join("node.crt"))
        .output()
        .unwrap();
    let sans = String::from_utf8_lossy(&sans.stdout);
    for san in ["DNS:somehost", "DNS:localhost", "IP Address:127.0.0.1"] {
        assert!(sans.contains(san), "{san} not in {sans}");
    }
    let conf = std::fs::read_to_string(tmp.path().join("inet_tls.conf")).unwrap();
    assert!(conf.contains("{fail_if_no_peer_cert, true}"), "{conf}");
    assert!(conf.contains("{verify, verify_peer}"), "{conf}");
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(tmp.path().join("ca.crt"))
        .arg(tmp.path().join("deployex.crt"))
        .arg(tmp.path().join("node.crt"))
        .status()
        .unwrap();
    assert!(verify.success());
}

#[test]
fn load_names_the_missing_or_broken_file() {
    let tmp = tempfile::tempdir().unwrap();
    match TlsSettings::load(tmp.path()) {
        Err(TlsError::Read { path, .. }) => assert_eq!(path, tmp.path().join("ca.crt")),
        other => panic!("expected a read error, got {other:?}"),
    }
    gen_certs(tmp.path(), None);
    assert!(TlsSettings::load(tmp.path()).is_ok());
    std::fs::write(tmp.path().join("deployex.crt"), "not a certificate\n").unwrap();
    match TlsSettings::load(tmp.path()) {
        Err(TlsError::NoCertificate { path }) => {
            assert_eq!(path, tmp.path().join("deployex.crt"))
        }
        other => panic!("expected no certificate, got {other:?}"),
    }
    // A key that does not belong to the certificate.
    let other = tempfile::tempdir().unwrap();
    gen_certs(other.path(), None);
    copy(other.path(), tmp.path(), &["deployex.crt"]);
    copy(other.path(), tmp.path(), &["node.key"]);
    std::fs::rename(tmp.path().join("node.key"), tmp.path().join("deployex.key")).unwrap();
    match TlsSettings::load(tmp.path()) {
        Err(e @ TlsError::Config { .. }) => assert!(e.to_string().contains("certificate and key")),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn mutual_tls_connects_and_runs_rpcs() {
    let certs = tempfile::tempdir().unwrap();
    gen_certs(certs.path(), None);
    let n = TestNode::start(Some(certs.path())).await;
    let conn = n
        .connect(Some(TlsSettings::load(certs.path()).unwrap()))
        .await
        .unwrap();
    assert!(conn.is_tls());
    assert!(conn.is_alive());
    let me = conn.rpc("erlang", "node", vec![], RPC).await.unwrap();
    assert_eq!(as_atom(&me), Some(n.node.as_str()));

    // Big replies span many TLS records; concurrent RPCs share the stream.
    let calls = (0..20).map(|i| {
        let conn = conn.clone();
        async move {
            conn.rpc("lists", "seq", vec![int(1), int(20_000 + i)], RPC)
                .await
        }
    });
    for (i, reply) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let seq = as_list(&reply.unwrap()).unwrap();
        assert_eq!(seq.len(), 20_000 + i);
    }

    // The node really runs TLS distribution.
    let proto = conn
        .rpc("init", "get_argument", vec![atom("proto_dist")], RPC)
        .await
        .unwrap();
    assert_eq!(pretty(&proto), r#"{ok,[["inet_tls"]]}"#);
    conn.close();
    tokio::time::timeout(RPC, conn.closed()).await.unwrap();
}

#[tokio::test]
async fn idle_tls_connection_lives_on_ticks() {
    let certs = tempfile::tempdir().unwrap();
    gen_certs(certs.path(), None);
    // The node drops a peer after 2 s of silence; we must tick over TLS.
    let n = TestNode::start_with(Some(certs.path()), &["-kernel", "net_ticktime", "2"]).await;
    let conn = n
        .connect(Some(TlsSettings::load(certs.path()).unwrap()))
        .await
        .unwrap();
    let idle = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert!(
        idle.is_err(),
        "connection closed while idle: {:?}",
        conn.close_reason()
    );
    let me = conn.rpc("erlang", "node", vec![], RPC).await.unwrap();
    assert_eq!(as_atom(&me), Some(n.node.as_str()));

    // And a node that goes away is noticed.
    let pid = nix::unistd::Pid::from_raw(n.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    assert!(!conn.is_alive());
}

#[tokio::test]
async fn wrong_certificates_are_refused_with_the_cause() {
    let certs = tempfile::tempdir().unwrap();
    gen_certs(certs.path(), None);
    let n = TestNode::start(Some(certs.path())).await;

    // Everything from another CA: we reject the node first.
    let other = tempfile::tempdir().unwrap();
    gen_certs(other.path(), None);
    let reason = tls_reason(
        n.connect(Some(TlsSettings::load(other.path()).unwrap()))
            .await,
    );
    assert!(reason.contains("not signed by our CA"), "{reason}");

    // We trust the node's CA but present a certificate from another CA:
    // the node refuses it.
    let mixed = tempfile::tempdir().unwrap();
    copy(certs.path(), mixed.path(), &["ca.crt"]);
    copy(
        other.path(),
        mixed.path(),
        &["deployex.crt", "deployex.key"],
    );
    let reason = tls_reason(
        n.connect(Some(TlsSettings::load(mixed.path()).unwrap()))
            .await,
    );
    assert!(reason.contains("refused our certificate"), "{reason}");

    // No client certificate at all: fail_if_no_peer_cert refuses it.
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(certs.path().join("ca.crt")).unwrap();
    roots.add(ca).unwrap();
    let no_client_auth = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let reason = tls_reason(
        n.connect(Some(TlsSettings::from_client_config(Arc::new(
            no_client_auth,
        ))))
        .await,
    );
    assert!(reason.contains("requires a client certificate"), "{reason}");

    // The node's certificate names another host.
    let elsewhere = tempfile::tempdir().unwrap();
    gen_certs(elsewhere.path(), Some("elsewhere"));
    let n2 = TestNode::start(Some(elsewhere.path())).await;
    let reason = tls_reason(
        n2.connect(Some(TlsSettings::load(elsewhere.path()).unwrap()))
            .await,
    );
    assert!(reason.contains("not valid for host"), "{reason}");

    // None of that hurt the node: the right certificates still work.
    let conn = n
        .connect(Some(TlsSettings::load(certs.path()).unwrap()))
        .await
        .unwrap();
    let me = conn.rpc("erlang", "node", vec![], RPC).await.unwrap();
    assert_eq!(as_atom(&me), Some(n.node.as_str()));
}

#[tokio::test]
async fn transport_mismatches_say_so() {
    let certs = tempfile::tempdir().unwrap();
    gen_certs(certs.path(), None);
    let tls_node = TestNode::start(Some(certs.path())).await;
    let plain_node = TestNode::start(None).await;

    // Plain TCP against a TLS node.
    match tls_node.connect(None).await {
        Err(e @ DistError::Handshake { .. }) => {
            eprintln!("refused as expected: {e}");
            assert!(e.to_string().contains("-proto_dist inet_tls"), "{e}")
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
    // TLS against a plain TCP node.
    let reason = tls_reason(
        plain_node
            .connect(Some(TlsSettings::load(certs.path()).unwrap()))
            .await,
    );
    assert!(reason.contains("inet_tls"), "{reason}");
}

#[tokio::test]
async fn wrong_cookie_over_tls_is_a_handshake_error() {
    let certs = tempfile::tempdir().unwrap();
    gen_certs(certs.path(), None);
    let n = TestNode::start(Some(certs.path())).await;
    let mut cfg = n.config(Some(TlsSettings::load(certs.path()).unwrap()));
    cfg.cookie = "not-the-cookie".to_owned();
    match NodeConnection::connect(&n.node, &cfg).await {
        Err(e @ DistError::Handshake { .. }) => {
            eprintln!("refused as expected: {e}");
            assert!(e.to_string().contains("cookie"), "{e}")
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `cargo test -p deployex-actors --test dist_tls -- --ignored --nocapture`
#[tokio::test]
#[ignore = "benchmark: prints a table"]
async fn bench_tls_vs_tcp() {
    const CONNECTS: usize = 30;
    const RPCS: usize = 500;
    let certs = tempfile::tempdir().unwrap();
    gen_certs(certs.path(), None);
    let tls_node = TestNode::start(Some(certs.path())).await;
    let tcp_node = TestNode::start(None).await;
    let settings = TlsSettings::load(certs.path()).unwrap();

    let mut rows = Vec::new();
    for (label, node, tls) in [("tcp", &tcp_node, None), ("tls", &tls_node, Some(settings))] {
        let mut connects = Vec::new();
        for _ in 0..CONNECTS {
            let started = Instant::now();
            let conn = node.connect(tls.clone()).await.unwrap();
            connects.push(started.elapsed());
            assert_eq!(conn.is_tls(), tls.is_some());
            conn.close();
            conn.closed().await;
        }
        let conn = node.connect(tls.clone()).await.unwrap();
        let mut rpcs = Vec::new();
        for _ in 0..RPCS {
            let started = Instant::now();
            let me = conn.rpc("erlang", "node", vec![], RPC).await.unwrap();
            rpcs.push(started.elapsed());
            assert_eq!(as_atom(&me), Some(node.node.as_str()));
        }
        rows.push((label, median(connects), median(rpcs)));
    }
    println!("\ntransport | connect (median of {CONNECTS}) | rpc erlang:node() (median of {RPCS})");
    println!("----------|------------------------|-------------------------------");
    for (label, connect, rpc) in rows {
        println!(
            "{label:9} | {:>19.2} ms | {:>26.3} ms",
            connect.as_secs_f64() * 1e3,
            rpc.as_secs_f64() * 1e3
        );
    }
}
