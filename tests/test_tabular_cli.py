"""The gpucnn command on tables: CSV files of one's own and the breast-cancer table, through
train, evaluate, --resume and sweep, and every way the files or the options can be wrong.

As in tests/test_cli.py, a failure is one ``gpucnn: error: ...`` line, exit status 2 for a
usage error and 1 for a run-time failure (a bad file among them).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import gpucnn
from gpucnn.cli import main
from gpucnn.models import build_model
from gpucnn.optimizers import RMSprop
from gpucnn.tables import Standardizer, load_breast_cancer, load_csv, stratified_split

from .cli_helpers import fails, history, run_options

FEATURES = ("f1", "f2", "f3", "f4")


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def write_csv(path, header: tuple[str, ...], rows) -> str:
    lines = [",".join(header)] + [",".join(repr(float(v)) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """``xtrain.csv``/``ytrain.csv`` (40 rows, 4 features of scales 0.1 to 100, a 0/1 label)
    as Keras users write them, and ``iris.csv`` (the same features, a 3-class ``species``
    column among them)."""
    root = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 4)) * [1, 10, 100, 0.1] + [0, 50, 500, 1]
    t = (x[:, 0] + (x[:, 1] - 50) / 10 > 0).astype(np.int64)
    write_csv(root / "xtrain.csv", FEATURES, x)
    write_csv(root / "ytrain.csv", ("label",), t[:, None])
    species = np.digitize(x[:, 2], np.quantile(x[:, 2], [1 / 3, 2 / 3]))
    write_csv(
        root / "iris.csv", (*FEATURES[:2], "species", *FEATURES[2:]), np.column_stack([x[:, :2], species, x[:, 2:]])
    )
    return root


def csv_train(root, out, *extra: str) -> list[str]:
    """binary_mlp on xtrain.csv/ytrain.csv: 32 training rows, batches of 8."""
    return [
        "train",
        "--model",
        "binary_mlp",
        "--data-csv",
        str(root / "xtrain.csv"),
        "--labels-csv",
        str(root / "ytrain.csv"),
        "--batch-size",
        "8",
        "--optimizer",
        "rmsprop",
        "--lr",
        "0.01",
        *run_options(out),
        *extra,
    ]


# -- CSV files of one's own --------------------------------------------------------------------


def test_train_and_evaluate_on_csv_files_with_standardization(tables, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(csv_train(tables, out, "--epochs", "2", "--standardize")) == 0
    assert "binary_mlp on xtrain.csv: 32 training and 8 test samples, standardized" in capsys.readouterr().out
    h = history(out)
    assert h["params"]["options"] == {
        "model": "binary_mlp",
        "dataset": "csv",
        "batch_size": 8,
        "sampling": "epoch",
        "limit": None,
        "optimizer": "rmsprop",
        "lr": 0.01,
        "dtype": "float32",
        "seed": 0,
        "data_csv": str(tables / "xtrain.csv"),
        "labels_csv": str(tables / "ytrain.csv"),
        "label_column": None,
        "csv_delimiter": ",",
        "standardize": True,
        "test_fraction": 0.2,
    }
    assert h["params"]["split"] == {"test_fraction": 0.2, "seed": 0, "train_samples": 32, "test_samples": 8}
    assert len(h["history"]["val_roc_auc"]) == 2

    # The Standardizer was fitted on the 32 training rows of the split, and saved.
    x, t = load_csv(tables / "xtrain.csv", tables / "ytrain.csv")
    train, _ = stratified_split(t, 0.2, seed=0)
    expected = Standardizer.fit(x[train])
    model = gpucnn.load(out / "model.npz")
    np.testing.assert_array_equal(model.preprocessing.mean, expected.mean)
    np.testing.assert_array_equal(model.preprocessing.scale, expected.scale)

    # evaluate applies it: on the test rows of the same split, the figures of the last epoch.
    evaluate = ["evaluate", str(out / "model.npz"), "--data-csv", str(tables / "xtrain.csv")]
    evaluate += ["--labels-csv", str(tables / "ytrain.csv")]
    assert main([*evaluate, "--test-fraction", "0.2"]) == 0
    report = last_json(capsys)
    assert report["rows"] == "test, fraction 0.2, split seed 0" and report["samples"] == 8
    assert report["standardized"] is True
    for name in ("loss", "accuracy", "roc_auc"):
        assert report[name] == round(h["history"][f"val_{name}"][-1], 6), name
    assert main(evaluate) == 0  # without --test-fraction: every row of the file
    report = last_json(capsys)
    assert report["rows"] == "all" and report["samples"] == 40


def test_evaluate_a_test_file_that_holds_one_class(tables, tmp_path, capsys):
    assert main(csv_train(tables, tmp_path / "run", "--epochs", "1")) == 0
    write_csv(tmp_path / "xtest.csv", FEATURES, np.ones((3, 4)))
    write_csv(tmp_path / "ytest.csv", ("label",), [[1], [1], [1]])
    argv = ["evaluate", str(tmp_path / "run" / "model.npz"), "--data-csv", str(tmp_path / "xtest.csv")]
    assert main([*argv, "--labels-csv", str(tmp_path / "ytest.csv")]) == 0
    report = last_json(capsys)
    assert report["samples"] == 3 and report["roc_auc"] is None  # undefined for one class: null
    assert report["standardized"] is False
    write_csv(tmp_path / "ytest.csv", ("label",), [[1], [2], [1]])
    line = fails([*argv, "--labels-csv", str(tmp_path / "ytest.csv")], capsys)
    assert "ytest.csv: row 3, column 1 ('label'): label 2 is not one of 2 classes: labels are 0 and 1 only" in line


def test_resume_a_run_on_csv_files(tables, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(csv_train(tables, out, "--epochs", "1")) == 0
    resume = ["train", "--out", str(out), "--epochs", "2", "--quiet", "--resume"]
    line = fails([*resume, "--standardize", "--test-fraction", "0.3"], capsys, status=2)
    assert "--standardize (the run has no --standardize), --test-fraction 0.3 (the run has 0.2)" in line
    line = fails([*resume, "--label-column", "label"], capsys, status=2)
    assert "--label-column label (the run has no --label-column)" in line
    assert main(resume) == 0  # the files and the split come from the saved run
    assert "resuming" in capsys.readouterr().out
    assert gpucnn.load(out / "model.npz").epoch == 2
    assert history(out)["epoch"] == [0, 1]


def test_labels_in_a_column_of_the_features_file(tables, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "two_layer_net", "--data-csv", str(tables / "iris.csv"), "--label-column", "species"]
    argv += ["--epochs", "1", "--batch-size", "10", "--out", str(out), "--quiet", "--standardize"]
    assert main(argv) == 0
    h = history(out)
    assert h["params"]["options"]["label_column"] == "species" and "val_roc_auc" not in h["history"]
    model = gpucnn.load(out / "model.npz")
    assert model.input_shape == (4,) and model.num_classes == 3
    assert (
        main(["evaluate", str(out / "model.npz"), "--data-csv", str(tables / "iris.csv"), "--label-column", "2"]) == 0
    )
    report = last_json(capsys)
    assert report["samples"] == 40 and "roc_auc" not in report
    line = fails(["train", "--model", "binary_mlp", *argv[3:], "--out", str(tmp_path / "binary")], capsys, status=2)
    assert f"--model binary_mlp does not fit --data-csv {tables / 'iris.csv'} (samples of (4,), 3 classes)" in line
    assert not (tmp_path / "binary").exists()


def test_a_semicolon_separated_table_with_its_labels_column(tables, tmp_path, capsys):
    """--csv-delimiter reads the files of a spreadsheet that separates cells with ';'; the run
    records it, so --resume reads the same files again without it."""
    text = (tables / "iris.csv").read_text().replace(",", ";")
    (tmp_path / "iris.csv").write_text(text)
    out = tmp_path / "run"
    argv = ["train", "--model", "two_layer_net", "--data-csv", str(tmp_path / "iris.csv"), "--label-column", "species"]
    assert (
        main([*argv, "--csv-delimiter", ";", "--epochs", "1", "--batch-size", "10", "--out", str(out), "--quiet"]) == 0
    )
    assert history(out)["params"]["options"]["csv_delimiter"] == ";"
    assert main(["train", "--out", str(out), "--epochs", "2", "--quiet", "--resume"]) == 0
    assert history(out)["epoch"] == [0, 1]
    line = fails([*argv, "--epochs", "1", "--out", str(tmp_path / "comma")], capsys)
    assert "seem to be separated by ';', not by ','" in line


@pytest.mark.parametrize(
    ("x_text", "y_text", "message"),
    [
        ("f1,f2\n1,2\n3\n", "0\n1\n", "x.csv: row 3 has 1 cells, but the header (row 1) has 2"),
        ("f1,f2\n1,2\n3,abc\n", "0\n1\n", "x.csv: row 3, column 2 ('f2'): 'abc' is not a number"),
        ("f1,f2\n1,NaN\n3,4\n", "0\n1\n", "x.csv: row 2, column 2 ('f2'): 'NaN' is not a finite number"),
        ("f1,f2\n1,2\n-inf,4\n", "0\n1\n", "x.csv: row 3, column 1 ('f1'): '-inf' is not a finite number"),
        ("f1,f2\n1,2\n3,4\n", "0\n0.5\n", "y.csv: row 2, column 1: label 0.5 is not a whole number"),
        ("f1,f2\n1,2\n3,4\n", "y\n0\n2\n", "y.csv: column 1 ('y'): labels must be 0..K-1, but class 1 has no rows"),
        ("f1,f2\n1,2\n3,4\n5,6\n", "0\n1\n", "x.csv has 3 rows of features but"),
        ("f1,f2\n1,2\n3,4\n", "0\n0\n", "y.csv: every label is 0: a classifier needs rows of two classes"),
    ],
)
def test_a_bad_csv_file_is_one_line_naming_file_row_and_column(x_text, y_text, message, tmp_path, capsys):
    (tmp_path / "x.csv").write_text(x_text)
    (tmp_path / "y.csv").write_text(y_text)
    argv = ["train", "--model", "binary_mlp", "--data-csv", str(tmp_path / "x.csv")]
    argv += ["--labels-csv", str(tmp_path / "y.csv"), "--out", str(tmp_path / "run"), "--quiet"]
    line = fails(argv, capsys, status=1)
    assert message in line and str(tmp_path) in line
    assert not (tmp_path / "run").exists()


def test_a_missing_csv_file(tmp_path, capsys):
    argv = ["train", "--data-csv", str(tmp_path / "nowhere.csv"), "--label-column", "-1", "--out", str(tmp_path)]
    line = fails(argv, capsys, status=1)
    assert line == f"gpucnn: error: {tmp_path / 'nowhere.csv'}: No such file or directory"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data-csv", "x.csv", "--labels-csv", "y.csv", "--dataset", "mnist"], "both name the data: give one"),
        (["--data-csv", "x.csv", "--labels-csv", "y.csv", "--data", "folder"], "--data-csv names the file itself"),
        (["--data-csv", "x.csv"], "--data-csv x.csv: where are the labels? Give --labels-csv Y.csv"),
        (["--labels-csv", "y.csv"], "--labels-csv goes with --data-csv"),
        (["--label-column", "3"], "--label-column goes with --data-csv"),
        (["--dataset", "mnist", "--standardize"], "--standardize applies to tables (--dataset breast-cancer or"),
        (["--dataset", "cifar10", "--test-fraction", "0.5"], "not to the images of --dataset cifar10"),
        (["--dataset", "breast-cancer", "--data", "folder"], "scikit-learn's bundled copy, not a folder"),
        (["--test-fraction", "1"], "argument --test-fraction: expected a fraction strictly between 0 and 1, got 1.0"),
        (["--label-column", " "], "argument --label-column: expected a column name or a 0-based index"),
        (["--csv-delimiter", ";"], "--csv-delimiter goes with --data-csv"),
        (["--csv-delimiter", ";;"], "argument --csv-delimiter: expected one character other than a quote"),
    ],
)
def test_table_options_that_contradict_each_other(argv, message, tmp_path, capsys):
    line = fails(["train", *argv, "--out", str(tmp_path / "run")], capsys, status=2)
    assert message in line
    assert not (tmp_path / "run").exists()


def test_a_test_fraction_that_leaves_no_training_rows(tmp_path, capsys):
    write_csv(tmp_path / "x.csv", ("a", "y"), [[1, 0], [2, 1], [3, 1]])
    argv = ["train", "--model", "binary_mlp", "--data-csv", str(tmp_path / "x.csv"), "--label-column", "y"]
    line = fails([*argv, "--test-fraction", "0.9", "--out", str(tmp_path / "run")], capsys, status=2)
    assert "--test-fraction 0.9: a test fraction of 0.9 of 3 rows leaves 3 test and 0 train" in line


def test_sweep_on_csv_files(tables, tmp_path, capsys):
    argv = ["sweep", "--model", "binary_mlp", "--data-csv", str(tables / "xtrain.csv")]
    argv += ["--labels-csv", str(tables / "ytrain.csv"), "--standardize", "--optimizer", "rmsprop", "--lr", "0.01"]
    assert main([*argv, "--epochs", "1", "--batch-sizes", "8,100", "--out", str(tmp_path / "sweep")]) == 0
    err = capsys.readouterr().err
    assert "gpucnn: warning: batch sizes 100 are larger than the 32 training samples: they train as 32" in err
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [run["effective_batch_size"] for run in result["runs"]] == [8, 32]
    assert result["preprocessing"] == "Standardizer" and result["dataset"] == "xtrain.csv"
    assert "| 100 (as 32) |" in (tmp_path / "sweep" / "sweep.md").read_text()


# -- the breast-cancer table -------------------------------------------------------------------


def test_breast_cancer_without_scikit_learn_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn...` fail
    monkeypatch.delitem(sys.modules, "sklearn.datasets", raising=False)
    argv = ["train", "--model", "binary_mlp", "--dataset", "breast-cancer", "--out", str(tmp_path / "run")]
    line = fails(argv, capsys, status=2)
    assert "scikit-learn is not installed: pip install 'gpucnn[tables]'" in line


@pytest.fixture
def sklearn():
    return pytest.importorskip(
        "sklearn", reason="the breast-cancer table is scikit-learn's copy: pip install 'gpucnn[tables]'"
    )


def test_breast_cancer_train_evaluate_as_the_library_does(sklearn, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "binary_mlp", "--dataset", "breast-cancer", "--standardize", "--optimizer", "rmsprop"]
    argv += ["--lr", "0.001", "--batch-size", "32", "--epochs", "2", "--seed", "0", "--out", str(out), "--quiet"]
    assert main([*argv, "--backend", "numpy"]) == 0
    assert "binary_mlp on breast-cancer: 455 training and 114 test samples, standardized" in capsys.readouterr().out

    # The same recipe through the library: the same weights, bit for bit, and the same history.
    (x_train, t_train), test = load_breast_cancer()
    with gpucnn.use_backend("numpy"):
        model = build_model("binary_mlp", (30,), 2, seed=0)
        model.preprocessing = Standardizer.fit(x_train)
        model.fit(x_train, t_train, 32, 2, RMSprop(lr=0.001), validation_data=test, seed=0, verbose=0)
    saved = gpucnn.load(out / "model.npz")
    for key in model.params:
        np.testing.assert_array_equal(saved.params[key], model.params[key], err_msg=key)
    assert history(out)["history"]["val_roc_auc"] == model.history.history["val_roc_auc"]

    assert main(["evaluate", str(out / "model.npz"), "--dataset", "breast-cancer"]) == 0
    report = last_json(capsys)
    assert report["samples"] == 114 and report["standardized"] is True
    scores = model.evaluate(*test, batch_size=500, return_dict=True)
    assert {name: report[name] for name in scores} == {name: round(value, 6) for name, value in scores.items()}


def test_breast_cancer_sweep_past_the_training_rows(sklearn, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", "binary_mlp", "--dataset", "breast-cancer", "--standardize", "--optimizer", "rmsprop"]
    argv += ["--lr", "0.001", "--epochs", "2", "--batch-sizes", "64,1000", "--out", str(out), "--backend", "numpy"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "batch sizes 1000 are larger than the 455 training samples: they train as 455" in err
    assert "gpucnn: warning: batch_size 1000 is larger than the 455 samples; using batch_size=455" in err
    result = json.loads((out / "sweep.json").read_text())
    assert result["train_samples"] == 455 and result["test_samples"] == 114
    runs = result["runs"]
    assert [run["effective_batch_size"] for run in runs] == [64, 455]
    assert [run["history"]["params"]["iterations_per_epoch"] for run in runs] == [8, 1]
    assert all(0 <= run["final_test_roc_auc"] <= 1 for run in runs)
    table = (out / "sweep.md").read_text()
    assert "final test ROC AUC" in table and "| 1000 (as 455) |" in table
    assert "Batch sizes above the 455 training samples train as 455" in table
