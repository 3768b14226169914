"""Builds libkvq with the repository's Makefile and puts it inside the package, so the
wheel (platform-tagged, not pure) imports with no environment variables.

The source tree is the directory above this one (a checkout), or KVQ_SOURCE_DIR.
KVQ_BUILD_DIR (default: build) is the Makefile's BUILD folder, so a tree already built
is reused; KVQ_MAKE_FLAGS adds make arguments (e.g. NO_CUDA=1). With CUDA's nvcc on the
build machine the kernels are compiled in and the CUDA runtime linked statically: the
library still loads on hosts without CUDA and finds the driver when first used."""

import glob
import os
import shlex
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools before 70.1
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))


def source_dir():
    root = os.environ.get("KVQ_SOURCE_DIR") or os.path.dirname(HERE)
    if not os.path.exists(os.path.join(root, "include", "kvq.h")):
        raise RuntimeError(
            "kvq: the C sources are not beside this package (looked in %s); build from a "
            "checkout of the repository (pip install ./python) or set KVQ_SOURCE_DIR" % root
        )
    return root


def build_library():
    """make the shared library; returns the path of the real file (not a symlink)."""
    root = source_dir()
    build = os.environ.get("KVQ_BUILD_DIR", "build")
    jobs = os.environ.get("KVQ_MAKE_JOBS", str(min(os.cpu_count() or 1, 8)))
    cmd = ["make", "-C", root, "-j" + jobs, "BUILD=" + build, "lib"]
    cmd += shlex.split(os.environ.get("KVQ_MAKE_FLAGS", ""))
    subprocess.check_call(cmd)
    build_abs = build if os.path.isabs(build) else os.path.join(root, build)
    found = [p for p in glob.glob(os.path.join(build_abs, "libkvq.so.*.*.*")) if not os.path.islink(p)]
    if not found:
        raise RuntimeError("kvq: make built no libkvq.so.X.Y.Z in %s" % build_abs)
    return max(found, key=os.path.getmtime)


class BuildPyWithLibrary(build_py):
    def run(self):
        super().run()
        lib = build_library()
        target = os.path.join(self.build_lib, "kvq", "libkvq.so")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(lib, target)
        os.chmod(target, 0o755)
        if shutil.which("strip"):  # the debug info is most of the file
            subprocess.call(["strip", "--strip-debug", target])


class NativeDistribution(Distribution):
    """Holds a native library: its files go to platlib and the wheel is not pure."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """The wheel holds a native library: tag it for this platform, any Python 3 (the
    package is ctypes only, so no CPython ABI is involved)."""

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(
    distclass=NativeDistribution,
    cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel},
)
