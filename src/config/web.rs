//! The web server's settings: where it listens, its public origin, the
//! session cookie, proxies and limits. Adding one: a line in
//! `settings::VARIABLES`, a field here and in `Config`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::ConfigError;
use super::source::Source;

/// The web half of [`Config`](super::Config).
pub(super) struct Web {
    pub enabled: bool,
    pub bind: SocketAddr,
    pub host: String,
    pub secure_cookie: bool,
    pub session_ttl: Duration,
    pub metrics_token: Option<String>,
    pub terminal_idle: Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub public_origins: Vec<String>,
    pub max_connections: usize,
}

pub(super) fn settings(src: &Source) -> Result<Web, ConfigError> {
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

    Ok(Web {
        enabled: src.boolean("DEPLOYEX_PHX_SERVER", true)?,
        bind: SocketAddr::new(bind_ip, phx_port),
        host: phx_host,
        secure_cookie,
        session_ttl: Duration::from_secs(src.number(
            "DEPLOYEX_SESSION_TTL_S",
            43_200,
            60,
            31_536_000,
        )?),
        metrics_token: src.opt("DEPLOYEX_METRICS_TOKEN"),
        terminal_idle: src.millis("DEPLOYEX_TERMINAL_IDLE_MS", 300_000, 1000, 86_400_000)?,
        trusted_proxies,
        public_origins,
        max_connections,
    })
}
