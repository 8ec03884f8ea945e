"""Models whose prunable channels are MLP hidden units: timm ConvNeXt and Vision Transformers (ViT, DeiT).

Pruned: each block's MLP hidden units (``mlp.fc1`` outputs / ``mlp.fc2`` inputs), with the Linear/no-BN form of
the algebra (R = fc1 rows, K = fc1 bias). Quantized: every conv and linear weight; GELU does not commute with a
scale, so each layer's correction goes into its own output rows and bias.
"""

from __future__ import annotations

import torch.nn as nn
from timm.models.convnext import ConvNeXt
from timm.models.vision_transformer import VisionTransformer

from .base import ChannelGroup, Consumer, Layer, ModelSpec


def _mlp_spec(model: nn.Module, family: str) -> ModelSpec:
    layers = tuple(Layer(n) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    groups = tuple(
        ChannelGroup(Layer(f"{n}.fc1"), (Consumer(f"{n}.fc2"),), scale_commutes=False)
        for n, m in model.named_modules()
        if n.endswith("mlp")
        and isinstance(getattr(m, "fc1", None), (nn.Linear, nn.Conv2d))
        and isinstance(getattr(m, "fc2", None), (nn.Linear, nn.Conv2d))
        and isinstance(m.norm, nn.Identity)
    )
    return ModelSpec(family=family, layers=layers, groups=groups)


class TimmConvNeXtAdapter:
    family = "timm ConvNeXt"
    examples = "convnext_atto, convnext_tiny, convnext_small, convnext_base, ..."

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, ConvNeXt)

    def describe(self, model: nn.Module) -> ModelSpec:
        return _mlp_spec(model, self.family)


class TimmViTAdapter:
    family = "timm Vision Transformer (ViT, DeiT)"
    examples = "vit_tiny_patch16_224, vit_base_patch16_224, deit_tiny_patch16_224, deit_small_patch16_224, ..."

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def describe(self, model: nn.Module) -> ModelSpec:
        return _mlp_spec(model, self.family)
