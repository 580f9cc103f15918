//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same checks the cargo-fuzz targets run (`fuzz/src/checks.rs`), so CI
//! covers them without cargo-fuzz or a nightly toolchain. A crash that
//! fuzzing finds is added to the corpus and so stays a regression test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../src/config/mod.rs"]
#[allow(dead_code)]
mod config;

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::PathBuf;

/// Every file of a target's corpus; at least one, so a moved corpus fails.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

fn replay(target: &str, check: impl Fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        eprintln!("{target}: {}", path.display());
        check(&bytes);
    }
}

#[test]
fn current_json_corpus() {
    replay("current_json", checks::current_json);
}

#[test]
fn unpack_corpus() {
    replay("unpack", checks::unpack);
}

#[test]
fn term_decode_corpus() {
    replay("term_decode", |b| {
        checks::term_decode(b);
    });
}

/// Terms written by a real Erlang node (gen_corpus.py) pass the check that
/// guards the decoder; the hostile seeds do not.
#[test]
fn real_terms_pass_the_check_hostile_ones_do_not() {
    for (path, bytes) in corpus("term_decode") {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let hostile = ["deep_list.bin", "huge_list_len.bin"].contains(&name.as_str());
        assert_eq!(checks::term_decode(&bytes), !hostile, "{name}");
    }
}

#[test]
fn config_corpus() {
    replay("config", checks::config);
}

/// The checks themselves can fail: a tarball that the harness accepts must
/// really be unpacked, and an escaping one must be refused (not skipped).
#[test]
fn unpack_check_sees_success_and_refusal() {
    use deployex_actors::store::unpack::unpack_release;
    let corpus = corpus("unpack");
    let get = |name: &str| {
        corpus
            .iter()
            .find(|(p, _)| p.file_name().unwrap() == name)
            .unwrap()
            .1
            .clone()
    };
    let gz = |tar: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(tar).unwrap();
        e.finish().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let limits = checks::UNPACK_LIMITS;
    for (name, ok) in [
        ("release.tar", true),
        ("symlink_escape.tar", false),
        ("absolute_link.tar", false),
        ("hardlink_out.tar", false),
        ("many_entries.tar", false),
    ] {
        let tarball = dir.path().join(format!("{name}.gz"));
        std::fs::write(&tarball, gz(&get(name)[1..])).unwrap();
        let dest = dir.path().join(format!("{name}.out"));
        let r = unpack_release(&tarball, &dest, checks::UNPACK_APP, &limits);
        assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
    }
    let bomb = dir.path().join("bomb.tar.gz");
    std::fs::write(&bomb, &get("bomb.tar.gz")[1..]).unwrap();
    let r = unpack_release(&bomb, &dir.path().join("bomb"), checks::UNPACK_APP, &limits);
    assert!(
        matches!(
            r,
            Err(deployex_actors::store::unpack::UnpackError::TooLarge { .. })
        ),
        "{r:?}"
    );
}

#[test]
fn session_token_corpus() {
    replay("session_token", checks::session_token);
}

#[test]
fn percent_decode_corpus() {
    replay("percent_decode", checks::percent_decode);
}

#[test]
fn origin_corpus() {
    replay("origin", checks::origin);
}

#[test]
fn login_form_corpus() {
    replay("login_form", checks::login_form);
}
