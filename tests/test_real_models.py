"""Real converter output that ships inside a PyPI package: the onnx wheel's "light" model zoo
(Caffe2-converted AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet v1, SqueezeNet,
VGG-19, ZFNet; IR 3, opset 9, weights built by ConstantOfShape, every initializer also a graph
input). Each must prune, pass the full checker and the zero-group oracle.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import spa_nm
from spa_nm.surgery import check_model
from spa_nm.testing import assert_prune_equivalent

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
HEAVY = {"light_bvlc_alexnet", "light_vgg19", "light_zfnet512"}  # 60M+ parameters each
MODELS = sorted(LIGHT.glob("light_*.onnx")) if LIGHT.is_dir() else []


def _params():
    for p in MODELS:
        marks = [pytest.mark.slow] if p.stem in HEAVY else []
        yield pytest.param(p, id=p.stem.removeprefix("light_"), marks=marks)


@pytest.mark.skipif(not MODELS, reason="this onnx wheel ships no light models")
@pytest.mark.parametrize("path", list(_params()))
def test_light_model_prunes_exactly(path):
    model = spa_nm.load(path)
    res = spa_nm.prune(model, 0.5)
    r = res.report
    assert r["groups_pruned"] >= 3, r["blocked"][:5]
    assert r["params_after"] < 0.8 * r["params_before"]
    check_model(res.model)
    # IR 3: every initializer stays listed as a graph input
    if res.model.ir_version < 4:
        inputs = {v.name for v in res.model.graph.inputs}
        assert set(res.model.graph.initializers) <= inputs
    assert_prune_equivalent(model, res, atol=1e-4, rtol=1e-5)  # real-size activations
