//! Observer: looking inside a running node over the distribution link the
//! OtpNodeWatcher already holds (plain or mTLS), without loading any module
//! onto it.
//!
//! How: each query is an Erlang expression kept here as text. It is parsed
//! by the node itself (`erl_scan:string/1`, `erl_parse:parse_exprs/1`; the
//! abstract form is cached here, it does not depend on the node) and
//! evaluated there by `erl_eval:exprs/2` with a few bindings, all through
//! the watcher's `rex` RPC ([`WatcherRpc`]). So the top-N of 100 000
//! processes is sorted **on the node**, and only `limit` entries cross the
//! wire.
//!
//! Invariants: the work runs in a process spawned on the node and killed
//! after [`NODE_LIMIT`] (a node answers `{error, timeout}` rather than
//! working on); every RPC has a timeout ([`RPC_TIMEOUT`]) and runs in a
//! task of the watcher's, never in its handler, so a slow node never
//! blocks the others; the answers are bounded (at most [`MAX_LIMIT`]
//! processes, [`MAX_TREE`] supervision entries, [`MAX_TABLES`] tables,
//! [`STATE_CAP`] bytes of rendered state). Inputs reach the expression only
//! as bindings (an atom from a fixed set, integers, a pid text checked
//! against `<A.B.C>`), never spliced into its text. Read-only: nothing here
//! changes the node.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::dist::{Term, as_atom, as_list, as_tuple, atom, charlist, int, list, tuple};
use crate::otp_node_watcher::WatcherRpc;
use crate::upgrade::Rpc;

/// Longest the node works on one query.
pub const NODE_LIMIT: Duration = Duration::from_millis(3000);
/// Longest deployex waits for one RPC (the node's limit plus transit).
pub const RPC_TIMEOUT: Duration = Duration::from_millis(4000);
/// Most processes one query returns.
pub const MAX_LIMIT: u32 = 1000;
/// Most supervision entries (every level together) per application.
pub const MAX_TREE: u32 = 2000;
/// Most ETS tables listed (largest first).
pub const MAX_TABLES: u32 = 1000;
/// Most bytes of a rendered `sys:get_state` (and of any rendered term).
pub const STATE_CAP: u32 = 16 * 1024;

/// What to sort processes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Memory,
    Reductions,
    MessageQueueLen,
}

impl SortKey {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "memory" => Some(SortKey::Memory),
            "reductions" => Some(SortKey::Reductions),
            "message_queue_len" => Some(SortKey::MessageQueueLen),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Memory => "memory",
            SortKey::Reductions => "reductions",
            SortKey::MessageQueueLen => "message_queue_len",
        }
    }
}

/// One observer query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObserveRequest {
    Processes { sort: SortKey, limit: u32 },
    Process { pid: String },
    Supervision,
    Ets,
}

/// An observer answer: JSON, and the size of the node's reply on the wire
/// (the encoded term), which proves how much crossed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub json: Value,
    pub reply_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    #[error("no such instance: {0}")]
    NoSuchInstance(u32),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("no such process: {0}")]
    NoSuchProcess(String),
    #[error("the node did not finish in time")]
    Timeout,
    /// The node answered something else than the query's result.
    #[error("node {node}: {reason}")]
    Node { node: String, reason: String },
    /// The RPC carrying the query failed (not connected, timed out, link
    /// lost, `badrpc`).
    #[error("node {node}: {}", crate::error::error_chain(error))]
    Rpc {
        node: String,
        error: crate::error::RpcError,
    },
}

/// A local pid as Erlang prints it: `<A.B.C>`, decimal parts.
pub fn valid_pid(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('<').and_then(|s| s.strip_suffix('>')) else {
        return false;
    };
    let parts: Vec<&str> = inner.split('.').collect();
    s.len() <= 40
        && parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Runs the work `body` in a process of its own on the node, killed after
/// `Limit` ms; answers `{ok, Result}` or `{error, Reason}`.
macro_rules! bounded {
    ($body:expr) => {
        concat!(
            "Ref0 = erlang:make_ref(), ",
            "{Worker, Mon} = erlang:spawn_monitor(fun() -> erlang:exit({Ref0, begin ",
            $body,
            " end}) end), ",
            "receive {'DOWN', Mon, process, Worker, {Ref0, Result}} -> {ok, Result}; ",
            "{'DOWN', Mon, process, Worker, Reason} -> {error, Reason} ",
            "after Limit -> erlang:exit(Worker, kill), {error, timeout} end."
        )
    };
}

/// `m:f/a` text, or `undefined`.
macro_rules! mfa_fun {
    () => {
        "Mfa = fun({M, F, A}) when is_atom(M), is_atom(F), is_integer(A) -> \
         erlang:iolist_to_binary(io_lib:format(\"~ts:~ts/~b\", [M, F, A])); \
         (_) -> undefined end, "
    };
}

/// `{Text, Truncated}`: a term rendered (depth-limited) and capped at
/// `Cap` bytes.
macro_rules! txt_fun {
    () => {
        "Txt = fun(T) -> B = erlang:iolist_to_binary(io_lib:format(\"~0tP\", [T, 25])), \
         case erlang:byte_size(B) > Cap of true -> {binary:part(B, 0, Cap), true}; \
         false -> {B, false} end end, "
    };
}

/// Top `N` processes by `Key` (bindings `Key`, `N`, `Limit`): the sort
/// happens on the node, only `N` entries are built and sent.
const PROCESSES: &str = bounded!(concat!(
    mfa_fun!(),
    // Compiled code only for the 100 000s: `erlang:process_info/2` as an
    // external fun, `lists:zipwith/3` and `lists:keysort/2` (an
    // interpreted comprehension over every process took ~0.7 s here).
    // A dead process reads `undefined`, which sorts last.
    "Ps = erlang:processes(), ",
    "L = lists:zip(lists:zipwith(fun erlang:process_info/2, Ps, ",
    "lists:duplicate(erlang:length(Ps), Key)), Ps), ",
    "Sorted = lists:reverse(lists:keysort(1, L)), ",
    // The sort key shows the value it was sorted by (read again, it
    // could have moved on and the list would look unsorted).
    "Val = fun(K, SortedBy, _) when K =:= Key -> SortedBy; (_, _, X) -> X end, ",
    // Walk the sorted list until `N` live entries: a process that exits
    // between the sort and the second read (an RPC worker, a task) is
    // skipped and the next one takes its place, so the page shows `N` rows
    // whenever the node has `N` processes.
    "Take = fun Tk(_, 0, Acc) -> lists:reverse(Acc); Tk([], _, Acc) -> lists:reverse(Acc); ",
    "Tk([{{_, V}, P} | Rest], K, Acc) -> ",
    "case erlang:process_info(P, [registered_name, current_function, memory, reductions, ",
    "message_queue_len]) of ",
    "[{registered_name, Name}, {current_function, Cur}, {memory, Mem}, {reductions, Red}, ",
    "{message_queue_len, Mq}] -> ",
    "E = [{pid, erlang:list_to_binary(erlang:pid_to_list(P))}, ",
    "{name, case Name of [] -> undefined; _ -> Name end}, ",
    "{current_function, Mfa(Cur)}, ",
    "{initial_call, Mfa(proc_lib:translate_initial_call(P))}, ",
    "{memory, Val(memory, V, Mem)}, {reductions, Val(reductions, V, Red)}, ",
    "{message_queue_len, Val(message_queue_len, V, Mq)}], ",
    "Tk(Rest, K - 1, [E | Acc]); ",
    "_ -> Tk(Rest, K, Acc) end; ",
    // A process already dead at the first read (`undefined`) sorts last.
    "Tk([_ | Rest], K, Acc) -> Tk(Rest, K, Acc) end, ",
    "Take(Sorted, N, [])"
));

/// One process in detail (bindings `PidText`, `Cap`, `Limit`).
const PROCESS: &str = bounded!(concat!(
    mfa_fun!(),
    txt_fun!(),
    "P = case catch erlang:list_to_pid(PidText) of Pid0 when is_pid(Pid0) -> Pid0; _ -> none end, ",
    "T1 = fun(X) -> element(1, Txt(X)) end, ",
    "case is_pid(P) andalso erlang:process_info(P, [registered_name, status, links, monitors, monitored_by, ",
    "current_stacktrace, dictionary, memory, reductions, message_queue_len, current_function, ",
    "initial_call, trap_exit, total_heap_size, group_leader]) of ",
    "false -> undefined; undefined -> undefined; ",
    "[{registered_name, Name}, {status, St}, {links, Links}, {monitors, Mons}, ",
    "{monitored_by, MonBy}, {current_stacktrace, Stack}, {dictionary, Dict}, {memory, Mem}, ",
    "{reductions, Red}, {message_queue_len, Mq}, {current_function, Cur}, {initial_call, Init}, ",
    "{trap_exit, Trap}, {total_heap_size, Heap}, {group_leader, GL}] -> ",
    "IC = proplists:get_value('$initial_call', Dict), ",
    "{State, Trunc} = case IC of undefined -> {undefined, false}; ",
    "_ -> try sys:get_state(P, 1000) of S -> Txt(S) ",
    "catch C:E -> {erlang:iolist_to_binary([<<\"(sys:get_state failed) \">>, T1({C, E})]), false} end end, ",
    "[{pid, erlang:list_to_binary(erlang:pid_to_list(P))}, ",
    "{name, case Name of [] -> undefined; _ -> Name end}, ",
    "{status, St}, {memory, Mem}, {reductions, Red}, {message_queue_len, Mq}, ",
    "{total_heap_size, Heap}, {trap_exit, Trap}, ",
    "{group_leader, erlang:list_to_binary(erlang:pid_to_list(GL))}, ",
    "{current_function, Mfa(Cur)}, {initial_call, Mfa(Init)}, ",
    "{'$initial_call', Mfa(IC)}, ",
    "{links, [T1(X) || X <- lists:sublist(Links, 1000)]}, ",
    "{monitors, [T1(X) || X <- lists:sublist(Mons, 1000)]}, ",
    "{monitored_by, [T1(X) || X <- lists:sublist(MonBy, 1000)]}, ",
    "{current_stacktrace, [T1(X) || X <- Stack]}, ",
    "{dictionary_keys, [T1(K) || {K, _} <- lists:sublist(Dict, 1000)]}, ",
    "{state, State}, {state_truncated, Trunc}] ",
    "end"
));

/// Every started application's supervision tree (bindings `Max`, `Limit`).
const SUPERVISION: &str = bounded!(concat!(
    "Count = erlang:make_ref(), erlang:put(Count, 0), ",
    "Mods = fun(Ms) when is_list(Ms) -> [erlang:atom_to_binary(M, utf8) || M <- Ms, is_atom(M)]; ",
    "(D) -> D end, ",
    "Walk = fun W(Sup, Depth) -> ",
    "case catch supervisor:which_children(Sup) of ",
    "Children when is_list(Children) -> ",
    "[begin erlang:put(Count, erlang:get(Count) + 1), ",
    "[{id, erlang:iolist_to_binary(io_lib:format(\"~0tP\", [Id, 6]))}, ",
    "{pid, case erlang:is_pid(Child) of true -> erlang:list_to_binary(erlang:pid_to_list(Child)); ",
    "false -> Child end}, ",
    "{type, Type}, {modules, Mods(Ms)}, ",
    "{children, case {Type, erlang:is_pid(Child), Depth < 10} of ",
    "{supervisor, true, true} -> W(Child, Depth + 1); _ -> [] end}] end ",
    "|| {Id, Child, Type, Ms} <- Children, erlang:get(Count) < Max]; ",
    "_ -> [] end end, ",
    "[begin erlang:put(Count, 0), ",
    "Top = case application_controller:get_master(App) of ",
    "undefined -> undefined; ",
    "Master -> case catch application_master:get_child(Master) of ",
    "{TopPid, TopMod} when is_pid(TopPid) -> {TopPid, TopMod}; _ -> undefined end end, ",
    "case Top of ",
    "undefined -> [{application, App}, {supervisor, undefined}, {children, []}]; ",
    "{SupPid, SupMod} -> [{application, App}, {supervisor, [{pid, erlang:list_to_binary(",
    "erlang:pid_to_list(SupPid))}, {name, case erlang:process_info(SupPid, registered_name) of ",
    "{registered_name, RN} -> RN; _ -> undefined end}, {module, SupMod}, {type, supervisor}]}, ",
    "{children, Walk(SupPid, 1)}] end end ",
    "|| {App, _, _} <- application:which_applications()]"
));

/// ETS tables by memory (bindings `Max`, `Limit`).
const ETS: &str = bounded!(concat!(
    "W = erlang:system_info(wordsize), ",
    "Ts = [{M * W, T, N, O, S, Ty, Pr} || T <- ets:all(), ",
    "{N, O, S, M, Ty, Pr} <- [{ets:info(T, name), ets:info(T, owner), ets:info(T, size), ",
    "ets:info(T, memory), ets:info(T, type), ets:info(T, protection)}], erlang:is_integer(M)], ",
    "[[{name, N}, {id, erlang:iolist_to_binary(io_lib:format(\"~0tp\", [T]))}, ",
    "{owner, erlang:list_to_binary(erlang:pid_to_list(O))}, {size, S}, {memory, Bytes}, ",
    "{type, Ty}, {protection, Pr}] ",
    "|| {Bytes, T, N, O, S, Ty, Pr} <- lists:sublist(lists:reverse(lists:keysort(1, Ts)), Max)]"
));

/// Parsed expressions, by their text (an abstract form is the same for
/// every node).
fn parsed() -> &'static Mutex<HashMap<&'static str, Term>> {
    static PARSED: OnceLock<Mutex<HashMap<&'static str, Term>>> = OnceLock::new();
    PARSED.get_or_init(|| Mutex::new(HashMap::new()))
}

fn rpc_err(node: &str, error: crate::error::RpcError) -> ObserverError {
    ObserverError::Rpc {
        node: node.to_string(),
        error,
    }
}

fn node_err(node: &str, reason: impl Into<String>) -> ObserverError {
    ObserverError::Node {
        node: node.to_string(),
        reason: reason.into(),
    }
}

/// The abstract form of `expr`, parsed by the node (and cached).
async fn parse(node: &str, expr: &'static str) -> Result<Term, ObserverError> {
    if let Some(t) = parsed().lock().ok().and_then(|p| p.get(expr).cloned()) {
        return Ok(t);
    }
    let rpc = WatcherRpc {
        node: node.to_string(),
    };
    let scanned = rpc
        .call("erl_scan", "string", vec![charlist(expr)], RPC_TIMEOUT)
        .await
        .map_err(|e| rpc_err(node, e))?;
    let tokens = match as_tuple(&scanned) {
        Some([ok, tokens, _]) if as_atom(ok) == Some("ok") => tokens.clone(),
        _ => {
            return Err(node_err(
                node,
                format!("erl_scan: {}", crate::dist::pretty(&scanned)),
            ));
        }
    };
    let exprs = rpc
        .call("erl_parse", "parse_exprs", vec![tokens], RPC_TIMEOUT)
        .await
        .map_err(|e| rpc_err(node, e))?;
    let exprs = match as_tuple(&exprs) {
        Some([ok, exprs]) if as_atom(ok) == Some("ok") => exprs.clone(),
        _ => {
            return Err(node_err(
                node,
                format!("erl_parse: {}", crate::dist::pretty(&exprs)),
            ));
        }
    };
    if let Ok(mut p) = parsed().lock() {
        p.insert(expr, exprs.clone());
    }
    Ok(exprs)
}

/// Evaluates `expr` on `node` with `bindings` (plus `Limit`); the value of
/// `{ok, V}` and the size of the encoded reply.
async fn eval(
    node: &str,
    expr: &'static str,
    mut bindings: Vec<(&'static str, Term)>,
) -> Result<(Term, usize), ObserverError> {
    let exprs = parse(node, expr).await?;
    bindings.push(("Limit", int(NODE_LIMIT.as_millis() as i64)));
    // erl_eval's bindings: an orddict, sorted by variable name.
    bindings.sort_by(|a, b| a.0.cmp(b.0));
    let bindings = list(
        bindings
            .into_iter()
            .map(|(k, v)| tuple(vec![atom(k), v]))
            .collect(),
    );
    let reply = WatcherRpc {
        node: node.to_string(),
    }
    .call("erl_eval", "exprs", vec![exprs, bindings], RPC_TIMEOUT)
    .await
    .map_err(|e| rpc_err(node, e))?;
    let mut bytes = Vec::new();
    let reply_bytes = match reply.encode(&mut bytes) {
        Ok(()) => bytes.len(),
        Err(_) => 0,
    };
    let value = match as_tuple(&reply) {
        Some([tag, v, _]) if as_atom(tag) == Some("value") => v.clone(),
        _ => {
            return Err(node_err(
                node,
                format!("erl_eval: {}", crate::dist::pretty(&reply)),
            ));
        }
    };
    match as_tuple(&value) {
        Some([tag, v]) if as_atom(tag) == Some("ok") => Ok((v.clone(), reply_bytes)),
        Some([tag, why]) if as_atom(tag) == Some("error") => {
            if as_atom(why) == Some("timeout") {
                Err(ObserverError::Timeout)
            } else {
                let mut text = crate::dist::pretty(why);
                text.truncate(2000);
                Err(node_err(node, text))
            }
        }
        _ => Err(node_err(node, crate::dist::pretty(&value))),
    }
}

/// Runs `req` against `node`.
pub async fn observe(node: &str, req: &ObserveRequest) -> Result<Observed, ObserverError> {
    let cap = ("Cap", int(i64::from(STATE_CAP)));
    let (term, reply_bytes) = match req {
        ObserveRequest::Processes { sort, limit } => {
            let limit = (*limit).clamp(1, MAX_LIMIT);
            eval(
                node,
                PROCESSES,
                vec![("Key", atom(sort.as_str())), ("N", int(i64::from(limit)))],
            )
            .await?
        }
        ObserveRequest::Process { pid } => {
            if !valid_pid(pid) {
                return Err(ObserverError::BadRequest(format!(
                    "not a pid of the form <A.B.C>: {pid:.40}"
                )));
            }
            let (t, n) = eval(node, PROCESS, vec![("PidText", charlist(pid)), cap]).await?;
            if as_atom(&t) == Some("undefined") {
                return Err(ObserverError::NoSuchProcess(pid.clone()));
            }
            (t, n)
        }
        ObserveRequest::Supervision => {
            eval(node, SUPERVISION, vec![("Max", int(i64::from(MAX_TREE)))]).await?
        }
        ObserveRequest::Ets => eval(node, ETS, vec![("Max", int(i64::from(MAX_TABLES)))]).await?,
    };
    Ok(Observed {
        json: to_json(&term, 0),
        reply_bytes,
    })
}

/// The observer's shapes as JSON: a list of `{atom, V}` pairs is an
/// object; `true`/`false` booleans; `undefined` null; other atoms, binaries
/// and charlists strings; lists and tuples arrays.
pub fn to_json(term: &Term, depth: usize) -> Value {
    if depth > 64 {
        return Value::String(crate::dist::pretty(term));
    }
    match term {
        Term::Atom(a) => match a.name.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "undefined" => Value::Null,
            other => Value::String(other.to_string()),
        },
        Term::FixInteger(i) => Value::from(i.value),
        Term::BigInteger(_) => crate::dist::as_int(term)
            .map_or_else(|| Value::String(crate::dist::pretty(term)), Value::from),
        Term::Float(f) => serde_json::Number::from_f64(f.value).map_or(Value::Null, Value::Number),
        Term::Binary(b) => Value::String(String::from_utf8_lossy(&b.bytes).into_owned()),
        Term::ByteList(b) => Value::String(b.bytes.iter().map(|&c| char::from(c)).collect()),
        Term::List(_) => {
            let items = as_list(term).unwrap_or_default();
            let pairs: Option<Vec<(String, &Term)>> = (!items.is_empty())
                .then(|| {
                    items
                        .iter()
                        .map(|kv| match as_tuple(kv) {
                            Some([k, v]) => as_atom(k).map(|k| (k.to_string(), v)),
                            _ => None,
                        })
                        .collect()
                })
                .flatten();
            match pairs {
                Some(pairs) => Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k, to_json(v, depth + 1)))
                        .collect(),
                ),
                None => Value::Array(items.iter().map(|t| to_json(t, depth + 1)).collect()),
            }
        }
        Term::Tuple(t) => Value::Array(t.elements.iter().map(|e| to_json(e, depth + 1)).collect()),
        other => Value::String(crate::dist::pretty(other)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_checked() {
        assert!(valid_pid("<0.123.0>"));
        assert!(valid_pid("<12.1.9>"));
        for bad in [
            "<0.1>",
            "0.1.2",
            "<0.1.2>.",
            "<a.1.2>",
            "<0..2>",
            "<0.1.2\"), os:cmd(\"x>",
            "",
        ] {
            assert!(!valid_pid(bad), "{bad}");
        }
    }

    #[test]
    fn sort_keys() {
        for k in ["memory", "reductions", "message_queue_len"] {
            assert_eq!(SortKey::parse(k).unwrap().as_str(), k);
        }
        assert!(SortKey::parse("heap").is_none());
    }

    #[test]
    fn json_shapes() {
        let t = list(vec![
            tuple(vec![atom("pid"), crate::dist::binary("<0.1.0>")]),
            tuple(vec![atom("name"), atom("undefined")]),
            tuple(vec![atom("trap"), atom("true")]),
            tuple(vec![atom("links"), list(vec![])]),
            tuple(vec![atom("memory"), int(42)]),
        ]);
        assert_eq!(
            to_json(&t, 0),
            serde_json::json!({"pid": "<0.1.0>", "name": null, "trap": true, "links": [], "memory": 42})
        );
        assert_eq!(
            to_json(&list(vec![int(1), atom("x")]), 0),
            serde_json::json!([1, "x"])
        );
    }

    #[test]
    fn expressions_are_wrapped_in_a_time_limit() {
        for e in [PROCESSES, PROCESS, SUPERVISION, ETS] {
            assert!(e.starts_with("Ref0 = erlang:make_ref()"));
            assert!(e.ends_with("{error, timeout} end."));
        }
    }
}
