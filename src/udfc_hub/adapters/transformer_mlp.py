"""Models whose prunable channels are MLP hidden units: timm ConvNeXt and Vision Transformers (ViT, DeiT).

Pruned: each block's MLP hidden units (``mlp.fc1`` outputs / ``mlp.fc2`` inputs), with the Linear/no-BN form of
the algebra (R = fc1 rows, K = fc1 bias). Quantized: every conv and linear weight; GELU does not commute with a
scale, so each layer's correction goes into its own output rows and bias.
"""

from __future__ import annotations

import torch.nn as nn
from timm.models.convnext import ConvNeXt
from timm.models.vision_transformer import VisionTransformer

from .base import ModelSpec, mlp_spec


def _mlp_spec(model: nn.Module, family: str) -> ModelSpec:
    # timm's Mlp: a module named *mlp whose optional hidden norm is absent (a norm there would couple the units)
    return mlp_spec(
        model, family, accept=lambda n, m: n.endswith("mlp") and isinstance(getattr(m, "norm", None), nn.Identity)
    )


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
