"""Least-squares refit of one layer on recorded inputs and target outputs (``refit="distilled"``)."""

from __future__ import annotations

import torch

__all__ = ["PRIOR", "RIDGE", "RefitStats", "best_intercept", "refit_error", "solve_refit"]

RIDGE = 1e-3  # times the mean input variance: keeps the solve defined where an input never varies
PRIOR = 1.0  # the prior weights count as PRIOR x (inputs + 1) samples (see solve_refit)


class RefitStats:
    """Running sums for ``min_W,b |A W^T + b - T|^2`` over row batches, per group: ``A`` (groups, n, d) the
    inputs one output row reads, ``T`` (groups, n, o) the targets. Float64, centred at the end."""

    def __init__(self, groups: int, d: int, o: int):
        self.n = 0
        self.sa = torch.zeros(groups, d, dtype=torch.float64)
        self.st = torch.zeros(groups, o, dtype=torch.float64)
        self.aa = torch.zeros(groups, d, d, dtype=torch.float64)
        self.at = torch.zeros(groups, d, o, dtype=torch.float64)
        self.tt = torch.zeros(groups, o, dtype=torch.float64)

    def add(self, a: torch.Tensor, t: torch.Tensor) -> None:
        a, t = a.detach().to(torch.float64).cpu(), t.detach().to(torch.float64).cpu()
        self.n += a.shape[1]
        self.sa += a.sum(1)
        self.st += t.sum(1)
        self.aa += a.transpose(1, 2) @ a
        self.at += a.transpose(1, 2) @ t
        self.tt += (t * t).sum(1)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means of A and T, the covariance of A (groups, d, d) and the cross-covariance (groups, d, o)."""
        n = max(self.n, 1)
        ma, mt = self.sa / n, self.st / n
        cov = self.aa / n - ma[:, :, None] * ma[:, None, :]
        cross = self.at / n - ma[:, :, None] * mt[:, None, :]
        return ma, mt, 0.5 * (cov + cov.transpose(1, 2)), cross


def solve_refit(
    stats: RefitStats,
    ridge: float = RIDGE,
    intercept: bool = True,
    prior: torch.Tensor | None = None,
    strength: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares weights (groups, o, d) and intercepts (groups, o) of ``T ~ A W^T + b``, with a ridge of
    ``ridge`` times the mean input variance on W (none on b); ``intercept=False`` fits ``T ~ A W^T`` (b = 0).
    Exact (up to the ridge) when T is such a function of A.

    ``prior`` (groups, o, d): weights to lean on where the samples are few. The solution then minimises
    ``E|A W^T + b - T|^2 + mu |W - prior|^2`` with ``mu = strength * (d + 1) / n`` times the mean input variance
    (``strength`` defaults to ``PRIOR``): the prior counts as much as ``strength * (d + 1)`` samples of that
    variance, so it decides a layer seen on fewer samples than it has inputs and fades as the samples grow."""
    ma, mt, cov, cross = stats.moments()
    n = max(stats.n, 1)
    if not intercept:  # the uncentred moments
        cov, cross = 0.5 * (stats.aa + stats.aa.transpose(1, 2)) / n, stats.at / n
    d = cov.shape[-1]
    var = cov.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-30)
    lam = ridge * var
    if prior is not None:
        mu = (PRIOR if strength is None else strength) * (d + 1) / n * var
        lam = lam + mu
        cross = cross + mu[:, None, None] * prior.to(cross).transpose(1, 2)
    eye = torch.eye(d, dtype=cov.dtype)
    w = torch.linalg.solve(cov + lam[:, None, None] * eye, cross).transpose(1, 2)  # (groups, o, d)
    b = best_intercept(stats, w) if intercept else torch.zeros_like(mt)
    return w, b


def best_intercept(stats: RefitStats, w: torch.Tensor) -> torch.Tensor:
    """The intercept that leaves no mean error for weights ``w`` (groups, o, d): ``E[T] - w E[A]``."""
    ma, mt = stats.sa / max(stats.n, 1), stats.st / max(stats.n, 1)
    return mt - (w.to(ma) @ ma[:, :, None])[..., 0]


def refit_error(stats: RefitStats, w: torch.Tensor, b: torch.Tensor) -> float:
    """``E|A W^T + b - T|^2 / E|T - E[T]|^2`` over the accumulated rows (all groups and outputs together)."""
    n = max(stats.n, 1)
    w, b = w.to(torch.float64), b.to(torch.float64)
    ma, mt = stats.sa / n, stats.st / n
    # E|aW + b - t|^2 = w E[aa] w - 2 w E[at] + E[tt] + 2 b (w E[a] - E[t]) + b^2, per output
    quad = torch.einsum("god,gde,goe->go", w, stats.aa / n, w)
    cross = torch.einsum("god,gdo->go", w, stats.at / n)
    lin = (w @ ma[:, :, None])[..., 0] - mt
    err = quad - 2 * cross + stats.tt / n + 2 * b * lin + b * b
    var = stats.tt / n - mt * mt
    return float(err.sum().clamp(min=0) / var.sum().clamp(min=1e-30))
