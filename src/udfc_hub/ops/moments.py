"""Moments of BatchNorm outputs after a ReLU, and the corrections built on them (``method="udfc+"``).

The only statistics used are the BatchNorm's: the output of channel i is modelled as Gaussian with mean
``beta_i`` and standard deviation ``|gamma_i|`` (what BN was trained to produce), and two channels are
correlated like their BN-folded filters, ``rho_ij = cos(R_i, R_j)`` (an input with identity covariance).
From that, the means and covariances of ``relu(z)`` follow in closed form up to a 1-D quadrature
(``E[relu(z_i) relu(z_j)]`` integrates the closed-form conditional mean of the second ReLU over the first).
See docs/research-log.md, "udfc+".
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

__all__ = [
    "shrink_towards",
    "ReluMoments",
    "relu_mean",
    "relu_moments",
    "relu_variance",
    "filter_correlation",
    "depthwise_correlation",
    "solve_relu_scales",
    "solve_nonnegative_scales",
    "intercepts",
    "output_importance",
    "select_rebuildable",
    "variance_ratio",
    "expected_output_shift",
]

_SQRT2PI = math.sqrt(2 * math.pi)
# Gauss-Legendre nodes for the 1-D integral over the first channel's positive half; the integrand is smooth
# there (the kink of the ReLU sits at the interval's end); 32 nodes give about 1e-8 of the variance at worst.
_NODES, _WEIGHTS = (torch.tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(32))
# ``fast=True``: 24 nodes in float32 (about 1e-5 of the covariance at worst; 3x faster, for the wide depthwise groups)
_FAST_NODES, _FAST_WEIGHTS = (torch.tensor(a, dtype=torch.float32) for a in np.polynomial.legendre.leggauss(24))
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


def relu_mean(mean: torch.Tensor, std: torch.Tensor, cap: float | None = None) -> torch.Tensor:
    """``E[relu(z)]`` for ``z ~ N(mean, std^2)``: ``m Phi(m/s) + s phi(m/s)``; with ``cap``, ``E[min(relu(z),
    cap)] = E[relu(z)] - E[relu(z - cap)]`` (ReLU6: ``cap=6``).

    >>> relu_mean(torch.tensor([0.0]), torch.tensor([1.0])).item() == 1 / math.sqrt(2 * math.pi)
    True
    """
    m, s = mean.to(torch.float64), std.to(torch.float64).clamp(min=_STD_FLOOR)
    out = _relu_mean(m, s)
    return out if cap is None else out - _relu_mean(m - cap, s)


def _relu_mean(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    r = m / s
    return m * _cdf(r) + s * _pdf(r)


def relu_variance(mean: torch.Tensor, std: torch.Tensor, cap: float | None = None) -> torch.Tensor:
    """``Var(relu(z))`` (``Var(min(relu(z), cap))`` with ``cap``) for ``z ~ N(mean, std^2)``, in closed form: the
    diagonal of ``relu_moments`` without its quadrature (what ``output_importance`` reads).

    With ``z = m + s u``, ``a = -m / s`` and ``b = (cap - m) / s``: ``E[z^2; 0 < z < cap] = (m^2 + s^2) (Phi(b) -
    Phi(a)) + 2 m s (phi(a) - phi(b)) + s^2 (a phi(a) - b phi(b))``, plus ``cap^2 (1 - Phi(b))``.

    >>> round(relu_variance(torch.tensor([0.0]), torch.tensor([1.0])).item(), 6) == round(0.5 - 1 / (2 * math.pi), 6)
    True
    """
    m, s = mean.to(torch.float64), std.to(torch.float64).clamp(min=_STD_FLOOR)
    a = -m / s
    pa = _pdf(a)
    if cap is None:
        second = (m * m + s * s) * (1 - _cdf(a)) + m * s * pa
    else:
        b = (cap - m) / s
        pb, cb = _pdf(b), _cdf(b)
        second = (m * m + s * s) * (cb - _cdf(a)) + 2 * m * s * (pa - pb) + s * s * (a * pa - b * pb)
        second = second + cap * cap * (1 - cb)
    return (second - relu_mean(m, s, cap) ** 2).clamp(min=0)


# relu_moments is O(n^2) quadratures per group (a 1,152-channel depthwise group: about 0.4 s); a sweep or a
# benchmark compresses the same model many times with the same inputs, so results are kept, keyed by a digest of
# the inputs, up to _CACHE_BYTES of covariances (the least recently used go first). ``clear_cache`` empties it.
_CACHE: OrderedDict[str, ReluMoments] = OrderedDict()
_CACHE_BYTES = 256 << 20


def clear_cache() -> None:
    """Forget the kept ``relu_moments`` results (a timing benchmark measures each run from scratch)."""
    _CACHE.clear()


def _digest(*tensors: torch.Tensor, extra: tuple = ()) -> str:
    h = hashlib.blake2b(repr(extra).encode(), digest_size=20)
    for t in tensors:
        t = t.detach().to(torch.float64).contiguous().cpu()
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def relu_moments(
    mean: torch.Tensor,
    std: torch.Tensor,
    corr: torch.Tensor,
    chunk: int | None = None,
    cap: float | None = None,
    fast: bool = False,
) -> ReluMoments:
    """Mean and covariance of ``relu(z)`` (``min(relu(z), cap)`` with ``cap``) for ``z ~ N(mean, diag(std) corr
    diag(std))``.

    ``Cov(relu(z_i), relu(z_j)) = E_u[(relu(m_i + s_i u) - c_i) (E[relu(z_j) | u] - E[relu(z_j)])]`` with ``u``
    standard normal and ``z_j | u ~ N(m_j + s_j rho_ij u, s_j^2 (1 - rho_ij^2))``, whose ReLU mean is closed
    form; the outer expectation is a Gauss-Legendre sum over ``u > -m_i / s_i`` with ``c_i = 0``, or, for a
    channel that is on beyond 9 sigma (``relu(z_i) = z_i``), over ``|u| < 9`` with ``c_i = m_i``: both centred,
    so a large mean (a dead channel with gamma ~ 0 and beta > 0) costs no precision. With ``cap`` the sum stops
    where channel i saturates, ``u_c = (cap - m_i) / s_i``, and a second rule adds ``(cap - c_i)`` times the
    integral of the centred conditional mean over ``u > u_c`` (each rule integrates a smooth function: the kinks
    sit at the ends). ``chunk`` rows at a time (default: about 2^18 values per temporary, which stay in cache).
    ``fast``: the sums in float32 with 24 nodes, each pair of channels once (the upper triangle; the result is
    float64 either way).

    Results are kept for identical inputs (``clear_cache`` forgets them) and returned as copies.
    """
    key = _digest(mean, std, corr, extra=(chunk, cap, fast))
    hit = _CACHE.get(key)
    if hit is None:
        hit = _relu_moments(mean, std, corr, chunk, cap, fast)
        _CACHE[key] = hit
        while sum(r.cov.numel() * 8 for r in _CACHE.values()) > _CACHE_BYTES and len(_CACHE) > 1:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return ReluMoments(mean=hit.mean.clone(), cov=hit.cov.clone())


def _relu_moments(
    mean: torch.Tensor,
    std: torch.Tensor,
    corr: torch.Tensor,
    chunk: int | None = None,
    cap: float | None = None,
    fast: bool = False,
) -> ReluMoments:
    """``relu_moments`` without the kept results: the quadratures themselves."""
    m = mean.detach().to(torch.float64)  # parameters may arrive with autograd on: no graph of the sums
    s = std.detach().to(torch.float64).clamp(min=_STD_FLOOR)
    rho = corr.detach().to(torch.float64).clamp(-1, 1)
    n = len(m)
    rule = (_FAST_NODES, _FAST_WEIGHTS) if fast else (_NODES, _WEIGHTS)
    chunk = chunk or max(1, 2**18 // (max(n, 1) * len(rule[0])))
    low = (m.float(), s.float(), rho.float()) if fast else (m, s, rho)
    first = relu_mean(m, s, cap)
    cov = torch.empty(n, n, dtype=torch.float64)
    lo = -m / s  # z_i > 0 iff u > lo
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        always = lo[rows] <= -_TAIL
        a = torch.where(always, torch.full_like(lo[rows], -_TAIL), lo[rows].clamp(max=_TAIL))
        b = torch.maximum(a, torch.zeros_like(a)) + _TAIL
        if cap is not None:
            b = torch.minimum(b, torch.maximum(a, (cap - m[rows]) / s[rows]))
        zi = partial(_ramp, m=m[rows], s=s[rows], always=always)  # the centred value of channel i inside [a, b]
        cols = slice(start if fast else 0, n)
        block = _centred_integral(a, b, zi, low, rows, cols, first, cap, rule)
        if cap is not None:  # channel i saturated: relu(z_i) - c_i = cap - c_i for u > b
            top = cap - torch.where(always, m[rows], torch.zeros_like(m[rows]))
            hi = (cap - m[rows]) / s[rows]
            tail = _centred_integral(
                hi.clamp(min=-_TAIL), hi.clamp(min=0) + _TAIL, partial(_flat, value=top), low, rows, cols, first,
                cap, rule,
            )  # fmt: skip
            block = block + torch.where((hi < _TAIL)[:, None], tail, torch.zeros_like(tail))
        never = lo[rows] > _TAIL  # a channel that is (almost) never on
        cov[rows, cols] = torch.where(never[:, None], torch.zeros_like(block), block)
    if fast:
        upper = torch.triu(cov)
        return ReluMoments(mean=first, cov=upper + torch.triu(cov, 1).T)
    return ReluMoments(mean=first, cov=0.5 * (cov + cov.T))


def _ramp(u, m, s, always):
    return torch.where(always[:, None], s[:, None] * u, (m[:, None] + s[:, None] * u).clamp(min=0))


def _flat(u, value):
    return value[:, None].expand_as(u)


def _centred_integral(a, b, zi, low, rows, cols, first, cap, rule):
    """``int_a^b phi(u) zi(u) (E[relu(z_j) | u] - E[relu(z_j)]) du`` for each row's interval, columns ``cols``; the
    sum in the dtype of ``low = (m, s, rho)`` with the Gauss-Legendre ``rule = (nodes, weights)``."""
    m, s, rho, first = low[0][cols], low[1][cols], low[2][rows, cols], first[cols]
    nodes, weights = rule
    half = (b - a).to(m.dtype)[:, None] / 2
    u = a.to(m.dtype)[:, None] + half * (nodes[None, :] + 1)  # (r, Q)
    w = half * weights[None, :] * _pdf(u)
    cond_mean = m[None, :, None] + s[None, :, None] * rho[:, :, None] * u[:, None, :]  # (r, n, Q)
    cond_std = (s[None, :] * torch.sqrt((1 - rho * rho).clamp(min=0)))[:, :, None]
    safe = cond_std.clamp(min=_STD_FLOOR)
    sharp = cond_std > 1e-9
    cond = torch.where(sharp, _relu_mean(cond_mean, safe), cond_mean.clamp(min=0))
    if cap is not None:
        cond = cond - torch.where(sharp, _relu_mean(cond_mean - cap, safe), (cond_mean - cap).clamp(min=0))
    centred = cond - first.to(m.dtype)[None, :, None]
    return (w[:, None, :] * zi(u.to(torch.float64)).to(m.dtype)[:, None, :] * centred).sum(-1).to(torch.float64)


def shrink_towards(measured: torch.Tensor, prior: torch.Tensor, samples: int) -> torch.Tensor:
    """``measured`` (an ``(..., n, n)`` matrix estimated from ``samples`` vectors) shrunk towards ``prior`` by
    ``n / (n + samples)``: the measurement alone with many samples, mostly the prior with fewer samples than
    dimensions (where the measured matrix is singular). Refuses a measurement of another shape."""
    if measured.shape != prior.shape:
        raise ValueError(f"measured correlations of shape {tuple(measured.shape)} for {prior.shape[-1]} channels")
    shrink = prior.shape[-1] / (prior.shape[-1] + samples)
    return (1 - shrink) * measured.to(prior.dtype) + shrink * prior


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


def depthwise_correlation(cov_in: torch.Tensor, kernels: torch.Tensor, out_var: torch.Tensor) -> torch.Tensor:
    """Correlation of a depthwise conv's output channels from the covariance of its input channels.

    Each input channel at a kernel tap is ``sqrt(r_i) g_i + sqrt(1 - r_i) e_i(tap)``: a part shared by all taps
    and a part independent across taps, both correlated across channels as ``cov_in``. Then ``Cov(out_i, out_j)
    = cov_in[i, j] (sqrt(r_i r_j) S_i S_j + sqrt((1 - r_i)(1 - r_j)) <k_i, k_j>)`` with ``k_i`` the kernel and
    ``S_i`` its sum (positive semi-definite: Hadamard products of such matrices). ``r_i`` is read from the
    measured output variance (the BN's running variance) ``out_var_i = cov_in[i, i] ((1 - r_i) |k_i|^2 + r_i
    S_i^2)``, clamped to [0, 1]; 1/2 where the kernel cannot tell (``S_i^2 = |k_i|^2``).

    Same inputs, kernels that sum to zero and to two: correlated through the independent part only.

    >>> k = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    >>> depthwise_correlation(torch.ones(2, 2, dtype=torch.float64), k, torch.tensor([2.0, 2.0])).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    C = cov_in.to(torch.float64)
    k = kernels.reshape(kernels.shape[0], -1).to(torch.float64)
    S, sq = k.sum(1), (k * k).sum(1)
    base = torch.diagonal(C).clamp(min=0)
    ratio = torch.where(base > 0, out_var.to(torch.float64) / base.clamp(min=1e-300), sq)
    span = S * S - sq
    fit = torch.where(span.abs() > 1e-12 * sq.clamp(min=1e-300), (ratio - sq) / torch.where(span == 0, 1, span), 0.5)
    r = fit.clamp(0, 1)
    shared = r.sqrt() * S
    own = (1 - r).sqrt()[:, None] * k
    cov = C * (shared[:, None] * shared[None, :] + own @ own.T)
    d = torch.diagonal(cov).clamp(min=0).sqrt()
    corr = cov / torch.where(d > 0, d, torch.ones_like(d))[:, None] / torch.where(d > 0, d, torch.ones_like(d))[None]
    corr.fill_diagonal_(1.0)
    return corr.clamp(-1, 1)


def output_importance(variance: torch.Tensor, consumers: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """What each channel adds to its consumers' output variance: ``Var(a_j) sum_c |V_c[:, j]|^2`` (every kernel tap
    of a conv counted), the error its removal leaves once its mean is compensated (``criterion="moments"``).
    ``variance``: each channel's ``Var(a_j)`` (the diagonal of a ``ReluMoments.cov``, or ``relu_variance``).

    >>> output_importance(torch.tensor([1.0, 4.0]), [(torch.tensor([[3.0, 1.0]]), 1)]).tolist()
    [9.0, 4.0]
    """
    weight = torch.zeros(variance.shape[0], dtype=torch.float64)
    for w, dim in consumers:
        v = w.detach().movedim(dim, 0).to(torch.float64)
        weight += (v.reshape(v.shape[0], -1) ** 2).sum(1)
    return variance.to(torch.float64).clamp(min=0) * weight


def select_rebuildable(cov: torch.Tensor, consumers: list[tuple[torch.Tensor, int]], n_keep: int, ridge: float = 1e-6):
    """Kept and pruned channels (ascending) that minimise the consumers' error once the pruned channels are rebuilt
    from the kept ones by least squares: ``E|V (a - E[a | a_S])|^2 = tr(V Cov(a | a_S) V^T)`` (``V`` every consumer's
    columns, each kernel tap a row), by backward greedy elimination.

    Dropping channel c from the kept set S raises the error by ``|V r_c|^2 / P_cc`` with ``P = Cov_SS^{-1}`` and
    ``r_c = Cov_{:,S} P e_c``; both follow rank-one updates, so each step costs O(n^2) (``P`` is regularised by
    ``ridge`` times the mean variance). Exact for one removal and for uncorrelated channels (then it keeps the
    largest ``Var(a_j) |V_j|^2``); greedy otherwise.
    """
    C = cov.to(torch.float64)
    n = C.shape[0]
    if not 0 < n_keep <= n:
        raise ValueError(f"n_keep must be in 1..{n}, got {n_keep}")
    rows = [w.detach().movedim(dim, 0).to(torch.float64).reshape(w.shape[dim], -1).T for w, dim in consumers]
    VR = torch.cat(rows) if rows else torch.zeros(0, n, dtype=torch.float64)  # V Cov_{:,S} P: V while S is all
    scale = float(torch.diagonal(C).clamp(min=0).mean()) or 1.0
    P = torch.linalg.inv(C + ridge * scale * torch.eye(n, dtype=torch.float64))
    kept = torch.ones(n, dtype=torch.bool)
    for _ in range(n - n_keep):
        gains = (VR * VR).sum(0) / torch.diagonal(P).clamp(min=1e-300)
        c = int(torch.where(kept, gains, torch.full_like(gains, float("inf"))).argmin())
        p = P[:, c].clone()
        q = p / p[c]
        VR.addr_(VR[:, c].clone(), q, alpha=-1)
        P.addr_(p, q, alpha=-1)
        kept[c] = False
        VR[:, c] = 0
        P[c, c] = 1.0  # a removed channel: keeps the diagonal finite, its row and column are zero
    idx = torch.arange(n)
    return idx[kept], idx[~kept]


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
