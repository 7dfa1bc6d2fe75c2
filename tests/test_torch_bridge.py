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


def _transformer(kind, exporter, path):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=128)
        net, x = tf.GPT2Model(cfg), torch.randint(0, 128, (1, 16))
    elif kind == "bert":
        cfg = tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, vocab_size=128, max_position_embeddings=32)  # fmt: skip
        net, x = tf.BertModel(cfg, add_pooling_layer=False), torch.randint(0, 128, (1, 16))
    else:
        cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128, num_labels=10)  # fmt: skip
        net, x = tf.ViTForImageClassification(cfg), torch.randn(1, 3, 32, 32)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            out = self.m(x)
            return out.logits if hasattr(out, "logits") else out.last_hidden_state

    net = Wrap(net.eval()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})  # fmt: skip
        else:
            torch.onnx.export(net, (x,), dynamo=True, input_names=["input"],
                              output_names=["output"], verbose=False).save(str(path))  # fmt: skip
    return spa_nm.load(path)


def _token_feeds(model, batch=2, seed=0):
    feeds = random_feeds(model, seed=seed, batch=batch)
    rng = np.random.default_rng(seed)
    return {
        k: rng.integers(0, 128, v.shape).astype(v.dtype) if v.dtype.kind in "iu" else v
        for k, v in feeds.items()
    }


TRANSFORMERS = [
    pytest.param(k, e, id=f"{k}-{e}", marks=[pytest.mark.slow] if e == "dynamo" else [])
    for k in ("gpt2", "bert", "vit")
    for e in ("legacy", "dynamo")
]


@pytest.mark.parametrize(("kind", "exporter"), TRANSFORMERS)
def test_transformers_match_ort(tmp_path, kind, exporter):
    model = _transformer(kind, exporter, tmp_path / f"{kind}.onnx")
    feeds = _token_feeds(model)
    check_forward(model, feeds, atol=1e-5, rtol=1e-6)
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
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1, 1, 4, 4] x) => (float[1, 1, 8, 8] y)
        <float[4] s = {1.0, 1.0, 2.0, 2.0}>
        { y = Resize <mode = "cubic"> (x, , s) }
        """
    )
    with pytest.raises(UnsupportedOpError, match=r"Resize \(opset 13\).*mode='cubic'"):
        to_torch(proto)


def test_import_spa_nm_train_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, spa_nm, spa_nm.train; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
