"""Moments of BatchNorm outputs after a ReLU, and the corrections built on them (``method="udfc+"``).

The only statistics used are the BatchNorm's: the output of channel i is modelled as Gaussian with mean
``beta_i`` and standard deviation ``|gamma_i|`` (what BN was trained to produce), and two channels are
correlated like their BN-folded filters, ``rho_ij = cos(R_i, R_j)`` (an input with identity covariance).
From that, the means and covariances of ``relu(z)`` follow in closed form up to a 1-D quadrature
(``E[relu(z_i) relu(z_j)]`` integrates the closed-form conditional mean of the second ReLU over the first).
See docs/method.md, "udfc+".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ReluMoments",
    "relu_mean",
    "relu_moments",
    "filter_correlation",
    "solve_relu_scales",
    "solve_nonnegative_scales",
    "intercepts",
    "variance_ratio",
    "expected_output_shift",
]

_SQRT2PI = math.sqrt(2 * math.pi)
# Gauss-Legendre nodes for the 1-D integral over the first channel's positive half; the integrand is smooth
# there (the kink of the ReLU sits at the interval's end); 32 nodes give about 1e-8 of the variance at worst.
_NODES, _WEIGHTS = (torch.tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(32))
_TAIL = 9.0  # integrate up to 9 standard deviations past max(0, -mean/std)
_STD_FLOOR = 1e-12


@dataclass(frozen=True)
class ReluMoments:
    """``mean[i] = E[relu(z_i)]`` and ``cov[i, j] = Cov(relu(z_i), relu(z_j))`` (float64)."""

    mean: torch.Tensor
    cov: torch.Tensor


def _pdf(u: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * u * u) / _SQRT2PI


def _cdf(u: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(u / math.sqrt(2)))


def relu_mean(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``E[relu(z)]`` for ``z ~ N(mean, std^2)``: ``m Phi(m/s) + s phi(m/s)``.

    >>> relu_mean(torch.tensor([0.0]), torch.tensor([1.0])).item() == 1 / math.sqrt(2 * math.pi)
    True
    """
    m, s = mean.to(torch.float64), std.to(torch.float64).clamp(min=_STD_FLOOR)
    r = m / s
    return m * _cdf(r) + s * _pdf(r)


def relu_moments(mean: torch.Tensor, std: torch.Tensor, corr: torch.Tensor, chunk: int = 64) -> ReluMoments:
    """Mean and covariance of ``relu(z)`` for ``z ~ N(mean, diag(std) corr diag(std))``.

    ``Cov(relu(z_i), relu(z_j)) = E_u[(relu(m_i + s_i u) - c_i) (E[relu(z_j) | u] - E[relu(z_j)])]`` with ``u``
    standard normal and ``z_j | u ~ N(m_j + s_j rho_ij u, s_j^2 (1 - rho_ij^2))``, whose ReLU mean is closed
    form; the outer expectation is a Gauss-Legendre sum over ``u > -m_i / s_i`` with ``c_i = 0``, or, for a
    channel that is on beyond 9 sigma (``relu(z_i) = z_i``), over ``|u| < 9`` with ``c_i = m_i``: both centred,
    so a large mean (a dead channel with gamma ~ 0 and beta > 0) costs no precision. ``chunk`` rows at a time.
    """
    m = mean.to(torch.float64)
    s = std.to(torch.float64).clamp(min=_STD_FLOOR)
    rho = corr.to(torch.float64).clamp(-1, 1)
    n = len(m)
    first = relu_mean(m, s)
    cov = torch.empty(n, n, dtype=torch.float64)
    lo = -m / s  # z_i > 0 iff u > lo
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        always = lo[rows] <= -_TAIL
        a = torch.where(always, torch.full_like(lo[rows], -_TAIL), lo[rows].clamp(max=_TAIL))
        b = torch.maximum(a, torch.zeros_like(a)) + _TAIL
        half = (b - a)[:, None] / 2
        u = a[:, None] + half * (_NODES[None, :] + 1)  # (r, Q)
        w = half * _WEIGHTS[None, :] * _pdf(u)
        zi = torch.where(always[:, None], s[rows, None] * u, (m[rows, None] + s[rows, None] * u).clamp(min=0))
        zi = torch.where(lo[rows, None] > _TAIL, torch.zeros_like(zi), zi)  # a channel that is (almost) never on
        r = rho[rows]  # (r, n)
        cond_mean = m[None, :, None] + s[None, :, None] * r[:, :, None] * u[:, None, :]  # (r, n, Q)
        cond_std = (s[None, :] * torch.sqrt((1 - r * r).clamp(min=0)))[:, :, None]
        safe = cond_std.clamp(min=_STD_FLOOR)
        q = cond_mean / safe
        cond_relu = torch.where(cond_std > 1e-9, cond_mean * _cdf(q) + safe * _pdf(q), cond_mean.clamp(min=0))
        cov[rows] = (w[:, None, :] * zi[:, None, :] * (cond_relu - first[None, :, None])).sum(-1)
    return ReluMoments(mean=first, cov=0.5 * (cov + cov.T))


def filter_correlation(R: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the rows of ``R`` (BN-folded filters, so the sign of gamma is included).

    A zero row is uncorrelated with everything and has unit self-correlation.
    """
    w = R.reshape(R.shape[0], -1).to(torch.float64)
    norms = w.norm(dim=1)
    unit = w / torch.where(norms > 0, norms, torch.ones_like(norms))[:, None]
    corr = unit @ unit.T
    corr.fill_diagonal_(1.0)
    return corr


def solve_relu_scales(
    moments: ReluMoments, keep: torch.Tensor, pruned: torch.Tensor, ridge: float = 1e-3
) -> torch.Tensor:
    """Least squares in activation space: ``relu(z_j) ~ sum_i s_i relu(z_i) + b_j`` for every pruned j.

    Normal equations ``Cov_SS s = Cov_Sj`` (the intercept is :func:`intercepts`), with a ridge of ``ridge``
    times the mean variance of the kept channels. Returns scales of shape ``(|P|, |S|)``, float64.
    """
    C = moments.cov
    A = C[keep][:, keep]
    B = C[keep][:, pruned]
    eye = torch.eye(len(keep), dtype=torch.float64)
    scale = float(A.diagonal().mean()) if len(keep) else 0.0
    A = A + max(ridge * scale, 1e-300) * eye
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0 or not torch.isfinite(L).all():
        return torch.linalg.lstsq(A, B, driver="gelsd").solution.T.contiguous()
    return torch.cholesky_solve(B, L).T.contiguous()


def solve_nonnegative_scales(
    gram: torch.Tensor, rhs: torch.Tensor, iterations: int = 500, tol: float = 1e-10
) -> torch.Tensor:
    """``argmin_{s >= 0} s^T G s / 2 - rhs^T s`` for every column of ``rhs`` (projected gradient, FISTA steps).

    ``gram`` is ``(n, n)`` positive semi-definite, ``rhs`` ``(n, k)``; returns ``(k, n)``.

    >>> G = torch.eye(2, dtype=torch.float64); b = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    >>> solve_nonnegative_scales(G, b).tolist()
    [[1.0, 0.0]]
    """
    G, B = gram.to(torch.float64), rhs.to(torch.float64)
    if G.numel() == 0 or B.numel() == 0:
        return torch.zeros(B.shape[1], G.shape[0], dtype=torch.float64)
    lipschitz = float(torch.linalg.eigvalsh(G).max().clamp(min=1e-300))
    x = torch.zeros_like(B)
    y, step = x, 1.0
    for _ in range(iterations):
        x_new = (y - (G @ y - B) / lipschitz).clamp(min=0)
        step_new = (1 + math.sqrt(1 + 4 * step * step)) / 2
        y = x_new + ((step - 1) / step_new) * (x_new - x)
        done = (x_new - x).abs().max() <= tol * x_new.abs().max().clamp(min=1e-300)
        x, step = x_new, step_new
        if done:
            break
    return x.T.contiguous()


def intercepts(mean: torch.Tensor, keep: torch.Tensor, pruned: torch.Tensor, scales: torch.Tensor | None):
    """``b_j = E[a_j] - sum_i s_ji E[a_i]``: the expected part of pruned channel j that the scales miss."""
    m = mean.to(torch.float64)
    if scales is None:
        return m[pruned].clone()
    return m[pruned] - scales.to(torch.float64) @ m[keep]


def variance_ratio(
    consumer: torch.Tensor, merged: torch.Tensor, cov: torch.Tensor, keep: torch.Tensor, dim: int = 1
) -> torch.Tensor:
    """Predicted ``Var(new output) / Var(old output)`` of each consumer output channel.

    ``consumer`` is the weight before the merge (all input channels), ``merged`` after it (kept ones only);
    each kernel tap is treated as an independent draw of the input (no spatial correlation). Clamped to
    [0.05, 2] so that a badly modelled channel cannot blow up. Computed in float32 (a ratio of two sums of
    squares; the speed matters for wide 3x3 consumers).
    """
    cov = cov.to(torch.float32)
    v = consumer.detach().movedim(dim, -1).to(torch.float32)
    v = v.reshape(-1, v.shape[-1]) if v.ndim == 2 else v.reshape(v.shape[0], -1, v.shape[-1])
    vm = merged.detach().movedim(dim, -1).to(torch.float32)
    vm = vm.reshape(-1, vm.shape[-1]) if vm.ndim == 2 else vm.reshape(vm.shape[0], -1, vm.shape[-1])
    if v.ndim == 2:  # linear: (out, in)
        old = ((v @ cov) * v).sum(-1)
        new = ((vm @ cov[keep][:, keep]) * vm).sum(-1)
    else:  # conv: (out, taps, in)
        old = ((v @ cov) * v).sum((-1, -2))
        new = ((vm @ cov[keep][:, keep]) * vm).sum((-1, -2))
    ratio = torch.where(old > 0, new / old.clamp(min=1e-30), torch.ones_like(old))
    return ratio.clamp(0.05, 2.0).to(torch.float64)


def expected_output_shift(delta_weight: torch.Tensor, input_mean: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``E[delta_W * x]`` per output channel, averaged over output positions.

    ``input_mean`` is ``(C,)`` for a linear layer, or ``(C, kh, kw)`` for a conv: the mean input seen by each
    kernel tap, averaged over output positions (so zero padding at the borders is accounted for).
    """
    dw = delta_weight.to(torch.float64)
    mu = input_mean.to(torch.float64)
    if dw.ndim == 2:
        return dw @ mu
    out, per_group = dw.shape[0], dw.shape[1]
    dw = dw.reshape(groups, out // groups, per_group, -1)
    mu = mu.reshape(groups, per_group, -1)
    return torch.einsum("goct,gct->go", dw, mu).reshape(out)
