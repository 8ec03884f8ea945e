"""The compression engine: walks an adapter's ``ModelSpec`` and runs the per-layer steps (``steps.py``).

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
from collections import Counter
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from .adapters import ChannelGroup, Layer, ModelSpec, describe_model
from .config import (
    FITS,
    LAYER_RATIOS,
    METHODS,
    PRESETS,
    QUANT_CORRECTIONS,
    REFERENCES,
    CompressionConfig,
)
from .dataflow import OUTPUT_BITS, plan_int8_flow
from .distill import (
    DISTILL_STEPS,
    MIN_ROWS_PER_INPUT,
    distill_images,
    recorded_norms,
    refit_layers,
)
from .errors import InvalidArgumentError, UdfcError
from .ops import (
    MAX_BITS,
    MIN_BITS,
    MOMENT_CRITERIA,
    NORM_CRITERIA,
    QuantizedTensor,
    allocate_bits,
    allocate_greedy,
    fold_batchnorm,
    loss_curve,
    output_importance,
    quantize_dorefa,
    shrunk_covariance,
    uniform_widths,
)
from .ops.activations import image_range
from .ops.rounding import MAX_INPUTS
from .probe import has_batchnorm, probe_activation_ranges, probe_batch_size, probe_statistics, probe_stream_shares
from .profile import default_input_size, input_device_dtype, profile_model
from .report import CompressionReport, CompressionResult, LayerReport
from .steps import (
    PrunePlan,
    apply_pruning,
    bn_params,
    compensate_consumers,
    consumer_weights,
    moment_variances,
    place_correction,
    plan_pruning,
    quantize_layer,
    remove_expected_shift,
    uses_moments,
)
from .surgery import install_input_quantizer, set_param

__all__ = [
    "METHODS",
    "FITS",
    "QUANT_CORRECTIONS",
    "LAYER_RATIOS",
    "REFERENCES",
    "PRESETS",
    "CompressionConfig",
    "LayerReport",
    "CompressionReport",
    "CompressionResult",
    "compress",
]


def compress(
    model: nn.Module,
    config: CompressionConfig | None = None,
    *,
    input_size: tuple[int, int, int] | None = None,
    progress: bool = False,
    **options: Any,
) -> CompressionResult:
    """Compress ``model`` without data: structured pruning plus low-bit weights, repaired in closed form.

    Args:
        model: a supported model (see ``udfc_hub.adapters``); it is never modified.
        config: a ``udfc_hub.CompressionConfig``; default: its defaults (udfc+, 30 % pruning, 6-bit weights).
        input_size: (C, H, W) for counting MACs; default: the model's timm ``pretrained_cfg``.
        progress: show a progress bar over layers (and over the distillation's steps with ``refit="distilled"``).
        **options: any option of ``CompressionConfig``, overriding ``config``: ``prune_ratio`` (in [0, 1)),
            ``bits`` (2..8, or None for float weights), ``method`` (``"udfc+"``, ``"udfc"``, ``"nm"``,
            ``"prune"``, ``"rtn"``), ``criterion``, ``granularity``, ``fit``, ``nonnegative``,
            ``bias_correction``, ``variance_correction``, ``quant_correction``, ``layer_ratios``, ``bit_widths``,
            ``alpha1``, ``alpha2``, ``reference``, ``nm_variant``, ``nm_lambda``, ``nm_threshold``, ``act_bits``,
            ``act_range``, ``grid``, ``rounding``. Each option's meaning
            and accepted values are in ``CompressionConfig``'s fields (and ``udfc-hub compress --help``).

    Example:
        >>> import timm, udfc_hub
        >>> result = udfc_hub.compress(timm.create_model("resnet18"), prune_ratio=0.3, bits=6)
        >>> result.report.after.params < result.report.before.params
        True
    """
    _check_model(model)
    cfg = CompressionConfig.build(config, **options).resolved()
    start = time.perf_counter()
    spec = describe_model(model)
    input_size = _check_input_size(input_size)
    try:
        before = profile_model(model, input_size)
    except (RuntimeError, ValueError, TypeError) as e:  # the model cannot run on that input
        if input_size is None:
            raise
        raise InvalidArgumentError(
            f"input_size {input_size} does not fit this model ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "give (channels, height, width) as the model takes them, e.g. (3, 224, 224), or leave it out to use "
            "the model's pretrained_cfg."
        ) from None
    # the solves run on the CPU (a model on an accelerator is copied there, and the result moved back); only the
    # distillation of refit="distilled" runs where the model is
    device = input_device_dtype(model)[0]
    source = model if device.type == "cpu" else copy.deepcopy(model).cpu()
    work = copy.deepcopy(source)
    notes = list(spec.notes)
    distilled = _distill(model, cfg, input_size, notes, progress)
    n_keep = allocate_widths(work, spec, cfg, input_size, notes) if cfg.prune_ratio > 0 else {}
    means, correlations, covariances = _probe(work, spec, cfg, n_keep, input_size, notes)
    run = _Pass(work, source, spec, cfg, means, n_keep, correlations, covariances)
    if cfg.bits is not None and cfg.bit_widths == "mixed":
        run.layer_bits = allocate_layer_bits(work, spec, cfg)
        notes.append(_mixed_note(run.layer_bits, cfg.bits))
    layers = spec.layers
    if progress:
        from tqdm.auto import tqdm

        layers = tqdm(layers, desc="compressing", unit="layer")
    for layer in layers:
        run.visit(layer)
    if distilled is not None:
        notes.append(run.refit(distilled))
    if cfg.act_bits is not None:
        notes += quantize_activations(work, spec, cfg, input_size, run.quantized)
    work.eval()
    bad = _first_non_finite(work)
    if bad is not None:
        raise UdfcError(
            f"compression produced NaN or infinite values in {bad}; please report this with the model and options."
        )
    report = CompressionReport(
        family=spec.family,
        config=cfg,
        layers=run.reports,
        before=before,
        after=profile_model(work, input_size),
        seconds=time.perf_counter() - start,
        notes=notes + run.finish(),
    )
    return CompressionResult(model=work.to(device), report=report, quantized=run.quantized, spec=spec)


def _first_non_finite(model: nn.Module) -> str | None:
    for name, t in model.state_dict().items():
        # amax propagates NaN and keeps inf: one reduction, no boolean copy of the tensor
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.detach().abs().amax())):
            return name
    return None


def _check_input_size(size) -> tuple[int, ...] | None:
    """None, or (C, H, W) (a plain MLP: its features) as positive integers."""
    if size is None:
        return None
    ok = isinstance(size, (tuple, list)) and 1 <= len(size) <= 3
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 16384 for v in size):
        raise InvalidArgumentError(
            f"input_size must be (channels, height, width) as positive integers, e.g. (3, 224, 224); got {size!r}."
        )
    return tuple(size)


def _check_model(model: Any) -> None:
    """Refuse what cannot be compressed faithfully, naming the problem: not a module, no weights, a half-precision
    model (the solves and the stored weights are float32: compress ``model.float()``), NaN or Inf values."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"model must be a torch.nn.Module, got {type(model).__name__}. Create one first, e.g. "
            "timm.create_model('resnet34', pretrained=True)."
        )
    for name, t in model.state_dict().items():
        if t.is_meta:
            raise InvalidArgumentError(
                f"model has no weights ({name} is on the meta device); load or initialise it before compressing."
            )
        if t.is_floating_point() and t.dtype != torch.float32:
            raise InvalidArgumentError(
                f"model is {t.dtype} ({name}); udfc-hub computes and stores float32 weights. Compress "
                "model.float() instead (the packed k-bit weights are as small either way)."
            )
    bad = _first_non_finite(model)
    if bad is not None:
        raise InvalidArgumentError(f"model holds NaN or infinite values in {bad}; compression needs finite weights.")


def _probe(model, spec: ModelSpec, cfg: CompressionConfig, n_keep, input_size, notes: list[str]):
    """The BN-matched probe over the input model, for what the options need: each layer's mean input (the
    quantization bias correction) and, with ``correlations="probe"``, the correlations of each pruned group's BN
    outputs where the moment model reads them (a group with a ReLU after its norm), from one pass of white noise;
    a second pass, of noise with natural images' spectrum and colour correlation, for the groups through a
    depthwise conv (their depthwise conv's BN outputs) and, with ``rounding="probe"``, each layer's input
    covariance. Returns (means, correlations by norm name, covariances)."""
    feedback = cfg.rounding == "probe" and cfg.bits is not None
    all_layers = [layer.name for layer in spec.layers]
    mean_names = all_layers if cfg.bias_correction and cfg.bits is not None else []
    moments = cfg.correlations == "probe" and (uses_moments(cfg) or cfg.criterion in MOMENT_CRITERIA)
    corr_names = [
        g.producer.norm
        for g in spec.groups
        if moments and g.producer.name in n_keep and g.producer.norm and g.relu_after_norm and g.depthwise is None
    ]
    # groups through a depthwise conv (their moment model, udfc and udfc+): the depthwise conv's BN outputs, in
    # the natural-noise pass (white noise did not help them, docs/research-log.md)
    dw_names = [
        g.depthwise.norm
        for g in spec.groups
        if cfg.correlations == "probe"
        and cfg.method in ("udfc", "udfc+")
        and g.producer.name in n_keep
        and g.depthwise is not None
        and g.depthwise.norm
    ]
    if not (mean_names or corr_names or dw_names or feedback):
        return {}, {}, {}
    if not has_batchnorm(model):
        if mean_names:
            notes.append("no BatchNorm statistics in this model: quantization bias correction was skipped")
        if corr_names or dw_names:
            notes.append("no BatchNorm statistics in this model: the moment model's correlations come from the filters")
        if feedback:
            notes.append(
                "no BatchNorm statistics in this model: rounding='probe' has no input statistics (nearest used)"
            )
        return {}, {}, {}
    size = tuple(input_size) if input_size is not None else default_input_size(model)
    means, found = probe_statistics(model, mean_names, corr_names, size)[:2] if mean_names or corr_names else ({}, {})
    wide = [n for n in all_layers if _row_inputs(model.get_submodule(n)) > MAX_INPUTS] if feedback else []
    if wide:
        notes.append(
            f"rounding='probe': {len(wide)} layer(s) reading more than {MAX_INPUTS} inputs per output keep nearest "
            f"rounding, e.g. {wide[0]}"
        )
    cov_names = [n for n in all_layers if n not in wide] if feedback else []
    covariances = {}
    if cov_names or dw_names:
        natural, covariances = _natural_pass(model, dw_names, cov_names, size, not cfg.bias_correction)
        found.update(natural)
    if corr_names or dw_names:
        n, dw = len(found), len(dw_names)
        notes.append(
            f"the moment model's correlations of {n} pruned group(s) measured in the BN-matched probe"
            + (f" ({dw} through a depthwise conv, at its BN, in natural-image-like noise)" if dw else "")
        )
    return means, found, covariances


def _distill(model: nn.Module, cfg: CompressionConfig, input_size, notes: list[str], progress: bool = False):
    """``refit="distilled"``: images distilled from the BatchNorm statistics (``distill.distill_images``), with
    a note; None (and a note) for a model without BatchNorm."""
    if cfg.refit != "distilled":
        return None
    if not recorded_norms(model):
        notes.append("no BatchNorm statistics in this model: refit='distilled' has nothing to distil images from")
        return None
    size = tuple(input_size) if input_size is not None else default_input_size(model)
    n = probe_batch_size(size)  # as many images as the probe: 64 at 32x32, 8 at 224x224
    images, first, last = distill_images(model, size, n, DISTILL_STEPS, progress=progress)
    images = images.cpu()  # the refit runs where the solves do
    notes.append(
        f"refit='distilled': {n} images distilled from the BatchNorm statistics in {DISTILL_STEPS} steps (gap to "
        f"the recorded means and stds, in units of the recorded stds: {first:.3g} -> {last:.3g})"
    )
    return images


def _row_inputs(mod: nn.Module) -> int:
    """How many inputs one output row of a conv or linear reads."""
    return mod.weight[0].numel()


def _natural_pass(model: nn.Module, corr_names: list[str], cov_names: list[str], size, with_mean: bool):
    """One probe pass of natural-image-like noise (``probe.natural_noise``): the correlations of the named norms'
    outputs, and ``rounding="probe"``'s statistics of each named layer's input: the covariance shrunk towards its
    diagonal where it had few samples, plus the outer product of the mean when no bias correction will remove the
    mean error. Returns (correlations, covariances)."""
    means, found, covariances = probe_statistics(
        model, cov_names if with_mean else [], corr_names, size, covariance_names=cov_names, natural=True
    )
    out = {}
    for name, (cov, samples) in covariances.items():
        h = shrunk_covariance(cov, samples)
        if with_mean:
            mu = means[name].reshape(cov.shape[0], -1).to(h.dtype)
            h = h + mu[:, :, None] * mu[:, None, :]
        out[name] = h
    return found, out


class _Pass:
    """State of one compression pass over a copy of the model: visits each layer and runs the steps."""

    def __init__(
        self,
        model,
        original,
        spec: ModelSpec,
        cfg: CompressionConfig,
        means,
        n_keep: dict[str, int],
        correlations,
        covariances=None,
    ):
        self.model = model
        self.original = original
        self.cfg = cfg
        self.groups: dict[str, ChannelGroup] = {g.producer.name: g for g in spec.groups}
        self.layers: dict[str, Layer] = {layer.name: layer for layer in spec.layers}
        self.means: dict[str, torch.Tensor] = means  # mean input of each layer under the BN-matched probe
        self.n_keep = n_keep
        self.quantized: dict[str, QuantizedTensor] = {}
        self.reports: list[LayerReport] = []
        self._notes: list[str] = []
        self._fallbacks: list[str] = []
        self.layer_bits: dict[str, int] = {}  # bit_widths="mixed": each layer's own bits
        # correlations="probe": the probe's (corr, samples) per producer norm
        self.correlations: dict[str, tuple[torch.Tensor, int]] = correlations
        # rounding="probe": each layer's input covariance (groups, d, d) in the probe, sliced as inputs are pruned
        self.covariances: dict[str, torch.Tensor] = covariances or {}
        self._feedback: list[tuple[float, float]] = []
        self._refit_feedback: list[tuple[float, float]] = []  # the same for the layers the refit rounds again
        self.kept_out: dict[str, torch.Tensor] = {}  # the original output channels each pruned layer kept

    def visit(self, layer: Layer) -> None:
        cfg = self.cfg
        mod = self.model.get_submodule(layer.name)
        norm = self._norm_of(layer.name)
        group = self.groups.get(layer.name)
        report = LayerReport(layer.name, mod.weight.shape[0], mod.weight.shape[0], cfg.bits)
        plan = self._prune(layer, group, report) if group is not None else None
        t = self._quantize(layer, mod, norm, report) if cfg.bits is not None else None
        to_consumers = (
            group is not None
            and group.scale_commutes
            and (t is None or bool((t > 0).all()))
            and not any(c.name in self.quantized for c in group.consumers)
        )
        if group is not None:
            t_in = t if to_consumers else None
            report.variance_range, notes = compensate_consumers(
                self.model, group, plan, t_in, cfg, self.means, self._norm_of
            )
            self._notes += notes
        if t is not None and to_consumers:
            report.correction = "consumer"
        elif t is not None:
            self.quantized[layer.name], report.correction = place_correction(mod, norm, self.quantized[layer.name], t)
        self.reports.append(report)

    def _prune(self, layer: Layer, group: ChannelGroup, report: LayerReport) -> PrunePlan | None:
        # n_keep lacks the groups with no closed form unless method="prune" (the adapter's note says so)
        if layer.name not in self.n_keep:
            return None
        src = self.original if self.cfg.reference == "original" else self.model
        ref = src.get_submodule(layer.name)
        ref_norm = src.get_submodule(layer.norm) if layer.norm else None
        through = _depthwise_modules(src, group)
        consumers = consumer_weights(group, src.get_submodule, partial(_norm_in, src, self.layers))
        # through a depthwise conv the model's correlations are those of the depthwise conv's BN outputs
        at = group.depthwise.norm if group.depthwise is not None else layer.norm
        measured = self.correlations.get(at) if at else None
        plan = plan_pruning(ref, ref_norm, group, self.n_keep[layer.name], self.cfg, through, consumers, measured)
        if plan.fallback:
            self._fallbacks.append(layer.name)
        apply_pruning(self.model, layer, group, plan.keep, self.means)
        for name in (layer.name, *group.aligned):
            if name in self.layers:
                self.kept_out[name] = plan.keep
        _keep_inputs(self.covariances, group, plan.keep, plan.keep.numel() + plan.pruned.numel())
        report.kept_channels, report.solver = len(plan.keep), plan.solver
        report.residual = plan.residual if len(plan.pruned) else None  # nothing removed: no loss to report
        return plan

    def _quantize(self, layer: Layer, mod: nn.Module, norm: nn.Module | None, report: LayerReport):
        """Quantize the layer's weight; return UDFC's t when one is still to be placed."""
        bits = self.layer_bits.get(layer.name, self.cfg.bits)
        cfg = self.cfg if bits == self.cfg.bits else self.cfg.replace(bits=bits)
        q = quantize_layer(mod, norm, cfg, self.covariances.pop(layer.name, None))
        if q.feedback is not None:
            self._feedback.append(q.feedback)
        report.bits = bits
        report.quant_error, report.t_range, report.correction = q.error, q.t_range, q.correction
        if self.cfg.bias_correction and layer.name in self.means:
            report.bias_shift = remove_expected_shift(mod, norm, q.weight - mod.weight.detach(), self.means[layer.name])
        set_param(mod, "weight", q.weight)
        self.quantized[layer.name] = q.qt
        return q.t

    def refit(self, images: torch.Tensor) -> str:
        """``refit="distilled"``: every layer refitted on the distilled images (``distill.refit_layers``);
        returns the report's note."""
        names = list(self.layers)
        norms = {}
        for name in names:
            layer = self.layers[name]
            if layer.norm:
                norms[name] = (self.model.get_submodule(layer.norm), self.original.get_submodule(layer.norm))
        residuals = {
            layer.name: layer.residual
            for layer in self.layers.values()
            if layer.residual is not None and layer.refit_shortcut
        }
        errors, sparse = refit_layers(
            self.model, self.original, names, images, self.kept_out, norms, self._requantize, residuals
        )
        note = f"refit='distilled': {len(errors)} of {len(names)} layer(s) refitted on the distilled images"
        if errors:
            note += f" (mean relative output error there {sum(errors.values()) / len(errors):.3g})"
        if sparse:
            note += (
                f"; {len(sparse)} seen on fewer than {MIN_ROWS_PER_INPUT} samples per input leaned mostly on their "
                "compensated weights, e.g. " + sparse[0]
            )
        if self._refit_feedback:
            before, after = (sum(v) for v in zip(*self._refit_feedback, strict=True))
            note += (
                f"; {len(self._refit_feedback)} rounded again with error feedback under the distilled inputs' "
                f"covariance (expected output error {after / max(before, 1e-300):.2f}x nearest rounding's)"
            )
        return note

    def _requantize(self, name: str, mod: nn.Module, stats) -> None:
        """A refitted layer's new weight rounded as the layer was (its bits; under the distilled inputs'
        covariance with ``rounding="probe"``); no quantization correction: the refit's intercept follows."""
        if name not in self.quantized:
            return
        cfg = self.cfg.replace(bits=self.layer_bits.get(name, self.cfg.bits), quant_correction="none")
        # the distilled inputs' covariance, shrunk as the probe's is: few samples for many inputs make it singular
        inputs = shrunk_covariance(stats.moments()[2], stats.n).float() if self.cfg.rounding == "probe" else None
        q = quantize_layer(mod, None, cfg, inputs)
        if q.feedback is not None:
            self._refit_feedback.append(q.feedback)
        self.quantized[name] = q.qt
        set_param(mod, "weight", q.weight)

    def finish(self) -> list[str]:
        notes = list(self._notes)
        if self.cfg.rounding == "probe" and self._feedback:
            before, after = (sum(v) for v in zip(*self._feedback, strict=True))
            n, total = len(self._feedback), sum(r.bits is not None for r in self.reports)
            notes.append(
                f"rounding='probe': {n} of {total} quantized layer(s) rounded with error feedback under the probe's "
                f"input covariance (expected output error {after / max(before, 1e-300):.2f}x nearest rounding's)"
            )
        if self._fallbacks:
            notes.append(
                f"{len(self._fallbacks)} pruned group(s) have no ReLU known right after their BatchNorm, so they are "
                "compensated with UDFC's linear fit, without udfc+'s bias and variance corrections (e.g. "
                f"{self._fallbacks[0]}); a hand-written adapter can declare the ReLU (relu_after_norm=True)"
            )
        return notes

    def _norm_of(self, name: str) -> nn.Module | None:
        layer = self.layers.get(name)
        return self.model.get_submodule(layer.norm) if layer is not None and layer.norm else None


# what a layer reading the image sees when the model does not say how images are normalised (transformers)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# the image itself is 8-bit data: a layer that reads it keeps an 8-bit grid over every normalised pixel value
IMAGE_BITS = 8


@torch.no_grad()
def allocate_layer_bits(model: nn.Module, spec: ModelSpec, cfg: CompressionConfig) -> dict[str, int]:
    """``bit_widths="mixed"``: each layer's bits, at the total weight bits of ``cfg.bits`` everywhere. A layer's
    error at b bits is the mean over its output channels of ``|W~_c - W_c|^2 / |W_c|^2``, the relative noise
    that rounding adds to each output (white inputs); ``ops.allocate_bits`` spreads the bits (widths before any
    pruning)."""
    errors, sizes = {}, {}
    for layer in spec.layers:
        w = model.get_submodule(layer.name).weight.detach()
        flat = w.reshape(w.shape[0], -1).to(torch.float64)
        power = (flat * flat).sum(1).clamp(min=1e-30)
        errors[layer.name] = {}
        for b in range(MIN_BITS, MAX_BITS + 1):
            q = quantize_dorefa(w, b, cfg.granularity, cfg.grid or "dorefa").dequantize(torch.float64)
            errors[layer.name][b] = float((((q.reshape(flat.shape) - flat) ** 2).sum(1) / power).mean())
        sizes[layer.name] = w.numel()
    return allocate_bits(errors, sizes, cfg.bits, MIN_BITS)


def _mixed_note(layer_bits: dict[str, int], bits: int) -> str:
    counts = Counter(layer_bits.values())
    spread = ", ".join(f"{counts[b]} at {b}" for b in sorted(counts))
    return f"mixed bit widths at the size of {bits} bits everywhere: {spread} (layers at their bits)"


MIN_KEEP_MOMENTS = 0.4  # layer_ratios="moments": the smallest share of a group's channels kept


def stream_shares(model: nn.Module, spec: ModelSpec, groups, input_size) -> dict[str, float]:
    """Each group's part of the residual stream it ends up in: its consumers' residual block's share of the
    variance at the addition (``probe_stream_shares``); 1 for a group whose consumers are in no residual block
    (what they produce is all there is). An error in a branch reaches the next blocks diluted by the shortcut's
    variance: the moment allocation's shares, which are of the group's own output, are scaled by it."""
    blocks = {layer.residual[0]: layer for layer in spec.layers if layer.residual is not None and layer.norm}
    if not blocks or not has_batchnorm(model):
        return {}
    size = tuple(input_size) if input_size is not None else default_input_size(model)
    found = probe_stream_shares(model, [(b.norm, block, b.residual[1]) for block, b in blocks.items()], size)
    out = {}
    for g in groups:
        inside = _blocks_around(g, found)
        if inside:
            out[g.producer.name] = found[max(inside, key=len)]
    return out


def _blocks_around(group: ChannelGroup, blocks) -> list[str]:
    """The residual blocks (module names) that hold every consumer of ``group``."""
    return [b for b in blocks if all(c.name.startswith(b + ".") for c in group.consumers)]


def mixes_residual_branches(spec: ModelSpec, groups) -> bool:
    """Whether some of ``groups`` feed consumers inside a residual block (``Layer.residual``) and others do not:
    then some groups carry part of a stream and others the whole signal, which ``layer_ratios="auto"`` weighs
    (an inverted-residual net's blocks with and without a skip; not a ResNet, whose groups are all in branches)."""
    blocks = [layer.residual[0] for layer in spec.layers if layer.residual is not None]
    inside = {bool(_blocks_around(g, blocks)) for g in groups}
    return inside == {True, False}


@torch.no_grad()
def _allocate_by_moments(
    model, spec: ModelSpec, groups, uniform: dict[str, int], mode: str, input_size, notes: list[str] | None
) -> dict[str, int]:
    layers = {layer.name: layer for layer in spec.layers}
    variances = {}
    for g in groups:
        norm = model.get_submodule(g.producer.norm) if g.producer.norm else None
        variance = moment_variances(norm, g, _depthwise_modules(model, g))
        if variance is not None:
            variances[g.producer.name] = variance
    modelled = [g for g in groups if g.producer.name in variances]
    stream = mode == "stream" or (mode == "auto" and mixes_residual_branches(spec, modelled))
    shares = stream_shares(model, spec, modelled, input_size) if stream else {}
    if stream and notes is not None:
        said = "layer_ratios='stream'" if mode == "stream" else "layer_ratios='auto' chose the residual allocation"
        if shares:
            low, high = min(shares.values()), max(shares.values())
            notes.append(
                f"{said}: {len(shares)} group(s) in residual blocks are pruned more where their block adds less to "
                f"the signal it joins (its share: {low:.2f}-{high:.2f}); layer_ratios='moments' leaves that out"
            )
        else:
            notes.append(
                f"{said}: no residual block known in this model (or no BatchNorm to probe it): "
                "the moment allocation as is"
            )
    curves, sizes = {}, {}
    for g in modelled:
        variance = variances[g.producer.name]
        imp = output_importance(variance, consumer_weights(g, model.get_submodule, partial(_norm_in, model, layers)))
        share = torch.sort(imp / imp.sum().clamp(min=1e-300)).values
        n = len(share)
        sizes[g.producer.name] = n
        # at most down to 40 % kept, or to the uniform width where the ratio asks for more
        most = n - min(math.ceil(MIN_KEEP_MOMENTS * n), uniform[g.producer.name])
        curve = torch.cat([share.new_zeros(1), share.cumsum(0)])[: most + 1]
        curves[g.producer.name] = curve * shares.get(g.producer.name, 1.0)
    budget = sum(sizes[name] - uniform[name] for name in sizes)
    return {**uniform, **allocate_greedy(sizes, curves, budget)}


def quantize_activations(
    model: nn.Module, spec: ModelSpec, cfg: CompressionConfig, input_size, quantized: dict
) -> list[str]:
    """Give every quantized layer an input quantizer of ``cfg.act_bits`` (ranges from the BN-matched probe of the
    compressed model, see ``probe_activation_ranges``); udfc and udfc+ then remove the expected output shift
    that the input quantization causes, as the weight quantization's bias correction does. A layer that reads
    the image keeps 8 bits over the range of every normalised pixel (the image is 8-bit data; at 6 bits the
    fixture ResNet-20 lost 1.2 points there alone). Returns notes."""
    size = tuple(input_size) if input_size is not None else default_input_size(model)
    layers = {layer.name: layer for layer in spec.layers if layer.name in quantized}
    names = list(layers)
    cfg_ = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg_.get("mean"), cfg_.get("std")
    notes = []
    if not (isinstance(mean, (tuple, list)) and isinstance(std, (tuple, list)) and len(mean) == len(std)):
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        notes.append("the model states no image normalisation: the stem's input range assumes ImageNet's mean/std")
    if len(mean) != size[0]:
        mean, std = (sum(mean) / len(mean),) * size[0], (sum(std) / len(std),) * size[0]
    image = image_range(mean, std, IMAGE_BITS)
    found = probe_activation_ranges(model, names, size, cfg.act_bits, image, method=cfg.act_range)
    correct = cfg.method in ("udfc", "udfc+")
    for name in names:
        if name not in found:
            continue
        act, error = found[name]
        mod = model.get_submodule(name)
        if correct and error is not None:
            norm = model.get_submodule(layers[name].norm) if layers[name].norm else None
            remove_expected_shift(mod, norm, mod.weight.detach(), error)
        install_input_quantizer(mod, act)
    flow = plan_int8_flow(model, spec, quantized, size, cfg.act_range)
    missed = [n for n in names if n not in found]
    if missed:
        notes.append(f"{len(missed)} quantized layer(s) never ran in the probe keep float inputs, e.g. {missed[0]}")
    if not has_batchnorm(model):
        notes.append(
            "no BatchNorm statistics: activation ranges come from a forward pass of Gaussian noise (LayerNorm "
            "normalises each token; inputs that no norm precedes get rougher ranges)"
        )
    unsigned = sum(found[n][0].unsigned for n in found)
    rule = "extremes" if cfg.act_range == "max" else "MSE-optimal clip"
    notes.append(
        f"{len(found)} layer input(s) quantized to {cfg.act_bits} bits ({unsigned} unsigned, after a ReLU), "
        f"ranges chosen without data (the BN-matched probe's {rule}; the image input: {IMAGE_BITS} bits over every "
        "normalised pixel)"
    )
    notes.append(
        f"int8 data flow: {flow['shared_inputs']} block input(s) share their layer's quantizer, "
        f"{flow['output_quantizers']} layer output(s) before an addition or pooling rounded to {OUTPUT_BITS} bits, "
        f"{flow['int32_biases']} bias(es) on the int32 grid"
    )
    return notes


def _keep_inputs(covariances: dict[str, torch.Tensor], group: ChannelGroup, keep: torch.Tensor, n: int) -> None:
    """Restrict the input covariances of ``group``'s consumers (and of a depthwise conv aligned with it) to the
    ``keep`` of its ``n`` channels; a covariance whose layout does not match is dropped (nearest rounding)."""
    for name in group.aligned:
        if name in covariances and covariances[name].shape[0] == n:  # a depthwise conv: one group per channel
            covariances[name] = covariances[name][keep]
    for c in group.consumers:
        cov = covariances.get(c.name)
        if cov is None or c.dim != 1:
            continue
        if cov.shape[0] != 1 or cov.shape[1] % n:
            del covariances[c.name]
            continue
        taps = cov.shape[1] // n
        cov = cov.reshape(n, taps, n, taps)[keep][:, :, keep].reshape(1, len(keep) * taps, len(keep) * taps)
        covariances[c.name] = cov


def _depthwise_modules(model: nn.Module, group: ChannelGroup) -> tuple[nn.Module, nn.Module] | None:
    """The group's depthwise conv and its BatchNorm in ``model`` (``plan_pruning``'s ``depthwise``), if any."""
    dw = group.depthwise
    return (model.get_submodule(dw.name), model.get_submodule(dw.norm)) if dw is not None and dw.norm else None


def _norm_in(model: nn.Module, layers: dict[str, Layer], name: str) -> nn.Module | None:
    layer = layers.get(name)
    return model.get_submodule(layer.norm) if layer is not None and layer.norm else None


def allocate_widths(
    model: nn.Module, spec: ModelSpec, cfg: CompressionConfig, input_size=None, notes: list[str] | None = None
) -> dict[str, int]:
    """Kept channels per pruned group. ``uniform``: floor((1 - ratio) n) each. ``adaptive``: the same total
    number of pruned channels, spread greedily to the groups whose relative reconstruction loss (UDFC's linear
    fit, bias term left out) grows least, each group keeping at least 10 % of its channels. ``moments``: among
    the groups with a moment model, the same total spread so that the channels pruned carry the smallest shares of
    their group's importance (``output_importance``, in the consumers' BN units), each group keeping at least
    40 % (or its uniform width, when the ratio asks for more); the other groups stay uniform. ``stream``: as
    ``moments``, each group's shares scaled by its part of the residual stream it joins (``stream_shares``).
    ``auto``: ``stream`` where those groups lie both inside residual branches and outside them
    (``mixes_residual_branches``), else ``moments``. ``input_size``: the probe's, for ``stream``; ``notes``, if
    given, gets what ``stream`` found."""
    # Neuron Merging pairs producer filters: through a depthwise conv it has nothing to pair, so it leaves those
    groups = [
        g for g in spec.groups if (g.closed_form and not (g.depthwise and cfg.method == "nm")) or cfg.method == "prune"
    ]
    sizes = {g.producer.name: model.get_submodule(g.producer.name).weight.shape[0] for g in groups}
    uniform = uniform_widths(sizes, cfg.prune_ratio)
    if cfg.layer_ratios == "uniform" or not uniform:
        return uniform
    if cfg.layer_ratios in ("moments", "stream", "auto"):
        return _allocate_by_moments(model, spec, groups, uniform, cfg.layer_ratios, input_size, notes)
    curves = {}
    for g in groups:
        mod = model.get_submodule(g.producer.name)
        norm = model.get_submodule(g.producer.norm) if g.producer.norm else None
        folded = fold_batchnorm(mod.weight, mod.bias, *bn_params(norm))
        norm_criterion = cfg.criterion if cfg.criterion in NORM_CRITERIA else "l2"
        curves[g.producer.name] = loss_curve(folded.R, mod.weight, norm_criterion)
    budget = sum(sizes[n] - k for n, k in uniform.items())
    return allocate_greedy(sizes, curves, budget)
