"""N:M sparsity (METHODS.md §2.1, §6.1): block invariants, layouts, ORT vs a masked reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spa_nm
from spa_nm.errors import ConfigError
from spa_nm.nm import NMSpec, check_nm, nm_mask
from spa_nm.testing import random_feeds, run
from tests.helpers import model_from_text

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = [(2, 4), (1, 4), (2, 8), (1, 8), (4, 8), (1, 16), (1, 32)]


@settings(max_examples=150, deadline=None)
@given(
    pattern=st.sampled_from(PATTERNS),
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    blocks=st.integers(1, 4),
    axis_pos=st.integers(0, 3),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_mask_invariants(pattern, lead, blocks, axis_pos, seed, ties):
    n, m = pattern
    spec = NMSpec(n, m)
    rng = np.random.default_rng(seed)
    shape = list(lead)
    axis = min(axis_pos, len(shape))
    shape.insert(axis, blocks * m)
    w = rng.integers(-3, 4, size=shape).astype(np.float32) if ties else rng.standard_normal(shape).astype(np.float32)
    mask = nm_mask(w, axis, spec)
    b = np.moveaxis(mask, axis, -1).reshape(-1, m)
    assert np.all(b.sum(axis=1) == n)  # exactly N ones per block
    sparse = np.where(mask, w, 0)
    assert check_nm(sparse, axis, spec)
    # kept values are the originals and the largest magnitudes of their block
    wb = np.moveaxis(np.abs(w), axis, -1).reshape(-1, m)
    kept_min = np.where(b, wb, np.inf).min(axis=1)
    dropped_max = np.where(~b, wb, -np.inf).max(axis=1)
    assert np.all(kept_min >= dropped_max)
    np.testing.assert_array_equal(np.where(mask, sparse, 0), np.where(mask, w, 0))
    # masking twice changes nothing; ties are deterministic (the lower index wins)
    np.testing.assert_array_equal(nm_mask(sparse, axis, spec) | ~mask, np.ones_like(mask))
    np.testing.assert_array_equal(nm_mask(w, axis, spec), mask)


def test_ties_keep_the_lower_index():
    w = np.ones((1, 8), np.float32)
    np.testing.assert_array_equal(nm_mask(w, 1, NMSpec(2, 4)), [[1, 1, 0, 0, 1, 1, 0, 0]])


def test_exact_pattern():
    w = np.array([[0.1, -0.9, 0.5, 0.2, 3.0, 0.0, -4.0, 1.0]], np.float32)
    np.testing.assert_array_equal(nm_mask(w, 1, NMSpec(2, 4)), [[0, 1, 1, 0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(nm_mask(w, 1, NMSpec(1, 8)), [[0, 0, 0, 0, 0, 0, 1, 0]])


@pytest.mark.parametrize("text", ["5:4", "2:0", "abc", "4:4", "0:4", "2:4:8", "-1:4", "2:2048"])
def test_bad_patterns(text):
    with pytest.raises(ConfigError):
        NMSpec.parse(text)


NM_MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
nm (float[2, 8, 6, 6] input) => (float[2, 5] output, float[2, 16, 4] mm)
<float[16, 8, 3, 3] w1, float[16] b1, float[16, 4, 1, 1] wg, float[16, 16, 2, 2] wt, float[16, 10] wf, float[5, 10] wg2,
 float[36, 4] wm, float[16, 3, 1, 1] odd>
{
  c1 = Conv <pads = [1, 1, 1, 1]> (input, w1, b1)
  r1 = Relu (c1)
  g = Conv <group = 4> (r1, wg)
  t = ConvTranspose <strides = [2, 2], kernel_shape = [2, 2]> (g, wt)
  p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (t)
  fl = Reshape (p, shp)
  mm = MatMul (fl, wm)
  gp = GlobalAveragePool (p)
  f = Flatten (gp)
  z = Gemm (f, wf)
  output = Gemm <transB = 1> (z, wg2)
}
"""


def nm_model(tmp_path):
    m = model_from_text(NM_MODEL.replace("float[16, 3, 1, 1] odd>", "float[16, 3, 1, 1] odd, int64[3] shp = {2, 16, 36}>"))
    p = tmp_path / "nm.onnx"
    onnx.save(m, p)
    return spa_nm.load(p)


# weight, reduction axis (from METHODS.md §2.1 and the op definitions)
LAYOUT = {"w1": 1, "wg": 1, "wt": 0, "wm": 0, "wf": 0, "wg2": 1}


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "1:8", "2:8", "4:8", "1:16"])
def test_model_sparsify_layout_and_ort_reference(tmp_path, pattern):
    model = nm_model(tmp_path)
    spec = NMSpec.parse(pattern)
    sparse, rep = spa_nm.sparsify(model, pattern)
    done = {d["weight"]: d for d in rep["layers_sparsified"]}
    skipped = {s["node"]: s["reason"] for s in rep["layers_skipped"]}
    for name, axis in LAYOUT.items():
        w = model.graph.initializers[name].const_value.numpy()
        got = sparse.graph.initializers[name].const_value.numpy()
        if w.shape[axis] % spec.m:
            assert name not in done
            assert any("not a multiple" in r for r in skipped.values())
            np.testing.assert_array_equal(got, w)
            continue
        assert done[name]["axis"] == axis
        assert check_nm(got, axis, spec)
        np.testing.assert_array_equal(got, np.where(nm_mask(w, axis, spec), w, 0))
    # onnxruntime on the sparsified model == onnxruntime on a numpy-masked reference
    ref = spa_nm.api.copy_model(model)
    for name, axis in LAYOUT.items():
        w = ref.graph.initializers[name].const_value.numpy()
        if w.shape[axis] % spec.m == 0:
            ref.graph.initializers[name].const_value = onnx_ir_tensor(np.where(nm_mask(w, axis, spec), w, 0), name)
    feeds = random_feeds(model)
    for a, b in zip(run(ref, feeds), run(sparse, feeds), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # the input model is untouched
    assert np.count_nonzero(model.graph.initializers["w1"].const_value.numpy()) == 16 * 8 * 9


def onnx_ir_tensor(arr, name):
    import onnx_ir as ir

    return ir.tensor(arr.astype(np.float32), name=name)


def test_sparsity_report(tmp_path):
    model = nm_model(tmp_path)
    _, rep = spa_nm.sparsify(model, "1:8")
    assert rep["pattern"] == "1:8" and abs(rep["sparsity"] - 7 / 8) < 1e-3
    assert {"node", "op", "reason"} <= set(rep["layers_skipped"][0])


def test_ignore_and_shared_weights(tmp_path):
    text = """
<ir_version: 8, opset_import: ["" : 13]>
s (float[1, 8] x) => (float[1, 8] y)
<float[8, 8] w>
{
  a = MatMul (x, w)
  y = MatMul (a, w)
}
"""
    p = tmp_path / "s.onnx"
    onnx.save(model_from_text(text), p)
    m = spa_nm.load(p)
    _, rep = spa_nm.sparsify(m, "2:4")
    assert len(rep["layers_sparsified"]) == 2  # same weight, same axis for both readers
    _, rep = spa_nm.sparsify(m, "2:4", ignore=["MatMul_0"])
    assert any(s["reason"] == "ignored by --ignore" for s in rep["layers_skipped"])


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "vgg_bn", "mlp"])
def test_prune_then_sparsify(tmp_path, name):
    model = spa_nm.load(ROOT / "models" / "onnx" / f"{name}.onnx")
    pruned = spa_nm.prune(model, 0.5).model
    sparse, rep = spa_nm.sparsify(pruned, "2:4")
    assert rep["layers_sparsified"]
    for d in rep["layers_sparsified"]:
        assert check_nm(sparse.graph.initializers[d["weight"]].const_value.numpy(), d["axis"], NMSpec(2, 4))
    spa_nm.save(sparse, tmp_path / "s.onnx")
    onnx.checker.check_model(onnx.load(tmp_path / "s.onnx"), full_check=True)


def test_cli_sparsify_and_bad_patterns(tmp_path):
    src = ROOT / "models" / "onnx" / "mlp.onnx"
    out, rep = tmp_path / "s.onnx", tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sparsify", str(src), "-o", str(out), "--pattern", "2:4",
                        "--report", str(rep), "-q"], capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr
    (entry,) = json.loads(rep.read_text())["models"]
    assert entry["status"] == "ok" and entry["pattern"] == "2:4" and entry["sparsity"] == 0.5
    for bad in ("5:4", "2:0", "abc"):
        p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sparsify", str(src), "-o", str(tmp_path / "x.onnx"),
                            "--pattern", bad], capture_output=True, text=True)  # fmt: skip
        assert p.returncode == 2 and p.stderr.startswith("spa-nm: error: bad N:M pattern") and "Traceback" not in p.stderr
        assert not (tmp_path / "x.onnx").exists()
