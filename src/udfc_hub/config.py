"""The compression options: one frozen, validated ``CompressionConfig`` that every entry point goes through.

Each option is defined once, here: its default, what it accepts and its help text. ``udfc_hub.compress``,
``compress_and_push``, the ``udfc-hub`` command line (its flags are generated from these fields) and the saved
``config.json`` (``udfc.compression``) all read and write this object. This module imports neither torch nor
the rest of the package, so the command line can build its parser without them.

>>> cfg = CompressionConfig(prune_ratio=0.5, bits=4)
>>> cfg.method, cfg.resolved().fit
('udfc+', 'relu')
>>> CompressionConfig.preset("udfc").resolved().quant_correction
'udfc'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

from .errors import InvalidArgumentError

__all__ = [
    "CompressionConfig",
    "METHODS",
    "FITS",
    "QUANT_CORRECTIONS",
    "LAYER_RATIOS",
    "BIT_WIDTHS",
    "REFERENCES",
    "CRITERIA",
    "CORRELATIONS",
    "ROUNDINGS",
    "REFITS",
    "GRANULARITIES",
    "GRIDS",
    "ACT_RANGES",
    "NM_VARIANTS",
    "MIN_BITS",
    "MAX_BITS",
    "PRESETS",
]

METHODS = ("udfc+", "udfc", "nm", "prune", "rtn")
FITS = ("relu", "linear")
QUANT_CORRECTIONS = ("none", "udfc", "scale")
LAYER_RATIOS = ("uniform", "adaptive", "moments", "stream", "auto")
BIT_WIDTHS = ("uniform", "mixed")
REFERENCES = ("compensated", "original")
CRITERIA = ("l1", "l2", "moments", "rebuild")  # ops.prune.CRITERIA; a test keeps them equal
CORRELATIONS = ("filters", "probe")
ROUNDINGS = ("nearest", "probe")
REFITS = ("none", "distilled")
GRANULARITIES = ("tensor", "channel")  # ops.quantize.GRANULARITIES
GRIDS = ("dorefa", "int")  # ops.quantize.GRIDS
ACT_RANGES = ("max", "mse")  # ops.activations.ACT_RANGES
NM_VARIANTS = ("code", "derived")  # ops.prune.NM_VARIANTS
MIN_BITS, MAX_BITS = 2, 8  # ops.quantize.MIN_BITS / MAX_BITS

# What each method means for the options left at None. "udfc" is the paper as written; "udfc+" is this
# project's data-free extension (docs/research-log.md); the others are baselines.
# udfc+ keeps the channels its moment model says carry the most, spreads the pruning by the same measure (weighed
# by the residual stream where a model mixes residual branches with blocks that carry the whole signal) and
# measures the model's correlations in the BN-matched probe (docs/research-log.md, "Beyond udfc+": better than l2,
# uniform widths and the filters' correlations on every benchmark); the others keep the paper's norm criterion,
# uniform widths and the filters.
_PAPER = dict(criterion="l2", layer_ratios="uniform", correlations="filters")
PRESETS: dict[str, dict[str, Any]] = {
    "udfc+": dict(
        fit="relu",
        bias_correction=True,
        variance_correction=True,
        quant_correction="none",
        criterion="moments",
        layer_ratios="auto",
        correlations="probe",
    ),
    "udfc": dict(fit="linear", bias_correction=False, variance_correction=False, quant_correction="udfc", **_PAPER),
    "nm": dict(fit=None, bias_correction=False, variance_correction=False, quant_correction="none", **_PAPER),
    "prune": dict(fit=None, bias_correction=False, variance_correction=False, quant_correction="none", **_PAPER),
    "rtn": dict(fit=None, bias_correction=False, variance_correction=False, quant_correction="none", **_PAPER),
}


def _option(default: Any, help: str, *, choices: tuple | None = None, kind: str, cli: str | None = None, **extra):
    """A dataclass field carrying its command-line description: ``kind`` is ratio, bits, choice, flag or number."""
    meta = {"help": help, "choices": choices, "kind": kind, "cli": cli, **extra}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CompressionConfig:
    """Everything that decides what ``udfc_hub.compress`` does; frozen and validated on construction.

    Options left at None take the value the method implies (``PRESETS``); ``resolved()`` fills them in.
    Use ``replace(**changes)`` for a changed copy and ``to_dict()`` / ``from_dict()`` for config.json.
    """

    method: str = _option(
        "udfc+",
        "udfc+ (UDFC with BN-moment corrections), udfc (the paper as written), nm (Neuron Merging), prune or rtn "
        "(no compensation)",
        choices=METHODS,
        kind="choice",
    )
    prune_ratio: float = _option(
        0.3,
        "fraction of each prunable group's channels to remove, in [0, 1); 0 = quantize only",
        kind="ratio",
        cli="--prune",
    )
    bits: int | None = _option(
        6, f"weight bits {MIN_BITS}..{MAX_BITS}, or none for full-precision weights (prune only)", kind="bits"
    )
    act_bits: int | None = _option(
        None,
        f"activation bits {MIN_BITS}..{MAX_BITS}: quantize every quantized layer's input, with ranges chosen "
        "without data (needs weight bits); none = float activations",
        kind="bits",
    )
    criterion: str | None = _option(
        None,
        "what picks the kept channels: the filter's l1 or l2 norm; moments (the most variance added to the "
        "consumers under udfc+'s moment model) or rebuild (the least error left once the pruned channels are "
        "rebuilt, greedy); l2 where a group has no moment model. Default: moments for udfc+, l2 for the others",
        choices=CRITERIA,
        kind="choice",
    )
    bit_widths: str = _option(
        "uniform",
        "uniform (every layer at --bits) or mixed (per-layer widths in 2..8 at the same total weight size, chosen "
        "without data to minimise the layers' summed relative rounding noise: depthwise and first layers get more)",
        choices=BIT_WIDTHS,
        kind="choice",
    )
    rounding: str = _option(
        "nearest",
        "how weights are rounded to the grid: nearest, or probe (each layer's rounding errors fed back onto its "
        "not-yet-rounded weights, GPTQ's order, to minimise the expected output error under the layer's input "
        "covariance in a BN-matched probe of natural-image-like noise; nearest where a row fares better or the "
        "model has no BatchNorm; 5-7x the compression time, worth it at 4 bits and below)",
        choices=ROUNDINGS,
        kind="choice",
    )
    refit: str = _option(
        "none",
        "none, or distilled: after compressing, refit each layer in forward order by least squares so that, on "
        "images distilled from the model's BatchNorm statistics (no data: noise optimised until every BN sees the "
        "mean and std it recorded), it reproduces the original layer's output from the compressed model's own "
        "inputs; quantized layers are rounded again (with rounding=probe, under the distilled inputs' covariance: "
        "the pairing that meets the paper's ResNet-56 drops at 4 bits). Needs BatchNorm. Costs 1,000 forward and "
        "backward passes of 64 images at 32x32 (8 at 224x224): for ResNet-56 about 9 minutes on 2 CPU cores, 35 s "
        "on an H200 GPU",
        choices=REFITS,
        kind="choice",
    )
    granularity: str = _option(
        "channel",
        "quantizer scale per output channel, or one per tensor (the paper)",
        choices=GRANULARITIES,
        kind="choice",
    )
    act_range: str = _option(
        "max",
        "activation range from the BN-matched probe: max (its extremes) or mse (the clip that minimises the "
        "expected error under the probe's Gaussian model; clips real activations too hard, see docs/research-log.md)",
        choices=ACT_RANGES,
        kind="choice",
        advanced=True,
    )
    grid: str | None = _option(
        None,
        "weight grid: dorefa (the paper: 2^k levels, no zero) or int (2^k - 1 levels with zero, the int8 runtimes' "
        "grid); default: int with --act-bits, else dorefa",
        choices=GRIDS,
        kind="choice",
        advanced=True,
    )
    fit: str | None = _option(
        None,
        "how udfc/udfc+ solve the pruning scales: relu (least squares after the ReLU, from BN moments) or linear "
        "(the paper: BN-folded filters)",
        choices=FITS,
        kind="choice",
        advanced=True,
    )
    nonnegative: bool = _option(
        False, "with fit=linear, constrain the pruning scales to be >= 0", kind="flag", advanced=True
    )
    bias_correction: bool | None = _option(
        None,
        "move the expected error of pruning and quantization into the next BN's running mean or the bias",
        kind="flag",
        advanced=True,
    )
    variance_correction: bool | None = _option(
        None,
        "rescale the consumer BN's running variance by the variance that pruning loses",
        kind="flag",
        advanced=True,
    )
    quant_correction: str | None = _option(
        None,
        "none, udfc (the paper's scale t on the BN output) or scale (t folded into the weight scales)",
        choices=QUANT_CORRECTIONS,
        kind="choice",
        advanced=True,
    )
    layer_ratios: str | None = _option(
        None,
        "uniform (every group loses prune_ratio of its channels), adaptive (same total, spread by each group's "
        "reconstruction error) or moments (same total over the groups with a moment model, pruned where channels "
        "carry the smallest share of their group's predicted output variance) or stream (moments, each share "
        "scaled by the group's residual branch's part of the stream it is added to, measured in the BN-matched "
        "probe: branches into a wide stream lose more; best on EfficientNet-Lite0) or auto (stream where the pruned "
        "groups lie both inside residual branches and outside them, as in inverted-residual nets; moments "
        "otherwise). Default: auto for udfc+, uniform for the others",
        choices=LAYER_RATIOS,
        kind="choice",
        advanced=True,
    )
    correlations: str | None = _option(
        None,
        "where the moment model takes the correlations of a pruned group's BN outputs: filters (cosines of the "
        "BN-folded filters: white inputs) or probe (measured in the BN-matched Gaussian probe of the input model: "
        "inputs correlated as the network's own layers make them; shrunk towards filters where the probe has few "
        "positions per channel); a group through a depthwise conv takes those of the depthwise conv's BN outputs, "
        "in a probe of natural-image-like noise (else its own model). Default: probe for udfc+, filters for the "
        "others",
        choices=CORRELATIONS,
        kind="choice",
        advanced=True,
    )
    alpha1: float = _option(
        0.01, "weight of the bias term in UDFC's pruning loss", kind="number", bounds=(0, math.inf), advanced=True
    )
    alpha2: float = _option(
        0.008,
        "weight of the bias term in UDFC's quantization loss",
        kind="number",
        bounds=(0, math.inf),
        advanced=True,
    )
    reference: str = _option(
        "compensated",
        "weights a layer's pruning solve uses once earlier compensation changed them: compensated (current) or "
        "original (the input model's)",
        choices=REFERENCES,
        kind="choice",
        advanced=True,
    )
    nm_variant: str = _option(
        "code",
        "Neuron Merging as its released code does it, or the derived algebra",
        choices=NM_VARIANTS,
        kind="choice",
        advanced=True,
    )
    nm_lambda: float = _option(
        0.85, "Neuron Merging's cosine/bias trade-off", kind="number", bounds=(0, 1), advanced=True
    )
    nm_threshold: float = _option(
        0.1, "Neuron Merging's minimum cosine similarity", kind="number", bounds=(-1, 1), advanced=True
    )

    def __post_init__(self) -> None:
        self._check_size()
        for f in dataclasses.fields(self):
            self._check_field(f)
        self._check_combination()

    def _check_size(self) -> None:
        ratio, bits = self.prune_ratio, self.bits
        if isinstance(ratio, bool) or not isinstance(ratio, Real) or not 0 <= ratio < 1:
            raise InvalidArgumentError(f"prune_ratio must be a number in [0, 1), got {ratio!r}.")
        if bits is not None and (
            isinstance(bits, bool) or not isinstance(bits, Integral) or not MIN_BITS <= bits <= MAX_BITS
        ):
            raise InvalidArgumentError(
                f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, or None for full precision; got {bits!r}."
            )
        act = self.act_bits
        if act is not None and (
            isinstance(act, bool) or not isinstance(act, Integral) or not MIN_BITS <= act <= MAX_BITS
        ):
            raise InvalidArgumentError(
                f"act_bits must be an integer in {MIN_BITS}..{MAX_BITS}, or None for float activations; got {act!r}."
            )
        if act is not None and bits is None:
            raise InvalidArgumentError(
                f"act_bits={act} needs weight bits too: activations are quantized at the inputs of the quantized "
                f"layers. Set bits (e.g. bits={act}), or act_bits=None for float activations."
            )
        if self.act_range != "max" and act is None:
            raise InvalidArgumentError(
                f"act_range={self.act_range!r} applies to quantized activations; set act_bits too."
            )
        if ratio == 0 and bits is None:
            raise InvalidArgumentError(
                "Nothing to do: prune_ratio=0 and bits=None. Set a prune_ratio in (0, 1), bits in 2..8, or both."
            )
        object.__setattr__(self, "prune_ratio", float(ratio))
        object.__setattr__(self, "bits", None if bits is None else int(bits))
        object.__setattr__(self, "act_bits", None if act is None else int(act))

    def _check_field(self, f: dataclasses.Field) -> None:
        value, meta = getattr(self, f.name), f.metadata
        if meta["kind"] == "choice":
            accepted = meta["choices"] if f.default is not None else (None, *meta["choices"])
            if not isinstance(value, (str, type(None))) or value not in accepted:
                default = " (or None for the method's default)" if None in accepted else ""
                listed = ", ".join(meta["choices"]) + default
                raise InvalidArgumentError(f"{f.name} must be one of {listed}; got {value!r}.")
        elif meta["kind"] == "flag" and not (isinstance(value, bool) or (value is None and f.default is None)):
            default = " (or None for the method's default)" if f.default is None else ""
            raise InvalidArgumentError(f"{f.name} must be True or False{default}; got {value!r}.")
        elif meta["kind"] == "number":
            lo, hi = meta["bounds"]
            if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value) or not lo <= value <= hi:
                raise InvalidArgumentError(f"{f.name} must be a number in [{lo}, {hi}], got {value!r}.")
            object.__setattr__(self, f.name, float(value))

    def _check_combination(self) -> None:
        if self.fit is not None and self.method not in ("udfc", "udfc+"):
            raise InvalidArgumentError(
                f"fit applies to method udfc or udfc+ only; method={self.method!r} chooses its scales its own way."
            )
        if self.rounding != "nearest" and self.bits is None:
            raise InvalidArgumentError(
                f"rounding={self.rounding!r} chooses how weights are rounded to bits; set bits (2..8) too."
            )
        if self.bit_widths != "uniform" and self.bits is None:
            raise InvalidArgumentError(
                f"bit_widths={self.bit_widths!r} spreads the weight bits of --bits over the layers; set bits (2..8)."
            )
        fit = self.fit if self.fit is not None else PRESETS[self.method]["fit"]
        if self.nonnegative and (self.method not in ("udfc", "udfc+") or fit != "linear"):
            raise InvalidArgumentError("nonnegative=True needs method 'udfc' or 'udfc+' with fit='linear'.")

    @classmethod
    def preset(cls, method: str, **overrides: Any) -> CompressionConfig:
        """The options of ``method`` (``"udfc+"``, ``"udfc"``, ``"nm"``, ``"prune"``, ``"rtn"``), with overrides."""
        return cls(method=method, **overrides)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls, config: CompressionConfig | None = None, **overrides: Any) -> CompressionConfig:
        """``config`` (default: the defaults) with ``overrides`` applied; unknown names are refused by name."""
        if config is not None and not isinstance(config, cls):
            raise InvalidArgumentError(
                f"config must be a udfc_hub.CompressionConfig, got {type(config).__name__}; pass options by keyword, "
                "e.g. compress(model, prune_ratio=0.3, bits=6)."
            )
        unknown = sorted(set(overrides) - set(cls.option_names()))
        if unknown:
            raise InvalidArgumentError(
                f"unknown compression option(s) {', '.join(unknown)}; accepted: {', '.join(cls.option_names())}."
            )
        if config is None:
            return cls(**overrides)
        return config.replace(**overrides) if overrides else config

    def replace(self, **changes: Any) -> CompressionConfig:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def resolved(self) -> CompressionConfig:
        """The same options with every None that the method decides filled in (what the engine runs)."""
        fills = {k: v for k, v in PRESETS[self.method].items() if getattr(self, k) is None and v is not None}
        if self.grid is None:
            fills["grid"] = "int" if self.act_bits is not None else "dorefa"
        return self.replace(**fills) if fills else self

    def to_dict(self) -> dict[str, Any]:
        """Plain values in field order (config.json's ``udfc.compression``).

        The activation options, ``bit_widths``, ``correlations``, ``rounding`` and ``refit`` are left out where they
        take their default (float activations, the grid the other options imply, uniform bits, the method's
        correlations, nearest rounding, no refit), so settings read as they did before those options existed
        (older readers refuse unknown keys; sweep cells keep their keys; an older artifact's card is written again
        byte for byte)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if out["act_bits"] is None:
            del out["act_bits"]
        if out["act_range"] == "max" and self.act_bits is None:
            del out["act_range"]
        if out["grid"] in (None, "int" if self.act_bits is not None else "dorefa"):
            del out["grid"]
        if out["bit_widths"] == "uniform":
            del out["bit_widths"]
        if out["correlations"] is None:
            del out["correlations"]
        if out["rounding"] == "nearest":
            del out["rounding"]
        if out["refit"] == "none":
            del out["refit"]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CompressionConfig:
        """Read ``to_dict()``'s output back (validated; unknown keys refused)."""
        if not isinstance(values, dict):
            raise InvalidArgumentError(f"compression options must be a dict, got {type(values).__name__}.")
        return cls.build(**values)
