//! The environment an instance (or pre-command) starts with: deployex's
//! own, minus its secrets and minus variables that would steer the
//! release's boot scripts, plus the per-instance overrides.
//!
//! Kept on purpose: `ERL_FLAGS`, `ERL_AFLAGS`, `ERL_ZFLAGS` (deployex is not
//! an Erlang VM, so an operator who sets them in deployex's unit means them
//! for the instances), `ERL_EPMD_PORT` (the instances must use the same
//! EPMD as deployex's look-ups), `RELX_*` (operator settings of rebar3
//! releases), `AWS_ACCESS_KEY_ID`/`AWS_REGION` (useless without the secret).

use std::collections::BTreeMap;

/// Variables never passed to an instance. The first four are deployex's
/// secrets (the cookie reaches the instance as `RELEASE_COOKIE` through the
/// overrides); the AWS ones are deployex's store credentials; the rest are
/// set by `erl`/release scripts for *their* VM and would point a child at
/// the wrong root, emulator or boot options.
pub const STRIPPED_EXACT: &[&str] = &[
    "DEPLOYEX_ADMIN_HASHED_PASSWORD",
    "DEPLOYEX_SECRET_KEY_BASE",
    "DEPLOYEX_ERLANG_COOKIE",
    "DEPLOYEX_METRICS_TOKEN",
    "DEPLOYEX_WEBHOOK_SECRET",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "ROOTDIR",
    "BINDIR",
    "EMU",
    "PROGNAME",
    "ELIXIR_ERL_OPTIONS",
];

/// Prefixes of variables never passed on: a stray `RELEASE_NODE` or
/// `RELEASE_ROOT` would make every instance boot as the same node.
pub const STRIPPED_PREFIXES: &[&str] = &["RELEASE_"];

fn stripped(key: &str) -> bool {
    STRIPPED_EXACT.contains(&key) || STRIPPED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// `base` (normally `std::env::vars()`) without the stripped variables, then
/// `overrides` applied (they may set stripped names, e.g. `RELEASE_COOKIE`).
/// Sorted by name; a later duplicate wins.
pub fn instance_env(
    base: impl IntoIterator<Item = (String, String)>,
    overrides: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> =
        base.into_iter().filter(|(k, _)| !stripped(k)).collect();
    for (k, v) in overrides {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod unit {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn strips_the_metrics_token() {
        let env = instance_env(vec![kv("DEPLOYEX_METRICS_TOKEN", "t"), kv("A", "b")], &[]);
        assert_eq!(env, vec![kv("A", "b")]);
    }

    #[test]
    fn strips_secrets_and_release_vars() {
        let base = vec![
            kv("PATH", "/usr/bin"),
            kv("HOME", "/root"),
            kv("DEPLOYEX_ADMIN_HASHED_PASSWORD", "$2b$12$x"),
            kv("DEPLOYEX_SECRET_KEY_BASE", "s3cret"),
            kv("DEPLOYEX_ERLANG_COOKIE", "cookie"),
            kv("DEPLOYEX_MONITORED_APP_NAME", "myapp"),
            kv("AWS_SECRET_ACCESS_KEY", "aws"),
            kv("AWS_SESSION_TOKEN", "tok"),
            kv("AWS_REGION", "eu-west-1"),
            kv("RELEASE_NODE", "deployex"),
            kv("RELEASE_ROOT", "/opt/deployex"),
            kv("RELEASE_COOKIE", "old"),
            kv("ROOTDIR", "/usr/lib/erlang"),
            kv("BINDIR", "/usr/lib/erlang/bin"),
            kv("EMU", "beam"),
            kv("PROGNAME", "erl"),
            kv("ELIXIR_ERL_OPTIONS", "-sname x"),
            kv("ERL_FLAGS", "+S 2"),
            kv("ERL_EPMD_PORT", "4400"),
            kv("MY_RELEASE_X", "kept: prefix only at the start"),
        ];
        let env = instance_env(base, &[]);
        for gone in STRIPPED_EXACT {
            assert_eq!(get(&env, gone), None, "{gone} leaked");
        }
        assert!(env.iter().all(|(k, _)| !k.starts_with("RELEASE_")));
        assert_eq!(get(&env, "PATH"), Some("/usr/bin"));
        assert_eq!(get(&env, "DEPLOYEX_MONITORED_APP_NAME"), Some("myapp"));
        assert_eq!(get(&env, "AWS_REGION"), Some("eu-west-1"));
        assert_eq!(get(&env, "ERL_FLAGS"), Some("+S 2"));
        assert_eq!(get(&env, "ERL_EPMD_PORT"), Some("4400"));
        assert_eq!(
            get(&env, "MY_RELEASE_X"),
            Some("kept: prefix only at the start")
        );
        assert_eq!(env.len(), 7);
    }

    #[test]
    fn overrides_win_and_may_set_stripped_names() {
        let base = vec![kv("PORT", "1"), kv("RELEASE_COOKIE", "inherited")];
        let overrides = vec![
            kv("PORT", "4001"),
            kv("RELEASE_COOKIE", "instance-cookie"),
            kv("RELEASE_NODE_SUFFIX", "-2"),
            kv("RELEASE_DISTRIBUTION", "sname"),
            kv("ERL_CRASH_DUMP_SECONDS", "0"),
        ];
        let env = instance_env(base, &overrides);
        assert_eq!(get(&env, "PORT"), Some("4001"));
        assert_eq!(get(&env, "RELEASE_COOKIE"), Some("instance-cookie"));
        assert_eq!(get(&env, "RELEASE_NODE_SUFFIX"), Some("-2"));
        assert_eq!(get(&env, "ERL_CRASH_DUMP_SECONDS"), Some("0"));
        assert_eq!(env.len(), 5);
        // Sorted and free of duplicates.
        let keys: Vec<_> = env.iter().map(|(k, _)| k.clone()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted);
    }
}
