//! The web terminal: a websocket bridged to the instance's remote shell
//! (`bin/{app} remote`, from `Engine::remote_shell`) running in a PTY.
//!
//! Protocol: binary frames carry terminal bytes both ways; the client sends
//! text frames `{"cols":C,"rows":R}` to resize; the server sends text frames
//! `{"notice":"..."}` for errors and the end of the session.
//!
//! Invariants: the shell runs as the leader of its own session and process
//! group (pty-process does `setsid`); when the websocket closes, the idle
//! timeout fires, the shell exits or this task is dropped, the whole group
//! is killed by its pid: the remote shell never outlives its websocket.
//! A terminal lives at most `terminal_lifetime`, re-checks its session every
//! [`SESSION_RECHECK`] (a logged-out, expired or revoked session closes
//! it), and at most [`crate::MAX_TERMINALS`] are open at once.

use std::sync::Arc;
use std::time::Duration;

use deployex_actors::model::ShellCommand;
use futures::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warp::reply::Response;
use warp::ws::{Message, WebSocket};
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::guard::{Guard, Session, StreamSlot, client_ip, stream_slot, with_state};
use crate::scope::{Scope, page_scope};

/// How long the shell gets after SIGHUP before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_millis(500);

/// How often an open terminal re-checks its session (logout, expiry, a
/// revocation file gone bad): a dead session's terminal closes within this.
pub const SESSION_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("cannot open a pty")]
    Pty(#[source] pty_process::Error),
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: pty_process::Error,
    },
    #[error("the shell has no pid (already exited)")]
    NoPid,
}

/// Kills the process group when dropped (whatever path the task took).
struct GroupKill(i32);

impl GroupKill {
    fn signal(&self, sig: Signal) {
        // ESRCH: the group is already gone, which is what we want.
        let _ = killpg(Pid::from_raw(self.0), sig);
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

#[derive(Debug, Deserialize)]
struct Resize {
    cols: u16,
    rows: u16,
}

fn notice(text: &str) -> Message {
    Message::text(serde_json::json!({ "notice": text }).to_string())
}

/// Starts `cmd` in a fresh PTY; returns the PTY, the child and its pid.
pub fn spawn_shell(
    cmd: &ShellCommand,
) -> Result<(pty_process::Pty, tokio::process::Child, i32), TerminalError> {
    let (pty, pts) = pty_process::open().map_err(TerminalError::Pty)?;
    pty.resize(pty_process::Size::new(24, 80))
        .map_err(TerminalError::Pty)?;
    let mut command = pty_process::Command::new(&cmd.program)
        .args(&cmd.args)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&cmd.cwd)
        .kill_on_drop(true);
    if let Some(user) = &cmd.user {
        command = run_as(command, user);
    }
    let child = command.spawn(pts).map_err(|source| TerminalError::Spawn {
        program: cmd.program.display().to_string(),
        source,
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or(TerminalError::NoPid)?;
    Ok((pty, child, pid))
}

/// The shell runs as the app user (`DEPLOYEX_APP_USER`), like the
/// instance it opens. pty-process runs this hook after its own
/// (`setsid`, controlling terminal), which still run as deployex.
#[allow(unsafe_code)]
fn run_as(
    command: pty_process::Command,
    user: &deployex_actors::app_user::AppUser,
) -> pty_process::Command {
    // SAFETY: the hook only makes the setgroups/setgid/setuid syscalls
    // (async-signal-safe) on data built before the fork; it allocates
    // nothing and takes no lock.
    unsafe { command.pre_exec(user.switch_hook()) }
}

/// Bridges `ws` and the shell until either side ends or `idle` passes
/// without input.
pub async fn session(
    ws: WebSocket,
    state: Arc<AppState>,
    scope: Scope,
    instance: u32,
    who: Session,
    ip: std::net::IpAddr,
    _slot: StreamSlot,
) {
    let (mut tx, mut rx) = ws.split();
    let Ok(_terminal) = state.terminals.clone().try_acquire_owned() else {
        tracing::warn!(app = scope.name(), instance, session = %who.claims.id, client = %ip, "terminal refused: too many open");
        let _ = tx
            .send(notice(&format!(
                "too many terminals open (at most {})",
                crate::MAX_TERMINALS
            )))
            .await;
        let _ = tx.send(Message::close()).await;
        return;
    };
    let cmd = match scope.engine().remote_shell(instance).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(notice(&format!("cannot open a shell: {e}"))).await;
            let _ = tx.send(Message::close()).await;
            return;
        }
    };
    let (pty, mut child, pid) = match spawn_shell(&cmd) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(app = scope.name(), instance, error = %e, "terminal spawn failed");
            let _ = tx.send(notice(&e.to_string())).await;
            let _ = tx.send(Message::close()).await;
            return;
        }
    };
    let group = GroupKill(pid);
    tracing::info!(app = scope.name(), instance, pid, session = %who.claims.id, client = %ip, "terminal opened");
    let (mut pty_r, mut pty_w) = pty.into_split();
    let idle = state.cfg.terminal_idle;
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    let mut buf = vec![0u8; 16 * 1024];
    let stopped = state.stopped();
    tokio::pin!(stopped);
    let lifetime = tokio::time::sleep(state.cfg.terminal_lifetime);
    tokio::pin!(lifetime);
    let mut recheck = tokio::time::interval(SESSION_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            msg = rx.next() => {
                let Some(Ok(msg)) = msg else { break "websocket closed" };
                if msg.is_close() {
                    break "websocket closed";
                }
                sleep.as_mut().reset(tokio::time::Instant::now() + idle);
                if msg.is_binary() {
                    if pty_w.write_all(msg.as_bytes()).await.is_err() {
                        break "shell input closed";
                    }
                } else if let Ok(text) = msg.to_str()
                    && let Ok(r) = serde_json::from_str::<Resize>(text)
                    && r.cols > 0
                    && r.rows > 0
                {
                    let _ = pty_w.resize(pty_process::Size::new(r.rows, r.cols));
                }
            }
            n = pty_r.read(&mut buf) => match n {
                Ok(0) | Err(_) => break "shell exited",
                Ok(n) => {
                    if tx.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break "websocket closed";
                    }
                }
            },
            _ = child.wait() => break "shell exited",
            _ = &mut sleep => break "closed after inactivity",
            _ = &mut lifetime => break "closed: the terminal's maximum lifetime passed",
            _ = recheck.tick() => {
                if !state.tokens.still_valid(&who.claims) {
                    break "closed: the session ended (logout, expiry or revocation)";
                }
            }
            _ = &mut stopped => break "deployex is shutting down",
        }
    };
    tracing::info!(app = scope.name(), instance, pid, session = %who.claims.id, client = %ip, reason, "terminal closing");
    group.signal(Signal::SIGHUP);
    if tokio::time::timeout(HANGUP_GRACE, child.wait())
        .await
        .is_err()
    {
        group.signal(Signal::SIGKILL);
        let _ = child.wait().await;
    }
    drop(group); // SIGKILL to whatever is left of the group
    let _ = tx.send(notice(reason)).await;
    let _ = tx.send(Message::close()).await;
}

async fn upgrade(
    scope: Scope,
    instance: u32,
    (who, slot): (Session, StreamSlot),
    ip: std::net::IpAddr,
    state: Arc<AppState>,
    ws: warp::ws::Ws,
) -> Result<Response, Rejection> {
    Ok(ws
        .on_upgrade(move |socket| session(socket, state, scope, instance, who, ip, slot))
        .into_response())
}

pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    page_scope(state.clone())
        .and(warp::path!("instances" / u32 / "terminal" / "ws"))
        .and(stream_slot(state.clone(), Guard::Api))
        .and(client_ip(state.clone()))
        .and(with_state(state))
        .and(warp::ws())
        .and_then(upgrade)
        .boxed()
}
