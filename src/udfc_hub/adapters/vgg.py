"""timm VGG (``vgg11`` .. ``vgg19``, with or without BatchNorm).

Pruned: every conv's output channels, compensated in the next conv; the last conv's channels in the pre-logits
layer (``pre_logits.fc1``). Quantized: every conv, the pre-logits convs and the classifier.
"""

from __future__ import annotations

import torch.nn as nn
from timm.models.vgg import VGG

from .base import ChannelGroup, Consumer, Layer, ModelSpec, conv_norm_pairs


class TimmVGGAdapter:
    family = "timm VGG"
    examples = "vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn, vgg16, ..."

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, VGG)

    def describe(self, model: nn.Module) -> ModelSpec:
        convs = conv_norm_pairs(model.features, "features")
        head = conv_norm_pairs(model.pre_logits, "pre_logits")
        fc = [Layer("head.fc")] if isinstance(model.head.fc, nn.Linear) else []
        consumers = [c.name for c in convs[1:]] + [head[0].name]
        groups = [ChannelGroup(p, (Consumer(c),)) for p, c in zip(convs, consumers, strict=True)]
        return ModelSpec(family=self.family, layers=tuple(convs + head + fc), groups=tuple(groups))
