"""What a compression did: per-layer outcomes, the options used, and the size before and after."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch.nn as nn

from .adapters import ModelSpec
from .config import CompressionConfig
from .profile import ModelStats

__all__ = ["LayerReport", "CompressionReport", "CompressionResult", "QuantizedLayers"]


class QuantizedLayers(dict):
    """``{layer name: QuantizedTensor}``, printed as a summary rather than hundreds of lines."""

    def __repr__(self) -> str:
        if not self:
            return "QuantizedLayers(none)"
        bits = sorted({qt.bits for qt in self.values()})
        first = next(iter(self))
        return (
            f"QuantizedLayers({len(self)} layers at {'/'.join(map(str, bits))} bits, e.g. {first!r}: "
            f"{self[first]!r}; index by layer name)"
        )


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
    """The options used (every method default filled in), per-layer outcomes, and the size before and after."""

    family: str
    config: CompressionConfig
    layers: list[LayerReport]
    before: ModelStats
    after: ModelStats
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def settings(self) -> dict[str, Any]:
        """The options as plain values (what config.json's ``udfc.compression`` holds)."""
        return self.config.to_dict()

    @property
    def pruned_layers(self) -> list[LayerReport]:
        return [r for r in self.layers if r.kept_channels < r.out_channels]

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "settings": self.settings,
            "layers": [asdict(r) for r in self.layers],
            "before": asdict(self.before),
            "after": asdict(self.after),
            "seconds": self.seconds,
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        c = self.config
        lines = [
            f"udfc_hub.compress: {self.family}; method={c.method} prune_ratio={c.prune_ratio} "
            f"bits={c.bits} criterion={c.criterion} granularity={c.granularity}",
            f"fit={c.fit} bias_correction={c.bias_correction} variance_correction="
            f"{c.variance_correction} quant_correction={c.quant_correction} layer_ratios={c.layer_ratios}",
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
    quantized: QuantizedLayers
    spec: ModelSpec

    def __post_init__(self) -> None:
        self.quantized = QuantizedLayers(self.quantized)

    def __repr__(self) -> str:
        bits = sorted({qt.bits for qt in self.quantized.values()})
        return (
            f"CompressionResult({self.report.family}: {len(self.report.pruned_layers)} pruned and "
            f"{len(self.quantized)} quantized layers (bits {bits}), params {self.report.before.params:,} -> "
            f"{self.report.after.params:,})"
        )
