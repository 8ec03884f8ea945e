"""Artifact and Hub I/O: packed safetensors, config.json, model card, timm entrypoints (registered on import)."""

from . import (
    timm_models,  # noqa: F401  (registers udfc_* architectures with timm)
    transformers_models,  # noqa: F401  (registers udfc_resnet/udfc_convnext/udfc_vit with transformers)
)
from .artifact import FORMAT, FORMAT_VERSION, check_artifact, pack_model, read_config, save_pretrained
from .quantized import QuantizedConv2d, QuantizedLinear

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "QuantizedConv2d",
    "QuantizedLinear",
    "check_artifact",
    "pack_model",
    "read_config",
    "save_pretrained",
]
