"""udfc-hub: data-free pruning and low-bit quantization of timm and Hugging Face vision models.

``import udfc_hub`` registers the ``udfc_*`` architectures with timm (so that ``timm.create_model("hf-hub:...")``
loads compressed models) and the CIFAR ResNets with timm. The transformers twins (so that
``AutoModelForImageClassification.from_pretrained`` loads them) are registered when transformers is imported,
before or after udfc_hub: ``import udfc_hub`` alone does not import transformers. The public names below are
resolved on first use.

>>> import timm, udfc_hub
>>> result = udfc_hub.compress(timm.create_model("resnet18"), prune_ratio=0.3, bits=6, layer_ratios="uniform")
>>> result.report.layers[1].name, result.report.layers[1].kept_channels
('layer1.0.conv1', 44)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
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
    "cache_info": "cache",
    "clear_cache": "cache",
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
    "cache",
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
    "cache_info",
    "check_artifact",
    "clear_cache",
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

    Runs at ``import udfc_hub``; calling it again does nothing. The transformers side waits for transformers:
    registered now if it is imported already, else right after ``import transformers`` runs (an import hook), so
    that importing udfc_hub costs about what importing timm does.
    """
    for name in (".models", ".hub"):  # importing them registers
        importlib.import_module(name, __name__)
    if "transformers" in sys.modules:
        _register_transformers()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("transformers", _register_transformers))


def _register_transformers() -> None:
    importlib.import_module(".hub.transformers_models", __name__)  # importing it registers the twins


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback`` once, right after the module ``name`` is first imported (and only then)."""

    def __init__(self, name: str, callback: Any) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once: the real finders take it from here
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            try:
                self.callback()
            except Exception as e:  # noqa: BLE001 - never break the user's own import of transformers
                import warnings

                warnings.warn(f"udfc_hub could not register with {fullname} ({type(e).__name__}: {e})", stacklevel=2)

        spec.loader.exec_module = exec_module
        return spec


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
    """The public names (as ``__all__``) and the subpackages, not the module's own imports."""
    return sorted(set(__all__) | set(_SUBMODULES))


# The `udfc-hub` command's launcher asks for a deferred registration, so that --help and usage errors answer
# without importing torch; every other import registers now, as timm and transformers need it.
if not getattr(sys.modules.get("udfc_hub_cli"), "DEFER_REGISTRATION", False):
    register()
