"""udfc-hub: data-free pruning and low-bit quantization of timm and Hugging Face vision models.

>>> import timm, udfc_hub
>>> result = udfc_hub.compress(timm.create_model("resnet18"), prune_ratio=0.3, bits=6)
>>> result.report.layers[1].name, result.report.layers[1].kept_channels
('layer1.0.conv1', 44)
"""

from . import models  # noqa: F401  (registers cifar_resnet* with timm)
from ._version import __version__
from .adapters import (
    ChannelGroup,
    Consumer,
    Layer,
    ModelSpec,
    describe_model,
    register_adapter,
    registered_adapter,
    unregister_adapter,
)
from .api import compress_and_push, load_model
from .config import METHODS, CompressionConfig
from .engine import compress
from .errors import ArtifactError, InvalidArgumentError, PublishError, UdfcError, UnsupportedModelError
from .evaluation import evaluate
from .hub import check_artifact, pack_model, save_pretrained
from .hub.publish import push
from .profile import ModelStats, profile_model
from .report import CompressionReport, CompressionResult, LayerReport

__all__ = [
    "METHODS",
    "ArtifactError",
    "ChannelGroup",
    "CompressionConfig",
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
    "registered_adapter",
    "save_pretrained",
    "unregister_adapter",
]
