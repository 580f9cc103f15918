//! The shells of the live pages: logs (lines rendered, then followed over
//! a websocket) and the terminal (xterm.js over a websocket).

use maud::{DOCTYPE, Markup, html};

use crate::assets::{XTERM_FIT_VERSION, XTERM_VERSION};

use super::layout;

/// The logs page: the last lines rendered here, then followed over a
/// websocket from `data-offset`.
/// `follow`: the page follows new lines over a websocket (log files);
/// deployex's in-memory log is shown as of the request.
pub fn logs_page(
    here: super::Here<'_>,
    instance: u32,
    stream: &str,
    tail: &crate::logs::Tail,
    follow: bool,
) -> Markup {
    let who = if instance == 0 {
        "deployex".to_string()
    } else {
        format!("instance {instance}")
    };
    let other = if stream == "stdout" {
        "stderr"
    } else {
        "stdout"
    };
    let base = here.base;
    layout(
        "Logs",
        here,
        "logs",
        html! {
            h1 { "Logs of " (who) " (" (stream) ")" }
            p.actions {
                a href={ (base) "/instances/" (instance) "/logs/" (other) } { "switch to " (other) }
                @if follow {
                    " "
                    label { input #follow type="checkbox" checked; " follow" }
                }
            }
            @if let Some(n) = &tail.notice { p.notice #log-notice { (n) } } @else { p.notice #log-notice hidden {} }
            @if follow {
                pre #log .log data-ws={ (base) "/instances/" (instance) "/logs/" (stream) "/ws?from=" (tail.offset) } {
                    @for l in &tail.lines { (crate::logs::render_line(l)) }
                }
            } @else {
                pre #log .log {
                    @for l in &tail.lines { (crate::logs::render_line(l)) }
                }
            }
        },
        true,
    )
}

pub(super) fn terminal_page(here: super::Here<'_>, instance: u32) -> Markup {
    let super::Here { app, base } = here;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                title { "Terminal " (instance) " · " (app) " · deployex" }
                link rel="stylesheet" href="/static/app.css";
                link rel="stylesheet" href={ "/static/xterm-" (XTERM_VERSION) ".css" };
                script src={ "/static/xterm-" (XTERM_VERSION) ".js" } defer {}
                script src={ "/static/addon-fit-" (XTERM_FIT_VERSION) ".js" } defer {}
                script src="/static/app.js" defer {}
            }
            body data-page="terminal" {
                header.top {
                    a.brand href="/" { "deployex" span.app { (app) } }
                    span { "Remote shell into instance " (instance) }
                    span #term-status {}
                }
                div #terminal data-ws={ (base) "/instances/" (instance) "/terminal/ws" } {}
            }
        }
    }
}
