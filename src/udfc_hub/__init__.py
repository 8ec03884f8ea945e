"""udfc-hub: data-free pruning and low-bit quantization of timm and Hugging Face vision models.

>>> import timm, udfc_hub
>>> result = udfc_hub.compress(timm.create_model("resnet18"), prune_ratio=0.3, bits=6)
>>> result.report.layers[1].name, result.report.layers[1].kept_channels
('layer1.0.conv1', 44)
"""

from importlib.metadata import PackageNotFoundError, version

from . import models  # noqa: F401  (registers cifar_resnet* with timm)
from .adapters import ChannelGroup, Consumer, Layer, ModelSpec, describe_model, register_adapter
from .engine import METHODS, CompressionReport, CompressionResult, LayerReport, compress
from .errors import ArtifactError, InvalidArgumentError, PublishError, UdfcError, UnsupportedModelError
from .evaluation import evaluate
from .hub import check_artifact, pack_model, save_pretrained
from .hub.publish import compress_and_push, load_model, push
from .profile import ModelStats, profile_model

try:
    __version__ = version("udfc-hub")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "METHODS",
    "ArtifactError",
    "ChannelGroup",
    "CompressionReport",
    "CompressionResult",
    "Consumer",
    "InvalidArgumentError",
    "Layer",
    "LayerReport",
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
    "load_model",
    "pack_model",
    "profile_model",
    "push",
    "register_adapter",
    "save_pretrained",
]
