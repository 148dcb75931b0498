"""The README's scripts. scripts/serve.sh's processes: the default bundle it builds in the background lives
only as long as the server it serves with (a Ctrl-C, a SIGTERM or a failed start left that build running
for its ten minutes). scripts/test.sh runs only the tests a path given to it names.

The script runs from a copy of itself in a temporary tree whose setup, lmroute-export and lmroute-serve are
stand-ins: what is under test is the script's handling of its processes, not the commands it starts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_SETUP = "#!/usr/bin/env bash\nexit 0\n"
_EXPORT = """#!/usr/bin/env bash
# the starter build (--encoder static) writes a bundle at once; the default build runs until stopped
out=""; starter=0
while [ $# -gt 0 ]; do
  case $1 in --out) out=$2; shift;; --encoder) starter=1;; esac
  shift
done
if [ $starter = 1 ]; then mkdir -p "$out"; echo '{}' > "$out/manifest.json"; exit 0; fi
echo $$ > "$out.build.pid"
exec -a "build-stand-in $PWD" sleep 300
"""
_SERVE = """#!/usr/bin/env bash
for arg in "$@"; do  # argparse: the usage, exit 0 (with --check too)
  if [ "$arg" = --help ]; then echo "usage: lmroute-serve [-h] ..."; exit 0; fi
done
if [ "$1" = --check ]; then  # the settings and ports, before any bundle is built
  if [ "$FAKE_SERVE" = busy ]; then echo "lmroute-serve: config error: port: in use" >&2; exit 2; fi
  exit 0
fi
if [ "$FAKE_SERVE" = fail ]; then  # a failure found a second in, loading the bundle
  sleep 1; echo "lmroute-serve: cannot load bundle: broken" >&2; exit 1
fi
trap 'exit 0' TERM INT
echo "lmroute-serve: serving" >&2
sleep 300 & wait
"""


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "serve.sh", root / "scripts" / "serve.sh")
    (root / ".venv" / "bin").mkdir(parents=True)
    for path, text in (
        (root / "scripts" / "setup.sh", _SETUP),
        (root / ".venv" / "bin" / "lmroute-export", _EXPORT),
        (root / ".venv" / "bin" / "lmroute-serve", _SERVE),
    ):
        path.write_text(text)
        path.chmod(0o755)
    return root


def _build_pid(root: Path) -> int:
    pid_file = root / "artifacts" / "default.build.pid"
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the background build did not start"
        time.sleep(0.05)
    return int(pid_file.read_text())


def _builds(root: Path) -> list[int]:
    """The stand-in builds of this tree still running."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"build-stand-in {root}".encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LMROUTE_")}


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_the_background_build_stops_with_the_server(tmp_path: Path, stop: str) -> None:
    root = _tree(tmp_path)
    proc = subprocess.Popen([str(root / "scripts" / "serve.sh")], env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        build = _build_pid(root)
        assert proc.stderr is not None
        while "serving" not in proc.stderr.readline():
            assert proc.poll() is None, "the server stand-in exited"
        proc.send_signal(getattr(signal, stop))  # the script's process is the server's (exec)
        assert proc.wait(20) == 0
        assert _gone(build), f"the background build {build} outlived the server"
        assert not _builds(root)
    finally:
        proc.kill()
        proc.wait(10)


def _serve_sh(root: Path, fake_serve: str) -> subprocess.CompletedProcess[str]:
    """serve.sh of the tree run to its end, its server stand-in told `fake_serve` (fail, busy)."""
    return subprocess.run(
        [str(root / "scripts" / "serve.sh")],
        env={**_env(), "FAKE_SERVE": fake_serve},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_server_that_fails_to_start_leaves_no_build_running(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    done = _serve_sh(root, "fail")
    assert done.returncode == 1 and "cannot load bundle" in done.stderr
    build = _build_pid(root)  # it ran while the server loaded
    assert _gone(build), "the background build outlived a server that never started"
    assert not _builds(root)


def test_test_sh_runs_only_the_tests_a_path_names() -> None:
    """`scripts/test.sh tests/unit/test_logs.py` ran every tier as well (it put `tests` before the path)."""
    one = subprocess.run(
        [str(REPO / "scripts" / "test.sh"), "--collect-only", "-q", "tests/unit/test_logs.py"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    collected = [line for line in one.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/unit/test_logs.py::") for line in collected), collected[:5]


def test_a_port_in_use_stops_serve_sh_before_it_builds_a_bundle(tmp_path: Path) -> None:
    """The first run built its starter bundle (a minute) and started the default build before the server
    found its port taken."""
    root = _tree(tmp_path)
    done = _serve_sh(root, "busy")
    assert done.returncode == 2 and "port: in use" in done.stderr
    assert not (root / "artifacts").exists() and not _builds(root)


def test_serve_sh_help_prints_the_usage_and_builds_nothing(tmp_path: Path) -> None:
    """`serve.sh --help` printed the usage (from --check, which exits 0 on it), then built a starter bundle,
    started the default build and served."""
    root = _tree(tmp_path)
    done = subprocess.run(
        [str(root / "scripts" / "serve.sh"), "--help"], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: lmroute-serve"), (done.stdout, done.stderr)
    assert not (root / "artifacts").exists() and not _builds(root)


@pytest.mark.parametrize("form", ["--bundle DIR", "--bundle=DIR"])
def test_serve_sh_serves_the_bundle_its_arguments_name_and_builds_no_other(tmp_path: Path, form: str) -> None:
    """`serve.sh --bundle DIR` (a bundle that exists) serves DIR as it is; it built a starter bundle in
    artifacts/default and started the ten-minute default build there, then served DIR (the last flag)."""
    root = _tree(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text("{}")
    args = ["--bundle", str(mine)] if form == "--bundle DIR" else [f"--bundle={mine}"]
    done = subprocess.run(
        [str(root / "scripts" / "serve.sh"), *args],
        env={**_env(), "FAKE_SERVE": "fail"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "building" not in done.stdout, done.stdout
    assert not (root / "artifacts").exists() and not _builds(root)


def test_lmroute_serve_check_names_a_port_in_use_and_loads_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = [sys.executable, "-m", "lmroute.service.main", "--check", "--bundle", str(tmp_path / "none")]
        busy = subprocess.run([*serve, "--port", str(port)], capture_output=True, text=True, timeout=60)
        assert busy.returncode == 2
        assert busy.stderr.strip() == (
            f"lmroute-serve: config error: port: cannot listen on 127.0.0.1:{port} (port {port} of 127.0.0.1 is in use)"
        )
        metrics = subprocess.run(
            [*serve, "--port", "0", "--metrics-port", str(port)], capture_output=True, text=True, timeout=60
        )
        assert metrics.returncode == 2 and f"metrics_port: cannot listen on 127.0.0.1:{port}" in metrics.stderr
    free = subprocess.run([*serve, "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert free.returncode == 0 and "settings and ports checked" in free.stderr
    # what a start would refuse, said by --check too (serve.sh runs it before a bundle build of minutes)
    plugin = subprocess.run([*serve, "--port", "0", "--plugin", "no_such_module_xyz"], capture_output=True, text=True)
    assert (
        plugin.returncode == 2
        and "config error: plugins: router kind plugin 'no_such_module_xyz' cannot be" in plugin.stderr
    )
    not_pem = tmp_path / "bin.pem"
    not_pem.write_bytes(b"\x00\x01 not a certificate")
    tls = subprocess.run(
        [*serve, "--port", "0", "--tls-cert-file", str(not_pem), "--tls-key-file", str(not_pem)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tls.returncode == 2 and f"config error: tls: {not_pem}" in tls.stderr, tls.stderr
    typo = subprocess.run(
        [*serve, "--port", "0"], capture_output=True, text=True, env={**os.environ, "LMROUTE_PLUGIN": "x"}, timeout=60
    )
    assert typo.returncode == 0 and (
        "warning: LMROUTE_PLUGIN is no setting's variable and is ignored (did you mean LMROUTE_PLUGINS?)" in typo.stderr
    )


_EC112_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEykWOgPG+6ViSuQsdsauvEEf70wiJgQQg
lk0rrg==
-----END PUBLIC KEY-----
"""  # secp112r1: a curve the cryptography library cannot load


def test_lmroute_serve_check_refuses_what_the_start_refuses_with_its_message(tmp_path: Path) -> None:
    """A --bundle-public-key that holds no Ed25519 public key (an X25519 key, a key on an unsupported
    curve) and a share target of a tenant --tenants leaves out: --check passed them (exit 0), the start
    then refused them (exit 2). Both refuse now, with the same line (the start fails on them before it
    loads the bundle, which does not exist here)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    x25519 = tmp_path / "x25519.pub"
    x25519.write_bytes(
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    ec112 = tmp_path / "ec112.pub"
    ec112.write_bytes(_EC112_PUBLIC)
    serve = [sys.executable, "-m", "lmroute.service.main", "--bundle", str(tmp_path / "none"), "--port", "0"]
    cases = [
        (
            ["--bundle-public-key", str(x25519)],
            f"lmroute-serve: config error: bundle_public_key: {x25519}: not an Ed25519 public key (X25519PublicKey)",
        ),
        (
            ["--bundle-public-key", str(ec112)],
            f"lmroute-serve: config error: bundle_public_key: {ec112}: not an Ed25519 public key (an unsupported "
            "algorithm: Curve 1.3.132.0.6 is not supported)",
        ),
        (
            ["--share-targets", "x=0.2", "--tenants", "y"],
            "lmroute-serve: config error: share_targets: x is not one of the tenants this server honours (--tenants, "
            "the tenants of bound tokens, default): no call could use the target",
        ),
    ]
    for extra, says in cases:
        for check in (["--check"], []):
            done = subprocess.run([*serve, *check, *extra], capture_output=True, text=True, timeout=120)
            assert done.returncode == 2, (check, extra, done.stderr)
            assert done.stderr.strip().splitlines()[-1] == says, (check, extra)
    fine = subprocess.run(
        [*serve, "--check", "--share-targets", "y=0.2", "--tenants", "y"], capture_output=True, text=True, timeout=60
    )
    assert fine.returncode == 0 and "settings and ports checked" in fine.stderr
