"""udfc-hub: data-free pruning and low-bit quantization of timm and Hugging Face vision models.

``import udfc_hub`` registers the ``udfc_*`` architectures with timm and transformers (so that
``timm.create_model("hf-hub:...")`` and ``AutoModelForImageClassification.from_pretrained`` load compressed
models) and the CIFAR ResNets with timm. The public names below are resolved on first use.

>>> import timm, udfc_hub
>>> result = udfc_hub.compress(timm.create_model("resnet18"), prune_ratio=0.3, bits=6, layer_ratios="uniform")
>>> result.report.layers[1].name, result.report.layers[1].kept_channels
('layer1.0.conv1', 44)
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from ._version import __version__
from .errors import ArtifactError, InvalidArgumentError, PublishError, UdfcError, UnsupportedModelError

# public name -> the submodule that defines it
_EXPORTS = {
    "ChannelGroup": "adapters",
    "Consumer": "adapters",
    "Layer": "adapters",
    "ModelSpec": "adapters",
    "describe_model": "adapters",
    "register_adapter": "adapters",
    "registered_adapter": "adapters",
    "unregister_adapter": "adapters",
    "compress_and_push": "api",
    "load_model": "api",
    "METHODS": "config",
    "CompressionConfig": "config",
    "compress": "engine",
    "evaluate": "evaluation",
    "export_onnx": "export",
    "check_artifact": "hub",
    "pack_model": "hub",
    "save_pretrained": "hub",
    "push": "hub.publish",
    "ModelStats": "profile",
    "profile_model": "profile",
    "CompressionReport": "report",
    "CompressionResult": "report",
    "LayerReport": "report",
    "sweep": "sweeps",
}
_SUBMODULES = (
    "adapters",
    "api",
    "config",
    "engine",
    "evaluation",
    "export",
    "hub",
    "models",
    "ops",
    "probe",
    "steps",
    "sweeps",
)

__all__ = [
    "ArtifactError",
    "ChannelGroup",
    "CompressionConfig",
    "CompressionReport",
    "CompressionResult",
    "Consumer",
    "InvalidArgumentError",
    "Layer",
    "LayerReport",
    "METHODS",
    "ModelSpec",
    "ModelStats",
    "PublishError",
    "UdfcError",
    "UnsupportedModelError",
    "__version__",
    "check_artifact",
    "compress",
    "compress_and_push",
    "describe_model",
    "evaluate",
    "export_onnx",
    "load_model",
    "pack_model",
    "profile_model",
    "push",
    "register",
    "register_adapter",
    "registered_adapter",
    "save_pretrained",
    "sweep",
    "unregister_adapter",
]


def register() -> None:
    """Register the ``udfc_*`` architectures with timm and transformers and the CIFAR ResNets with timm.

    Runs at ``import udfc_hub``; calling it again does nothing.
    """
    for name in (".models", ".hub"):  # importing them registers
        importlib.import_module(name, __name__)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        register()
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'udfc_hub' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


# The `udfc-hub` command's launcher asks for a deferred registration, so that --help and usage errors answer
# without importing torch; every other import registers now, as timm and transformers need it.
if not getattr(sys.modules.get("udfc_hub_cli"), "DEFER_REGISTRATION", False):
    register()
