//! Values as the pages show them: durations, sizes, state names.

use deployex_actors::model::{DeploymentKind, InstanceState};

/// `1d 2h`, `3h 4m`, `5m 6s`, `7s`.
pub fn fmt_uptime(s: u64) -> String {
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

/// `512 B`, `1.5 KiB`, `52.3 MiB`, `1.2 GiB`: binary units, as `erlang:memory` counts.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `1.5 s`, `2m 5s`: how long a deployment took.
pub fn fmt_duration_ms(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        fmt_uptime(ms / 1000)
    }
}

pub(super) fn state_name(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Starting => "starting",
        InstanceState::Running => "running",
        InstanceState::PreCommands => "pre_commands",
        InstanceState::PreCommandsFailed => "pre_commands_failed",
        InstanceState::CrashBackoff => "crash_backoff",
        InstanceState::Stopped => "stopped",
        InstanceState::Deploying => "deploying",
    }
}

pub(super) fn kind_name(k: DeploymentKind) -> &'static str {
    match k {
        DeploymentKind::FullDeployment => "full_deployment",
        DeploymentKind::HotUpgrade => "hot_upgrade",
        DeploymentKind::Rollback => "rollback",
    }
}
