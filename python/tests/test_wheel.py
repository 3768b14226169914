# test_wheel.py - the package as a user gets it: build the wheel from this checkout
# (which runs the Makefile and bundles libkvq), install it into a fresh venv, and run the
# examples there with no KVQ_LIBRARY, from a folder outside the source tree. Skips when
# a venv cannot be made here.
import glob
import os
import subprocess
import sys
import zipfile

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(PYTHON_DIR, "examples")


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    env_dir = root / "venv"
    made = run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)])
    py = env_dir / "bin" / "python"
    if made.returncode != 0 or not py.exists():
        pytest.skip("cannot create a venv here: " + made.stdout[-300:])
    if run([str(py), "-c", "import numpy"]).returncode != 0:
        pytest.skip("no numpy for the venv to see (it shares the system's site-packages)")
    env = dict(os.environ)
    lib = os.environ.get("KVQ_LIBRARY")
    if lib:  # build into the folder the library under test came from: make has little to do
        env["KVQ_BUILD_DIR"] = os.path.dirname(os.path.abspath(lib))
    env.pop("KVQ_LIBRARY", None)
    wheel_dir = root / "dist"
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), PYTHON_DIR],
        env=env,
    )
    assert built.returncode == 0, built.stdout[-3000:]
    wheels = glob.glob(str(wheel_dir / "kvq_cache-*.whl"))
    assert len(wheels) == 1, wheels
    inst = run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheels[0]])
    assert inst.returncode == 0, inst.stdout[-3000:]
    clean = {k: v for k, v in os.environ.items() if k not in ("KVQ_LIBRARY", "PYTHONPATH")}
    return py, wheels[0], root, clean


def test_wheel_is_platform_tagged_and_bundles_the_library(venv):
    _, wheel, _, _ = venv
    assert wheel.endswith(".whl") and "-py3-none-" in wheel and not wheel.endswith("-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read([n for n in names if n.endswith("dist-info/WHEEL")][0]).decode()
    assert "kvq/libkvq.so" in names and "kvq/hf.py" in names
    assert "Root-Is-Purelib: false" in meta


def test_installed_package_imports_its_own_library(venv):
    py, _, root, env = venv
    r = run([str(py), "-c", "import kvq; print(kvq.library_path); print(kvq.version())"],
            cwd=str(root), env=env)
    assert r.returncode == 0, r.stdout
    path = r.stdout.splitlines()[0]
    assert path.startswith(str(root / "venv")) and path.endswith("libkvq.so"), path


def test_library_needs_no_cuda_runtime(venv):
    _, wheel, root, _ = venv
    with zipfile.ZipFile(wheel) as z:
        so = z.extract("kvq/libkvq.so", str(root / "unpacked"))
    r = run(["readelf", "-d", so])
    if r.returncode != 0:
        pytest.skip("no readelf")
    needed = [l for l in r.stdout.splitlines() if "(NEEDED)" in l]
    assert needed and not any("cuda" in l for l in needed), needed


def test_examples_run_from_the_installed_wheel(venv):
    py, _, root, env = venv
    r = run([str(py), os.path.join(EXAMPLES, "quickstart.py")], cwd=str(root), env=env)
    assert r.returncode == 0, r.stdout
    assert "each query finds itself first" in r.stdout
    has_hf = run([str(py), "-c", "import torch, transformers"], env=env).returncode == 0
    if has_hf:
        r = run([str(py), os.path.join(EXAMPLES, "hf_generate.py")], cwd=str(root), env=env)
        assert r.returncode == 0, r.stdout
