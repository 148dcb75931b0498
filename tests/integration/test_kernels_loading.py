"""The compiled core refuses to load when it is missing, built for another ABI, corrupt or stale, with a
message that names the cause, and `lmroute-serve` stops at startup (exit 1) instead of falling back.

Each case copies the lmroute.kernels package (sources + the built _core) into a temporary directory,
breaks one thing, and imports it in a fresh interpreter.
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lmroute.kernels
from lmroute.kernels import compiled

KERNELS = Path(lmroute.kernels.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
SITE = next(p for p in sys.path if p.endswith("site-packages"))


def _copy_package(root: Path, name: str = "lmk_copy", *, with_core: bool = True) -> Path:
    pkg = root / name
    pkg.mkdir(parents=True)
    for item in ("__init__.py", "compiled.py", "reference.py", "wordpiece_chars.py"):
        shutil.copy(KERNELS / item, pkg / item)
    shutil.copytree(KERNELS / "src", pkg / "src")
    if with_core:
        shutil.copy(compiled._core.__file__, pkg / f"_core{SUFFIX}")
    return pkg


def _import(root: Path, module: str = "lmk_copy.compiled") -> subprocess.CompletedProcess[str]:
    code = f"import sys; sys.path.insert(0, {str(root)!r}); import {module}; print('loaded')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_an_intact_copy_loads(tmp_path: Path) -> None:
    _copy_package(tmp_path)
    out = _import(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "loaded"


def test_missing_module(tmp_path: Path) -> None:
    _copy_package(tmp_path, with_core=False)
    err = _import(tmp_path).stderr
    assert "KernelUnavailableError: the compiled scoring core lmk_copy._core is missing" in err
    assert f"no _core module was found; this Python needs a file ending in {SUFFIX!r}" in err
    assert "rebuild it with scripts/setup.sh" in err


def test_module_built_for_another_python(tmp_path: Path) -> None:
    pkg = _copy_package(tmp_path, with_core=False)
    other = "_core.cpython-310-x86_64-linux-gnu.so"
    shutil.copy(compiled._core.__file__, pkg / other)
    err = _import(tmp_path).stderr
    assert f"is missing (found only ['{other}']; this Python needs a file ending in {SUFFIX!r})" in err


def test_corrupt_module(tmp_path: Path) -> None:
    pkg = _copy_package(tmp_path, with_core=False)
    (pkg / f"_core{SUFFIX}").write_bytes(b"not an ELF file")
    err = _import(tmp_path).stderr
    assert "cannot be loaded (" in err
    assert "it was probably built for another Python or platform" in err


def test_stale_build_from_other_sources(tmp_path: Path) -> None:
    pkg = _copy_package(tmp_path)
    src = pkg / "src" / "bt_solve.cpp"
    src.write_text(src.read_text() + "\n// edited after the build\n")
    err = _import(tmp_path).stderr
    assert "was built from other sources than" in err and "a stale build" in err


def test_abi_version_mismatch(tmp_path: Path) -> None:
    pkg = _copy_package(tmp_path)
    text = (pkg / "compiled.py").read_text()
    built = int(re.search(r"^ABI_VERSION = (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    (pkg / "compiled.py").write_text(text.replace(f"ABI_VERSION = {built}\n", f"ABI_VERSION = {built + 1}\n", 1))
    err = _import(tmp_path).stderr
    assert f"has ABI version {built}, this wrapper needs {built + 1}" in err


def test_server_stops_at_startup_without_the_core(tmp_path: Path) -> None:
    """lmroute-serve with every package importable but no compiled core: exit 1, the reason on stderr."""
    root = tmp_path / "pkgs"
    root.mkdir()
    # the lmroute namespace laid out as the installed package has it, with a kernels/ without its core
    _copy_package(root, "lmroute/kernels", with_core=False)
    for name, target in (
        ("lmroute/__init__.py", REPO / "proto" / "lmroute" / "__init__.py"),
        ("lmroute/v1", REPO / "proto" / "lmroute" / "v1"),
        ("lmroute/service", REPO / "service"),
        ("lmroute/bundle", REPO / "bundle"),
        ("lmroute/outcomes", REPO / "outcomes"),
    ):
        (root / name).symlink_to(target)
    # -S: no site processing, so the editable install's finder cannot supply the real core.
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{SITE}"}
    code = "import sys; from lmroute.service.main import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code, "--bundle", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 1, out.stderr
    assert "lmroute-serve: the compiled scoring core lmroute.kernels._core is missing" in out.stderr
    assert "Traceback" not in out.stderr
