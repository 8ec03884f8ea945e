"""timm entrypoints ``udfc_<base>`` that rebuild a compressed model from its config.json ``model_args``.

timm has no plugin discovery: these names exist once ``udfc_hub`` is imported. Each entrypoint builds the base
timm model, shrinks the pruned layers to the stored widths, and swaps the quantized layers for classes whose
state dict holds packed codes; timm's strict loader then fills everything from ``model.safetensors``.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn as nn
from safetensors import SafetensorError
from timm.models import build_model_with_cfg, register_model

from ..adapters import ModelSpec, describe_model
from ..errors import ArtifactError
from ..surgery import slice_channels
from .format import FORMAT_VERSION
from .quantized import quantize_module

__all__ = ["PREFIX", "build_skeleton", "register_compressed", "resize_model", "udfc_name"]

PREFIX = "udfc_"
# timm modules whose models udfc_hub can compress: every one of their names gets a udfc_ twin
_BASE_MODULES = ("resnet", "cifar_resnet", "efficientnet", "vgg", "convnext", "vision_transformer")

default_cfgs: dict[str, dict[str, Any]] = {}


def udfc_name(base_architecture: str) -> str:
    return PREFIX + base_architecture


def build_skeleton(
    base_architecture: str,
    channels: dict[str, int],
    format_version: int = FORMAT_VERSION,
    bits: int | None = None,
    quantized_layers: dict[str, list[int]] | None = None,
    provenance: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The base model with pruned widths and quantized-layer classes; weights are placeholders until loaded.

    ``channels``: kept output channels per pruned producer layer. ``quantized_layers``: the scale shape of each
    quantized layer. ``provenance`` (settings, base model and its size, measured accuracy) is kept on the model so
    that saving it again writes the same files. ``kwargs`` go to ``timm.create_model`` (``num_classes``, ...).
    """
    if format_version != FORMAT_VERSION:
        from .. import __version__

        raise ArtifactError(
            f"this artifact uses udfc format version {format_version!r}; this udfc_hub ({__version__}) reads version "
            f"{FORMAT_VERSION}. Upgrade udfc-hub: pip install -U udfc-hub"
        )
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    model = timm.create_model(base_architecture, pretrained=False, **kwargs)
    spec = describe_model(model)
    resize_model(model, spec, channels)
    for name, scale_shape in (quantized_layers or {}).items():
        if bits is None:
            raise ArtifactError("model_args lists quantized layers but no 'bits'")
        quantize_module(_get(model, name), bits, tuple(scale_shape))
    model.udfc_model_args = {
        "format_version": format_version,
        "base_architecture": base_architecture,
        "channels": dict(channels),
        "bits": bits,
        "quantized_layers": {k: list(v) for k, v in (quantized_layers or {}).items()},
        "provenance": provenance or {},
    }
    return model


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ArtifactError(f"config.json names layer {name!r}, which the base model does not have") from None


def resize_model(model: nn.Module, spec: ModelSpec, channels: dict[str, int]) -> None:
    """Give pruned producers, their norms, aligned modules and consumers their stored widths (empty values)."""
    groups = {g.producer.name: g for g in spec.groups}
    for name, width in channels.items():
        group = groups.get(name)
        if group is None:
            raise ArtifactError(f"config.json prunes {name!r}, which is not a prunable layer of this model")
        n = _get(model, name).weight.shape[0]
        if not 0 < int(width) <= n:
            raise ArtifactError(f"config.json keeps {width} channels of {name!r}, which has {n}")
        keep = torch.arange(int(width))
        for mod_name in (name, group.producer.norm, *group.aligned):
            if mod_name:
                slice_channels(_get(model, mod_name), keep, 0)
        for c in group.consumers:
            slice_channels(_get(model, c.name), keep, c.dim)


def _make_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if "base_architecture" not in kwargs:
            raise ArtifactError(
                f"{name} rebuilds a udfc_hub artifact and needs its model_args; load it with "
                f"timm.create_model('hf-hub:<repo>', pretrained=True) or 'local-dir:<folder>'."
            )
        try:
            return build_model_with_cfg(build_skeleton, name, pretrained, **kwargs)
        except (SafetensorError, RuntimeError, OSError) as e:
            if not pretrained:
                raise
            where = _weights_location(kwargs.get("pretrained_cfg"))
            raise ArtifactError(
                f"could not load the weights of {name} from {where}: the file is missing, truncated or corrupt, or "
                f"its tensors disagree with config.json ({type(e).__name__}: {str(e)[:400]})"
            ) from e

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"A udfc_hub-compressed {name[len(PREFIX) :]} (skeleton from config.json model_args)."
    return entrypoint


def _weights_location(cfg: Any) -> str:
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    if cfg.get("file"):
        return f"{cfg['file']}/model.safetensors"
    return f"hf-hub:{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else "its pretrained source"


def register_compressed(base_architecture: str) -> str:
    """Register ``udfc_<base_architecture>`` with timm (once) and return that name."""
    name = udfc_name(base_architecture)
    if name in default_cfgs:
        return name
    base_cfg = timm.models.get_pretrained_cfg(base_architecture)
    cfg = base_cfg.to_dict(remove_source=True, remove_null=True) if base_cfg is not None else {}
    default_cfgs[name] = cfg
    register_model(_make_entrypoint(name))
    return name


def _register_all() -> None:
    for base in timm.list_models(module=list(_BASE_MODULES)):
        if not base.startswith(PREFIX):
            register_compressed(base)


_register_all()
