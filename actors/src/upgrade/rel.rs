//! The `.rel` files of two releases and how their applications differ:
//! what [`detect`](super::detect) and the clean-up of a failed upgrade
//! read (application name → version).

use std::collections::BTreeMap;

use super::*;

/// What deployex reads of a `.rel` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rel {
    pub(super) erts: String,
    /// Application name → version.
    pub(super) apps: BTreeMap<String, String>,
}

/// Why the `.rel` file of a release gives no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum RelError {
    #[error("release {vsn} has no releases/{app}-{vsn}.rel or releases/{vsn}/{app}.rel")]
    Missing { app: String, vsn: String },
    #[error("release file {} cannot be read", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("release file {} cannot be read", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: TermError,
    },
}

/// The `.rel` of release `vsn` under `root`: the Jellyfish copy
/// `releases/{app}-{vsn}.rel` (what `make_relup` reads; `unpack_release`
/// deletes the other one of a hot-upgraded release), else
/// `releases/{vsn}/{app}.rel` (every mix and relx release).
pub(super) fn read_rel(root: &Path, app: &str, vsn: &str) -> Result<Rel, RelError> {
    let candidates = [
        root.join("releases").join(format!("{app}-{vsn}.rel")),
        root.join("releases").join(vsn).join(format!("{app}.rel")),
    ];
    for path in candidates {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return parse_rel(&text).map_err(|source| RelError::Invalid { path, source });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RelError::Io { path, source }),
        }
    }
    Err(RelError::Missing {
        app: app.to_owned(),
        vsn: vsn.to_owned(),
    })
}

/// `{release, {Name, Vsn}, {erts, EVsn}, [{App, Vsn} | {App, Vsn, Type} |
/// {App, Vsn, Incl} | {App, Vsn, Type, Incl}]}`.
pub(super) fn parse_rel(text: &str) -> Result<Rel, TermError> {
    const TOP: &str = "{release, {Name, Vsn}, {erts, Vsn}, Apps}";
    let term = ETerm::parse_file(text)?;
    let string = |t: Option<&ETerm>| match t {
        Some(ETerm::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let ETerm::Tuple(top) = &term else {
        return Err(TermError::shape(TOP, &term));
    };
    let [ETerm::Atom(tag), _, ETerm::Tuple(erts), ETerm::List(apps)] = top.as_slice() else {
        return Err(TermError::shape(TOP, &term));
    };
    if tag != "release" {
        return Err(TermError::shape("the atom release", tag));
    }
    let erts = match erts.as_slice() {
        [ETerm::Atom(a), v] if a == "erts" => string(Some(v)),
        _ => None,
    }
    .ok_or_else(|| TermError::shape("{erts, Vsn}", erts))?;
    let mut out = BTreeMap::new();
    for entry in apps {
        let app = match entry {
            ETerm::Tuple(e) => match (e.first(), string(e.get(1))) {
                (Some(ETerm::Atom(name)), Some(vsn)) => Some((name.clone(), vsn)),
                _ => None,
            },
            _ => None,
        };
        let (name, vsn) = app.ok_or_else(|| TermError::shape("{App, Vsn, ...}", entry))?;
        out.insert(name, vsn);
    }
    Ok(Rel { erts, apps: out })
}

/// One application whose version differs between two releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    pub(super) name: String,
    pub(super) old: String,
    pub(super) new: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.name, self.old, self.new)
    }
}

/// How the applications of two releases differ (each list sorted by name).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    pub(super) changed: Vec<Change>,
    /// `name vsn` of applications only in the new release.
    pub(super) added: Vec<String>,
    /// `name vsn` of applications only in the old release.
    pub(super) removed: Vec<String>,
}

impl Changes {
    pub(super) fn between(old: &Rel, new: &Rel) -> Changes {
        let mut changes = Changes::default();
        for (name, new_vsn) in &new.apps {
            match old.apps.get(name) {
                None => changes.added.push(format!("{name} {new_vsn}")),
                Some(old_vsn) if old_vsn != new_vsn => changes.changed.push(Change {
                    name: name.clone(),
                    old: old_vsn.clone(),
                    new: new_vsn.clone(),
                }),
                Some(_) => {}
            }
        }
        for (name, old_vsn) in &old.apps {
            if !new.apps.contains_key(name) {
                changes.removed.push(format!("{name} {old_vsn}"));
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rel_files() {
        let rel = parse_rel(
            r#"%% coding: utf-8
{release,{"app","0.1.1"},{erts,"13.1.5"},
 [{kernel,"8.5.3"},{iex,"1.14.0",none},{a,"1",[b]},{c,"2",load,[]}]}."#,
        )
        .unwrap();
        assert_eq!(rel.erts, "13.1.5");
        assert_eq!(
            rel.apps.into_iter().collect::<Vec<_>>(),
            [
                ("a".to_owned(), "1".to_owned()),
                ("c".to_owned(), "2".to_owned()),
                ("iex".to_owned(), "1.14.0".to_owned()),
                ("kernel".to_owned(), "8.5.3".to_owned()),
            ]
        );
        for bad in [
            "{release,{\"a\",\"1\"},{erts,\"1\"}}.",
            "{rel,{\"a\",\"1\"},{erts,\"1\"},[]}.",
            "{release,{\"a\",\"1\"},{erts,1},[]}.",
            "{release,{\"a\",\"1\"},{erts,\"1\"},[kernel]}.",
            "{release,{\"a\",\"1\"},{erts,\"1\"},[{kernel,8}]}.",
        ] {
            assert!(parse_rel(bad).is_err(), "{bad} parsed");
        }
    }
}
