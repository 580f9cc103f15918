//! The web server's settings: where it listens, its public origin, the
//! session cookie, proxies and limits, read straight into the web crate's
//! own `WebConfig` (the binary only adds its own log before serving).
//! Adding one: a row in `settings::SETTINGS`, a field in `WebConfig` and
//! its reader here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use deployex_actors::EngineConfig;
use deployex_web::WebConfig;

use super::source::Source;
use super::{ConfigError, WebSettings};

/// A terminal closes after this long whatever happens in it.
const TERMINAL_LIFETIME: Duration = Duration::from_secs(4 * 3600);

/// The web half of [`Config`](super::Config); `engine` gives the app's
/// name and where revoked tokens are kept, the loader the two secrets.
pub(super) fn settings(
    src: &Source,
    engine: &EngineConfig,
    secret_key_base: String,
    admin_hashed_password: String,
) -> Result<WebSettings, ConfigError> {
    let bind_ip = src.string("DEPLOYEX_BIND_ADDR", "127.0.0.1");
    let bind_ip: IpAddr = bind_ip
        .parse()
        .map_err(|_| src.invalid("DEPLOYEX_BIND_ADDR", &bind_ip, "expected an IP address"))?;
    let phx_port: u16 = src.number("DEPLOYEX_PHX_PORT", 5001, 0, 65535)?;

    // -- web hardening --
    let trusted_proxies = match src.opt("DEPLOYEX_TRUSTED_PROXIES") {
        None => Vec::new(),
        Some(v) => v
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<ipnet::IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                src.invalid(
                    "DEPLOYEX_TRUSTED_PROXIES",
                    &v,
                    "expected comma-separated CIDRs (10.0.0.0/8, ::1/128) or addresses",
                )
            })?,
    };
    let phx_host = src.string("DEPLOYEX_PHX_HOST", "localhost");
    let public_url = src.opt("DEPLOYEX_PUBLIC_URL");
    let public_origins =
        deployex_web::auth::public_origins(public_url.as_deref(), &phx_host, phx_port).map_err(
            |e| {
                src.invalid(
                    "DEPLOYEX_PUBLIC_URL",
                    public_url.as_deref().unwrap_or(""),
                    &e.to_string(),
                )
            },
        )?;
    let secure_cookie = match src.opt("DEPLOYEX_SECURE_COOKIE") {
        None => public_origins.iter().any(|o| o.starts_with("https://")),
        Some(_) => src.boolean("DEPLOYEX_SECURE_COOKIE", false)?,
    };
    let max_connections: usize = src.number("DEPLOYEX_MAX_CONNECTIONS", 512, 8, 1_000_000)?;

    let server = WebConfig {
        bind: SocketAddr::new(bind_ip, phx_port),
        host: phx_host,
        secret_key_base,
        admin_hashed_password,
        secure_cookie,
        session_ttl: Duration::from_secs(src.number(
            "DEPLOYEX_SESSION_TTL_S",
            43_200,
            60,
            31_536_000,
        )?),
        metrics_token: src.opt("DEPLOYEX_METRICS_TOKEN"),
        terminal_idle: src.millis("DEPLOYEX_TERMINAL_IDLE_MS", 300_000, 1000, 86_400_000)?,
        terminal_lifetime: TERMINAL_LIFETIME,
        app_name: engine.app.clone(),
        revoked_tokens_file: Some(engine.storage_dir().join("revoked_tokens.json")),
        trusted_proxies,
        public_origins,
        max_connections,
        own_log: None,
    };
    Ok(WebSettings {
        enabled: src.boolean("DEPLOYEX_PHX_SERVER", true)?,
        server,
    })
}
