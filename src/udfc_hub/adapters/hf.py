"""transformers image classifiers: ``ResNetForImageClassification``, ``ConvNextForImageClassification`` and
``ViTForImageClassification`` (module names as transformers 5 has them in memory).

ResNet: each residual layer's inner channels are pruned (every ``layer.k`` conv but the last, compensated in the
next one), as for timm ResNets; the residual stream, shortcuts and classifier are not. ConvNeXt and ViT: the MLP
hidden units (``pwconv1``/``pwconv2``, ``mlp.fc1``/``mlp.fc2``) with the Linear/no-BN algebra. Every conv and
linear weight is quantized.
"""

from __future__ import annotations

import sys

import torch.nn as nn

from .base import ChannelGroup, Consumer, Layer, ModelSpec, mlp_spec


def _is_a(model: nn.Module, class_name: str) -> bool:
    """``model`` is an instance of transformers' ``class_name``; without transformers imported, none can be (and
    udfc_hub does not import it: ``import udfc_hub`` stays as light as timm's)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, getattr(transformers, class_name))


class HFResNetAdapter:
    family = "transformers ResNet (ResNetForImageClassification)"
    examples = "microsoft/resnet-18, microsoft/resnet-50, ResNetConfig(...)"

    def matches(self, model: nn.Module) -> bool:
        return _is_a(model, "ResNetForImageClassification")

    def describe(self, model: nn.Module) -> ModelSpec:
        stem = "resnet.embedder.embedder"
        layers = [Layer(f"{stem}.convolution", f"{stem}.normalization")]
        groups = []
        for s, stage in enumerate(model.resnet.encoder.stages):
            for i, block in enumerate(stage.layers):
                p = f"resnet.encoder.stages.{s}.layers.{i}"
                convs = [
                    Layer(f"{p}.layer.{k}.convolution", f"{p}.layer.{k}.normalization") for k in range(len(block.layer))
                ]
                layers += convs
                for k in range(len(convs) - 1):
                    relu = isinstance(block.layer[k].activation, nn.ReLU)
                    groups.append(
                        ChannelGroup(
                            convs[k], (Consumer(convs[k + 1].name),), scale_commutes=relu, relu_after_norm=relu
                        )
                    )
                if hasattr(block.shortcut, "convolution"):
                    layers.append(Layer(f"{p}.shortcut.convolution", f"{p}.shortcut.normalization"))
        if isinstance(model.classifier[-1], nn.Linear):
            layers.append(Layer(f"classifier.{len(model.classifier) - 1}"))
        return ModelSpec(family=self.family, layers=tuple(layers), groups=tuple(groups))


class HFConvNextAdapter:
    family = "transformers ConvNeXt (ConvNextForImageClassification)"
    examples = "facebook/convnext-tiny-224, ConvNextConfig(...)"

    def matches(self, model: nn.Module) -> bool:
        return _is_a(model, "ConvNextForImageClassification")

    def describe(self, model: nn.Module) -> ModelSpec:
        return mlp_spec(model, self.family, "pwconv1", "pwconv2")


class HFViTAdapter:
    family = "transformers ViT (ViTForImageClassification)"
    examples = "google/vit-base-patch16-224, ViTConfig(...)"

    def matches(self, model: nn.Module) -> bool:
        return _is_a(model, "ViTForImageClassification")

    def describe(self, model: nn.Module) -> ModelSpec:
        return mlp_spec(model, self.family, "fc1", "fc2")
