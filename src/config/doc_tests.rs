//! The settings table against what users read and what the code reads:
//! the README's configuration table and `config/deployex.example.toml`
//! must show every setting once, no other, with the table's default (and,
//! in the README, its scope); every row must have a reader. The checks
//! return the problems found so that they can be shown to fail on a
//! doctored README or example.

use std::collections::{BTreeMap, BTreeSet};

use super::settings::{SETTINGS, Scope, Setting};
use super::source::READ;
use super::{LOCAL_ADMIN_HASH, load};

/// The header line of the README's configuration table.
const README_HEADER: &str = "| variable | default (local) | scope | meaning |";

fn read(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the configuration table: name → (default, scope).
fn readme_rows(readme: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut lines = readme.lines().skip_while(|l| l.trim() != README_HEADER);
    if lines.next().is_none() {
        return Err(format!("README has no table headed {README_HEADER:?}"));
    }
    Ok(lines
        .skip(1) // |---|---|
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.trim().replace('`', "")).collect();
            let cell = |i: usize| cells.get(i).cloned().unwrap_or_default();
            (cell(1), cell(2), cell(3))
        })
        .collect())
}

/// What is wrong with the README's table.
fn readme_problems(readme: &str) -> Vec<String> {
    let rows = match readme_rows(readme) {
        Ok(rows) => rows,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let mut seen = BTreeMap::new();
    for (name, default, scope) in &rows {
        *seen.entry(name.as_str()).or_insert(0) += 1;
        let Some(s) = super::settings::setting(name) else {
            problems.push(format!("README shows {name}, which is not a setting"));
            continue;
        };
        if *default != s.default.replace('`', "") {
            problems.push(format!(
                "README shows {name} default {default:?}, the table says {:?}",
                s.default
            ));
        }
        if scope != s.scope.as_str() {
            problems.push(format!(
                "README shows {name} scope {scope:?}, the table says {:?}",
                s.scope.as_str()
            ));
        }
    }
    for s in SETTINGS {
        match seen.get(s.name) {
            None => problems.push(format!("README misses {}", s.name)),
            Some(1) => {}
            Some(n) => problems.push(format!("README shows {} {n} times", s.name)),
        }
    }
    problems
}

/// A default the example file can show as a value: no words, no `unset`.
fn literal_default(s: &Setting) -> Option<String> {
    let d = s.default;
    (!d.contains(char::is_whitespace) && d != "unset")
        .then(|| d.replace("{app}", "myphoenixapp").replace("{env}", "local"))
}

/// What is wrong with the example file: every key once (set or commented
/// out as `# key = ...`), no unknown key, set values equal the default.
fn example_problems(example: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let table: toml::Table = match example.parse() {
        Ok(t) => t,
        Err(e) => return vec![format!("the example is not valid TOML: {e}")],
    };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in example.lines() {
        let line = line.trim();
        let code = line.strip_prefix('#').map_or(line, str::trim_start);
        if let Some((key, _)) = code.split_once(" = ")
            && !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            *seen.entry(key.to_string()).or_insert(0) += 1;
        }
    }
    for (key, value) in &table {
        let Some(s) = SETTINGS.iter().find(|s| s.key() == *key) else {
            problems.push(format!("the example sets {key}, which is not a setting"));
            continue;
        };
        let shown = match value {
            toml::Value::String(v) => v.clone(),
            other => other.to_string(),
        };
        match literal_default(s) {
            Some(d) if d == shown => {}
            Some(d) => problems.push(format!(
                "the example sets {key} = {shown:?}, the default is {d:?}"
            )),
            None => problems.push(format!(
                "the example sets {key}, whose default ({:?}) is not a value: comment it out",
                s.default
            )),
        }
    }
    for key in seen.keys() {
        if !SETTINGS.iter().any(|s| s.key() == *key) {
            problems.push(format!("the example shows {key}, which is not a setting"));
        }
    }
    for s in SETTINGS {
        match seen.get(&s.key()) {
            None => problems.push(format!("the example misses {}", s.key())),
            Some(1) => {}
            Some(n) => problems.push(format!("the example shows {} {n} times", s.key())),
        }
    }
    problems
}

#[test]
fn readme_table_matches_the_settings() {
    let problems = readme_problems(&read("README.md"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn example_file_matches_the_settings() {
    let problems = example_problems(&read("config/deployex.example.toml"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // And deployex loads it as it is.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deployex.example.toml");
    load(Vec::new(), Some(&path)).unwrap();
}

#[test]
fn the_checks_catch_a_missing_an_extra_and_a_wrong_row() {
    let readme = read("README.md");
    let doctored = readme
        .replace(
            "| DEPLOYEX_MONITORED_REPLICAS | 3 |",
            "| DEPLOYEX_MONITORED_REPLICAS | 4 |",
        )
        .replace("| DEPLOYEX_LOG_KEEP |", "| DEPLOYEX_LOG_KEPT |");
    let problems = readme_problems(&doctored).join("\n");
    assert!(
        problems.contains("DEPLOYEX_MONITORED_REPLICAS default \"4\""),
        "{problems}"
    );
    assert!(
        problems.contains("README misses DEPLOYEX_LOG_KEEP"),
        "{problems}"
    );
    assert!(
        problems.contains("DEPLOYEX_LOG_KEPT, which is not a setting"),
        "{problems}"
    );

    let example = read("config/deployex.example.toml");
    let doctored = example
        .replace("monitored_replicas = 3", "monitored_replicas = 4")
        .replace("log_keep = 5", "log_kept = 5");
    let problems = example_problems(&doctored).join("\n");
    assert!(
        problems.contains("monitored_replicas = \"4\""),
        "{problems}"
    );
    assert!(
        problems.contains("the example misses log_keep"),
        "{problems}"
    );
    assert!(
        problems.contains("log_kept, which is not a setting"),
        "{problems}"
    );
}

#[test]
fn names_are_unique_and_scopes_as_documented() {
    let names: BTreeSet<&str> = SETTINGS.iter().map(|s| s.name).collect();
    assert_eq!(names.len(), SETTINGS.len(), "a setting is listed twice");
    let app: BTreeSet<String> = SETTINGS
        .iter()
        .filter(|s| s.scope == Scope::App)
        .map(|s| s.key())
        .collect();
    let expected: BTreeSet<String> = [
        "monitored_app_name",
        "monitored_replicas",
        "monitored_app_port",
        "release_adapter",
        "release_dir",
        "release_bucket",
        "health_path",
        "min_ready_ms",
        "otp_readiness",
        "deploy_timeout_rollback_ms",
        "rollback_crashes",
        "deploy_strategy",
        "liveness_interval_ms",
        "liveness_failures",
        "watchdog_memory_mb",
        "watchdog_atoms_pct",
        "watchdog_processes_pct",
        "watchdog_ports_pct",
        "watchdog_action",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(app, expected);
}

/// Loads with every optional branch on (fleet, watchdog memory, forced
/// cookie flag, webhook; a local and an S3 store) so that every reader
/// runs and checks itself against the table; a row no reader read is a
/// setting that does nothing.
#[test]
fn every_setting_has_a_reader() {
    READ.with(|r| r.borrow_mut().clear());
    let common = [
        ("DEPLOYEX_FLEET", "true"),
        ("DEPLOYEX_WATCHDOG_MEMORY_MB", "512"),
        ("DEPLOYEX_SECURE_COOKIE", "true"),
        ("DEPLOYEX_WEBHOOK_URL", "https://hooks.example.com/x"),
        ("DEPLOYEX_ADMIN_HASHED_PASSWORD", LOCAL_ADMIN_HASH),
    ];
    for store in [
        vec![("DEPLOYEX_RELEASE_ADAPTER", "local")],
        vec![
            ("DEPLOYEX_RELEASE_ADAPTER", "s3"),
            ("AWS_REGION", "us-east-2"),
        ],
    ] {
        let env: Vec<(String, String)> = common
            .iter()
            .chain(store.iter())
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        load(env, None).unwrap();
    }
    let read: BTreeSet<String> = READ.with(|r| r.borrow().clone());
    let unread: Vec<&str> = SETTINGS
        .iter()
        .map(|s| s.name)
        .filter(|n| !read.contains(*n))
        .collect();
    assert!(unread.is_empty(), "no reader reads {unread:?}");
}

/// The engine strips deployex's secrets from every child's environment by
/// its own list; it must hold every secret of the table.
#[test]
fn the_engine_strips_every_secret() {
    for secret in super::settings::secrets() {
        assert!(
            deployex_actors::process::STRIPPED_EXACT.contains(&secret),
            "{secret} is a secret but not in process::env::STRIPPED_EXACT"
        );
    }
}
