"""Tables of numbers: CSV files in, float features and integer labels out.

The Keras workflow on a small table, without pandas::

    x, t = load_csv("xtrain.csv", "ytrain.csv")             # features in one file, labels in another
    x, t = load_csv("data.csv", label_column="diagnosis")    # or the labels as a column of the same file
    train_idx, test_idx = stratified_split(t, test_fraction=0.2, seed=0)
    scaler = Standardizer.fit(x[train_idx])                 # fitted on the training rows only
    x_train, x_test = scaler.transform(x[train_idx]), scaler.transform(x[test_idx])

and one real table, :func:`load_breast_cancer` (Wisconsin diagnostic, 569 rows, 30 features,
two classes), from scikit-learn's bundled copy.

A CSV file is read whole and checked cell by cell: every row has as many cells as the first,
every cell is a finite decimal number (no empty cells, no NaN or infinities), labels are
whole numbers 0..K-1. A file that breaks a rule raises :class:`TableError` naming the file,
the row and the column. Rows and columns are counted from 1, as a spreadsheet shows the
file: when there is a header, it is row 1.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

__all__ = [
    "BREAST_CANCER_CLASSES",
    "MissingDependency",
    "Standardizer",
    "Table",
    "TableError",
    "load_breast_cancer",
    "load_csv",
    "read_csv",
    "stratified_split",
]

# scikit-learn's encoding of the breast-cancer target.
BREAST_CANCER_CLASSES = ("malignant", "benign")
BREAST_CANCER_FEATURES = 30
INSTALL_TABLES = "pip install 'gpucnn[tables]'"

# A decimal number as written by people, spreadsheets and pandas: 3, -0.5, .5, 5., 1e-3, +2.5E+07.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NOT_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
# Delimiters that a refusal names when it finds one inside a cell (see _refusal_hint).
OTHER_DELIMITERS = (";", ",", "\t", "|")
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")


class MissingDependency(ImportError):
    """An optional package that a table needs is not installed; the message says what to install."""


class TableError(ValueError):
    """A table is malformed: ragged rows, a cell that is not a finite number, bad labels,
    features and labels of different lengths."""


@dataclass(frozen=True)
class Table:
    """A CSV file of numbers.

    Attributes:
        path: the file read.
        columns: the header's names, or ``()`` when the file has no header.
        values: (rows, columns) float64, every value finite.
        first_row: the spreadsheet row number of ``values[0]`` (2 with a header, else 1);
            the file has no blank rows before its end, so ``values[i]`` is row ``first_row + i``.
    """

    path: Path
    columns: tuple[str, ...]
    values: np.ndarray
    first_row: int

    def column_index(self, column: int | str) -> int:
        """The 0-based index of a column given by name (needs a header) or by 0-based index
        (negative counts from the end, as in Python)."""
        width = self.values.shape[1]
        if isinstance(column, str):
            if not self.columns:
                raise TableError(f"{self.path} has no header, so it has no column named {column!r}")
            matches = [i for i, name in enumerate(self.columns) if name == column]
            if not matches:
                raise TableError(f"{self.path} has no column {column!r}; its columns: {', '.join(self.columns)}")
            if len(matches) > 1:
                raise TableError(f"{self.path} has {len(matches)} columns named {column!r}")
            return matches[0]
        if isinstance(column, bool) or not isinstance(column, (int, np.integer)):
            raise TypeError(f"a column is a name or an integer index, got {column!r}")
        if not -width <= column < width:
            raise TableError(f"{self.path} has {width} columns; there is no column index {column}")
        return int(column) % width

    def column_label(self, column: int) -> str:
        """``"column C ('NAME')"`` for ``values[:, column]``, counted from 1."""
        name = f" ({self.columns[column]!r})" if self.columns else ""
        return f"column {column + 1}{name}"

    def where(self, row: int, column: int) -> str:
        """``"FILE: row R, column C ('NAME')"`` for ``values[row, column]``, counted from 1."""
        return f"{self.path}: row {self.first_row + row}, {self.column_label(column)}"


def _number(text: str) -> float:
    """The value of one cell; ValueError says what is wrong with it."""
    cell = text.strip()
    if not cell:
        raise ValueError("empty cell (a missing value)")
    if _NOT_FINITE.fullmatch(cell):
        raise ValueError(f"{cell!r} is not a finite number (NaN and infinities are refused)")
    if not _NUMBER.fullmatch(cell):
        raise ValueError(f"{text!r} is not a number")
    value = float(cell)
    if not math.isfinite(value):
        raise ValueError(f"{cell} is too large for a float64")
    return value


def _is_header(cells: list[str]) -> bool:
    """A first row is a header when a cell holds text that is not a number (an empty cell is
    a missing value, not a name)."""
    texts = [cell.strip() for cell in cells]
    return any(text and not (_NUMBER.fullmatch(text) or _NOT_FINITE.fullmatch(text)) for text in texts)


def read_csv(path: str | os.PathLike, *, header: bool | str = "infer", delimiter: str = ",") -> Table:
    """Read a CSV file of numbers into a :class:`Table`.

    Args:
        path: the file (UTF-8; a byte-order mark, as spreadsheets write, is skipped).
        header: ``True``: row 1 holds column names; ``False``: row 1 is data; ``"infer"``:
            row 1 is a header when any of its cells is not a number. A header of numbers
            (pandas writes ``0,1,2,...`` for an unnamed frame) reads as data under ``"infer"``:
            pass ``header=True`` for it.
        delimiter: the one-character cell separator.

    Blank rows at the end of the file are ignored; anywhere else they are refused.
    """
    path = Path(path)
    if header not in (True, False, "infer"):
        raise ValueError(f"header must be True, False or 'infer', got {header!r}")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n' or delimiter.isalnum():
        raise ValueError(
            f"the delimiter must be one character other than a quote, a letter or a digit, got {delimiter!r}"
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise TableError(f"{path}, near line {reader.line_num}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise TableError(f"{path} is not UTF-8 text ({exc})") from None
    while rows and not rows[-1]:
        rows.pop()
    if not rows:
        raise TableError(f"{path} is empty")
    has_header = _is_header(rows[0]) if header == "infer" else header
    width = len(rows[0])
    for r, cells in enumerate(rows, start=1):
        if not cells:
            raise TableError(f"{path}: row {r} is empty (blank rows are allowed only at the end)")
        if len(cells) != width:
            first = "the header (row 1)" if has_header else "row 1"
            raise TableError(f"{path}: row {r} has {len(cells)} cells, but {first} has {width}")
    columns = tuple(cell.strip() for cell in rows[0]) if has_header else ()
    data = rows[1:] if has_header else rows
    if not data:
        raise TableError(f"{path} has a header but no data rows")
    table = Table(path, columns, np.empty((len(data), width), dtype=np.float64), first_row=2 if has_header else 1)
    for i, cells in enumerate(data):
        for j, text in enumerate(cells):
            try:
                table.values[i, j] = _number(text)
            except ValueError as exc:
                hint = _refusal_hint(text, delimiter, first_cell=(table.first_row + i, j) == (1, 0))
                raise TableError(f"{table.where(i, j)}: {exc}{hint}") from None
    return table


def _refusal_hint(text: str, delimiter: str, first_cell: bool) -> str:
    """Why a cell that is not a number may be there: another delimiter than ``delimiter``
    (a semicolon, as spreadsheets write where the decimal mark is a comma), or, in the first
    cell of the file, the empty corner of the header that pandas writes with its index."""
    if _DECIMAL_COMMA.fullmatch(text.strip()):
        return " (write a number with a decimal point: 2.5, not 2,5)"
    others = [other for other in OTHER_DELIMITERS if other != delimiter and other in text]
    if others:
        return f" (its cells seem to be separated by {others[0]!r}, not by {delimiter!r})"
    if first_cell and not text.strip():
        return " (an empty first cell starts the header pandas writes with its index: save with index=False)"
    return ""


def _labels(table: Table, column: int, classes: int | None) -> np.ndarray:
    """Column ``column`` of ``table`` as int64 class numbers 0..K-1 (see :func:`load_csv`)."""
    values = table.values[:, column]

    def refuse(row: int, problem: str) -> TableError:
        return TableError(f"{table.where(row, column)}: {problem}")

    fractional = np.flatnonzero(values != np.floor(values))
    if fractional.size:
        row = int(fractional[0])
        raise refuse(row, f"label {values[row]:g} is not a whole number (labels are class numbers 0, 1, ...)")
    negative = np.flatnonzero(values < 0)
    if negative.size:
        row = int(negative[0])
        raise refuse(row, f"label {values[row]:g} is negative (labels are class numbers 0, 1, ...)")
    if classes is not None:
        beyond = np.flatnonzero(values >= classes)
        if beyond.size:
            row = int(beyond[0])
            allowed = "0 and 1 only (a binary label column)" if classes == 2 else f"0..{classes - 1}"
            raise refuse(row, f"label {values[row]:g} is not one of {classes} classes: labels are {allowed}")
    else:
        present = np.unique(values)
        gaps = np.flatnonzero(present != np.arange(present.size))
        if gaps.size:
            missing = int(gaps[0])
            found = ", ".join(f"{v:g}" for v in present[:10]) + (", ..." if present.size > 10 else "")
            raise TableError(
                f"{table.path}: {table.column_label(column)}: labels must be 0..K-1, but class {missing} has no rows "
                f"(labels found: {found}); renumber them from 0, or pass classes= when a split lacks a class"
            )
    return values.astype(np.int64)


def load_csv(
    x_path: str | os.PathLike,
    y_path: str | os.PathLike | None = None,
    *,
    label_column: int | str | None = None,
    header: bool | str = "infer",
    delimiter: str = ",",
    classes: int | None = None,
    dtype: Any = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels from CSV files: ``(x, t)`` with x (N, F) of ``dtype`` and t (N,) int64.

    Args:
        x_path: the features, one row per sample.
        y_path: the labels, one row per sample. Without it, ``label_column`` names the
            column of ``x_path`` that holds them, and the other columns are the features.
        label_column: the labels' column, by header name or 0-based index (``-1``: the last);
            in ``y_path`` it may be left out when that file has one column.
        header, delimiter: as in :func:`read_csv`, for both files.
        classes: the number of classes K; labels must lie in 0..K-1 (``classes=2``: a
            binary 0/1 column). Without it, the labels found must be exactly 0..K-1, every
            class present: pass it for a file that may lack a class (a small test set).

    Labels may be written as whole floats (``1.0``); anything else raises :class:`TableError`,
    as does a feature column that a header leaves without a name (the index that pandas
    writes unless told ``index=False``).
    """
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2):
        raise ValueError(f"classes must be an integer >= 2, got {classes!r}")
    features = read_csv(x_path, header=header, delimiter=delimiter)
    if y_path is None:
        if label_column is None:
            raise TableError(
                f"{features.path}: where are the labels? Give y_path (a file of labels) or label_column "
                f"(a column of this file); read_csv reads features alone"
            )
        column = features.column_index(label_column)
        if features.values.shape[1] < 2:
            raise TableError(f"{features.path} has one column, the labels: no features are left")
        _refuse_unnamed_features(features, column)
        t = _labels(features, column, classes)
        x = np.delete(features.values, column, axis=1)
    else:
        _refuse_unnamed_features(features)
        labels = read_csv(y_path, header=header, delimiter=delimiter)
        if label_column is None:
            if labels.values.shape[1] != 1:
                hint = (
                    " (an unnamed first column is the index pandas writes: save with index=False)"
                    if labels.columns and labels.columns[0] == ""
                    else ""
                )
                raise TableError(
                    f"{labels.path} has {labels.values.shape[1]} columns: pick the labels' one with label_column{hint}"
                )
            label_column = 0
        t = _labels(labels, labels.column_index(label_column), classes)
        x = features.values
        if len(x) != len(t):
            hint = (
                " (a header of numbers, such as the 0 pandas writes for an unnamed column, reads as data: "
                "pass header=True)"
                if abs(len(x) - len(t)) == 1 and bool(features.columns) != bool(labels.columns)
                else ""
            )
            raise TableError(
                f"{features.path} has {len(x)} rows of features but {labels.path} has {len(t)} labels{hint}"
            )
    return x.astype(dtype), t


def _refuse_unnamed_features(table: Table, label_column: int | None = None) -> None:
    """Refuse a feature column that the header leaves unnamed: in a header that names the
    others, it is most often the row index that pandas writes, which is no feature."""
    for column, name in enumerate(table.columns):
        if not name and column != label_column:
            pandas = (
                " (an unnamed first column is the index pandas writes: save with index=False)" if column == 0 else ""
            )
            raise TableError(
                f"{table.path}: the header leaves column {column + 1} without a name, so it is not taken "
                f"for a feature; name it or remove it{pandas}"
            )


def stratified_split(labels: Any, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, test)`` that keep each class's share in both parts.

    The test part has ``ceil(test_fraction * N)`` rows, shared among the classes in
    proportion to their counts (largest remainders get the rows left over, the lower class
    on a tie); within a class the rows are drawn with ``np.random.default_rng(seed)``.
    Both index arrays are sorted, so each part keeps the file's row order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} of {labels.dtype}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    n = labels.size
    n_test = math.ceil(test_fraction * n)
    if not 1 <= n_test < n:
        raise ValueError(f"a test fraction of {test_fraction} of {n} rows leaves {n_test} test and {n - n_test} train")
    classes, counts = np.unique(labels, return_counts=True)
    exact = n_test * counts  # each class's share times n, kept in integers
    share = exact // n
    leftover = n_test - int(share.sum())
    share[np.argsort(-(exact % n), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == k))[:take] for k, take in zip(classes, share, strict=True)]
    )
    return np.setdiff1d(np.arange(n), test), np.sort(test)


class Standardizer:
    """Per-feature standardization, ``(x - mean) / scale``, fitted on training data only.

    ``scale`` is the standard deviation (over N, not N-1, as scikit-learn's
    ``StandardScaler``); a feature whose training values are all equal gets scale 1, so it
    becomes 0 rather than NaN. Apply the same object to the training, test and new data.
    ``to_dict``/``from_dict`` carry it, exactly, through JSON (a model file).

    Attributes:
        mean, scale: float64 arrays of one sample's shape (F,) for a table.
    """

    def __init__(self, mean: Any, scale: Any) -> None:
        mean = np.asarray(mean, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        if mean.shape != scale.shape:
            raise ValueError(f"mean has shape {mean.shape} but scale has {scale.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(scale).all()):
            raise ValueError("mean and scale must be finite")
        if (scale <= 0).any():
            index = int(np.flatnonzero(scale.ravel() <= 0)[0])
            raise ValueError(f"scale must be positive, got {scale.ravel()[index]} at index {index}")
        self.mean, self.scale = mean, scale

    @classmethod
    def fit(cls, x: Any) -> Standardizer:
        """Fit on training samples ``x`` (N, F) (a NumPy array; N >= 1), statistics in float64."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"fit needs samples (N, F) with N >= 1, got shape {x.shape}")
        if not np.isfinite(x).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
            raise ValueError(f"cannot fit on non-finite data: x{list(bad)} is {x[bad]}")
        constant = (x == x[0]).all(axis=0)
        return cls(x.mean(axis=0), np.where(constant, 1.0, x.std(axis=0)))

    def transform(self, x: Any) -> Any:
        """``(x - mean) / scale`` for samples (N, F), in ``x``'s namespace and float dtype
        (integer inputs become float64)."""
        xp = array_namespace(x)
        if tuple(x.shape[1:]) != self.mean.shape:
            raise ValueError(
                f"samples have shape {tuple(x.shape[1:])}, the standardizer was fitted on {self.mean.shape}"
            )
        if not xp.isdtype(x.dtype, "real floating"):
            x = xp.astype(x, xp.float64)
        mean = xp.asarray(self.mean, dtype=x.dtype, device=device(x))
        scale = xp.asarray(self.scale, dtype=x.dtype, device=device(x))
        return (x - mean) / scale

    def to_dict(self) -> dict:
        """A JSON-able description: ``{"type": "Standardizer", "shape", "mean", "scale"}``."""
        return {
            "type": "Standardizer",
            "shape": list(self.mean.shape),
            "mean": self.mean.ravel().tolist(),
            "scale": self.scale.ravel().tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Standardizer:
        """The inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or data.get("type") != "Standardizer":
            raise ValueError(f"not a Standardizer description: {data!r:.200}")
        shape = tuple(data["shape"])
        size = math.prod(shape)
        for key in ("mean", "scale"):
            if len(data[key]) != size:
                raise ValueError(f"Standardizer {key} has {len(data[key])} values, its shape {shape} needs {size}")
        return cls(np.reshape(data["mean"], shape), np.reshape(data["scale"], shape))

    def __repr__(self) -> str:
        return f"Standardizer(features={self.mean.shape})"


def load_breast_cancer(
    path: str | os.PathLike | None = None,
    flatten: bool = True,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: Any = np.float32,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The Wisconsin diagnostic breast-cancer table, split: ``(x_train, t_train), (x_test, t_test)``.

    569 rows of 30 features computed from images of cell nuclei; 212 malignant (label 0)
    and 357 benign (label 1), scikit-learn's encoding (:data:`BREAST_CANCER_CLASSES`). The
    table comes from scikit-learn's bundled copy (no download): ``pip install 'gpucnn[tables]'``.
    The split is :func:`stratified_split` (``test_fraction``, ``seed``): 455 training and
    114 test rows by default.

    x (N, 30) of ``dtype``, raw values (features differ in scale by four orders of
    magnitude: fit a :class:`Standardizer` on ``x_train``); t (N,) int64. ``path`` must be
    None (the table ships with scikit-learn) and ``flatten`` has no effect (rows are always
    (N, 30)); both are there so that the loader takes the other loaders' arguments.
    Without scikit-learn it raises :class:`MissingDependency`.
    """
    if path is not None:
        raise ValueError(f"the breast-cancer table comes from scikit-learn and takes no path (got {path})")
    try:
        from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer
    except ImportError as exc:
        raise MissingDependency(
            f"the breast-cancer table is scikit-learn's bundled copy, and scikit-learn is not installed: "
            f"{INSTALL_TABLES} (or pip install scikit-learn)"
        ) from exc
    bunch = sklearn_breast_cancer()
    x, t = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    if x.ndim != 2 or x.shape[1] != BREAST_CANCER_FEATURES or len(t) != len(x) or not np.isin(t, (0, 1)).all():
        raise TableError(
            f"scikit-learn's breast-cancer table has features {x.shape} and targets {t.shape} "
            f"{sorted(np.unique(t).tolist())}; expected (N, {BREAST_CANCER_FEATURES}) and 0/1 targets"
        )
    t = t.astype(np.int64)
    train, test = stratified_split(t, test_fraction, seed)
    return (x[train].astype(dtype), t[train]), (x[test].astype(dtype), t[test])
