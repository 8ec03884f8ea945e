"""timm ResNets (``timm.models.resnet.ResNet``) with BasicBlock or Bottleneck blocks.

Pruned: each block's inner channels (BasicBlock: conv1 out / conv2 in; Bottleneck: conv1 out / conv2 in and
conv2 out / conv3 in). Never pruned: the residual stream (stem, block outputs, downsample) and the classifier.
Quantized: every conv and the classifier.
"""

from __future__ import annotations

import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..errors import UnsupportedModelError
from .base import ChannelGroup, Consumer, Layer, ModelSpec, conv_norm_pairs


class TimmResNetAdapter:
    family = "timm ResNet (BasicBlock/Bottleneck)"
    examples = "resnet18, resnet26, resnet34, resnet50, resnet101, resnet152, resnet18d, resnet50d, ..."

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, ResNet)

    def describe(self, model: nn.Module) -> ModelSpec:
        layers: list[Layer] = []
        groups: list[ChannelGroup] = []
        if isinstance(model.conv1, nn.Conv2d):
            layers.append(Layer("conv1", "bn1"))
        else:  # deep stem: Sequential(conv, bn, act, conv, bn, act, conv); the last conv's norm is model.bn1
            stem = conv_norm_pairs(model.conv1, "conv1")
            layers.extend(stem[:-1] + [Layer(stem[-1].name, "bn1")])
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for i, block in enumerate(getattr(model, stage)):
                prefix = f"{stage}.{i}"
                _check_block(block, prefix)
                convs = ["conv1", "conv2"] + (["conv3"] if isinstance(block, Bottleneck) else [])
                acts = ["act1", "act2"]
                # the last conv's BN output is added to the (downsampled) block input
                shortcut = (prefix, f"{prefix}.downsample" if block.downsample is not None else None)
                for k, conv in enumerate(convs):
                    last = k + 1 == len(convs)
                    layer = Layer(f"{prefix}.{conv}", f"{prefix}.bn{k + 1}", residual=shortcut if last else None)
                    layers.append(layer)
                    if k + 1 < len(convs):
                        relu = isinstance(getattr(block, acts[k]), nn.ReLU)
                        groups.append(
                            ChannelGroup(
                                producer=layer,
                                consumers=(Consumer(f"{prefix}.{convs[k + 1]}"),),
                                scale_commutes=relu,
                                relu_after_norm=relu and _plain(block, k),
                            )
                        )
                if block.downsample is not None:
                    layers.extend(conv_norm_pairs(block.downsample, f"{prefix}.downsample"))
        if isinstance(model.fc, nn.Linear):
            layers.append(Layer("fc"))
        return ModelSpec(family=self.family, layers=tuple(layers), groups=tuple(groups))


def _plain(block: nn.Module, k: int) -> bool:
    """Nothing but the ReLU between inner conv k's BN and the next conv (drop-block and blur-pool, when
    present, sit after BasicBlock's bn1 and after Bottleneck's bn2)."""
    if isinstance(block, Bottleneck) and k == 0:
        return True
    between = (getattr(block, "drop_block", None), getattr(block, "aa", None))
    return all(m is None or isinstance(m, nn.Identity) for m in between)


def _check_block(block: nn.Module, prefix: str) -> None:
    if not isinstance(block, (BasicBlock, Bottleneck)):
        raise UnsupportedModelError(
            f"{prefix} is a {type(block).__name__}; the ResNet adapter supports timm's BasicBlock and Bottleneck only."
        )
    inner = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    if inner.groups != 1 or block.conv1.groups != 1:
        raise UnsupportedModelError(
            f"{prefix} has grouped convolutions (ResNeXt-style, groups={inner.groups}); "
            "pruning across groups has no closed form here. Supported: groups=1 ResNets "
            "such as resnet18..152 and resnet*d."
        )
    if block.se is not None:
        raise UnsupportedModelError(
            f"{prefix} has an attention/SE layer ({type(block.se).__name__}); the ResNet "
            "adapter supports plain blocks without attention."
        )
    if block.aa is not None and not isinstance(block.aa, nn.Identity):
        raise UnsupportedModelError(
            f"{prefix} has an anti-aliasing layer ({type(block.aa).__name__}); the ResNet "
            "adapter supports blocks without anti-aliasing."
        )
