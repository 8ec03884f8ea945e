"""timm entrypoints ``udfc_<base>`` that rebuild a compressed model from its config.json ``model_args``.

timm has no plugin discovery: these names exist once ``udfc_hub`` is imported. Each entrypoint builds the base
timm model, shrinks the pruned layers to the stored widths, and swaps the quantized layers for classes whose
state dict holds packed codes; timm's strict loader then fills everything from ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from safetensors import SafetensorError
from timm.models import build_model_with_cfg, register_model

from ..adapters import describe_model
from ..errors import ArtifactError
from .manifest import BASE_ARG_KEYS, Manifest
from .validate import check_finite, validate_folder

__all__ = ["PREFIX", "build_skeleton", "register_compressed", "udfc_name"]

PREFIX = "udfc_"
# timm modules whose models udfc_hub can compress: every one of their names gets a udfc_ twin
_BASE_MODULES = ("resnet", "cifar_resnet", "efficientnet", "vgg", "convnext", "vision_transformer")

default_cfgs: dict[str, dict[str, Any]] = {}


def udfc_name(base_architecture: str) -> str:
    return PREFIX + base_architecture


def build_skeleton(**model_args: Any) -> nn.Module:
    """The base model with pruned widths and packed-weight layer classes; weights are placeholders until loaded.

    ``model_args`` is config.json's ``model_args`` (the manifest: base architecture, kept channels, bits, scale
    shapes, provenance) plus what timm adds (``num_classes``, ``global_pool``, ...), which goes to
    ``timm.create_model``. The manifest is kept on the model (``udfc_manifest``) so that saving it again writes
    the same files.
    """
    manifest_keys = ("format_version", "base_architecture", "channels", "bits", "quantized_layers", "provenance")
    stored = {k: model_args.pop(k) for k in manifest_keys if k in model_args}
    manifest = Manifest.from_model_args({**stored, **{k: model_args[k] for k in BASE_ARG_KEYS if k in model_args}})
    model_args.pop("pretrained_cfg", None)
    model_args.pop("pretrained_cfg_overlay", None)
    model = timm.create_model(manifest.base_architecture, pretrained=False, **model_args)
    manifest.apply(model, describe_model(model))
    # what differs from the defaults, as pack_model records it (timm adds arguments such as in_chans of its own)
    model.udfc_manifest = dataclasses.replace(manifest, base_args=constructor_args(model, manifest.base_architecture))
    return model


def constructor_args(model: nn.Module, arch: str) -> dict[str, Any]:
    """The constructor arguments of ``BASE_ARG_KEYS`` in which ``model`` differs from ``arch``'s defaults."""
    with torch.device("meta"):
        default = timm.create_model(arch)

    def first_conv(m):
        return next((c for c in m.modules() if isinstance(c, nn.Conv2d)), None)

    def pool(m):
        p = getattr(m, "global_pool", None)
        return p if isinstance(p, str) else getattr(p, "pool_type", None)

    def img_size(m):
        size = getattr(getattr(m, "patch_embed", None), "img_size", None)
        return list(size) if size is not None else None

    found = {
        "in_chans": (lambda m: getattr(first_conv(m), "in_channels", None)),
        "img_size": img_size,
        "global_pool": pool,
    }
    return {k: get(model) for k, get in found.items() if get(model) != get(default)}


def _make_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if "base_architecture" not in kwargs:
            raise ArtifactError(
                f"{name} rebuilds a udfc_hub artifact and needs its model_args; load it with "
                f"timm.create_model('hf-hub:<repo>', pretrained=True) or 'local-dir:<folder>'."
            )
        folder = _source_folder(kwargs.get("pretrained_cfg")) if pretrained else None
        if folder is not None:  # untrusted input: config and weights header checked before anything is allocated
            validate_folder(folder)
        try:
            model = build_model_with_cfg(build_skeleton, name, pretrained, **kwargs)
        except (SafetensorError, RuntimeError, OSError) as e:
            if not pretrained:
                raise
            where = _weights_location(kwargs.get("pretrained_cfg"))
            raise ArtifactError(
                f"could not load the weights of {name} from {where}: the file is missing, truncated or corrupt, or "
                f"its tensors disagree with config.json ({type(e).__name__}: {str(e)[:400]})"
            ) from e
        if pretrained:
            check_finite(model.state_dict(), _weights_location(kwargs.get("pretrained_cfg")))
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"A udfc_hub-compressed {name[len(PREFIX) :]} (skeleton from config.json model_args)."
    return entrypoint


def _source_folder(cfg: Any) -> Path | None:
    """The folder holding the config.json and model.safetensors that a ``local-dir:`` / ``hf-hub:`` load reads."""
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    if cfg.get("file"):
        folder = Path(cfg["file"])
        return folder if folder.is_dir() else folder.parent
    if cfg.get("hf_hub_id"):
        from huggingface_hub import hf_hub_download

        hf_hub_download(cfg["hf_hub_id"], "config.json")  # cached: timm has just fetched it
        return Path(hf_hub_download(cfg["hf_hub_id"], "model.safetensors")).parent  # timm fetches it next anyway
    return None


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
