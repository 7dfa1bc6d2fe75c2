"""Malformed inputs never crash, hang or write outside the output path.

Truncated and bit-flipped model files, absurd declared dimensions, hostile external-data
locations and huge attribute values each end in exit code 0 (a flip can leave a valid model),
1 or 2, with errors on one line and no traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest

from spa_nm.cli import main
from tests.helpers import CNN, model_from_text


@contextlib.contextmanager
def deadline(seconds: int):
    def boom(*_):
        raise TimeoutError(f"hang: more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_main(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), deadline(60):
        code = main(list(args))
    return code, err.getvalue()


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_clean_outcome(code: int, err: str, folder: Path, before: set[str], out: Path) -> None:
    assert code in (0, 1, 2), code
    assert "Traceback" not in err
    if code:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and all(ln.startswith("spa-nm: error: ") for ln in lines), err
    created = snapshot(folder) - before
    allowed = {out.name} if code == 0 else set()
    assert created <= allowed, f"unexpected files: {created - allowed}"


@pytest.fixture
def valid_bytes() -> bytes:
    return model_from_text(CNN).SerializeToString()


@pytest.mark.parametrize("seed", range(40))
def test_truncated(tmp_path, valid_bytes, seed):
    cut = int(np.random.default_rng(seed).integers(0, len(valid_bytes)))
    src = tmp_path / "m.onnx"
    src.write_bytes(valid_bytes[:cut])
    out = tmp_path / "o.onnx"
    before = snapshot(tmp_path)
    code, err = run_main("prune", str(src), "-o", str(out), "--ratio", "0.5")
    assert_clean_outcome(code, err, tmp_path, before, out)
    assert src.read_bytes() == valid_bytes[:cut]


@pytest.mark.parametrize("seed", range(80))
def test_bit_flipped(tmp_path, valid_bytes, seed):
    rng = np.random.default_rng(1000 + seed)
    data = bytearray(valid_bytes)
    for _ in range(int(rng.integers(1, 6))):
        i = int(rng.integers(0, len(data)))
        data[i] ^= 1 << int(rng.integers(0, 8))
    src = tmp_path / "m.onnx"
    src.write_bytes(bytes(data))
    out = tmp_path / "o.onnx"
    before = snapshot(tmp_path)
    code, err = run_main("prune", str(src), "-o", str(out), "--ratio", "0.5")
    assert_clean_outcome(code, err, tmp_path, before, out)


@pytest.mark.parametrize("dims", [[1, 3, 2**40, 2**40], [1, 3, 0, 8], [1, 2**31, 8, 8], [-5, 3, 8, 8]])
def test_absurd_declared_dims(tmp_path, dims):
    m = model_from_text(CNN)
    shape = m.graph.input[0].type.tensor_type.shape
    for d, v in zip(shape.dim, dims, strict=True):
        d.dim_value = v
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    out = tmp_path / "o.onnx"
    before = snapshot(tmp_path)
    code, err = run_main("prune", str(src), "-o", str(out), "--ratio", "0.5")
    assert_clean_outcome(code, err, tmp_path, before, out)


def test_absurd_initializer_dims(tmp_path):
    m = model_from_text(CNN)
    w = m.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([2**40, 3, 3, 3])  # claims 2^40 rows, holds a few bytes
    src = tmp_path / "m.onnx"
    src.write_bytes(m.SerializeToString())
    out = tmp_path / "o.onnx"
    before = snapshot(tmp_path)
    code, err = run_main("prune", str(src), "-o", str(out), "--ratio", "0.5")
    assert_clean_outcome(code, err, tmp_path, before, out)
    assert code == 2


@pytest.mark.parametrize(
    "location", ["../outside.bin", "/etc/passwd", "sub/../../x.bin", "a" * 300, "data.bin\x00.png", ""]
)
def test_hostile_external_locations(tmp_path, location):
    m = model_from_text(CNN)
    d = tmp_path / "model"
    d.mkdir()
    onnx.save(m, d / "m.onnx", save_as_external_data=True, location="data.bin", size_threshold=0)
    proto = onnx.load(d / "m.onnx", load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    (d / "m.onnx").write_bytes(proto.SerializeToString())
    (tmp_path / "outside.bin").write_bytes(os.urandom(4096))
    out = tmp_path / "o.onnx"
    before = snapshot(tmp_path)
    code, err = run_main("prune", str(d / "m.onnx"), "-o", str(out), "--ratio", "0.5")
    assert code == 2
    assert_clean_outcome(code, err, tmp_path, before, out)


@pytest.mark.parametrize(
    ("attr", "value"),
    [("group", 2**62), ("group", -3), ("group", 0), ("strides", [2**40, 2**40]), ("pads", [2**40] * 4), ("kernel_shape", [10**9, 1])],
)
def test_huge_attribute_values(tmp_path, attr, value):
    m = model_from_text(CNN)
    conv = m.graph.node[0]
    for a in list(conv.attribute):
        if a.name == attr:
            conv.attribute.remove(a)
    conv.attribute.append(onnx.helper.make_attribute(attr, value))
    src = tmp_path / "m.onnx"
    src.write_bytes(m.SerializeToString())
    out = tmp_path / "o.onnx"
    before = snapshot(tmp_path)
    code, err = run_main("prune", str(src), "-o", str(out), "--ratio", "0.5")
    assert_clean_outcome(code, err, tmp_path, before, out)
