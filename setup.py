"""Builds the compiled scoring core lmroute.kernels._core with CMake (kernels/CMakeLists.txt).

Everything else about the package lives in pyproject.toml; this file only teaches setuptools'
build_ext to run CMake for one extension and put the result where setuptools expects it (in the
wheel, or next to kernels/*.py for the editable install that scripts/setup.sh makes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path) -> None:
        super().__init__(name, sources=[])
        self.source_dir = source_dir


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        import nanobind

        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        tools = Path(sys.executable).parent  # the pinned cmake / ninja of requirements/lock.txt
        cmake = str(tools / "cmake") if (tools / "cmake").exists() else shutil.which("cmake") or "cmake"
        ninja = str(tools / "ninja") if (tools / "ninja").exists() else shutil.which("ninja")
        configure = [
            cmake,
            "-S",
            str(ext.source_dir),
            "-B",
            str(build_dir),
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dnanobind_DIR={nanobind.cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if ninja:
            configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        subprocess.run(configure, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run([cmake, "--build", str(build_dir), "--parallel", jobs], check=True)
        built = sorted(build_dir.glob("_core*" + Path(target.name).suffix))
        if len(built) != 1:
            raise RuntimeError(f"expected one _core module in {build_dir}, found {built}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[0], target)


setup(
    ext_modules=[CMakeExtension("lmroute.kernels._core", ROOT / "kernels")],
    cmdclass={"build_ext": CMakeBuild},
)
