"""`gpucnn bench` and `gpucnn sweep` on small inputs, and the `--benchmark` switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpucnn import report
from gpucnn.cli import main

from .idx_files import write_mnist

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def case(name: str, median: float, **extra) -> dict:
    return {"name": name, "stats": {"median": median}, "extra_info": extra}


def tiny_results() -> dict:
    """A pytest-benchmark JSON with one case of every kind the suite writes."""
    cases = []
    for backend, rate in (("numpy", 1000.0), ("torch", 500.0)):
        for b in (1, 8):
            for kind in ("train_step", "inference"):
                cases.append(
                    case(
                        f"test_{kind}[{backend}-simple_convnet-b{b}]",
                        b / (rate * b),
                        kind=kind,
                        backend=backend,
                        model="simple_convnet",
                        batch_size=b,
                        images_per_s=rate * b,
                    )
                )
    cases.append(
        case(
            "test_im2col[numpy-conv-b8]",
            1e-3,
            kind="kernel",
            backend="numpy",
            op="im2col",
            shape="conv",
            batch_size=8,
            gb_per_s=2.5,
        )
    )
    for b in (1, 8):
        cases.append(
            case(
                f"test_training_memory[numpy-simple_convnet-b{b}]",
                0.1,
                kind="memory",
                backend="numpy",
                model="simple_convnet",
                batch_size=b,
                peak_bytes=2**20 * b,
                model_bytes=2**20 * b * 1.1,
                im2col_bytes=2**18 * b,
            )
        )
        for mode, epoch_s in (("pageable", 2.0), ("prefetch", 1.25), ("on_device", 1.1)):
            extra = {"copy_s": 0.1} if mode == "on_device" else {}
            cases.append(
                case(
                    f"test_epoch[cupy-simple_convnet-{mode}-b{b}]",
                    epoch_s,
                    kind="epoch",
                    backend="cupy",
                    model="simple_convnet",
                    mode=mode,
                    batch_size=b,
                    epoch_s=epoch_s,
                    **extra,
                )
            )
        cases.append(
            case(
                f"test_h2d_copy[cupy-pinned-b{b}]",
                1e-4,
                kind="h2d",
                backend="cupy",
                memory="pinned",
                batch_size=b,
                gb_per_s=20.0,
            )
        )
    cases.append({"name": "test_unrelated", "stats": {"median": 1.0}, "extra_info": {}})
    machine = {"python_version": "3.11", "gpucnn": report.machine_description()}
    return {"machine_info": machine, "datetime": "2026-01-01T00:00:00", "benchmarks": cases}


def test_bench_batch_sizes(monkeypatch):
    monkeypatch.delenv(report.SIZES_ENV, raising=False)
    assert report.bench_batch_sizes() == [1, 8, 32, 100, 256, 1024]
    assert report.bench_batch_sizes(gpu=True)[-1] > 1024
    assert report.bench_batch_sizes(spec="small") == [1, 8, 32]
    monkeypatch.setenv(report.SIZES_ENV, "64, 2,64")
    assert report.bench_batch_sizes() == [2, 64]
    for bad in ("big", "0,4"):
        with pytest.raises(ValueError, match=report.SIZES_ENV):
            report.bench_batch_sizes(spec=bad)


def test_transfer_shares():
    records = report._records(tiny_results())
    shares = report.transfer_shares(records)[("cupy", "simple_convnet", 8)]
    # compute = 1.1 - 0.1 = 1.0 s: pageable copies take half of a 2 s epoch
    assert shares["pageable"] == pytest.approx(0.5)
    assert shares["prefetch"] == pytest.approx(0.2)
    assert shares["on_device"] == pytest.approx(0.1 / 1.1)


def test_report_from_json(tmp_path, capsys):
    source = tmp_path / "run.json"
    source.write_text(json.dumps(tiny_results()))
    out = tmp_path / "report"
    assert main(["bench", "--from", str(source), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    for name in ("throughput.png", "transfer.png", "memory.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    assert json.loads((out / "bench.json").read_text()) == json.loads(source.read_text())
    text = (out / "report.md").read_text()
    assert "| batch | numpy | torch | numpy/torch |" in text and "| 8 | 8,000 | 4,000 | 2.00 |" in text
    assert "| im2col | conv | 8 | numpy | 1.000 | 2.50 |" in text
    assert "| cupy | simple_convnet | 8 | 50.0% | 20.0% | 9.1% |" in text
    assert "| cupy | pinned | 8 | 20.00 |" in text
    assert "| simple_convnet | numpy | 8 | 8.0 MiB | 8.8 MiB | 0.91 |" in text
    assert "![throughput](throughput.png)" in text and "CPU:" in text


def test_report_of_a_cpu_run_says_why_transfer_is_missing(tmp_path):
    results = tiny_results()
    results["benchmarks"] = [c for c in results["benchmarks"] if c["extra_info"].get("kind") not in ("epoch", "h2d")]
    written = report.write_report(results, tmp_path)
    assert tmp_path / "transfer.png" not in written and not (tmp_path / "transfer.png").exists()
    assert "No GPU backend in this run" in (tmp_path / "report.md").read_text()


def test_bench_errors(tmp_path):
    not_bench = tmp_path / "other.json"
    not_bench.write_text('{"a": 1}')
    with pytest.raises(SystemExit, match="not a pytest-benchmark JSON"):
        main(["bench", "--from", str(not_bench), "--out", str(tmp_path / "r")])
    empty = tmp_path / "empty.json"
    empty.write_text('{"benchmarks": []}')
    with pytest.raises(SystemExit, match="no case of the gpucnn benchmark suite"):
        main(["bench", "--from", str(empty), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match="is not the benchmarks/ folder of a gpucnn source tree"):
        main(["bench", "--suite", str(tmp_path), "--out", str(tmp_path / "r")])


def test_sweep_two_batch_sizes(tmp_path, capsys):
    data = tmp_path / "data"
    write_mnist(data, n_train=48, n_test=20, size=12)
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--batch-sizes",
        "8,16",
        "--epochs",
        "1",
        "--dataset",
        "mnist",
        "--data",
        str(data),
        "--limit",
        "32",
        "--backend",
        "numpy",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "batch 8: test accuracy" in printed and "batch 16: test accuracy" in printed
    result = json.loads((out / "sweep.json").read_text())
    assert [run["batch_size"] for run in result["runs"]] == [8, 16]
    assert result["train_samples"] == 32 and result["machine"]["cores"] == os.cpu_count()
    for run in result["runs"]:
        assert len(run["history"]["history"]["val_accuracy"]) == 1 and run["peak_bytes"] > 0
        assert run["model_bytes"] > 0 and run["images_per_s"] > 0
    table = (out / "sweep.md").read_text()
    assert table.count("\n| 8 |") == 1 and table.count("\n| 16 |") == 1
    assert (out / "sweep.png").read_bytes()[:8] == PNG


def test_sweep_rejects_bad_batch_sizes():
    with pytest.raises(SystemExit):
        main(["sweep", "--batch-sizes", "8,zero"])


def collected(*args: str, sizes: str = "1,4") -> list[str]:
    """Test ids that pytest collects in benchmarks/test_throughput.py with ``args``."""
    env = {**os.environ, report.SIZES_ENV: sizes}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *args,
            "benchmarks/test_throughput.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return [line for line in run.stdout.splitlines() if "::" in line]


def test_benchmark_switch_selects_sizes():
    plain = collected()
    assert plain and all(line.endswith("-b1]") for line in plain)
    timed = collected("--benchmark")
    assert {line.rsplit("-", 1)[1] for line in timed} == {"b1]", "b4]"}
    assert "test_train_step[numpy-simple_convnet-b4]" in "\n".join(timed)
