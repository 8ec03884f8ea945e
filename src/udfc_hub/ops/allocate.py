"""How many channels each prunable group keeps: uniform ratios, or a greedy spread by reconstruction loss."""

from __future__ import annotations

import math

import torch

from .prune import channel_norms

__all__ = ["uniform_widths", "loss_curve", "allocate_greedy", "allocate_bits"]


def uniform_widths(sizes: dict[str, int], ratio: float) -> dict[str, int]:
    """floor((1 - ratio) n) channels kept of each group of n, at least one.

    >>> uniform_widths({"a": 64, "b": 10}, 0.3)
    {'a': 44, 'b': 7}
    """
    return {name: max(1, math.floor(round((1 - ratio) * n, 9))) for name, n in sizes.items()}


def loss_curve(R: torch.Tensor, weight: torch.Tensor, criterion: str, points: int = 19) -> torch.Tensor:
    """Cumulative relative loss, per channel of the layer, of pruning the m smallest-norm channels, for
    m = 0 .. 0.9 n (exact at ``points`` evenly spaced m, linear in between).

    ``R`` are the BN-folded filters (rows = channels); the loss of a pruned channel is the part of its row that
    the kept rows cannot reproduce by least squares (UDFC's linear fit without its bias term).
    """
    n = R.shape[0]
    order = torch.sort(channel_norms(weight, criterion), descending=True, stable=True).indices.flip(0)
    G = R @ R.T
    last = int(0.9 * n)
    ms = sorted({round(last * i / (points - 1)) for i in range(points)})
    values = [0.0 if m == 0 else _pruned_loss(G, order[:m], order[m:]) / n for m in ms]
    grid = torch.arange(last + 1, dtype=torch.float64)
    xs = torch.tensor(ms, dtype=torch.float64)
    ys = torch.tensor(values, dtype=torch.float64)
    idx = torch.searchsorted(xs, grid).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
    return y0 + (y1 - y0) * (grid - x0) / (x1 - x0).clamp(min=1)


def _pruned_loss(G: torch.Tensor, P: torch.Tensor, S: torch.Tensor) -> float:
    """Sum over pruned rows P of the relative residual after least squares on the kept rows S (Gram matrix G)."""
    A = G[S][:, S] + 1e-10 * G.diagonal().mean() * torch.eye(len(S), dtype=torch.float64)
    L, _ = torch.linalg.cholesky_ex(A)
    B = G[S][:, P]
    fitted = (B * torch.cholesky_solve(B, L)).sum(0)
    diag = G.diagonal()[P]
    rel = torch.where(diag > 0, (diag - fitted).clamp(min=0) / diag.clamp(min=1e-300), torch.zeros_like(diag))
    return float(rel.sum())


def allocate_greedy(sizes: dict[str, int], curves: dict[str, torch.Tensor], budget: int) -> dict[str, int]:
    """Kept channels per group after removing ``budget`` channels one at a time, each from the group whose
    loss curve grows least; a group stops at the end of its curve.

    >>> allocate_greedy({"a": 4, "b": 4}, {"a": torch.tensor([0.0, 1, 2]), "b": torch.tensor([0.0, 0.1, 5])}, 2)
    {'a': 3, 'b': 3}
    """
    pruned = dict.fromkeys(sizes, 0)
    for _ in range(budget):
        best, best_cost = None, math.inf
        for name, curve in curves.items():
            m = pruned[name]
            if m + 1 < len(curve) and float(curve[m + 1] - curve[m]) < best_cost:
                best, best_cost = name, float(curve[m + 1] - curve[m])
        if best is None:
            break
        pruned[best] += 1
    return {name: sizes[name] - pruned[name] for name in sizes}


def allocate_bits(errors: dict[str, dict[int, float]], sizes: dict[str, int], bits: int, low: int) -> dict[str, int]:
    """Bit widths per layer at the total size of ``bits`` everywhere: start every layer at ``low`` and raise, one
    bit at a time, the layer whose error falls most per weight bit added (``errors[name][b]``: the layer's error at
    b bits; ``sizes``: its number of weights), while the budget allows. Optimal when the error curves are convex
    and the sizes equal (marginal analysis); greedy otherwise.

    >>> allocate_bits({"a": {2: 9.0, 3: 1.0, 4: 0.5}, "b": {2: 1.0, 3: 0.9, 4: 0.8}}, {"a": 1, "b": 1}, 3, 2)
    {'a': 4, 'b': 2}
    """
    top = max(b for curve in errors.values() for b in curve)
    chosen = dict.fromkeys(errors, low)
    budget = sum(sizes[n] for n in errors) * (bits - low)
    while True:
        best, gain = None, 0.0
        for name, b in chosen.items():
            if b < top and sizes[name] <= budget:
                g = (errors[name][b] - errors[name][b + 1]) / max(sizes[name], 1)
                if g > gain:
                    best, gain = name, g
        if best is None:
            return chosen
        budget -= sizes[best]
        chosen[best] += 1
