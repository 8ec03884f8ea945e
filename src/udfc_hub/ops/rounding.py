"""Rounding with error feedback: choose each weight's grid value knowing the layer's input statistics.

Nearest rounding minimises each weight's own error. What the network sees is the layer's output error
``(W~ - W) x``; for an input with second-moment (or covariance) matrix H, its expected square per output row r is

    e_r = (w~_r - w_r) H (w~_r - w_r)^T

``round_with_feedback`` minimises this with the column-by-column scheme of OBQ / GPTQ (Frantar et al. 2022): the
inputs are visited in order of decreasing ``H_qq``; input q's weights are rounded to the grid, and the error they
make is spread over the not-yet-rounded inputs by the least-squares update that keeps the output error smallest,
``w_{>q} -= (w_q - w~_q) / U_qq * U_{q, >q}`` with ``U`` the upper Cholesky factor of ``H^-1``. Each weight is thus
the best grid value given those already rounded and the best continuous values of the rest. udfc-hub has no data:
H comes from a BN-matched probe pass of natural-image-like noise (``probe.tap_covariance``). The scheme is greedy,
so each row keeps whichever of the feedback rounding and nearest rounding leaves the smaller ``e_r``: never worse
than nearest on its own objective.

Grouped convolutions are handled as G independent problems: ``weight`` is ``(G, rows, d)``, ``hessian``
``(G, d, d)`` (a depthwise conv: one row and a 9 x 9 H per channel).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .moments import shrink_towards
from .quantize import QuantizedTensor, grid_levels

__all__ = [
    "DAMPING",
    "MAX_INPUTS",
    "Rounded",
    "feedback_quantize",
    "round_with_feedback",
    "rounding_error",
    "shrunk_covariance",
]

DAMPING = 0.01  # ridge added to H, as a fraction of its mean diagonal (GPTQ's choice)
# inputs per output row above which a layer keeps nearest rounding: H alone would take d^2 floats (VGG's first
# classifier layer reads 25,088), and the probe measures it on a handful of samples (8 images after flattening)
MAX_INPUTS = 8192
_BLOCK = 128  # columns updated together before the rest of the row is corrected in one matrix product


def rounding_error(delta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """``e_r = delta_r H delta_r^T`` per row: ``delta`` ``(G, rows, d)``, ``hessian`` ``(G, d, d)`` -> ``(G, rows)``."""
    h = hessian.to(delta.dtype)
    return ((delta @ h) * delta).sum(-1)


class Rounded(NamedTuple):
    """``round_with_feedback``'s result: the codes and, per row ``(G, rows)``, the ``rounding_error`` of nearest
    rounding and of the codes."""

    codes: torch.Tensor
    nearest_error: torch.Tensor
    error: torch.Tensor


def shrunk_covariance(cov: torch.Tensor, samples: int) -> torch.Tensor:
    """A ``(G, d, d)`` covariance measured on ``samples`` vectors, shrunk towards its diagonal by ``d / (d +
    samples)``: with fewer samples than inputs the measured matrix is singular, and the rounding would push its
    error into directions the probe never saw (a diagonal H makes the feedback rounding nearest rounding)."""
    return shrink_towards(cov, torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2)), samples)


def _codes(w: torch.Tensor, scale: torch.Tensor, levels: int) -> torch.Tensor:
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round((w / (2 * safe) + 0.5) * levels).clamp_(0, levels)


def _values(codes: torch.Tensor, scale: torch.Tensor, levels: int) -> torch.Tensor:
    return scale * (codes * (2.0 / levels) - 1.0)


@torch.no_grad()
def round_with_feedback(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scale: torch.Tensor,
    bits: int,
    grid: str = "dorefa",
    *,
    damping: float = DAMPING,
    order: bool = True,
    fallback: bool = True,
) -> Rounded:
    """Grid codes (float, ``weight``'s shape) that make ``rounding_error`` small: the feedback rounding of each
    row, or nearest rounding where that is better (float32 arithmetic, as GPTQ).

    Args:
        weight: ``(G, rows, d)`` float weights.
        hessian: ``(G, d, d)`` symmetric positive semi-definite input statistics (second moments or covariance).
        scale: ``M`` per row, broadcastable to ``(G, rows, 1)`` (the grid is fixed: ``M = max|W|`` of the original
            row or tensor, as ``quantize_dorefa`` sets it).
        bits, grid: the quantizer (``grid_levels``).
        damping: ridge ``damping * mean(diag H)`` added before inverting (also makes a singular H usable).
        order: visit inputs by decreasing ``H_qq`` (False: in index order).
        fallback: keep nearest rounding for the rows where it leaves the smaller error (False: feedback everywhere).
    """
    levels = grid_levels(bits, grid)
    w0 = weight.to(torch.float32)
    g, rows, d = w0.shape
    m = scale.to(torch.float32).expand(g, rows, 1)
    nearest = _codes(w0, m, levels)
    h = hessian.to(torch.float32)
    diag = torch.diagonal(h, dim1=1, dim2=2)
    ridge = damping * diag.mean(1).clamp(min=1e-30)
    perm = torch.argsort(diag, dim=1, descending=True) if order else torch.arange(d).expand(g, d)
    hp = torch.gather(torch.gather(h, 1, perm[:, :, None].expand(g, d, d)), 2, perm[:, None, :].expand(g, d, d))
    hp = hp + torch.diag_embed(ridge[:, None].expand(g, d))
    w = torch.gather(w0, 2, perm[:, None, :].expand(g, rows, d)).clone()
    u = _inverse_cholesky_upper(hp)
    codes = torch.empty_like(w)
    # the grid of each row as q = round(w a + L / 2) clamped to [0, L], value q step - M (quantize_dorefa's formula)
    safe = torch.where(m > 0, m, torch.ones_like(m))[:, :, 0]
    a, step, mm = levels / (2 * safe), m[:, :, 0] * (2.0 / levels), m[:, :, 0]
    inv_diag = 1.0 / torch.diagonal(u, dim1=1, dim2=2)  # (g, d)
    for start in range(0, d, _BLOCK):
        end = min(start + _BLOCK, d)
        err = torch.empty(g, rows, end - start, dtype=w.dtype)
        for q in range(start, end):
            wq = w[:, :, q]
            c = torch.round(wq * a + 0.5 * levels).clamp_(0, levels)
            codes[:, :, q] = c
            e = torch.mul(wq - (c * step - mm), inv_diag[:, q, None])
            err[:, :, q - start] = e
            w[:, :, q + 1 : end].sub_(e[:, :, None] * u[:, q, None, q + 1 : end])
        if end < d:
            w[:, :, end:] -= err @ u[:, start:end, end:]
    fed = torch.empty_like(codes).scatter_(2, perm[:, None, :].expand(g, rows, d), codes)
    near_err = rounding_error(_values(nearest, m, levels) - w0, h)
    fed_err = rounding_error(_values(fed, m, levels) - w0, h)
    better = fed_err < near_err if fallback else torch.ones_like(near_err, dtype=torch.bool)
    return Rounded(torch.where(better[:, :, None], fed, nearest), near_err, torch.where(better, fed_err, near_err))


def _inverse_cholesky_upper(h: torch.Tensor) -> torch.Tensor:
    """Upper ``U`` with ``U^T U = h^-1`` for a batch of SPD matrices (ridge grown if a factorisation fails).

    With J the exchange matrix and ``J h J = L L^T``, ``U = J L^-1 J``: one Cholesky and one triangular solve."""
    flipped = h.flip(-1, -2)
    eye = torch.eye(h.shape[-1], dtype=h.dtype).expand_as(h)
    scale = torch.diagonal(h, dim1=1, dim2=2).mean(1).clamp(min=1e-30)[:, None, None]
    extra = 0.0
    for _ in range(8):
        low, info = torch.linalg.cholesky_ex(flipped + extra * scale * eye)
        if not bool(info.any()):
            return torch.linalg.solve_triangular(low, eye, upper=False).flip(-1, -2)
        extra = 1e-6 if extra == 0 else extra * 100
    raise ValueError("input statistics are not positive definite even with a large ridge")


@torch.no_grad()
def feedback_quantize(
    qt: QuantizedTensor, weight: torch.Tensor, hessian: torch.Tensor, groups: int = 1
) -> tuple[QuantizedTensor, float, float]:
    """``qt`` (nearest rounding of ``weight`` by ``quantize_dorefa``) with its codes chosen by
    ``round_with_feedback`` under ``hessian`` ``(groups, d, d)``, d the inputs of one output row; same scale.
    Returns the new tensor and the summed ``rounding_error`` of nearest rounding and of the result."""
    out = weight.shape[0]
    w = weight.detach().cpu().reshape(groups, out // groups, -1)  # the statistics live on the CPU
    per_tensor = qt.scale.numel() == 1
    scale = qt.scale.cpu().reshape(1, 1, 1) if per_tensor else qt.scale.cpu().reshape(groups, out // groups, 1)
    r = round_with_feedback(w, hessian.cpu(), scale, qt.bits, qt.grid)
    codes = r.codes.reshape(weight.shape).to(device=qt.codes.device, dtype=torch.uint8)
    return QuantizedTensor(codes, qt.scale, qt.bits, qt.grid), float(r.nearest_error.sum()), float(r.error.sum())
