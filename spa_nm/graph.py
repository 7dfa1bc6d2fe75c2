"""The dependency graph of channel axes and the channel groups built from it.

Worked example (METHODS.md §1.3, §1.4). ``Conv1 -> BN -> Relu -> Concat(., x2) -> Conv2``:

- Conv1 declares its output slot ``y1[1]`` with W1 rows and b1 as members (a *cut*);
- BN links ``y1[1] <-> bn[1]`` with γ, β, μ, σ² as members; Relu links ``bn[1] <-> r[1]``;
- Concat links ``r[1]`` to elements [0, C1) of ``cat[1]`` and ``x2[1]`` to [C1, C1 + C2);
- Conv2 reads ``cat[1]`` through the columns of W2.

The networkx graph has one node per slot (activation axis or initializer axis) and one edge per
link; a connected component is a `ChannelGroup`. Inside it, linked *elements* are united: each
element class is one removable unit (one channel of Conv1 with its BN, ReLU and Concat copies and
its W2 column, or one channel of x2 with its W2 column).

A group is blocked when it touches a graph input or output, a node without a rule, a node whose
rule declined, a constant shared with a node that does not prune it, an ``--ignore``d node, or a
consumer that would receive a constant it cannot absorb (the BN + activation trap).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import onnx_ir as ir

from spa_nm.errors import UnsupportedModelError
from spa_nm.facts import Blocked, OpFacts, Param, Role, Slot
from spa_nm.rules import RuleContext, lookup
from spa_nm.rules._context import MAX_SLOT_ELEMENTS, UnknownRank
from spa_nm.view import ModelView, node_label

__all__ = [
    "ATTENTION_MODES",
    "ChannelGroup",
    "DependencyGraph",
    "ModelView",
    "analyze",
    "composite_axis",
    "node_label",
]

# Every slot the analysis can ever know is an axis set of some value, so the worklist ends;
# this bound on rule runs per node only guards against a rule that flip-flops, and hitting it is
# an error, never a silent truncation.
_MAX_RUNS_PER_NODE = 1000
ATTENTION_MODES = ("heads", "head_dim")


@dataclass
class ChannelGroup:
    """Every slot, slice and unit that is removed together; the unit of pruning."""

    id: int
    slots: list[Slot]
    params: list[Param]
    nodes: list[str]
    units: np.ndarray  # unit labels (element-class ids) of the group
    blocked: list[Blocked] = field(default_factory=list)
    folds: list[tuple[int, Slot]] = field(default_factory=list)  # (node index, consumer slot)
    # why removing these channels is not exact (allowed by ``allow_approximate``)
    approximate: list[Blocked] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.units.size)

    @property
    def prunable(self) -> bool:
        return (
            not self.blocked
            and self.size > 1
            and any(p.role == Role.WEIGHT_OUT for p in self.params)
        )

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "prunable": self.prunable,
            "nodes": self.nodes,
            "params": sorted({p.name for p in self.params}),
            "blocked": [{"node": b.node, "op": b.op, "reason": b.reason} for b in self.blocked],
            "approximate": [
                {"node": b.node, "op": b.op, "reason": b.reason} for b in self.approximate
            ],
        }


@dataclass
class DependencyGraph:
    """The analysis of one model: slots, element classes, groups and blocked ops."""

    view: ModelView
    graph: nx.Graph
    facts: dict[int, OpFacts | Blocked]
    offsets: dict[Slot, int]
    sizes: dict[Slot, int]
    labels: np.ndarray
    groups: list[ChannelGroup]
    blocked: list[Blocked]
    kappa: dict[Slot, np.ndarray]

    def elements(self, slot: Slot) -> np.ndarray:
        o = self.offsets[slot]
        return self.labels[o : o + self.sizes[slot]]

    def group_of(self, slot: Slot) -> ChannelGroup | None:
        for g in self.groups:
            if slot in g.slots:
                return g
        return None

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]


def analyze(
    model: ir.Model,
    ignore: Iterable[str] = (),
    *,
    attention: str = "heads",
    allow_approximate: bool = False,
) -> DependencyGraph:
    """Run every rule to a fixed point and build groups (METHODS.md §1.2-§1.4).

    ``attention``: ``"heads"`` removes whole attention heads, ``"head_dim"`` the same
    within-head indices of every head (`ModelView.attention`). ``allow_approximate``: groups
    whose removal is not exact (normalization statistics over the channel axis) become
    prunable and list the reasons in ``ChannelGroup.approximate``; otherwise they block.
    """
    import fnmatch

    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {attention!r}")
    view = ModelView(model)
    view.attention = attention
    known, facts = _propagate(view)

    frozen: dict[str, list[Blocked]] = defaultdict(list)
    blocked_ops: list[Blocked] = []
    for f in facts.values():
        bl = [f] if isinstance(f, Blocked) else f.blocked
        for b in bl:
            blocked_ops.append(b)
            for v in b.values:
                frozen[v].append(b)
    approx: dict[str, list[Blocked]] = defaultdict(list)
    for f in facts.values():
        for b in [] if isinstance(f, Blocked) else f.approximate:
            if not allow_approximate:
                b = Blocked(b.node, b.op, f"{b.reason} (approximate: allowed with --allow-approximate)", b.values)
                blocked_ops.append(b)
            for v in b.values:
                (approx if allow_approximate else frozen)[v].append(b)
    for name in view.graph_inputs:
        if name not in view.model.graph.initializers:
            frozen[name].append(Blocked(name, "graph input", "graph inputs keep their shape"))
    for name in view.graph_outputs:
        frozen[name].append(Blocked(name, "graph output", "graph outputs keep their shape"))
    _freeze_subgraph_captures(view, frozen)

    # -- slots and their sizes -------------------------------------------------------------
    slots: dict[Slot, int] = {}
    param_of: dict[Slot, list[Param]] = defaultdict(list)
    node_slots: dict[int, set[Slot]] = defaultdict(set)
    for i, f in facts.items():
        if isinstance(f, Blocked):
            continue
        for s in _activation_slots(f):
            node_slots[i].add(s)
        for p in f.params:
            param_of[p.param_slot].append(p)
    nested: list[tuple[Slot, Slot]] = []  # (inner, outer): inner's axes within outer's
    for value, ss in known.items():
        for s in ss:
            size = _slot_size(view, s)
            if size is None:
                frozen[value].append(
                    Blocked(value, "shape", f"channel slot {s} has no static size")
                )
                size = 1
            if view.const(value) is not None:
                frozen[value].append(
                    Blocked(value, "constant", "a constant tensor carries this channel")
                )
            slots[s] = size
        for s1 in ss:
            for s2 in ss:
                if s1 == s2 or not set(s1.axes) & set(s2.axes):
                    continue
                if set(s1.axes) < set(s2.axes):
                    # a head axis seen alone by one rule and as (heads, head_dim) by another:
                    # every element of the composite goes with its index on the smaller slot
                    nested.append((s1, s2))
                elif not set(s2.axes) < set(s1.axes):
                    frozen[value].append(Blocked(value, "shape", "overlapping channel slots"))
    for ps in param_of:
        shape = view.shape(ps.value)
        slots[ps] = int(shape[ps.axes[0]])
        if not 0 < slots[ps] <= MAX_SLOT_ELEMENTS:
            frozen[ps.value].append(Blocked(ps.value, "shape", f"axis {ps.axes[0]} of {ps.value} has {slots[ps]} entries"))
            slots[ps] = 1

    offsets, n = {}, 0
    for s in sorted(slots):
        offsets[s] = n
        n += slots[s]

    # -- element union-find ---------------------------------------------------------------
    us, vs = [], []
    gx = nx.Graph()
    gx.add_nodes_from(slots)
    for i, f in facts.items():
        if isinstance(f, Blocked):
            continue
        label = node_label(view.nodes[i], i)
        for ln in f.links:
            a_idx = np.arange(slots[ln.a]) if ln.a_idx is None else np.asarray(ln.a_idx)
            b_idx = np.arange(slots[ln.b]) if ln.b_idx is None else np.asarray(ln.b_idx)
            if a_idx.shape != b_idx.shape or (
                a_idx.size and (a_idx.max() >= slots[ln.a] or b_idx.max() >= slots[ln.b])
            ):
                b = Blocked(
                    label,
                    view.nodes[i].op_type,
                    f"inconsistent channel sizes {ln.a} / {ln.b}",
                    (ln.a.value, ln.b.value),
                )
                blocked_ops.append(b)
                frozen[ln.a.value].append(b)
                frozen[ln.b.value].append(b)
                continue
            us.append(offsets[ln.a] + a_idx)
            vs.append(offsets[ln.b] + b_idx)
            if ln.a != ln.b:
                gx.add_edge(ln.a, ln.b, node=label)
        for p in f.params:
            ps = p.param_slot
            idx = np.arange(slots[ps]) if p.idx is None else np.asarray(p.idx)
            if idx.size != slots[ps] or (idx.size and idx.max() >= slots[p.slot]):
                b = Blocked(
                    label,
                    view.nodes[i].op_type,
                    f"parameter {p.name} does not match {p.slot}",
                    (p.slot.value,),
                )
                blocked_ops.append(b)
                frozen[p.slot.value].append(b)
                frozen[p.name].append(b)  # its slices must not form a group of their own
                continue
            us.append(offsets[ps] + np.arange(slots[ps]))
            vs.append(offsets[p.slot] + idx)
            gx.add_edge(ps, p.slot, node=label)
    for inner, outer in nested:
        dims = view.shape(outer.value)
        coords = np.indices([dims[a] for a in outer.axes]).reshape(len(outer.axes), -1)
        pick = [coords[outer.axes.index(a)] for a in inner.axes]
        idx = np.ravel_multi_index(pick, [dims[a] for a in inner.axes]) if pick else None
        if idx is None or idx.size != slots[outer] or slots[inner] != math.prod(dims[a] for a in inner.axes):
            frozen[outer.value].append(Blocked(outer.value, "shape", "overlapping channel slots"))
            continue
        us.append(offsets[outer] + np.arange(idx.size))
        vs.append(offsets[inner] + idx)
        gx.add_edge(inner, outer, node=outer.value)
    labels = _complete_composites(n, us, vs, slots, offsets, view)

    # -- constants carried by zeroed channels ---------------------------------------------
    kappa = _kappa(view, facts, slots)

    # -- groups ------------------------------------------------------------------------------
    groups: list[ChannelGroup] = []
    patterns = list(ignore)
    for gid, comp in enumerate(sorted(nx.connected_components(gx), key=lambda c: min(c))):
        comp_slots = sorted(comp)
        params = [p for s in comp_slots for p in param_of.get(s, [])]
        node_ids = sorted(i for i, ss in node_slots.items() if ss & comp) + sorted(
            i
            for i, f in facts.items()
            if not isinstance(f, Blocked) and any(p.param_slot in comp for p in f.params)
        )
        node_ids = sorted(set(node_ids))
        names = [node_label(view.nodes[i], i) for i in node_ids]
        units = np.unique(
            np.concatenate([labels[offsets[s] : offsets[s] + slots[s]] for s in comp_slots])
        )
        grp = ChannelGroup(gid, comp_slots, params, names, units)
        seen: set[tuple[str, str]] = set()
        for s in comp_slots:
            for b in frozen.get(s.value, []):
                if (b.node, b.reason) not in seen:
                    seen.add((b.node, b.reason))
                    grp.blocked.append(b)
        for name in names:
            if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
                grp.blocked.append(Blocked(name, "ignore", "ignored by --ignore"))
        seen = set()
        for s in comp_slots:
            for b in approx.get(s.value, []):
                if (b.node, b.reason) not in seen:
                    seen.add((b.node, b.reason))
                    grp.approximate.append(b)
        _check_shared_params(view, grp, facts)
        _check_composites(grp, labels, offsets, view)
        _check_folds(view, grp, facts, kappa, node_ids)
        groups.append(grp)
    return DependencyGraph(view, gx, facts, offsets, slots, labels, groups, blocked_ops, kappa)


class AnalysisLimit(UnsupportedModelError):
    """The rule pass did not reach its fixed point within its bound (a rule that oscillates):
    the model fails with this error, nothing is pruned on a partial analysis."""


def _propagate(view: ModelView) -> tuple[dict[str, set[Slot]], dict[int, OpFacts | Blocked]]:
    """Run every rule to the fixed point of the known channel slots, by worklist.

    Each rule runs once; whenever a value gains a slot, exactly the rules that read that value's
    slots (recorded by their `RuleContext`) run again, in graph order. A channel therefore
    travels any distance without a weight in time linear in the path, and the facts of every
    node are those of its run on the final slots.
    """
    import heapq

    known: dict[str, set[Slot]] = defaultdict(set)
    facts: dict[int, OpFacts | Blocked] = {}
    readers: dict[str, set[int]] = defaultdict(set)
    runs = [0] * len(view.nodes)
    queue = list(range(len(view.nodes)))
    queued = set(queue)
    while queue:
        i = heapq.heappop(queue)
        queued.discard(i)
        runs[i] += 1
        if runs[i] > _MAX_RUNS_PER_NODE:
            raise AnalysisLimit(
                f"channel analysis did not settle: {node_label(view.nodes[i], i)} ran "
                f"{_MAX_RUNS_PER_NODE} times"
            )
        reads: set[str] = set()
        f = facts[i] = _run_rule(view, view.nodes[i], i, known, reads)
        for v in reads:
            readers[v].add(i)
        if isinstance(f, Blocked):
            continue
        for s in _activation_slots(f):
            if s in known[s.value]:
                continue
            known[s.value].add(s)
            for j in readers[s.value]:
                if j not in queued:
                    queued.add(j)
                    heapq.heappush(queue, j)
    return known, facts


def _run_rule(
    view: ModelView, node: ir.Node, i: int, known, reads: set[str] | None = None
) -> OpFacts | Blocked:
    label = node_label(node, i)
    values = tuple(v.name for v in node.inputs if v is not None and v.name) + tuple(
        v.name for v in node.outputs if v.name
    )
    opset = view.opset_of(node.domain)
    entry = lookup(node.domain, node.op_type, opset)
    if entry is None:
        dom = node.domain or "ai.onnx"
        return Blocked(
            label, node.op_type, f"no rule for {dom}::{node.op_type} at opset {opset}", values
        )
    try:
        res = entry.fn(node, RuleContext(view, node, known, reads))
    except UnknownRank as e:  # not a bug: shape inference could not tell
        return Blocked(label, node.op_type, str(e), values)
    except Exception as e:  # a rule bug must block, never crash or guess
        if os.environ.get("SPA_NM_STRICT_RULES"):  # the test suite: a rule bug fails the test
            raise
        return Blocked(label, node.op_type, f"rule error: {type(e).__name__}: {e}", values)
    if isinstance(res, Blocked):
        return Blocked(label, res.op, res.reason, res.values or values)
    res.blocked = [Blocked(label, b.op, b.reason, b.values or values) for b in res.blocked]
    res.approximate = [Blocked(label, b.op, b.reason, b.values or values) for b in res.approximate]
    return res


def _activation_slots(f: OpFacts) -> set[Slot]:
    out = set()
    for ln in f.links:
        out.add(ln.a)
        out.add(ln.b)
    for p in f.params:
        out.add(p.slot)
    return out


def _slot_size(view: ModelView, s: Slot) -> int | None:
    shape = view.shape(s.value)
    if shape is None or any(a >= len(shape) or not isinstance(shape[a], int) for a in s.axes):
        return None
    n = math.prod(shape[a] for a in s.axes)
    return n if 0 < n <= MAX_SLOT_ELEMENTS else None


def _components(n: int, us: list[np.ndarray], vs: list[np.ndarray]) -> np.ndarray:
    """Connected components of n elements: label = smallest element id of the class."""
    lab = np.arange(n)
    if not us:
        return lab
    u = np.concatenate(us).astype(np.int64)
    v = np.concatenate(vs).astype(np.int64)
    while True:
        m = np.minimum(lab[u], lab[v])
        new = lab.copy()
        np.minimum.at(new, u, m)
        np.minimum.at(new, v, m)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, lab):
            return lab
        lab = new


def _complete_composites(
    n: int, us: list[np.ndarray], vs: list[np.ndarray], slots, offsets, view: ModelView
) -> np.ndarray:
    """Components, with every composite slot made a rectangle.

    A channel axis split by a Reshape ([C] -> [g, C/g], or [H·d] -> [H, d]) only keeps its
    flat index; what else ties its elements decides which factor shrinks. A Transpose that
    separates heads from head_dim, or a batched MatMul, ties each head together (or each
    head_dim index across heads, `ModelView.attention`). A composite slot whose units still vary
    along several axes is completed with ties across its leading factors, so only the last
    factor shrinks (the same inner indices in every group, as a channel shuffle needs).
    Ties only merge units, so completion never makes a removal inexact.
    """
    labels = _components(n, us, vs)
    # one slot at a time, in topological order (the split before what reorders it):
    # completing one can make the next rectangular (the two sides of a shuffle's Transpose),
    # and completing both at once would merge everything
    order = {v.name: i for i, node in enumerate(view.nodes) for v in node.outputs}
    composites = [s for s in slots if len(s.axes) > 1 and view.const(s.value) is None]
    for s in sorted(composites, key=lambda s: (order.get(s.value, -1), s)):
        shape = view.shape(s.value)
        dims = [shape[a] for a in s.axes]
        o = offsets[s]
        lab = labels[o : o + slots[s]]
        if lab.size != math.prod(dims) or composite_axis(lab.reshape(dims)) is not None:
            continue
        cols = lab.reshape(-1, dims[-1])  # unite each column: only the last factor varies
        merged = _components(n, [np.repeat(cols[0], cols.shape[0] - 1)], [cols[1:].T.reshape(-1)])
        labels = merged[labels]
    return labels


def _freeze_subgraph_captures(view: ModelView, frozen) -> None:
    """Values read inside If/Loop/Scan bodies are not visible to rules: freeze them."""
    for node in view.nodes:
        for attr in node.attributes.values():
            graphs = []
            if attr.type == ir.AttributeType.GRAPH:
                graphs = [attr.value]
            elif attr.type == ir.AttributeType.GRAPHS:
                graphs = list(attr.value)
            for sub in graphs:
                for sn in ir.traversal.RecursiveGraphIterator(sub):
                    for v in sn.inputs:
                        if v is not None and v.name in view.values and v.graph is not sub:
                            frozen[v.name].append(
                                Blocked(
                                    node.name or node.op_type,
                                    node.op_type,
                                    "read inside a subgraph",
                                )
                            )


def _check_shared_params(view: ModelView, grp: ChannelGroup, facts) -> None:
    declared: dict[str, set[int]] = defaultdict(set)
    for i, f in facts.items():
        if isinstance(f, Blocked):
            continue
        for p in f.params:
            declared[p.name].add(i)
    index = {id(n): i for i, n in enumerate(view.nodes)}
    for name in sorted({p.name for p in grp.params}):
        for c in view.consumers(name):
            i = index.get(id(c))
            if i is None or i not in declared[name]:
                grp.blocked.append(
                    Blocked(
                        c.name or c.op_type,
                        c.op_type,
                        f"constant {name} is also read here, unpruned",
                    )
                )
        if name in view.graph_outputs:
            grp.blocked.append(Blocked(name, "graph output", f"constant {name} is a graph output"))


def _check_composites(grp: ChannelGroup, labels, offsets, view: ModelView) -> None:
    """A composite slot must lose a product set (whole rows along each of its axes), or the
    tensor would not stay rectangular."""
    for s in grp.slots:
        if len(s.axes) < 2:
            continue
        shape = view.shape(s.value)
        dims = [shape[a] for a in s.axes]
        lab = labels[offsets[s] : offsets[s] + math.prod(dims)].reshape(dims)
        if composite_axis(lab) is None:
            grp.blocked.append(
                Blocked(s.value, "reshape", f"channels of {s} do not form a rectangle")
            )


def composite_axis(lab: np.ndarray) -> int | None:
    """The one axis along which a composite slot's units vary (labels constant across every
    other axis), or None."""
    for k in range(lab.ndim):
        moved = np.moveaxis(lab, k, -1).reshape(-1, lab.shape[k])
        if (moved == moved[:1]).all():
            return k
    return None


def _kappa(view: ModelView, facts, slots) -> dict[Slot, np.ndarray]:
    """Constant each element carries when its unit is zeroed (NaN: not a known constant)."""
    kappa: dict[Slot, np.ndarray] = {}
    for i in range(len(view.nodes)):
        f = facts[i]
        if isinstance(f, Blocked):
            continue
        if f.transfer is not None:
            try:
                out = f.transfer(kappa)
            except Exception:
                out = {}
            for s, k in out.items():
                if s in slots and s not in kappa:
                    k = np.asarray(k, dtype=float)
                    kappa[s] = np.where(np.isfinite(k), k, np.nan)  # inf is not foldable
        for s in f.resets:
            kappa[s] = np.zeros(slots.get(s, 0))
    return kappa


def _check_folds(view: ModelView, grp: ChannelGroup, facts, kappa, node_ids) -> None:
    """Every consumer must see 0 from a zeroed channel, or absorb the constant exactly."""
    if grp.blocked:
        return
    comp = set(grp.slots)
    for i in node_ids:
        f = facts[i]
        if isinstance(f, Blocked):
            continue
        for p in f.params:
            if p.role != Role.WEIGHT_IN or p.slot not in comp:
                continue
            k = kappa.get(p.slot)
            label = node_label(view.nodes[i], i)
            if k is None or np.isnan(k).any():
                grp.blocked.append(
                    Blocked(
                        label,
                        view.nodes[i].op_type,
                        f"a removed channel would still feed {p.slot} a value that is not a known constant",
                    )
                )
            elif np.any(k != 0):
                if p.slot in f.folds:
                    if (i, p.slot) not in grp.folds:
                        grp.folds.append((i, p.slot))
                else:
                    grp.blocked.append(
                        Blocked(
                            label,
                            view.nodes[i].op_type,
                            f"a removed channel would feed a constant into {p.slot} that cannot be folded exactly",
                        )
                    )
