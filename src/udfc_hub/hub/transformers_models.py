"""transformers-native twins of ResNet, ConvNeXt and ViT image classifiers with per-layer widths and packed weights.

A compressed ``ResNetForImageClassification`` cannot load into the stock class (its widths differ per layer, and
its quantized layers store packed codes), so it is saved under its own ``model_type``: ``udfc_resnet``,
``udfc_convnext`` or ``udfc_vit``. Importing ``udfc_hub`` registers these with ``AutoConfig`` and
``AutoModelForImageClassification``; without the import, transformers fails loudly ("does not recognize this
architecture") instead of loading random weights. The config is the base config plus a ``udfc`` block (format
version, kept channels, bits, scale shapes, provenance); the model class builds the base model, shrinks and
quantizes it to match, and transformers' own loader fills it from ``model.safetensors``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch.nn as nn
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from ..adapters import describe_model
from ..errors import ArtifactError
from .manifest import Manifest
from .quantized import is_quantized
from .validate import check_finite, validate_folder

__all__ = [
    "UdfcResNetConfig",
    "UdfcResNetForImageClassification",
    "UdfcConvNextConfig",
    "UdfcConvNextForImageClassification",
    "UdfcViTConfig",
    "UdfcViTForImageClassification",
    "is_transformers_model",
    "udfc_twin",
]


def _artifact_folder(source: Any, kwargs: dict[str, Any]) -> Path | None:
    """The local folder of a ``from_pretrained`` source: the folder itself, or the Hub snapshot holding its
    config.json and model.safetensors (downloaded now; transformers would fetch the same files next)."""
    local = Path(str(source))
    if local.is_dir():
        return local
    from huggingface_hub import hf_hub_download

    where = {k: kwargs[k] for k in ("revision", "cache_dir", "token") if kwargs.get(k) is not None}
    try:
        hf_hub_download(str(source), "config.json", **where)
        return Path(hf_hub_download(str(source), "model.safetensors", **where)).parent
    except Exception:  # not a repo, no network, no such file: transformers' own loader says which
        return None


class _UdfcModelMixin:
    """Shrinks and quantizes the freshly built base model to what ``config.udfc`` describes."""

    config: Any

    def _udfc_build(self) -> None:
        manifest = Manifest.from_udfc_block(self.config.udfc)
        manifest.apply(self, describe_model(self))
        # the float weight of a quantized layer is not in the file: it is derived from the codes (``_init_weights``)
        patterns = {rf"(^|\.){re.escape(name)}\.weight$" for name in manifest.quantized_layers}
        self._keys_to_ignore_on_load_missing = set(self._keys_to_ignore_on_load_missing or ()) | patterns

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, made strict: a local folder is validated before anything is allocated, a missing,
        unexpected or mis-shaped tensor is an ``ArtifactError`` (transformers only reports it), and every packed
        layer's float weight is materialised at once (not left on the meta device until the first forward)."""
        folder = _artifact_folder(pretrained_model_name_or_path, kwargs)
        if folder is not None:
            validate_folder(folder)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(problems.values()):
            listed = "; ".join(f"{k.replace('_', ' ')}: {v[:5]}" for k, v in problems.items() if v)
            raise ArtifactError(f"{pretrained_model_name_or_path}: the weights do not match config.json ({listed}).")
        for module in model.modules():
            if is_quantized(module) and module.weight.is_meta:
                module.init_non_persistent_buffers()
        check_finite(model.state_dict(), str(pretrained_model_name_or_path))
        return (model, info) if want_info else model

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if hasattr(module, "init_non_persistent_buffers"):  # a quantized layer: weight = dequantized codes
            module.init_non_persistent_buffers()


@strict
class UdfcResNetConfig(ResNetConfig):
    model_type = "udfc_resnet"
    udfc: dict | None = None


@strict
class UdfcConvNextConfig(ConvNextConfig):
    model_type = "udfc_convnext"
    udfc: dict | None = None


@strict
class UdfcViTConfig(ViTConfig):
    model_type = "udfc_vit"
    udfc: dict | None = None


class UdfcResNetForImageClassification(_UdfcModelMixin, ResNetForImageClassification):
    config_class = UdfcResNetConfig

    def __init__(self, config: UdfcResNetConfig):
        super().__init__(config)
        self._udfc_build()


class UdfcConvNextForImageClassification(_UdfcModelMixin, ConvNextForImageClassification):
    config_class = UdfcConvNextConfig

    def __init__(self, config: UdfcConvNextConfig):
        super().__init__(config)
        self._udfc_build()


class UdfcViTForImageClassification(_UdfcModelMixin, ViTForImageClassification):
    config_class = UdfcViTConfig

    def __init__(self, config: UdfcViTConfig):
        super().__init__(config)
        self._udfc_build()


# stock class -> (udfc config class, udfc model class)
_TWINS: dict[type, tuple[type, type]] = {
    ResNetForImageClassification: (UdfcResNetConfig, UdfcResNetForImageClassification),
    ConvNextForImageClassification: (UdfcConvNextConfig, UdfcConvNextForImageClassification),
    ViTForImageClassification: (UdfcViTConfig, UdfcViTForImageClassification),
}


def is_transformers_model(model: nn.Module) -> bool:
    """A transformers image classifier that udfc_hub saves natively (stock or already a udfc twin)."""
    return isinstance(model, tuple(_TWINS))


def udfc_twin(model: nn.Module) -> tuple[type, type]:
    """The (config class, model class) a compressed ``model`` is saved as."""
    for stock, twin in _TWINS.items():
        if isinstance(model, stock):
            return twin
    raise ArtifactError(f"{type(model).__name__} has no udfc transformers twin")


for _config_cls, _model_cls in _TWINS.values():
    AutoConfig.register(_config_cls.model_type, _config_cls, exist_ok=True)
    AutoModelForImageClassification.register(_config_cls, _model_cls, exist_ok=True)
