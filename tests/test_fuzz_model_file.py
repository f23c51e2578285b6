"""Model files under random bytes, truncations, bit flips, missing and broken entries,
entries of the wrong type and lying array headers.

Whatever the bytes, ``gpucnn.load`` returns a model that predicts, or raises its documented
error (:class:`gpucnn.io.ModelFileError`), never a NumPy, zip or JSON error; and it
allocates memory for the bytes a file holds, never for the sizes an array header or the
archive's directory claims.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import struct
import tempfile
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpucnn
from gpucnn.io import ModelFileError
from gpucnn.layers import Affine, BatchNormalization, ReLU
from gpucnn.tables import Standardizer

# The suite's profile (tests/conftest.py: derandomized unless HYPOTHESIS_PROFILE says
# otherwise), with at least 150 examples a test.
FUZZ = settings(
    max_examples=max(150, settings.default.max_examples),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
X = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)


@functools.cache
def good_file() -> bytes:
    """A small saved model with every kind of entry: parameters, BatchNormalization's state,
    Adam and its state, the training position and a Standardizer."""
    with gpucnn.use_backend("numpy"):
        model = gpucnn.Sequential([Affine(5), BatchNormalization(), ReLU(), Affine(3)], input_shape=(4,), seed=0)
        model.preprocessing = Standardizer.fit(X)
        model.fit(X, np.arange(8) % 3, batch_size=4, epochs=1, optimizer="adam", seed=0, verbose=0)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "m.npz")
            model.save(path)
            with open(path, "rb") as f:
                return f.read()


def entries(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return dict(archive)


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def load(tmp_path, data: bytes):
    """``gpucnn.load`` of ``data`` on the NumPy backend: the model, or None after a ModelFileError."""
    path = tmp_path / "m.npz"
    path.write_bytes(data)
    try:
        with gpucnn.use_backend("numpy"):
            return gpucnn.load(path)
    except ModelFileError as exc:
        assert str(path) in str(exc)  # every error names the file
        return None


def load_and_predict(tmp_path, data: bytes) -> None:
    """A file that loads gives a model that predicts; any other file raises ModelFileError."""
    model = load(tmp_path, data)
    if model is not None:
        with gpucnn.use_backend("numpy"):
            scores = model.predict(np.ones((2, *model.input_shape), dtype=np.float32))
        assert scores.shape == (2, model.layers[-1].output_shape[-1])


def test_the_files_fuzzed_here_and_those_of_release_0_1_0_load(tmp_path):
    assert load(tmp_path, good_file()) is not None
    for name in ("simple_convnet_v0.1.0", "sequential_bn_adam_v0.1.0"):
        with open(os.path.join(FIXTURES, f"{name}.npz"), "rb") as f:
            assert load(tmp_path, f.read()) is not None, name


# -- bytes --------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=600), zip_magic=st.booleans())
def test_random_bytes(tmp_path, data, zip_magic):
    load_and_predict(tmp_path, b"PK\x03\x04" + data if zip_magic else data)


@FUZZ
@given(cut=st.integers(0, 1 << 20))
def test_truncations(tmp_path, cut):
    data = good_file()
    assert load(tmp_path, data[: cut % len(data)]) is None


@FUZZ
@given(bits=st.lists(st.integers(0, 1 << 24), min_size=1, max_size=4))
def test_bit_flips(tmp_path, bits):
    data = bytearray(good_file())
    for bit in bits:
        data[bit // 8 % len(data)] ^= 1 << (bit % 8)
    load_and_predict(tmp_path, bytes(data))


@FUZZ
@given(start=st.integers(0, 1 << 20), junk=st.binary(min_size=1, max_size=64))
def test_spliced_junk(tmp_path, start, junk):
    data = good_file()
    start %= len(data)
    load_and_predict(tmp_path, data[:start] + junk + data[start + len(junk) :])


# -- entries ------------------------------------------------------------------------------------

ENTRIES = sorted(entries(good_file()))
JSON_ENTRIES = ["architecture", "optimizer", "preprocessing", "training"]


@pytest.mark.parametrize("key", ENTRIES)
def test_each_entry_removed(tmp_path, key):
    """Every entry is needed, but for the optimizer with its state (a model saved before
    training has none), which then loads without one."""
    arrays = entries(good_file())
    del arrays[key]
    model = load(tmp_path, npz(arrays))
    assert model is None, f"a file without {key!r} loaded"
    if key == "optimizer":
        arrays = {k: v for k, v in arrays.items() if not k.startswith("optimizer_state/")}
        model = load(tmp_path, npz(arrays))
        assert model is not None and model.optimizer is None


BROKEN_JSON = ["", "{", '{"epoch": 1,', "[1, 2]", '"text"', "3", "null", "true", "[" * 100_000, "9" * 5000]


@pytest.mark.parametrize("key", JSON_ENTRIES)
def test_each_json_entry_broken_or_of_another_type(tmp_path, key):
    arrays = entries(good_file())
    for text in BROKEN_JSON:
        assert load(tmp_path, npz({**arrays, key: np.array(text)})) is None, text[:20]
    for value in (np.zeros(3), np.array(3), np.array(["{}", "{}"]), np.array(b"{}")):
        assert load(tmp_path, npz({**arrays, key: value})) is None, value


def _json_paths(value, path=()):
    """The path of every object member and list item inside a JSON value."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for k, v in items:
        yield (*path, k)
        yield from _json_paths(v, (*path, k))


def _replaced(value, path, new):
    """A copy of JSON ``value`` with the item at ``path`` replaced (``new`` is _REMOVE: removed)."""
    value = json.loads(json.dumps(value))
    parent = value
    for k in path[:-1]:
        parent = parent[k]
    if new is _REMOVE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return value


_REMOVE = object()
ODD_VALUES = [_REMOVE, None, "x", -1, 0, 1.5, float("nan"), 10**30, True, [], [1, [2]], {}, {"a": 1}]
JSON_PATHS = [
    (key, path)
    for key in JSON_ENTRIES
    for path in _json_paths(json.loads(str(entries(good_file())[key])))
    if not (key == "preprocessing" and path[0] in ("mean", "scale") and len(path) > 1)  # one value of many
]


@pytest.mark.parametrize("key,path", JSON_PATHS, ids=[f"{k}.{'.'.join(map(str, p))}" for k, p in JSON_PATHS])
def test_each_json_field_removed_or_of_another_type(tmp_path, key, path):
    """Each field of each JSON entry, removed or replaced by a value of another type: a
    model that predicts, or ModelFileError."""
    arrays = entries(good_file())
    value = json.loads(str(arrays[key]))
    for new in ODD_VALUES:
        load_and_predict(tmp_path, npz({**arrays, key: np.array(json.dumps(_replaced(value, path, new)))}))


def test_unknown_layer_and_optimizer_options(tmp_path):
    arrays = entries(good_file())
    architecture = json.loads(str(arrays["architecture"]))
    architecture["layers"][0]["config"]["bogus"] = 1
    optimizer = json.loads(str(arrays["optimizer"]))
    optimizer["config"]["bogus"] = 1
    for key, value, message in [
        ("architecture", architecture, "unexpected keyword argument 'bogus'"),
        ("optimizer", optimizer, "unexpected keyword argument 'bogus'"),
        ("optimizer", {**optimizer, "class": "Adamax"}, "unknown optimizer 'Adamax'"),
    ]:
        path = tmp_path / f"{key}.npz"
        path.write_bytes(npz({**arrays, key: np.array(json.dumps(value))}))
        with pytest.raises(ModelFileError, match=message):
            gpucnn.load(path)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("format_version", np.array("1"), "its format version is a <U1 array of shape (), not an integer"),
        ("format_version", np.array([1, 2]), "not an integer"),
        ("format_version", np.array(0), "format version 0"),
        ("gpucnn_format", np.array("gpucnn-mode"), "its 'gpucnn_format' entry is not 'gpucnn-model'"),
        ("param/affine1.W", np.zeros((4, 5), dtype=np.int32), "entry 'param/affine1.W' holds int32 values"),
        ("optimizer_state/affine1.W/m", np.zeros((4, 6), dtype=np.float32), "affine1.W/m has shape (4, 6)"),
        ("optimizer_state/affine9.W/m", np.zeros((4, 5), dtype=np.float32), "state for 'affine9.W', which is not"),
        ("optimizer_state/affine1.W/x", np.zeros((4, 5), dtype=np.float32), "has slots ['m', 'v', 'x']"),
        ("optimizer_state/m", np.zeros((4, 5), dtype=np.float32), "is not optimizer_state/PARAMETER/SLOT"),
    ],
)
def test_entries_of_the_wrong_kind(tmp_path, key, value, message):
    path = tmp_path / "m.npz"
    path.write_bytes(npz({**entries(good_file()), key: value}))
    with pytest.raises(ModelFileError, match=re.escape(message)):
        gpucnn.load(path)


# -- lying headers ------------------------------------------------------------------------------


def _npy_header(shape, descr="<f4") -> bytes:
    """A version 1.0 .npy header for ``shape`` of ``descr``, followed by no data."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def _with_member(name: str, member: bytes, compression=zipfile.ZIP_STORED) -> bytes:
    """The good file with entry ``name`` (``.npy`` added) replaced by the raw bytes ``member``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good_file())) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename != f"{name}.npy":
                target.writestr(info.filename, source.read(info))
        target.writestr(f"{name}.npy", member, compress_type=compression)
    return out.getvalue()


def _patch_directory(data: bytes, name: str, **fields: int) -> bytes:
    """``data`` with fields of entry ``name``'s central directory record changed:
    ``version`` (needed to extract), ``flags``, ``method``, ``compressed``, ``size``."""
    offsets = {
        "version": (6, "<H"),
        "flags": (8, "<H"),
        "method": (10, "<H"),
        "compressed": (20, "<I"),
        "size": (24, "<I"),
    }
    data = bytearray(data)
    end = data.rindex(b"PK\x05\x06")  # the end record, which gives the directory's offset
    record = struct.unpack_from("<I", data, end + 16)[0]
    while True:
        name_length = struct.unpack_from("<H", data, record + 28)[0]
        if data[record + 46 : record + 46 + name_length] == f"{name}.npy".encode():
            break
        extra, comment = struct.unpack_from("<HH", data, record + 30)
        record += 46 + name_length + extra + comment
    for field, value in fields.items():
        offset, fmt = offsets[field]
        struct.pack_into(fmt, data, record + offset, value)
    return bytes(data)


GiB = 2**30
LYING = {
    "a header claiming 2**40 floats": _with_member("param/affine1.W", _npy_header((2**40,))),
    "a header claiming (0, 2**70)": _with_member("param/affine1.W", _npy_header((0, 2**70))),
    "a header claiming (2**32, 2**32) (2**64 wraps to 0)": _with_member("param/affine1.W", _npy_header((2**32, 2**32))),
    "a negative size": _with_member("param/affine1.W", _npy_header((-4, 5))),
    "an entry claiming 1 GiB, stored": _patch_directory(
        _with_member("param/affine1.W", _npy_header((GiB // 4,))), "param/affine1.W", size=GiB + 128
    ),
    "an entry claiming 1 GiB in 1 GiB, stored": _patch_directory(
        _with_member("param/affine1.W", _npy_header((GiB // 4,))),
        "param/affine1.W",
        size=GiB + 128,
        compressed=GiB + 128,
    ),
    "an entry claiming 1 GiB, deflated": _patch_directory(
        _with_member("param/affine1.W", _npy_header((GiB // 4,)), zipfile.ZIP_DEFLATED),
        "param/affine1.W",
        size=GiB + 128,
    ),
}


@pytest.mark.parametrize("case", sorted(LYING))
def test_a_lying_header_allocates_nothing_for_its_claim(tmp_path, case):
    """Memory follows the bytes the file holds (a few KiB), never the sizes it claims (GiB to ZiB)."""
    path = tmp_path / "m.npz"
    path.write_bytes(LYING[case])
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="is damaged|is not a readable gpucnn model file"):
            gpucnn.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"version": 173}, "zip file version 17.3"),
        ({"flags": 1}, "encrypted"),
        ({"method": 99}, "zip method 99"),
        ({"method": zipfile.ZIP_LZMA}, "zip method 14"),
    ],
)
def test_archive_features_model_files_do_not_use(tmp_path, fields, message):
    path = tmp_path / "m.npz"
    path.write_bytes(_patch_directory(good_file(), "param/affine1.W", **fields))
    with pytest.raises(ModelFileError, match=message):
        gpucnn.load(path)


def test_object_arrays_are_never_unpickled(tmp_path, monkeypatch):
    member = io.BytesIO()
    np.save(member, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    path = tmp_path / "m.npz"
    path.write_bytes(_with_member("param/affine1.W", member.getvalue()))
    monkeypatch.setattr("pickle.load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(ModelFileError, match="entry 'param/affine1.W' holds object values"):
        gpucnn.load(path)
