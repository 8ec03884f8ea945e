"""timm entrypoints ``udfc_<base>`` that rebuild a compressed model from its config.json ``model_args``.

timm has no plugin discovery: these names exist once ``udfc_hub`` is imported. Each entrypoint builds the base
timm model, shrinks the pruned layers to the stored widths, and swaps the quantized layers for classes whose
state dict holds packed codes; timm's strict loader then fills everything from ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
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
from .validate import (
    CONFIG_NAME,
    DIGEST_KEY,
    WEIGHTS_NAME,
    building_expected_state,
    check_loaded,
    validate_folder,
)

__all__ = ["PREFIX", "build_skeleton", "register_compressed", "udfc_name"]

PREFIX = "udfc_"

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
    manifest_keys = (
        "format_version", "base_architecture", "channels", "bits", "quantized_layers", "shapes", "provenance",
        "grid", "act_bits", "act_layers", "act_inputs", "act_outputs", "layer_bits",
    )  # fmt: skip
    stored = {k: model_args.pop(k) for k in manifest_keys if k in model_args}
    manifest = Manifest.from_model_args({**stored, **{k: model_args[k] for k in BASE_ARG_KEYS if k in model_args}})
    model_args.pop("pretrained_cfg", None)
    model_args.pop("pretrained_cfg_overlay", None)
    model = timm.create_model(manifest.base_architecture, pretrained=False, **model_args)
    manifest.apply(model, describe_model(model) if manifest.needs_spec else None)
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
        if pretrained:
            folder = _source_folder(kwargs.get("pretrained_cfg"))
        else:  # transformers' TimmWrapper builds with pretrained=False, then loads the weights itself
            folder = None if building_expected_state() else _transformers_checkpoint_folder()
        config = None
        if folder is not None:  # untrusted input: config and weights header checked before anything is allocated
            config = validate_folder(folder)
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
        if config is not None:  # a re-save records a digest only where the source did (older files re-save as is)
            model.udfc_recorded_digest = DIGEST_KEY in config["udfc"]
        if pretrained:
            check_loaded(model, _weights_location(kwargs.get("pretrained_cfg")))
        elif not building_expected_state():
            where = f"{folder}/{WEIGHTS_NAME}" if folder is not None else "the loaded weights"
            model.init_non_persistent_buffers = lambda: _check_filled_by_transformers(model, where)
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"A udfc_hub-compressed {name[len(PREFIX) :]} (skeleton from config.json model_args)."
    return entrypoint


def _transformers_checkpoint_folder() -> Path | None:
    """The folder that a ``transformers`` ``from_pretrained`` up the call stack is loading, if there is one.

    transformers' ``TimmWrapper`` builds the timm model with ``pretrained=False`` and no word of where the weights
    come from; it has resolved (downloaded) ``model.safetensors`` before it builds the model, into the local
    ``checkpoint_files`` of ``PreTrainedModel.from_pretrained``. Reading that frame is the only hook transformers
    offers to check the folder before the config's shapes are allocated. Not found (a model built from a config
    alone, another transformers version): ``None``, and the load report plus ``_check_filled_by_transformers``
    remain.
    """
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return None
    code = getattr(inspect.unwrap(PreTrainedModel.from_pretrained.__func__), "__code__", None)
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    files = frame.f_locals.get("checkpoint_files") if frame is not None else None
    if not files or not isinstance(files, list | tuple):
        return None
    folder = Path(files[0]).parent
    return folder if (folder / CONFIG_NAME).is_file() else None


def _check_filled_by_transformers(model: nn.Module, where: str) -> None:
    """Refuse a transformers load that left tensors of the artifact unfilled or filled them with non-finite values.

    transformers' ``TimmWrapper`` loads ``model.safetensors`` itself and only prints a report for tensors the file
    lacks, which it then initialises at random. It marks every tensor it loaded with ``_is_hf_initialized`` and,
    once loading is done, calls each module's ``init_non_persistent_buffers`` (the root module last): here a model
    in which some tensors were loaded and others not is refused. A model built from a config alone (nothing
    loaded) is left as it is. The check runs once and then removes itself (a closure kept on the instance would
    stop the model from being pickled).
    """
    model.__dict__.pop("init_non_persistent_buffers", None)
    tensors = model.state_dict(keep_vars=True)
    loaded = [name for name, t in tensors.items() if getattr(t, "_is_hf_initialized", False)]
    missing = [name for name, t in tensors.items() if not getattr(t, "_is_hf_initialized", False)]
    if loaded and missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ArtifactError(
            f"the weights file lacks {len(missing)} tensor(s) that config.json describes ({shown}): the artifact is "
            f"truncated or was edited; re-download it or rebuild it with udfc_hub.save_pretrained"
        )
    if loaded:
        check_loaded(model, where)


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
    """Every timm architecture gets its ``udfc_`` twin (any of them may be traced and compressed; 0.2 s)."""
    for base in timm.list_models():
        if not base.startswith(PREFIX):
            register_compressed(base)


_register_all()
