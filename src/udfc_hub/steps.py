"""The per-layer pass of the engine as small steps that take and return values.

For a layer that produces a prunable group: ``plan_pruning`` (select the kept channels, solve the
compensation) -> ``apply_pruning`` (slice the producer, its norm and aligned modules). For every layer:
``quantize_layer`` (codes, UDFC's t or the scale correction) -> ``remove_expected_shift`` (bias correction).
Then ``compensate_consumers`` (merge the pruned channels into the consumers, add the intercepts, rescale the
consumer BN variance) and ``place_correction`` (where t goes when the consumers cannot take it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from .adapters import ChannelGroup, Layer
from .config import CompressionConfig
from .ops import (
    MOMENT_CRITERIA,
    NORM_CRITERIA,
    QuantizedTensor,
    ReluMoments,
    depthwise_correlation,
    expected_output_shift,
    feedback_quantize,
    filter_correlation,
    fold_batchnorm,
    intercepts,
    keep_largest,
    merge_into_consumer,
    neuron_merging_scales,
    output_importance,
    prune_loss,
    quantize_dorefa,
    rank_channels,
    relu_moments,
    relu_variance,
    select_rebuildable,
    shrink_towards,
    solve_nonnegative_scales,
    solve_prune_scales,
    solve_quant_correction,
    solve_relu_scales,
    variance_ratio,
)
from .surgery import set_param, slice_channels, sync_shape_attrs

__all__ = [
    "PrunePlan",
    "QuantizedLayer",
    "bn_params",
    "plan_pruning",
    "depthwise_moments",
    "moment_model",
    "channel_correlation",
    "moment_variances",
    "consumer_weights",
    "apply_pruning",
    "quantize_layer",
    "remove_expected_shift",
    "compensate_consumers",
    "place_correction",
]


def bn_params(norm: nn.Module | None) -> tuple:
    """The BatchNorm arguments of ``fold_batchnorm`` (gamma, beta, mean, var, eps); all None without a norm."""
    if norm is None:
        return (None, None, None, None)
    return (norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps)


@dataclass
class PrunePlan:
    """Which channels of a producer stay, and how the consumers absorb the others.

    ``scales[j, i]``: pruned channel j approximated by ``sum_i scales[j, i] * kept channel i`` (None: plain
    removal). ``moments``: the Gaussian-ReLU model of the channels, when the group allows it and a step uses it.
    ``fallback``: udfc+ wanted the moment model but the group does not declare a ReLU after its norm.
    """

    keep: torch.Tensor
    pruned: torch.Tensor
    scales: torch.Tensor | None
    moments: ReluMoments | None
    solver: str | None
    residual: float
    fallback: bool = False


def uses_moments(cfg: CompressionConfig) -> bool:
    relu_fit = cfg.method in ("udfc", "udfc+") and cfg.fit == "relu"
    return relu_fit or bool(cfg.bias_correction) or bool(cfg.variance_correction)


@torch.no_grad()
def plan_pruning(
    ref: nn.Module,
    ref_norm: nn.Module | None,
    group: ChannelGroup,
    n_keep: int,
    cfg: CompressionConfig,
    depthwise: tuple[nn.Module, nn.Module] | None = None,
    consumers: list[tuple[torch.Tensor, int]] = (),
    measured: tuple[torch.Tensor, int] | None = None,
) -> PrunePlan:
    """Choose ``n_keep`` of ``ref``'s channels by ``cfg.criterion`` and solve the pruning scales of ``cfg.method``.

    ``depthwise``: the group's depthwise conv and its BatchNorm (``group.depthwise``), whose output the
    consumers read; the moment model and the fit are then taken there. ``consumers``: their weights and input
    dimensions (``consumer_weights``), which the moment criteria weigh each channel with. ``measured``: the
    correlations of ``ref_norm``'s outputs and their number of samples (``correlations="probe"``).
    """
    folded = fold_batchnorm(ref.weight, ref.bias, *bn_params(ref_norm))
    moments, fallback = None, False
    through = depthwise is not None and cfg.method in ("udfc", "udfc+")
    if through or uses_moments(cfg) or cfg.criterion in MOMENT_CRITERIA:
        moments = moment_model(folded, ref_norm, group, depthwise, measured)
        fallback = moments is None and uses_moments(cfg) and not group.relu_after_norm
    if cfg.criterion == "moments" and moments is not None:
        keep, pruned = keep_largest(output_importance(torch.diagonal(moments.cov), list(consumers)), n_keep)
    elif cfg.criterion == "rebuild" and moments is not None:
        keep, pruned = select_rebuildable(moments.cov, list(consumers), n_keep)
    else:
        keep, pruned = rank_channels(ref.weight, n_keep, cfg.criterion if cfg.criterion in NORM_CRITERIA else "l2")
    if through:
        # the depthwise output is what the consumers read: the fit happens there, in the moment model
        scales = solve_relu_scales(moments, keep, pruned)
        return PrunePlan(
            keep, pruned, scales, moments, "depthwise-moments", _moment_residual(moments, keep, pruned, scales)
        )
    scales, solver = _solve_scales(ref, ref_norm, folded, keep, pruned, moments, cfg)
    zero = torch.zeros(len(pruned), len(keep), dtype=torch.float64)
    loss = prune_loss(folded, keep, pruned, zero if scales is None else scales, cfg.alpha1)
    residual = float(loss.mean()) if len(pruned) else 0.0
    return PrunePlan(keep, pruned, scales, moments, solver, residual, fallback)


@torch.no_grad()
def moment_model(
    folded,
    norm: nn.Module | None,
    group: ChannelGroup,
    depthwise: tuple[nn.Module, nn.Module] | None = None,
    measured: tuple[torch.Tensor, int] | None = None,
) -> ReluMoments | None:
    """The moments of what the group's consumers read, from the BatchNorm statistics; None where the group has no
    such model (no ReLU right after its norm). ``measured``: correlations of the BN outputs and the number of
    samples behind them (the probe's), used instead of the filters' cosines, shrunk towards them by
    ``n / (n + samples)`` for n channels; for a depthwise group, those of the depthwise conv's BN outputs, used
    instead of ``depthwise_correlation``'s."""
    if depthwise is not None:
        return depthwise_moments(folded, norm, *depthwise, group.relu_cap, measured)
    if group.relu_after_norm and norm is not None:
        # BN output of channel i ~ N(beta_i, gamma_i^2), correlated like the folded filters (white inputs) or
        # as measured
        return relu_moments(norm.bias, norm.weight.abs(), channel_correlation(folded, measured), cap=group.relu_cap)
    return None


def channel_correlation(folded, measured: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
    """The moment model's correlation of a group's BN outputs: the cosines of the BN-folded filters (an input with
    identity covariance), or ``measured = (corr, samples)`` shrunk towards them by ``n / (n + samples)``."""
    filters = filter_correlation(folded.R)
    return filters if measured is None else shrink_towards(measured[0], filters, measured[1])


def moment_variances(
    norm: nn.Module | None, group: ChannelGroup, depthwise: tuple[nn.Module, nn.Module] | None = None
) -> torch.Tensor | None:
    """The diagonal of ``moment_model``'s covariance in closed form (``relu_variance``), without its quadrature:
    each channel's variance depends only on its own BatchNorm (the depthwise BN's, through a depthwise conv)."""
    if depthwise is not None:
        dw_norm = depthwise[1]
        return relu_variance(dw_norm.bias.detach(), dw_norm.weight.detach().abs(), group.relu_cap)
    if group.relu_after_norm and norm is not None:
        return relu_variance(norm.bias.detach(), norm.weight.detach().abs(), group.relu_cap)
    return None


def consumer_weights(
    group: ChannelGroup, module: Callable[[str], nn.Module], norm_of: Callable[[str], nn.Module | None]
):
    """Each consumer's weight in the units of its BatchNorm's output (rows times ``|gamma / sigma|``; as is without
    a norm), with the dimension its input channels run along: what the moment criteria weigh channels with."""
    out = []
    for c in group.consumers:
        w = module(c.name).weight.detach()
        norm = norm_of(c.name)
        if norm is not None and c.dim == 1:
            gain = (norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)).abs()
            w = w * gain.reshape((-1,) + (1,) * (w.ndim - 1))
        out.append((w, c.dim))
    return out


def depthwise_moments(
    folded,
    norm: nn.Module,
    dw: nn.Module,
    dw_norm: nn.Module,
    cap: float | None,
    measured: tuple[torch.Tensor, int] | None = None,
) -> ReluMoments:
    """Moments of ``act(dw_norm(dw(act(norm(producer)))))``: the producer's BN outputs as udfc+ models them
    (N(beta, gamma^2), correlated like the folded filters), through the activation, the depthwise kernels
    (``depthwise_correlation``, the spatial correlation read from ``dw_norm``'s running variance) and the second
    BN (N(beta2, gamma2^2), the sign of gamma2 carried into the correlation), through the activation again.
    ``measured``: the correlations of ``dw_norm``'s outputs and their number of samples (the probe's), used
    instead of the modelled ones, shrunk towards them by ``n / (n + samples)``."""
    inner = relu_moments(norm.bias, norm.weight.abs(), filter_correlation(folded.R), cap=cap, fast=True)
    corr = depthwise_correlation(inner.cov, dw.weight.detach(), dw_norm.running_var.detach())
    sign = torch.sign(dw_norm.weight.detach().to(torch.float64))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    corr = corr * sign[:, None] * sign[None, :]
    if measured is not None:
        corr = shrink_towards(measured[0], corr, measured[1])
    return relu_moments(dw_norm.bias, dw_norm.weight.abs(), corr, cap=cap, fast=True)


def _moment_residual(moments: ReluMoments, keep, pruned, scales) -> float:
    """Mean over the pruned channels of ``Var(a_j - s_j a_S) / Var(a_j)`` in the moment model (the report's
    residual for a depthwise group, where the filter-space loss of ``prune_loss`` means nothing)."""
    if not len(pruned):
        return 0.0
    C = moments.cov
    var = torch.diagonal(C)[pruned]
    left = var - 2 * (scales * C[pruned][:, keep]).sum(1) + ((scales @ C[keep][:, keep]) * scales).sum(1)
    return float(torch.where(var > 0, left / var.clamp(min=1e-300), torch.zeros_like(var)).mean())


def _solve_scales(ref, ref_norm, folded, keep, pruned, moments, cfg: CompressionConfig):
    """(scales, solver name) of the method; (None, None) for the methods without compensation."""
    if cfg.method in ("udfc", "udfc+"):
        if cfg.fit == "relu" and moments is not None:
            return solve_relu_scales(moments, keep, pruned), "relu-moments"
        if cfg.nonnegative:
            RS = folded.R[keep]
            return solve_nonnegative_scales(RS @ RS.T, RS @ folded.R[pruned].T), "nonnegative"
        solution = solve_prune_scales(folded, keep, pruned, cfg.alpha1)
        return solution.scales, solution.solver
    if cfg.method == "nm":
        return _nm_scales(ref, ref_norm, keep, pruned, cfg), None
    return None, None


def _nm_scales(mod: nn.Module, norm: nn.Module | None, keep, pruned, cfg: CompressionConfig) -> torch.Tensor:
    n = mod.weight.shape[0]
    if norm is None:  # no BN: unit gamma and variance, the bias as beta
        ones = torch.ones(n)
        gamma, beta, mean, var, eps = ones, (mod.bias if mod.bias is not None else 0 * ones), 0 * ones, ones, 0.0
    else:
        gamma, beta, mean, var, eps = bn_params(norm)
    return neuron_merging_scales(
        mod.weight, gamma, beta, mean, var, keep, pruned,
        eps=eps, lam=cfg.nm_lambda, threshold=cfg.nm_threshold, variant=cfg.nm_variant,
    )  # fmt: skip


@torch.no_grad()
def apply_pruning(
    model: nn.Module, layer: Layer, group: ChannelGroup, keep: torch.Tensor, means: dict[str, torch.Tensor]
) -> None:
    """Keep only channels ``keep`` of the producer, its norm and the modules aligned with it (in place)."""
    n_out = model.get_submodule(layer.name).weight.shape[0]
    for name in (layer.name, layer.norm, *group.aligned):
        if name:
            slice_channels(model.get_submodule(name), keep)
    for name in group.aligned:
        if name in means and means[name].shape[0] == n_out:  # a depthwise conv's input
            means[name] = means[name][keep]


@dataclass
class QuantizedLayer:
    """A layer's quantized weight: its codes, the float weight they give, and UDFC's t where one was solved."""

    qt: QuantizedTensor
    weight: torch.Tensor
    error: float  # ||W~ - W|| / ||W||
    t: torch.Tensor | None = None  # UDFC's per-channel correction, still to be placed (place_correction)
    t_range: tuple[float, float] | None = None
    correction: str | None = None  # "scale" when t was folded into the scales here
    feedback: tuple[float, float] | None = None  # rounding="probe": expected output error, nearest vs chosen


@torch.no_grad()
def quantize_layer(
    mod: nn.Module, norm: nn.Module | None, cfg: CompressionConfig, inputs: torch.Tensor | None = None
) -> QuantizedLayer:
    """Quantize ``mod.weight`` to ``cfg.bits`` and solve the quantization correction of ``cfg``.

    ``inputs``: the ``(groups, d, d)`` statistics of what one output row reads (``probe.tap_covariance``); given,
    the codes are chosen by ``round_with_feedback`` under it (``rounding="probe"``), else by nearest rounding."""
    w = mod.weight.detach()
    qt = quantize_dorefa(w, cfg.bits, cfg.granularity, cfg.grid or "dorefa")
    feedback = None
    groups = getattr(mod, "groups", 1)
    if inputs is not None and tuple(inputs.shape) == (groups, w[0].numel(), w[0].numel()):
        qt, *feedback = feedback_quantize(qt, w, inputs, groups)
    wq = qt.dequantize(w.dtype).to(w.device)
    out = QuantizedLayer(qt, wq, float((wq - w).norm() / w.norm().clamp(min=1e-30)))
    out.feedback = tuple(feedback) if feedback else None
    if cfg.quant_correction == "udfc":
        bn = bn_params(norm)
        ref = fold_batchnorm(w, mod.bias, *bn)
        out.t = solve_quant_correction(ref.R, fold_batchnorm(wq, mod.bias, *bn).R, ref.K, cfg.alpha2)
        out.t_range = (float(out.t.min()), float(out.t.max()))
    elif cfg.quant_correction == "scale":  # t = <w~, w> / <w~, w~> per row, bias untouched
        tw = solve_quant_correction(w, wq, torch.zeros(wq.shape[0]), 0.0)
        out.qt = _rescaled(qt, tw)
        out.weight = out.qt.dequantize(w.dtype).to(w.device)
        out.t_range, out.correction = (float(tw.min()), float(tw.max())), "scale"
    return out


def _rescaled(qt: QuantizedTensor, t: torch.Tensor) -> QuantizedTensor:
    shape = (-1,) + (1,) * (qt.codes.ndim - 1)
    return QuantizedTensor(qt.codes, qt.scale * t.to(qt.scale).reshape(shape), qt.bits, qt.grid)


@torch.no_grad()
def remove_expected_shift(
    mod: nn.Module, norm: nn.Module | None, delta: torch.Tensor, mean: torch.Tensor
) -> float | None:
    """Remove ``E[delta_W x]`` (x's mean ``mean``) through the next BN's running mean, or the bias.

    Returns the largest shift removed, or None when there was nowhere to put it or the input changed shape.
    """
    groups = getattr(mod, "groups", 1)
    if mean.shape[0] != delta.shape[1] * groups:  # the input was changed in a way the probe cannot follow
        return None
    shift = expected_output_shift(delta, mean, groups)
    if norm is not None:
        set_param(norm, "running_mean", norm.running_mean + shift.to(norm.running_mean))
    elif mod.bias is not None:
        set_param(mod, "bias", mod.bias - shift.to(mod.bias))
    else:
        return None
    return float(shift.abs().max())


@torch.no_grad()
def compensate_consumers(
    model: nn.Module,
    group: ChannelGroup,
    plan: PrunePlan | None,
    t: torch.Tensor | None,
    cfg: CompressionConfig,
    means: dict[str, torch.Tensor],
    norm_of: Callable[[str], nn.Module | None],
) -> tuple[tuple[float, float] | None, list[str]]:
    """Give every consumer of ``group`` its merged input columns (and t, when given); add each pruned channel's
    missed mean to the consumer (bias correction) and rescale the consumer BN's variance (variance correction).

    ``plan=None``: the group was not pruned (only t moves). Returns the range of the variance factors and notes.
    """
    n_in = model.get_submodule(group.producer.name).weight.shape[0]
    keep = plan.keep if plan is not None else torch.arange(n_in)
    pruned = plan.pruned if plan is not None else keep[:0]
    scales = plan.scales if plan is not None else None
    moments = plan.moments if plan is not None else None
    icpt = None
    if moments is not None and cfg.bias_correction and len(pruned):
        icpt = intercepts(moments.mean, keep, pruned, scales)
    ratios, notes = [], []
    for c in group.consumers:
        consumer = model.get_submodule(c.name)
        before = consumer.weight.detach()
        plain = merge_into_consumer(before, keep, pruned, scales, None, dim=c.dim)
        merged = plain if t is None else merge_into_consumer(before, keep, pruned, scales, t, dim=c.dim)
        set_param(consumer, "weight", merged)
        sync_shape_attrs(consumer)
        if c.dim == 1 and c.name in means and len(pruned):
            means[c.name] = means[c.name][keep]
        c_norm = norm_of(c.name)
        if icpt is not None:
            notes += _add_intercept(consumer, c_norm, before, pruned, icpt, c.dim)
        if moments is not None and cfg.variance_correction and len(pruned) and c_norm is not None:
            ratio = variance_ratio(before, plain, moments.cov, keep, dim=c.dim)
            set_param(c_norm, "running_var", c_norm.running_var * ratio.to(c_norm.running_var))
            ratios.append(ratio)
    if not ratios:
        return None, notes
    allr = torch.cat(ratios)
    return (float(allr.min()), float(allr.max())), notes


def _add_intercept(consumer, c_norm, weight, pruned, icpt, dim: int) -> list[str]:
    """The consumer's output gains ``sum_j V[:, j] b_j`` (summed over kernel taps; borders ignored)."""
    v = weight.detach().movedim(dim, 1).to(torch.float64)[:, pruned]
    delta = (v.reshape(v.shape[0], v.shape[1], -1).sum(-1) @ icpt).reshape(-1)
    if c_norm is not None:
        set_param(c_norm, "running_mean", c_norm.running_mean - delta.to(c_norm.running_mean))
    elif consumer.bias is not None:
        set_param(consumer, "bias", consumer.bias + delta.to(consumer.bias))
    else:
        return [f"{consumer.__class__.__name__} consumer without bias or BN: intercept dropped"]
    return []


@torch.no_grad()
def place_correction(
    mod: nn.Module, norm: nn.Module | None, qt: QuantizedTensor, t: torch.Tensor
) -> tuple[QuantizedTensor, str]:
    """Apply t to the layer itself when its consumers cannot take it: into its BN's affine parameters, else into
    its weight scales and bias. Returns the (possibly rescaled) codes and where t went."""
    if norm is not None:
        set_param(norm, "weight", norm.weight * t.to(norm.weight))
        set_param(norm, "bias", norm.bias * t.to(norm.bias))
        return qt, "norm"
    qt = _rescaled(qt, t)
    set_param(mod, "weight", qt.dequantize(mod.weight.dtype).to(mod.weight.device))
    if mod.bias is not None:
        set_param(mod, "bias", mod.bias * t.to(mod.bias))
    return qt, "rows"
