"""The zoo itself: every model exports with both torch exporters and matches torch on ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import spa_nm
from spa_nm.testing import run

torch = pytest.importorskip("torch")
import models  # noqa: E402
from models.export import cached_export  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.torch]
CASES = [(n, e) for n in models.list_models() for e in ("legacy", "dynamo")]
SHIPPED = sorted((Path(__file__).resolve().parents[1] / "models" / "onnx").glob("*.onnx"))


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo_exports")


def test_zoo_covers_the_patterns():
    tags = set().union(*(models.get_model(n).tags for n in models.list_models()))
    need = {"flatten", "bn", "residual", "bottleneck", "grouped", "depthwise", "se", "hardswish",
            "shuffle", "split", "concat", "fire", "convtranspose", "resize", "mlp", "prelu", "instancenorm"}  # fmt: skip
    assert need <= tags, need - tags


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("mlp", (1, 64))(lambda: None)


@pytest.mark.parametrize(("name", "exporter"), CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_export_matches_torch(export_dir, name, exporter):
    spec = models.get_model(name)
    net = spec.build()
    x = spec.example_inputs()
    ref = net(*[torch.from_numpy(a) for a in x]).detach().numpy()
    model = spa_nm.load(cached_export(name, exporter, export_dir))
    (got,) = run(model, {v.name: a for v, a in zip(model.graph.inputs, x, strict=True)})
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_models_load_and_prune(path):
    model = spa_nm.load(path)
    res = spa_nm.prune(model, 0.5)
    assert res.report["params_after"] < res.report["params_before"]


def test_shipped_models_exist():
    assert len(SHIPPED) >= 4
    assert sum(p.stat().st_size for p in SHIPPED) < 8 * 2**20
