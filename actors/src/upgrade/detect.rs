//! Deciding between a hot upgrade and a full deployment from the files of
//! the unpacked new release and of the running one (relup, `.rel` files,
//! every changed application's appup); never needs a node.
//!
//! The rule: a shipped relup decides alone (it was built from every
//! appup). Without one, deployex builds the relup on the node with
//! `systools:make_relup`, which needs an appup for each application whose
//! version changed between the two `.rel` files, with a clause from the
//! running version. So every changed application (the main one, a
//! dependency, an umbrella child) must ship
//! `lib/{name}-{new}/ebin/{name}.appup` naming its old version; anything
//! else is a full deployment, with the reason. Applications added or
//! removed, and an ERTS change, are full deployments too (see
//! [`detect`]).

use super::*;

// ---------------------------------------------------------------------------
// Detection

/// How a new version should reach a running instance, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    HotUpgrade { reason: String },
    FullDeployment { reason: String },
}

impl Decision {
    pub fn is_hot(&self) -> bool {
        matches!(self, Decision::HotUpgrade { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            Decision::HotUpgrade { reason } | Decision::FullDeployment { reason } => reason,
        }
    }
}

/// Decides whether `new_root` (an unpacked release tarball of version `to`)
/// can hot-upgrade the instance running release `running` from
/// `current_root`.
///
/// In order:
/// 1. A shipped `releases/{to}/relup` must name `running` (it is used as
///    is; `check_install_release` fails with a misleading `enoent`
///    otherwise).
/// 2. Otherwise the two releases' `.rel` files are compared (application
///    name → version). Every application whose version changed must ship
///    `lib/{name}-{new}/ebin/{name}.appup` with an upgrade clause from its
///    old version (appup sources given as regexes are compared
///    literally).
/// 3. Applications added or removed, or another ERTS, make it a full
///    deployment: `make_relup` would write `add_application` /
///    `remove_application` / `restart_new_emulator` instructions, which no
///    test here has proven on a real release, and an ERTS change restarts
///    the VM anyway. So does a release in which no application changed
///    version: `unpack_release` keeps the files of a library directory that
///    already exists, so changed code under an unchanged version would
///    never load.
/// 4. Building the relup on the node needs the Jellyfish copies
///    `releases/{app}-{vsn}.rel` of both releases.
pub fn detect(
    new_root: &Path,
    current_root: &Path,
    app: &str,
    to: &str,
    running: &str,
) -> Decision {
    let full = |reason: String| Decision::FullDeployment { reason };
    let hot = |reason: String| Decision::HotUpgrade { reason };
    if to == running {
        return full(format!("the instance already runs {to}"));
    }

    let relup = new_root.join("releases").join(to).join("relup");
    match std::fs::read_to_string(&relup) {
        Ok(text) => {
            return match upgrade_sources(&text) {
                Ok(sources) if sources.iter().any(|s| s == running) => hot(format!(
                    "relup of {to} lists {running} as an upgrade source"
                )),
                Ok(sources) => full(format!(
                    "relup of {to} only upgrades from {}, the instance runs {running}",
                    describe_sources(&sources)
                )),
                Err(err) => full(format!("relup of {to} cannot be read: {err}")),
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return full(format!("relup of {to} cannot be read: {e}")),
    }

    let new_rel = match read_rel(new_root, app, to) {
        Ok(rel) => rel,
        Err(err) => return full(format!("no relup for {to}, and {}", error_chain(&err))),
    };
    let old_rel = match read_rel(current_root, app, running) {
        Ok(rel) => rel,
        Err(err) => {
            return full(format!(
                "no relup for {to}, and the running {}",
                error_chain(&err)
            ));
        }
    };
    if new_rel.erts != old_rel.erts {
        return full(format!(
            "ERTS changes from {} to {}: the VM must restart",
            old_rel.erts, new_rel.erts
        ));
    }
    let changes = Changes::between(&old_rel, &new_rel);
    if !changes.added.is_empty() || !changes.removed.is_empty() {
        let mut parts = Vec::new();
        if !changes.added.is_empty() {
            parts.push(format!("added: {}", changes.added.join(", ")));
        }
        if !changes.removed.is_empty() {
            parts.push(format!("removed: {}", changes.removed.join(", ")));
        }
        return full(format!(
            "applications differ between {running} and {to} ({}); deployex hot-upgrades only \
             applications present in both",
            parts.join("; ")
        ));
    }
    if changes.changed.is_empty() {
        return full(format!(
            "no application changes version between {running} and {to}: a hot upgrade would \
             load no new code"
        ));
    }

    let problems: Vec<String> = changes
        .changed
        .iter()
        .filter_map(|c| appup_problem(new_root, c))
        .map(|problem| error_chain(&problem))
        .collect();
    if !problems.is_empty() {
        return full(problems.join("; "));
    }
    for (root, vsn, whose) in [
        (new_root, to, "the tarball"),
        (current_root, running, "the running release"),
    ] {
        let rel = root.join("releases").join(format!("{app}-{vsn}.rel"));
        if !rel.is_file() {
            return full(format!(
                "appups cover every changed application, but {whose} has neither a relup nor \
                 releases/{app}-{vsn}.rel to build one"
            ));
        }
    }
    hot(format!(
        "appups cover every changed application: {}",
        changes
            .changed
            .iter()
            .map(Change::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Why the appups do not cover one changed application.
#[derive(Debug, thiserror::Error)]
enum AppupProblem {
    #[error("{change} has no appup (lib/{name}-{new}/ebin/{name}.appup)", name = change.name, new = change.new)]
    Missing { change: Change },
    #[error("appup of {} {} cannot be read", change.name, change.new)]
    Io {
        change: Change,
        #[source]
        source: std::io::Error,
    },
    #[error("appup of {} {} cannot be read", change.name, change.new)]
    Invalid {
        change: Change,
        #[source]
        source: TermError,
    },
    #[error(
        "appup of {name} {new} only upgrades from {}, the instance runs {name} {old}",
        describe_sources(sources), name = change.name, new = change.new, old = change.old
    )]
    NoClause {
        change: Change,
        sources: Vec<String>,
    },
}

/// `None` when the new version of `change` ships an appup with an upgrade
/// clause from its old version; else why not.
fn appup_problem(new_root: &Path, change: &Change) -> Option<AppupProblem> {
    let Change { name, old, new } = change;
    let appup = new_root
        .join("lib")
        .join(format!("{name}-{new}"))
        .join("ebin")
        .join(format!("{name}.appup"));
    let change = change.clone();
    let text = match std::fs::read_to_string(&appup) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(AppupProblem::Missing { change });
        }
        Err(source) => return Some(AppupProblem::Io { change, source }),
    };
    match upgrade_sources(&text) {
        Err(source) => Some(AppupProblem::Invalid { change, source }),
        Ok(sources) if sources.iter().any(|s| s == old) => None,
        Ok(sources) => Some(AppupProblem::NoClause { change, sources }),
    }
}

pub(super) fn describe_sources(sources: &[String]) -> String {
    if sources.is_empty() {
        "no version".to_owned()
    } else {
        sources.join(", ")
    }
}

/// The upgrade sources of an appup (`{Vsn, [{UpFrom, Instrs}], Down}`) or a
/// relup (`{Vsn, [{UpFrom, Descr, Instrs}], Down}`): the first element of
/// every entry of the second element.
pub(super) fn upgrade_sources(text: &str) -> Result<Vec<String>, TermError> {
    let term = ETerm::parse_file(text)?;
    let ETerm::Tuple(top) = &term else {
        return Err(TermError::shape("a tuple {Vsn, UpFrom, DownTo}", &term));
    };
    let Some(ETerm::List(up)) = top.get(1) else {
        return Err(TermError::shape(
            "a list of upgrade sources as second element",
            top.get(1),
        ));
    };
    up.iter()
        .map(|entry| match entry {
            ETerm::Tuple(e) => match e.first() {
                Some(ETerm::Str(s) | ETerm::Binary(s)) => Ok(s.clone()),
                other => Err(TermError::shape("a string as upgrade source", other)),
            },
            other => Err(TermError::shape("a tuple as upgrade entry", other)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A release tree: `releases/{rel}/{app}.rel` and (with `jellyfish`)
    /// `releases/{app}-{rel}.rel`, listing `apps` on ERTS `erts`; plus
    /// `lib/{name}-{vsn}/ebin/{name}.appup` for each of `appups`.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new(rel: &str, erts: &str, apps: &[(&str, &str)], jellyfish: bool) -> Tree {
            let dir = tempfile::tempdir().unwrap();
            let entries: Vec<String> = apps
                .iter()
                .map(|(n, v)| format!("{{{n},\"{v}\",permanent}}"))
                .collect();
            let text = format!(
                "%% coding: utf-8\n{{release,{{\"app\",\"{rel}\"}},\n {{erts,\"{erts}\"}},\n [{}]}}.\n",
                entries.join(",\n  ")
            );
            let releases = dir.path().join("releases");
            std::fs::create_dir_all(releases.join(rel)).unwrap();
            std::fs::write(releases.join(rel).join("app.rel"), &text).unwrap();
            if jellyfish {
                std::fs::write(releases.join(format!("app-{rel}.rel")), &text).unwrap();
            }
            Tree { dir }
        }

        fn appup(self, name: &str, vsn: &str, text: &str) -> Tree {
            let ebin = self.dir.path().join(format!("lib/{name}-{vsn}/ebin"));
            std::fs::create_dir_all(&ebin).unwrap();
            std::fs::write(ebin.join(format!("{name}.appup")), text).unwrap();
            self
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    const BASE: &[(&str, &str)] = &[("kernel", "8.5.3"), ("app", "0.1.0"), ("dep", "0.1.0")];
    const DEP_APPUP: &str =
        r#"{"0.1.1",[{"0.1.0",[{load_module,'Elixir.Dep.Mod'}]}],[{"0.1.0",[]}]}."#;

    fn running() -> Tree {
        Tree::new("0.1.0", "13.1.5", BASE, true)
    }

    fn with_dep(dep: &str) -> Vec<(&'static str, String)> {
        vec![
            ("kernel", "8.5.3".into()),
            ("app", "0.1.0".into()),
            ("dep", dep.into()),
        ]
    }

    fn new_tree(rel: &str, apps: &[(&'static str, String)]) -> Tree {
        let apps: Vec<(&str, &str)> = apps.iter().map(|(n, v)| (*n, v.as_str())).collect();
        Tree::new(rel, "13.1.5", &apps, true)
    }

    #[test]
    fn a_dependency_alone_with_its_appup_is_a_hot_upgrade() {
        let old = running();
        let new = new_tree("0.1.1", &with_dep("0.1.1")).appup("dep", "0.1.1", DEP_APPUP);
        let d = detect(new.path(), old.path(), "app", "0.1.1", "0.1.0");
        assert_eq!(
            d,
            Decision::HotUpgrade {
                reason: "appups cover every changed application: dep 0.1.0 -> 0.1.1".into()
            }
        );
    }

    #[test]
    fn a_dependency_without_an_appup_is_a_full_deployment_even_with_the_main_appup() {
        let old = running();
        let mut apps = with_dep("0.1.1");
        apps[1].1 = "0.1.1".into();
        let new = new_tree("0.1.1", &apps).appup(
            "app",
            "0.1.1",
            r#"{"0.1.1",[{"0.1.0",[]}],[{"0.1.0",[]}]}."#,
        );
        let d = detect(new.path(), old.path(), "app", "0.1.1", "0.1.0");
        assert!(!d.is_hot(), "{d:?}");
        assert_eq!(
            d.reason(),
            "dep 0.1.0 -> 0.1.1 has no appup (lib/dep-0.1.1/ebin/dep.appup)"
        );
    }

    #[test]
    fn every_problem_is_named_and_sources_must_list_the_old_version() {
        let old = running();
        let mut apps = with_dep("0.1.1");
        apps[1].1 = "0.2.0".into();
        let new = new_tree("0.2.0", &apps)
            .appup("app", "0.2.0", r#"{"0.2.0",[{<<"0\\.1\\..*">>,[]}],[]}."#)
            .appup("dep", "0.1.1", "{\"0.1.1\", [{");
        let d = detect(new.path(), old.path(), "app", "0.2.0", "0.1.0");
        assert!(!d.is_hot(), "{d:?}");
        let reason = d.reason();
        assert!(
            reason.contains(
                "appup of app 0.2.0 only upgrades from 0\\.1\\..*, the instance runs app 0.1.0"
            ),
            "regex sources are compared literally: {reason}"
        );
        assert!(
            reason.contains("appup of dep 0.1.1 cannot be read"),
            "{reason}"
        );
    }

    #[test]
    fn added_or_removed_applications_and_erts_changes_are_full_deployments() {
        let old = running();
        let mut apps = with_dep("0.1.1");
        apps.push(("extra", "1.0.0".into()));
        apps.remove(0);
        let new = new_tree("0.1.1", &apps).appup("dep", "0.1.1", DEP_APPUP);
        let d = detect(new.path(), old.path(), "app", "0.1.1", "0.1.0");
        assert!(!d.is_hot());
        assert!(
            d.reason()
                .contains("(added: extra 1.0.0; removed: kernel 8.5.3)"),
            "{d:?}"
        );

        let apps = with_dep("0.1.1");
        let apps: Vec<(&str, &str)> = apps.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let new = Tree::new("0.1.1", "14.0", &apps, true).appup("dep", "0.1.1", DEP_APPUP);
        let d = detect(new.path(), old.path(), "app", "0.1.1", "0.1.0");
        assert_eq!(
            d.reason(),
            "ERTS changes from 13.1.5 to 14.0: the VM must restart"
        );
    }

    #[test]
    fn a_release_without_a_changed_application_is_a_full_deployment() {
        let old = running();
        let new = new_tree("0.1.1", &with_dep("0.1.0"));
        let d = detect(new.path(), old.path(), "app", "0.1.1", "0.1.0");
        assert!(!d.is_hot());
        assert!(
            d.reason().starts_with("no application changes version"),
            "{d:?}"
        );
        let d = detect(new.path(), old.path(), "app", "0.1.0", "0.1.0");
        assert_eq!(d.reason(), "the instance already runs 0.1.0");
    }

    #[test]
    fn building_the_relup_needs_both_jellyfish_rel_copies() {
        let old = running();
        let apps = with_dep("0.1.1");
        let apps: Vec<(&str, &str)> = apps.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let new = Tree::new("0.1.1", "13.1.5", &apps, false).appup("dep", "0.1.1", DEP_APPUP);
        let d = detect(new.path(), old.path(), "app", "0.1.1", "0.1.0");
        assert!(!d.is_hot());
        assert!(
            d.reason().ends_with(
                "the tarball has neither a relup nor releases/app-0.1.1.rel to build one"
            ),
            "{d:?}"
        );
        let old = Tree::new("0.1.0", "13.1.5", BASE, false);
        let new = new_tree("0.1.1", &with_dep("0.1.1")).appup("dep", "0.1.1", DEP_APPUP);
        let d = detect(new.path(), old.path(), "app", "0.1.1", "0.1.0");
        assert!(
            d.reason().ends_with(
                "the running release has neither a relup nor releases/app-0.1.0.rel to build one"
            ),
            "{d:?}"
        );
        let empty = tempfile::tempdir().unwrap();
        let d = detect(new.path(), empty.path(), "app", "0.1.1", "0.1.0");
        assert_eq!(
            d.reason(),
            "no relup for 0.1.1, and the running release 0.1.0 has no releases/app-0.1.0.rel \
             or releases/0.1.0/app.rel"
        );
    }

    #[test]
    fn a_shipped_relup_decides_alone() {
        let old = running();
        // No appup for the changed dependency: the relup still decides.
        let new = new_tree("0.1.1", &with_dep("0.1.1"));
        std::fs::write(
            new.path().join("releases/0.1.1/relup"),
            r#"{"0.1.1",[{"0.0.9",[],[]}],[]}."#,
        )
        .unwrap();
        let d = detect(new.path(), old.path(), "app", "0.1.1", "0.1.0");
        assert_eq!(
            d.reason(),
            "relup of 0.1.1 only upgrades from 0.0.9, the instance runs 0.1.0"
        );
        let d = detect(new.path(), old.path(), "app", "0.1.1", "0.0.9");
        assert!(d.is_hot(), "{d:?}");
    }
}
