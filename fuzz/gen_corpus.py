#!/usr/bin/env python3
"""Regenerates the seed corpus in fuzz/corpus/ (small, hand-picked inputs).

Run from anywhere: python3 fuzz/gen_corpus.py. Needs `erl` for the term
seeds (skipped when missing). Seeds are committed; libFuzzer adds its own
finds under corpus/<target>/ during `make fuzz` (not committed unless new
coverage is worth keeping).
"""
import io, os, subprocess, tarfile, gzip

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# current.json
put("current_json", "full.json", '{"version":"0.1.1","pre_commands":["eval Fixture.Migrator.migrate"],"hash":"abc","sha256":"' + "AB" * 32 + '"}')
put("current_json", "minimal.json", '{"version":"1.0.0-rc.1+build_7"}')
put("current_json", "traversal.json", '{"version":"../../etc"}')
put("current_json", "types.json", '{"version":1,"pre_commands":"x","sha256":null}')
put("current_json", "not_object.json", '[{"version":"0.1.0"}]')


# tarballs: mode byte 0 = tar stream (gzipped by the harness), 1 = raw .tar.gz
def tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                t.addfile(info)
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = link
                t.addfile(info)
            elif kind == "hard":
                info.type = tarfile.LNKTYPE
                info.linkname = link
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


release = [
    ("bin", "dir", b"", ""),
    ("bin/app", "file", b"#!/bin/sh\nexit 0\n", ""),
    ("releases/0.1.0/start.boot", "file", b"boot", ""),
    ("releases/start_erl.data", "file", b"13.2 0.1.0\n", ""),
    ("lib/app-0.1.0/ebin/app.app", "file", b"{application,app,[]}.\n", ""),
    ("erts-13.2/bin/erl", "sym", b"", "../../bin/app"),
    ("lib/app-0.1.0/priv", "hard", b"", "bin/app"),
]
put("unpack", "release.tar", b"\0" + tar(release))
put("unpack", "release.tar.gz", b"\1" + gzip.compress(tar(release), 1))
put("unpack", "symlink_escape.tar", b"\0" + tar([("bin/app", "file", b"x", ""), ("lib", "sym", b"", "../../.."), ("lib/evil", "file", b"x", "")]))
put("unpack", "absolute_link.tar", b"\0" + tar([("bin/app", "file", b"x", ""), ("etc", "sym", b"", "/etc")]))
put("unpack", "hardlink_out.tar", b"\0" + tar([("bin/app", "file", b"x", ""), ("h", "hard", b"", "../../in.tar.gz")]))
put("unpack", "many_entries.tar", b"\0" + tar([("bin/app", "file", b"x", "")] + [(f"d/{i}", "file", b"", "") for i in range(80)]))
put("unpack", "bomb.tar.gz", b"\1" + gzip.compress(tar([("bin/app", "file", b"x", ""), ("zeros", "file", bytes(300 * 1024), "")]), 9))

# Erlang external terms, written by a real node.
terms = {
    "tuple.bin": '{ok, <<"bin">>, "charlist", [1,2,3|tail], 1.5, -7, 123456789012345678901234567890}',
    "map.bin": "#{node => 'dxtest-1@host', pid => self(), ref => make_ref()}",
    "fun.bin": "{fun lists:map/2, [\"a\", <<255>>, []]}",
    "unicode.bin": "[8364, 233, \"h\\x{e9}llo\"]",
}
for name, expr in terms.items():
    try:
        out = subprocess.run(
            ["erl", "-noshell", "-eval",
             f"io:put_chars(io_lib:format(\"~w\", [binary_to_list(term_to_binary({expr}))])), halt()."],
            capture_output=True, text=True, check=True, timeout=60).stdout
        put("term_decode", name, bytes(eval(out)))
    except (OSError, subprocess.SubprocessError) as e:
        print(f"skipping {name}: {e}")
put("term_decode", "deep_list.bin", b"\x83" + b"l\x00\x00\x00\x01" * 200 + b"jj")
put("term_decode", "huge_list_len.bin", b"\x83l\xff\xff\xff\xffj")

# config: ENV lines, NUL, TOML file
put("config", "local.txt", "DEPLOYEX_MONITORED_REPLICAS=2\n\0monitored_app_name = \"myapp\"\nmonitored_app_port = 4000\n")
put("config", "prod.txt", "DEPLOYEX_CLOUD_ENVIRONMENT=prod\nDEPLOYEX_AWS_REGION=us-east-2\n\0release_adapter = \"s3\"\nmonitored_replicas = 3\n")
put("config", "ports_wrap.txt", "DEPLOYEX_MONITORED_APP_PORT=65534\nDEPLOYEX_MONITORED_REPLICAS=5\n\0")
put("config", "bad_toml.txt", "\0monitored_replicas = [1, 2]\nunknown_key = 1\n[table]\n")
put("config", "durations.txt", "DEPLOYEX_MIN_READY_MS=99999999999999999999\nDEPLOYEX_SESSION_TTL_S=-1\n\0deploy_schedule_interval_ms = 1e10\n")
