"""The package as shipped and as imported.

Whichever copy Python imports (the source tree's, from a checkout's root, or an installed
one) is the whole package: ``gpucnn.kernels`` lives inside ``gpucnn``. The sdist and the
wheel hold the kernels and their CUDA sources as files. ``.ci/run`` also runs this file
(with a few others) against the built wheel from outside the source tree, with
``GPUCNN_EXPECT_INSTALLED=1``; see CONTRIBUTING.md, "Continuous integration".
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn.kernels import KERNEL_OPERATIONS
from gpucnn.models import build_model
from gpucnn.optimizers import AdaGrad

ROOT = Path(__file__).resolve().parents[1]
IN_CHECKOUT = (ROOT / "pyproject.toml").is_file() and (ROOT / "kernels" / "__init__.py").is_file()
EXPECT_INSTALLED = os.environ.get("GPUCNN_EXPECT_INSTALLED") == "1"
KERNEL_MODULES = ("generic", "numpy_set", "cuda_set", "emu", "compile_check")
CUDA_SUFFIXES = (".cu", ".cuh", ".h")


def test_gpucnn_and_its_kernels_are_one_package():
    package = Path(gpucnn.__file__).parent
    assert Path(gpucnn.kernels.__file__).parent == package / "kernels"
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"gpucnn.kernels.{name}")
        assert Path(module.__file__).parent == package / "kernels", name


@pytest.mark.skipif(not IN_CHECKOUT, reason="needs the source tree")
def test_source_tree_gpucnn_holds_its_kernels_through_a_link():
    link = ROOT / "gpucnn" / "kernels"
    assert link.is_symlink() and os.readlink(link) == "../kernels"  # relative: survives a move of the checkout
    assert (link / "__init__.py").samefile(ROOT / "kernels" / "__init__.py")


@pytest.mark.skipif(not EXPECT_INSTALLED, reason="set GPUCNN_EXPECT_INSTALLED=1 to check an installed wheel")
def test_the_installed_wheel_is_the_copy_imported():
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    for module in (gpucnn, gpucnn.kernels):
        where = Path(module.__file__).resolve()
        assert site & set(where.parents), f"{module.__name__} imported from {where}, not from {sorted(site)}"
    direct_url = importlib.metadata.distribution("gpucnn").read_text("direct_url.json")
    assert direct_url is None or not json.loads(direct_url).get("dir_info", {}).get("editable", False)


@pytest.mark.skipif(
    (Path(gpucnn.__file__).parents[1] / "benchmarks" / "report.py").is_file(),
    reason="gpucnn is imported from a source checkout, which has the benchmark suite",
)
def test_gpucnn_bench_outside_a_checkout_says_where_the_suite_is(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "gpucnn", "bench", "--out", str(tmp_path / "r")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and not (tmp_path / "r").exists()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "benchmarks/ folder of a gpucnn source checkout" in lines[0], run.stderr


def test_package_data_holds_every_cuda_source():
    from gpucnn.kernels.cuda_set import CUDA_SOURCES
    from gpucnn.kernels.emu import SHIM

    cuda = importlib.resources.files("gpucnn.kernels") / "cuda"
    shipped = {entry.name for entry in cuda.iterdir() if entry.name.endswith(CUDA_SUFFIXES)}
    needed = {"emu_shim.h", "emu_cooperative.h", "emu_coalescing.h"} | {source.file for source in CUDA_SOURCES}
    for source in CUDA_SOURCES:
        needed |= set(re.findall(r'#include "([^"]+)"', source.path.read_text()))
    assert needed <= shipped, f"missing: {sorted(needed - shipped)}"
    assert SHIM.is_file()
    if IN_CHECKOUT:
        assert shipped == {p.name for p in (ROOT / "kernels" / "cuda").iterdir() if p.name.endswith(CUDA_SUFFIXES)}


def test_every_kernel_set_loads_and_agrees_with_numpy(backend, numpy_kernels):
    assert [op for op in KERNEL_OPERATIONS if not callable(getattr(backend.kernels, op, None))] == []
    x = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    col = backend.kernels.im2col(backend.asarray(x), 3, 3, 1, 1)
    np.testing.assert_array_equal(backend.to_numpy(col), numpy_kernels.im2col(x, 3, 3, 1, 1))  # a copy: exact


def test_a_short_training_run_lowers_the_loss(backend):
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, 60)
    x = rng.random((60, 1, 12, 12), dtype=np.float32)
    for i, c in enumerate(t):
        x[i, 0, 4 * c : 4 * c + 4, :] += 1.0  # each class brightens its own rows
    model = build_model("simple_convnet", (1, 12, 12), 3, seed=0)
    model.optimizer = AdaGrad(lr=0.05)
    before = model.loss(x, t, train=False)
    history = model.fit(x, t, batch_size=20, epochs=3, seed=0, verbose=0)
    assert len(history.history["loss"]) == 3
    assert model.loss(x, t, train=False) < 0.5 * before


def _copy_of_the_tree(target: Path) -> Path:
    """The checkout without its virtual environments, builds and caches (symbolic links kept)."""
    junk = shutil.ignore_patterns(
        ".git",
        ".venv",
        "venv",
        "build",
        "dist",
        "*.egg-info",
        "__pycache__",
        ".*_cache",
        ".hypothesis",
        ".benchmarks",
        ".whl",
        "runs",
    )
    shutil.copytree(ROOT, target, symlinks=True, ignore=junk)
    return target


def _kernel_files() -> dict[str, bytes]:
    """``{path inside kernels/: content}`` of the files the package ships from kernels/."""
    base = ROOT / "kernels"
    files = [p for p in base.glob("*.py")] + [p for p in (base / "cuda").iterdir() if p.name.endswith(CUDA_SUFFIXES)]
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in files}


@pytest.mark.slow
@pytest.mark.skipif(not IN_CHECKOUT, reason="needs the source tree")
def test_sdist_and_wheel_hold_the_kernels_as_files(tmp_path):
    pytest.importorskip("build", reason="the dev extra installs build")
    tree = _copy_of_the_tree(tmp_path / "tree")
    dist = tmp_path / "dist"
    made = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    expected = _kernel_files()

    (wheel,) = dist.glob("gpucnn-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        entries = {i.filename: i for i in zf.infolist() if i.filename.startswith("gpucnn/kernels/")}
        links = [name for name, i in entries.items() if stat.S_ISLNK(i.external_attr >> 16)]
        assert links == []
        assert {name.removeprefix("gpucnn/kernels/"): zf.read(name) for name in entries} == expected

    (sdist,) = dist.glob("gpucnn-*.tar.gz")
    with tarfile.open(sdist) as tf:
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/gpucnn/kernels/"
        members = [m for m in tf.getmembers() if m.name.startswith(prefix)]
        assert [m.name for m in members if not (m.isfile() or m.isdir())] == []
        assert {m.name.removeprefix(prefix): tf.extractfile(m).read() for m in members if m.isfile()} == expected

    # The wheel, installed apart and imported from outside the source tree.
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    probe = (
        "import gpucnn, gpucnn.kernels.numpy_set\n"
        "print(gpucnn.kernels.__file__)\n"
        "print(gpucnn.SimpleConvNet(seed=0).predict(__import__('numpy').zeros((1, 1, 28, 28))).shape)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == [str(site / "gpucnn" / "kernels" / "__init__.py"), "(1, 10)"]
