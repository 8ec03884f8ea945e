"""timm EfficientNet / EfficientNet-Lite / MobileNetV2 (``timm.models.efficientnet.EfficientNet``).

Quantized: every conv (stem, pointwise, depthwise, SE) and the classifier; each layer's correction is folded into
its own BatchNorm (or its output rows without one), since expansion channels feed a depthwise conv and the
activations (ReLU6, SiLU) do not commute with scaling. Pruned: the head conv's channels, compensated in the
classifier. Channels that pass through a depthwise conv have no closed form in the paper: they are never pruned.
"""

from __future__ import annotations

import torch.nn as nn
from timm.models.efficientnet import EfficientNet

from .base import ChannelGroup, Consumer, Layer, ModelSpec, conv_norm_pairs


class TimmEfficientNetAdapter:
    family = "timm EfficientNet / MobileNetV2"
    examples = "tf_efficientnet_lite0..4, efficientnet_b0..b3, mobilenetv2_100, mobilenetv2_140, ..."

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, EfficientNet)

    def describe(self, model: nn.Module) -> ModelSpec:
        layers = [Layer("conv_stem", "bn1")]
        for name, module in model.blocks.named_modules(prefix="blocks"):
            layers.extend(conv_norm_pairs(module, name))
        groups = []
        head = None
        if isinstance(getattr(model, "conv_head", None), nn.Conv2d):
            head = Layer("conv_head", "bn2")
            layers.append(head)
        if isinstance(model.classifier, nn.Linear):
            layers.append(Layer("classifier"))
            if head is not None:
                groups.append(ChannelGroup(head, (Consumer("classifier"),), scale_commutes=False))
        notes = ("channels that feed a depthwise conv are never pruned (no closed form); only the head is pruned",)
        return ModelSpec(family=self.family, layers=tuple(layers), groups=tuple(groups), notes=notes)
