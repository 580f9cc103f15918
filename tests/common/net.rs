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

/// A port that was free a moment ago (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
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
