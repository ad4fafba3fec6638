"""Thin setuptools driver that builds semimoe's compiled kernels with CMake.

Environment variables (all optional):
  SEMIMOE_CUDA            AUTO (default) | ON | OFF. AUTO builds ``semimoe._C_cuda``
                          when a CUDA compiler is found; ON fails without one.
  SEMIMOE_CUDA_ARCHS      CMake CUDA architectures, default "80;90".
  SEMIMOE_BUILD_TYPE      CMake build type, default Release.
  SEMIMOE_BUILD_JOBS      parallel build jobs, default: number of CPUs.
  CMAKE_ARGS              extra arguments passed to CMake verbatim.
"""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _find_nvcc():
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        # Both modules (_C and _C_cuda) come from one CMake project; build it once.
        if getattr(self, "_semimoe_built", False):
            return
        self._semimoe_built = True

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = os.environ.get("SEMIMOE_BUILD_TYPE", "Release")
        cuda_mode = os.environ.get("SEMIMOE_CUDA", "AUTO").upper()
        if cuda_mode not in ("AUTO", "ON", "OFF"):
            raise SystemExit(f"SEMIMOE_CUDA must be AUTO, ON or OFF, got {cuda_mode!r}")
        archs = os.environ.get("SEMIMOE_CUDA_ARCHS", "80;90")
        nvcc = _find_nvcc()
        if cuda_mode == "ON" and nvcc is None:
            raise SystemExit("SEMIMOE_CUDA=ON but no CUDA compiler (nvcc) was found; "
                             "set CUDACXX or CUDA_HOME, or use SEMIMOE_CUDA=AUTO/OFF")

        import pybind11

        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DSEMIMOE_CUDA={cuda_mode}",
            f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
        ]
        if nvcc is not None and cuda_mode != "OFF":
            cmake_args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        ninja = shutil.which("ninja")
        if ninja:
            cmake_args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        cmake_args += shlex.split(os.environ.get("CMAKE_ARGS", ""))

        build_temp = Path(self.build_temp) / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)
        # Two `pip install .` from one checkout share build/: the second waits
        # here for the first instead of both writing the same CMake tree.
        self._lock = _lock_folder(build_temp)
        # pip builds in a fresh isolated environment each time: a cache from an
        # earlier build points at tools (ninja, pybind11) that no longer exist.
        for stale in ("CMakeCache.txt", "CMakeFiles"):
            p = build_temp / stale
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        jobs = os.environ.get("SEMIMOE_BUILD_JOBS", str(os.cpu_count() or 2))

        print("semimoe build configuration:", flush=True)
        print(f"  build type      : {build_type}", flush=True)
        print(f"  SEMIMOE_CUDA    : {cuda_mode}", flush=True)
        print(f"  nvcc            : {nvcc or 'not found'}", flush=True)
        print(f"  CUDA module     : "
              f"{'will build _C_cuda' if (nvcc and cuda_mode != 'OFF') else 'skipped'}", flush=True)
        print(f"  CUDA archs      : {archs}", flush=True)
        print(f"  output dir      : {extdir}", flush=True)

        subprocess.run(["cmake", str(ROOT), *cmake_args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_temp, check=True)
        summary = build_temp / "semimoe_build_summary.txt"
        if summary.exists():
            print(summary.read_text(), flush=True)


def _lock_folder(folder: Path):
    """An exclusive lock on ``folder`` (flock; released when the build process
    ends). Blocks, with a message, while another build holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock
        return None
    f = open(folder / ".build.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"semimoe: another build is using {folder}; waiting for it to finish", flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
    return f


setup(
    ext_modules=[CMakeExtension("semimoe._C")],
    cmdclass={"build_ext": CMakeBuild},
)
