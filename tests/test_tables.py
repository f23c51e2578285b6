"""CSV tables: reading, every refusal (naming file, row and column), labels, the stratified
split, the Standardizer, and the breast-cancer table."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

import gpucnn
from gpucnn.metrics import binary_metrics
from gpucnn.models import build_model
from gpucnn.optimizers import RMSprop
from gpucnn.tables import (
    BREAST_CANCER_CLASSES,
    MissingDependency,
    Standardizer,
    TableError,
    load_breast_cancer,
    load_csv,
    read_csv,
    stratified_split,
)


def write(folder, name: str, text: str):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# -- reading ---------------------------------------------------------------------------


def test_read_csv_infers_a_header_of_names_and_reads_every_number_form(tmp_path):
    path = write(tmp_path, "x.csv", "a,b,c\n1,-2.5,3e2\n .5 ,5.,+1E-3\n\n\n")
    table = read_csv(path)
    assert table.columns == ("a", "b", "c")
    assert table.values.dtype == np.float64
    np.testing.assert_array_equal(table.values, [[1, -2.5, 300], [0.5, 5, 0.001]])


def test_read_csv_without_a_header_and_with_a_header_of_numbers(tmp_path):
    path = write(tmp_path, "x.csv", "0,1\n7,8\n")
    inferred = read_csv(path)
    assert inferred.columns == () and inferred.values.shape == (2, 2)
    named = read_csv(path, header=True)
    assert named.columns == ("0", "1")
    np.testing.assert_array_equal(named.values, [[7, 8]])
    with pytest.raises(ValueError, match="header must be True, False or 'infer'"):
        read_csv(path, header="yes")


def test_read_csv_delimiter_quotes_and_byte_order_mark(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes('\ufeff"x";"y"\n"1.5";2\n'.encode())
    table = read_csv(path, delimiter=";")
    assert table.columns == ("x", "y")
    np.testing.assert_array_equal(table.values, [[1.5, 2]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n3\n", r"x\.csv: row 3 has 1 cells, but the header \(row 1\) has 2"),
        ("1,2\n3,4,5\n", r"x\.csv: row 2 has 3 cells, but row 1 has 2"),
        ("a,b\n1,2\n3,oops\n", r"x\.csv: row 3, column 2 \('b'\): 'oops' is not a number"),
        ("a,b\n1,2\n3,1_000\n", r"row 3, column 2 \('b'\): '1_000' is not a number"),
        ("1,2\n3,\n", r"x\.csv: row 2, column 2: empty cell"),
        ("a,b\nnan,2\n", r"x\.csv: row 2, column 1 \('a'\): 'nan' is not a finite number"),
        ("a,b\n1,2\n3,-Inf\n", r"row 3, column 2 \('b'\): '-Inf' is not a finite number"),
        ("a,b\n1,1e999\n", r"row 2, column 2 \('b'\): 1e999 is too large for a float64"),
        ("a,b\n1,2\n\n3,4\n", r"x\.csv: row 3 is empty"),
        ("1,,3\n4,5,6\n", r"x\.csv: row 1, column 2: empty cell"),  # not taken for a header
        ('a,b\n1,2\n"3,4\n', r"x\.csv: row 3 has 1 cells, but the header \(row 1\) has 2"),  # unclosed quote
        ("", r"x\.csv is empty"),
        ("\n\n", r"x\.csv is empty"),
        ("a,b\n", r"x\.csv has a header but no data rows"),
    ],
)
def test_read_csv_refuses_naming_file_row_and_column(tmp_path, text, message):
    path = write(tmp_path, "x.csv", text)
    with pytest.raises(TableError, match=message) as info:
        read_csv(path)
    assert str(path) in str(info.value)


def test_read_csv_refuses_a_file_that_is_not_text(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    with pytest.raises(TableError, match=r"x\.csv is not UTF-8 text"):
        read_csv(path)


# -- features and labels ---------------------------------------------------------------


def test_load_csv_from_two_files_as_keras_users_write_them(tmp_path):
    x_path = write(tmp_path, "xtrain.csv", "f1,f2,f3\n1,2,3\n4,5,6\n7,8,9\n")
    y_path = write(tmp_path, "ytrain.csv", "label\n0\n1.0\n1\n")
    x, t = load_csv(x_path, y_path)
    assert x.dtype == np.float32 and x.shape == (3, 3)
    assert t.dtype == np.int64
    np.testing.assert_array_equal(t, [0, 1, 1])
    x64, _ = load_csv(x_path, y_path, dtype=np.float64)
    assert x64.dtype == np.float64


@pytest.mark.parametrize("label_column", ["y", 1, -2])
def test_load_csv_labels_as_a_column_of_the_features_file(tmp_path, label_column):
    path = write(tmp_path, "data.csv", "a,y,b\n1,2,3\n4,0,6\n7,1,9\n")
    x, t = load_csv(path, label_column=label_column)
    np.testing.assert_array_equal(x, [[1, 3], [4, 6], [7, 9]])
    np.testing.assert_array_equal(t, [2, 0, 1])


def test_load_csv_picks_a_column_of_a_labels_file(tmp_path):
    x_path = write(tmp_path, "x.csv", "1,2\n3,4\n")
    y_path = write(tmp_path, "y.csv", ",label\n0,1\n1,0\n")
    with pytest.raises(TableError, match=r"y\.csv has 2 columns: pick .* index pandas writes: save with index=False"):
        load_csv(x_path, y_path)
    _, t = load_csv(x_path, y_path, label_column="label")
    np.testing.assert_array_equal(t, [1, 0])


def test_load_csv_refuses_mismatched_lengths(tmp_path):
    x_path = write(tmp_path, "x.csv", "1,2\n3,4\n5,6\n")
    y_path = write(tmp_path, "y.csv", "0\n1\n")
    with pytest.raises(TableError, match=r"x\.csv has 3 rows of features but .*y\.csv has 2 labels$"):
        load_csv(x_path, y_path)


def test_load_csv_hints_at_a_header_of_numbers(tmp_path):
    x_path = write(tmp_path, "x.csv", "a,b\n1,2\n3,4\n")
    y_path = write(tmp_path, "y.csv", "0\n0\n1\n")  # pd.Series(y).to_csv(index=False): header "0"
    with pytest.raises(TableError, match=r"has 2 rows of features but .* has 3 labels \(a header of numbers"):
        load_csv(x_path, y_path)
    _, t = load_csv(x_path, y_path, header=True)
    np.testing.assert_array_equal(t, [0, 1])


@pytest.mark.parametrize(
    ("text", "label_column", "message"),
    [
        # pd.DataFrame(x, columns=["a", "b"]).assign(y=t).to_csv("data.csv"): the index comes first, unnamed
        (
            ",a,b,y\n0,1.5,2,0\n1,3,4,1\n",
            "y",
            r"data\.csv: the header leaves column 1 without a name, so it is "
            r"not taken for a feature; name it or remove it \(an unnamed first column is the index pandas writes: "
            r"save with index=False\)$",
        ),
        ("a,,y\n1.5,2,0\n3,4,1\n", "y", r"the header leaves column 2 without a name, .*; name it or remove it$"),
    ],
)
def test_load_csv_refuses_an_unnamed_feature_column(tmp_path, text, label_column, message):
    path = write(tmp_path, "data.csv", text)
    with pytest.raises(TableError, match=message):
        load_csv(path, label_column=label_column)
    # The same file as features, its labels in a file of their own.
    y_path = write(tmp_path, "y.csv", "y\n0\n1\n")
    with pytest.raises(TableError, match=message):
        load_csv(path, y_path)


def test_load_csv_takes_an_unnamed_column_that_holds_the_labels(tmp_path):
    path = write(tmp_path, "data.csv", "a,b,\n1.5,2,0\n3,4,1\n")
    x, t = load_csv(path, label_column=-1)
    np.testing.assert_array_equal(x, [[1.5, 2], [3, 4]])
    np.testing.assert_array_equal(t, [0, 1])


@pytest.mark.parametrize(
    ("text", "delimiter", "message"),
    [
        # A spreadsheet's export where the decimal mark is a comma: cells separated by ';'.
        (
            "a;b\n1.5;2\n",
            ",",
            r"row 2, column 1 \('a;b'\): '1\.5;2' is not a number "
            r"\(its cells seem to be separated by ';', not by ','\)$",
        ),
        # Without a header too, though its first row, not a number, is then taken for one.
        (
            "1.5;2\n3;4\n",
            ",",
            r"row 2, column 1 \('1\.5;2'\): '3;4' is not a number \(its cells seem to be separated by ';'",
        ),
        ("1\t2\n3\t4\n", ",", r"is not a number \(its cells seem to be separated by '\\t', not by ','\)$"),
        (
            "a;b\n1,5;2\n",
            ";",
            r"row 2, column 1 \('a'\): '1,5' is not a number \(write a number with a decimal "
            r"point: 2\.5, not 2,5\)$",
        ),
        # pd.DataFrame(x).to_csv("x.csv"): the header of column numbers, after an empty corner, reads as data.
        (
            ",0,1\n0,1.5,2\n1,3,4\n",
            ",",
            r"row 1, column 1: empty cell \(a missing value\) \(an empty first cell "
            r"starts the header pandas writes with its index: save with index=False\)$",
        ),
        ("1,2\n,4\n", ",", r"row 2, column 1: empty cell \(a missing value\)$"),  # no hint past row 1
    ],
)
def test_read_csv_refusals_hint_at_a_delimiter_a_decimal_comma_or_an_index(tmp_path, text, delimiter, message):
    path = write(tmp_path, "x.csv", text)
    with pytest.raises(TableError, match=message):
        read_csv(path, delimiter=delimiter)


def test_load_csv_needs_to_be_told_where_the_labels_are(tmp_path):
    path = write(tmp_path, "x.csv", "a,b\n1,2\n")
    with pytest.raises(TableError, match=r"x\.csv: where are the labels\? Give y_path .* or label_column"):
        load_csv(path)
    with pytest.raises(TableError, match=r"has no column 'c'; its columns: a, b"):
        load_csv(path, label_column="c")
    with pytest.raises(TableError, match=r"has 2 columns; there is no column index 2"):
        load_csv(path, label_column=2)
    with pytest.raises(TypeError, match="a column is a name or an integer index"):
        load_csv(path, label_column=1.0)
    plain = write(tmp_path, "plain.csv", "1,2\n")
    with pytest.raises(TableError, match=r"plain\.csv has no header, so it has no column named 'b'"):
        load_csv(plain, label_column="b")
    duplicated = write(tmp_path, "twice.csv", "a,a,b\n1,2,3\n")
    with pytest.raises(TableError, match=r"has 2 columns named 'a'"):
        load_csv(duplicated, label_column="a")
    single = write(tmp_path, "single.csv", "y\n1\n0\n")
    with pytest.raises(TableError, match=r"single\.csv has one column, the labels: no features are left"):
        load_csv(single, label_column="y")


@pytest.mark.parametrize(
    ("labels", "classes", "message"),
    [
        ("0\n0.5\n1\n", None, r"y\.csv: row 3, column 2 \('y'\): label 0\.5 is not a whole number"),
        ("0\n-1\n1\n", None, r"row 3, column 2 \('y'\): label -1 is negative"),
        (
            "1\n2\n1\n",
            None,
            r"y\.csv: column 2 \('y'\): labels must be 0\.\.K-1, but class 0 has no rows \(labels found: 1, 2\)",
        ),
        ("0\n2\n2\n", None, r"class 1 has no rows \(labels found: 0, 2\)"),
        ("0\n1\n2\n", 2, r"row 4, column 2 \('y'\): label 2 is not one of 2 classes: labels are 0 and 1 only"),
        ("0\n1\n3\n", 3, r"row 4, column 2 \('y'\): label 3 is not one of 3 classes: labels are 0\.\.2"),
    ],
)
def test_load_csv_refuses_labels_that_are_not_classes(tmp_path, labels, classes, message):
    rows = [line for line in labels.splitlines() if line]
    path = write(tmp_path, "y.csv", "x,y\n" + "".join(f"{i},{label}\n" for i, label in enumerate(rows)))
    with pytest.raises(TableError, match=message):
        load_csv(path, label_column="y", classes=classes)


def test_load_csv_classes_admits_a_file_that_lacks_a_class(tmp_path):
    path = write(tmp_path, "test.csv", "x,y\n1,1\n2,1\n")
    with pytest.raises(TableError, match="class 0 has no rows"):
        load_csv(path, label_column="y")
    _, t = load_csv(path, label_column="y", classes=2)
    np.testing.assert_array_equal(t, [1, 1])
    with pytest.raises(ValueError, match="classes must be an integer >= 2, got 1"):
        load_csv(path, label_column="y", classes=1)


def test_load_csv_passes_the_features_checks_through(tmp_path):
    x_path = write(tmp_path, "x.csv", "1,2\n3,nan\n")
    y_path = write(tmp_path, "y.csv", "0\n1\n")
    with pytest.raises(TableError, match=r"x\.csv: row 2, column 2: 'nan' is not a finite number"):
        load_csv(x_path, y_path)
    with pytest.raises(TableError, match=r"y\.csv: row 2, column 1: 'one' is not a number"):
        load_csv(write(tmp_path, "x2.csv", "1\n2\n"), write(tmp_path, "y.csv", "0\none\n"))


# -- the stratified split ------------------------------------------------------------------


def test_stratified_split_keeps_class_shares_and_repeats_with_its_seed():
    labels = np.array([0] * 212 + [1] * 357)
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(test) == 114 and len(train) == 455  # ceil(0.2 * 569)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(569))
    # 114 * 212 / 569 = 42.47 and 114 * 357 / 569 = 71.53: the larger remainder takes the spare row
    assert np.bincount(labels[test]).tolist() == [42, 72]
    assert (np.diff(train) > 0).all() and (np.diff(test) > 0).all()
    again, other = stratified_split(labels, 0.2, seed=0), stratified_split(labels, 0.2, seed=1)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(other[1], test)


def test_stratified_split_breaks_a_tie_of_remainders_towards_the_lower_class():
    labels = np.array([0, 0, 1, 1, 2, 2])
    _, test = stratified_split(labels, 0.5, seed=0)
    assert np.bincount(labels[test], minlength=3).tolist() == [1, 1, 1]
    _, test = stratified_split(np.array([0, 0, 1, 1]), 0.25, seed=0)
    assert np.bincount(np.array([0, 0, 1, 1])[test], minlength=2).tolist() == [1, 0]


def test_stratified_split_refuses_what_it_cannot_split():
    with pytest.raises(ValueError, match="strictly between 0 and 1, got 1.0"):
        stratified_split(np.array([0, 1]), 1.0)
    with pytest.raises(ValueError, match="of 3 rows leaves 3 test and 0 train"):
        stratified_split(np.array([0, 1, 1]), 0.9)
    with pytest.raises(ValueError, match="1-D integer array"):
        stratified_split(np.array([0.0, 1.0]), 0.5)


# -- the standardizer ----------------------------------------------------------------------


def test_standardizer_is_fitted_on_training_data_only(rng):
    x_train = rng.normal([5.0, -3.0, 100.0], [2.0, 0.5, 30.0], size=(200, 3))
    x_test = rng.normal([5.0, -3.0, 100.0], [2.0, 0.5, 30.0], size=(50, 3)) + 1.0
    scaler = Standardizer.fit(x_train)
    z = scaler.transform(x_train)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1, rtol=1e-12)
    np.testing.assert_allclose(scaler.transform(x_test), (x_test - x_train.mean(0)) / x_train.std(0), rtol=1e-12)


def test_standardizer_keeps_the_float_dtype_and_zeroes_a_constant_feature():
    x = np.array([[1.0, 7.0], [3.0, 7.0]], dtype=np.float32)
    scaler = Standardizer.fit(x)
    np.testing.assert_array_equal(scaler.scale, [1.0, 1.0])
    z = scaler.transform(x)
    assert z.dtype == np.float32
    np.testing.assert_array_equal(z, [[-1, 0], [1, 0]])
    assert scaler.transform(np.array([[2, 7]])).dtype == np.float64


def test_standardizer_round_trips_exactly_through_json(rng):
    scaler = Standardizer.fit(rng.standard_normal((30, 4)) * [1e-3, 1.0, 1e3, 1e6])
    back = Standardizer.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(back.mean, scaler.mean)
    np.testing.assert_array_equal(back.scale, scaler.scale)


def test_standardizer_refuses_bad_data():
    with pytest.raises(ValueError, match=re.escape("cannot fit on non-finite data: x[1, 0] is nan")):
        Standardizer.fit(np.array([[1.0, 2.0], [np.nan, 3.0]]))
    with pytest.raises(ValueError, match=r"fit needs samples \(N, F\) with N >= 1, got shape \(3,\)"):
        Standardizer.fit(np.ones(3))
    scaler = Standardizer.fit(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"samples have shape \(4,\), the standardizer was fitted on \(3,\)"):
        scaler.transform(np.ones((2, 4)))
    with pytest.raises(ValueError, match="scale must be positive, got 0.0 at index 1"):
        Standardizer([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="not a Standardizer description"):
        Standardizer.from_dict({"type": "MinMax"})
    with pytest.raises(ValueError, match=r"Standardizer scale has 1 values, its shape \(2,\) needs 2"):
        Standardizer.from_dict({"type": "Standardizer", "shape": [2], "mean": [0, 0], "scale": [1]})


# -- the breast-cancer table -----------------------------------------------------------------


def test_breast_cancer_without_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn...` fail
    monkeypatch.delitem(sys.modules, "sklearn.datasets", raising=False)
    with pytest.raises(MissingDependency, match=re.escape("pip install 'gpucnn[tables]'")):
        load_breast_cancer()


def test_breast_cancer_takes_no_path():
    with pytest.raises(ValueError, match="comes from scikit-learn and takes no path"):
        load_breast_cancer("/data")


def test_breast_cancer_table_split():
    pytest.importorskip("sklearn", reason="the breast-cancer table needs scikit-learn (pip install 'gpucnn[tables]')")
    (x_train, t_train), (x_test, t_test) = load_breast_cancer()
    assert x_train.shape == (455, 30) and x_test.shape == (114, 30)
    assert x_train.dtype == np.float32 and t_train.dtype == np.int64
    assert np.bincount(t_train).tolist() == [170, 285] and np.bincount(t_test).tolist() == [42, 72]
    assert BREAST_CANCER_CLASSES == ("malignant", "benign")
    (again, _), _ = load_breast_cancer(flatten=False)
    np.testing.assert_array_equal(again, x_train)
    (other, _), _ = load_breast_cancer(seed=1)
    assert not np.array_equal(other, x_train)


def test_binary_mlp_learns_the_standardized_breast_cancer_table():
    pytest.importorskip("sklearn", reason="the breast-cancer table needs scikit-learn (pip install 'gpucnn[tables]')")
    (x_train, t_train), (x_test, t_test) = load_breast_cancer()
    scaler = Standardizer.fit(x_train)
    with gpucnn.use_backend("numpy"):
        model = build_model("binary_mlp", (30,), 2, seed=0)
        model.fit(
            scaler.transform(x_train),
            t_train,
            batch_size=32,
            epochs=30,
            optimizer=RMSprop(lr=0.001, decay_rate=0.9),
            seed=0,
            verbose=0,
        )
        logits = gpucnn.get_backend().to_numpy(model.predict(scaler.transform(x_test)))
    metrics = binary_metrics(logits, t_test, from_logits=True)
    # A nearly separable table: a linear model alone reaches about 97% on such a split.
    assert metrics["accuracy"] > 0.9 and metrics["roc_auc"] > 0.95


# -- the datasets module ---------------------------------------------------------------------


def test_the_tables_are_datasets():
    assert gpucnn.datasets.load_csv is load_csv and gpucnn.datasets.load_breast_cancer is load_breast_cancer
    assert gpucnn.datasets.DATASETS["breast-cancer"] is load_breast_cancer
    assert gpucnn.datasets.CLASSES == {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "breast-cancer": 2}


# -- a model's preprocessing -----------------------------------------------------------------


def standardized_twins(rng):
    """Samples far from standardized, labels, a Standardizer fitted on the first 16 rows, and
    two models with the same initial weights: the first with the Standardizer, the second
    without (fed the transformed samples)."""
    x = rng.normal(50.0, 10.0, size=(24, 4))
    t = (x[:, 0] + x[:, 1] > 100).astype(np.int64)
    scaler = Standardizer.fit(x[:16])
    raw, plain = (build_model("binary_mlp", (4,), 2, dtype="float64", seed=3) for _ in range(2))
    raw.preprocessing = scaler
    return x, t, scaler, raw, plain


def test_preprocessing_is_applied_once_by_every_method_that_takes_data(backend, rng):
    x, t, scaler, raw, plain = standardized_twins(rng)
    z = scaler.transform(x)
    host = backend.to_numpy

    def same(a, b):
        np.testing.assert_array_equal(host(a), host(b))

    same(raw.predict(x), plain.predict(z))
    same(raw.predict(x, batch_size=5), plain.predict(z, batch_size=5))
    same(raw.predict_proba(x, batch_size=7), plain.predict_proba(z, batch_size=7))
    assert raw.evaluate(x, t, batch_size=10, return_dict=True) == plain.evaluate(z, t, batch_size=10, return_dict=True)
    assert raw.accuracy(x, t, batch_size=10) == plain.accuracy(z, t, batch_size=10)
    assert raw.loss(x, t) == plain.loss(z, t)
    for key, grad in raw.gradient(x, t).items():
        same(grad, plain.gradient(z, t)[key])
    for model, data in ((raw, x), (plain, z)):
        validation = (data[16:], t[16:])
        model.fit(data[:16], t[:16], 4, 2, optimizer="rmsprop", validation_data=validation, seed=0, verbose=0)
        model.train_on_batch(data[:5], t[:5])
    assert raw.history.history["val_roc_auc"] == plain.history.history["val_roc_auc"]
    assert raw.history.iteration_loss == plain.history.iteration_loss
    for key in plain.params:
        same(raw.params[key], plain.params[key])


def test_preprocessing_is_saved_with_the_model(tmp_path, rng, monkeypatch):
    x, t, scaler, raw, plain = standardized_twins(rng)
    raw.save(tmp_path / "raw.npz")
    plain.save(tmp_path / "plain.npz")
    with np.load(tmp_path / "raw.npz") as data:
        assert int(data["format_version"]) == 2
        assert json.loads(str(data["preprocessing"])) == scaler.to_dict()
    with np.load(tmp_path / "plain.npz") as data:
        assert int(data["format_version"]) == 1 and "preprocessing" not in data.files  # release 0.1.0 reads it
    loaded = gpucnn.load(tmp_path / "raw.npz")
    assert isinstance(loaded.preprocessing, Standardizer)
    np.testing.assert_array_equal(loaded.preprocessing.mean, scaler.mean)
    np.testing.assert_array_equal(loaded.preprocessing.scale, scaler.scale)
    np.testing.assert_array_equal(loaded.predict(x), raw.predict(x))
    assert gpucnn.load(tmp_path / "plain.npz").preprocessing is None
    # A reader of version 1, which would feed the raw samples to the network, refuses the file.
    monkeypatch.setattr(gpucnn.files, "FORMAT_VERSION", 1)
    with pytest.raises(gpucnn.io.ModelFileError, match=r"format version 2, newer than this gpucnn reads \(up to 1\)"):
        gpucnn.load(tmp_path / "raw.npz")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "MinMax"}, r"its preprocessing entry is not usable: not a Standardizer description"),
        (
            {"type": "Standardizer", "shape": [3], "mean": [0, 0, 0], "scale": [1, 1, 1]},
            r"its preprocessing takes samples of shape \(3,\), the model inputs of \(4,\)",
        ),
        ({"type": "Standardizer", "shape": [4], "mean": [0] * 4, "scale": [1, 1, 0, 1]}, "scale must be positive"),
    ],
)
def test_a_damaged_preprocessing_entry_is_refused(tmp_path, rng, entry, message):
    _, _, _, raw, _ = standardized_twins(rng)
    raw.save(tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz") as data:
        arrays = {key: data[key] for key in data.files}
    arrays["preprocessing"] = np.array(json.dumps(entry))
    with open(tmp_path / "damaged.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(gpucnn.io.ModelFileError, match=message):
        gpucnn.load(tmp_path / "damaged.npz")


@pytest.mark.parametrize("delimiter", ["", ";;", '"', "\n", "a", "1"])
def test_a_delimiter_that_cannot_separate_cells_is_refused(delimiter, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="the delimiter must be one character other than a quote"):
        read_csv(path, delimiter=delimiter)
