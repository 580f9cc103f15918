//! Deciding between a hot upgrade and a full deployment from the files of
//! an unpacked tarball (appup, relup, Jellyfish `.rel` copy); never needs a
//! node.

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
/// can hot-upgrade an instance running `running`.
///
/// In order: a shipped `releases/{to}/relup` must name `running`; else the
/// appup `lib/{app}-{to}/ebin/{app}.appup` must name it (deployex then builds
/// the relup on the node, which also needs the Jellyfish copy
/// `releases/{app}-{to}.rel`); else `ebin/jellyfish.json`'s `"from"` is only
/// informative, as no relup can be built without an appup. Appup sources
/// given as regexes (binaries) are compared literally.
pub fn detect(new_root: &Path, app: &str, to: &str, running: &str) -> Decision {
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

    let ebin = new_root
        .join("lib")
        .join(format!("{app}-{to}"))
        .join("ebin");
    let appup = ebin.join(format!("{app}.appup"));
    match std::fs::read_to_string(&appup) {
        Ok(text) => {
            let sources = match upgrade_sources(&text) {
                Ok(sources) => sources,
                Err(err) => return full(format!("appup of {to} cannot be read: {err}")),
            };
            if !sources.iter().any(|s| s == running) {
                return full(format!(
                    "appup of {to} only upgrades from {}, the instance runs {running}",
                    describe_sources(&sources)
                ));
            }
            let rel = new_root.join("releases").join(format!("{app}-{to}.rel"));
            if !rel.is_file() {
                return full(format!(
                    "appup of {to} lists {running}, but the tarball has neither a relup nor \
                     releases/{app}-{to}.rel to build one"
                ));
            }
            hot(format!(
                "appup of {to} lists {running} as an upgrade source"
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match jellyfish_from(&ebin.join("jellyfish.json")) {
                Some(from) if from == running => full(format!(
                    "jellyfish.json of {to} names {running}, but there is no appup to build a \
                     relup from"
                )),
                _ => full(format!("no appup or relup for {to} in the tarball")),
            }
        }
        Err(e) => full(format!("appup of {to} cannot be read: {e}")),
    }
}

pub(super) fn jellyfish_from(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("from")?.as_str().map(str::to_owned)
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
pub(super) fn upgrade_sources(text: &str) -> Result<Vec<String>, String> {
    let term = ETerm::parse_file(text)?;
    let ETerm::Tuple(top) = &term else {
        return Err("expected a tuple {Vsn, UpFrom, DownTo}".to_owned());
    };
    let Some(ETerm::List(up)) = top.get(1) else {
        return Err("the second element is not a list of upgrade sources".to_owned());
    };
    up.iter()
        .map(|entry| match entry {
            ETerm::Tuple(e) => match e.first() {
                Some(ETerm::Str(s) | ETerm::Binary(s)) => Ok(s.clone()),
                other => Err(format!("an upgrade source is not a string: {other:?}")),
            },
            other => Err(format!("an upgrade entry is not a tuple: {other:?}")),
        })
        .collect()
}
