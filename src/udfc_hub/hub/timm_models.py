"""timm entrypoints ``udfc_<base>`` that rebuild a compressed model from its config.json ``model_args``.

timm has no plugin discovery: these names exist once ``udfc_hub`` is imported. Each entrypoint builds the base
timm model, shrinks the pruned layers to the stored widths, and swaps the quantized layers for classes whose
state dict holds packed codes; timm's strict loader then fills everything from ``model.safetensors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from safetensors import SafetensorError
from timm.models import build_model_with_cfg, register_model

from ..adapters import describe_model
from ..errors import ArtifactError
from .manifest import Manifest, read_config_file

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
    manifest = Manifest.from_model_args({k: model_args.pop(k) for k in manifest_keys if k in model_args})
    model_args.pop("pretrained_cfg", None)
    model_args.pop("pretrained_cfg_overlay", None)
    model = timm.create_model(manifest.base_architecture, pretrained=False, **model_args)
    manifest.apply(model, describe_model(model))
    model.udfc_manifest = manifest
    return model


def _make_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if "base_architecture" not in kwargs:
            raise ArtifactError(
                f"{name} rebuilds a udfc_hub artifact and needs its model_args; load it with "
                f"timm.create_model('hf-hub:<repo>', pretrained=True) or 'local-dir:<folder>'."
            )
        if pretrained:  # the whole config.json passes the one validation, not only the model_args timm hands on
            config = _source_config(kwargs.get("pretrained_cfg"))
            if config is not None:
                Manifest.from_config(config)
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


def _source_config(cfg: Any) -> dict[str, Any] | None:
    """The config.json that a ``local-dir:`` / ``hf-hub:`` load read (timm passes on only parts of it)."""
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    if cfg.get("file"):
        folder = Path(cfg["file"])
        path = (folder if folder.is_dir() else folder.parent) / "config.json"
    elif cfg.get("hf_hub_id"):
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(cfg["hf_hub_id"], "config.json"))  # cached: timm has just fetched it
    else:
        return None
    return read_config_file(path)


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
