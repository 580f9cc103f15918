//! One function per fuzz target: feeds arbitrary bytes to a parser of
//! untrusted input and asserts what must hold whatever the bytes are. A
//! panic (ours or an assertion's) is the bug report.
//!
//! Used by `fuzz_targets/*.rs` (libFuzzer) and by the root crate's
//! `tests/fuzz_corpus.rs`, which replays `fuzz/corpus/<target>/` in CI.
//! Invariants: no check writes outside its own temp dir or reads the
//! process environment, so they can run in parallel test threads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use deployex_actors::dist::term::{
    as_atom, as_int, as_list, as_tuple, check_external_terms, pretty, term_to_string,
};
use deployex_actors::store::unpack::{UnpackError, UnpackLimits, unpack_release};
use deployex_actors::store::{parse_current_json, validate_version};
use erl_dist::message::Message;
use erl_dist::term::Term;

/// `current.json` from the store: either a validated release whose fields
/// are safe to use as file names and commands, or an error that renders.
pub fn current_json(data: &[u8]) {
    match parse_current_json(data) {
        Ok(c) => {
            assert!(validate_version(&c.version).is_ok(), "{c:?}");
            assert!(c.pre_commands.iter().all(|p| !p.trim().is_empty()), "{c:?}");
            if let Some(sha) = &c.sha256 {
                assert!(
                    sha.len() == 64
                        && sha
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                    "{sha:?}"
                );
            }
            // What we accept we can write back and read again unchanged.
            let again = parse_current_json(&serde_json::to_vec(&c).unwrap()).unwrap();
            assert_eq!(again, c);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Limits small enough that the fuzzer reaches them (bombs), while a
/// plausible tiny release fits.
pub const UNPACK_LIMITS: UnpackLimits = UnpackLimits {
    max_total_bytes: 256 * 1024,
    max_entries: 64,
};

/// The app whose `bin/{app}` a tarball must carry.
pub const UNPACK_APP: &str = "app";

/// Unpacks the input as a release tarball, five folders deep in a fresh
/// temp dir. First byte even: the rest is a tar stream, gzipped here (so
/// the fuzzer works on tar headers); odd: the rest is the `.tar.gz` itself.
///
/// Must hold: no panic; nothing appears in the temp dir except the
/// destination, and only on success; on success the tree respects the
/// limits, has an executable `bin/app`, and no symlink leads outside it.
pub fn unpack(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).unwrap();
        gz.finish().unwrap()
    } else {
        rest.to_vec()
    };
    let dir = tempfile::tempdir().unwrap();
    // Deep enough that a symlink climbing a few levels out of the
    // destination still lands where we look.
    let parent = dir.path().join("a/b/c/d/service");
    std::fs::create_dir_all(&parent).unwrap();
    let tarball = dir.path().join("in.tar.gz");
    std::fs::write(&tarball, &bytes).unwrap();
    let dest = parent.join("current");
    let before = tree(dir.path());

    let result = unpack_release(&tarball, &dest, UNPACK_APP, &UNPACK_LIMITS);

    let after = tree(dir.path());
    let added: Vec<&PathBuf> = after.difference(&before).collect();
    let removed: Vec<&PathBuf> = before.difference(&after).collect();
    assert!(removed.is_empty(), "removed {removed:?} ({result:?})");
    let rel_dest = dest.strip_prefix(dir.path()).unwrap();
    match result {
        Ok(unpacked) => {
            assert!(
                added.iter().all(|p| p.starts_with(rel_dest)),
                "wrote outside the destination: {added:?}"
            );
            assert!(unpacked.has_bin);
            assert!(unpacked.total_bytes <= UNPACK_LIMITS.max_total_bytes);
            assert!(unpacked.entries <= UNPACK_LIMITS.max_entries);
            check_unpacked(&dest);
        }
        Err(e) => {
            assert!(added.is_empty(), "{e}: left {added:?}");
            let _ = e.to_string();
            if let UnpackError::DestExists { .. } | UnpackError::InvalidApp { .. } = e {
                panic!("impossible here: {e}");
            }
        }
    }
}

/// Every path under `root` (relative), without following symlinks.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out
}

/// The unpacked tree: file bytes and entries within the limits, an
/// executable `bin/app`, relative symlinks that resolve inside the tree.
fn check_unpacked(dest: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let bin = std::fs::symlink_metadata(dest.join("bin").join(UNPACK_APP)).unwrap();
    assert!(bin.is_file() && bin.permissions().mode() & 0o111 != 0);
    let mut bytes = 0u64;
    let paths = tree(dest);
    assert!(paths.len() as u64 <= UNPACK_LIMITS.max_entries, "{paths:?}");
    for rel in &paths {
        let path = dest.join(rel);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_file() {
            bytes += meta.len();
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            let mut depth: i64 = rel.components().count() as i64 - 1;
            for c in target.components() {
                match c {
                    Component::Normal(_) => depth += 1,
                    Component::ParentDir => depth -= 1,
                    Component::CurDir => {}
                    _ => panic!("absolute symlink {rel:?} -> {target:?}"),
                }
                assert!(depth >= 0, "symlink {rel:?} -> {target:?} leaves the tree");
            }
        }
    }
    // Hard links count once per name here, so this may exceed what was
    // written; the budget is on written bytes, so only check plain trees.
    let links = paths.iter().any(|p| {
        std::fs::symlink_metadata(dest.join(p))
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.is_file() && m.nlink() > 1
            })
            .unwrap_or(false)
    });
    if !links {
        assert!(bytes <= UNPACK_LIMITS.max_total_bytes, "{bytes} bytes");
    }
}

/// Bytes a connected node may send, as the body of a frame after the
/// pass-through tag (one or more external terms). deployex decodes only
/// what [`check_external_terms`] accepts (`dist/frame.rs`); what it accepts
/// must decode, print and drop without panicking, whatever the bytes.
/// Returns whether the bytes passed the check.
pub fn term_decode(data: &[u8]) -> bool {
    if check_external_terms(data).is_err() {
        return false;
    }
    if let Ok(term) = Term::decode(data) {
        use_term(&term);
    }
    if let Ok(message) = Message::read_from(&mut &data[..]) {
        let _ = format!("{message:?}");
    }
    true
}

fn use_term(term: &Term) {
    let _ = pretty(term);
    let _ = term_to_string(term);
    let _ = as_atom(term);
    let _ = as_int(term);
    if let Some(elements) = as_tuple(term) {
        elements.iter().take(8).for_each(use_term);
    }
    if let Some(elements) = as_list(term) {
        elements.iter().take(8).for_each(use_term);
    }
}

/// A config file and an environment. The input is `ENV\0TOML`: `K=V`
/// lines, then the file (no `\0`: the whole input is the file).
///
/// Must hold: no panic; an accepted config has 1+ replicas whose ports
/// fit, and its description never shows a fetched secret.
pub fn config(data: &[u8]) {
    let (env_part, file_part) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deployex.toml");
    std::fs::write(&file, file_part).unwrap();
    const KEY: &str = "fetched-secret-key-base-0123456789abcdefghijklmnopqrstuvwxyz";
    const COOKIE: &str = "fetched-cookie-ZQXJ";
    let mut asked = false;
    let result = crate::config::load_with_secrets(env, Some(&file), |req| {
        asked = true;
        assert!(!req.missing.is_empty());
        Ok(HashMap::from([
            ("DEPLOYEX_SECRET_KEY_BASE".to_owned(), KEY.to_owned()),
            ("DEPLOYEX_ERLANG_COOKIE".to_owned(), COOKIE.to_owned()),
            (
                "DEPLOYEX_ADMIN_HASHED_PASSWORD".to_owned(),
                crate::config::LOCAL_ADMIN_HASH.to_owned(),
            ),
        ]))
    });
    match result {
        Ok(cfg) => {
            let e = &cfg.engine;
            assert!(e.replicas >= 1, "{e:?}");
            let first = u32::from(e.port(1));
            let last = u32::from(e.port(e.replicas));
            assert_eq!(last - first, e.replicas - 1, "ports wrap: {e:?}");
            let text = cfg.describe();
            let input = String::from_utf8_lossy(data);
            for secret in [KEY, COOKIE] {
                assert!(
                    !asked || !text.contains(secret) || input.contains(secret),
                    "secret shown: {text}"
                );
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The session signer the web checks verify against (a key the fuzzer
/// cannot know).
fn signer() -> deployex_web::auth::TokenSigner {
    deployex_web::auth::TokenSigner::for_admin(
        "fuzz-secret-key-base-0123456789abcdefghij",
        "$2b$12$fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfu",
        std::time::Duration::from_secs(3600),
    )
}

/// A session token (Bearer value or cookie) from a client.
///
/// Must hold: no panic; nothing the fuzzer makes verifies (it cannot know
/// the key); a token the signer issued verifies, and any one-byte change
/// of it does not; the header parsers return slices of their input.
pub fn session_token(data: &[u8]) {
    use deployex_web::auth::{COOKIE_NAME, bearer, session_cookie};
    let text = String::from_utf8_lossy(data);
    let s = signer();
    assert!(s.verify(&text).is_err(), "forged token accepted: {text:?}");
    if let Some(t) = bearer(&text) {
        assert!(text.contains(t));
        assert!(s.verify(t).is_err());
    }
    if let Some(t) = session_cookie(&text, COOKIE_NAME) {
        assert!(text.contains(t));
        assert!(s.verify(t).is_err());
    }
    let good = s.issue();
    assert!(s.verify(&good).is_ok());
    if !data.is_empty() {
        let mut bad = good.clone().into_bytes();
        let i = usize::from(data[0]) % bad.len();
        let b = data.get(1).copied().unwrap_or(b'x');
        if bad[i] != b {
            bad[i] = b;
            let bad = String::from_utf8_lossy(&bad);
            assert!(s.verify(&bad).is_err(), "tampered token accepted: {bad:?}");
        }
    }
}

/// `%XX` decoding of a URL path segment (ghosted versions).
///
/// Must hold: no panic; text without `%` is unchanged; any text encoded
/// byte by byte decodes back to itself.
pub fn percent_decode(data: &[u8]) {
    use deployex_web::api::percent_decode;
    let text = String::from_utf8_lossy(data);
    let decoded = percent_decode(&text);
    if !text.contains('%') {
        assert_eq!(decoded, text);
    }
    let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(percent_decode(&encoded), text);
}

/// The origin check of state changes and websockets.
///
/// Must hold: no panic; a normalized origin is `http(s)://host[:port]`
/// with no user info, path or default port, and normalizes to itself; an
/// origin is allowed exactly when it normalizes to an allowed one.
pub fn origin(data: &[u8]) {
    use deployex_web::auth::{normalize_origin, origin_allowed, public_origins};
    let text = String::from_utf8_lossy(data);
    if let Some(o) = normalize_origin(&text) {
        let rest = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
            .unwrap_or_else(|| panic!("bad scheme: {o:?}"));
        assert!(
            !rest.is_empty() && !rest.contains(['/', '@', '?', '#']),
            "{o:?}"
        );
        assert!(!o.ends_with(":80") || o.starts_with("https://"), "{o:?}");
        assert!(!o.ends_with(":443") || o.starts_with("http://"), "{o:?}");
        assert_eq!(normalize_origin(&o).as_deref(), Some(o.as_str()));
        assert!(origin_allowed(Some(&text), None, std::slice::from_ref(&o)));
    }
    let allowed = public_origins(None, "deploy.example.com", 5001).unwrap();
    assert_eq!(
        origin_allowed(Some(&text), None, &allowed),
        text != "null" && normalize_origin(&text).as_deref() == Some("https://deploy.example.com")
    );
    // Used as DEPLOYEX_PUBLIC_URL: accepted means one normalized origin.
    if let Ok(v) = public_origins(Some(&text), "localhost", 5001) {
        assert_eq!(v.len(), 1);
        assert_eq!(normalize_origin(&v[0]).as_deref(), Some(v[0].as_str()));
    }
}

/// The login form body.
///
/// Must hold: no panic; what parses encodes back to a body that parses to
/// the same fields.
pub fn login_form(data: &[u8]) {
    use deployex_web::pages::{encode_login_form, parse_login_form};
    if let Some(form) = parse_login_form(data) {
        let again = encode_login_form(&form);
        assert_eq!(parse_login_form(again.as_bytes()), Some(form));
    }
}
