"""Architecture adapters: one per model family, each returning a ``ModelSpec`` (data, no math)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn

from ..errors import InvalidArgumentError, UnsupportedModelError
from .base import Adapter, ChannelGroup, Consumer, Layer, ModelSpec, conv_norm_pairs, mlp_spec
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
    "mlp_spec",
    "describe_model",
    "register_adapter",
    "registered_adapter",
    "unregister_adapter",
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


def unregister_adapter(adapter: Adapter) -> None:
    """Remove an adapter added with ``register_adapter`` (an adapter not registered is refused by name)."""
    if adapter not in ADAPTERS:
        raise InvalidArgumentError(f"adapter {adapter!r} is not registered.")
    ADAPTERS.remove(adapter)


@contextmanager
def registered_adapter(adapter: Adapter) -> Iterator[Adapter]:
    """Use ``adapter`` inside a ``with`` block only (first in line, removed again on exit).

    >>> from udfc_hub.adapters import TimmResNetAdapter
    >>> with registered_adapter(TimmResNetAdapter()) as a:
    ...     ADAPTERS[0] is a
    True
    """
    register_adapter(adapter)
    try:
        yield adapter
    finally:
        unregister_adapter(adapter)


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
