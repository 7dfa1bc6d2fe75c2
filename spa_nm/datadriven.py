"""Data-driven group criteria from gradients: ``taylor``, ``hessian``, ``snip`` (METHODS.md §1.5).

Every score is a sum over S(G,c), the member slices of unit c that `spa_nm.graph` lists for the
group: producer rows, biases, norm scales and shifts, per-channel constants and consumer columns
(running statistics and divisors are not trainable and are left out). The gradients
g = ∂L/∂θ come from the ONNX model itself, run in torch by `spa_nm.train.to_torch` in inference
mode (BatchNormalization on its running statistics, Dropout off), on B mini-batches:

- ``taylor`` (Molchanov et al. 2019, first-order Taylor of the loss change for removing c):
  I(c) = (1/B) Σ_b (Σ_{θ∈S(G,c)} θ·g_θ^(b))², g^(b) the gradient of batch b's mean loss;
- ``hessian`` (OBD-style second-order saliency with a diagonal Hessian): I(c) =
  Σ_{θ∈S(G,c)} θ²·F_θ/2 where F_θ = (1/B) Σ_b (g_θ^(b))² is the empirical Fisher diagonal
  **on mini-batch gradients** (not per-sample gradients; per-sample Fisher would be larger by
  about the gradient variance / batch size), the usual Fisher ≈ Hessian approximation at a
  trained minimum [R];
- ``snip`` (Lee et al. 2019, connection sensitivity, for pruning at initialisation, §1.8):
  I(c) = Σ_{θ∈S(G,c)} |θ·ḡ_θ|, ḡ = (1/B) Σ_b g^(b).

Aggregation over slices: ``sum`` (default; for ``taylor`` the signed sums θ·g of all slices are
added before squaring, as in the formula above), ``mean`` or ``max`` (per-slice scores, for
``taylor`` the per-slice (Σ_{θ∈slice} θ·g)² averaged over batches, then combined).

Loss: cross-entropy of the first output ([batch, classes]) against ``labels`` when the data has
them. Without labels the substitute of §1.5 [D]: the inputs (the data's, or random inputs from
`spa_nm.testing.random_feeds` when no data is given) labelled by the dense model's own argmax
over the last axis of its first output. The plan's ``details`` (the report's ``taylor`` /
``hessian`` / ``snip`` entry) names which was used.

A group none of whose slices is a trainable tensor of the model (a dequantized QDQ weight, for
instance) falls back to ``l2`` and its note says so. torch is imported lazily, through
`spa_nm.train`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from spa_nm.errors import ConfigError, InputError, SpaNmError
from spa_nm.facts import Role
from spa_nm.graph import ChannelGroup, DependencyGraph

__all__ = ["GRADIENT_CRITERIA", "GradientOptions", "GradientScorer", "gradient_stats"]

log = logging.getLogger(__name__)

GRADIENT_CRITERIA = ("taylor", "hessian", "snip")
# running statistics are buffers, divisors would divide by zero: neither is a member slice here
_SKIP_ROLES = (Role.NORM_STAT, Role.DIVISOR)
SUBSTITUTE = "no labels: inputs labelled by the dense model's argmax (METHODS.md §1.5 substitute)"


@dataclass(frozen=True)
class GradientOptions:
    """Where the gradients come from.

    ``data``: an .npz path (arrays by graph-input name plus optional ``labels``, or the
    METHODS.md §7 ``x_train``/``y_train`` layout) or such arrays as a mapping; None: random
    inputs labelled by the dense model (the §1.5 substitute). At most ``batches`` mini-batches
    of ``batch_size`` samples (a model with a fixed batch dimension uses that size), drawn in a
    seeded order.
    """

    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None
    batch_size: int = 32
    batches: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for what in ("batch_size", "batches"):
            v = getattr(self, what)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{what.replace('_', ' ')} must be a positive integer, got {v}")

    def describe(self) -> str:
        if self.data is None:
            return "random inputs (spa_nm.testing.random_feeds)"
        return str(self.data) if not isinstance(self.data, Mapping) else "<arrays>"


@dataclass
class _Stats:
    """Per-parameter gradient statistics over B batches."""

    theta: dict[str, np.ndarray]  # float64 copies of the parameters
    mean_g: dict[str, np.ndarray]  # (1/B) Σ_b g^(b)
    mean_g2: dict[str, np.ndarray]  # (1/B) Σ_b (g^(b))²
    tg: dict[tuple[str, int], np.ndarray]  # [B, n_axis]: Σ over the other axes of θ·g^(b)
    batches: int
    samples: int
    loss: str
    source: str


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ConfigError(
            "the taylor, hessian and snip criteria need torch (pip install 'spa_nm[train]')"
        ) from e
    return torch


def _batches(
    model, opts: GradientOptions, where: str
) -> tuple[list[dict[str, np.ndarray]], list, str]:
    """The feeds of each mini-batch, its labels (or None), and where they came from."""
    from spa_nm.train.data import load_arrays, make_dataset, model_inputs

    static = {d[0] for _, d, _ in model_inputs(model) if d and d[0] is not None}
    bs = min(static) if static else opts.batch_size
    if opts.data is None:
        from spa_nm.testing import random_feeds

        feeds = [random_feeds(model, opts.seed + b, batch=bs) for b in range(opts.batches)]
        return feeds, [None] * len(feeds), opts.describe()
    arrays = dict(opts.data) if isinstance(opts.data, Mapping) else load_arrays(opts.data)
    ds = make_dataset(model, arrays, opts.describe(), "train")
    n = len(ds)
    if n < bs:
        raise InputError(f"{ds.source}: {n} sample(s), fewer than the model's fixed batch of {bs}")
    order = np.random.default_rng(opts.seed).permutation(n)
    nb = min(opts.batches, n // bs if static else math.ceil(n / bs))
    feeds, labels = [], []
    for b in range(nb):
        idx = np.sort(order[b * bs : (b + 1) * bs])
        feeds.append({k: v[idx] for k, v in ds.inputs.items()})
        labels.append(None if ds.labels is None else ds.labels[idx])
    return feeds, labels, f"{ds.source} ({where})"


def _loss(torch, out, labels, where: str):
    """Cross-entropy of the first output against ``labels`` (None: the output's own argmax)."""
    f = torch.nn.functional
    logits = out.double()
    if labels is not None:
        if logits.ndim != 2 or logits.shape[1] <= int(labels.max()):
            raise InputError(
                f"{where}: labels need a [batch, classes] first output with more than "
                f"{int(labels.max())} classes; it has shape {list(logits.shape)}"
            )
        return f.cross_entropy(logits, torch.from_numpy(labels))
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ConfigError(
            f"{where}: without labels the gradient criteria need a first output whose last axis "
            f"holds class scores; it has shape {list(logits.shape)}: pass data with labels"
        )
    flat = logits.reshape(-1, logits.shape[-1])
    return f.cross_entropy(flat, flat.detach().argmax(1))


def gradient_stats(
    model, names: set[str], opts: GradientOptions, axes: dict[str, set[int]] | None = None
) -> _Stats:
    """Gradient statistics of the float tensors ``names`` of ``model`` (see the module doc).

    ``axes[name]``: the axes along which per-batch Σθ·g is kept (for ``taylor``).
    """
    torch = _torch()
    from spa_nm.train import UnsupportedOpError, to_torch

    where = model.graph.name or "<model>"
    try:
        mod = to_torch(model)
    except UnsupportedOpError as e:
        raise SpaNmError(
            f"{where}: gradients need the torch bridge, which cannot run it: {e}"
        ) from e
    mod.eval()
    params = mod.onnx_parameters()
    names = sorted(n for n in names if n in params and params[n].dtype.is_floating_point)
    feeds, labels, source = _batches(model, opts, where)
    labelled = labels[0] is not None
    theta = {n: params[n].detach().double().numpy().copy() for n in names}
    sum_g = {n: np.zeros_like(theta[n]) for n in names}
    sum_g2 = {n: np.zeros_like(theta[n]) for n in names}
    tg: dict[tuple[str, int], list[np.ndarray]] = {
        (n, a): [] for n in names for a in sorted((axes or {}).get(n, ()))
    }
    for p in params.values():
        p.requires_grad_(False)
    for n in names:
        params[n].requires_grad_(True)
    try:
        for fb, lb in zip(feeds, labels, strict=True):
            try:
                outs = mod(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fb.items()})
            except RuntimeError as e:
                raise SpaNmError(
                    f"{where}: the torch forward pass failed: {str(e).splitlines()[0][:300]}"
                ) from e
            loss = _loss(torch, outs[0], lb, source)
            if not torch.isfinite(loss):
                raise SpaNmError(f"{where}: the loss is not finite ({loss.item()}) on {source}")
            grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                ga = np.zeros_like(theta[n]) if g is None else g.detach().double().numpy()
                sum_g[n] += ga
                sum_g2[n] += ga * ga
                for (name, a), rows in tg.items():
                    if name == n:
                        prod = np.moveaxis(theta[n] * ga, a, 0)
                        rows.append(prod.reshape(prod.shape[0], -1).sum(axis=1))
    finally:
        for p in params.values():
            p.requires_grad_(True)
    nb = len(feeds)
    return _Stats(
        theta,
        {n: s / nb for n, s in sum_g.items()},
        {n: s / nb for n, s in sum_g2.items()},
        {k: np.stack(v) for k, v in tg.items()},
        nb,
        int(sum(len(next(iter(f.values()))) for f in feeds)),
        "cross-entropy on the labels" if labelled else SUBSTITUTE,
        source,
    )


class GradientScorer:
    """The ``taylor``, ``hessian`` and ``snip`` criteria on every prunable group of ``dg``.

    Gradients are computed once, for the member slices of all prunable groups, on the model
    ``dg`` was built on (so initializer names match).
    """

    self_normalized = False

    def __init__(
        self,
        dg: DependencyGraph,
        criterion: str,
        agg: str = "sum",
        options: GradientOptions | None = None,
    ) -> None:
        if criterion not in GRADIENT_CRITERIA:
            raise ConfigError(f"not a gradient criterion: {criterion!r}")
        self.dg, self.criterion, self.agg = dg, criterion, agg
        self.opts = options if options is not None else GradientOptions()
        self._stats: _Stats | None = None

    def _prepare(self) -> _Stats:
        if self._stats is None:
            axes: dict[str, set[int]] = {}
            for g in self.dg.prunable_groups:
                for p in g.params:
                    if p.role not in _SKIP_ROLES:
                        axes.setdefault(p.name, set()).add(p.axis)
            self._stats = gradient_stats(self.dg.view.model, set(axes), self.opts, axes)
        return self._stats

    def _slice(self, st: _Stats, name: str, axis: int) -> np.ndarray:
        """Per-index score of one slice (index along ``axis``); taylor: [B, n] signed sums."""
        if self.criterion == "taylor":
            return st.tg[(name, axis)]
        if self.criterion == "hessian":
            per = st.theta[name] ** 2 * st.mean_g2[name] / 2.0
        else:  # snip
            per = np.abs(st.theta[name] * st.mean_g[name])
        moved = np.moveaxis(per, axis, 0)
        return moved.reshape(moved.shape[0], -1).sum(axis=1)

    def __call__(self, group: ChannelGroup) -> tuple[np.ndarray, str | None]:
        st = self._prepare()
        n = group.size
        per_slice: list[np.ndarray] = []
        count = np.zeros(n)
        signed = np.zeros((st.batches, n))
        seen = set()
        for p in group.params:
            key = (p.name, p.axis)
            if p.role in _SKIP_ROLES or key in seen or p.name not in st.theta:
                continue
            seen.add(key)
            units = np.searchsorted(group.units, self.dg.elements(p.param_slot))
            np.add.at(count, np.unique(units), 1)
            v = self._slice(st, p.name, p.axis)
            if self.criterion == "taylor":
                part = np.zeros((st.batches, n))
                np.add.at(part.T, units, v.T)
                signed += part
                per_slice.append(np.mean(part**2, axis=0))
            else:
                part = np.zeros(n)
                np.add.at(part, units, v)
                per_slice.append(part)
        if not per_slice:
            from spa_nm.importance import l2

            return l2(self.dg, group, self.agg)[0], "no trainable member slice: fell back to l2"
        if self.agg == "sum":
            score = np.mean(signed**2, axis=0) if self.criterion == "taylor" else sum(per_slice)
        elif self.agg == "mean":
            score = np.sum(per_slice, axis=0) / np.maximum(count, 1)
        else:
            score = np.max(per_slice, axis=0)
        return np.nan_to_num(np.asarray(score, np.float64), nan=np.inf), None

    def finish(self, plan) -> None:
        """The report entry: where the gradients came from and which loss."""
        st = self._prepare()
        plan.details = {
            "data": st.source,
            "loss": st.loss,
            "batches": st.batches,
            "samples": st.samples,
            "mode": "inference (BatchNormalization running statistics, no Dropout)",
        }
