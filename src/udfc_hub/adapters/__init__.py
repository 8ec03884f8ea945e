"""Architecture adapters: one per model family, each returning a ``ModelSpec`` (data, no math)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch.nn as nn

from ..errors import InvalidArgumentError, UnsupportedModelError
from .base import Adapter, ChannelGroup, Consumer, Layer, ModelSpec, conv_norm_pairs, mlp_spec, removal_error
from .cifar_resnet import CifarResNetAdapter
from .efficientnet import TimmEfficientNetAdapter
from .graph import GraphAdapter, trace_couplings
from .hf import HFConvNextAdapter, HFResNetAdapter, HFViTAdapter
from .resnet import TimmResNetAdapter
from .transformer_mlp import TimmConvNeXtAdapter, TimmViTAdapter
from .vgg import TimmVGGAdapter

__all__ = [
    "ADAPTERS",
    "Adapter",
    "GraphAdapter",
    "ChannelGroup",
    "Consumer",
    "Layer",
    "ModelSpec",
    "conv_norm_pairs",
    "mlp_spec",
    "describe_model",
    "trace_couplings",
    "register_adapter",
    "registered_adapter",
    "removal_error",
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
    GraphAdapter(),  # last: any other model, its couplings traced from its forward pass
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


def _check_weight_layers(model: nn.Module, spec: ModelSpec, adapter: Adapter) -> None:
    """A spec may list only Conv2d / Linear layers (MixNet's MixedConv2d inside an EfficientNet is neither), each
    with a BatchNorm or no norm (an EfficientNet built with LayerNormAct2d has a LayerNorm there)."""
    for layer in spec.layers:
        norm = model.get_submodule(layer.norm) if layer.norm else None
        if norm is not None and not isinstance(norm, nn.modules.batchnorm._BatchNorm):
            raise UnsupportedModelError(
                f"{layer.norm} is a {type(norm).__name__}; the {adapter.family} adapter expects BatchNorm there"
            )
    names = [layer.name for layer in spec.layers]
    names += [n for g in spec.groups for n in (g.producer.name, *(c.name for c in g.consumers))]
    for name in dict.fromkeys(names):
        module = model.get_submodule(name)
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise UnsupportedModelError(
                f"{name} is a {type(module).__name__}; the {adapter.family} adapter describes Conv2d and "
                "Linear layers only"
            )


def describe_model(model: nn.Module) -> ModelSpec:
    """The ``ModelSpec`` of ``model`` from the first adapter that matches it and accepts it.

    A hand-written adapter that matches but refuses a variant (an SE block in a ResNet, say) gives way to the
    next one; the last, ``GraphAdapter``, traces the couplings from the forward pass and its spec notes why the
    hand-written one refused. Raises ``UnsupportedModelError`` when none accepts the model: where tracing
    stopped, or the supported families.
    """
    refused: list[str] = []
    for adapter in ADAPTERS:
        if not adapter.matches(model):
            continue
        try:
            spec = adapter.describe(model)
            _check_weight_layers(model, spec, adapter)
        except UnsupportedModelError as e:
            if adapter is ADAPTERS[-1] or not any(a.matches(model) for a in ADAPTERS[ADAPTERS.index(adapter) + 1 :]):
                raise
            refused.append(f"the {adapter.family} adapter refused it ({e}); its couplings were traced instead")
            continue
        return replace(spec, notes=(*refused, *spec.notes)) if refused else spec
    families = "\n".join(f"  - {a.family}: {a.examples}" for a in ADAPTERS)
    raise UnsupportedModelError(
        f"No udfc_hub adapter supports {type(model).__module__}.{type(model).__name__}. Supported families:\n{families}"
    )
