//! The release_handler sequence on the running node (NOTES-BEAM §3):
//! unpack, relup on the node when none is shipped, check, install, make
//! permanent.

use super::*;

// ---------------------------------------------------------------------------
// Execution

/// One step of [`hot_upgrade`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `code:root_dir()` and `release_handler:which_releases()`.
    Check,
    /// `rm -rf releases/{to}`, copy in the tarball's entries missing from
    /// the root.
    Copy,
    Unpack,
    /// `systools:make_relup` on the node (only when the tarball has none).
    MakeRelup,
    /// The new release's config providers (`config/runtime.exs`) run on
    /// the node, their result written into `releases/{to}/sys.config`
    /// for `install_release` (the original file comes back after it).
    RuntimeConfig,
    CheckInstall,
    Install,
    MakePermanent,
    /// Undoing a failed attempt ([`cleanup_failed`]).
    Cleanup,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Check => "check",
            Step::Copy => "copy",
            Step::Unpack => "unpack_release",
            Step::MakeRelup => "make_relup",
            Step::RuntimeConfig => "runtime_config",
            Step::CheckInstall => "check_install_release",
            Step::Install => "install_release",
            Step::MakePermanent => "make_permanent",
            Step::Cleanup => "cleanup",
        })
    }
}

/// Where the relup that was installed came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelupSource {
    /// `releases/{to}/relup` was in the tarball.
    Shipped,
    /// Built on the node from the appup with `systools:make_relup`.
    Built,
}

/// What a successful hot upgrade did and how long each step took.
#[derive(Debug, Clone)]
pub struct HotUpgradeReport {
    pub from: String,
    pub to: String,
    pub relup: RelupSource,
    pub steps: Vec<(Step, Duration)>,
    pub total: Duration,
}

impl HotUpgradeReport {
    /// Time spent in `step` (zero if it did not run).
    pub fn duration(&self, step: Step) -> Duration {
        self.steps
            .iter()
            .filter(|(s, _)| *s == step)
            .map(|(_, d)| *d)
            .sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// A step's RPC failed or the node answered with an error.
    #[error("hot upgrade {from} -> {to}: {step} failed: {reason}")]
    Step {
        step: Step,
        from: String,
        to: String,
        reason: String,
    },

    /// The node is not in the state this upgrade starts from.
    #[error("hot upgrade {from} -> {to} refused: {reason}")]
    Precondition {
        from: String,
        to: String,
        reason: String,
    },

    /// A local file operation failed.
    #[error("hot upgrade to {to}: {step}: cannot handle {}", path.display())]
    Io {
        step: Step,
        to: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The upgrade failed at `step`, and undoing it failed too (`source`):
    /// the node may need a full deployment.
    #[error("hot upgrade to {to} failed at {step} ({failure}), and the clean-up failed")]
    CleanupFailed {
        step: Step,
        to: String,
        failure: String,
        #[source]
        source: Box<UpgradeError>,
    },
}

impl UpgradeError {
    /// The step that failed.
    pub fn step(&self) -> Step {
        match self {
            UpgradeError::Step { step, .. }
            | UpgradeError::Io { step, .. }
            | UpgradeError::CleanupFailed { step, .. } => *step,
            UpgradeError::Precondition { .. } => Step::Check,
        }
    }
}

/// Runs steps against one node and keeps their timings.
pub(super) struct Run<'a, R> {
    pub(super) rpc: &'a R,
    pub(super) from: &'a str,
    pub(super) to: &'a str,
    pub(super) timeout: Duration,
    pub(super) steps: Vec<(Step, Duration)>,
}

impl<R: Rpc> Run<'_, R> {
    pub(super) async fn call(
        &mut self,
        step: Step,
        m: &str,
        f: &str,
        args: Vec<Term>,
    ) -> Result<Term, UpgradeError> {
        let started = Instant::now();
        let result = self.rpc.call(m, f, args, self.timeout).await;
        self.steps.push((step, started.elapsed()));
        result.map_err(|e| self.fail(step, error_chain(&e)))
    }

    pub(super) fn fail(&self, step: Step, reason: String) -> UpgradeError {
        UpgradeError::Step {
            step,
            from: self.from.to_owned(),
            to: self.to.to_owned(),
            reason,
        }
    }

    /// Accepts `ok` or a tuple starting with `ok`; `{error, R}` and anything
    /// else become an error naming the step.
    pub(super) fn ok(&self, step: Step, reply: &Term) -> Result<(), UpgradeError> {
        let is_ok = as_atom(reply) == Some("ok")
            || as_tuple(reply)
                .and_then(|t| t.first())
                .and_then(as_atom)
                .is_some_and(|a| a == "ok");
        if is_ok {
            return Ok(());
        }
        let reason = match as_tuple(reply) {
            Some([tag, rest @ ..]) if as_atom(tag) == Some("error") => match rest {
                [one] => pretty(one),
                _ => pretty(&tuple(rest.to_vec())),
            },
            _ => format!("unexpected reply {}", pretty(reply)),
        };
        Err(self.fail(step, reason))
    }
}

pub(super) fn io_err(
    step: Step,
    to: &str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> UpgradeError {
    let to = to.to_owned();
    let path = path.to_owned();
    move |source| UpgradeError::Io {
        step,
        to,
        path,
        source,
    }
}

/// A filesystem path as the node wants it (a charlist).
pub(super) fn path_term(path: &Path) -> Term {
    charlist(&path.to_string_lossy())
}

/// Hot-upgrades the node running `app` `from` (its permanent release, with
/// its root at `current_root`) to `to`, from the release `tarball`.
///
/// Sequence (NOTES-BEAM §3): check the node's root and permanent release,
/// copy the tarball's new entries to `releases/{to}/{app}.tar.gz`,
/// `unpack_release`, `make_relup` when the tarball ships none,
/// `check_install_release`, `install_release` with `update_paths`,
/// `make_permanent`. A failure from the copy up to `install_release`
/// (included) runs [`cleanup_failed`], so a retry can work; a failed
/// `make_permanent` leaves the new code running but `from` permanent (a
/// restart boots `from`). `install_release` answering
/// `continue_after_restart` (an ERTS upgrade) counts as a failure: such a
/// release needs a full deployment.
pub async fn hot_upgrade(
    rpc: &impl Rpc,
    current_root: &Path,
    tarball: &Path,
    app: &str,
    from: &str,
    to: &str,
    step_timeout: Duration,
) -> Result<HotUpgradeReport, UpgradeError> {
    let started = Instant::now();
    let mut run = Run {
        rpc,
        from,
        to,
        timeout: step_timeout,
        steps: Vec::new(),
    };
    let refuse = |reason: String| UpgradeError::Precondition {
        from: from.to_owned(),
        to: to.to_owned(),
        reason,
    };
    if from == to {
        return Err(refuse(format!("the instance already runs {to}")));
    }
    let root = tokio::fs::canonicalize(current_root).await.map_err(io_err(
        Step::Check,
        to,
        current_root,
    ))?;
    check_node(&mut run, &root).await?;

    // From here on files change: undo them on failure.
    let relup = match unpack_and_relup(&mut run, &root, tarball, app).await {
        Ok(relup) => relup,
        Err(err) => return Err(with_cleanup(rpc, &root, app, (from, to), step_timeout, err).await),
    };
    // Runtime configuration (Elixir config providers: `runtime.exs`):
    // install_release applies `releases/{to}/sys.config` as it is, which
    // holds only the build-time values; a node that booted with
    // runtime.exs values would lose them. The providers run on the node
    // (its environment is the instance's), their result is what
    // install_release applies; the original file is put back afterwards so
    // a later cold boot runs the providers itself.
    let sys_config = root.join("releases").join(to).join("sys.config");
    let original = match runtime_config(&mut run, &sys_config).await {
        Ok(original) => original,
        Err(err) => return Err(with_cleanup(rpc, &root, app, (from, to), step_timeout, err).await),
    };
    let reply = run
        .call(
            Step::CheckInstall,
            "release_handler",
            "check_install_release",
            vec![charlist(to)],
        )
        .await;
    if let Err(err) = reply.and_then(|r| run.ok(Step::CheckInstall, &r)) {
        return Err(with_cleanup(rpc, &root, app, (from, to), step_timeout, err).await);
    }
    let reply = run
        .call(
            Step::Install,
            "release_handler",
            "install_release",
            vec![
                charlist(to),
                list(vec![tuple(vec![atom("update_paths"), atom("true")])]),
            ],
        )
        .await;
    if let Err(err) = reply.and_then(|r| run.ok(Step::Install, &r)) {
        // A failure past the relup's point of no return restarts the node
        // by itself (into `from`, still permanent); before it, nothing ran.
        return Err(with_cleanup(rpc, &root, app, (from, to), step_timeout, err).await);
    }
    if let Some(original) = original {
        // Failing to put it back costs nothing now (the config is
        // applied) but a cold boot would start from the merged values.
        if let Err(e) = crate::storage::write_atomic(&sys_config, &original) {
            tracing::warn!(path = %sys_config.display(), error = %e, "cannot restore the release's sys.config");
        }
    }
    // The new code runs now; if this fails, a restart boots `from` again.
    let reply = run
        .call(
            Step::MakePermanent,
            "release_handler",
            "make_permanent",
            vec![charlist(to)],
        )
        .await?;
    run.ok(Step::MakePermanent, &reply)?;
    let steps = run.steps;
    Ok(HotUpgradeReport {
        from: from.to_owned(),
        to: to.to_owned(),
        relup,
        steps,
        total: started.elapsed(),
    })
}

/// Elixir code run on the node by [`runtime_config`]: the release's config
/// providers applied to its `sys.config`, as Elixir's release boot does,
/// and the result written back in its place. `:none` when the release has
/// no config providers.
const RUNTIME_CONFIG_SRC: &str = r#"
{:ok, [sys]} = :file.consult(path)
case sys[:elixir][:config_provider_init] do
  %{providers: providers} = init ->
    config = Config.Reader.merge(sys, Map.get(init, :extra_config, []))
    config = Enum.reduce(providers, config, fn {m, s}, acc -> m.load(acc, s) end)
    File.write!(path, ["%% coding: utf-8
", :io_lib.format(~c"~tp.~n", [config])])
    :ok
  _ ->
    :none
end
"#;

/// Runs the new release's config providers on the node into
/// `sys_config` (see [`RUNTIME_CONFIG_SRC`]). Returns the file's original
/// bytes when it was rewritten, `None` when the release has no providers
/// (or is not an Elixir release).
pub(super) async fn runtime_config<R: Rpc>(
    run: &mut Run<'_, R>,
    sys_config: &Path,
) -> Result<Option<Vec<u8>>, UpgradeError> {
    let original = tokio::fs::read(sys_config).await.map_err(io_err(
        Step::RuntimeConfig,
        run.to,
        sys_config,
    ))?;
    if !original
        .windows(b"config_provider_init".len())
        .any(|w| w == b"config_provider_init")
    {
        return Ok(None);
    }
    let reply = run
        .call(
            Step::RuntimeConfig,
            "Elixir.Code",
            "eval_string",
            vec![
                crate::dist::binary(RUNTIME_CONFIG_SRC),
                list(vec![tuple(vec![
                    atom("path"),
                    crate::dist::binary(sys_config.to_string_lossy().as_bytes()),
                ])]),
            ],
        )
        .await?;
    match as_tuple(&reply).and_then(|t| t.first()).and_then(as_atom) {
        Some("ok") => Ok(Some(original)),
        Some("none") => Ok(None),
        _ => Err(run.fail(
            Step::RuntimeConfig,
            format!("running the config providers answered {}", pretty(&reply)),
        )),
    }
}

/// The node must run from `root` with `from` permanent and `to` not
/// installed; a leftover unpacked `to` (an attempt that died before its
/// clean-up) is `set_removed` so unpacking works again.
pub(super) async fn check_node<R: Rpc>(
    run: &mut Run<'_, R>,
    root: &Path,
) -> Result<(), UpgradeError> {
    let refuse = |reason: String| UpgradeError::Precondition {
        from: run.from.to_owned(),
        to: run.to.to_owned(),
        reason,
    };
    let reply = run.call(Step::Check, "code", "root_dir", vec![]).await?;
    let node_root = term_to_string(&reply).unwrap_or_else(|| pretty(&reply));
    if Path::new(&node_root) != root {
        return Err(refuse(format!(
            "the node runs from {node_root}, not from {}",
            root.display()
        )));
    }
    let reply = run
        .call(Step::Check, "release_handler", "which_releases", vec![])
        .await?;
    let releases = parse_releases(&reply).ok_or_else(|| {
        refuse(format!(
            "unexpected which_releases reply {}",
            pretty(&reply)
        ))
    })?;
    let permanent: Vec<&str> = releases
        .iter()
        .filter(|(_, status)| status == "permanent")
        .map(|(vsn, _)| vsn.as_str())
        .collect();
    if permanent != [run.from] {
        return Err(refuse(format!(
            "the node's permanent release is {}, not {}",
            describe_sources(
                &permanent
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect::<Vec<_>>()
            ),
            run.from
        )));
    }
    match releases.iter().find(|(vsn, _)| vsn == run.to) {
        None => Ok(()),
        Some((_, status)) if status == "current" => Err(refuse(format!(
            "{} is already installed (current) but not permanent",
            run.to
        ))),
        Some(_) => {
            let to = run.to;
            let reply = run
                .call(
                    Step::Check,
                    "release_handler",
                    "set_removed",
                    vec![charlist(to)],
                )
                .await?;
            run.ok(Step::Check, &reply)
        }
    }
}

/// `(version, status)` of every release in a `which_releases()` reply.
pub(super) fn parse_releases(reply: &Term) -> Option<Vec<(String, String)>> {
    as_list(reply)?
        .iter()
        .map(|entry| match as_tuple(entry)? {
            [_name, vsn, _libs, status] => {
                Some((term_to_string(vsn)?, as_atom(status)?.to_owned()))
            }
            _ => None,
        })
        .collect()
}

pub(super) async fn unpack_and_relup<R: Rpc>(
    run: &mut Run<'_, R>,
    root: &Path,
    tarball: &Path,
    app: &str,
) -> Result<RelupSource, UpgradeError> {
    let to = run.to;
    let from = run.from;
    let rel_dir = root.join("releases").join(to);
    let copy_started = Instant::now();
    match tokio::fs::remove_dir_all(&rel_dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(Step::Copy, to, &rel_dir)(e)),
    }
    tokio::fs::create_dir_all(&rel_dir)
        .await
        .map_err(io_err(Step::Copy, to, &rel_dir))?;
    let dest = rel_dir.join(format!("{app}.tar.gz"));
    let (src, dst, base) = (tarball.to_owned(), dest.clone(), root.to_owned());
    tokio::task::spawn_blocking(move || copy_new_entries(&src, &base, &dst))
        .await
        .map_err(|e| io_err(Step::Copy, to, tarball)(std::io::Error::other(e)))?
        .map_err(io_err(Step::Copy, to, tarball))?;
    // A node running as the app user unpacks into releases/{to}/.
    for path in [&rel_dir, &dest] {
        crate::app_user::inherit_owner(path, &root.join("releases")).map_err(io_err(
            Step::Copy,
            to,
            path,
        ))?;
    }
    run.steps.push((Step::Copy, copy_started.elapsed()));

    let reply = run
        .call(
            Step::Unpack,
            "release_handler",
            "unpack_release",
            vec![charlist(&format!("{to}/{app}"))],
        )
        .await?;
    run.ok(Step::Unpack, &reply)?;
    if let Some([_, vsn]) = as_tuple(&reply)
        && term_to_string(vsn).as_deref() != Some(to)
    {
        return Err(run.fail(
            Step::Unpack,
            format!("the tarball holds release {}, not {to}", pretty(vsn)),
        ));
    }

    let relup = rel_dir.join("relup");
    if tokio::fs::try_exists(&relup)
        .await
        .map_err(io_err(Step::Unpack, to, &relup))?
    {
        return Ok(RelupSource::Shipped);
    }
    // unpack_release deletes releases/{to}/{app}.rel: use the Jellyfish
    // copies releases/{app}-{vsn}.rel.
    let rel = |vsn: &str| root.join("releases").join(format!("{app}-{vsn}"));
    for vsn in [to, from] {
        let file = root.join("releases").join(format!("{app}-{vsn}.rel"));
        if !tokio::fs::try_exists(&file).await.unwrap_or(false) {
            return Err(run.fail(
                Step::MakeRelup,
                format!(
                    "no relup in the tarball and no {} to build one",
                    file.display()
                ),
            ));
        }
    }
    let options = list(vec![
        atom("silent"),
        tuple(vec![
            atom("path"),
            list(vec![path_term(&root.join("lib").join("*").join("ebin"))]),
        ]),
        tuple(vec![atom("outdir"), path_term(&rel_dir)]),
    ]);
    let reply = run
        .call(
            Step::MakeRelup,
            "systools",
            "make_relup",
            vec![
                path_term(&rel(to)),
                list(vec![path_term(&rel(from))]),
                list(vec![path_term(&rel(from))]),
                options,
            ],
        )
        .await?;
    // `{error, Module, Reason}`: Module:format_error(Reason) would say it
    // better, but the raw reason is precise enough.
    run.ok(Step::MakeRelup, &reply)?;
    Ok(RelupSource::Built)
}
