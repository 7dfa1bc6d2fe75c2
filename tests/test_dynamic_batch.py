"""Models exported with a dynamic batch prune as fully as static ones.

The legacy exporter writes ``torch.chunk`` and ``x.view(x.size(0), ...)`` as shape arithmetic
on a tensor whose batch is symbolic; the pre-pass folds the static entries, rewrites targets
with ONNX's 0 ("copy this dim") where exact, and the oracle runs at batch 2 (exported at 1).
"""

from __future__ import annotations

import warnings

import pytest

import spa_nm
from spa_nm.testing import assert_prune_equivalent

torch = pytest.importorskip("torch")
import models  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.torch]

NAMES = ["shufflenet_v2", "resnet_basic", "unet", "mobilenet_v3", "mlp"]


class ViewFlatten(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(torch.relu(self.c(x)), 4)
        return self.fc(y.view(y.size(0), -1))


def export(net, args, path, exporter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(net, args, str(path), dynamo=False, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})  # fmt: skip
        else:
            torch.onnx.export(net, args, str(path), dynamo=True, input_names=["input"], output_names=["output"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))  # fmt: skip
    return path


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", [*NAMES, "view_flatten"])
def test_dynamic_batch_prunes_like_static(tmp_path, name, exporter):
    if name == "view_flatten":
        torch.manual_seed(0)
        net, args = ViewFlatten().eval(), (torch.randn(1, 3, 32, 32),)
    else:
        spec = models.get_model(name)
        net, args = spec.builder(), tuple(torch.from_numpy(a) for a in spec.example_inputs())
    dyn = spa_nm.load(export(net, args, tmp_path / "dyn.onnx", exporter))
    static = spa_nm.load(export_static(net, args, tmp_path / "static.onnx"))
    rd, rs = spa_nm.prune(dyn, 0.5), spa_nm.prune(static, 0.5)
    assert rd.report["groups_pruned"] == rs.report["groups_pruned"] > 0, rd.report["blocked"][:4]
    assert rd.report["params_after"] == rs.report["params_after"]
    # MACs of a dynamic model are counted at batch 1, like the static export's
    assert rd.report["macs_before"] == rs.report["macs_before"] > 0
    assert rd.report["macs_after"] == rs.report["macs_after"]
    assert str(rd.model.graph.inputs[0].shape[0]) == "batch" or not isinstance(rd.model.graph.inputs[0].shape[0], int)
    assert_prune_equivalent(dyn, rd, atol=1e-5)  # random feeds use batch 2


def export_static(net, args, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, str(path), dynamo=False, input_names=["input"], output_names=["output"])
    return path
