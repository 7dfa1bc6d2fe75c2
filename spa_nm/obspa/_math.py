"""The OBS algebra of OBSPA, numpy only (METHODS.md §1.7 items 1, 2 and 4): the damped inverse
Hessian, the per-unit removal errors and the compensated removal with its downdate."""

from __future__ import annotations

import numpy as np

from spa_nm.errors import SpaNmError


def _inverse_hessian(g: np.ndarray, damp: float) -> np.ndarray:
    """P = (2G + λI)⁻¹, λ = damp·mean(diag 2G); more damping if 2G + λI is not positive."""
    h = 2.0 * g
    lam = damp * float(np.mean(np.diag(h))) if h.size else 0.0
    if not lam > 0:
        lam = max(damp, 1e-12)
    eye = np.eye(h.shape[0])
    for _ in range(8):
        try:
            c = np.linalg.cholesky(h + lam * eye)
            ci = np.linalg.inv(c)
            return ci.T @ ci
        except np.linalg.LinAlgError:
            lam *= 10.0
    raise SpaNmError("OBSPA: the Hessian stays singular after damping")


def _unit_errors(w: np.ndarray, p: np.ndarray, cols: list[np.ndarray]) -> np.ndarray:
    """ε(Q) = Σ_r W[r,Q] (P_QQ)⁻¹ W[r,Q]ᵀ for each column set Q of ``cols``."""
    out = np.zeros(len(cols))
    if not cols:
        return out
    sizes = {c.size for c in cols}
    if len(sizes) == 1 and 0 not in sizes:
        q = np.stack(cols)  # [U, q]
        pqq = p[q[:, :, None], q[:, None, :]]  # [U, q, q]
        wq = np.moveaxis(w[:, q], 0, -1)  # [U, q, rows]
        sol = _solve(pqq, wq)
        return np.einsum("uqr,uqr->u", wq, sol)
    for k, c in enumerate(cols):
        if c.size:
            wq = w[:, c].T
            out[k] = float(np.sum(wq * _solve(p[np.ix_(c, c)], wq)))
    return out


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(a) @ b


def _remove(w: np.ndarray, p: np.ndarray, q: np.ndarray) -> None:
    """Remove columns ``q`` with OBS compensation, in place: W and the downdated P."""
    pq = p[q, :]
    coef = _solve(p[np.ix_(q, q)], pq)  # (P_QQ)⁻¹ P_{Q,:}
    w -= w[:, q] @ coef
    w[:, q] = 0.0
    p -= p[:, q] @ coef
    p[q, :] = 0.0
    p[:, q] = 0.0


def obs_remove(w: np.ndarray, g: np.ndarray, cols: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """W [rows, cols] with columns ``cols`` removed and the rest compensated for inputs of
    second moment ``g`` = XXᵀ/n (METHODS.md §1.7 item 4, all at once). Returns a new array."""
    w = np.array(w, dtype=np.float64)
    p = _inverse_hessian(np.asarray(g, dtype=np.float64), damp)
    _remove(w, p, np.asarray(cols, dtype=np.int64))
    return w


def _energy(w: np.ndarray, g: np.ndarray) -> float:
    """tr(W G Wᵀ) = ‖WX‖²/n."""
    return float(np.sum((w @ g) * w))
