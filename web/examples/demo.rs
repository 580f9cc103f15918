//! Serves the dashboard against the canned test engine, for looking at the
//! pages in a browser: `cargo run -p deployex-web --example demo -- PORT DIR`
//! (user `admin`, password `s3cret-pass`; logs of instance 1 under DIR).

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(4000);
    let dir: std::path::PathBuf = args.next().unwrap_or_else(|| "/tmp".into()).into();
    let engine = common::FakeEngine {
        log_dir: Some(dir.clone()),
        started: Some(std::time::Instant::now()),
        ..Default::default()
    };
    *engine.shell.lock().unwrap() = Some(deployex_actors::model::ShellCommand {
        program: "/bin/sh".into(),
        args: vec!["-i".into()],
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("TERM".into(), "xterm-256color".into()),
        ],
        cwd: dir,
        user: None,
    });
    let mut cfg = common::config();
    cfg.bind = ([127, 0, 0, 1], port).into();
    cfg.host = "127.0.0.1".into();
    let (addr, handle) = deployex_web::serve(Arc::new(engine), cfg, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .unwrap();
    println!("listening on http://{addr}");
    handle.await.unwrap();
}
