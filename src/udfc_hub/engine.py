"""The compression engine: walks an adapter's ``ModelSpec``, calls the tensor math, rewrites the modules.

Layers are visited in forward order. For a layer that produces a prunable group, the kept channels are chosen
and the pruning scales solved against its full-precision weights; its kept filters are then quantized and
UDFC's correction t solved; finally the consumers receive ``V'[:, i] = t_i (V[:, i] + sum_j s_ji V[:, j])``
before they are themselves visited. A layer with no single consumer that can absorb t folds it into its own
BatchNorm, or into its output rows when it has none.

``method="udfc+"`` (the default) changes three steps, each also available on its own: the pruning scales come
from a least-squares fit after the ReLU under a Gaussian model of the BN outputs (``fit="relu"``); the part of
each pruned channel's mean that the scales miss goes into the consumer's BN, and the consumer's BN variance
follows the predicted variance loss (``bias_correction``, ``variance_correction``); and the expected shift that
quantization causes in each layer's output is removed using the layer's mean input under a BN-matched Gaussian
probe (``bias_correction``), instead of UDFC's scale t (``quant_correction="none"``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Any

import torch
import torch.nn as nn

from .adapters import ChannelGroup, Layer, ModelSpec, describe_model
from .errors import InvalidArgumentError
from .ops import (
    CRITERIA,
    GRANULARITIES,
    MAX_BITS,
    MIN_BITS,
    NM_VARIANTS,
    QuantizedTensor,
    expected_output_shift,
    filter_correlation,
    fold_batchnorm,
    intercepts,
    merge_into_consumer,
    neuron_merging_scales,
    prune_loss,
    quantize_dorefa,
    rank_channels,
    relu_moments,
    solve_nonnegative_scales,
    solve_prune_scales,
    solve_quant_correction,
    solve_relu_scales,
    variance_ratio,
)
from .probe import has_batchnorm, probe_input_means
from .profile import ModelStats, default_input_size, profile_model
from .surgery import set_param, slice_channels, sync_shape_attrs

__all__ = [
    "METHODS",
    "FITS",
    "QUANT_CORRECTIONS",
    "LAYER_RATIOS",
    "REFERENCES",
    "PRESETS",
    "LayerReport",
    "CompressionReport",
    "CompressionResult",
    "compress",
]

METHODS = ("udfc+", "udfc", "nm", "prune", "rtn")
FITS = ("relu", "linear")
QUANT_CORRECTIONS = ("none", "udfc", "scale")
LAYER_RATIOS = ("uniform", "adaptive")
REFERENCES = ("compensated", "original")
# What each method means for the options left at None. "udfc" is the paper as written; "udfc+" is this
# project's data-free extension (docs/method.md); the others are baselines.
PRESETS: dict[str, dict[str, Any]] = {
    "udfc+": dict(fit="relu", bias_correction=True, variance_correction=True, quant_correction="none"),
    "udfc": dict(fit="linear", bias_correction=False, variance_correction=False, quant_correction="udfc"),
    "nm": dict(fit=None, bias_correction=False, variance_correction=False, quant_correction="none"),
    "prune": dict(fit=None, bias_correction=False, variance_correction=False, quant_correction="none"),
    "rtn": dict(fit=None, bias_correction=False, variance_correction=False, quant_correction="none"),
}


@dataclass
class LayerReport:
    """What happened to one weight layer."""

    name: str
    out_channels: int
    kept_channels: int
    bits: int | None
    residual: float | None = None  # mean relative pruning loss of the removed channels; 1.0 = nothing recovered
    solver: str | None = None
    quant_error: float | None = None  # ||W~ - W|| / ||W|| of the kept filters
    correction: str | None = None  # where UDFC's t went: "consumer", "norm", "rows" or "scale"
    t_range: tuple[float, float] | None = None
    bias_shift: float | None = None  # max |expected output shift| removed after quantizing this layer
    variance_range: tuple[float, float] | None = None  # consumer BN variance factors after pruning this layer


@dataclass
class CompressionReport:
    """Settings, per-layer outcomes, and the size of the model before and after."""

    family: str
    settings: dict[str, Any]
    layers: list[LayerReport]
    before: ModelStats
    after: ModelStats
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def pruned_layers(self) -> list[LayerReport]:
        return [r for r in self.layers if r.kept_channels < r.out_channels]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        s = self.settings
        lines = [
            f"udfc_hub.compress: {self.family}; method={s['method']} prune_ratio={s['prune_ratio']} "
            f"bits={s['bits']} criterion={s['criterion']} granularity={s['granularity']}",
            f"fit={s['fit']} bias_correction={s['bias_correction']} variance_correction="
            f"{s['variance_correction']} quant_correction={s['quant_correction']} layer_ratios={s['layer_ratios']}",
            f"{'layer':<28} {'channels':>11} {'bits':>4} {'residual':>8} {'q.err':>7} {'t':>15}",
        ]
        for r in self.layers:
            ch = f"{r.kept_channels}/{r.out_channels}"
            res = f"{r.residual:.3f}" if r.residual is not None else "-"
            qe = f"{r.quant_error:.4f}" if r.quant_error is not None else "-"
            t = f"{r.t_range[0]:.3f}..{r.t_range[1]:.3f}" if r.t_range else "-"
            lines.append(f"{r.name:<28} {ch:>11} {r.bits or '-':>4} {res:>8} {qe:>7} {t:>15}")
        lines.append(
            f"params {self.before.params:,} -> {self.after.params:,} "
            f"({self.after.params / max(self.before.params, 1):.1%}); MACs {self.before.macs:,} -> "
            f"{self.after.macs:,} ({self.after.macs / max(self.before.macs, 1):.1%}); {self.seconds:.2f} s"
        )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass
class CompressionResult:
    """``model``: the compressed ``nn.Module`` (float weights that equal their dequantized codes exactly).

    ``quantized``: the codes and scales of every quantized layer, by module name; ``module.weight`` equals
    ``quantized[name].dequantize()`` bit for bit. ``spec``: the channel couplings that were used.
    """

    model: nn.Module
    report: CompressionReport
    quantized: dict[str, QuantizedTensor]
    spec: ModelSpec


def compress(
    model: nn.Module,
    prune_ratio: float = 0.3,
    bits: int | None = 6,
    method: str = "udfc+",
    criterion: str = "l2",
    *,
    granularity: str = "channel",
    fit: str | None = None,
    nonnegative: bool = False,
    bias_correction: bool | None = None,
    variance_correction: bool | None = None,
    quant_correction: str | None = None,
    layer_ratios: str = "uniform",
    alpha1: float = 0.01,
    alpha2: float = 0.008,
    reference: str = "compensated",
    nm_variant: str = "code",
    nm_lambda: float = 0.85,
    nm_threshold: float = 0.1,
    input_size: tuple[int, int, int] | None = None,
    progress: bool = False,
) -> CompressionResult:
    """Compress ``model`` without data: structured pruning plus low-bit weights, repaired in closed form.

    Args:
        model: a supported model (see ``udfc_hub.adapters``); it is never modified.
        prune_ratio: fraction of each prunable group's channels to remove, in [0, 1). 0 = quantize only.
        bits: weight bit-width, an integer in 2..8, or None for full-precision weights (prune only).
        method: ``"udfc+"`` (default: UDFC extended with BN-moment corrections, docs/method.md), ``"udfc"``
            (the paper as written), ``"nm"`` (Neuron Merging), ``"prune"`` or ``"rtn"`` (no compensation; the
            two are the same operation under two names). The method sets the defaults of the four options
            below that are left at None (``udfc_hub.engine.PRESETS``).
        criterion: ``"l1"`` or ``"l2"`` filter norm used to choose the channels to keep.
        granularity: quantizer scale per output ``"channel"`` (default) or per ``"tensor"`` (the paper).
        fit: how UDFC's pruning scales are solved (``udfc``/``udfc+`` only): ``"linear"`` (the paper: BN-folded
            filters, before the ReLU) or ``"relu"`` (least squares after the ReLU, from BN moments; groups whose
            adapter does not declare ``relu_moments`` fall back to ``"linear"``).
        nonnegative: with ``fit="linear"``, constrain the scales to be >= 0 (the loss without its bias term).
        bias_correction: move the expected error of pruning (each pruned channel's missed mean) and of
            quantization (mean input x weight error) into the next BN's running mean or the layer's bias.
        variance_correction: after pruning, scale the consumer BN's running variance by the predicted loss of
            output variance, so its output keeps its scale.
        quant_correction: ``"udfc"`` (the paper's t on the BN output), ``"scale"`` (t without the bias term,
            folded into the weight scale) or ``"none"``.
        layer_ratios: ``"uniform"`` (every group loses ``prune_ratio`` of its channels) or ``"adaptive"``
            (the same total, spread by each group's reconstruction error).
        alpha1: weight of the bias term in UDFC's pruning loss (paper: 0.01).
        alpha2: weight of the bias term in UDFC's quantization loss (paper: 0.008).
        reference: weights a layer's pruning solve uses once earlier compensation changed them:
            ``"compensated"`` (the current ones) or ``"original"`` (the input model's).
        nm_variant: ``"code"`` (NM's released code) or ``"derived"`` (the clean algebra), for ``method="nm"``.
        nm_lambda, nm_threshold: NM's cosine/bias trade-off and minimum cosine similarity.
        input_size: (C, H, W) for counting MACs; default: the model's timm ``pretrained_cfg``.
        progress: show a progress bar over layers.

    Example:
        >>> import timm, udfc_hub
        >>> result = udfc_hub.compress(timm.create_model("resnet18"), prune_ratio=0.3, bits=6)
        >>> result.report.after.params < result.report.before.params
        True
    """
    settings = _validate(
        model,
        dict(
            method=method,
            prune_ratio=prune_ratio,
            bits=bits,
            criterion=criterion,
            granularity=granularity,
            fit=fit,
            nonnegative=nonnegative,
            bias_correction=bias_correction,
            variance_correction=variance_correction,
            quant_correction=quant_correction,
            layer_ratios=layer_ratios,
            alpha1=alpha1,
            alpha2=alpha2,
            reference=reference,
            nm_variant=nm_variant,
            nm_lambda=nm_lambda,
            nm_threshold=nm_threshold,
        ),
    )
    start = time.perf_counter()
    spec = describe_model(model)
    before = profile_model(model, input_size)
    original = model
    model = copy.deepcopy(model)
    notes = list(spec.notes)
    means: dict[str, torch.Tensor] = {}
    if settings["bias_correction"] and settings["bits"] is not None:
        if has_batchnorm(model):
            size = tuple(input_size) if input_size is not None else default_input_size(model)
            means = probe_input_means(model, [layer.name for layer in spec.layers], size)
        else:
            notes.append("no BatchNorm statistics in this model: quantization bias correction was skipped")
    n_keep = _allocate(model, spec, settings) if settings["prune_ratio"] > 0 else {}
    run = _Run(model, original, spec, settings, means, n_keep)
    layers = spec.layers
    if progress:
        from tqdm.auto import tqdm

        layers = tqdm(layers, desc="compressing", unit="layer")
    for layer in layers:
        run.visit(layer)
    run.finish()
    model.eval()
    after = profile_model(model, input_size)
    report = CompressionReport(
        family=spec.family,
        settings=settings,
        layers=run.reports,
        before=before,
        after=after,
        seconds=time.perf_counter() - start,
        notes=notes + run.notes,
    )
    return CompressionResult(model=model, report=report, quantized=run.quantized, spec=spec)


class _Run:
    """State of one compression pass over a copy of the model."""

    def __init__(
        self,
        model: nn.Module,
        original: nn.Module,
        spec: ModelSpec,
        settings: dict[str, Any],
        means: dict[str, torch.Tensor],
        n_keep: dict[str, int],
    ):
        self.model = model
        self.original = original
        self.s = settings
        self.groups: dict[str, ChannelGroup] = {g.producer.name: g for g in spec.groups}
        self.layers: dict[str, Layer] = {layer.name: layer for layer in spec.layers}
        self.means = means  # mean input of each layer under the BN-matched probe (bias correction)
        self.n_keep = n_keep
        self.quantized: dict[str, QuantizedTensor] = {}
        self.reports: list[LayerReport] = []
        self.notes: list[str] = []
        self._fallbacks: list[str] = []

    @torch.no_grad()
    def visit(self, layer: Layer) -> None:
        s = self.s
        mod = self.model.get_submodule(layer.name)
        norm = self.model.get_submodule(layer.norm) if layer.norm else None
        group = self.groups.get(layer.name)
        n_out = mod.weight.shape[0]
        keep = torch.arange(n_out)
        pruned = keep[:0]
        scales = None
        moments = None
        report = LayerReport(name=layer.name, out_channels=n_out, kept_channels=n_out, bits=s["bits"])

        # n_keep lacks the groups with no closed form unless method="prune" (the adapter's note says so)
        if group is not None and s["prune_ratio"] > 0 and layer.name in self.n_keep:
            src = self.original if s["reference"] == "original" else self.model
            ref = src.get_submodule(layer.name)
            ref_norm = src.get_submodule(layer.norm) if layer.norm else None
            keep, pruned = rank_channels(ref.weight, self.n_keep[layer.name], s["criterion"])
            folded = fold_batchnorm(ref.weight, ref.bias, *_bn_params(ref_norm))
            use_moments = group.relu_moments and ref_norm is not None
            relu_fit = s["method"] in ("udfc", "udfc+") and s["fit"] == "relu"
            if use_moments and (relu_fit or s["bias_correction"] or s["variance_correction"]):
                # BN output of channel i ~ N(beta_i, gamma_i^2), correlated like the folded filters
                moments = relu_moments(ref_norm.bias, ref_norm.weight.abs(), filter_correlation(folded.R))
            elif group.relu_moments is False and (relu_fit or s["bias_correction"] or s["variance_correction"]):
                self._fallbacks.append(layer.name)
            if s["method"] in ("udfc", "udfc+"):
                if relu_fit and moments is not None:
                    scales, report.solver = solve_relu_scales(moments, keep, pruned), "relu-moments"
                elif s["nonnegative"]:
                    RS = folded.R[keep]
                    scales = solve_nonnegative_scales(RS @ RS.T, RS @ folded.R[pruned].T)
                    report.solver = "nonnegative"
                else:
                    solution = solve_prune_scales(folded, keep, pruned, s["alpha1"])
                    scales, report.solver = solution.scales, solution.solver
            elif s["method"] == "nm":
                scales = _nm_scales(ref, ref_norm, keep, pruned, s)
            zero = torch.zeros(len(pruned), len(keep), dtype=torch.float64)
            loss = prune_loss(folded, keep, pruned, zero if scales is None else scales, s["alpha1"])
            report.residual = float(loss.mean()) if len(pruned) else 0.0
            slice_channels(mod, keep)
            if norm is not None:
                slice_channels(norm, keep)
            for name in group.aligned:
                slice_channels(self.model.get_submodule(name), keep)
                if name in self.means and self.means[name].shape[0] == n_out:  # a depthwise conv's input
                    self.means[name] = self.means[name][keep]
            report.kept_channels = len(keep)

        t = None
        if s["bits"] is not None:
            w = mod.weight.detach()
            qt = quantize_dorefa(w, s["bits"], s["granularity"])
            wq = qt.dequantize(w.dtype).to(w.device)
            report.quant_error = float((wq - w).norm() / w.norm().clamp(min=1e-30))
            if s["quant_correction"] == "udfc":
                bn = _bn_params(norm)
                ref = fold_batchnorm(w, mod.bias, *bn)
                t = solve_quant_correction(ref.R, fold_batchnorm(wq, mod.bias, *bn).R, ref.K, s["alpha2"])
                report.t_range = (float(t.min()), float(t.max()))
            elif s["quant_correction"] == "scale":  # t = <w~, w> / <w~, w~> per row, bias untouched
                tw = solve_quant_correction(w, wq, torch.zeros(wq.shape[0]), 0.0)
                shape = (-1,) + (1,) * (qt.codes.ndim - 1)
                qt = QuantizedTensor(qt.codes, qt.scale * tw.to(qt.scale).reshape(shape), qt.bits)
                wq = qt.dequantize(w.dtype).to(w.device)
                report.t_range, report.correction = (float(tw.min()), float(tw.max())), "scale"
            if s["bias_correction"] and layer.name in self.means:
                self._correct_shift(layer, mod, norm, wq - w, report)
            set_param(mod, "weight", wq)
            self.quantized[layer.name] = qt

        to_consumers = (
            group is not None
            and group.scale_commutes
            and (t is None or bool((t > 0).all()))
            and not any(c.name in self.quantized for c in group.consumers)
        )
        if group is not None:
            icpt = None
            if moments is not None and s["bias_correction"] and len(pruned):
                icpt = intercepts(moments.mean, keep, pruned, scales)
            ratios = []
            for c in group.consumers:
                consumer = self.model.get_submodule(c.name)
                before = consumer.weight.detach()
                plain = merge_into_consumer(before, keep, pruned, scales, None, dim=c.dim)
                merged = plain
                if t is not None and to_consumers:
                    merged = merge_into_consumer(before, keep, pruned, scales, t, dim=c.dim)
                set_param(consumer, "weight", merged)
                sync_shape_attrs(consumer)
                if c.dim == 1 and c.name in self.means and len(pruned):
                    self.means[c.name] = self.means[c.name][keep]
                c_norm = self._norm_of(c.name)
                if icpt is not None:
                    self._add_intercept(consumer, c_norm, before, pruned, icpt, c.dim)
                if moments is not None and s["variance_correction"] and len(pruned) and c_norm is not None:
                    ratio = variance_ratio(before, plain, moments.cov, keep, dim=c.dim)
                    set_param(c_norm, "running_var", c_norm.running_var * ratio.to(c_norm.running_var))
                    ratios.append(ratio)
            if ratios:
                allr = torch.cat(ratios)
                report.variance_range = (float(allr.min()), float(allr.max()))
        if t is not None:
            if to_consumers:
                report.correction = "consumer"
            elif norm is not None:
                set_param(norm, "weight", norm.weight * t.to(norm.weight))
                set_param(norm, "bias", norm.bias * t.to(norm.bias))
                report.correction = "norm"
            else:
                qt = self.quantized[layer.name]
                shape = (-1,) + (1,) * (qt.codes.ndim - 1)
                qt = QuantizedTensor(qt.codes, qt.scale * t.to(qt.scale).reshape(shape), qt.bits)
                self.quantized[layer.name] = qt
                set_param(mod, "weight", qt.dequantize(mod.weight.dtype).to(mod.weight.device))
                if mod.bias is not None:
                    set_param(mod, "bias", mod.bias * t.to(mod.bias))
                report.correction = "rows"
        self.reports.append(report)

    def finish(self) -> None:
        if self._fallbacks:
            self.notes.append(
                f"{len(self._fallbacks)} pruned group(s) without ReLU moments (their adapter does not declare "
                "relu_moments): UDFC's linear fit and no bias/variance correction there, e.g. " + self._fallbacks[0]
            )

    def _norm_of(self, name: str) -> nn.Module | None:
        layer = self.layers.get(name)
        return self.model.get_submodule(layer.norm) if layer is not None and layer.norm else None

    def _correct_shift(self, layer: Layer, mod: nn.Module, norm, delta: torch.Tensor, report: LayerReport) -> None:
        """Remove the expected output shift ``E[delta_W x]`` through the next BN's running mean, or the bias."""
        mean = self.means[layer.name]
        groups = getattr(mod, "groups", 1)
        if mean.shape[0] != delta.shape[1] * groups:  # the input was changed in a way the probe cannot follow
            return
        shift = expected_output_shift(delta, mean, groups)
        if norm is not None:
            set_param(norm, "running_mean", norm.running_mean + shift.to(norm.running_mean))
        elif mod.bias is not None:
            set_param(mod, "bias", mod.bias - shift.to(mod.bias))
        else:
            return
        report.bias_shift = float(shift.abs().max())

    def _add_intercept(self, consumer, c_norm, weight, pruned, icpt, dim: int) -> None:
        """The consumer's output gains ``sum_j V[:, j] b_j`` (summed over kernel taps; borders ignored)."""
        v = weight.detach().movedim(dim, 1).to(torch.float64)[:, pruned]
        delta = (v.reshape(v.shape[0], v.shape[1], -1).sum(-1) @ icpt).reshape(-1)
        if c_norm is not None:
            set_param(c_norm, "running_mean", c_norm.running_mean - delta.to(c_norm.running_mean))
        elif consumer.bias is not None:
            set_param(consumer, "bias", consumer.bias + delta.to(consumer.bias))
        else:
            self.notes.append(f"{consumer.__class__.__name__} consumer without bias or BN: intercept dropped")


def _allocate(model: nn.Module, spec: ModelSpec, s: dict[str, Any]) -> dict[str, int]:
    """Kept channels per pruned group. ``uniform``: floor((1 - ratio) n) each. ``adaptive``: the same total
    number of pruned channels, spread greedily to the groups whose relative reconstruction loss (UDFC's linear
    fit, bias term left out) grows least, each group keeping at least 10 % of its channels."""
    groups = [g for g in spec.groups if g.closed_form or s["method"] == "prune"]
    sizes = {g.producer.name: model.get_submodule(g.producer.name).weight.shape[0] for g in groups}
    uniform = {name: max(1, math.floor(round((1 - s["prune_ratio"]) * n, 9))) for name, n in sizes.items()}
    if s["layer_ratios"] == "uniform" or not uniform:
        return uniform
    curves = {}
    for g in groups:
        mod = model.get_submodule(g.producer.name)
        norm = model.get_submodule(g.producer.norm) if g.producer.norm else None
        folded = fold_batchnorm(mod.weight, mod.bias, *_bn_params(norm))
        curves[g.producer.name] = _loss_curve(folded.R, mod.weight, s["criterion"])
    budget = sum(sizes[n] - k for n, k in uniform.items())
    pruned = dict.fromkeys(sizes, 0)
    for _ in range(budget):
        best, best_cost = None, math.inf
        for name, curve in curves.items():
            m = pruned[name]
            if m + 1 < len(curve):
                cost = float(curve[m + 1] - curve[m])
                if cost < best_cost:
                    best, best_cost = name, cost
        if best is None:
            break
        pruned[best] += 1
    return {name: sizes[name] - pruned[name] for name in sizes}


def _loss_curve(R: torch.Tensor, weight: torch.Tensor, criterion: str, points: int = 19) -> torch.Tensor:
    """Cumulative relative loss, per channel of the layer, of pruning the m smallest-norm channels, for
    m = 0 .. 0.9 n (exact at ``points`` evenly spaced m, linear in between)."""
    n = R.shape[0]
    flat = weight.detach().reshape(n, -1).to(torch.float64)
    norms = flat.abs().sum(1) if criterion == "l1" else flat.norm(dim=1)
    order = torch.sort(norms, descending=True, stable=True).indices.flip(0)  # pruned first, as rank_channels
    G = R @ R.T
    last = int(0.9 * n)
    ms = sorted({round(last * i / (points - 1)) for i in range(points)})
    values = []
    for m in ms:
        if m == 0:
            values.append(0.0)
            continue
        P, S = order[:m], order[m:]
        A = G[S][:, S] + 1e-10 * G.diagonal().mean() * torch.eye(len(S), dtype=torch.float64)
        L, _ = torch.linalg.cholesky_ex(A)
        B = G[S][:, P]
        fitted = (B * torch.cholesky_solve(B, L)).sum(0)
        diag = G.diagonal()[P]
        rel = torch.where(diag > 0, (diag - fitted).clamp(min=0) / diag.clamp(min=1e-300), torch.zeros_like(diag))
        values.append(float(rel.sum()) / n)
    grid = torch.arange(last + 1, dtype=torch.float64)
    xs = torch.tensor(ms, dtype=torch.float64)
    ys = torch.tensor(values, dtype=torch.float64)
    idx = torch.searchsorted(xs, grid).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
    return y0 + (y1 - y0) * (grid - x0) / (x1 - x0).clamp(min=1)


def _bn_params(norm: nn.Module | None) -> tuple:
    """The BatchNorm arguments of ``fold_batchnorm`` (gamma, beta, mean, var, eps); all None without a norm."""
    if norm is None:
        return (None, None, None, None)
    return (norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps)


def _nm_scales(mod: nn.Module, norm: nn.Module | None, keep, pruned, s) -> torch.Tensor:
    n = mod.weight.shape[0]
    if norm is None:  # no BN: unit gamma and variance, the bias as beta
        ones = torch.ones(n)
        gamma, beta, mean, var, eps = ones, (mod.bias if mod.bias is not None else 0 * ones), 0 * ones, ones, 0.0
    else:
        gamma, beta, mean, var, eps = _bn_params(norm)
    return neuron_merging_scales(
        mod.weight,
        gamma,
        beta,
        mean,
        var,
        keep,
        pruned,
        eps=eps,
        lam=s["nm_lambda"],
        threshold=s["nm_threshold"],
        variant=s["nm_variant"],
    )


def _validate(model: Any, s: dict[str, Any]) -> dict[str, Any]:
    """Check every argument of ``compress``; return them normalised (floats, ints)."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"model must be a torch.nn.Module, got {type(model).__name__}. Create one first, e.g. "
            "timm.create_model('resnet34', pretrained=True)."
        )
    ratio, bits = s["prune_ratio"], s["bits"]
    if isinstance(ratio, bool) or not isinstance(ratio, Real) or not 0 <= ratio < 1:
        raise InvalidArgumentError(f"prune_ratio must be a number in [0, 1), got {ratio!r}.")
    if bits is not None and (
        isinstance(bits, bool) or not isinstance(bits, Integral) or not MIN_BITS <= bits <= MAX_BITS
    ):
        raise InvalidArgumentError(
            f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, or None for full precision; got {bits!r}."
        )
    choices = {
        "method": METHODS,
        "criterion": CRITERIA,
        "granularity": GRANULARITIES,
        "reference": REFERENCES,
        "nm_variant": NM_VARIANTS,
        "layer_ratios": LAYER_RATIOS,
        "fit": (None, *FITS),
        "quant_correction": (None, *QUANT_CORRECTIONS),
    }
    for name, accepted in choices.items():
        if s[name] not in accepted:
            listed = ", ".join(str(a) for a in accepted)
            raise InvalidArgumentError(f"{name} must be one of {listed}; got {s[name]!r}.")
    for name in ("nonnegative", "bias_correction", "variance_correction"):
        if s[name] is not None and not isinstance(s[name], bool):
            raise InvalidArgumentError(
                f"{name} must be True or False (or None for the method's default); got {s[name]!r}."
            )
    if s["nonnegative"] is None:
        raise InvalidArgumentError("nonnegative must be True or False; got None.")
    ranges = {"alpha1": (0, math.inf), "alpha2": (0, math.inf), "nm_lambda": (0, 1), "nm_threshold": (-1, 1)}
    for name, (lo, hi) in ranges.items():
        value = s[name]
        if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value) or not lo <= value <= hi:
            raise InvalidArgumentError(f"{name} must be a number in [{lo}, {hi}], got {value!r}.")
    if ratio == 0 and bits is None:
        raise InvalidArgumentError(
            "Nothing to do: prune_ratio=0 and bits=None. Set a prune_ratio in (0, 1), bits in 2..8, or both."
        )
    out = dict(s)
    for name, value in PRESETS[s["method"]].items():
        if out[name] is None:
            out[name] = value
    if out["fit"] is not None and s["method"] not in ("udfc", "udfc+"):
        raise InvalidArgumentError(
            f"fit applies to method udfc or udfc+ only; method={s['method']!r} chooses its scales its own way."
        )
    if s["nonnegative"] and (s["method"] not in ("udfc", "udfc+") or out["fit"] != "linear"):
        raise InvalidArgumentError("nonnegative=True needs method 'udfc' or 'udfc+' with fit='linear'.")
    out.update({name: float(s[name]) for name in ("prune_ratio", *ranges)})
    out["bits"] = None if bits is None else int(bits)
    return out
