//! OTP hot upgrades of a running instance: deciding whether a new release
//! can be hot-upgraded into the running one ([`detect`]), and doing it over
//! Erlang distribution RPCs ([`hot_upgrade`]).
//!
//! What it owns: the release_handler sequence (NOTES-BEAM §3) and its
//! clean-up. The caller owns the connection (anything implementing [`Rpc`])
//! and the choice between hot upgrade and full deployment.
//!
//! Invariants:
//! - [`detect`] only reads files of an unpacked tarball; it never needs a
//!   node. A shipped relup is authoritative: if it exists it must name the
//!   running version, because `check_install_release` uses it as is and
//!   fails with a misleading `enoent` otherwise.
//! - A failed upgrade (before `install_release` succeeded) leaves the node as
//!   it was: the new version is `set_removed` (never `remove_release`, which
//!   would delete the running release's libs, as release_handler invents that
//!   entry without libs), `releases/{to}` and `lib/{app}-{to}` are deleted,
//!   and `releases/start_erl.data` still names `from`. So a retry starts from
//!   a clean slate instead of hitting `{existing_release, Vsn}`.
//! - Every RPC is bounded by the caller's step timeout.
//! - The tarball handed to `unpack_release` holds only the entries missing
//!   from `current/` (it extracts with `keep_old_files`, so the others would
//!   be skipped anyway): same result, a fraction of the node's work.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::dist::{
    NodeConnection, Term, as_atom, as_list, as_tuple, atom, charlist, list, pretty, term_to_string,
    tuple,
};

/// Something that runs `module:function(args)` on the instance's node. The
/// error is a readable sentence (transport failure or `badrpc`).
pub trait Rpc {
    fn call(
        &self,
        module: &str,
        function: &str,
        args: Vec<Term>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Term, String>> + Send;
}

impl Rpc for NodeConnection {
    async fn call(
        &self,
        module: &str,
        function: &str,
        args: Vec<Term>,
        timeout: Duration,
    ) -> Result<Term, String> {
        self.rpc(module, function, args, timeout)
            .await
            .map_err(|e| error_chain(&e))
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

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

fn jellyfish_from(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("from")?.as_str().map(str::to_owned)
}

fn describe_sources(sources: &[String]) -> String {
    if sources.is_empty() {
        "no version".to_owned()
    } else {
        sources.join(", ")
    }
}

/// The upgrade sources of an appup (`{Vsn, [{UpFrom, Instrs}], Down}`) or a
/// relup (`{Vsn, [{UpFrom, Descr, Instrs}], Down}`): the first element of
/// every entry of the second element.
fn upgrade_sources(text: &str) -> Result<Vec<String>, String> {
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

/// The subset of Erlang term syntax that `.appup` and `relup` files use.
#[derive(Debug, Clone, PartialEq)]
enum ETerm {
    Atom(String),
    Str(String),
    /// `<<"...">>`, or the bytes of `<<1,2>>` as chars.
    Binary(String),
    Int(i64),
    Float(f64),
    Tuple(Vec<ETerm>),
    List(Vec<ETerm>),
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
}

impl ETerm {
    /// The first term of a `file:consult`-style file (ending with `.`).
    fn parse_file(text: &str) -> Result<ETerm, String> {
        let mut p = Parser {
            chars: text.char_indices().peekable(),
        };
        let term = p.term()?;
        p.skip_blank();
        match p.next() {
            Some('.') => Ok(term),
            Some(c) => Err(format!("expected '.' after the term, found {c:?}")),
            None => Err("missing '.' after the term".to_owned()),
        }
    }
}

impl Parser<'_> {
    fn next(&mut self) -> Option<char> {
        self.chars.next().map(|(_, c)| c)
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.next();
            } else if c == '%' {
                while !matches!(self.next(), Some('\n') | None) {}
            } else {
                break;
            }
        }
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        self.skip_blank();
        match self.next() {
            Some(c) if c == want => Ok(()),
            Some(c) => Err(format!("expected {want:?}, found {c:?}")),
            None => Err(format!("expected {want:?}, found the end")),
        }
    }

    fn term(&mut self) -> Result<ETerm, String> {
        self.skip_blank();
        match self.peek() {
            None => Err("unexpected end of file".to_owned()),
            Some('{') => {
                self.next();
                Ok(ETerm::Tuple(self.elements('}')?))
            }
            Some('[') => {
                self.next();
                Ok(ETerm::List(self.elements(']')?))
            }
            Some('<') => {
                self.next();
                self.expect('<')?;
                let mut text = String::new();
                for part in self.elements('>')? {
                    match part {
                        ETerm::Str(s) => text.push_str(&s),
                        ETerm::Int(i) => match u8::try_from(i) {
                            Ok(b) => text.push(char::from(b)),
                            Err(_) => return Err(format!("{i} is not a byte")),
                        },
                        other => return Err(format!("unsupported binary segment {other:?}")),
                    }
                }
                self.expect('>')?;
                Ok(ETerm::Binary(text))
            }
            Some('"') => {
                // Adjacent string literals concatenate.
                let mut text = String::new();
                while self.peek() == Some('"') {
                    self.next();
                    text.push_str(&self.quoted('"')?);
                    self.skip_blank();
                }
                Ok(ETerm::Str(text))
            }
            Some('\'') => {
                self.next();
                Ok(ETerm::Atom(self.quoted('\'')?))
            }
            Some('$') => {
                self.next();
                let c = match self.next() {
                    Some('\\') => self.escape()?,
                    Some(c) => c,
                    None => return Err("unexpected end after '$'".to_owned()),
                };
                Ok(ETerm::Int(i64::from(u32::from(c))))
            }
            Some(c) if c == '-' || c.is_ascii_digit() => self.number(),
            Some(c) if c.is_lowercase() => {
                let mut name = String::new();
                while let Some(c) = self.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '@' {
                        name.push(c);
                        self.next();
                    } else {
                        break;
                    }
                }
                Ok(ETerm::Atom(name))
            }
            Some(c) => Err(format!("unexpected character {c:?}")),
        }
    }

    /// Comma-separated terms up to `close` (consumed).
    fn elements(&mut self, close: char) -> Result<Vec<ETerm>, String> {
        let mut out = Vec::new();
        self.skip_blank();
        if self.peek() == Some(close) {
            self.next();
            return Ok(out);
        }
        loop {
            out.push(self.term()?);
            self.skip_blank();
            match self.next() {
                Some(',') => {}
                Some(c) if c == close => return Ok(out),
                Some('|') => return Err("improper lists are not supported".to_owned()),
                Some(c) => return Err(format!("expected ',' or {close:?}, found {c:?}")),
                None => return Err(format!("missing {close:?}")),
            }
        }
    }

    fn quoted(&mut self, quote: char) -> Result<String, String> {
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err(format!("unterminated {quote}...{quote}")),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => out.push(self.escape()?),
                Some(c) => out.push(c),
            }
        }
    }

    /// The character after a backslash.
    fn escape(&mut self) -> Result<char, String> {
        let c = self.next().ok_or("unterminated escape")?;
        Ok(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            's' => ' ',
            'e' => '\u{1b}',
            'd' => '\u{7f}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'v' => '\u{b}',
            '0'..='7' => {
                let mut code = c.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match self.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            code = code * 8 + d;
                            self.next();
                        }
                        None => break,
                    }
                }
                char::from_u32(code).ok_or("bad octal escape")?
            }
            'x' => {
                let mut hex = String::new();
                if self.peek() == Some('{') {
                    self.next();
                    loop {
                        match self.next() {
                            Some('}') => break,
                            Some(d) => hex.push(d),
                            None => return Err("unterminated \\x{...}".to_owned()),
                        }
                    }
                } else {
                    for _ in 0..2 {
                        if let Some(d) = self.next() {
                            hex.push(d);
                        }
                    }
                }
                u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad escape \\x{hex}"))?
            }
            '^' => {
                let ctl = self.next().ok_or("unterminated \\^")?;
                char::from_u32(u32::from(ctl) % 32).ok_or("bad control escape")?
            }
            other => other,
        })
    }

    fn number(&mut self) -> Result<ETerm, String> {
        let mut text = String::new();
        if self.peek() == Some('-') {
            text.push('-');
            self.next();
        }
        let mut float = false;
        while let Some(c) = self.peek() {
            let take = c.is_ascii_alphanumeric()
                || c == '#'
                || c == '_'
                || ((c == '+' || c == '-') && text.ends_with(['e', 'E']) && float);
            if take {
                text.push(c);
                self.next();
            } else if c == '.' && !float && !text.contains('#') {
                // `1.` ends a term; `1.5` is a float.
                let mut ahead = self.chars.clone();
                ahead.next();
                if ahead.next().is_some_and(|(_, d)| d.is_ascii_digit()) {
                    float = true;
                    text.push('.');
                    self.next();
                } else {
                    break;
                }
            } else {
                break;
            }
        }
        let clean = text.replace('_', "");
        if float {
            return clean
                .parse()
                .map(ETerm::Float)
                .map_err(|_| format!("bad number {text}"));
        }
        let parsed = match clean.split_once('#') {
            Some((base, digits)) => {
                let (negative, base) = match base.strip_prefix('-') {
                    Some(b) => (true, b),
                    None => (false, base),
                };
                base.parse()
                    .ok()
                    .filter(|b| (2..=36).contains(b))
                    .and_then(|b| i64::from_str_radix(digits, b).ok())
                    .map(|v| if negative { -v } else { v })
            }
            None => clean.parse().ok(),
        };
        parsed.map(ETerm::Int).ok_or(format!("bad number {text}"))
    }
}

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
struct Run<'a, R> {
    rpc: &'a R,
    from: &'a str,
    to: &'a str,
    timeout: Duration,
    steps: Vec<(Step, Duration)>,
}

impl<R: Rpc> Run<'_, R> {
    async fn call(
        &mut self,
        step: Step,
        m: &str,
        f: &str,
        args: Vec<Term>,
    ) -> Result<Term, UpgradeError> {
        let started = Instant::now();
        let result = self.rpc.call(m, f, args, self.timeout).await;
        self.steps.push((step, started.elapsed()));
        result.map_err(|reason| self.fail(step, reason))
    }

    fn fail(&self, step: Step, reason: String) -> UpgradeError {
        UpgradeError::Step {
            step,
            from: self.from.to_owned(),
            to: self.to.to_owned(),
            reason,
        }
    }

    /// Accepts `ok` or a tuple starting with `ok`; `{error, R}` and anything
    /// else become an error naming the step.
    fn ok(&self, step: Step, reply: &Term) -> Result<(), UpgradeError> {
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

fn io_err(step: Step, to: &str, path: &Path) -> impl FnOnce(std::io::Error) -> UpgradeError {
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
fn path_term(path: &Path) -> Term {
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

/// The node must run from `root` with `from` permanent and `to` not
/// installed; a leftover unpacked `to` (an attempt that died before its
/// clean-up) is `set_removed` so unpacking works again.
async fn check_node<R: Rpc>(run: &mut Run<'_, R>, root: &Path) -> Result<(), UpgradeError> {
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
fn parse_releases(reply: &Term) -> Option<Vec<(String, String)>> {
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

async fn unpack_and_relup<R: Rpc>(
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

/// Copies to `dest` (gzip) the entries of `tarball` that do not exist under
/// `root` yet. `unpack_release` extracts with `keep_old_files`, so the
/// entries left out (ERTS, the OTP and Elixir libs both releases share)
/// would be skipped anyway; leaving them out saves the node from
/// decompressing them, which was most of the upgrade's time (0.4-2.5 s of
/// 0.7-2.8 s for a 6 MiB tarball on a loaded 2-core machine). Entries that
/// would land outside `root` are refused.
fn copy_new_entries(tarball: &Path, root: &Path, dest: &Path) -> std::io::Result<()> {
    let input = std::fs::File::open(tarball)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
    let output = std::fs::File::create(dest)?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        std::io::BufWriter::new(output),
        flate2::Compression::fast(),
    ));
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?.into_owned();
        if path.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        }) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("tarball entry {} escapes the release root", path.display()),
            ));
        }
        if std::fs::symlink_metadata(root.join(&path)).is_ok() {
            continue;
        }
        let header = entry.header().clone();
        builder.append(&header, entry)?;
    }
    // No fsync: the node reads it right away, and a crash loses nothing
    // that the next attempt would not rewrite.
    builder
        .into_inner()?
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    Ok(())
}

/// Runs [`cleanup_failed`] after `err`; returns `err`, or a
/// [`UpgradeError::CleanupFailed`] if the clean-up failed too.
async fn with_cleanup(
    rpc: &impl Rpc,
    root: &Path,
    app: &str,
    (from, to): (&str, &str),
    timeout: Duration,
    err: UpgradeError,
) -> UpgradeError {
    match cleanup(rpc, root, app, from, to, timeout).await {
        Ok(()) => err,
        Err(cleanup_err) => UpgradeError::CleanupFailed {
            step: err.step(),
            to: to.to_owned(),
            failure: error_chain(&err),
            source: Box::new(cleanup_err),
        },
    }
}

/// Undoes a failed hot upgrade to `to`: `release_handler:set_removed(to)`
/// (a release it never registered is fine), deletes `releases/{to}` and
/// `lib/{app}-{to}`, and checks `releases/start_erl.data` does not name
/// `to` (the node would boot it on its next restart).
pub async fn cleanup_failed(
    rpc: &impl Rpc,
    current_root: &Path,
    app: &str,
    to: &str,
    step_timeout: Duration,
) -> Result<(), UpgradeError> {
    cleanup(rpc, current_root, app, "", to, step_timeout).await
}

async fn cleanup(
    rpc: &impl Rpc,
    root: &Path,
    app: &str,
    from: &str,
    to: &str,
    timeout: Duration,
) -> Result<(), UpgradeError> {
    let fail = |reason: String| UpgradeError::Step {
        step: Step::Cleanup,
        from: from.to_owned(),
        to: to.to_owned(),
        reason,
    };
    let reply = rpc
        .call(
            "release_handler",
            "set_removed",
            vec![charlist(to)],
            timeout,
        )
        .await
        .map_err(fail)?;
    let unknown = as_tuple(&reply).is_some_and(|t| {
        matches!(t, [tag, detail] if as_atom(tag) == Some("error")
            && as_tuple(detail).and_then(|d| d.first()).and_then(as_atom) == Some("no_such_release"))
    });
    if as_atom(&reply) != Some("ok") && !unknown {
        return Err(fail(format!("set_removed: {}", pretty(&reply))));
    }
    // What the failed unpack added; none of it belongs to the running
    // release (to != from), and unpack_release's keep_old_files would keep
    // stale copies on a retry.
    for dir in [
        root.join("releases").join(to),
        root.join("lib").join(format!("{app}-{to}")),
    ] {
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(Step::Cleanup, to, &dir)(e)),
        }
    }
    let rel = root.join("releases").join(format!("{app}-{to}.rel"));
    match tokio::fs::remove_file(&rel).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(Step::Cleanup, to, &rel)(e)),
    }
    let start_erl = root.join("releases").join("start_erl.data");
    let text = tokio::fs::read_to_string(&start_erl).await.map_err(io_err(
        Step::Cleanup,
        to,
        &start_erl,
    ))?;
    let booted = text.split_whitespace().nth(1).unwrap_or("");
    if booted == to || (!from.is_empty() && booted != from) {
        return Err(fail(format!(
            "{} names {booted:?}, expected {from:?}",
            start_erl.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPUP: &str = r#"
%% coding: utf-8
{"0.1.2",
 [{"0.1.1",
   [{load_module,'Elixir.Fixture.Info'},
    {update,'Elixir.Fixture.Counter',{advanced,[]}}]},
  {<<"0\\.0\\..*">>, [restart_application]}],
 [{"0.1.1", []}]}.
"#;

    #[test]
    fn parses_appup_and_relup_sources() {
        assert_eq!(
            upgrade_sources(APPUP).unwrap(),
            ["0.1.1".to_owned(), "0\\.0\\..*".to_owned()]
        );
        let relup = r#"%% coding: utf-8
{"0.1.2",[{"0.1.1",[],[{load_object_code,{upg,"0.1.2",['A']}},point_of_no_return,
  {apply,{io,format,["x~s\n",[$a]]}},{sleep,-1.5e3},{x,16#ff}]},{"0.1.0","d" "e",[]}],
 [{"0.1.1",[],[]}]}.
"#;
        assert_eq!(upgrade_sources(relup).unwrap(), ["0.1.1", "0.1.0"]);
    }

    #[test]
    fn parses_scalars_and_escapes() {
        let t =
            ETerm::parse_file(r#"{'a\'b', "x\ty\x41\101\x{20AC}", -7, 1.5, $\n, <<1,"b">>, []}."#)
                .unwrap();
        assert_eq!(
            t,
            ETerm::Tuple(vec![
                ETerm::Atom("a'b".into()),
                ETerm::Str("x\tyAA€".into()),
                ETerm::Int(-7),
                ETerm::Float(1.5),
                ETerm::Int(10),
                ETerm::Binary("\u{1}b".into()),
                ETerm::List(vec![]),
            ])
        );
    }

    #[test]
    fn rejects_broken_files() {
        for bad in ["", "{\"0.1.2\", [", "{\"a\"}", "{a, b", "[1|2].", "\"open"] {
            assert!(ETerm::parse_file(bad).is_err(), "{bad:?} parsed");
        }
        assert!(upgrade_sources("{\"0.1.2\", nope, []}.").is_err());
        assert!(upgrade_sources("[a].").is_err());
    }

    fn release_dir(
        appup: Option<&str>,
        relup: Option<&str>,
        jellyfish: Option<&str>,
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let ebin = dir.path().join("lib/app-0.1.2/ebin");
        std::fs::create_dir_all(&ebin).unwrap();
        std::fs::create_dir_all(dir.path().join("releases/0.1.2")).unwrap();
        std::fs::write(dir.path().join("releases/app-0.1.2.rel"), "{release,...}.").unwrap();
        if let Some(a) = appup {
            std::fs::write(ebin.join("app.appup"), a).unwrap();
        }
        if let Some(r) = relup {
            std::fs::write(dir.path().join("releases/0.1.2/relup"), r).unwrap();
        }
        if let Some(j) = jellyfish {
            std::fs::write(ebin.join("jellyfish.json"), j).unwrap();
        }
        dir
    }

    #[test]
    fn detect_prefers_a_shipped_relup() {
        let only_010 = r#"{"0.1.2",[{"0.1.0",[],[]}],[]}."#;
        let dir = release_dir(Some(APPUP), Some(only_010), None);
        let d = detect(dir.path(), "app", "0.1.2", "0.1.1");
        assert!(!d.is_hot(), "{d:?}");
        assert_eq!(
            d.reason(),
            "relup of 0.1.2 only upgrades from 0.1.0, the instance runs 0.1.1"
        );
        let d = detect(dir.path(), "app", "0.1.2", "0.1.0");
        assert!(d.is_hot(), "{d:?}");
    }

    #[test]
    fn detect_reads_the_appup() {
        let dir = release_dir(Some(APPUP), None, None);
        let d = detect(dir.path(), "app", "0.1.2", "0.1.1");
        assert_eq!(
            d,
            Decision::HotUpgrade {
                reason: "appup of 0.1.2 lists 0.1.1 as an upgrade source".into()
            }
        );
        let d = detect(dir.path(), "app", "0.1.2", "0.0.9");
        assert!(!d.is_hot(), "regex sources are compared literally: {d:?}");
        let d = detect(dir.path(), "app", "0.1.2", "0.1.2");
        assert!(!d.is_hot());
        let broken = release_dir(Some("{\"0.1.2\", [{"), None, None);
        let d = detect(broken.path(), "app", "0.1.2", "0.1.1");
        assert!(
            d.reason().starts_with("appup of 0.1.2 cannot be read"),
            "{d:?}"
        );
    }

    #[test]
    fn detect_without_appup_is_a_full_deployment() {
        let dir = release_dir(
            None,
            None,
            Some(r#"{"name":"app","from":"0.1.1","to":"0.1.2"}"#),
        );
        let d = detect(dir.path(), "app", "0.1.2", "0.1.1");
        assert!(!d.is_hot());
        assert!(d.reason().contains("no appup"), "{d:?}");
        let dir = release_dir(None, None, None);
        let d = detect(dir.path(), "app", "0.1.2", "0.1.1");
        assert_eq!(d.reason(), "no appup or relup for 0.1.2 in the tarball");
    }

    #[test]
    fn error_replies_name_the_step() {
        struct NoRpc;
        impl Rpc for NoRpc {
            async fn call(
                &self,
                _: &str,
                _: &str,
                _: Vec<Term>,
                _: Duration,
            ) -> Result<Term, String> {
                Err("unused".into())
            }
        }
        let run = Run {
            rpc: &NoRpc,
            from: "0.1.1",
            to: "0.1.2",
            timeout: Duration::from_secs(1),
            steps: vec![],
        };
        let reply = tuple(vec![
            atom("error"),
            tuple(vec![atom("enoent"), charlist("/x/relup")]),
        ]);
        let err = run.ok(Step::CheckInstall, &reply).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"hot upgrade 0.1.1 -> 0.1.2: check_install_release failed: {enoent,"/x/relup"}"#
        );
        assert!(
            run.ok(
                Step::Install,
                &tuple(vec![atom("ok"), charlist("0.1.1"), list(vec![])])
            )
            .is_ok()
        );
        assert!(run.ok(Step::MakePermanent, &atom("ok")).is_ok());
        let err = run
            .ok(
                Step::MakeRelup,
                &tuple(vec![atom("error"), atom("systools_relup"), atom("bad")]),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("make_relup failed: {systools_relup,bad}"),
            "{err}"
        );
    }
}
