//! Hand-made bad tarballs for the rejection tests. The `tar` crate's
//! builder refuses `..` and absolute paths, so those headers are written by
//! hand (the bytes an attacker would send).

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

fn gz(tar: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(tar).unwrap();
    e.finish().unwrap()
}

/// A raw ustar header + data block for `name`.
fn raw_entry(name: &str, kind: u8, link: &str, data: &[u8], mode: u32) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
    out
}

fn with_bin(app: &str, mut extra: Vec<u8>) -> Vec<u8> {
    let mut tar = raw_entry(
        &format!("bin/{app}"),
        b'0',
        "",
        b"#!/bin/sh\nexit 0\n",
        0o755,
    );
    tar.append(&mut extra);
    tar.extend(std::iter::repeat_n(0u8, 1024));
    gz(&tar)
}

pub fn evil_tarball_dotdot(app: &str) -> Vec<u8> {
    with_bin(
        app,
        raw_entry("../../../escaped", b'0', "", b"pwned\n", 0o644),
    )
}

pub fn evil_tarball_absolute(app: &str) -> Vec<u8> {
    with_bin(
        app,
        raw_entry(
            "/tmp/deployex-test-escaped-absolute",
            b'0',
            "",
            b"pwned\n",
            0o644,
        ),
    )
}

pub fn evil_tarball_symlink(app: &str) -> Vec<u8> {
    with_bin(
        app,
        raw_entry(
            "lib/passwd",
            b'2',
            "../../../../../../etc/passwd",
            b"",
            0o777,
        ),
    )
}

pub fn tarball_without_bin() -> Vec<u8> {
    let mut tar = raw_entry(
        "releases/start_erl.data",
        b'0',
        "",
        b"13.1.5 0.5.6\n",
        0o644,
    );
    tar.extend(std::iter::repeat_n(0u8, 1024));
    gz(&tar)
}

/// `bin/{app}` but no `releases/start_erl.data`: not a mix release.
pub fn tarball_without_start_erl_data(app: &str) -> Vec<u8> {
    with_bin(
        app,
        raw_entry("releases/README", b'0', "", b"not a release\n", 0o644),
    )
}
