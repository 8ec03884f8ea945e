"""Channel pruning math as pure tensor functions: ranking, UDFC's closed-form scales, Neuron Merging, and the
merge of pruned channels into the consumer layer.

Notation (see docs/research-log.md): a producer layer has filters ``w_i`` (rows of ``weight`` flattened), followed
by BatchNorm (gamma, beta, mean, var, eps). ``R_i = gamma_i / sigma_i * w_i`` and ``K_i = beta_i - gamma_i mu_i /
sigma_i`` are the BN-folded filter and bias. A scale matrix ``scales`` has one row per pruned channel j and one
column per kept channel i: channel j's output is approximated by ``sum_i scales[j, i] * out_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "CRITERIA",
    "NORM_CRITERIA",
    "MOMENT_CRITERIA",
    "NM_VARIANTS",
    "FoldedLayer",
    "PruneSolution",
    "fold_batchnorm",
    "channel_norms",
    "rank_channels",
    "keep_largest",
    "solve_prune_scales",
    "prune_loss",
    "neuron_merging_scales",
    "merge_into_consumer",
]

NORM_CRITERIA = ("l1", "l2")
# from udfc+'s moment model instead of a filter norm: "moments" keeps the channels that add the most variance to
# their consumers (``output_importance``), "rebuild" those that leave the least error once the others are rebuilt
# from them (``select_rebuildable``)
MOMENT_CRITERIA = ("moments", "rebuild")
CRITERIA = NORM_CRITERIA + MOMENT_CRITERIA
NM_VARIANTS = ("code", "derived")
# |gamma| is clamped to at least this in c_j = sigma_j / gamma_j: real checkpoints have dead channels.
GAMMA_EPS = 1e-8
_RIDGES = (1e-13, 1e-10, 1e-7, 1e-4)


@dataclass(frozen=True)
class FoldedLayer:
    """A producer layer's BN-folded filters ``R`` (N x D), biases ``K`` (N,) and filter weights ``c`` (N,).

    ``c_j = sigma_j / gamma_j`` weighs channel j's filter term in the pruning loss; 1 for a layer without BN.
    """

    R: torch.Tensor
    K: torch.Tensor
    c: torch.Tensor


@dataclass(frozen=True)
class PruneSolution:
    scales: torch.Tensor  # (|P|, |S|), float64
    solver: str  # how the system was solved, e.g. "cholesky" or "cholesky+ridge1e-07" or "lstsq"


def fold_batchnorm(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> FoldedLayer:
    """Fold a following BatchNorm into a layer's filters, in float64.

    Without BN (``gamma is None``): ``R = w``, ``K = bias`` (0 if none), ``c = 1``.

    >>> f = fold_batchnorm(torch.ones(2, 3), gamma=torch.tensor([2.0, 1.0]), beta=torch.zeros(2),
    ...                    mean=torch.zeros(2), var=torch.full((2,), 1.0), eps=0.0)
    >>> f.R[:, 0].tolist(), f.c.tolist()
    ([2.0, 1.0], [0.5, 1.0])
    """
    w = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    n = w.shape[0]
    b = torch.zeros(n, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64)
    if gamma is None:
        return FoldedLayer(R=w, K=b, c=torch.ones(n, dtype=torch.float64))
    g = gamma.detach().to(torch.float64)
    sigma = torch.sqrt(var.detach().to(torch.float64) + eps)
    gain = g / sigma
    R = gain[:, None] * w
    K = beta.detach().to(torch.float64) + gain * (b - mean.detach().to(torch.float64))
    g_safe = torch.where(g >= 0, g.clamp(min=GAMMA_EPS), g.clamp(max=-GAMMA_EPS))
    return FoldedLayer(R=R, K=K, c=sigma / g_safe)


def channel_norms(weight: torch.Tensor, criterion: str = "l2") -> torch.Tensor:
    """The l1 or l2 norm of each output channel's filter (float64), the ranking of ``rank_channels``.

    >>> channel_norms(torch.tensor([[3.0, -4.0], [1.0, 0.0]]), "l1").tolist()
    [7.0, 1.0]
    """
    flat = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    return flat.abs().sum(dim=1) if criterion == "l1" else flat.norm(dim=1)


def rank_channels(weight: torch.Tensor, n_keep: int, criterion: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """Split output channels into (kept, pruned) index tensors, both sorted ascending.

    Keeps the ``n_keep`` filters of largest l1 or l2 norm; ties go to the lower index.

    >>> rank_channels(torch.tensor([[3.0], [1.0], [2.0]]), 2)
    (tensor([0, 2]), tensor([1]))
    """
    if criterion not in NORM_CRITERIA:
        raise ValueError(f"criterion must be one of {NORM_CRITERIA}, got {criterion!r}")
    return keep_largest(channel_norms(weight, criterion), n_keep)


def keep_largest(scores: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, pruned) indices, both ascending: the ``n_keep`` largest scores stay; ties go to the lower index."""
    n = scores.shape[0]
    if not 0 < n_keep <= n:
        raise ValueError(f"n_keep must be in 1..{n}, got {n_keep}")
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:n_keep]).values, torch.sort(order[n_keep:]).values


def solve_prune_scales(
    layer: FoldedLayer, keep: torch.Tensor, pruned: torch.Tensor, alpha1: float = 0.01
) -> PruneSolution:
    """UDFC's closed-form pruning scales for every pruned channel of a layer at once (paper eq. 12, 19, 20).

    For each pruned j it minimises ``c_j^2 ||R_j - R_S s||^2 + alpha1 (K_j - K_S s)^2``, whose normal equations
    are ``(G + a_j k k^T) s = R_S^T R_j + a_j K_j k`` with ``G = R_S^T R_S``, ``k = K_S``, ``a_j = alpha1 / c_j^2``.

    One Gram matrix per layer: ``M = G + a_ref k k^T`` (a_ref the median a_j) is built, Jacobi-equilibrated to a
    unit diagonal and Cholesky-factorised once in float64 (a tiny ridge, grown if the factorisation fails);
    every j is then a rank-one correction of M, solved for all j together by Sherman-Morrison. Channels whose
    normal equations that fast path does not satisfy (near-singular systems, e.g. dead BN channels) are solved
    again one by one with their own equilibration.
    """
    R, K, c = layer.R, layer.K, layer.c
    RS, RP = R[keep], R[pruned]
    k, kP = K[keep], K[pruned]
    a = alpha1 / c[pruned] ** 2
    G = RS @ RS.T
    B = RS @ RP.T
    a_ref = a.median() if len(a) else torch.tensor(0.0, dtype=torch.float64)
    d = _equilibrator(torch.diagonal(G) + a_ref * k**2)
    Ge = d[:, None] * G * d[None, :]
    ke = d * k
    rhs = d[:, None] * B + ke[:, None] * (a * kP)[None, :]  # equilibrated right-hand sides, one column per j
    L, ridge = _cholesky(Ge + a_ref * ke[:, None] * ke[None, :])
    Y = torch.cholesky_solve(torch.cat([rhs, ke[:, None]], dim=1), L)
    Yr, z = Y[:, :-1], Y[:, -1]
    delta = a - a_ref
    U = Yr - z[:, None] * (delta * (ke @ Yr) / (1 + delta * (ke @ z)))[None, :]
    scales = (d[:, None] * U).T
    solver = "cholesky" if ridge == _RIDGES[0] else f"cholesky+ridge{ridge:.0e}"
    resid = (Ge @ U + ke[:, None] * (a * (ke @ U))[None, :] - rhs).norm(dim=0) / rhs.norm(dim=0).clamp(min=1e-300)
    bad = ~(resid < 1e-8)  # also catches NaN
    if bad.any():
        scales[bad] = _solve_one_by_one(G, B[:, bad], k, kP[bad], a[bad])
        solver += f"; {int(bad.sum())} refined"
    return PruneSolution(scales=scales.contiguous(), solver=solver)


def _equilibrator(diag: torch.Tensor) -> torch.Tensor:
    """Jacobi scaling ``1 / sqrt(diag)``; 1 where the diagonal is zero (an all-zero channel)."""
    return torch.where(diag > 0, diag, torch.ones_like(diag)).rsqrt()


def _cholesky(M: torch.Tensor) -> tuple[torch.Tensor, float]:
    eye = torch.eye(M.shape[0], dtype=M.dtype)
    for ridge in _RIDGES:
        L, info = torch.linalg.cholesky_ex(M + ridge * eye)
        if int(info) == 0 and torch.isfinite(L).all():
            return L, ridge
    raise FloatingPointError("the pruning system could not be factorised (non-finite weights or BN statistics?)")


def _solve_one_by_one(G, B, k, kP, a) -> torch.Tensor:
    """Each pruned channel's own system, equilibrated by its own diagonal (the slow, robust path)."""
    A = G[None] + a[:, None, None] * k[None, :, None] * k[None, None, :]
    rhs = B.T + (a * kP)[:, None] * k[None, :]
    d = _equilibrator(torch.diagonal(A, dim1=1, dim2=2))
    Ae = d[:, :, None] * A * d[:, None, :]
    eye = torch.eye(A.shape[1], dtype=A.dtype)
    L, info = torch.linalg.cholesky_ex(Ae + _RIDGES[0] * eye)
    if bool((info != 0).any()):
        sol = torch.linalg.lstsq(Ae, (d * rhs)[:, :, None], driver="gelsd").solution[:, :, 0]
    else:
        sol = torch.cholesky_solve((d * rhs)[:, :, None], L)[:, :, 0]
    return d * sol


def prune_loss(
    layer: FoldedLayer, keep: torch.Tensor, pruned: torch.Tensor, scales: torch.Tensor, alpha1: float = 0.01
) -> torch.Tensor:
    """Relative UDFC loss per pruned channel: loss_j(scales) / loss_j(0); 1.0 means nothing was recovered.

    Used in reports for every method, so that udfc, nm and plain pruning are compared on one measure.
    """
    R, K, c = layer.R, layer.K, layer.c
    s = scales.to(torch.float64)
    err_r = R[pruned] - s @ R[keep]
    err_k = K[pruned] - s @ K[keep]
    cp2 = c[pruned] ** 2
    loss = cp2 * (err_r**2).sum(dim=1) + alpha1 * err_k**2
    base = cp2 * (R[pruned] ** 2).sum(dim=1) + alpha1 * K[pruned] ** 2
    return torch.where(base > 0, loss / base.clamp(min=1e-300), torch.zeros_like(base))


def neuron_merging_scales(
    weight: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    keep: torch.Tensor,
    pruned: torch.Tensor,
    eps: float = 1e-5,
    lam: float = 0.85,
    threshold: float = 0.1,
    variant: str = "code",
) -> torch.Tensor:
    """Neuron Merging (Kim et al., NeurIPS 2020): each pruned channel merges into one kept channel.

    ``variant="code"`` reproduces NM's released code: partner k minimises ``lam (1 - cos) + (1 - lam) d_bias``
    (d_bias min-max normalised over the kept channels), with scale ``||w_j||/||w_k|| (gamma_k/gamma_j)
    (var_j/var_k)`` (running variance, as that code does). ``variant="derived"`` takes the most
    cosine-similar kept channel and the derived ratio ``||w_j||/||w_k|| (gamma_j sigma_k)/(sigma_j gamma_k)``.
    A channel whose best partner has cosine similarity below ``threshold`` is not merged.
    """
    if variant not in NM_VARIANTS:
        raise ValueError(f"nm variant must be one of {NM_VARIANTS}, got {variant!r}")
    w = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    g, b, mu, v = (t.detach().to(torch.float64) for t in (gamma, beta, mean, var))
    norms = w.norm(dim=1)
    unit = w / norms.clamp(min=1e-300)[:, None]
    cos = unit[pruned] @ unit[keep].T  # (|P|, |S|)
    ratio = norms[pruned][:, None] / norms[keep].clamp(min=1e-300)[None, :]
    j, k = (slice(None), None), (None, slice(None))
    gj, gk = g[pruned][j], g[keep][k]
    if variant == "code":
        vj, vk = v[pruned][j], v[keep][k]
        scale = ratio * (gk / gj) * (vj / vk)
        dist = ((gk / vk) * (ratio * (-(vj * b[pruned][j] / gj) + mu[pruned][j]) - mu[keep][k]) + b[keep][k]).abs()
        dist = dist / scale
        lo, hi = dist.min(dim=1, keepdim=True).values, dist.max(dim=1, keepdim=True).values
        span = hi - lo
        dist = torch.where(span > 0, (dist - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
        score = lam * (1 - cos) + (1 - lam) * dist
        score = torch.nan_to_num(score, nan=float("inf"))
        best = score.argmin(dim=1)
    else:
        sj = torch.sqrt(v[pruned] + eps)[j]
        sk = torch.sqrt(v[keep] + eps)[k]
        scale = ratio * (gj * sk) / (sj * gk)
        best = cos.argmax(dim=1)
    rows = torch.arange(len(pruned))
    best_cos = cos[rows, best]
    chosen = scale[rows, best]
    ok = (best_cos >= threshold) & torch.isfinite(chosen)
    scales = torch.zeros(len(pruned), len(keep), dtype=torch.float64)
    scales[rows[ok], best[ok]] = chosen[ok]
    return scales


def merge_into_consumer(
    weight: torch.Tensor,
    keep: torch.Tensor,
    pruned: torch.Tensor,
    scales: torch.Tensor | None = None,
    column_scale: torch.Tensor | None = None,
    dim: int = 1,
) -> torch.Tensor:
    """The consumer's weight after its input channels ``pruned`` are removed (paper eq. 19-21).

    ``V'[:, i] = t_i (V[:, i] + sum_j scales[j, i] V[:, j])`` for kept i, along dimension ``dim`` of ``weight``;
    ``scales=None`` is plain removal and ``column_scale=None`` means t = 1.

    >>> v = torch.tensor([[1.0, 10.0, 100.0]])
    >>> merge_into_consumer(v, torch.tensor([0, 2]), torch.tensor([1]), torch.tensor([[0.5, 2.0]], dtype=torch.float64))
    tensor([[  6., 120.]])
    """
    v = weight.detach().movedim(dim, 0).to(torch.float64)
    out = v[keep].clone()
    if scales is not None and len(pruned):
        out += torch.tensordot(scales.to(torch.float64).T, v[pruned], dims=1)
    if column_scale is not None:
        out *= column_scale.to(torch.float64).reshape((-1,) + (1,) * (out.ndim - 1))
    return out.movedim(0, dim).to(weight.dtype).contiguous()
