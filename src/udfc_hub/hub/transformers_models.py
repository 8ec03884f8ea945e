"""transformers-native twins of image classifiers with per-layer widths and packed weights.

A compressed ``ResNetForImageClassification`` cannot load into the stock class (its widths differ per layer, and
its quantized layers store packed codes), so it is saved under its own ``model_type``: ``udfc_resnet``,
``udfc_convnext``, ``udfc_vit`` (the classes written out below, as round 1 saved them) and ``udfc_<model_type>``
for every other ``*ForImageClassification`` class of transformers' Auto mapping (``make_twin``: Swin, DeiT, BEiT,
MobileNetV2, EfficientNet, RegNet, DINOv2, ...). Importing ``udfc_hub`` registers them all with ``AutoConfig`` and
``AutoModelForImageClassification``; without the import, transformers fails loudly ("does not recognize this
architecture") instead of loading random weights. The config is the base config plus a ``udfc`` block (format
version, kept channels, resized shapes, bits, scale shapes, provenance); the model class builds the base model,
shrinks and quantizes it to match, and transformers' own loader fills it from ``model.safetensors``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import torch.nn as nn
from huggingface_hub.dataclasses import strict
from safetensors import SafetensorError
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
from .validate import check_loaded, validate_folder

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
        manifest.apply(self, describe_model(self) if manifest.needs_spec else None)
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
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except SafetensorError as e:  # a weights file that a Hub download left truncated or garbled
            raise ArtifactError(
                f"{pretrained_model_name_or_path}: model.safetensors is truncated or corrupt ({e}); re-download it."
            ) from None
        problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(problems.values()):
            listed = "; ".join(f"{k.replace('_', ' ')}: {v[:5]}" for k, v in problems.items() if v)
            raise ArtifactError(f"{pretrained_model_name_or_path}: the weights do not match config.json ({listed}).")
        for module in model.modules():
            if is_quantized(module) and module.weight.is_meta:
                module.init_non_persistent_buffers()
        check_loaded(model, str(pretrained_model_name_or_path))
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
# image classifiers that are not one network udfc_hub could compress on its own (a wrapped timm model is saved
# in timm's layout; the rest are multi-modal or need inputs other than pixels)
_NO_TWIN = {"timm_wrapper", "shieldgemma2", "perceiver", "imagegpt", "clip", "metaclip_2", "siglip", "siglip2"}


def make_twin(stock: type) -> tuple[type, type]:
    """The udfc (config class, model class) of a stock ``*ForImageClassification`` class, made and registered once.

    The config class adds the ``udfc`` block under ``model_type = "udfc_<model_type>"``; the model class builds the
    stock model from it, then shrinks and quantizes it to the manifest (format 2 stores every resized shape, so
    no adapter is needed to rebuild it).
    """
    if stock in _TWINS:
        return _TWINS[stock]
    base_config = stock.config_class
    config_cls = strict(
        type(
            f"Udfc{base_config.__name__}",
            (base_config,),
            {"model_type": f"udfc_{base_config.model_type}", "__annotations__": {"udfc": dict | None}, "udfc": None},
        )
    )

    def __init__(self, config):
        stock.__init__(self, config)
        self._udfc_build()

    model_cls = type(
        f"Udfc{stock.__name__}",
        (_UdfcModelMixin, stock),
        {"config_class": config_cls, "__init__": __init__, "__module__": __name__},
    )
    config_cls.__module__ = __name__
    _share_weight_conversions(base_config.model_type, config_cls.model_type, stock.__name__, model_cls.__name__)
    _TWINS[stock] = (config_cls, model_cls)
    AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    AutoModelForImageClassification.register(config_cls, model_cls, exist_ok=True)
    setattr(sys.modules[__name__], config_cls.__name__, config_cls)  # picklable, and importable by name
    setattr(sys.modules[__name__], model_cls.__name__, model_cls)
    return config_cls, model_cls


def _share_weight_conversions(model_type: str, twin_type: str, class_name: str, twin_class: str) -> None:
    """transformers 5 renames some checkpoints' tensors on load and back on save (Swin's ``attention.self.key`` is
    ``attention.k_proj`` in memory), keyed by model type or class name: the twin uses its stock model's renames,
    so that its files carry the stock names and load both ways."""
    try:
        from transformers import conversion_mapping
    except ImportError:  # transformers 4: no renames
        return
    for source, target in ((model_type, twin_type), (class_name, twin_class)):
        mapping = conversion_mapping.get_checkpoint_conversion_mapping(source)
        if mapping is not None and conversion_mapping.get_checkpoint_conversion_mapping(target) is None:
            conversion_mapping.register_checkpoint_conversion_mapping(target, mapping)


def is_transformers_model(model: nn.Module) -> bool:
    """A transformers image classifier that udfc_hub saves natively (stock or already a udfc twin)."""
    return _stock_class(model) is not None


def udfc_twin(model: nn.Module) -> tuple[type, type]:
    """The (config class, model class) a compressed ``model`` is saved as."""
    stock = _stock_class(model)
    if stock is None:
        raise ArtifactError(f"{type(model).__name__} has no udfc transformers twin")
    return make_twin(stock)


def _stock_class(model: nn.Module) -> type | None:
    """The transformers image-classification class ``model`` is (or whose udfc twin it is), if any."""
    return next((cls for cls in type(model).__mro__ if cls in _TWINS), None)


def _stock_classes() -> list[type]:
    """Every stock image classifier of transformers' Auto mapping that a twin is made for (0.4 s to import)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    classes = []
    for model_type, value in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.items():
        if model_type in _NO_TWIN:
            continue
        name = value if isinstance(value, str) else value[0]  # one class per config: DeiT's, not its WithTeacher
        try:
            classes.append(getattr(transformers, name))
        except (AttributeError, ImportError):  # a class whose optional dependencies are absent
            continue
    return classes


for _config_cls, _model_cls in _TWINS.values():
    AutoConfig.register(_config_cls.model_type, _config_cls, exist_ok=True)
    AutoModelForImageClassification.register(_config_cls, _model_cls, exist_ok=True)
for _stock in _stock_classes():
    make_twin(_stock)
