"""The pure parts of ``python -m benchmarks.gpu_check``: bandwidth arithmetic and the report."""

from __future__ import annotations

import datetime

import pytest

from benchmarks import gpu_check


def test_bandwidth_arithmetic():
    assert gpu_check.achieved_bandwidth(3 * 10**9, 1.5) == pytest.approx(2.0)
    assert gpu_check.copy_bandwidth(10**9, 1.0) == pytest.approx(2.0)  # read + write
    with pytest.raises(ValueError, match="positive"):
        gpu_check.achieved_bandwidth(1, 0.0)


def test_report_table_and_name():
    timing = gpu_check.Timing("im2col 3x3 s1 p1", "64x64x56x56", 2 * 10**9, 1e-3)
    report = gpu_check.format_report({"GPU": "NVIDIA H100 80GB HBM3"}, 2500.0, [timing])
    assert "- GPU: NVIDIA H100 80GB HBM3" in report
    assert "| im2col 3x3 s1 p1 | 64x64x56x56 | 1.000 | 2000.0 | 2000 | 80% |" in report.splitlines()
    name = gpu_check.report_name(datetime.date(2026, 11, 24), "NVIDIA H100 80GB HBM3")
    assert name == "gpu-check-2026-11-24-nvidia-h100-80gb-hbm3.md"


def test_without_a_gpu_it_fails_clearly(capsys):
    import gpucnn

    if "cupy" in gpucnn.available_backends():
        pytest.skip("a GPU is usable here")
    assert gpu_check.main(["--no-tests"]) == 2
    assert "no usable GPU" in capsys.readouterr().err
