//! Ports, EPMD isolation and a minimal HTTP/1.1 GET for talking to the
//! fixture app.
//!
//! Invariant: an [`Epmd`] owns its port number; dropping it stops the epmd
//! daemon on that port (started by the first node that used it), so tests
//! never leave daemons behind on this shared machine.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    free_port_range(1)
}

/// The first of `n` consecutive ports that were free a moment ago.
///
/// Always below the kernel's ephemeral range: a test that polls a port with
/// `connect()` while nothing listens there could otherwise be handed that
/// very port as its source port, connect to itself (TCP simultaneous open),
/// look "accepting" and leave the port in TIME-WAIT, so the server then
/// fails with `eaddrinuse` for a minute (seen in the respawn benchmark).
pub fn free_port_range(n: u16) -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10000u16;
    let span = ephemeral_start.saturating_sub(low).saturating_sub(n).max(1);
    for _ in 0..500 {
        let base = low + rand_u16() % span;
        let all_free = (0..n).all(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no range of {n} free ports below {ephemeral_start}");
}

fn rand_u16() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = CALLS
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(2_654_435_761);
    ((t ^ std::process::id().rotate_left(7) ^ salt) % 65521) as u16
}

/// An isolated EPMD port for one test's Erlang nodes.
///
/// `new` only reserves the number: the first node started with
/// `ERL_EPMD_PORT=port` launches `epmd -daemon` itself. Drop runs
/// `epmd -port N -kill`.
#[derive(Debug)]
pub struct Epmd {
    pub port: u16,
}

impl Epmd {
    pub fn new() -> Self {
        Self { port: free_port() }
    }

    /// The `(name, value)` pair to put in a node's environment.
    pub fn env(&self) -> (&'static str, String) {
        ("ERL_EPMD_PORT", self.port.to_string())
    }
}

impl Default for Epmd {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Epmd {
    fn drop(&mut self) {
        // No daemon on the port (no node ever started) is fine: ignore.
        let _ = Command::new("epmd")
            .args(["-port", &self.port.to_string(), "-kill"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `GET path` on 127.0.0.1:`port`; `Some((status, body))`, or `None` when
/// nothing answers properly within a short timeout (so it can be polled).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}
