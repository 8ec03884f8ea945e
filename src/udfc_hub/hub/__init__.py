"""Artifact and Hub I/O: packed safetensors, config.json, model card, timm entrypoints (registered on import),
transformers twins (``transformers_models``: registered once transformers itself is imported, see
``udfc_hub.register``)."""

from . import timm_models  # noqa: F401  (registers the udfc_* architectures with timm)
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
