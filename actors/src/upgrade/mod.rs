//! OTP hot upgrades of a running instance: deciding whether a new release
//! can be hot-upgraded into the running one ([`detect`]), and doing it over
//! Erlang distribution RPCs ([`hot_upgrade`]).
//!
//! What it owns: the release_handler sequence (NOTES-BEAM §3) and its
//! clean-up. The caller owns the connection (anything implementing [`Rpc`])
//! and the choice between hot upgrade and full deployment.
//!
//! Invariants:
//! - [`detect`] only reads files (the unpacked tarball and the running
//!   release's folder); it never needs a node. A shipped relup is
//!   authoritative: if it exists it must name the running version, because
//!   `check_install_release` uses it as is and fails with a misleading
//!   `enoent` otherwise. Without one, every application whose version
//!   changed between the two `.rel` files needs its own appup from its
//!   running version, not only the main application.
//! - A failed upgrade (before `install_release` succeeded) leaves the node as
//!   it was: the new version is `set_removed` (never `remove_release`, which
//!   would delete the running release's libs, as release_handler invents that
//!   entry without libs), `releases/{to}` and the `lib/` folders of `to`
//!   that the running release does not use are deleted,
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
pub use crate::error::RpcError;
use crate::error::error_chain;

mod cleanup;
mod detect;
mod eterm;
mod rel;
mod run;

pub use cleanup::*;
pub use detect::*;
use eterm::*;
use rel::*;
pub use run::*;

/// Something that runs `module:function(args)` on the instance's node.
pub trait Rpc {
    fn call(
        &self,
        module: &str,
        function: &str,
        args: Vec<Term>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Term, RpcError>> + Send;
}

impl Rpc for NodeConnection {
    async fn call(
        &self,
        module: &str,
        function: &str,
        args: Vec<Term>,
        timeout: Duration,
    ) -> Result<Term, RpcError> {
        Ok(self.rpc(module, function, args, timeout).await?)
    }
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

    #[test]
    fn errors_say_what_was_wrong() {
        assert_eq!(ETerm::parse_file("{a, b"), Err(ParseError::Missing('}')));
        assert_eq!(ETerm::parse_file("[1|2]."), Err(ParseError::ImproperList));
        assert_eq!(
            ETerm::parse_file("\"a\\x{110000}\"."),
            Err(ParseError::BadEscape("\\x110000".into()))
        );
        let err = upgrade_sources("{\"0.1.2\", [{x, []}], []}.").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"expected a string as upgrade source, found Some(Atom("x"))"#
        );
        let err = upgrade_sources("{\"0.1.2\", [").unwrap_err();
        assert_eq!(err, TermError::Syntax(ParseError::End));
        assert_eq!(err.to_string(), "unexpected end of file");
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
            ) -> Result<Term, RpcError> {
                Err(RpcError::WatcherDown)
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
