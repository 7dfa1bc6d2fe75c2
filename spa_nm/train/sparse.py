"""N:M sparse training schedules: SR-STE, fixed mask (ASP), MDGF and SDGF (METHODS.md §2.1–§2.6).

Notation of METHODS.md §0.2: W the dense trained weight, Φ = Φ(W; N, M) its binary N:M mask, Φ̄ = 1 − Φ,
W̃ the weight the forward pass uses, g = ∂L/∂W̃, j the optimiser step. Per method:

=================  ==================================================  ===============================
method             forward W̃                                          backward ∂L/∂W
=================  ==================================================  ===============================
``dense``          W                                                   g (autograd)
``oneshot``        no training: the magnitude mask once                -
``fixed``          W ⊙ Φ₀, Φ₀ from the initial W; W ⊙= Φ₀ after steps  g ⊙ Φ₀ (autograd), §2.2 ASP
``sr-ste``         W ⊙ Φ(W)                                            g + λ_W Φ̄ ⊙ W, λ_W = 2e-4, §2.2
``mdgf-linear``    W ⊙ (Φ + D(j) Φ̄), D(j) = max(1 − β_τ j, 0)          g (identity), §2.3–§2.4
``mdgf-exp``       W ⊙ (Φ + D(j) Φ̄), D(j) = exp(−β_η j)                g (identity), §2.3–§2.4
``sdgf``           W ⊙ Φ(W; n_f, m_f), stepwise frames                 g (identity), §2.5
``sdgf-geometric`` W ⊙ Φ(W; n_f, m_f), geometric frames (k = 16)       g (identity), §2.5
=================  ==================================================  ===============================

Φ is recomputed from the current dense W at every forward pass (§2.1), except for ``fixed``.
The PGF methods run three phases (§2.4, §2.6): dense (W̃ = W) for T_d steps, the decay / frame
phase for T_s steps (j counted from its start), and a binary phase at the target N:M for T_f
steps; the defaults are T_d = 5 % and T_f = 15 % of T. β comes from the budget (§2.4):
j* = clip(round(0.7 T) − T_d, 1, T_s), β_τ = 1/j*, β_η = ln(1/ε)/j* with ε = 1e-3; an explicit β
wins. SDGF frames split the T_s steps evenly and switch at step boundaries (§2.5).

The block layout is spa_nm.nm's (§2.1): the reduction axis of each weight comes from its op's
rule, blocks of M consecutive entries along it, ties broken by a stable sort (the lower index
wins), so `nm_mask_torch` equals `spa_nm.nm.nm_mask`. Weights are selected exactly as
`spa_nm.sparsify` selects them (`find_targets` reads its report). Whatever the method, the export
applies the hard target mask Φ(W_final; N, M) (§2.4 Export; ``fixed`` exports its fixed mask).

SAD (§2.2) is recorded after every step as the number of entries of the *target* mask
Φ(W; N, M) that changed since the previous step, summed over the sparsified weights: the same
quantity for every method, and the mask the export would apply at that step.

This module imports torch only inside functions: the schedule arithmetic (`phases`,
`beta_rule`, `decay_at`, `stepwise_frames`, `geometric_frames`, `frame_index`) and `METHODS`
need no torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from spa_nm.errors import ConfigError
from spa_nm.nm import NMSpec

__all__ = [
    "DEFAULT_GEOMETRIC_K",
    "EPSILON",
    "METHODS",
    "PGF_METHODS",
    "SRSTE_LAMBDA",
    "NMSparsifier",
    "Phases",
    "beta_rule",
    "decay_at",
    "find_targets",
    "frame_index",
    "frames_for",
    "geometric_frames",
    "nm_mask_torch",
    "phases",
    "stepwise_frames",
]

METHODS = (
    "dense",
    "oneshot",
    "fixed",
    "sr-ste",
    "mdgf-linear",
    "mdgf-exp",
    "sdgf",
    "sdgf-geometric",
)
PGF_METHODS = ("mdgf-linear", "mdgf-exp", "sdgf", "sdgf-geometric")
SRSTE_LAMBDA = 2e-4  # METHODS.md §2.2 [V]
EPSILON = 1e-3  # D(j*) for mdgf-exp, METHODS.md §2.4 [D]
DEFAULT_GEOMETRIC_K = 16  # METHODS.md §2.5 [V]
_PHASE_DEFAULTS = dict.fromkeys(PGF_METHODS, (0.05, 0.15))  # METHODS.md §2.6 [D]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")


# -- schedule arithmetic (no torch) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phases:
    """Step counts of the dense, sparse (decay / frames) and final binary phases (§2.4)."""

    dense: int
    sparse: int
    final: int

    @property
    def total(self) -> int:
        return self.dense + self.sparse + self.final

    def phase_of(self, step: int) -> str:
        """``"dense"``, ``"sparse"`` or ``"final"`` for the 0-based optimiser step ``step``."""
        if step < self.dense:
            return "dense"
        return "sparse" if step < self.dense + self.sparse else "final"


def phases(
    total: int, method: str, dense_frac: float | None = None, final_frac: float | None = None
) -> Phases:
    """Split ``total`` steps into T_d + T_s + T_f (METHODS.md §2.4, defaults §2.6).

    PGF methods default to T_d = 5 % and T_f = 15 % of T (each at least one step when its fraction
    is positive and T ≥ 3, so no phase is empty by default); the other methods default to
    T_d = T_f = 0 (the whole run is the method's sparse phase). T_s gets the rest and is never
    empty.

    >>> phases(100, "mdgf-exp")
    Phases(dense=5, sparse=80, final=15)
    >>> phases(100, "sr-ste")
    Phases(dense=0, sparse=100, final=0)
    """
    _check_method(method)
    if not isinstance(total, int) or total < 1:
        raise ConfigError(f"training needs at least one step, got {total}")
    dd, ff = _PHASE_DEFAULTS.get(method, (0.0, 0.0))
    dense_frac = dd if dense_frac is None else float(dense_frac)
    final_frac = ff if final_frac is None else float(final_frac)
    if not (0 <= dense_frac < 1 and 0 <= final_frac < 1 and dense_frac + final_frac < 1):
        raise ConfigError(
            f"phase fractions dense={dense_frac}, final={final_frac}: need each in [0, 1) and a sum below 1"
        )
    td, tf = round(dense_frac * total), round(final_frac * total)
    if total >= 3:
        td = max(td, 1) if dense_frac > 0 else td
        tf = max(tf, 1) if final_frac > 0 else tf
    while td + tf >= total and (td or tf):  # tiny budgets: keep at least one sparse step
        if tf >= td and tf:
            tf -= 1
        else:
            td -= 1
    return Phases(td, total - td - tf, tf)


def beta_rule(method: str, ph: Phases, epsilon: float = EPSILON) -> float:
    """β from the budget (METHODS.md §2.4): j* = clip(round(0.7 T) − T_d, 1, T_s);
    β_τ = 1/j* (``mdgf-linear``), β_η = ln(1/ε)/j* (``mdgf-exp``).

    >>> beta_rule("mdgf-linear", Phases(5, 80, 15))
    0.015384615384615385
    """
    if method not in ("mdgf-linear", "mdgf-exp"):
        raise ConfigError(f"β applies to mdgf-linear and mdgf-exp, not {method}")
    if not 0 < epsilon < 1:
        raise ConfigError(f"epsilon must be in (0, 1), got {epsilon}")
    j_star = min(max(round(0.7 * ph.total) - ph.dense, 1), max(ph.sparse, 1))
    return 1.0 / j_star if method == "mdgf-linear" else math.log(1.0 / epsilon) / j_star


def decay_at(method: str, step: int, ph: Phases, beta: float) -> float:
    """D at 0-based optimiser step ``step`` (METHODS.md §2.3–§2.4): 1 in the dense phase, then
    max(1 − βj, 0) or exp(−βj) with j = step − T_d, and 0 in the final binary phase."""
    where = ph.phase_of(step)
    if where == "dense":
        return 1.0
    if where == "final":
        return 0.0
    j = step - ph.dense
    if method == "mdgf-linear":
        return max(1.0 - beta * j, 0.0)
    if method == "mdgf-exp":
        return math.exp(-beta * j)
    raise ConfigError(f"D(j) applies to mdgf-linear and mdgf-exp, not {method}")


def stepwise_frames(spec: NMSpec) -> list[NMSpec]:
    """SDGF Stepwise frames (METHODS.md §2.5): (M−1):M, then (M/2^d):M while M/2^d > N, then N:M.

    >>> [str(f) for f in stepwise_frames(NMSpec(1, 8))]
    ['7:8', '4:8', '2:8', '1:8']
    >>> [str(f) for f in stepwise_frames(NMSpec(2, 4))]
    ['3:4', '2:4']
    """
    ns = [spec.m - 1]
    d = 1
    while spec.m >> d > spec.n:
        if spec.m >> d < ns[-1]:
            ns.append(spec.m >> d)
        d += 1
    if ns[-1] != spec.n:
        ns.append(spec.n)
    return [NMSpec(n, spec.m) for n in ns]


def geometric_frames(
    spec: NMSpec, k: int = DEFAULT_GEOMETRIC_K, size: int | None = None
) -> tuple[list[NMSpec], int]:
    """SDGF Geometric frames (METHODS.md §2.5): (kN/2^d):(kM/2^d), d = 0 … log₂k, and the k used.

    With ``size`` (the reduction size K of the layer), k falls back to the largest power of two
    k' ≤ k with k'·M | K (k' = 1: plain N:M).

    >>> [str(f) for f in geometric_frames(NMSpec(1, 8))[0]]
    ['16:128', '8:64', '4:32', '2:16', '1:8']
    >>> geometric_frames(NMSpec(1, 8), size=32)[1]
    4
    """
    if not isinstance(k, int) or k < 1 or k & (k - 1):
        raise ConfigError(f"geometric k must be a power of two >= 1, got {k}")
    kk = k
    if size is not None:
        while kk > 1 and size % (kk * spec.m):
            kk //= 2
    frames = []
    f = kk
    while f >= 1:
        frames.append(NMSpec(f * spec.n, f * spec.m))
        f //= 2
    return frames, kk


def frames_for(
    method: str, spec: NMSpec, size: int, k: int = DEFAULT_GEOMETRIC_K
) -> tuple[list[NMSpec], int | None]:
    """The frames a layer of reduction size ``size`` goes through during the sparse phase,
    and the geometric k' it uses (None for non-geometric methods). Non-SDGF methods: [spec]."""
    if method == "sdgf":
        return stepwise_frames(spec), None
    if method == "sdgf-geometric":
        return geometric_frames(spec, k, size)
    return [spec], None


def frame_index(j: int, sparse_steps: int, n_frames: int) -> int:
    """Frame of sparse-phase step ``j`` when ``n_frames`` frames split ``sparse_steps`` evenly
    (METHODS.md §2.5): frame f covers j in [f·T_s/F, (f+1)·T_s/F).

    >>> [frame_index(j, 8, 4) for j in range(8)]
    [0, 0, 1, 1, 2, 2, 3, 3]
    """
    if sparse_steps <= 0:
        return n_frames - 1
    return min(max(j, 0) * n_frames // sparse_steps, n_frames - 1)


def find_targets(
    model: Any, spec: NMSpec, ignore: tuple[str, ...] = ()
) -> tuple[dict[str, int], list[dict[str, Any]], list[dict[str, Any]]]:
    """The weights `spa_nm.sparsify` would mask, as {initializer name: reduction axis}.

    Uses sparsify's own selection (Conv/ConvTranspose/Gemm/MatMul weight initializers from the
    rules registry's N:M axis, reduction size a multiple of M, not shared, not ignored), so
    training and one-shot sparsify agree. Returns (targets, layers_sparsified, layers_skipped).
    """
    from spa_nm.nm import sparsify

    _, rep = sparsify(model, spec, ignore=tuple(ignore))
    targets = {e["weight"]: int(e["axis"]) for e in rep["layers_sparsified"]}
    return targets, rep["layers_sparsified"], rep["layers_skipped"]


# -- torch part -----------------------------------------------------------------------------


def nm_mask_torch(w: Any, axis: int, n: int, m: int) -> Any:
    """Float 0/1 mask of the N largest |w| in each block of M consecutive entries on ``axis``.

    Same layout and tie-break as `spa_nm.nm.nm_mask` (METHODS.md §2.1): move the axis last,
    view as (−1, M), stable descending sort of |w| (the lower index wins a tie), keep the first N.
    For float32 the sort is a top-N of the exact integer key bits(|w|)·M + (M − 1 − index), which
    orders like the stable sort and is unique, at about half the cost of a stable argsort.
    """
    import torch

    if w.shape[axis] % m:
        raise ValueError(f"reduction size {w.shape[axis]} is not a multiple of {m}")
    with torch.no_grad():
        moved = torch.movedim(w.detach().abs(), axis, -1)
        blocks = moved.reshape(-1, m)
        if blocks.dtype == torch.float32:  # |w| >= 0: its IEEE bits order like its value
            order = torch.arange(m - 1, -1, -1, device=blocks.device)
            key = blocks.contiguous().view(torch.int32).to(torch.int64) * m + order
            keep = key.topk(n, dim=1, sorted=False).indices
        else:
            keep = torch.argsort(-blocks, dim=1, stable=True)[:, :n]
        mask = torch.zeros_like(blocks)
        mask.scatter_(1, keep, 1.0)
        return torch.movedim(mask.reshape(moved.shape), -1, axis)


@functools.cache
def _masked_ste() -> Any:
    """The autograd function W̃ = W ⊙ (Φ + D Φ̄), ∂L/∂W = g + λ Φ̄ ⊙ W (§2.2, §2.3).

    D = 0, λ = 2e-4: SR-STE; D ∈ [0, 1], λ = 0: MDGF / SDGF (identity backward, not scaled by D,
    not masked). Built on first use so that importing this module does not import torch.
    """
    import torch

    class MaskedSTE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w, mask, decay: float, lam: float):
            ctx.lam = lam
            if lam:
                ctx.save_for_backward(w, mask)
            return w * (mask + decay * (1.0 - mask)) if decay else w * mask

        @staticmethod
        def backward(ctx, g):
            if ctx.lam:
                w, mask = ctx.saved_tensors
                return g + ctx.lam * (1.0 - mask) * w, None, None, None
            return g, None, None, None

    return MaskedSTE


class NMSparsifier:
    """Drives one N:M training method over named weight parameters (METHODS.md §2.2–§2.5).

    Install `transforms` as the forward's weight transforms (``mod.weight_transforms``), call
    `after_step` after every ``optimizer.step()``, and export with `final_masks`.

    Args:
        params: initializer name -> ``nn.Parameter`` (the tensors the optimiser updates).
        axes: initializer name -> reduction axis, for the weights to sparsify (see `find_targets`).
        method: one of `METHODS`.
        spec: the target N:M pattern.
        total_steps: the optimiser steps of the run (T).
        lambda_w: SR-STE's λ_W (default 2e-4).
        beta: MDGF's β; None derives it from the budget (`beta_rule`).
        k: SDGF-Geometric's k (default 16).
        dense_frac, final_frac: T_d / T and T_f / T; None for the method's defaults (`phases`).
        epsilon: D(j*) for ``mdgf-exp`` when β is derived.
    """

    def __init__(
        self,
        params: Mapping[str, Any],
        axes: Mapping[str, int],
        method: str,
        spec: NMSpec,
        total_steps: int,
        *,
        lambda_w: float = SRSTE_LAMBDA,
        beta: float | None = None,
        k: int = DEFAULT_GEOMETRIC_K,
        dense_frac: float | None = None,
        final_frac: float | None = None,
        epsilon: float = EPSILON,
    ) -> None:
        _check_method(method)
        missing = sorted(set(axes) - set(params))
        if missing:
            raise ConfigError(f"no trainable parameter for weight(s) {', '.join(missing)}")
        if beta is not None and not beta > 0:
            raise ConfigError(f"beta must be positive, got {beta}")
        if lambda_w < 0:
            raise ConfigError(f"lambda_w must be >= 0, got {lambda_w}")
        self.method, self.spec = method, spec
        self.params = {name: params[name] for name in axes} if method != "dense" else {}
        self.axes = dict(axes) if method != "dense" else {}
        self.phases = phases(max(int(total_steps), 1), method, dense_frac, final_frac)
        self.lambda_w = float(lambda_w) if method == "sr-ste" else 0.0
        self.beta = None
        if method in ("mdgf-linear", "mdgf-exp"):
            self.beta = float(beta) if beta is not None else beta_rule(method, self.phases, epsilon)
        self.frames: dict[str, list[NMSpec]] = {}
        self.k_used: dict[str, int] = {}
        for name, axis in self.axes.items():
            size = int(self.params[name].shape[axis])
            fr, kk = frames_for(method, spec, size, k)
            self.frames[name] = fr
            if kk is not None:
                self.k_used[name] = kk
        self.step = 0
        self.sad: list[int] = []
        self._fixed: dict[str, Any] = {}
        self._cache: dict[str, tuple[int, int, int, Any]] = {}
        self._prev = {name: self._target_mask(name) for name in self.axes}
        if method in ("fixed", "oneshot"):
            import torch

            with torch.no_grad():
                for name in self.axes:
                    self._fixed[name] = self._prev[name].clone()
                    self.params[name].mul_(self._fixed[name])

    # the forward ----------------------------------------------------------------------------

    def transforms(self) -> dict[str, Callable[[Any], Any]]:
        """initializer name -> fn(W) returning W̃ for the current step (empty for ``dense``)."""
        return {name: functools.partial(self._forward, name) for name in self.axes}

    def _forward(self, name: str, w: Any) -> Any:
        if self.method in ("fixed", "oneshot"):
            return w * self._fixed[name]
        where = self.phases.phase_of(self.step)
        if where == "dense":
            return w  # Φ ≡ 1, D ≡ 1 (§2.4)
        if self.method in ("sdgf", "sdgf-geometric") and where == "sparse":
            fr = self.frames[name]
            f = fr[frame_index(self.step - self.phases.dense, self.phases.sparse, len(fr))]
        else:
            f = self.spec
        mask = self._mask(name, w, f.n, f.m).to(w.dtype)
        d = self.current_decay()
        return _masked_ste().apply(w, mask, d, self.lambda_w)

    def current_decay(self) -> float:
        """D of the current step: MDGF's decay; 0 for the binary methods (1 in a dense phase)."""
        if self.beta is not None:
            return decay_at(self.method, self.step, self.phases, self.beta)
        return 1.0 if self.phases.phase_of(self.step) == "dense" else 0.0

    def current_frames(self) -> dict[str, str]:
        """The N:M pattern each weight's mask uses at the current step ("dense" in a dense phase)."""
        out = {}
        for name in self.axes:
            where = self.phases.phase_of(self.step)
            if self.method in ("fixed", "oneshot"):
                out[name] = str(self.spec)
            elif where == "dense":
                out[name] = "dense"
            elif where == "sparse":
                fr = self.frames[name]
                out[name] = str(
                    fr[frame_index(self.step - self.phases.dense, self.phases.sparse, len(fr))]
                )
            else:
                out[name] = str(self.spec)
        return out

    # the step -------------------------------------------------------------------------------

    def after_step(self) -> int:
        """Advance to the next step; re-mask ``fixed`` weights (ASP); record and return SAD."""
        import torch

        self.step += 1
        if self.method == "fixed":
            with torch.no_grad():
                for name in self.axes:
                    self.params[name].mul_(self._fixed[name])
        flips = 0
        for name in self.axes:
            new = self._target_mask(name)
            flips += int((new != self._prev[name]).sum())
            self._prev[name] = new
        self.sad.append(flips)
        return flips

    def _target_mask(self, name: str) -> Any:
        return self._mask(name, self.params[name], self.spec.n, self.spec.m)

    def _mask(self, name: str, w: Any, n: int, m: int) -> Any:
        """Φ(w; n, m), reused while the parameter is unchanged (torch's in-place version counter):
        the SAD bookkeeping after a step and the next forward need the same mask."""
        if w is not self.params[name]:
            return nm_mask_torch(w, self.axes[name], n, m)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == w._version and hit[1:3] == (n, m):
            return hit[3]
        mask = nm_mask_torch(w, self.axes[name], n, m)
        self._cache[name] = (w._version, n, m, mask)
        return mask

    # the export -----------------------------------------------------------------------------

    def final_masks(self) -> dict[str, np.ndarray]:
        """Hard target masks to export (§2.4 Export): Φ(W; N, M) of the final weights, or the
        fixed mask for ``fixed`` / ``oneshot``. Boolean arrays keyed by initializer name."""
        src = (
            self._fixed
            if self.method in ("fixed", "oneshot")
            else {n: self._target_mask(n) for n in self.axes}
        )
        return {name: src[name].detach().cpu().numpy().astype(bool) for name in self.axes}

    def describe(self) -> dict[str, Any]:
        """The schedule as report data: phases, β, λ_W, frames and geometric k' per weight."""
        out: dict[str, Any] = {
            "method": self.method,
            "pattern": str(self.spec),
            "phases": {
                "dense": self.phases.dense,
                "sparse": self.phases.sparse,
                "final": self.phases.final,
            },
        }
        if self.method == "sr-ste":
            out["lambda_w"] = self.lambda_w
        if self.beta is not None:
            out["beta"] = self.beta
        if self.method in ("sdgf", "sdgf-geometric"):
            out["frames"] = {name: [str(f) for f in fr] for name, fr in self.frames.items()}
        if self.k_used:
            out["geometric_k"] = dict(self.k_used)
        return out
