"""The benchmark report (``benchmarks/report.py``), `gpucnn bench`, `gpucnn sweep` on small
inputs, and the `--benchmark` switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from gpucnn.cli import main
from gpucnn.machine import machine_description

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
    machine = {"python_version": "3.11", "gpucnn": machine_description()}
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
    assert report.main(["--from", str(source), "--out", str(out)]) == 0
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


def test_report_shows_latency_where_it_differs_and_launch_overhead(tmp_path):
    results = tiny_results()
    for backend, throughput, latency in (("cupy", 4000.0, 2500.0), ("numpy", 300.0, 300.0)):
        results["benchmarks"].append(
            case(
                f"test_train_step[{backend}-mnist_cnn-b32]",
                32 / latency,
                kind="train_step",
                backend=backend,
                model="mnist_cnn",
                batch_size=32,
                images_per_s=throughput,
                latency_images_per_s=latency,
            )
        )
    for name, extra in (("cuda_emu_sgd", {"us_per_launch": 4.0}), ("untimed", {})):
        launch = {"kind": "launch", "backend": "cuda-emu", "case": f"{name}-case", "launches": 1000, **extra}
        results["benchmarks"].append(case(f"test_launch_overhead_{name}", 4e-3, **launch))
    written = report.write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    # A latency column beside cupy's throughput; none for numpy, whose two figures are one.
    assert "| batch | cupy | cupy latency | numpy |" in text and "| 32 | 4,000 | 2,500 | 300 |" in text
    assert "| batch | numpy | torch | numpy/torch |" in text  # no latency recorded: the table as before
    assert "| case | launches per call | µs per launch |" in text
    assert "| cuda_emu_sgd-case | 1,000 | 4.00 |" in text and "untimed-case" not in text
    assert tmp_path / "throughput.png" in written


def test_report_of_a_cpu_run_says_why_transfer_is_missing(tmp_path):
    results = tiny_results()
    results["benchmarks"] = [c for c in results["benchmarks"] if c["extra_info"].get("kind") not in ("epoch", "h2d")]
    written = report.write_report(results, tmp_path)
    assert tmp_path / "transfer.png" not in written and not (tmp_path / "transfer.png").exists()
    assert "No GPU backend in this run" in (tmp_path / "report.md").read_text()


def test_report_errors(tmp_path):
    not_bench = tmp_path / "other.json"
    not_bench.write_text('{"a": 1}')
    with pytest.raises(SystemExit, match="not a pytest-benchmark JSON"):
        report.main(["--from", str(not_bench), "--out", str(tmp_path / "r")])
    empty = tmp_path / "empty.json"
    empty.write_text('{"benchmarks": []}')
    with pytest.raises(SystemExit, match="no case of the gpucnn benchmark suite"):
        report.main(["--from", str(empty), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match="must be 'default', 'small' or batch sizes"):
        report.main(["--sizes", "big", "--out", str(tmp_path / "r")])


def test_gpucnn_bench_runs_the_checkouts_report(tmp_path, monkeypatch):
    source = tmp_path / "run.json"
    source.write_text(json.dumps(tiny_results()))
    monkeypatch.chdir(tmp_path)  # out and --from are taken relative to here, the child runs elsewhere
    assert main(["bench", "--from", "run.json", "--out", "report", "--suite", str(ROOT / "benchmarks")]) == 0
    assert "| im2col | conv | 8 | numpy | 1.000 | 2.50 |" in (tmp_path / "report" / "report.md").read_text()
    assert main(["bench", "--from", "missing.json", "--out", "report", "--suite", str(ROOT / "benchmarks")]) == 1


def test_gpucnn_bench_refuses_a_folder_that_is_not_the_suite(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--suite", str(tmp_path), "--out", str(tmp_path / "r")])
    assert stop.value.code == 2 and not (tmp_path / "r").exists()
    assert f"--suite {tmp_path} is not the benchmarks/ folder of a gpucnn source checkout" in capsys.readouterr().err


def test_suite_json_records_the_machine_and_the_settings(tmp_path):
    json_path = tmp_path / "bench.json"
    case = "test_im2col and numpy-simple_convnet-conv1"
    code = report.run_suite(json_path, sizes="small", pytest_args=["-k", case, "--benchmark-max-time=0.01"])
    assert code == 0
    results = report.load_results(json_path)
    assert [c["name"] for c in results["benchmarks"]] == ["test_im2col[numpy-simple_convnet-conv1-b8]"]
    machine = results["machine_info"]["gpucnn"]
    assert machine["environment"][report.SIZES_ENV] == "small" and machine["cores"] == os.cpu_count()
    assert machine["libraries"]["pytest-benchmark"] and machine["libraries"]["gpucnn"]
    report.write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| im2col | simple_convnet-conv1 | 8 | numpy |" in text and f"{report.SIZES_ENV}=small" in text


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


def collect_only(*args: str, sizes: str = "1,4") -> str:
    """What ``pytest --collect-only -q ARGS`` prints, run from the checkout's root."""
    env = {**os.environ, report.SIZES_ENV: sizes}
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def collected(*args: str, sizes: str = "1,4") -> list[str]:
    """Test ids that ``pytest --collect-only ARGS`` collects from the checkout's root."""
    return [line for line in collect_only(*args, sizes=sizes).splitlines() if "::" in line]


def test_benchmark_switch_selects_sizes():
    plain = collected("benchmarks/test_throughput.py")
    assert plain and all(line.endswith("-b1]") for line in plain)
    timed = collected("--benchmark", "benchmarks/test_throughput.py")
    assert {line.rsplit("-", 1)[1] for line in timed} == {"b1]", "b4]"}
    assert "test_train_step[numpy-simple_convnet-b4]" in "\n".join(timed)


def test_benchmark_switch_without_paths_collects_the_suite_only():
    printed = collect_only("--benchmark")
    suite = [line for line in printed.splitlines() if "::" in line]
    assert suite and all(line.startswith("benchmarks/test_") for line in suite)
    assert any(line.startswith("benchmarks/test_throughput.py::") for line in suite)
    assert "deselected" not in printed  # the tests of testpaths were never collected
