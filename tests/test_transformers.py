"""Transformers built from small ``transformers`` configs (random weights, nothing downloaded),
exported with both torch exporters: attention heads, head dims and MLPs prune exactly; the
residual stream only with ``allow_approximate``, its error measured.

Oracles: the zero-group oracle (`spa_nm.testing.assert_prune_equivalent`, atol 1e-5) on every
exact prune, and structural counts on the pruned graph: the head axis of every attention-score
MatMul ([B, H, T, T]) and the head dim of every attention·V MatMul ([B, H, T, d]).
"""

from __future__ import annotations

import numpy as np
import pytest

import spa_nm
from spa_nm.surgery import check_model
from spa_nm.testing import assert_prune_equivalent, random_feeds, run

pytest.importorskip("torch")
pytest.importorskip("transformers")
from models.transformers_zoo import TRANSFORMERS, cached_export

pytestmark = [pytest.mark.zoo, pytest.mark.torch]

SLOW = pytest.mark.slow
FAMILIES = ("gpt2_tiny", "bert_tiny", "vit_tiny", "llama_tiny")
# the dynamo exporter takes seconds per model: two families run by default, all under -m slow
CASES = [
    pytest.param(n, e, id=f"{n}-{e}", marks=[SLOW] if e == "dynamo" and n in ("bert_tiny", "vit_tiny") else [])
    for n in FAMILIES
    for e in ("legacy", "dynamo")
]  # fmt: skip
INTERMEDIATE = {"gpt2_tiny": 256, "bert_tiny": 128, "vit_tiny": 128, "llama_tiny": 128}


def load(export_dir, name: str, exporter: str):
    return spa_nm.load(cached_export(name, exporter, export_dir))


def _reads_softmax(value, depth: int = 0) -> bool:
    """Whether ``value`` comes from a Softmax (through the exporters' NaN guards and casts)."""
    node = value.producer()
    if node is None or depth > 4:
        return False
    if node.op_type == "Softmax":
        return True
    return any(
        v is not None and v.const_value is None and _reads_softmax(v, depth + 1)
        for v in node.inputs
        if node.op_type in ("Where", "Cast", "Dropout", "Identity", "Reshape")
    )


def attention_matmuls(model) -> dict[str, tuple[str, tuple[int, ...]]]:
    """MatMul nodes between two activations with a rank-4 output: ``"scores"`` (Q·Kᵀ,
    [B, H, T, T]) or ``"context"`` (softmax·V, [B, H, T, d]), with the output shape."""
    out = {}
    for node in model.graph:
        if node.op_type != "MatMul" or any(v.const_value is not None for v in node.inputs):
            continue
        shape = node.outputs[0].shape
        if shape is None or len(shape) != 4:
            continue
        assert all(isinstance(d, int) for d in shape), f"{node.name}: {shape}"
        kind = "context" if _reads_softmax(node.inputs[0]) else "scores"
        out[node.name] = (kind, tuple(shape))
    return out


def _by_kind(model, kind: str) -> dict[str, tuple[int, ...]]:
    """(Pass a `PruneResult`'s ``source`` for the original: its shape arithmetic is folded, so
    every shape is static.)"""
    return {n: s for n, (k, s) in attention_matmuls(model).items() if k == kind}


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_heads_and_mlp_prune_exactly(export_dir, name, exporter):
    model = load(export_dir, name, exporter)
    res = spa_nm.prune(model, 0.5, round_to=1)
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
    before, after = _by_kind(res.source, "scores"), _by_kind(res.model, "scores")
    assert len(before) == 2, "two layers, one attention each"
    for node, shape in before.items():
        assert after[node][1] == shape[1] // 2, f"{node}: heads {shape[1]} -> {after[node][1]}"
    # the MLP hidden dimension of each layer is a group of its own, half of it removed
    sizes = sorted(res.graph.groups[g].size for g in res.plan.removed)
    assert sizes.count(INTERMEDIATE[name]) == 2, sizes
    assert res.report["params_after"] < 0.75 * res.report["params_before"]


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_head_dim_prunes_exactly(export_dir, name, exporter):
    model = load(export_dir, name, exporter)
    res = spa_nm.prune(model, 0.5, round_to=1, attention="head_dim")
    assert_prune_equivalent(model, res, atol=1e-5)
    for node, shape in _by_kind(res.source, "scores").items():  # heads stay
        assert _by_kind(res.model, "scores")[node][1] == shape[1]
    # Q·Kᵀ's and V's head dims halve (Llama's in rotary pairs j, j + d/2). GPT-2's fused
    # projection makes them units of one group, ranked together (V's, read through fewer rows,
    # go first).
    scores = _by_kind(res.source, "scores")
    qk = {m.name: m.inputs[0].shape[-1] for m in res.source.graph if m.name in scores}
    qk_after = {m.name: m.inputs[0].shape[-1] for m in res.model.graph if m.name in scores}
    v = {n: s[3] for n, s in _by_kind(res.source, "context").items()}
    v_after = {n: s[3] for n, s in _by_kind(res.model, "context").items()}
    if name == "gpt2_tiny":
        assert sum(qk_after.values()) + sum(v_after.values()) < sum(qk.values()) + sum(v.values())
    else:
        assert v_after == {n: d // 2 for n, d in v.items()}, (v, v_after)
        assert qk_after == {n: d // 2 for n, d in qk.items()}, (qk, qk_after)
    assert all(d >= 1 for d in (*qk_after.values(), *v_after.values()))


def test_global_ranking_prunes_heads_exactly(export_dir):
    model = load(export_dir, "gpt2_tiny", "legacy")
    res = spa_nm.prune(model, 0.5, global_ranking=True, round_to=1)
    assert_prune_equivalent(model, res, atol=1e-5)
    assert any(s[1] < 4 for s in _by_kind(res.model, "scores").values())


@pytest.mark.parametrize(
    ("name", "exporter"),
    [("gpt2_tiny", "legacy"), ("bert_tiny", "legacy"), ("vit_tiny", "legacy"), ("llama_tiny", "dynamo")],
)  # fmt: skip
def test_residual_stream_is_approximate_and_opt_in(export_dir, name, exporter):
    model = load(export_dir, name, exporter)
    exact = spa_nm.prune(model, 0.25, round_to=1)
    assert "approximate" not in exact.report
    assert any("allowed with --allow-approximate" in b["reason"] for b in exact.report["blocked"])
    res = spa_nm.prune(model, 0.25, round_to=1, allow_approximate=True)
    check_model(res.model)
    approx = res.report["approximate"]
    assert approx["groups"] and all(g["reasons"] for g in approx["groups"])
    # the residual width shrank: every LayerNorm / RMSNorm scale is 3/4 of the hidden size
    scales = [
        v.const_value.numpy().shape
        for v in res.model.graph.initializers.values()
        if v.const_value is not None and v.const_value.numpy().shape == (48,)
    ]
    assert scales, "no 48-wide (3/4 of 64) residual parameters after pruning"
    assert res.report["params_after"] < exact.report["params_after"]
    # the reported error is the measured one
    feeds = random_feeds(model)
    ref, got = run(model, feeds)[0], run(res.model, feeds)[0]
    err = approx["error"]
    assert err["measured"]
    assert err["max_abs"] == pytest.approx(float(np.abs(got - ref).max()), rel=1e-6)
    assert err["mean_abs"] == pytest.approx(float(np.abs(got - ref).mean()), rel=1e-6)


@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=SLOW)])
def test_multi_query_attention_keeps_its_shared_head(export_dir, exporter):
    """One K/V head read by every query head: no query head can go alone; the MLP and the value
    head dim still prune exactly."""
    model = load(export_dir, "llama_mqa", exporter)
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert_prune_equivalent(model, res, atol=1e-5)
    for node, shape in _by_kind(res.source, "scores").items():
        assert _by_kind(res.model, "scores")[node] == shape
    assert res.report["params_after"] < res.report["params_before"]
    hd = spa_nm.prune(model, 0.5, round_to=1, attention="head_dim")
    assert_prune_equivalent(model, hd, atol=1e-5)
    for node, shape in _by_kind(hd.source, "context").items():
        assert _by_kind(hd.model, "context")[node][3] == shape[3] // 2


@SLOW
def test_swin_windowed_attention_prunes_heads(export_dir):
    """Window partition reshapes and the relative position bias ([heads, N, N], sliced per
    head); exported with the legacy exporter (the dynamo exporter fails on Swin in torch 2.13)."""
    import time

    model = load(export_dir, "swin_tiny", "legacy")
    t = time.perf_counter()
    res = spa_nm.prune(model, 0.5, round_to=1)
    assert time.perf_counter() - t < 30
    assert_prune_equivalent(model, res, atol=1e-5)
    heads = [s[1] for s in _by_kind(res.source, "scores").values()]
    after = [s[1] for s in _by_kind(res.model, "scores").values()]
    assert sorted(heads) == [2, 2, 4, 4] and sorted(after) == [1, 1, 2, 2]


@pytest.mark.parametrize(
    ("name", "exporter"),
    [("gpt2_tiny", "legacy"), ("gpt2_tiny", "dynamo"), ("llama_tiny", "legacy"),
     pytest.param("llama_tiny", "dynamo", marks=SLOW), pytest.param("bert_tiny", "legacy", marks=SLOW)],
)  # fmt: skip
def test_dynamic_batch_and_sequence(export_dir, name, exporter):
    """Batch and sequence symbolic: Shape -> Gather/Slice -> Concat -> Reshape targets get their
    constant parts rewritten (a shared target gets a Concat of its own), merged [B*T] axes are
    told apart from the channels, and the oracle runs at batch 2, sequence 32."""
    model = spa_nm.load(cached_export(name, exporter, export_dir, dynamic=True))
    assert not isinstance(model.graph.inputs[0].shape[1], int)
    res = spa_nm.prune(model, 0.5, round_to=1)
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
    sizes = sorted(res.graph.groups[g].size for g in res.plan.removed)
    heads = 2 if name.startswith("llama") else 4  # K/V groups of Llama, heads of GPT-2
    assert sizes.count(heads) == 2 and sizes.count(INTERMEDIATE[name]) == 2, sizes
    assert not isinstance(res.model.graph.inputs[0].shape[1], int)


@pytest.mark.parametrize(("name", "exporter"), [("llama_tiny", "legacy"), ("gpt2_tiny", "dynamo")])
def test_dynamic_sequence_head_dims(export_dir, name, exporter):
    """With a symbolic sequence the rotary tables and the causal mask are computed at run
    time; their dims keep their names (symbolic shape inference), so Q·Kᵀ head dims prune in
    head_dim mode too, exactly, and the head counts stay."""
    model = spa_nm.load(cached_export(name, exporter, export_dir, dynamic=True))
    res = spa_nm.prune(model, 0.5, round_to=1, attention="head_dim")
    check_model(res.model)
    assert_prune_equivalent(model, res, atol=1e-5)
    sizes = sorted(res.graph.groups[g].size for g in res.plan.removed)
    # Llama: Q·Kᵀ head dims as 8 rotary pairs, one group for both layers (the rotary tables
    # are shared), and one V group (16) per layer. GPT-2: Q·Kᵀ and V head dims of the fused
    # projection in one group (32) per layer
    want = [8, 16, 16] if name.startswith("llama") else [32, 32]
    assert [s for s in sizes if s != INTERMEDIATE[name]] == want, sizes


def test_cli_flags(export_dir, tmp_path, capsys):
    """``spa-nm prune --attention head_dim`` and ``--allow-approximate`` reach the pipeline;
    the report carries the approximate groups and their measured error."""
    import json

    from spa_nm.cli import main

    src = str(cached_export("gpt2_tiny", "legacy", export_dir))
    rep = tmp_path / "r.json"
    assert main(["prune", src, "-o", str(tmp_path / "a.onnx"), "--ratio", "0.25", "--round-to", "1",
                 "--allow-approximate", "--report", str(rep)]) == 0  # fmt: skip
    entry = json.loads(rep.read_text())["models"][0]
    assert entry["approximate"]["error"]["measured"] and entry["approximate"]["groups"]
    assert "approximate group(s) pruned" in capsys.readouterr().out
    assert main(["prune", src, "-o", str(tmp_path / "b.onnx"), "--ratio", "0.25", "--attention", "head_dim",
                 "--report", str(rep)]) == 0  # fmt: skip
    entry = json.loads(rep.read_text())["models"][0]
    assert "approximate" not in entry and entry["groups_pruned"] > 0
    with pytest.raises(SystemExit) as e:
        main(
            ["prune", src, "-o", str(tmp_path / "c.onnx"), "--ratio", "0.25", "--attention", "rows"]
        )
    assert e.value.code == 2


def test_zoo_names():
    assert set(FAMILIES) <= set(TRANSFORMERS)
