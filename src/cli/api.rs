//! The API commands: each one HTTP call to a running deployex, printed as a
//! table (or the API's JSON with `--json`).

use std::path::Path;

use anyhow::{Context, bail};
use hyper::Method;
use serde_json::Value;

use super::client::{ApiClient, load_token, save_token, token_path};
use super::{ApiOpts, Command, table};

pub async fn run(command: Command, config: Option<&Path>) -> anyhow::Result<()> {
    match command {
        Command::Publish(_) => unreachable!("publish is not an API command"),
        Command::Login {
            api,
            password_stdin,
        } => login(&api, password_stdin, config).await,
        Command::Status(api) => status(&api, config).await,
        Command::Versions { api, instance } => {
            let path = match instance {
                Some(i) => format!("/api/v1/versions?instance={i}"),
                None => "/api/v1/versions".to_owned(),
            };
            let client = connect(&api, config).await?;
            let body = client.call(Method::GET, &path, None).await?;
            print_or(&api, &body, |v| {
                let rows = list(v)
                    .iter()
                    .map(|e| {
                        vec![
                            text(&e["inserted_at"]),
                            text(&e["instance"]),
                            text(&e["version"]),
                            text(&e["deployment"]),
                            text(&e["deploy_ref"]),
                        ]
                    })
                    .collect::<Vec<_>>();
                table::render(&["AT", "INSTANCE", "VERSION", "DEPLOYMENT", "REF"], &rows)
            })
        }
        Command::Events { api, limit } => {
            let client = connect(&api, config).await?;
            let body = client
                .call(Method::GET, &format!("/api/v1/events?limit={limit}"), None)
                .await?;
            print_or(&api, &body, |v| {
                let rows = list(v)
                    .iter()
                    .map(|e| {
                        vec![
                            text(&e["at"]),
                            text(&e["event"]),
                            text(&e["instance"]),
                            text(&e["version"]),
                            text(&e["message"]),
                        ]
                    })
                    .collect::<Vec<_>>();
                table::render(&["AT", "EVENT", "INSTANCE", "VERSION", "MESSAGE"], &rows)
            })
        }
        Command::Restart { instance, api } => {
            let client = connect(&api, config).await?;
            let path = format!("/api/v1/instances/{instance}/restart");
            let body = client.call(Method::POST, &path, None).await?;
            print_or(&api, &body, |_| format!("restarting instance {instance}\n"))
        }
        Command::Pin { version, api } => {
            let client = connect(&api, config).await?;
            let req = serde_json::json!({"mode": "manual", "version": version});
            let body = client
                .call(Method::POST, "/api/v1/mode", Some(&req))
                .await?;
            print_or(&api, &body, |_| format!("pinned {version} (manual mode)\n"))
        }
        Command::Unpin(api) => {
            let client = connect(&api, config).await?;
            let req = serde_json::json!({"mode": "automatic"});
            let body = client
                .call(Method::POST, "/api/v1/mode", Some(&req))
                .await?;
            print_or(&api, &body, |_| {
                "automatic mode: following current.json\n".to_owned()
            })
        }
        Command::Fleet(api) => {
            let client = connect(&api, config).await?;
            let body = client.call(Method::GET, "/api/v1/fleet", None).await?;
            print_or(&api, &body, fleet_table)
        }
        Command::Unghost { version, api } => {
            let client = connect(&api, config).await?;
            let path = format!("/api/v1/ghosted/{}", encode_segment(&version));
            let body = client.call(Method::DELETE, &path, None).await?;
            print_or(&api, &body, |_| format!("{version} is no longer ghosted\n"))
        }
    }
}

/// The client for `api`: `--url` or the configured dashboard address, the
/// saved token; with `--app`, checks that deployex runs that app.
async fn connect(api: &ApiOpts, config: Option<&Path>) -> anyhow::Result<ApiClient> {
    let client = ApiClient::new(&base_url(api, config)?, load_token()?)?;
    if let Some(app) = &api.app {
        let status = client.call(Method::GET, "/api/v1/status", None).await?;
        check_app(&status, app, client.base())?;
    }
    Ok(client)
}

fn check_app(status: &[u8], app: &str, base: &str) -> anyhow::Result<()> {
    let v: Value = serde_json::from_slice(status).context("the status is not JSON")?;
    match v["app"].as_str() {
        Some(runs) if runs == app => Ok(()),
        Some(runs) => bail!("deployex at {base} runs app {runs}, not {app}"),
        None => bail!("deployex at {base} did not say which app it runs"),
    }
}

fn base_url(api: &ApiOpts, config: Option<&Path>) -> anyhow::Result<String> {
    if let Some(url) = &api.url {
        return Ok(url.clone());
    }
    let cfg = super::load_config(config).context("no --url, and the configuration")?;
    let mut bind = cfg.web.server.bind;
    // A server bound to every address is reached on loopback.
    if bind.ip().is_unspecified() {
        bind.set_ip(match bind.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(format!("http://{bind}"))
}

async fn status(api: &ApiOpts, config: Option<&Path>) -> anyhow::Result<()> {
    let client = ApiClient::new(&base_url(api, config)?, load_token()?)?;
    let body = client.call(Method::GET, "/api/v1/status", None).await?;
    if let Some(app) = &api.app {
        check_app(&body, app, client.base())?;
    }
    print_or(api, &body, |v| {
        let mut out = format!(
            "app {}  mode {}{}  desired {}\n",
            text(&v["app"]),
            text(&v["mode"]),
            match v["manual_version"].as_str() {
                Some(p) => format!(" (pinned {p})"),
                None => String::new(),
            },
            text(&v["desired_version"]),
        );
        if let Some(ghosts) = v["ghosted_versions"].as_array()
            && !ghosts.is_empty()
        {
            let g: Vec<String> = ghosts.iter().map(text).collect();
            out.push_str(&format!("ghosted {}\n", g.join(", ")));
        }
        if let Some(e) = v["last_error"].as_str() {
            out.push_str(&format!("last error: {e}\n"));
        }
        let rows = list(&v["instances"])
            .iter()
            .map(|i| {
                vec![
                    text(&i["instance"]),
                    text(&i["state"]),
                    text(&i["version"]),
                    text(&i["os_pid"]),
                    text(&i["port"]),
                    if i["otp_connected"] == true {
                        "yes"
                    } else {
                        "no"
                    }
                    .to_owned(),
                    text(&i["crash_restarts"]),
                    text(&i["uptime_s"]),
                    text(&i["last_error"]),
                ]
            })
            .collect::<Vec<_>>();
        out.push_str(&table::render(
            &[
                "INSTANCE",
                "STATE",
                "VERSION",
                "OS PID",
                "PORT",
                "OTP",
                "CRASHES",
                "UPTIME S",
                "LAST ERROR",
            ],
            &rows,
        ));
        out
    })
}

async fn login(api: &ApiOpts, password_stdin: bool, config: Option<&Path>) -> anyhow::Result<()> {
    let password = if password_stdin {
        let mut input = String::new();
        std::io::stdin()
            .read_line(&mut input)
            .context("cannot read the password from stdin")?;
        input.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        rpassword::prompt_password("deployex admin password: ")
            .context("cannot read the password from the terminal (use --password-stdin)")?
    };
    if password.is_empty() {
        bail!("empty password");
    }
    let client = ApiClient::new(&base_url(api, config)?, None)?;
    let req = serde_json::json!({"username": "admin", "password": password});
    let body = client
        .call(Method::POST, "/api/v1/login", Some(&req))
        .await?;
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_owned))
        .context("the login answer carries no token")?;
    let path = token_path()?;
    save_token(&path, &token)?;
    if let Some(app) = &api.app {
        let client = ApiClient::new(client.base(), Some(token))?;
        let status = client.call(Method::GET, "/api/v1/status", None).await?;
        check_app(&status, app, client.base())?;
    }
    println!(
        "logged in to {}; token saved in {}",
        client.base(),
        path.display()
    );
    Ok(())
}

fn fleet_table(v: &Value) -> String {
    let hosts = list(&v["hosts"])
        .iter()
        .map(|h| {
            let instances: Vec<String> = list(&h["instances"])
                .iter()
                .map(|i| {
                    format!(
                        "{}:{}:{}",
                        text(&i["instance"]),
                        text(&i["version"]),
                        text(&i["state"])
                    )
                })
                .collect();
            vec![
                text(&h["host"]),
                format!("{:.1}", h["age_ms"].as_u64().unwrap_or(0) as f64 / 1000.0),
                instances.join(" "),
                text(&h["deploying"]["version"]),
                text(&h["last_error"]),
            ]
        })
        .collect::<Vec<_>>();
    let mut out = table::render(
        &["HOST", "SEEN S AGO", "INSTANCES", "DEPLOYING", "LAST ERROR"],
        &hosts,
    );
    let claims = list(&v["claims"])
        .iter()
        .map(|c| {
            vec![
                text(&c["version"]),
                text(&c["slot"]),
                text(&c["host"]),
                format!("{:.1}", c["age_ms"].as_u64().unwrap_or(0) as f64 / 1000.0),
                if c["expired"] == true {
                    "expired"
                } else {
                    "live"
                }
                .to_owned(),
                if c["canary"] == true { "canary" } else { "" }.to_owned(),
            ]
        })
        .collect::<Vec<_>>();
    if !claims.is_empty() {
        out.push('\n');
        out.push_str(&table::render(
            &["VERSION", "SLOT", "HOST", "RENEWED S AGO", "LEASE", ""],
            &claims,
        ));
    }
    let ghosts: Vec<String> = list(&v["ghosts"]).iter().map(text).collect();
    if !ghosts.is_empty() {
        out.push_str(&format!("\nfleet ghosts: {}\n", ghosts.join(", ")));
    }
    if let Some(e) = v["last_error"].as_str() {
        out.push_str(&format!("fleet error: {e}\n"));
    }
    out
}

/// With `--json`, the API's answer unchanged; else `human` of it.
fn print_or(
    api: &ApiOpts,
    body: &[u8],
    human: impl FnOnce(&Value) -> String,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if api.json {
        out.write_all(body)?;
        if !body.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    } else {
        let v: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).context("the answer is not JSON")?
        };
        out.write_all(human(&v).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// A cell: strings as they are, null as `-`, anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes a path segment (versions may carry `+`).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encodes_versions_for_the_path() {
        assert_eq!(encode_segment("1.0.0+build_7"), "1.0.0%2Bbuild_7");
        assert_eq!(encode_segment("a/b"), "a%2Fb");
    }

    #[test]
    fn app_check() {
        let s = br#"{"app":"dxtest"}"#;
        assert!(check_app(s, "dxtest", "http://x").is_ok());
        let e = check_app(s, "other", "http://x").unwrap_err().to_string();
        assert!(e.contains("runs app dxtest, not other"), "{e}");
    }
}
