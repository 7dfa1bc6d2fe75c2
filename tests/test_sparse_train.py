"""N:M training schedules (METHODS.md §2.2–§2.6, oracles §6.2–§6.3): schedule arithmetic, the
torch mask against spa_nm.nm's numpy mask, SR-STE and identity backward on toy layers, ASP."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spa_nm
from spa_nm.errors import ConfigError
from spa_nm.nm import NMSpec, check_nm, nm_mask
from spa_nm.train.sparse import (
    METHODS,
    NMSparsifier,
    Phases,
    beta_rule,
    decay_at,
    find_targets,
    frame_index,
    geometric_frames,
    phases,
    stepwise_frames,
)
from tests.helpers import model_from_text

S = NMSpec.parse


def names(frames):
    return [str(f) for f in frames]


# -- schedule arithmetic (no torch) ---------------------------------------------------------


def test_default_phases():
    assert phases(100, "mdgf-exp") == Phases(5, 80, 15)
    assert phases(100, "sdgf") == Phases(5, 80, 15)
    assert phases(100, "sr-ste") == Phases(0, 100, 0)
    assert phases(100, "fixed", dense_frac=0.1) == Phases(10, 90, 0)
    # tiny budgets: no default phase is empty, and the sparse phase never is
    assert phases(3, "mdgf-linear") == Phases(1, 1, 1)
    assert phases(1, "mdgf-linear") == Phases(0, 1, 0)
    for t in range(1, 60):
        p = phases(t, "sdgf-geometric")
        assert p.total == t and p.sparse >= 1


@pytest.mark.parametrize(
    "bad", [{"dense_frac": 0.5, "final_frac": 0.5}, {"dense_frac": -0.1}, {"final_frac": 1.0}]
)
def test_bad_phase_fractions(bad):
    with pytest.raises(ConfigError):
        phases(100, "mdgf-exp", **bad)


def test_beta_rule_and_decay_at_boundaries():
    ph = Phases(5, 80, 15)  # T = 100: j* = round(70) - 5 = 65
    bl = beta_rule("mdgf-linear", ph)
    be = beta_rule("mdgf-exp", ph)
    assert bl == pytest.approx(1 / 65)
    assert be == pytest.approx(math.log(1e3) / 65)
    for step in range(5):  # dense phase: D ≡ 1
        assert decay_at("mdgf-linear", step, ph, bl) == 1.0
        assert decay_at("mdgf-exp", step, ph, be) == 1.0
    assert decay_at("mdgf-linear", 5, ph, bl) == 1.0  # D(0) = 1
    assert decay_at("mdgf-exp", 5, ph, be) == 1.0
    assert decay_at("mdgf-linear", 5 + 64, ph, bl) == pytest.approx(1 / 65)
    assert decay_at("mdgf-linear", 70, ph, bl) == 0.0  # hits 0 at j = 1/β_τ, i.e. 0.7 T
    assert decay_at("mdgf-linear", 84, ph, bl) == 0.0
    assert decay_at("mdgf-exp", 70, ph, be) == pytest.approx(1e-3)  # D(j*) = ε
    assert 0 < decay_at("mdgf-exp", 84, ph, be) < 1e-3
    for step in range(85, 100):  # binary phase
        assert decay_at("mdgf-exp", step, ph, be) == 0.0
        assert decay_at("mdgf-linear", step, ph, bl) == 0.0
    # j* is clipped into [1, T_s]
    assert beta_rule("mdgf-linear", Phases(80, 10, 10)) == 1.0
    assert beta_rule("mdgf-linear", Phases(0, 10, 90)) == pytest.approx(1 / 10)
    with pytest.raises(ConfigError):
        beta_rule("sdgf", ph)


def test_sdgf_frames():
    assert names(stepwise_frames(S("1:8"))) == ["7:8", "4:8", "2:8", "1:8"]
    assert names(stepwise_frames(S("2:4"))) == ["3:4", "2:4"]
    assert names(stepwise_frames(S("1:16"))) == ["15:16", "8:16", "4:16", "2:16", "1:16"]
    assert names(stepwise_frames(S("3:8"))) == ["7:8", "4:8", "3:8"]  # halves while M/2^d > N
    assert names(stepwise_frames(S("1:2"))) == ["1:2"]
    assert names(geometric_frames(S("1:8"))[0]) == ["16:128", "8:64", "4:32", "2:16", "1:8"]
    assert names(geometric_frames(S("1:8"), k=8)[0]) == [
        "8:64",
        "4:32",
        "2:16",
        "1:8",
    ]  # code variant
    assert names(geometric_frames(S("2:4"))[0]) == ["32:64", "16:32", "8:16", "4:8", "2:4"]
    # k' fallback: the largest power of two k' <= k with k'·M | K
    assert geometric_frames(S("1:8"), size=128) == (geometric_frames(S("1:8"))[0], 16)
    frames, kk = geometric_frames(S("1:8"), size=96)  # 96 = 8 * 12: k' = 4
    assert kk == 4 and names(frames) == ["4:32", "2:16", "1:8"]
    frames, kk = geometric_frames(S("1:8"), size=8)
    assert kk == 1 and names(frames) == ["1:8"]
    with pytest.raises(ConfigError):
        geometric_frames(S("1:8"), k=12)


@pytest.mark.parametrize(("steps", "n"), [(80, 4), (10, 3), (7, 5), (5, 5)])
def test_frames_split_steps_evenly(steps, n):
    seq = [frame_index(j, steps, n) for j in range(steps)]
    assert seq == sorted(seq) and seq[0] == 0 and seq[-1] == n - 1
    counts = np.bincount(seq, minlength=n)
    assert counts.max() - counts.min() <= 1 and counts.min() >= 1


# -- torch ----------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
from spa_nm.train.sparse import nm_mask_torch  # noqa: E402

LAYOUTS = [  # (shape, reduction axis): Conv [O, C/g, kh, kw] axis 1, Gemm transB=1 axis 1,
    ((8, 16, 3, 3), 1),  # Gemm transB=0 / MatMul B[K, N] axis 0, ConvTranspose [C_in, ...] axis 0
    ((10, 32), 1),
    ((32, 6), 0),
    ((16, 4, 2, 2), 0),
    ((3, 2, 64), 2),
]


@settings(max_examples=60, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    pattern=st.sampled_from(["2:4", "1:4", "1:8", "2:8", "1:16", "3:8", "16:32"]),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_torch_mask_equals_numpy_mask(layout, pattern, seed, ties, dtype):
    shape, axis = layout
    spec = S(pattern)
    if shape[axis] % spec.m:
        return
    rng = np.random.default_rng(seed)
    w = (
        rng.integers(-2, 3, size=shape).astype(dtype)
        if ties
        else rng.standard_normal(shape).astype(dtype)
    )
    if ties:
        w[w == 0] = np.where(rng.random(int((w == 0).sum())) < 0.5, -0.0, 0.0)  # -0 ties with +0
    got = nm_mask_torch(torch.from_numpy(w), axis, spec.n, spec.m).numpy().astype(bool)
    np.testing.assert_array_equal(got, nm_mask(w, axis, spec))


def toy(shape=(4, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))


def grad_of(sp, name, w, c):
    """∂/∂W of sum(W̃ ⊙ c): the upstream gradient g is c."""
    w.grad = None
    (sp.transforms()[name](w) * c).sum().backward()
    return w.grad.clone()


def test_srste_gradient():
    w = toy()
    c = torch.randn(w.shape, dtype=torch.float64)
    sp = NMSparsifier({"w": w}, {"w": 1}, "sr-ste", S("2:8"), 10)
    mask = nm_mask_torch(w, 1, 2, 8)
    wt = sp.transforms()["w"](w)
    torch.testing.assert_close(wt, w.detach() * mask, rtol=0, atol=0)
    expected = c + 2e-4 * (1 - mask) * w.detach()  # g + λ_W Φ̄ ⊙ W (§2.2)
    torch.testing.assert_close(grad_of(sp, "w", w, c), expected, rtol=0, atol=1e-15)
    sp0 = NMSparsifier({"w": w}, {"w": 1}, "sr-ste", S("2:8"), 10, lambda_w=0.0)  # vanilla STE
    torch.testing.assert_close(grad_of(sp0, "w", w, c), c, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["mdgf-linear", "mdgf-exp", "sdgf", "sdgf-geometric"])
def test_pgf_identity_backward_and_forward(method):
    w = toy((4, 32))
    c = torch.randn(w.shape, dtype=torch.float64)
    sp = NMSparsifier({"w": w}, {"w": 1}, method, S("1:8"), 100)
    assert sp.phases == Phases(5, 80, 15)
    sp.step = 30  # the middle of the sparse phase
    d = sp.current_decay()
    frame = S(sp.current_frames()["w"])
    mask = nm_mask_torch(w, 1, frame.n, frame.m)
    if method.startswith("mdgf"):
        assert 0 < d < 1 and frame == S("1:8")
        expected = w.detach() * (mask + d * (1 - mask))  # W ⊙ (Φ + D Φ̄)
    else:
        assert d == 0 and frame != S("1:8")
        expected = w.detach() * mask
    torch.testing.assert_close(sp.transforms()["w"](w), expected, rtol=0, atol=0)
    torch.testing.assert_close(
        grad_of(sp, "w", w, c), c, rtol=0, atol=0
    )  # identity: not scaled by D, not masked
    sp.step = 2  # dense phase: W̃ = W
    torch.testing.assert_close(sp.transforms()["w"](w), w.detach(), rtol=0, atol=0)
    sp.step = 90  # binary phase: exactly N:M
    out = sp.transforms()["w"](w).detach().numpy()
    assert check_nm(out, 1, S("1:8"))


def test_sdgf_frame_sequence_over_a_run():
    w = toy((2, 256))
    sp = NMSparsifier({"w": w}, {"w": 1}, "sdgf-geometric", S("1:8"), 100)
    seen = []
    for _ in range(100):
        f = sp.current_frames()["w"]
        if not seen or seen[-1][0] != f:
            seen.append([f, 0])
        seen[-1][1] += 1
        sp.after_step()
    assert [f for f, _ in seen] == ["dense", "16:128", "8:64", "4:32", "2:16", "1:8"]
    assert [n for _, n in seen] == [
        5,
        16,
        16,
        16,
        16,
        16 + 15,
    ]  # 80 sparse steps / 5 frames, then T_f
    assert sp.describe()["geometric_k"] == {"w": 16}
    small = NMSparsifier({"w": toy((2, 32))}, {"w": 1}, "sdgf-geometric", S("1:8"), 100)
    assert small.k_used == {"w": 4} and small.describe()["frames"]["w"] == ["4:32", "2:16", "1:8"]


def test_explicit_beta_wins():
    w = toy()
    sp = NMSparsifier({"w": w}, {"w": 1}, "mdgf-linear", S("2:4"), 100, beta=0.5)
    assert sp.beta == 0.5
    sp.step = 6  # j = 1
    assert sp.current_decay() == 0.5
    with pytest.raises(ConfigError):
        NMSparsifier({"w": w}, {"w": 1}, "mdgf-linear", S("2:4"), 100, beta=0.0)
    with pytest.raises(ConfigError):
        NMSparsifier({"w": w}, {"w": 1}, "bogus", S("2:4"), 100)
    with pytest.raises(ConfigError):
        NMSparsifier({"w": w}, {"v": 1}, "sr-ste", S("2:4"), 100)


def test_fixed_mask_asp():
    w = toy((4, 16))
    mask0 = nm_mask_torch(w, 1, 2, 4).clone()
    sp = NMSparsifier({"w": w}, {"w": 1}, "fixed", S("2:4"), 10)
    torch.testing.assert_close(w.detach(), w.detach() * mask0, rtol=0, atol=0)  # pruned at once
    opt = torch.optim.SGD([w], lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        opt.zero_grad()
        c = torch.randn(w.shape, dtype=torch.float64)
        (sp.transforms()["w"](w) * c).sum().backward()
        torch.testing.assert_close(w.grad, c * mask0, rtol=0, atol=0)  # gradients masked
        opt.step()
        sp.after_step()
        assert torch.all(w.detach()[mask0 == 0] == 0)  # weights masked after each step
    np.testing.assert_array_equal(sp.final_masks()["w"], mask0.numpy().astype(bool))


def test_sad_counts_target_mask_flips():
    w = torch.nn.Parameter(torch.tensor([[4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0]]))
    sp = NMSparsifier({"w": w}, {"w": 1}, "sr-ste", S("2:4"), 10)
    assert sp.after_step() == 0
    with torch.no_grad():
        w[0, 3] = 10.0  # block 0 keeps {0, 3} instead of {0, 1}: two entries flip
        w[0, 4] = 9.0  # block 1 keeps {4, 7} instead of {6, 7}: two more
    assert sp.after_step() == 4
    assert sp.sad == [0, 4]


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("dense", "oneshot")])
def test_trained_masks_are_valid_nm(method):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 32))
    x, y = torch.randn(64, 32), torch.randn(64, 6)
    spec = S("1:8")
    sp = NMSparsifier({"w": w}, {"w": 1}, method, spec, 40)
    opt = torch.optim.AdamW([w], lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        loss = ((x @ sp.transforms()["w"](w).T - y) ** 2).mean()
        loss.backward()
        opt.step()
        sp.after_step()
    assert len(sp.sad) == 40
    mask = sp.final_masks()["w"]
    assert mask.dtype == bool
    np.testing.assert_array_equal(np.moveaxis(mask, 1, -1).reshape(-1, 8).sum(1), 1)
    assert check_nm(np.where(mask, w.detach().numpy(), 0), 1, spec)
    if method != "fixed":  # the export mask is the target mask of the final weights
        np.testing.assert_array_equal(mask, nm_mask(w.detach().numpy(), 1, spec))


TARGETS = """
<ir_version: 8, opset_import: ["" : 13]>
t (float[2, 16] x) => (float[2, 4] y)
<float[16, 32] a, float[32, 8] b, float[4, 8] c, float[8, 12] odd, float[12, 4] d>
{
  h = MatMul (x, a)
  i = MatMul (h, b)
  j = Gemm <transB = 1> (i, c)
  k = MatMul (i, odd)
  l = MatMul (k, d)
  y = Add (j, l)
}
"""


def test_find_targets_is_sparsifys_selection(tmp_path):
    p = tmp_path / "t.onnx"
    onnx.save(model_from_text(TARGETS), p)
    model = spa_nm.load(p)
    targets, done, skipped = find_targets(model, S("2:4"))
    assert targets == {"a": 0, "b": 0, "c": 1, "odd": 0, "d": 0}
    assert [d["weight"] for d in done] == ["a", "b", "c", "odd", "d"] and not skipped
    targets, done, skipped = find_targets(model, S("1:16"), ignore=("MatMul_1",))
    assert targets == {"a": 0}  # b (K = 32) is ignored; c, odd, d have K = 8, 8, 12
    assert sorted(s["node"] for s in skipped) == ["Gemm_2", "MatMul_1", "MatMul_3", "MatMul_4"]
    assert {s["reason"] for s in skipped if s["node"] == "MatMul_1"} == {"ignored by --ignore"}
