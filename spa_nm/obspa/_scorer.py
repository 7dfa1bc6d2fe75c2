"""Per-layer OBS state, the ``obspa`` scorer, the greedy re-selection and the compensated
weights written into the plan (METHODS.md §1.7 items 3 and 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spa_nm.graph import ChannelGroup, DependencyGraph
from spa_nm.obspa._hessian import _bn_gram, _bn_moments, _Capture
from spa_nm.obspa._layers import _Layer, consumer_layers
from spa_nm.obspa._math import _energy, _inverse_hessian, _remove, _unit_errors
from spa_nm.obspa._options import MAX_STEPS, ObspaOptions


@dataclass
class _State:
    """A consumer during pruning: its augmented weight [W | b], P per block, and G."""

    layer: _Layer
    hessian: str
    w: np.ndarray
    w0: np.ndarray
    ps: list[np.ndarray]
    gs: list[np.ndarray]
    norm: float  # tr(W₀ G W₀ᵀ): the layer's output energy (1 for the identity oracle)
    cols_of: dict[int, np.ndarray]
    removed: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def build(cls, lay: _Layer, hessian: str, grams, damp: float) -> _State:
        cols = lay.w.shape[1]
        cols_of = {int(u): np.nonzero(lay.col_unit == u)[0] for u in np.unique(lay.col_unit)}
        if hessian == "identity":  # §1.7 item 6: H = I, no bias column, no normalisation
            eye = np.eye(cols)
            return cls(lay, hessian, lay.w.copy(), lay.w.copy(), [eye.copy() for _ in lay.blocks],
                       [eye for _ in lay.blocks], 1.0, cols_of)  # fmt: skip
        bias = lay.bias_vec is not None
        w = np.concatenate([lay.w, lay.bias_vec[:, None]], axis=1) if bias else lay.w.copy()
        ps, gs, norm = [], [], 0.0
        for (rows, _), (g, mean) in zip(lay.blocks, grams, strict=True):
            if bias:
                g = np.block([[g, mean[:, None]], [mean[None, :], np.ones((1, 1))]])
            gs.append(g)
            ps.append(_inverse_hessian(g, damp))
            wb = w[rows]
            norm += _energy(wb, g)
        return cls(lay, hessian, w, w.copy(), ps, gs, norm if norm > 0 else 1.0, cols_of)

    def errors(self, units: np.ndarray) -> np.ndarray:
        """ε_k(c) / tr(W G Wᵀ) for each unit position in ``units`` (0 where it has no column)."""
        out = np.zeros(units.size)
        has = np.array([int(u) in self.cols_of for u in units], dtype=bool)
        if not has.any():
            return out
        cols = [self.cols_of[int(u)] for u in units[has]]
        for (rows, _), p in zip(self.layer.blocks, self.ps, strict=True):
            out[has] += _unit_errors(self.w[rows], p, cols)
        return out / self.norm

    def remove(self, units) -> None:
        q = [self.cols_of[int(u)] for u in units if int(u) in self.cols_of]
        if not q:
            return
        q = np.concatenate(q)
        self.removed.append(q)
        for (rows, _), p in zip(self.layer.blocks, self.ps, strict=True):
            wb = self.w[rows]
            _remove(wb, p, q)
            self.w[rows] = wb

    def report(self, gid: int) -> dict[str, Any]:
        q = np.concatenate(self.removed) if self.removed else np.zeros(0, dtype=np.int64)
        d = self.w0 - self.w
        z = np.zeros_like(self.w0)
        z[:, q] = self.w0[:, q]
        e = z_e = base = 0.0
        for (rows, _), g in zip(self.layer.blocks, self.gs, strict=True):
            e += _energy(d[rows], g)
            z_e += _energy(z[rows], g)
            base += _energy(self.w0[rows], g)
        base = base if base > 0 else 1.0
        return {"node": self.layer.label, "op": self.layer.op, "group": gid, "hessian": self.hessian,
                "columns": int(self.layer.w.shape[1]), "columns_removed": int(q.size),
                "relative_error": e / base, "relative_error_uncompensated": z_e / base}  # fmt: skip


class ObspaScorer:
    """The ``obspa`` criterion (see the module docstring): scores groups, then ``finish``
    re-selects greedily and writes the compensated weights into the plan."""

    self_normalized = True

    def __init__(self, dg: DependencyGraph, options: ObspaOptions | None = None) -> None:
        self.dg = dg
        self.opts = options if options is not None else ObspaOptions()
        self._states: dict[int, list[_State]] | None = None
        self._skipped: dict[int, list[str]] = {}

    def _prepare(self) -> dict[int, list[_State]]:
        if self._states is not None:
            return self._states
        opts, view = self.opts, self.dg.view
        layers: dict[int, list[_Layer]] = {}
        for g in self.dg.prunable_groups:
            layers[g.id], self._skipped[g.id] = consumer_layers(self.dg, g, opts.max_cols)
        grams: dict[int, tuple[str, list]] = {}
        need: list[_Layer] = []
        for lays in layers.values():
            for lay in lays:
                if opts.hessian == "identity":
                    grams[id(lay)] = ("identity", [])
                    continue
                mom = _bn_moments(view, lay.input) if opts.hessian == "bn" else None
                if (
                    mom is not None
                    and lay.channel_axis == 1
                    and len(mom[0]) == (view.shape(lay.input) or (0, 0))[1]
                ):
                    grams[id(lay)] = ("bn", [_bn_gram(lay, mom, ch) for _, ch in lay.blocks])
                else:
                    need.append(lay)
        if need:
            got = _Capture(self.dg, opts).run(need)
            fallback = (
                "synthetic (no BatchNormalization feeds it)"
                if opts.hessian == "bn"
                else opts.hessian
            )
            for k, lay in enumerate(need):
                grams[id(lay)] = (fallback, got[k])
        self._states = {
            gid: [
                _State.build(lay, grams[id(lay)][0], grams[id(lay)][1], opts.damp) for lay in lays
            ]
            for gid, lays in layers.items()
        }
        return self._states

    def __call__(self, group: ChannelGroup) -> tuple[np.ndarray, str | None]:
        from spa_nm.importance import l2

        states = self._prepare().get(group.id, [])
        skipped = self._skipped.get(group.id, [])
        if not states:
            s = l2(self.dg, group)[0]
            mean = float(np.mean(s)) if s.size else 0.0
            why = "; ".join(skipped) or "no consumer reads it through a constant weight"
            return (
                s / mean if mean > 0 else s
            ), f"no compensable consumer ({why}): fell back to l2"
        pos = np.arange(group.size)
        score = sum(st.errors(pos) for st in states)
        note = f"not compensated: {'; '.join(skipped)}" if skipped else None
        return np.asarray(score, dtype=np.float64), note

    def finish(self, plan) -> None:
        """Greedy re-selection with downdates, then the compensated weights into ``plan``."""
        states = self._prepare()
        dg, opts = self.dg, self.opts
        details: dict[str, Any] = {"hessian": opts.hessian, "damp": opts.damp, "samples": opts.samples,
                                   "layers": [], "fallback_groups": []}  # fmt: skip
        if opts.hessian == "data":
            details["data"] = opts.data
        for gid in sorted(plan.removed):
            sts = states.get(gid, [])
            g = dg.groups[gid]
            if not sts:
                details["fallback_groups"].append(gid)
                continue
            chosen = np.searchsorted(g.units, plan.removed[gid])
            if opts.rescore:
                chosen = self._greedy(g, sts, chosen.size)
            else:
                for st in sts:
                    st.remove(chosen)
            plan.removed[gid] = np.sort(g.units[chosen])
            for st in sts:
                details["layers"].append(st.report(gid))
                self._write(st, plan)
        plan.details = details

    def _greedy(self, g: ChannelGroup, sts: list[_State], k: int) -> np.ndarray:
        """k units, lowest re-scored ε first, in at most MAX_STEPS batches; never empties a slot."""
        slots_of: list[list[int]] = [[] for _ in range(g.size)]
        left = []
        for j, s in enumerate(g.slots):
            units = np.unique(np.searchsorted(g.units, self.dg.elements(s)))
            left.append(units.size)
            for u in units:
                slots_of[int(u)].append(j)
        remaining = np.ones(g.size, dtype=bool)
        chosen: list[int] = []
        steps = min(k, MAX_STEPS)
        sizes = [k // steps + (1 if t < k % steps else 0) for t in range(steps)] if k else []
        for size in sizes:
            cand = np.nonzero(remaining)[0]
            score = sum(st.errors(cand) for st in sts)
            picked = []
            for u in cand[np.lexsort((cand, score))]:
                if all(left[j] > 1 for j in slots_of[int(u)]):
                    picked.append(int(u))
                    for j in slots_of[int(u)]:
                        left[j] -= 1
                    if len(picked) == size:
                        break
            if not picked:
                break
            for st in sts:
                st.remove(picked)
            remaining[picked] = False
            chosen.extend(picked)
        return np.array(sorted(chosen), dtype=np.int64)

    def _write(self, st: _State, plan) -> None:
        lay = st.layer
        if not st.removed:
            return
        cols = lay.w.shape[1]
        dtype = self.dg.view.const(lay.weight).dtype
        plan.updates[lay.weight] = np.asarray(lay.to_stored(st.w[:, :cols]), dtype=dtype)
        if st.w.shape[1] == cols or lay.bias_store is None:
            return
        b = lay.bias_store(st.w[:, cols])
        if lay.bias is not None:
            plan.updates[lay.bias] = np.asarray(b, dtype=self.dg.view.const(lay.bias).dtype)
        elif lay.can_create_bias and np.any(b != 0):
            plan.new_biases[lay.index] = np.asarray(b, dtype=dtype)
