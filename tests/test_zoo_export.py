"""The model zoo: registry contract, every model exports with both torch exporters and matches
torch on onnxruntime (CPU, graph optimizations off), the shipped Quickstart models load."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
import models  # noqa: E402
from models.export import EXPORTERS, LEGACY_OPSET, cached_export, data_path, export_onnx  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.torch]

ROOT = Path(__file__).resolve().parents[1]
NAMES = models.list_models()
CASES = [(n, e) for n in NAMES for e in EXPORTERS]
BN_CASES = [(n, e) for n in models.list_models(tag="bn") for e in EXPORTERS]
SHIPPED = sorted((ROOT / "models" / "onnx").glob("*.onnx"))
ATOL = 1e-4

# ONNX ops each model must show with both exporters: the pattern it is in the zoo for
REQUIRED_OPS = {
    "plain_cnn": {"Conv", "PRelu", "MaxPool", "Gemm"},
    "vgg_bn": {"Conv", "MaxPool", "AveragePool", "Gemm"},
    "resnet_basic": {"Conv", "Add", "Gemm"},
    "resnet_bottleneck": {"Conv", "Add", "Gemm"},
    "resnext": {"Conv", "Add", "Gemm"},
    "mobilenet_v2": {"Conv", "Clip", "Add", "Gemm"},
    "mobilenet_v3": {"Conv", "HardSigmoid", "Mul", "Add", "Gemm"},
    "shufflenet_v2": {"Conv", "Concat", "Reshape", "Transpose", "Gemm"},
    "densenet": {"Conv", "BatchNormalization", "Concat", "AveragePool", "Gemm"},
    "squeezenet": {"Conv", "Concat", "MaxPool"},
    "unet": {"Conv", "ConvTranspose", "Resize", "Pad", "Slice", "InstanceNormalization", "Concat"},
    "mlp": {"Gemm", "Relu"},
}


def session(path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def torch_out(spec, x) -> np.ndarray:
    with torch.no_grad():
        return spec.builder()(*[torch.from_numpy(a) for a in x]).numpy()


def assert_matches_torch(path, spec, seed=0):
    x = spec.example_inputs(seed)
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == list(spec.input_names)
    assert [o.name for o in sess.get_outputs()] == ["output"]
    (got,) = sess.run(None, dict(zip(spec.input_names, x, strict=True)))
    np.testing.assert_allclose(got, torch_out(spec, x), atol=ATOL, rtol=1e-4)


def graph_of(path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def op_types(path) -> Counter:
    return Counter(n.op_type for n in graph_of(path).graph.node)


def opset(path) -> int:
    return next(o.version for o in graph_of(path).opset_import if o.domain in ("", "ai.onnx"))



# ---------------------------------------------------------------- registry


def test_import_models_does_not_import_torch():
    code = "import sys, models; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_list_and_get():
    assert sorted(NAMES) == NAMES and len(NAMES) >= 12
    assert models.list_models("resnet*") == ["resnet_basic", "resnet_bottleneck"]
    assert models.list_models("nothing*") == []
    assert "shufflenet_v2" in models.list_models(tag="shuffle")
    spec = models.get_model("mlp")
    assert spec.name == "mlp" and spec.input_shapes == ((1, 64),) and "mlp" in spec.tags
    assert isinstance(spec.tags, frozenset)
    with pytest.raises(KeyError, match="no model"):
        models.get_model("nope")


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("mlp", (1, 64))(lambda: None)
    assert models.get_model("mlp").input_shapes == ((1, 64),)


def test_spec_is_frozen():
    spec = models.get_model("mlp")
    with pytest.raises(AttributeError):
        spec.name = "other"


def test_zoo_covers_the_patterns():
    tags = set().union(*(models.get_model(n).tags for n in NAMES))
    need = {"flatten", "gemm", "bn", "residual", "downsample", "bottleneck", "grouped", "depthwise",
            "depthwise_multiplier", "se", "hardswish", "shuffle", "split", "concat", "fire",
            "convtranspose", "resize", "mlp", "prelu", "instancenorm", "maxpool", "avgpool",
            "dropout", "pad", "gelu"}  # fmt: skip
    assert need <= tags, need - tags


def test_example_inputs():
    spec = models.get_model("resnet_basic")
    (a,) = spec.example_inputs()
    assert a.dtype == np.float32 and a.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(a, spec.example_inputs()[0])
    assert not np.array_equal(a, spec.example_inputs(seed=1)[0])


@pytest.mark.parametrize("name", NAMES)
def test_builder_is_deterministic_eval_and_small(name):
    spec = models.get_model(name)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b = spec.builder(), spec.builder()
    assert torch.equal(torch.rand(3), before), "builder changed the caller's RNG state"
    assert not a.training and not any(m.training for m in a.modules())
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sum(p.numel() for p in a.parameters()) < 1_000_000
    for m in a.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            assert not torch.all(m.running_var == 1) and not torch.all(m.running_mean == 0)
            assert not torch.all(m.weight == 1) and not torch.all(m.bias == 0)


# ---------------------------------------------------------------- export


@pytest.mark.parametrize(("name", "exporter"), CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_export_matches_torch(export_dir, name, exporter):
    spec = models.get_model(name)
    path = cached_export(name, exporter, export_dir)
    assert_matches_torch(path, spec)
    assert_matches_torch(path, spec, seed=1)
    ops = op_types(path)
    assert REQUIRED_OPS[name] <= set(ops), REQUIRED_OPS[name] - set(ops)
    if exporter == "legacy":
        assert opset(path) == LEGACY_OPSET
    else:
        assert opset(path) >= 18


@pytest.mark.parametrize(("name", "exporter"), BN_CASES, ids=[f"{n}-{e}" for n, e in BN_CASES])
def test_export_keeps_batchnorm(export_dir, name, exporter):
    """fold_bn=False: one BatchNormalization per nn.BatchNorm2d, same outputs."""
    spec = models.get_model(name)
    path = cached_export(name, exporter, export_dir, fold_bn=False)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in spec.builder().modules())
    assert op_types(path)["BatchNormalization"] == n_bn
    assert_matches_torch(path, spec)


def test_default_export_folds_conv_batchnorm(export_dir):
    for exporter in EXPORTERS:
        assert op_types(cached_export("vgg_bn", exporter, export_dir))["BatchNormalization"] == 0


def test_shuffle_ops_per_exporter(export_dir):
    """chunk: legacy Slice (with Shape arithmetic), dynamo Split; the shuffle itself is
    Reshape -> Transpose(perm 0,2,1,3,4) -> Reshape in both."""
    legacy = op_types(cached_export("shufflenet_v2", "legacy", export_dir))
    dynamo = op_types(cached_export("shufflenet_v2", "dynamo", export_dir))
    assert legacy["Slice"] == 4 and "Split" not in legacy
    assert dynamo["Split"] == 2 and "Slice" not in dynamo
    for path in (cached_export("shufflenet_v2", e, export_dir) for e in EXPORTERS):
        perms = [
            list(a.ints)
            for n in graph_of(path).graph.node
            if n.op_type == "Transpose"
            for a in n.attribute
        ]
        assert perms == [[0, 2, 1, 3, 4]] * 4


def test_depthwise_with_channel_multiplier(export_dir):
    for exporter in EXPORTERS:
        m = onnx.load(str(cached_export("mobilenet_v2", exporter, export_dir)))
        init = {t.name: tuple(t.dims) for t in m.graph.initializer}
        convs = [(next((a.i for a in n.attribute if a.name == "group"), 1), init[n.input[1]])
                 for n in m.graph.node if n.op_type == "Conv"]  # fmt: skip
        # weight [cout, cin/group, k, k]: depthwise has cin/group == 1; multiplier 2: cout == 2 * group
        assert any(g > 1 and w[1] == 1 and w[0] == 2 * g for g, w in convs), convs
        assert any(g > 1 and w[1] == 1 and w[0] == g for g, w in convs), convs


def test_external_data_options(tmp_path):
    spec = models.get_model("vgg_bn")
    dyn = export_onnx("vgg_bn", tmp_path / "dyn.onnx", "dynamo")
    assert data_path(dyn).exists(), (
        "torch's dynamo exporter writes weights beside the model by default"
    )
    single = export_onnx("vgg_bn", tmp_path / "single.onnx", "dynamo", external_data=False)
    assert not data_path(single).exists()
    leg = export_onnx("vgg_bn", tmp_path / "leg.onnx", "legacy", external_data=True)
    assert data_path(leg).exists()
    for p in (dyn, single, leg):
        assert_matches_torch(p, spec)
    # re-exporting single-file removes the stale data file
    export_onnx("vgg_bn", dyn, "dynamo", external_data=False)
    assert not data_path(dyn).exists()
    assert_matches_torch(dyn, spec)


def test_opset_override(tmp_path):
    p = export_onnx("resnet_basic", tmp_path / "r17.onnx", "legacy", opset=17)
    assert opset(p) == 17
    assert_matches_torch(p, models.get_model("resnet_basic"))


def test_unknown_exporter(tmp_path):
    with pytest.raises(ValueError, match="unknown exporter"):
        export_onnx("mlp", tmp_path / "x.onnx", "tflite")


def test_cached_export_skips_existing(tmp_path, monkeypatch):
    p = cached_export("mlp", "legacy", tmp_path)
    assert p == tmp_path / "mlp-legacy.onnx" and p.exists()
    import models.export as ex

    def boom(*a, **k):
        raise AssertionError("re-exported")

    monkeypatch.setattr(ex, "export_onnx", boom)
    assert cached_export("mlp", "legacy", tmp_path) == p
    assert [q.name for q in tmp_path.iterdir()] == ["mlp-legacy.onnx"]  # no scratch folder left


# ---------------------------------------------------------------- shipped models


def test_shipped_models_exist():
    assert len(SHIPPED) >= 4
    assert sum(p.stat().st_size for p in SHIPPED) < 8 * 2**20
    assert not list((ROOT / "models" / "onnx").glob("*.data")), "shipped models are single files"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_models_load_and_match_torch(path):
    onnx.checker.check_model(str(path), full_check=True)
    assert opset(path) == LEGACY_OPSET
    assert_matches_torch(path, models.get_model(path.stem))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_models_prune(path):
    """The README Quickstart: the shipped models prune."""
    spa_nm = pytest.importorskip("spa_nm")
    res = spa_nm.prune(spa_nm.load(path), 0.5)
    assert res.report["params_after"] < res.report["params_before"]
