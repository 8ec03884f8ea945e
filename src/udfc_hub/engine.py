"""The compression engine: walks an adapter's ``ModelSpec``, calls the tensor math, rewrites the modules.

Layers are visited in forward order. For a layer that produces a prunable group, the kept channels are chosen
and the pruning scales solved against its full-precision weights; its kept filters are then quantized and
UDFC's correction t solved; finally the consumers receive ``V'[:, i] = t_i (V[:, i] + sum_j s_ji V[:, j])``
before they are themselves visited. A layer with no single consumer that can absorb t folds it into its own
BatchNorm, or into its output rows when it has none.
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
    fold_batchnorm,
    merge_into_consumer,
    neuron_merging_scales,
    prune_loss,
    quantize_dorefa,
    rank_channels,
    solve_prune_scales,
    solve_quant_correction,
)
from .profile import ModelStats, profile_model
from .surgery import set_param, slice_channels, sync_shape_attrs

__all__ = ["METHODS", "REFERENCES", "LayerReport", "CompressionReport", "CompressionResult", "compress"]

METHODS = ("udfc", "nm", "prune", "rtn")
REFERENCES = ("compensated", "original")


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
    correction: str | None = None  # where UDFC's t went: "consumer", "norm" or "rows"
    t_range: tuple[float, float] | None = None


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
    method: str = "udfc",
    criterion: str = "l2",
    *,
    granularity: str = "tensor",
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
        model: a supported model (timm ResNet family, CIFAR ResNet); it is never modified.
        prune_ratio: fraction of each prunable group's channels to remove, in [0, 1). 0 = quantize only.
        bits: weight bit-width, an integer in 2..8, or None for full-precision weights (prune only).
        method: ``"udfc"`` (closed-form compensation, the paper), ``"nm"`` (Neuron Merging),
            ``"prune"`` or ``"rtn"`` (no compensation; the two are the same operation under two names).
        criterion: ``"l1"`` or ``"l2"`` filter norm used to choose the channels to keep.
        granularity: quantizer scale per ``"tensor"`` (the paper) or per output ``"channel"``.
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
    run = _Run(model, original, spec, settings)
    layers = spec.layers
    if progress:
        from tqdm.auto import tqdm

        layers = tqdm(layers, desc="compressing", unit="layer")
    for layer in layers:
        run.visit(layer)
    model.eval()
    after = profile_model(model, input_size)
    report = CompressionReport(
        family=spec.family,
        settings=settings,
        layers=run.reports,
        before=before,
        after=after,
        seconds=time.perf_counter() - start,
        notes=list(spec.notes),
    )
    return CompressionResult(model=model, report=report, quantized=run.quantized, spec=spec)


class _Run:
    """State of one compression pass over a copy of the model."""

    def __init__(self, model: nn.Module, original: nn.Module, spec: ModelSpec, settings: dict[str, Any]):
        self.model = model
        self.original = original
        self.s = settings
        self.groups: dict[str, ChannelGroup] = {g.producer.name: g for g in spec.groups}
        self.quantized: dict[str, QuantizedTensor] = {}
        self.reports: list[LayerReport] = []

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
        report = LayerReport(name=layer.name, out_channels=n_out, kept_channels=n_out, bits=s["bits"])

        if group is not None and s["prune_ratio"] > 0:
            src = self.original if s["reference"] == "original" else self.model
            ref = src.get_submodule(layer.name)
            ref_norm = src.get_submodule(layer.norm) if layer.norm else None
            n_keep = max(1, math.floor(round((1 - s["prune_ratio"]) * n_out, 9)))
            keep, pruned = rank_channels(ref.weight, n_keep, s["criterion"])
            folded = fold_batchnorm(ref.weight, ref.bias, *_bn_params(ref_norm))
            if s["method"] == "udfc":
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
            report.kept_channels = len(keep)

        t = None
        if s["bits"] is not None:
            w = mod.weight.detach()
            qt = quantize_dorefa(w, s["bits"], s["granularity"])
            wq = qt.dequantize(w.dtype).to(w.device)
            report.quant_error = float((wq - w).norm() / w.norm().clamp(min=1e-30))
            if s["method"] == "udfc":
                bn = _bn_params(norm)
                ref = fold_batchnorm(w, mod.bias, *bn)
                t = solve_quant_correction(ref.R, fold_batchnorm(wq, mod.bias, *bn).R, ref.K, s["alpha2"])
                report.t_range = (float(t.min()), float(t.max()))
            set_param(mod, "weight", wq)
            self.quantized[layer.name] = qt

        to_consumers = (
            group is not None
            and group.scale_commutes
            and (t is None or bool((t > 0).all()))
            and not any(c.name in self.quantized for c in group.consumers)
        )
        if group is not None:
            for c in group.consumers:
                consumer = self.model.get_submodule(c.name)
                merged = merge_into_consumer(
                    consumer.weight, keep, pruned, scales, t if to_consumers else None, dim=c.dim
                )
                set_param(consumer, "weight", merged)
                sync_shape_attrs(consumer)
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
    }
    for name, accepted in choices.items():
        if s[name] not in accepted:
            raise InvalidArgumentError(f"{name} must be one of {', '.join(accepted)}; got {s[name]!r}.")
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
    out.update({name: float(s[name]) for name in ("prune_ratio", *ranges)})
    out["bits"] = None if bits is None else int(bits)
    return out
