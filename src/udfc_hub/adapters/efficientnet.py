"""timm EfficientNet / EfficientNet-Lite / MobileNetV2 (``timm.models.efficientnet.EfficientNet``).

Quantized: every conv (stem, pointwise, depthwise, SE) and the classifier; each layer's correction is folded into
its own BatchNorm (or its output rows without one), since expansion channels feed a depthwise conv and the
activations (ReLU6, SiLU) do not commute with scaling. Pruned: the head conv's channels, compensated in the
classifier. The expansion channels of each inverted-residual block (conv_pw out, through conv_dw and bn2 into
conv_pwl) are pruned with compensation in conv_pwl when both BatchNorms end in a ReLU or ReLU6 and there is no
squeeze-excite (EfficientNet-Lite, MobileNetV2): the depthwise conv is per channel, so the fit moves one conv
later (``ChannelGroup.depthwise``). With a squeeze-excite gate or another activation (SiLU) there is no closed form:
only ``method="prune"`` removes those channels, without compensation. A block with a skip connection marks its
last conv with it (``Layer.residual``, for ``layer_ratios="stream"``; the refit does not repair the skip's drift
there, ``refit_shortcut=False``: measured no better on EfficientNet-Lite0).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch.nn as nn
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
from timm.models.efficientnet import EfficientNet

from ..errors import UnsupportedModelError
from .base import ChannelGroup, Consumer, Layer, ModelSpec, conv_norm_pairs


class TimmEfficientNetAdapter:
    family = "timm EfficientNet / MobileNetV2"
    examples = "tf_efficientnet_lite0..4, efficientnet_b0..b3, mobilenetv2_100, mobilenetv2_140, ..."

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, EfficientNet)

    def describe(self, model: nn.Module) -> ModelSpec:
        layers = [Layer("conv_stem", "bn1")]
        for name, module in model.blocks.named_modules(prefix="blocks"):
            last = _skip_layer(name, module)
            layers.extend(
                replace(layer, residual=(name, None), refit_shortcut=False) if layer.name == last else layer
                for layer in conv_norm_pairs(module, name)
            )
        groups = [
            _expansion_group(name, block)
            for name, block in model.blocks.named_modules(prefix="blocks")
            if type(block) is InvertedResidual
        ]
        head = None
        if isinstance(getattr(model, "conv_head", None), nn.Conv2d):
            head = Layer("conv_head", "bn2")
            layers.append(head)
        if isinstance(model.classifier, nn.Linear):
            layers.append(Layer("classifier"))
            if head is not None:
                groups.append(ChannelGroup(head, (Consumer("classifier"),), scale_commutes=False))
        open_ = sum(not g.closed_form for g in groups)
        notes = (
            (
                f"{open_} block(s) gate or activate their expansion channels in a way with no closed form (a "
                "squeeze-excite, or not ReLU/ReLU6): udfc, udfc+ and nm leave those whole; method='prune' removes "
                "them without compensation",
            )
            if open_
            else ()
        )
        return ModelSpec(family=self.family, layers=tuple(layers), groups=tuple(groups), notes=notes)


def _expansion_group(p: str, block: InvertedResidual) -> ChannelGroup:
    """conv_pw's outputs, which run through conv_dw, bn2 and the squeeze-excite into conv_pwl."""
    if not isinstance(block.se, (nn.Identity, SqueezeExcite)):  # a global-context or other attention module
        raise UnsupportedModelError(
            f"{p}.se is a {type(block.se).__name__}; the EfficientNet adapter knows timm's SqueezeExcite only"
        )
    se = block.se if hasattr(block.se, "conv_reduce") else None
    consumers = (Consumer(f"{p}.conv_pwl"),) + ((Consumer(f"{p}.se.conv_reduce"),) if se is not None else ())
    aligned = (f"{p}.conv_dw", f"{p}.bn2") + ((f"{p}.se.conv_expand",) if se is not None else ())
    caps = {_relu_cap(block.bn1), _relu_cap(block.bn2)}
    closed = se is None and len(caps) == 1 and None not in caps and isinstance(block.aa, nn.Identity)
    return ChannelGroup(
        Layer(f"{p}.conv_pw", f"{p}.bn1"),
        consumers,
        aligned=aligned,
        scale_commutes=False,
        relu_after_norm=closed,
        closed_form=closed,
        depthwise=Layer(f"{p}.conv_dw", f"{p}.bn2") if closed else None,
        relu_cap=next(iter(caps)) if closed and math.isfinite(next(iter(caps))) else None,
    )


def _skip_layer(p: str, block: nn.Module) -> str | None:
    """The conv whose BN output a block adds to the block's input (timm's ``has_skip``), or None."""
    if not getattr(block, "has_skip", False):
        return None
    if isinstance(block, InvertedResidual):
        return f"{p}.conv_pwl"
    return f"{p}.conv_pw" if isinstance(block, DepthwiseSeparableConv) else None


def _relu_cap(norm: nn.Module) -> float | None:
    """Where a BatchNormAct2d's activation saturates: inf for ReLU, 6 for ReLU6; None for anything else."""
    act = getattr(norm, "act", None)
    if not isinstance(getattr(norm, "drop", nn.Identity()), nn.Identity):
        return None
    if type(act) is nn.ReLU6:
        return 6.0
    return math.inf if type(act) is nn.ReLU else None
