//! Fixture release tarballs built from `tests/fixtures/app` by
//! `tests/fixtures/build.sh` (see `tests/fixtures/README.md` for what each
//! version does), and helpers to unpack and run them.
//!
//! Invariant: the build runs at most once per app per test process (and
//! build.sh's flock + cache make it once per machine); the cached tarballs
//! are shared, so tests copy or unpack them and never modify them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::net::Epmd;

/// App name -> directory holding that app's tarballs.
static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());

fn build_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Directory with `APP-VSN.tar.gz` for every fixture version (and
/// `relup/APP-0.1.2.tar.gz`), building them on first use.
pub fn fixtures_dir(app: &str) -> PathBuf {
    built_dir("build.sh", app)
}

/// Directory with the rebar3/relx fixture tarballs `APP-VSN.tar.gz`
/// (`tests/fixtures/build-rebar3.sh`), building them on first use.
pub fn rebar3_fixtures_dir(app: &str) -> PathBuf {
    built_dir("build-rebar3.sh", app)
}

/// Directory with the two-application fixture tarballs `APP-VSN.tar.gz`
/// (`tests/fixtures/build-twoapp.sh`), building them on first use.
pub fn twoapp_fixtures_dir(app: &str) -> PathBuf {
    built_dir("build-twoapp.sh", app)
}

/// Path of the two-application fixture tarball `APP-VERSION.tar.gz`
/// (read-only).
pub fn twoapp_tarball(app: &str, version: &str) -> PathBuf {
    existing(twoapp_fixtures_dir(app).join(format!("{app}-{version}.tar.gz")))
}

/// Path of the rebar3 fixture tarball `APP-VERSION.tar.gz` (read-only).
pub fn rebar3_tarball(app: &str, version: &str) -> PathBuf {
    existing(rebar3_fixtures_dir(app).join(format!("{app}-{version}.tar.gz")))
}

fn built_dir(script_name: &str, app: &str) -> PathBuf {
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = format!("{script_name}/{app}");
    if let Some(dir) = built.get(&key) {
        return dir.clone();
    }
    let script = build_script(script_name);
    let output = Command::new("bash")
        .arg(&script)
        .args(["--app", app])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} --app {app} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        script.display(),
        output.status
    );
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        dir.is_dir(),
        "build.sh printed no fixtures directory:\n{stdout}\n{stderr}"
    );
    built.insert(key, dir.clone());
    dir
}

/// Path of the fixture tarball `APP-VERSION.tar.gz` (read-only: copy it).
pub fn fixture_tarball(app: &str, version: &str) -> PathBuf {
    existing(fixtures_dir(app).join(format!("{app}-{version}.tar.gz")))
}

/// Like [`fixture_tarball`] but the variant that ships
/// `releases/VERSION/relup` (only 0.1.2, upgrading from 0.1.1).
pub fn fixture_relup_tarball(app: &str, version: &str) -> PathBuf {
    existing(
        fixtures_dir(app)
            .join("relup")
            .join(format!("{app}-{version}.tar.gz")),
    )
}

fn existing(path: PathBuf) -> PathBuf {
    assert!(path.is_file(), "no fixture tarball {}", path.display());
    path
}

/// Extracts `tarball` into `dest` (created if missing).
pub fn unpack_tarball(tarball: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap_or_else(|e| panic!("mkdir {}: {e}", dest.display()));
    let output = Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(dest)
        .output()
        .unwrap_or_else(|e| panic!("cannot run tar: {e}"));
    assert!(
        output.status.success(),
        "tar -xzf {} failed: {}",
        tarball.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Environment variables that leak from a caller into a release and change
/// how it boots (NOTES-BEAM §2); removed from every [`release_command`].
const LEAKY_VARS: &[&str] = &[
    "ROOTDIR",
    "BINDIR",
    "EMU",
    "PROGNAME",
    "ELIXIR_ERL_OPTIONS",
    "ERL_FLAGS",
    "ERL_AFLAGS",
    "ERL_ZFLAGS",
];

/// `root/bin/APP` with a clean environment: no inherited `RELEASE_*`,
/// `FIXTURE_*` or VM flags, the test's own EPMD port, no crash dumps, and
/// `root` as the working directory. Add the subcommand and env yourself.
pub fn release_command(root: &Path, app: &str, epmd: &Epmd) -> Command {
    let mut cmd = Command::new(root.join("bin").join(app));
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("RELEASE_")
            || name.starts_with("FIXTURE_")
            || LEAKY_VARS.contains(&name.as_ref())
        {
            cmd.env_remove(&key);
        }
    }
    let (name, value) = epmd.env();
    cmd.env(name, value)
        .env("ERL_CRASH_DUMP_SECONDS", "0")
        .current_dir(root);
    cmd
}

/// An Elixir string literal holding `s` (no interpolation).
fn elixir_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' | '#' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The Elixir expression, for `bin/APP rpc`, that hot-upgrades the running
/// node to `to` from `tarball` (NOTES-BEAM §3). It builds the relup on the
/// node when the tarball has none, and prints `relup: shipped|built` and
/// `upgraded FROM -> TO` on success; any failure raises a MatchError (rpc
/// exits 1).
pub fn hot_upgrade_expr(app: &str, to: &str, tarball: &Path) -> String {
    let app = elixir_string(app);
    let to = elixir_string(to);
    let tarball = elixir_string(&tarball.to_string_lossy());
    format!(
        r#"app = {app}
to = {to}
tarball = {tarball}
root = List.to_string(:code.root_dir())
rel_dir = Path.join([root, "releases", to])
[{{_, from, _, :permanent}}] = Enum.filter(:release_handler.which_releases(), &(elem(&1, 3) == :permanent))
from = List.to_string(from)
File.rm_rf!(rel_dir)
File.mkdir_p!(rel_dir)
File.cp!(tarball, Path.join(rel_dir, app <> ".tar.gz"))
{{:ok, _}} = :release_handler.unpack_release(String.to_charlist(to <> "/" <> app))
if File.exists?(Path.join(rel_dir, "relup")) do
  IO.puts("relup: shipped")
else
  rel = fn vsn -> String.to_charlist(Path.join([root, "releases", app <> "-" <> vsn])) end
  {{:ok, _, _, _}} = :systools.make_relup(rel.(to), [rel.(from)], [rel.(from)], [:silent, {{:path, [String.to_charlist(root <> "/lib/*/ebin")]}}, {{:outdir, String.to_charlist(rel_dir)}}])
  IO.puts("relup: built")
end
{{:ok, _, _}} = :release_handler.check_install_release(String.to_charlist(to))
{{:ok, _, _}} = :release_handler.install_release(String.to_charlist(to), [{{:update_paths, true}}])
:ok = :release_handler.make_permanent(String.to_charlist(to))
IO.puts("upgraded " <> from <> " -> " <> to)
"#
    )
}
