//! Release flavours: what built a release (Elixir's `mix release` or
//! rebar3's relx) decides how deployex starts it, how a pre-command runs and
//! which remote-shell subcommand the terminal uses.
//!
//! What it owns: the detection from an unpacked release (only files, no
//! process), the start/pre-command/shell arguments per flavour, and the
//! checks that refuse a relx release deployex cannot supervise: a `vm.args`
//! that pins the node name (every replica would boot as the same node), and
//! a start command that daemonises the VM away from deployex.
//!
//! Invariants:
//! - A mix release starts with `bin/{app} start` (which `exec`s down to the
//!   BEAM), a relx release with `bin/{app} foreground` (relx's `start` is the
//!   deprecated daemon mode: the script forks the VM away and exits 0).
//!   `DEPLOYEX_START_COMMAND` overrides both.
//! - Unknown flavours are treated as mix: that was the only behaviour before.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What built a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseKind {
    /// Elixir `mix release`: `releases/{vsn}/env.sh`.
    Mix,
    /// rebar3/relx: `bin/nodetool`, `bin/install_upgrade.escript`,
    /// `releases/{vsn}/vm.args(.src)` and a start script that reads `RELX_*`.
    Relx,
}

impl ReleaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseKind::Mix => "mix",
            ReleaseKind::Relx => "relx",
        }
    }
}

/// The flavour of the release unpacked at `root` (`None`: no release there).
pub fn detect(root: &Path, app: &str) -> Option<ReleaseKind> {
    let script = root.join("bin").join(app);
    if !script.is_file() {
        return None;
    }
    if let Some(vsn) = crate::store::release_version(root)
        && root.join("releases").join(vsn).join("env.sh").is_file()
    {
        return Some(ReleaseKind::Mix);
    }
    let bin = root.join("bin");
    if bin.join("nodetool").is_file() || bin.join("install_upgrade.escript").is_file() {
        return Some(ReleaseKind::Relx);
    }
    // Newer relx scripts ship no nodetool; they all read RELX_* variables.
    let relx_script =
        std::fs::read(&script).is_ok_and(|text| text.windows(5).any(|w| w == b"RELX_"));
    Some(if relx_script {
        ReleaseKind::Relx
    } else {
        ReleaseKind::Mix
    })
}

/// The arguments of `bin/{app}` that start an instance in the foreground:
/// `start_command` (the operator's `DEPLOYEX_START_COMMAND`, split on
/// whitespace) when set, else the flavour's own.
pub fn start_args(kind: Option<ReleaseKind>, start_command: Option<&str>) -> Vec<String> {
    if let Some(cmd) = start_command.map(str::trim).filter(|c| !c.is_empty()) {
        return cmd.split_whitespace().map(str::to_owned).collect();
    }
    match kind {
        Some(ReleaseKind::Relx) => vec!["foreground".to_owned()],
        Some(ReleaseKind::Mix) | None => vec!["start".to_owned()],
    }
}

/// The remote-shell subcommand of `bin/{app}` for the web terminal.
pub fn remote_shell_arg(kind: Option<ReleaseKind>) -> &'static str {
    match kind {
        Some(ReleaseKind::Relx) => "remote_console",
        Some(ReleaseKind::Mix) | None => "remote",
    }
}

/// `RELEASE_NODE` of instance `instance`: `{app}-{i}` for both flavours
/// (deployex's node watcher connects to `{app}-{i}@{host}`).
pub fn node_basename(app: &str, instance: u32) -> String {
    format!("{app}-{instance}")
}

/// `RELEASE_NODE` of a pre-command's VM: relx's vm.args names every VM of
/// the release, so the pre-command's needs a name of its own beside the
/// running instance.
pub fn pre_command_node(app: &str, instance: u32) -> String {
    format!("{app}-{instance}-eval")
}

/// The arguments of `bin/{app}` for the pre-command `sub rest` (e.g.
/// `eval 'mod:fun()'`) on the release at `root`.
///
/// mix's `eval` boots a fresh VM with the release's code loaded and nothing
/// started. relx's `eval` runs on the *running* node instead (there is none
/// on a first deployment, and it would be the old version's): deployex
/// turns it into the same as mix's, `console_clean` (start_clean boot, no
/// application started) with the release's `lib/*/ebin` on the code path,
/// the expression as `-eval`, then `halt`. A failing expression exits 1
/// (`init terminating in do_boot`), `halt(N)` exits N.
pub fn pre_command_args(
    kind: Option<ReleaseKind>,
    root: &Path,
    sub: &str,
    rest: Option<&str>,
) -> Vec<String> {
    match (kind, rest) {
        (Some(ReleaseKind::Relx), Some(expr)) if sub == "eval" => {
            let mut args = vec!["console_clean".to_owned(), "-noshell".to_owned()];
            let ebins = release_ebins(root);
            if !ebins.is_empty() {
                args.push("-pa".to_owned());
                args.extend(ebins.iter().map(|p| p.to_string_lossy().into_owned()));
            }
            args.push("-eval".to_owned());
            args.push(expr.trim().trim_end_matches('.').to_owned());
            args.extend(["-s", "erlang", "halt"].map(str::to_owned));
            args
        }
        _ => {
            let mut args = vec![sub.to_owned()];
            if let Some(rest) = rest {
                args.push(rest.to_owned());
            }
            args
        }
    }
}

/// `root/lib/*/ebin`, sorted.
fn release_ebins(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("ebin"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Refuses a release deployex cannot run as several replicas: a relx
/// release whose `vm.args` (or `vm.args.src`) does not take its node name
/// from `${RELEASE_NODE}`. Mix releases pass (their scripts read
/// `RELEASE_NODE` themselves).
pub fn check_release(root: &Path, app: &str) -> Result<(), RefusedRelease> {
    if detect(root, app) != Some(ReleaseKind::Relx) {
        return Ok(());
    }
    let Some(vsn) = crate::store::release_version(root) else {
        return Ok(());
    };
    let dir = root.join("releases").join(&vsn);
    let (file, text) = ["vm.args.src", "vm.args"]
        .iter()
        .find_map(|name| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .map(|text| (format!("releases/{vsn}/{name}"), text))
        })
        .ok_or_else(|| RefusedRelease::NoVmArgs { vsn: vsn.clone() })?;
    check_vm_args(&file, &text)
}

const NAME_HINT: &str = "name the node `-sname ${RELEASE_NODE}` and set `-setcookie ${RELEASE_COOKIE}` \
     in config/vm.args.src ({vm_args_src, \"./config/vm.args.src\"} in rebar.config); \
     deployex sets RELEASE_NODE={app}-{instance} and RELEASE_COOKIE";

/// Why a release is refused before any start (an instance's `last_error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedRelease {
    #[error("relx release {vsn} has no releases/{vsn}/vm.args: {}", NAME_HINT)]
    NoVmArgs { vsn: String },
    #[error("{file} sets no node name: {}", NAME_HINT)]
    NoNodeName { file: String },
    #[error(
        "{file} pins the node name (`{line}`): every replica would boot as the same node; {}",
        NAME_HINT
    )]
    PinnedNodeName { file: String, line: String },
    #[error("{file} names the node more than once ({}): {}", .names.join(", "), NAME_HINT)]
    SeveralNodeNames { file: String, names: Vec<String> },
}

/// See [`check_release`]; `file` names the file in the error.
pub fn check_vm_args(file: &str, text: &str) -> Result<(), RefusedRelease> {
    let names: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            let flag = l.split_whitespace().next().unwrap_or("");
            flag == "-sname" || flag == "-name"
        })
        .collect();
    match names.as_slice() {
        [] => Err(RefusedRelease::NoNodeName { file: file.into() }),
        [line] if line.contains("${RELEASE_NODE}") => Ok(()),
        [line] => Err(RefusedRelease::PinnedNodeName {
            file: file.into(),
            line: (*line).into(),
        }),
        _ => Err(RefusedRelease::SeveralNodeNames {
            file: file.into(),
            names: names.iter().map(|n| (*n).to_string()).collect(),
        }),
    }
}

/// The `last_error` of an instance whose start command exited 0 and left
/// a VM running outside deployex's process group.
pub fn escaped_daemon_error(args: &[String], pids: &[i32]) -> String {
    format!(
        "`bin/{{app}} {}` exited 0 and left its VM running outside deployex (pids {pids:?}): \
         that is relx's daemon mode (`start`/`daemon`), which deployex cannot supervise; \
         the VM was stopped. Start releases in the foreground (relx: `foreground`, the \
         default for relx releases; unset DEPLOYEX_START_COMMAND or set it to `foreground`)",
        args.join(" ")
    )
}

/// SIGKILLs every process tree of the instance at `service` until none is
/// left (at most 5 s): a daemonised VM hangs below `run_erl` in sessions of
/// their own, so a killed tree can leave a new root behind.
pub fn stop_escaped(service: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let roots = crate::process::instance_roots(service);
        if roots.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            tracing::error!(service = %service.display(), pids = ?roots, "escaped VM survives SIGKILL");
            return;
        }
        for pid in roots {
            crate::process::kill_group_now(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn release(dir: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    #[test]
    fn detects_mix_and_relx() {
        let mix = tempfile::tempdir().unwrap();
        release(
            mix.path(),
            &[
                ("bin/app", "#!/bin/sh\n"),
                ("releases/start_erl.data", "13.1.5 0.1.0"),
                ("releases/0.1.0/env.sh", ""),
            ],
        );
        assert_eq!(detect(mix.path(), "app"), Some(ReleaseKind::Mix));
        let relx = tempfile::tempdir().unwrap();
        release(
            relx.path(),
            &[
                ("bin/app", "#!/bin/sh\n"),
                ("bin/nodetool", ""),
                ("releases/start_erl.data", "13.1.5 0.1.0"),
            ],
        );
        assert_eq!(detect(relx.path(), "app"), Some(ReleaseKind::Relx));
        let new_relx = tempfile::tempdir().unwrap();
        release(
            new_relx.path(),
            &[("bin/app", "#!/bin/sh\nRELX_RPC_TIMEOUT=1\n")],
        );
        assert_eq!(detect(new_relx.path(), "app"), Some(ReleaseKind::Relx));
        assert_eq!(detect(new_relx.path(), "other"), None);
    }

    #[test]
    fn start_args_per_flavour_and_override() {
        assert_eq!(start_args(Some(ReleaseKind::Mix), None), ["start"]);
        assert_eq!(start_args(Some(ReleaseKind::Relx), None), ["foreground"]);
        assert_eq!(start_args(None, None), ["start"]);
        assert_eq!(
            start_args(Some(ReleaseKind::Relx), Some(" daemon  x ")),
            ["daemon", "x"]
        );
        assert_eq!(
            start_args(Some(ReleaseKind::Relx), Some(" ")),
            ["foreground"]
        );
    }

    #[test]
    fn relx_eval_runs_in_a_clean_vm() {
        let dir = tempfile::tempdir().unwrap();
        release(dir.path(), &[("lib/app-0.1.0/ebin/app.app", "")]);
        let args = pre_command_args(Some(ReleaseKind::Relx), dir.path(), "eval", Some("m:f()."));
        let ebin = dir.path().join("lib/app-0.1.0/ebin");
        assert_eq!(
            args,
            [
                "console_clean",
                "-noshell",
                "-pa",
                ebin.to_str().unwrap(),
                "-eval",
                "m:f()",
                "-s",
                "erlang",
                "halt"
            ]
        );
        assert_eq!(
            pre_command_args(Some(ReleaseKind::Mix), dir.path(), "eval", Some("M.f()")),
            ["eval", "M.f()"]
        );
    }

    #[test]
    fn vm_args_must_take_the_node_name_from_release_node() {
        assert!(
            check_vm_args(
                "f",
                "-sname ${RELEASE_NODE}\n-setcookie ${RELEASE_COOKIE}\n"
            )
            .is_ok()
        );
        assert!(check_vm_args("f", "-name ${RELEASE_NODE}@127.0.0.1\n").is_ok());
        let fixed = check_vm_args("releases/0.1.0/vm.args", "-sname demo\n\n-setcookie c\n")
            .unwrap_err()
            .to_string();
        assert!(
            fixed.contains("pins the node name (`-sname demo`)"),
            "{fixed}"
        );
        assert!(fixed.contains("${RELEASE_NODE}"), "{fixed}");
        assert!(
            check_vm_args("f", "+K true\n")
                .unwrap_err()
                .to_string()
                .contains("sets no node name")
        );
        assert!(check_vm_args("f", "-sname a\n-sname ${RELEASE_NODE}\n").is_err());
    }
}
