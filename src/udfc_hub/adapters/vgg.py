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
        plain = _followed_by_relu_only(model.features, [c.name for c in convs])
        groups = [
            ChannelGroup(p, (Consumer(c),), relu_after_norm=p.norm is not None and plain[p.name])
            for p, c in zip(convs, consumers, strict=True)
        ]
        return ModelSpec(family=self.family, layers=tuple(convs + head + fc), groups=tuple(groups))


def _followed_by_relu_only(features: nn.Sequential, names: list[str]) -> dict[str, bool]:
    """For each conv, whether only its BN and a ReLU stand before the next conv (no max-pool in between)."""
    children = list(features.named_children())
    out = {}
    for i, (name, _) in enumerate(children):
        full = f"features.{name}"
        if full not in names:
            continue
        rest = []
        for _, child in children[i + 1 :]:
            if isinstance(child, nn.Conv2d):
                break
            rest.append(child)
        out[full] = bool(rest) and all(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in rest)
    return out
