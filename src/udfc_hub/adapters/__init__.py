"""Architecture adapters: one per model family, each returning a ``ModelSpec`` (data, no math)."""

from __future__ import annotations

import torch.nn as nn

from ..errors import UnsupportedModelError
from .base import Adapter, ChannelGroup, Consumer, Layer, ModelSpec, conv_norm_pairs
from .cifar_resnet import CifarResNetAdapter
from .efficientnet import TimmEfficientNetAdapter
from .hf import HFConvNextAdapter, HFResNetAdapter, HFViTAdapter
from .resnet import TimmResNetAdapter
from .transformer_mlp import TimmConvNeXtAdapter, TimmViTAdapter
from .vgg import TimmVGGAdapter

__all__ = [
    "ADAPTERS",
    "Adapter",
    "ChannelGroup",
    "Consumer",
    "Layer",
    "ModelSpec",
    "conv_norm_pairs",
    "describe_model",
    "register_adapter",
]

ADAPTERS: list[Adapter] = [
    TimmResNetAdapter(),
    CifarResNetAdapter(),
    TimmEfficientNetAdapter(),
    TimmVGGAdapter(),
    TimmConvNeXtAdapter(),
    TimmViTAdapter(),
    HFResNetAdapter(),
    HFConvNextAdapter(),
    HFViTAdapter(),
]


def register_adapter(adapter: Adapter) -> Adapter:
    """Add an adapter; later registrations are tried first, so a user adapter can override a built-in one."""
    ADAPTERS.insert(0, adapter)
    return adapter


def describe_model(model: nn.Module) -> ModelSpec:
    """The ``ModelSpec`` of ``model`` from the first adapter that matches it.

    Raises ``UnsupportedModelError`` naming the supported families when none does.
    """
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter.describe(model)
    families = "\n".join(f"  - {a.family}: {a.examples}" for a in ADAPTERS)
    raise UnsupportedModelError(
        f"No udfc_hub adapter supports {type(model).__module__}.{type(model).__name__}. Supported families:\n{families}"
    )
