"""Channel couplings as data: which layer produces a group of channels, its norm, who consumes them.

An adapter looks at a model and returns a ``ModelSpec``; it does no math and changes nothing. The engine walks
the spec. Module names are those of ``model.named_modules()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch.nn as nn

__all__ = [
    "Layer", "Consumer", "ChannelGroup", "ModelSpec", "Adapter", "conv_norm_pairs", "mlp_spec", "removal_error",
]  # fmt: skip


@dataclass(frozen=True)
class Layer:
    """A weight layer (``nn.Conv2d`` or ``nn.Linear``) and the BatchNorm that directly follows it, if any.

    ``residual``: (block, shortcut) when the norm's output is added to ``shortcut(block input)``, the block input
    itself when shortcut is None (a residual block's last conv); ``layer_ratios="stream"`` weighs the block's
    groups by the branch's share of that sum, and ``refit="distilled"`` also repairs what the compressed shortcut
    branch changed unless ``refit_shortcut`` is False (EfficientNet's inverted residuals, where that repair
    measured no better: docs/research-log.md)."""

    name: str
    norm: str | None = None
    residual: tuple[str, str | None] | None = None
    refit_shortcut: bool = True


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a group's channels, along dimension ``dim`` of its weight (1 for conv and linear)."""

    name: str
    dim: int = 1


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels of ``producer`` that may be pruned and whose loss ``consumers`` absorb.

    ``aligned`` names other modules indexed by the same channels along their first dimension (they are sliced
    alongside). ``scale_commutes`` says the activation between producer and consumers commutes with a positive
    per-channel scale (ReLU does), so a quantization correction may move into the consumers' input columns.
    ``relu_after_norm`` says the producer has a BatchNorm whose output reaches the consumers through a plain ReLU
    and nothing else (no pooling, no addition): the moments after the ReLU then follow from the BN statistics,
    which ``method="udfc+"`` uses for its activation-space fit, bias and variance corrections. Without it those
    steps fall back to UDFC's linear fit with no correction for this group. ``closed_form=False`` marks channels
    with no closed-form compensation (they pass through a depthwise conv): only ``method="prune"`` removes them;
    the other methods leave them whole and say so in the report.

    ``depthwise`` names a depthwise conv and its BatchNorm between the producer and the consumers (an
    inverted-residual block's expansion channels): channel i of the producer feeds only channel i of it, which is
    sliced with the group (list it in ``aligned`` too), and the consumers read its normalised, activated output.
    With ``relu_after_norm`` both BatchNorms reach the next conv through a ReLU (capped at ``relu_cap``, e.g. 6
    for ReLU6): udfc and udfc+ then fit the pruned channels in the depthwise output's moment model
    (``ops.depthwise_correlation``) and compensate in the consumers, the same closed form one conv later.
    """

    producer: Layer
    consumers: tuple[Consumer, ...]
    aligned: tuple[str, ...] = ()
    scale_commutes: bool = True
    relu_after_norm: bool = False
    closed_form: bool = True
    depthwise: Layer | None = None
    relu_cap: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to compress one model.

    ``layers``: every weight layer to quantize, in forward order. ``groups``: the prunable channel groups; each
    group's producer is one of ``layers``. ``notes``: what the adapter chose not to touch, and why.
    """

    family: str
    layers: tuple[Layer, ...]
    groups: tuple[ChannelGroup, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


class Adapter(Protocol):
    """One model family. ``matches`` is a cheap type check; ``describe`` may still refuse a variant."""

    family: str
    examples: str

    def matches(self, model: nn.Module) -> bool: ...

    def describe(self, model: nn.Module) -> ModelSpec: ...


def conv_norm_pairs(module: nn.Module, prefix: str) -> list[Layer]:
    """Layers of a ``nn.Sequential``-like container in order, each conv paired with the BatchNorm right after it.

    Used for stems and downsample paths, e.g. ``Sequential(Conv2d, BatchNorm2d, ReLU, Conv2d, ...)`` or
    ``Sequential(AvgPool2d, Conv2d, BatchNorm2d)``.
    """
    children = list(module.named_children())
    layers = []
    for i, (name, child) in enumerate(children):
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            norm = None
            if i + 1 < len(children) and isinstance(children[i + 1][1], nn.BatchNorm2d):
                norm = f"{prefix}.{children[i + 1][0]}"
            layers.append(Layer(f"{prefix}.{name}", norm))
    return layers


def mlp_spec(
    model: nn.Module,
    family: str,
    fc1: str = "fc1",
    fc2: str = "fc2",
    accept: Callable[[str, nn.Module], bool] = lambda name, module: True,
) -> ModelSpec:
    """Every conv and linear quantized; the hidden units of each accepted module holding layers ``fc1`` and
    ``fc2`` pruned, with the Linear/no-BN algebra (a GELU between them: no scale moves across, no ReLU moments)."""
    layers = tuple(Layer(n) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    weights = (nn.Linear, nn.Conv2d)
    groups = tuple(
        ChannelGroup(Layer(f"{n}.{fc1}"), (Consumer(f"{n}.{fc2}"),), scale_commutes=False)
        for n, m in model.named_modules()
        if isinstance(getattr(m, fc1, None), weights) and isinstance(getattr(m, fc2, None), weights) and accept(n, m)
    )
    return ModelSpec(family=family, layers=layers, groups=groups)


def removal_error(model: nn.Module, spec: ModelSpec, input_size: tuple[int, ...], ratio: float = 0.4) -> float:
    """Check a spec's couplings on ``model``: the largest relative logit difference between removing the last
    ``ratio`` of every group's channels (producer, norm and aligned modules along their outputs, consumers along
    their inputs) and zeroing the consumer input columns of those channels in a copy (the producer still computes
    them; nobody reads them). Exact couplings give float rounding (~1e-7); a missed coupling gives a large value or
    a model that no longer runs (``RuntimeError``). Works for hand-written and traced specs alike."""
    import copy

    import torch

    from ..evaluation import logits_of
    from ..surgery import slice_channels

    zeroed, removed = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    for g in spec.groups:
        n = zeroed.get_submodule(g.producer.name).weight.shape[0]
        keep = torch.arange(max(1, int(n * (1 - ratio))))
        with torch.no_grad():
            for c in g.consumers:
                zeroed.get_submodule(c.name).weight.index_fill_(c.dim, torch.arange(len(keep), n), 0.0)
        for name in (g.producer.name, g.producer.norm, *g.aligned):
            if name:
                slice_channels(removed.get_submodule(name), keep, 0)
        for c in g.consumers:
            slice_channels(removed.get_submodule(c.name), keep, c.dim)
    x = torch.randn(2, *input_size)
    with torch.no_grad():
        a, b = (logits_of(m(x)) for m in (zeroed, removed))
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-30))
