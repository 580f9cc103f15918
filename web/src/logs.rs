//! Live logs: the last lines of an instance's stdout/stderr file, then the
//! new ones over a websocket; ANSI SGR colours and `[level]` tags turned
//! into CSS classes.
//!
//! Invariants: a log line is text, never markup: on the server it goes
//! through maud's escaping, over the websocket as JSON segments that the
//! page inserts with `textContent`. The follower survives a missing file
//! (waits), truncation and rotation (new inode: starts over at 0).

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deployex_actors::model::LogStream;
use futures::{SinkExt, StreamExt};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use warp::http::{StatusCode, header};
use warp::reply::Response;
use warp::ws::{Message, WebSocket};
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::guard::{Guard, Session, StreamSlot, authed, json_error, stream_slot, with_state};
use crate::pages::html_page;
use crate::scope::{Scope, api_scope, page_scope};

/// Bytes read from the end of a file for the initial tail.
const MAX_TAIL_BYTES: u64 = 1024 * 1024;
/// Bytes read per follow step.
const MAX_STEP_BYTES: u64 = 256 * 1024;
/// A line longer than this is cut and sent anyway.
const MAX_LINE: usize = 64 * 1024;
/// How often the follower looks at the file.
const POLL: Duration = Duration::from_millis(250);
/// Lines on the page by default, and the upper bound for `?lines=`.
const DEFAULT_LINES: usize = 200;
const MAX_LINES: usize = 10_000;

/// One styled run of a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seg {
    /// CSS classes (`b` bold, `c31` colour), possibly empty.
    #[serde(rename = "c")]
    pub class: String,
    #[serde(rename = "t")]
    pub text: String,
}

/// A parsed line for the websocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub level: &'static str,
    pub segs: Vec<Seg>,
}

/// Splits a line into styled segments, applying SGR 0/1/22/30-37/39/90-97
/// and dropping every other escape sequence and control character.
pub fn parse_ansi(line: &str) -> Vec<Seg> {
    let mut segs: Vec<Seg> = Vec::new();
    let mut bold = false;
    let mut fg: Option<u32> = None;
    let mut cur = String::new();
    let class = |bold: bool, fg: Option<u32>| {
        let mut c = String::new();
        if bold {
            c.push('b');
        }
        if let Some(n) = fg {
            if !c.is_empty() {
                c.push(' ');
            }
            c.push_str(&format!("c{n}"));
        }
        c
    };
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                let mut params = String::new();
                let mut fin = None;
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        fin = Some(c);
                        break;
                    }
                    params.push(c);
                }
                if fin == Some('m') {
                    if !cur.is_empty() {
                        segs.push(Seg {
                            class: class(bold, fg),
                            text: std::mem::take(&mut cur),
                        });
                    }
                    let params = if params.is_empty() { "0" } else { &params };
                    for p in params.split(';') {
                        match p.parse::<u32>().unwrap_or(0) {
                            0 => {
                                bold = false;
                                fg = None;
                            }
                            1 => bold = true,
                            22 => bold = false,
                            39 => fg = None,
                            n @ (30..=37 | 90..=97) => fg = Some(n),
                            _ => {}
                        }
                    }
                }
            } else {
                chars.next();
            }
            continue;
        }
        if ch.is_control() && ch != '\t' {
            continue;
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        segs.push(Seg {
            class: class(bold, fg),
            text: cur,
        });
    }
    segs
}

/// `error`, `warning`, `info`, `debug` or "" from an Elixir-style `[level]`.
pub fn level_of(text: &str) -> &'static str {
    if text.contains("[error]") || text.contains("[critical]") || text.contains("[emergency]") {
        "error"
    } else if text.contains("[warning]") || text.contains("[warn]") {
        "warning"
    } else if text.contains("[info]") || text.contains("[notice]") {
        "info"
    } else if text.contains("[debug]") {
        "debug"
    } else {
        ""
    }
}

pub fn parse_line(raw: &str) -> Line {
    let segs = parse_ansi(raw);
    let plain: String = segs.iter().map(|s| s.text.as_str()).collect();
    Line {
        level: level_of(&plain),
        segs,
    }
}

/// A line as HTML (escaped by maud).
pub fn render_line(raw: &str) -> Markup {
    let line = parse_line(raw);
    // One `class` attribute: maud would emit `span.line class=(..)` as two,
    // and browsers drop the second (the level colour).
    let class = if line.level.is_empty() {
        "line".to_string()
    } else {
        format!("line lv-{}", line.level)
    };
    html! {
        span class=(class) {
            @for s in &line.segs {
                @if s.class.is_empty() { (s.text) } @else { span class=(s.class) { (s.text) } }
            }
            "\n"
        }
    }
}

/// The end of a log file.
#[derive(Debug, Default)]
pub struct Tail {
    pub lines: Vec<String>,
    /// Where following starts: just after the last complete line.
    pub offset: u64,
    pub notice: Option<String>,
}

/// The last `n` complete lines of `path` (a missing file is not an error).
pub async fn read_tail(path: &Path, n: usize) -> Tail {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Tail {
                notice: Some("The log file does not exist yet: waiting for it.".into()),
                ..Tail::default()
            };
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open log file");
            return Tail {
                notice: Some(format!("Cannot open the log file: {e}")),
                ..Tail::default()
            };
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    let start = len.saturating_sub(MAX_TAIL_BYTES);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).await.is_err()
        || (&mut file)
            .take(len - start)
            .read_to_end(&mut buf)
            .await
            .is_err()
    {
        return Tail {
            offset: len,
            notice: Some("Cannot read the log file.".into()),
            ..Tail::default()
        };
    }
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    let offset = start + complete as u64;
    let text = String::from_utf8_lossy(&buf[..complete]);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    let skip = lines.len().saturating_sub(n);
    Tail {
        lines: lines[skip..].iter().map(|s| (*s).to_owned()).collect(),
        offset,
        notice: None,
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Push<'a> {
    Lines(&'a [Line]),
    Notice(&'a str),
}

async fn send(ws: &mut futures::stream::SplitSink<WebSocket, Message>, p: Push<'_>) -> bool {
    match serde_json::to_string(&p) {
        Ok(s) => ws.send(Message::text(s)).await.is_ok(),
        Err(_) => false,
    }
}

/// Follows `path` from `from` until the socket closes.
pub async fn follow(
    ws: WebSocket,
    path: PathBuf,
    from: Option<u64>,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let (mut tx, mut rx) = ws.split();
    let mut offset = from;
    let mut inode: Option<u64> = None;
    let mut missing = false;
    let mut pending: Vec<u8> = Vec::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(m)) if !m.is_close() => continue,
                _ => return,
            },
            _ = tick.tick() => {}
            _ = &mut stopped => return,
        }
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(_) => {
                if !missing
                    && !send(
                        &mut tx,
                        Push::Notice("The log file does not exist (yet): waiting for it."),
                    )
                    .await
                {
                    return;
                }
                missing = true;
                continue;
            }
        };
        let len = meta.len();
        let mut restart = missing;
        if inode.is_some_and(|i| i != meta.ino()) {
            restart = true;
            if !send(&mut tx, Push::Notice("The log file was rotated.")).await {
                return;
            }
        } else if offset.is_some_and(|o| len < o) {
            restart = true;
            if !send(&mut tx, Push::Notice("The log file was truncated.")).await {
                return;
            }
        }
        missing = false;
        inode = Some(meta.ino());
        let mut pos = match offset {
            Some(o) if !restart => o,
            None if !restart => len,
            _ => {
                pending.clear();
                0
            }
        };
        // Read what is new, in bounded steps.
        while pos < len {
            let Ok(mut f) = tokio::fs::File::open(&path).await else {
                break;
            };
            if f.seek(SeekFrom::Start(pos)).await.is_err() {
                break;
            }
            let mut buf = Vec::new();
            let want = (len - pos).min(MAX_STEP_BYTES);
            match (&mut f).take(want).read_to_end(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => pos += n as u64,
            }
            pending.extend_from_slice(&buf);
            let mut lines = Vec::new();
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = pending.drain(..=nl).collect();
                let s = String::from_utf8_lossy(&raw[..raw.len() - 1]);
                lines.push(parse_line(s.trim_end_matches('\r')));
            }
            if pending.len() > MAX_LINE {
                let raw = std::mem::take(&mut pending);
                lines.push(parse_line(&String::from_utf8_lossy(&raw)));
            }
            if !lines.is_empty() && !send(&mut tx, Push::Lines(&lines)).await {
                return;
            }
        }
        offset = Some(pos);
    }
}

fn parse_stream(s: &str) -> Option<LogStream> {
    match s {
        "stdout" => Some(LogStream::Stdout),
        "stderr" => Some(LogStream::Stderr),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
pub struct LinesQuery {
    pub lines: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub struct FromQuery {
    pub from: Option<u64>,
}

/// The plain-text tail of the scope's instance log; instance 0 is
/// deployex's own (un-prefixed only: it is host-wide, not an app's).
async fn plain(
    state: Arc<AppState>,
    scope: Scope,
    instance: u32,
    stream: String,
    q: LinesQuery,
) -> Result<Response, Rejection> {
    if instance == 0 && scope.prefixed() {
        return Ok(json_error(StatusCode::NOT_FOUND, "no instance 0"));
    }
    let engine = scope.engine();
    let Some(stream) = parse_stream(&stream) else {
        return Ok(json_error(
            StatusCode::NOT_FOUND,
            "stream is stdout or stderr",
        ));
    };
    let own = (instance == 0)
        .then(|| state.cfg.own_log.clone())
        .flatten()
        .filter(|_| engine.log_file(0, stream).is_none());
    if let Some(own) = own {
        let n = q.lines.unwrap_or(100).min(MAX_LINES);
        let mut body = own.tail(n).join("\n");
        body.push('\n');
        return Ok(warp::http::Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header("x-content-type-options", "nosniff")
            .body(body.into())
            .unwrap_or_default());
    }
    let Some(path) = engine.log_file(instance, stream) else {
        return Ok(json_error(
            StatusCode::NOT_FOUND,
            format!("no log for instance {instance}"),
        ));
    };
    let n = q.lines.unwrap_or(100).min(MAX_LINES);
    let tail = read_tail(&path, n).await;
    if let Some(notice) = tail.notice.filter(|_| tail.lines.is_empty()) {
        return Ok(json_error(StatusCode::NOT_FOUND, notice));
    }
    let mut body = tail.lines.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    Ok(warp::http::Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(body.into())
        .unwrap_or_default())
}

async fn page(
    state: Arc<AppState>,
    scope: Scope,
    instance: u32,
    stream: String,
    q: LinesQuery,
) -> Result<Response, Rejection> {
    let Some(ls) = parse_stream(&stream) else {
        return Err(warp::reject::not_found());
    };
    let n = q.lines.unwrap_or(DEFAULT_LINES).min(MAX_LINES);
    if instance == 0 && scope.prefixed() {
        // deployex's own log is host-wide: not under an app.
        return Err(warp::reject::not_found());
    }
    if instance == 0
        && scope.engine().log_file(0, ls).is_none()
        && let Some(own) = &state.cfg.own_log
    {
        // In memory, not followable: the page shows the lines as of now.
        let tail = Tail {
            lines: own.tail(n),
            offset: 0,
            notice: Some(format!(
                "deployex's last {} log lines (stdout and stderr), kept in memory; reload for newer ones",
                own.capacity()
            )),
        };
        return Ok(html_page(
            StatusCode::OK,
            crate::pages::logs_page(scope.here(), instance, ls.as_str(), &tail, false),
        ));
    }
    let Some(path) = scope.engine().log_file(instance, ls) else {
        return Err(warp::reject::not_found());
    };
    let tail = read_tail(&path, n).await;
    Ok(html_page(
        StatusCode::OK,
        crate::pages::logs_page(scope.here(), instance, ls.as_str(), &tail, true),
    ))
}

async fn ws_upgrade(
    state: Arc<AppState>,
    scope: Scope,
    instance: u32,
    stream: String,
    q: FromQuery,
    ws: warp::ws::Ws,
    slot: StreamSlot,
) -> Result<Response, Rejection> {
    let path = parse_stream(&stream)
        .filter(|_| instance != 0 || !scope.prefixed())
        .and_then(|s| scope.engine().log_file(instance, s))
        .ok_or_else(warp::reject::not_found)?;
    Ok(ws
        .on_upgrade(move |socket| async move {
            let _slot = slot; // held while the follower lives
            follow(socket, path, q.from, state.stopped()).await
        })
        .into_response())
}

pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    let st = || with_state(state.clone());
    let guard = |g| authed(state.clone(), g).map(|_: Session| ()).untuple_one();
    let plain = api_scope(state.clone())
        .and(warp::path!("instances" / u32 / "logs" / String))
        .and(warp::get())
        .and(guard(Guard::Api))
        .and(st())
        .and(warp::query::<LinesQuery>())
        .and_then(|sc, i, s, st, q| plain(st, sc, i, s, q));
    let page = page_scope(state.clone())
        .and(warp::path!("instances" / u32 / "logs" / String))
        .and(warp::get())
        .and(guard(Guard::Page))
        .and(st())
        .and(warp::query::<LinesQuery>())
        .and_then(|sc, i, s, st, q| page(st, sc, i, s, q));
    let ws = page_scope(state.clone())
        .and(warp::path!("instances" / u32 / "logs" / String / "ws"))
        .and(stream_slot(state.clone(), Guard::Api))
        .and(st())
        .and(warp::query::<FromQuery>())
        .and(warp::ws())
        .and_then(|sc, i, s, (_, slot): (Session, StreamSlot), st, q, ws| {
            ws_upgrade(st, sc, i, s, q, ws, slot)
        });
    plain.or(page).unify().or(ws).unify().boxed()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ansi_segments() {
        let segs = parse_ansi("\x1b[1;31mred bold\x1b[0m plain \x1b[92mgreen\x1b[39m x\x1b[2K");
        assert_eq!(
            segs,
            vec![
                Seg {
                    class: "b c31".into(),
                    text: "red bold".into()
                },
                Seg {
                    class: "".into(),
                    text: " plain ".into()
                },
                Seg {
                    class: "c92".into(),
                    text: "green".into()
                },
                Seg {
                    class: "".into(),
                    text: " x".into()
                },
            ]
        );
    }

    #[test]
    fn levels_and_escaping() {
        assert_eq!(parse_line("10:00 [error] boom").level, "error");
        assert_eq!(
            parse_line("10:00 \x1b[33m[warning]\x1b[0m hm").level,
            "warning"
        );
        assert_eq!(parse_line("plain").level, "");
        let html = render_line("[info] <script>alert(1)</script>").into_string();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains(r#"class="line lv-info""#), "{html}");
        assert_eq!(html.matches("class=").count(), 1, "{html}");
    }

    #[tokio::test]
    async fn tail_takes_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, "a\nb\nc\npartial").unwrap();
        let t = read_tail(&p, 2).await;
        assert_eq!(t.lines, vec!["b", "c"]);
        assert_eq!(t.offset, 6);
        let missing = read_tail(&dir.path().join("nope"), 2).await;
        assert!(missing.notice.is_some());
    }
}
