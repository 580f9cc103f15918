//! Tests of [`super::unpack`] against real tarballs built here with `tar` +
//! `flate2`, hostile ones included, and a real `mix release` tarball when one
//! is available.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::Digest;

use super::unpack::*;

/// Builds a tar stream entry by entry, writing names raw so that hostile
/// names (`..`, absolute) can be produced.
struct Tb {
    b: tar::Builder<Vec<u8>>,
}

impl Tb {
    fn new() -> Tb {
        Tb {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn raw(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        data: &[u8],
        link: Option<&str>,
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        let slot = &mut h.as_old_mut().name;
        slot.fill(0);
        slot[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.set_link_name_literal(l).unwrap();
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(name, tar::EntryType::Regular, mode, data, None)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Directory, 0o755, b"", None)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Symlink, 0o777, b"", Some(target))
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Link, 0o644, b"", Some(target))
    }

    /// A minimal valid release of `myapp` 0.1.0.
    fn release(&mut self) -> &mut Self {
        self.file("bin/myapp", 0o755, b"#!/bin/sh\necho myapp 0.1.0\n")
            .file("releases/start_erl.data", 0o644, b"13.1.5 0.1.0\n")
            .file("releases/COOKIE", 0o400, b"secret")
            .file("releases/0.1.0/start.boot", 0o644, b"boot")
            .file(
                "lib/myapp-0.1.0/ebin/myapp.app",
                0o644,
                b"{application,myapp,[]}.",
            )
            .file("erts-13.1.5/bin/erl", 0o755, b"#!/bin/sh\n")
    }

    fn tar_bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }

    fn gz(&mut self) -> Vec<u8> {
        gzip(&self.tar_bytes())
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A temp area: tarballs in `in/`, unpacking into `out/rel`.
struct Area {
    _tmp: tempfile::TempDir,
    input: PathBuf,
    out: PathBuf,
}

impl Area {
    fn new() -> Area {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        let out = tmp.path().join("out");
        fs::create_dir(&input).unwrap();
        fs::create_dir(&out).unwrap();
        Area {
            _tmp: tmp,
            input,
            out,
        }
    }

    fn tarball(&self, bytes: &[u8]) -> PathBuf {
        let p = self.input.join("myapp-0.1.0.tar.gz");
        fs::write(&p, bytes).unwrap();
        p
    }

    fn dest(&self) -> PathBuf {
        self.out.join("rel")
    }

    fn unpack(&self, bytes: &[u8]) -> Result<UnpackedRelease, UnpackError> {
        self.unpack_with(bytes, &UnpackLimits::default())
    }

    fn unpack_with(
        &self,
        bytes: &[u8],
        limits: &UnpackLimits,
    ) -> Result<UnpackedRelease, UnpackError> {
        let t = self.tarball(bytes);
        unpack_release(&t, &self.dest(), "myapp", limits)
    }

    /// Unpacking failed: nothing at dest, no temp dir left.
    fn expect_err(&self, bytes: &[u8]) -> UnpackError {
        let e = self.unpack(bytes).unwrap_err();
        self.assert_clean();
        e
    }

    fn assert_clean(&self) {
        let left: Vec<_> = fs::read_dir(&self.out).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

fn unsafe_problem(e: &UnpackError) -> (String, String) {
    match e {
        UnpackError::UnsafeEntry { entry, problem, .. } => (entry.clone(), problem.clone()),
        other => panic!("expected UnsafeEntry, got {other:?}: {other}"),
    }
}

#[test]
fn good_tree_unpacks_with_modes_and_links() {
    let a = Area::new();
    let mut tb = Tb::new();
    tb.dir("releases/")
        .release()
        .dir("lib/")
        .symlink("lib/current", "myapp-0.1.0")
        .symlink("erts-13.1.5/bin/app", "../../bin/myapp")
        .symlink("top", "./lib")
        .hardlink("lib/copy.app", "lib/myapp-0.1.0/ebin/myapp.app")
        .raw("./", tar::EntryType::Directory, 0o755, b"", None)
        .dir("empty/");
    let r = a.unpack(&tb.gz()).unwrap();
    let d = a.dest();
    assert_eq!(r.version_dirs, vec!["0.1.0"]);
    assert!(r.has_bin);
    assert_eq!(r.entries, 14);
    let content_bytes = 27 + 13 + 6 + 4 + 23 + 10;
    assert_eq!(r.total_bytes, content_bytes);

    let mode = |p: &str| fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("bin/myapp"), 0o755);
    assert_eq!(mode("erts-13.1.5/bin/erl"), 0o755);
    assert_eq!(mode("releases/0.1.0/start.boot"), 0o644);
    assert_eq!(mode("releases/COOKIE"), 0o400);
    assert!(d.join("empty").is_dir());
    assert_eq!(
        fs::read_link(d.join("lib/current")).unwrap(),
        Path::new("myapp-0.1.0")
    );
    assert_eq!(
        fs::read(d.join("erts-13.1.5/bin/app")).unwrap(),
        b"#!/bin/sh\necho myapp 0.1.0\n"
    );
    assert!(d.join("lib/current/ebin/myapp.app").is_file());
    assert_eq!(
        fs::read(d.join("lib/copy.app")).unwrap(),
        b"{application,myapp,[]}."
    );
    assert_eq!(release_version(&d).as_deref(), Some("0.1.0"));
    // The executable really runs.
    let out = std::process::Command::new(d.join("bin/myapp"))
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"myapp 0.1.0\n");
    // Only dest in the parent: the temp dir was renamed, not copied.
    let names: Vec<_> = fs::read_dir(&a.out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("rel")]);
}

#[test]
fn dest_must_not_exist() {
    let a = Area::new();
    fs::create_dir(a.dest()).unwrap();
    let e = a.unpack(&Tb::new().release().gz()).unwrap_err();
    assert!(matches!(e, UnpackError::DestExists { .. }), "{e}");
    assert_eq!(fs::read_dir(&a.out).unwrap().count(), 1);
}

#[test]
fn rejects_parent_dir_components() {
    let a = Area::new();
    for name in ["../evil", "bin/../../evil", "./../evil", ".."] {
        let e = a.expect_err(&Tb::new().release().file(name, 0o644, b"x").gz());
        let (entry, problem) = unsafe_problem(&e);
        assert_eq!(entry, name);
        assert!(problem.contains("`..`"), "{e}");
    }
    // Nothing escaped either.
    assert!(!a.out.parent().unwrap().join("evil").exists());
}

#[test]
fn rejects_absolute_paths() {
    let a = Area::new();
    let target = a.out.parent().unwrap().join("abs-evil");
    let name = target.to_str().unwrap().to_owned();
    let e = a.expect_err(&Tb::new().release().file(&name, 0o644, b"x").gz());
    assert!(unsafe_problem(&e).1.contains("absolute"), "{e}");
    assert!(e.to_string().contains("myapp-0.1.0.tar.gz"), "{e}");
    assert!(!target.exists());
}

#[test]
fn rejects_escaping_symlinks() {
    let a = Area::new();
    let cases = [
        ("etc", "/etc/passwd", "absolute path"),
        ("bin/x", "../../x", "outside the tree"),
        ("x", "../x", "outside the tree"),
        ("lib/a/x", "b/../../../..", "`..` after a name"),
        ("lib/x", "", "empty target"),
    ];
    for (name, target, why) in cases {
        let e = a.expect_err(&Tb::new().release().symlink(name, target).gz());
        let (entry, problem) = unsafe_problem(&e);
        assert_eq!(entry, name);
        assert!(problem.contains(why), "{name} -> {target}: {e}");
    }
}

#[test]
fn rejects_writing_through_a_symlink() {
    let a = Area::new();
    // The link itself stays inside, but writing through it is refused.
    let e = a.expect_err(
        &Tb::new()
            .release()
            .symlink("l", "lib")
            .file("l/evil", 0o644, b"x")
            .gz(),
    );
    assert!(unsafe_problem(&e).1.contains("through a symlink"), "{e}");
}

#[test]
fn rejects_escaping_or_dangling_hardlinks() {
    let a = Area::new();
    for (target, why) in [
        ("../outside", "outside the tree"),
        ("/etc/passwd", "outside the tree"),
        ("lib/none", "not an earlier regular file"),
        ("lib", "not an earlier regular file"),
    ] {
        let e = a.expect_err(&Tb::new().release().hardlink("h", target).gz());
        assert!(unsafe_problem(&e).1.contains(why), "{target}: {e}");
    }
    // Through a symlink pointing outside (the symlink itself is refused first).
    let e = a.expect_err(
        &Tb::new()
            .release()
            .symlink("s", "/etc")
            .hardlink("h", "s/passwd")
            .gz(),
    );
    assert!(unsafe_problem(&e).1.contains("absolute"), "{e}");
}

#[test]
fn rejects_devices_and_fifos_and_duplicates() {
    let a = Area::new();
    for kind in [
        tar::EntryType::Fifo,
        tar::EntryType::Char,
        tar::EntryType::Block,
    ] {
        let e = a.expect_err(&Tb::new().release().raw("dev", kind, 0o644, b"", None).gz());
        assert!(unsafe_problem(&e).1.contains("unsupported type"), "{e}");
    }
    let e = a.expect_err(&Tb::new().release().file("bin/myapp", 0o755, b"again").gz());
    assert!(unsafe_problem(&e).1.contains("duplicate"), "{e}");
}

#[test]
fn rejects_truncated_and_corrupt_input() {
    let a = Area::new();
    let mut tb = Tb::new();
    tb.release();
    // Some incompressible content so that cuts land inside file data.
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    tb.file("lib/noise.bin", 0o644, &noise);
    let good = tb.gz();
    for cut in [good.len() / 2, good.len() - 4, 11] {
        let e = a.expect_err(&good[..cut]);
        assert!(
            matches!(e, UnpackError::Corrupt { .. }),
            "cut at {cut}: {e:?}"
        );
        assert!(e.to_string().contains("truncated or corrupt"), "{e}");
    }
    // A flipped byte in the compressed data: deflate or CRC error.
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    let e = a.expect_err(&flipped);
    assert!(matches!(e, UnpackError::Corrupt { .. }), "{e:?}");

    // Random bytes, empty file: not gzip.
    for bytes in [&noise[..4096], &[][..]] {
        let e = a.expect_err(bytes);
        assert!(matches!(e, UnpackError::NotGzip { .. }), "{e:?}");
        assert!(e.to_string().contains("is not a gzip file"), "{e}");
    }
    // gzip magic followed by garbage.
    let mut fake = vec![0x1f, 0x8b];
    fake.extend_from_slice(&noise[..1000]);
    assert!(matches!(a.expect_err(&fake), UnpackError::Corrupt { .. }));
    // A valid gzip of something that is not a tar.
    let e = a.expect_err(&gzip(&b"hello, not a tar\n".repeat(100)));
    assert!(matches!(e, UnpackError::Corrupt { .. }), "{e:?}");
    // A valid tar (not gzipped).
    let e = a.expect_err(&Tb::new().release().tar_bytes());
    assert!(matches!(e, UnpackError::NotGzip { .. }), "{e:?}");
}

#[test]
fn stops_a_bomb_at_the_limit() {
    let a = Area::new();
    let limits = UnpackLimits {
        max_total_bytes: 1024 * 1024,
        max_entries: 1000,
    };
    // One big file: 8 MiB of zeros compresses to a few KiB.
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let bomb = Tb::new().release().file("lib/zeros", 0o644, &zeros).gz();
    assert!(bomb.len() < 64 * 1024);
    let e = a.unpack_with(&bomb, &limits).unwrap_err();
    assert!(
        matches!(e, UnpackError::TooLarge { max, .. } if max == 1024 * 1024),
        "{e:?}"
    );
    a.assert_clean();
    // Many small files adding up past the limit.
    let mut tb = Tb::new();
    tb.release();
    for i in 0..20 {
        tb.file(&format!("lib/f{i}"), 0o644, &zeros[..100 * 1024]);
    }
    let e = a.unpack_with(&tb.gz(), &limits).unwrap_err();
    assert!(matches!(e, UnpackError::TooLarge { .. }), "{e:?}");
    a.assert_clean();
    // Too many entries.
    let mut tb = Tb::new();
    tb.release();
    for i in 0..1001 {
        tb.file(&format!("lib/e{i}"), 0o644, b"");
    }
    let e = a.unpack_with(&tb.gz(), &limits).unwrap_err();
    assert!(
        matches!(e, UnpackError::TooManyEntries { max: 1000, .. }),
        "{e:?}"
    );
    a.assert_clean();
    // Right under the limits is fine.
    let ok = Tb::new()
        .release()
        .file("lib/zeros", 0o644, &zeros[..1024 * 1024 - 100])
        .gz();
    let r = a.unpack_with(&ok, &limits).unwrap();
    assert!(r.total_bytes <= 1024 * 1024);
}

#[test]
fn stream_cap_stops_metadata_only_bombs() {
    // Content bytes stay at zero, but the decompressed stream is huge
    // (trailing zeros after the end marker): the stream cap catches it.
    let a = Area::new();
    let limits = UnpackLimits {
        max_total_bytes: 1024,
        max_entries: 10,
    };
    let mut with_tail = Vec::new();
    let mut tb = Tb::new();
    tb.file("bin/myapp", 0o755, b"#!/bin/sh\n");
    with_tail.extend_from_slice(&tb.tar_bytes());
    with_tail.extend(std::iter::repeat_n(0u8, 64 * 1024 * 1024));
    let e = a.unpack_with(&gzip(&with_tail), &limits).unwrap_err();
    assert!(matches!(e, UnpackError::TooLarge { .. }), "{e:?}");
    a.assert_clean();
}

#[test]
fn requires_an_executable_bin_app() {
    let a = Area::new();
    let e = a.expect_err(&Tb::new().file("releases/start_erl.data", 0o644, b"x").gz());
    assert!(matches!(e, UnpackError::NoBinary { .. }), "{e:?}");
    assert!(e.to_string().starts_with("no bin/myapp in tarball"), "{e}");
    let e = a.expect_err(&Tb::new().file("bin/myapp", 0o644, b"x").gz());
    assert!(
        matches!(e, UnpackError::BinaryNotExecutable { .. }),
        "{e:?}"
    );
    let e = a.expect_err(
        &Tb::new()
            .file("bin/other", 0o755, b"x")
            .symlink("bin/myapp", "other")
            .gz(),
    );
    assert!(
        matches!(e, UnpackError::BinaryNotExecutable { .. }),
        "{e:?}"
    );
    // An empty gzip: a valid, empty archive.
    let e = a.expect_err(&gzip(b""));
    assert!(matches!(e, UnpackError::NoBinary { .. }), "{e:?}");
}

#[test]
fn rejects_bad_app_names() {
    let a = Area::new();
    let t = a.tarball(&Tb::new().release().gz());
    let e = unpack_release(&t, &a.dest(), "../x", &UnpackLimits::default()).unwrap_err();
    assert!(matches!(e, UnpackError::InvalidApp { .. }), "{e:?}");
}

#[test]
fn sha256_of_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("f");
    fs::write(&p, b"abc").unwrap();
    assert_eq!(
        sha256_file(&p).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    fs::write(&p, &big).unwrap();
    assert_eq!(
        sha256_file(&p).unwrap(),
        hex::encode(sha2::Sha256::digest(&big))
    );
    let e = sha256_file(&tmp.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn release_version_reads_start_erl_data() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(release_version(tmp.path()), None);
    fs::create_dir(tmp.path().join("releases")).unwrap();
    let f = tmp.path().join("releases/start_erl.data");
    for (content, want) in [
        ("13.1.5 0.1.1\n", Some("0.1.1")),
        ("13.1.5 0.2.0", Some("0.2.0")),
        ("13.1.5\n", None),
        ("", None),
        ("13.1.5 ../x", None),
        ("13.1.5 0.1.0 extra", None),
    ] {
        fs::write(&f, content).unwrap();
        assert_eq!(release_version(tmp.path()).as_deref(), want, "{content:?}");
    }
}

/// A real `mix release` tarball: `DEPLOYEX_TEST_RELEASE_TARBALL`, or the
/// fixture cache at `tests/fixtures/.cache/*/*.tar.gz` when it was built.
fn real_tarballs() -> Vec<PathBuf> {
    if let Ok(p) = std::env::var("DEPLOYEX_TEST_RELEASE_TARBALL") {
        return vec![PathBuf::from(p)];
    }
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/.cache");
    let mut out = Vec::new();
    for dir in fs::read_dir(cache).into_iter().flatten().flatten() {
        for f in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().ends_with(".tar.gz") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out.truncate(2);
    out
}

#[test]
fn real_mix_release_if_available() {
    let tarballs = real_tarballs();
    if tarballs.is_empty() {
        eprintln!("no real release tarball available: skipped");
        return;
    }
    for t in tarballs {
        let file = t.file_name().unwrap().to_string_lossy().into_owned();
        let stem = file.trim_end_matches(".tar.gz");
        let (app, version) = stem.rsplit_once('-').unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("current");
        let r = unpack_release(&t, &dest, app, &UnpackLimits::default()).unwrap();
        assert!(r.entries > 100, "{r:?}");
        assert!(r.version_dirs.iter().any(|v| v == version), "{r:?}");
        assert_eq!(release_version(&dest).as_deref(), Some(version));
        // Executables kept their modes: the release script answers.
        let out = std::process::Command::new(dest.join("bin").join(app))
            .arg("version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{app} {version}")
        );
        // ERTS binaries kept theirs too.
        let erts = fs::read_dir(&dest)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("erts-"))
            .unwrap();
        let beam = erts.path().join("bin/beam.smp");
        assert_ne!(fs::metadata(beam).unwrap().permissions().mode() & 0o111, 0);
    }
}

#[test]
fn checks_names_from_pax_and_gnu_long_name_records() {
    let a = Area::new();
    // A PAX `path` record overrides the header's harmless name.
    let e = a.expect_err(
        &Tb::new()
            .release()
            .raw(
                "././@PaxHeader",
                tar::EntryType::XHeader,
                0o644,
                b"16 path=../evil\n",
                None,
            )
            .file("harmless", 0o644, b"x")
            .gz(),
    );
    assert_eq!(unsafe_problem(&e).0, "../evil", "{e}");
    // Same with a GNU long-name record.
    let e = a.expect_err(
        &Tb::new()
            .release()
            .raw(
                "././@LongLink",
                tar::EntryType::GNULongName,
                0o644,
                b"../evil\0",
                None,
            )
            .file("harmless", 0o644, b"x")
            .gz(),
    );
    assert_eq!(unsafe_problem(&e).0, "../evil", "{e}");
    // A legitimate long name (over 100 bytes) is fine.
    let long = format!("lib/{}/ebin/m.beam", "d".repeat(120));
    let mut tb = Tb::new();
    tb.release();
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    tb.b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
    a.unpack(&tb.gz()).unwrap();
    assert_eq!(fs::read(a.dest().join(&long)).unwrap(), b"abc");
}
