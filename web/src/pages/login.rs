//! The login form (its body is fuzzed: `login_form`) and logout.

use std::net::IpAddr;
use std::sync::Arc;

use maud::{Markup, html};
use serde::Deserialize;
use warp::Rejection;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::AppState;
use crate::api::{LoginOutcome, attempt_login};
use crate::auth;
use crate::guard::{ReqInfo, origin_ok};

use super::{html_page, layout, redirect};

#[derive(Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
}

/// Longest login form body read.
pub const LOGIN_FORM_LIMIT: u64 = 16 * 1024;

/// The login form body (`application/x-www-form-urlencoded`); `None` when
/// it is not one (missing field, bad encoding). Fuzzed (`login_form`).
pub fn parse_login_form(body: &[u8]) -> Option<LoginForm> {
    serde_urlencoded::from_bytes(body).ok()
}

/// The body a browser would send for `form` (the fuzz check's inverse).
pub fn encode_login_form(form: &LoginForm) -> String {
    serde_urlencoded::to_string(form).unwrap_or_default()
}

pub(super) fn login_page(app: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        super::Here::top(app),
        "login",
        html! {
            form.card.login method="post" action="/login" {
                h1 { "Log in" }
                @if let Some(e) = error { p.error { (e) } }
                label { "User" input name="username" value="admin" autocomplete="username" required; }
                label { "Password" input name="password" type="password" autocomplete="current-password" required autofocus; }
                button.primary type="submit" { "Log in" }
            }
        },
        false,
    )
}

/// The form login. A browser always sends an `Origin` with a form POST:
/// one that is not the dashboard's is refused (login CSRF); a client
/// without any (curl) is let through, it carries no victim's cookies.
pub(super) async fn login_form_submit(
    state: Arc<AppState>,
    ip: IpAddr,
    info: ReqInfo,
    form: LoginForm,
) -> Result<Response, Rejection> {
    if (info.origin.is_some() || info.referer.is_some()) && !origin_ok(&state, &info) {
        return Err(warp::reject::custom(crate::guard::Forbidden));
    }
    let app = &state.cfg.app_name;
    Ok(
        match attempt_login(&state, ip, &form.username, &form.password).await {
            LoginOutcome::Ok(token) => redirect(
                "/",
                Some(auth::cookie_header(
                    &token,
                    state.cfg.session_ttl,
                    state.cfg.secure_cookie,
                )),
            ),
            LoginOutcome::Wrong => html_page(
                StatusCode::UNAUTHORIZED,
                login_page(app, Some("Invalid user or password.")),
            ),
            LoginOutcome::Limited => html_page(
                StatusCode::TOO_MANY_REQUESTS,
                login_page(app, Some("Too many failed logins: wait a minute.")),
            ),
            LoginOutcome::Failed => html_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                login_page(app, Some("The login check failed.")),
            ),
        },
    )
}

/// Logout revokes the token and clears the cookie. A cross-origin POST is
/// refused like any other cookie-session state change.
pub(super) async fn logout(state: Arc<AppState>, info: ReqInfo) -> Result<Response, Rejection> {
    let is_post = info.method == warp::http::Method::POST;
    if is_post && info.cookie.is_some() && !origin_ok(&state, &info) {
        return Err(warp::reject::custom(crate::guard::Forbidden));
    }
    if let Some(claims) = info
        .cookie
        .as_deref()
        .and_then(|c| auth::session_cookie(c, auth::cookie_name(state.cfg.secure_cookie)))
        .and_then(|t| state.tokens.verify(t).ok())
    {
        state.tokens.revoke(&claims);
    }
    Ok(redirect(
        "/login",
        Some(auth::clear_cookie_header(state.cfg.secure_cookie)),
    ))
}
