//! A real `moto_server` (Python moto: S3 and Secrets Manager HTTP APIs) on a
//! free loopback port, for tests of the AWS code paths.
//!
//! Invariants: the server runs in its own process group, is signalled only
//! through the pid this guard started, and is gone when the guard drops.
//! Start-up is awaited by polling the port against a deadline. moto keeps
//! its state in memory: a restart starts empty.
//!
//! Needs only std and nix: included by path from the actors crate's tests
//! and the binary's unit tests too.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Credentials moto accepts (it does not check them).
pub const ACCESS_KEY: &str = "testing";
pub const SECRET_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";

pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

impl Moto {
    /// Starts moto on a free port and waits until it accepts connections.
    pub fn start() -> Moto {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        Moto::start_on(port)
    }

    /// Starts moto on `port` (e.g. again after [`Moto::stop`]).
    pub fn start_on(port: u16) -> Moto {
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_string());
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (pip install 'moto[server]'): {e}"));
        let mut moto = Moto {
            port,
            child: Some(child),
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return moto;
            }
            if let Some(child) = moto.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                moto.child = None;
                panic!("moto_server exited at start ({status}); port {port} taken?");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (SIGTERM to its group, SIGKILL after 5 s) and waits
    /// until the port refuses connections.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
