"""CIFAR ResNets with option-A shortcuts (``udfc_hub.models.CifarResNet``, timm names ``cifar_resnet*``).

Pruned: each block's inner channels (conv1 out / conv2 in). The residual stream (stem, conv2 outputs, the
zero-padded shortcuts) is never pruned. Quantized: every conv and the linear classifier.
"""

from __future__ import annotations

import torch.nn as nn

from ..models.cifar_resnet import CifarResNet
from .base import ChannelGroup, Consumer, Layer, ModelSpec


class CifarResNetAdapter:
    family = "CIFAR ResNet, option-A shortcuts (akamaster)"
    examples = "cifar_resnet20, cifar_resnet32, cifar_resnet44, cifar_resnet56"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, CifarResNet)

    def describe(self, model: nn.Module) -> ModelSpec:
        layers = [Layer("conv1", "bn1")]
        groups = []
        for stage in ("layer1", "layer2", "layer3"):
            for i, _ in enumerate(getattr(model, stage)):
                p = f"{stage}.{i}"
                inner = Layer(f"{p}.conv1", f"{p}.bn1")
                layers += [inner, Layer(f"{p}.conv2", f"{p}.bn2", residual=(p, f"{p}.shortcut"))]
                groups.append(ChannelGroup(producer=inner, consumers=(Consumer(f"{p}.conv2"),), relu_after_norm=True))
        if isinstance(model.linear, nn.Linear):
            layers.append(Layer("linear"))
        return ModelSpec(family=self.family, layers=tuple(layers), groups=tuple(groups))
