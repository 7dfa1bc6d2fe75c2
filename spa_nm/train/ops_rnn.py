"""Torch kernels for the ONNX recurrent ops LSTM, GRU and RNN, written as a time loop of the
spec's equations (so gradients flow through every step), forward / reverse / bidirectional,
with ``sequence_lens``, peepholes, ``clip``, ``input_forget``, ``linear_before_reset``, custom
activations and both layouts (opset 14).

Gate layout of the weights (ONNX operator spec): LSTM ``W[dir] = [W_i; W_o; W_f; W_c]``
(``4H x I``), ``B[dir] = [Wb_iofc, Rb_iofc]``, peepholes ``P[dir] = [P_i, P_o, P_f]``; GRU
``[W_z; W_r; W_h]``; RNN one gate. Per step t (f, g, h the activations; default Sigmoid, Tanh,
Tanh)::

    LSTM  i = f(x W_i' + h R_i' + P_i c + b_i)    f_ = f(... + P_f c + b_f)   (1 - i with input_forget)
          c~ = g(x W_c' + h R_c' + b_c)            c = f_ c + i c~
          o = f(x W_o' + h R_o' + P_o c + b_o)     h = o h(c)
    GRU   z = f(x W_z' + h R_z' + b_z)   r = f(x W_r' + h R_r' + b_r)
          h~ = g(x W_h' + (r h) R_h' + Rb_h + Wb_h)      (linear_before_reset = 0)
          h~ = g(x W_h' + r (h R_h' + Rb_h) + Wb_h)      (linear_before_reset = 1)
          h = (1 - z) h~ + z h
    RNN   h = f(x W' + h R' + b)

``clip`` bounds every activation's input. Past a batch entry's ``sequence_lens`` its state stops
changing and its ``Y`` rows are 0 (a reverse direction starts at its last valid step).

Only imported by `spa_nm.train.interp` (lazily, from ``to_torch``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch  # noqa: TID253 - spa_nm.train op modules are only imported by to_torch
import torch.nn.functional as F  # noqa: TID253

from spa_nm.train.registry import NodeSpec, op

__all__: list[str] = []

Act = Callable[[torch.Tensor], torch.Tensor]

# name -> (number of (alpha, beta) values it takes, default alpha, default beta, builder)
_ACTS: dict[str, tuple[int, float, float, Callable[[float, float], Act]]] = {
    "sigmoid": (0, 0.0, 0.0, lambda a, b: torch.sigmoid),
    "tanh": (0, 0.0, 0.0, lambda a, b: torch.tanh),
    "relu": (0, 0.0, 0.0, lambda a, b: torch.relu),
    "softsign": (0, 0.0, 0.0, lambda a, b: F.softsign),
    "softplus": (0, 0.0, 0.0, lambda a, b: F.softplus),
    "leakyrelu": (1, 0.01, 0.0, lambda a, b: lambda x: F.leaky_relu(x, a)),
    "thresholdedrelu": (1, 1.0, 0.0, lambda a, b: lambda x: torch.where(x > a, x, 0 * x)),
    "elu": (1, 1.0, 0.0, lambda a, b: lambda x: F.elu(x, a)),
    "hardsigmoid": (2, 0.2, 0.5, lambda a, b: lambda x: torch.clamp(a * x + b, 0.0, 1.0)),
    "affine": (2, 1.0, 0.0, lambda a, b: lambda x: a * x + b),
    "scaledtanh": (2, 1.0, 1.0, lambda a, b: lambda x: a * torch.tanh(b * x)),
}


def _activations(node: NodeSpec, defaults: tuple[str, ...], n_dir: int) -> list[list[Act]]:
    names = list(node.attr("activations", ())) or list(defaults) * n_dir
    if len(names) != len(defaults) * n_dir:
        raise node.unsupported(f"{len(names)} activations for {n_dir} direction(s)")
    alphas, betas = list(node.attr("activation_alpha", ())), list(node.attr("activation_beta", ()))
    fns = []
    for name in names:
        key = name.lower() if isinstance(name, str) else name.decode().lower()
        if key not in _ACTS:
            raise node.unsupported(f"activation {name!r}")
        n, a, b, make = _ACTS[key]
        if n >= 1 and alphas:
            a = alphas.pop(0)
        if n >= 2 and betas:
            b = betas.pop(0)
        fns.append(make(a, b))
    k = len(defaults)
    return [fns[d * k : (d + 1) * k] for d in range(n_dir)]


def _clipper(clip: float | None) -> Act:
    if clip is None:
        return lambda x: x
    return lambda x: torch.clamp(x, -clip, clip)


class _Recurrent:
    """Attributes shared by LSTM / GRU / RNN and the direction / layout / sequence_lens loop."""

    def __init__(self, node: NodeSpec, gates: int, defaults: tuple[str, ...]) -> None:
        self.direction = node.attr("direction", "forward")
        if self.direction not in ("forward", "reverse", "bidirectional"):
            raise node.unsupported(f"direction={self.direction!r}")
        self.n_dir = 2 if self.direction == "bidirectional" else 1
        self.hidden = node.attr("hidden_size")
        self.gates = gates
        self.acts = _activations(node, defaults, self.n_dir)
        self.clip = _clipper(node.attr("clip", None))
        self.layout = node.attr("layout", 0)
        self.want_y = node.has_output(0)

    def run(self, cell, x, lens, states):
        """``cell(d, xw_t, state) -> (h, state)``; ``states``: per direction initial tuple."""
        if self.layout:
            x = x.transpose(0, 1)
        steps = x.shape[0]
        ys, finals = [], []
        valid_of = None
        if lens is not None:
            t_idx = torch.arange(steps, device=x.device).reshape(steps, 1)
            valid_of = (t_idx < lens.to(x.device).reshape(1, -1)).unsqueeze(-1)  # [T, B, 1]
        for d in range(self.n_dir):
            reverse = self.direction == "reverse" or d == 1
            state = states[d]
            out: list[torch.Tensor | None] = [None] * steps
            for t in range(steps - 1, -1, -1) if reverse else range(steps):
                h, new = cell(d, x[t], state)
                if valid_of is not None:
                    ok = valid_of[t]
                    new = tuple(torch.where(ok, n, s) for n, s in zip(new, state, strict=True))
                    h = torch.where(ok, h, torch.zeros_like(h))
                state = new
                out[t] = h
            ys.append(torch.stack(out) if steps else x.new_zeros((0, x.shape[1], self.hidden)))
            finals.append(state)
        y = torch.stack(ys, 1)  # [T, D, B, H]
        last = [torch.stack([f[k] for f in finals]) for k in range(len(finals[0]))]  # [D, B, H]
        if self.layout:
            y = y.permute(2, 0, 1, 3)
            last = [s.transpose(0, 1) for s in last]
        return y, last

    def initial(self, t, batch, like):
        if t is None:
            return like.new_zeros((self.n_dir, batch, self.hidden))
        return t.transpose(0, 1) if self.layout else t


def _split_bias(b, n_dir, size, like):
    if b is None:
        return like.new_zeros((n_dir, size)), like.new_zeros((n_dir, size))
    return b[:, :size], b[:, size:]


@op("LSTM", weights=(1, 2, 3, 7), config=(4,), fixed=(5, 6))
def _lstm(node: NodeSpec):
    rec = _Recurrent(node, 4, ("Sigmoid", "Tanh", "Tanh"))
    input_forget = bool(node.attr("input_forget", 0))
    H = rec.hidden

    def run(rt, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
        batch = x.shape[0 if rec.layout else 1]
        wb, rb = _split_bias(b, rec.n_dir, 4 * H, x)
        h0, c0 = rec.initial(h0, batch, x), rec.initial(c0, batch, x)
        states = [(h0[d], c0[d]) for d in range(rec.n_dir)]
        bias = wb + rb

        def cell(d, xt, state):
            h, c = state
            f, g, hact = rec.acts[d]
            gates = xt @ w[d].t() + h @ r[d].t() + bias[d]
            i, o, fg, cc = gates.split(H, -1)
            if p is not None:
                pi, po, pf = p[d].split(H)
                i, fg = i + pi * c, fg + pf * c
            i = f(rec.clip(i))
            fg = 1 - i if input_forget else f(rec.clip(fg))
            c_new = fg * c + i * g(rec.clip(cc))
            if p is not None:
                o = o + po * c_new
            h_new = f(rec.clip(o)) * hact(c_new)
            return h_new, (h_new, c_new)

        y, (yh, yc) = rec.run(cell, x, lens, states)
        return y, yh, yc

    return run


@op("GRU", weights=(1, 2, 3), config=(4,), fixed=(5,))
def _gru(node: NodeSpec):
    rec = _Recurrent(node, 3, ("Sigmoid", "Tanh"))
    before_reset = bool(node.attr("linear_before_reset", 0))
    H = rec.hidden

    def run(rt, x, w, r, b=None, lens=None, h0=None):
        batch = x.shape[0 if rec.layout else 1]
        wb, rb = _split_bias(b, rec.n_dir, 3 * H, x)
        h0 = rec.initial(h0, batch, x)
        states = [(h0[d],) for d in range(rec.n_dir)]

        def cell(d, xt, state):
            (h,) = state
            f, g = rec.acts[d]
            xz, xr, xh = (xt @ w[d].t() + wb[d]).split(H, -1)
            rz, rr, rh = r[d].split(H)
            bz, br, bh = rb[d].split(H)
            z = f(rec.clip(xz + h @ rz.t() + bz))
            rg = f(rec.clip(xr + h @ rr.t() + br))
            if before_reset:
                hh = g(rec.clip(xh + rg * (h @ rh.t() + bh)))
            else:
                hh = g(rec.clip(xh + (rg * h) @ rh.t() + bh))
            h_new = (1 - z) * hh + z * h
            return h_new, (h_new,)

        y, (yh,) = rec.run(cell, x, lens, states)
        return y, yh

    return run


@op("RNN", weights=(1, 2, 3), config=(4,), fixed=(5,))
def _rnn(node: NodeSpec):
    rec = _Recurrent(node, 1, ("Tanh",))
    H = rec.hidden

    def run(rt, x, w, r, b=None, lens=None, h0=None):
        batch = x.shape[0 if rec.layout else 1]
        wb, rb = _split_bias(b, rec.n_dir, H, x)
        h0 = rec.initial(h0, batch, x)
        states = [(h0[d],) for d in range(rec.n_dir)]

        def cell(d, xt, state):
            (h,) = state
            h_new = rec.acts[d][0](rec.clip(xt @ w[d].t() + h @ r[d].t() + wb[d] + rb[d]))
            return h_new, (h_new,)

        y, (yh,) = rec.run(cell, x, lens, states)
        return y, yh

    return run
