"""A non-editable install ships gpucnn.kernels and its CUDA sources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_plain_install_ships_kernels_and_cuda_sources(tmp_path):
    pytest.importorskip("setuptools", minversion="77")
    site = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--target",
            str(site),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    shipped = {p.name for p in (site / "gpucnn" / "kernels" / "cuda").glob("*.cu")}
    in_tree = {p.name for p in (ROOT / "kernels" / "cuda").glob("*.cu")}
    assert in_tree and shipped == in_tree
    probe = (
        "import importlib.resources, gpucnn, gpucnn.kernels.numpy_set\n"
        "print(gpucnn.__file__)\n"
        "print(sorted(p.name for p in (importlib.resources.files('gpucnn.kernels') / 'cuda').iterdir()"
        " if p.name.endswith('.cu')))\n"
        "net = gpucnn.SimpleConvNet(seed=0)\n"
        "print(net.predict(__import__('numpy').zeros((1, 1, 28, 28))).shape)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith(str(site))  # the installed copy, not the source tree
    assert eval(lines[1]) == sorted(in_tree)
    assert lines[2] == "(1, 10)"
