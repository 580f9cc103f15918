//! The dashboard's web terminal driven over its websocket, as a browser
//! would (bearer token, same-origin `Origin`).

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Opens the web terminal of instance 1, sends `input` once the shell (IEx
/// or the Erlang shell of a relx release) prompts,
/// and returns once `needle` came back; `while_open` runs then, with the
/// shell still running.
pub async fn answers(
    api_port: u16,
    token: &str,
    input: &str,
    needle: &str,
    while_open: impl FnOnce(),
) {
    let mut request = format!("ws://127.0.0.1:{api_port}/instances/1/terminal/ws")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    request.headers_mut().insert(
        "Origin",
        format!("http://127.0.0.1:{api_port}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("terminal websocket");
    let mut screen = String::new();
    let mut sent = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !screen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("terminal: no {needle:?} within 30 s; screen:\n{screen}"));
        match msg {
            Some(Ok(Message::Binary(bytes))) => screen.push_str(&String::from_utf8_lossy(&bytes)),
            Some(Ok(Message::Text(text))) => screen.push_str(&text),
            Some(Ok(_)) => {}
            other => panic!("terminal closed ({other:?}); screen:\n{screen}"),
        }
        // The first prompt: IEx's `iex(dxtest-1@host)1>`, Erlang's `(dxtest-1@host)1>`.
        if !sent && screen.contains(")1>") {
            ws.send(Message::Binary(format!("{input}\r").into_bytes().into()))
                .await
                .unwrap();
            sent = true;
        }
    }
    while_open();
    let _ = ws.send(Message::Close(None)).await;
}
