"""OBSPA: group-OBS channel pruning with compensation, without calibration data (METHODS.md §1.7).

**This is OUR reconstruction [R]/[D], not the paper's verified algorithm.** The SPA paper names
OBSPA (train → prune, no fine-tuning, no calibration data) but its derivation is not public;
what follows is group-OBS (Hassibi & Stork 1993; OBC, Frantar & Alistarh 2022) over the coupled
channels of a group, as specified in §1.7.

For every consumer k of a group (a Conv, grouped Conv, Gemm or MatMul that reads the group's
channels through the columns of a constant weight) let W ∈ ℝ^{rows×cols} be its weight in
im2col column order (input channel major, kernel taps inner) and X ∈ ℝ^{cols×n} its inputs:

1. G = XXᵀ/n; with a bias, a constant-1 row is appended to X, so the bias is a column that is
   never removed and that the update re-fits (this replaces the κ fold of §1.4). A consumer that
   can carry a bias but has none (Conv, Gemm) gets one when the update moves it [D].
   H = 2G + λI, λ = damp·mean(diag 2G) (damp = 0.01); P = H⁻¹.
2. Removing unit c, Q = cols_k(c) (one column for Gemm/MatMul, kh·kw for a Conv, H·W after a
   Flatten): ε_k(c) = Σ_r W[r,Q] (P_QQ)⁻¹ W[r,Q]ᵀ (OBS's ½ dropped).
3. ε_G(c) = Σ_k ε_k(c) / tr(W_k G_k W_kᵀ): relative to the layer's output energy ‖W_k X_k‖²/n,
   so layers are commensurate; these are the scores (`SELF_NORMALIZED`: global ranking uses them
   as they are). Producer rows are not compensated: their outputs disappear.
4. Compensation, greedily in at most `MAX_STEPS` batches per group, re-scoring the remaining
   units before each batch (OBC): W ← W − W[:,Q] (P_QQ)⁻¹ P_{Q,:}; W[:,Q] = 0 exactly;
   P ← P − P_{:,Q} (P_QQ)⁻¹ P_{Q,:}. Surgery then deletes the zero columns.

G without data (§1.7 item 5, ``hessian``):
- ``synthetic`` (default, measured: see `DEFAULT_HESSIAN`): random N(0, 1) inputs (random
  token ids for integer inputs) through the dense model on onnxruntime; consumer inputs are read
  by exposing them as graph outputs;
- ``bn``: moments of a BatchNormalization output (z_c ~ N(β_c, γ_c²)), through an optional
  Relu or Clip (clipped-Gaussian moments; Relu gives m = βΨ(α) + |γ|ψ(α),
  s = (β² + γ²)Ψ(α) + β|γ|ψ(α), α = β/|γ|), channels and taps independent:
  G = diag(s − m²) ⊗ I_taps + m̃m̃ᵀ. A consumer not fed that way uses ``synthetic``, and the
  report says so per layer;
- ``data``: a calibration ``.npz`` (arrays by input name, or ``x_train`` / ``x_val`` / a single
  array) through the dense model: not data-free, an upper bound;
- ``identity``: H = I, no bias row, no normalisation: the test oracle of §1.7 item 6 (it selects
  exactly what ``l2`` on consumer columns selects, and only zeroes the removed columns).

Design note: every consumer's column geometry (im2col for Conv, transposes and α/β for Gemm) is
op knowledge that the rules' facts do not describe, so it lives here, in one small table of
per-op adapters (`_ADAPTERS`), rather than in `spa_nm.rules` (a deviation from STYLE.md §2,
kept local so that adding an op touches one function). A consumer without an adapter is not
compensated; a group without any compensable consumer falls back to ``l2`` and says so.
Each layer is compensated on the dense model's inputs (layer-wise OBS, not sequential OBC).

Layout: `_options` (`ObspaOptions`, `HESSIANS`, `DEFAULT_HESSIAN`, `MAX_STEPS`), `_math` (the
OBS algebra: inverse Hessian, unit errors, removal), `_layers` (consumer adapters: Conv via
im2col, Gemm, MatMul), `_hessian` (BN and clipped moments, synthetic / data capture on
onnxruntime), `_scorer` (per-layer state and `ObspaScorer`).
"""

from __future__ import annotations

import logging

from spa_nm.obspa._hessian import clipped_moments as clipped_moments
from spa_nm.obspa._layers import consumer_layers as consumer_layers
from spa_nm.obspa._math import obs_remove
from spa_nm.obspa._options import DEFAULT_HESSIAN, HESSIANS, MAX_STEPS, ObspaOptions
from spa_nm.obspa._scorer import ObspaScorer

__all__ = [
    "DEFAULT_HESSIAN",
    "HESSIANS",
    "MAX_STEPS",
    "ObspaOptions",
    "ObspaScorer",
    "obs_remove",
]

log = logging.getLogger(__name__)
