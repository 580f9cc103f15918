//! The optional HTTP readiness check: `GET http://127.0.0.1:{port}{path}`
//! must answer 2xx. A deliberately tiny HTTP/1.0 client: one request, read
//! the status line, close.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// True when the path answers with a 2xx status within `timeout`.
pub async fn http_ok(port: u16, path: &str, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, status(port, path))
        .await
        .ok()
        .flatten()
        .is_some_and(|code| (200..300).contains(&code))
}

async fn status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 1024 {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&buf)
}

fn parse_status_line(buf: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(buf).ok()?.lines().next()?;
    let mut parts = line.split_whitespace();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"garbage"), None);
    }

    #[tokio::test]
    async fn real_server_2xx_and_5xx_and_closed_port() {
        for (answer, expect) in [("HTTP/1.1 200 OK", true), ("HTTP/1.1 503 Busy", false)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let answer = answer.to_string();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                s.write_all(format!("{answer}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            });
            assert_eq!(
                http_ok(port, "/health", Duration::from_secs(2)).await,
                expect
            );
            server.await.unwrap();
        }
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(!http_ok(port, "/", Duration::from_secs(1)).await);
    }
}
