"""Write and check a compressed model's folder: model.safetensors (packed codes), config.json, README.md.

The folder is what timm (``local-dir:`` / ``hf-hub:``) and transformers load after ``import udfc_hub``. Writing is
atomic (a temporary folder beside the target, then a rename) and deterministic (same inputs, same bytes).
"""

from __future__ import annotations

import copy
import ctypes
import errno
import glob
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..engine import CompressionResult
from ..errors import ArtifactError, InvalidArgumentError
from ..profile import ModelStats, default_input_size, profile_model
from ..surgery import input_range, output_range
from .card import render_card
from .format import ACT_FORMAT_VERSION, FLOW_FORMAT_VERSION, FORMAT, FORMAT_VERSION, MIXED_FORMAT_VERSION
from .manifest import Manifest, Provenance, read_config_file
from .quantized import convert_to_packed
from .repo_id import check_repo_id
from .timm_models import PREFIX, constructor_args, register_compressed
from .validate import CONFIG_NAME, DIGEST_KEY, WEIGHTS_NAME, validate_folder, weights_digest

__all__ = ["FORMAT", "FORMAT_VERSION", "save_pretrained", "pack_model", "read_config", "check_artifact"]

CARD_NAME = "README.md"


def _metadata(version: int = FORMAT_VERSION) -> dict[str, str]:
    """The safetensors header's metadata (a re-saved format 1 artifact keeps its version, byte for byte)."""
    return {"format": "pt", "udfc_format": FORMAT, "udfc_format_version": str(version)}


def is_transformers_model(model: nn.Module) -> bool:
    """A transformers image classifier saved as a udfc twin (only possible once transformers is imported)."""
    if "transformers" not in sys.modules:
        return False
    from .transformers_models import is_transformers_model as is_twin_source

    return is_twin_source(model)


def pack_model(result: CompressionResult, base_model: str | None = None) -> nn.Module:
    """A copy of ``result.model`` whose quantized layers save as packed codes, carrying its ``udfc_manifest``.

    The manifest is what config.json records: the skeleton (base architecture, kept channels, bits, scale shape
    of each quantized layer) and the provenance (options, base model, its size).
    """
    model = copy.deepcopy(result.model)
    transformers_native = is_transformers_model(model)
    # a base model is named only when its weights were used: loaded by name (load_model) or stated by the caller
    if transformers_native:
        base = type(model).__name__.removeprefix("Udfc")
        source = getattr(model.config, "_name_or_path", None) or None  # set by from_pretrained, "" from a config
    else:
        base = _base_architecture(model)
        source = getattr(model, "udfc_base_model", None)
    base_model = base_model or source
    license_ = (getattr(model, "pretrained_cfg", None) or {}).get("license") if base_model else None
    for name, qt in result.quantized.items():
        convert_to_packed(model.get_submodule(name), qt.bits, tuple(qt.scale.shape), qt.grid).set_codes(qt)
    ranges = {name: input_range(model.get_submodule(name)) for name in result.quantized}
    act_layers = {name: r.bits for name, r in ranges.items() if r is not None}
    act_inputs, act_outputs = {}, {}
    for name, module in model.named_modules():  # the int8 data flow (dataflow.py), in forward-definition order
        if name not in result.quantized and input_range(module) is not None:
            act_inputs[name] = input_range(module).bits
        if output_range(module) is not None:
            act_outputs[name] = output_range(module).bits
    act_bits = result.report.config.act_bits or (min(act_layers.values()) if act_layers else None)
    grid = next(iter({qt.grid for qt in result.quantized.values()} or {"dorefa"}))
    bits = result.report.config.bits
    layer_bits = {name: qt.bits for name, qt in result.quantized.items() if qt.bits != bits}
    if layer_bits:
        version = MIXED_FORMAT_VERSION
    elif act_inputs or act_outputs:
        version = FLOW_FORMAT_VERSION
    else:
        version = ACT_FORMAT_VERSION if act_layers or grid != "dorefa" else FORMAT_VERSION
    model.udfc_manifest = Manifest(
        format_version=version,
        grid=grid,
        act_bits=act_bits,
        act_layers=act_layers,
        act_inputs=act_inputs,
        act_outputs=act_outputs,
        base_architecture=base,
        base_args={} if transformers_native else constructor_args(model, base),
        channels=resized_channels(result),
        shapes=resized_shapes(result),
        bits=bits,
        layer_bits=layer_bits,
        quantized_layers={name: tuple(qt.scale.shape) for name, qt in result.quantized.items()},
        provenance=Provenance(
            settings=result.report.settings,
            base_model=base_model,
            base_license=license_,
            base_params=result.report.before.params,
            base_macs=result.report.before.macs,
        ),
    )
    if transformers_native:
        _to_twin(model)
    return model.eval()


def _loaded_manifest(model: nn.Module) -> Manifest | None:
    """The manifest of the artifact ``model`` was loaded from (timm layout or transformers twin), if any."""
    manifest = getattr(model, "udfc_manifest", None)
    block = getattr(getattr(model, "config", None), "udfc", None)
    if manifest is None and isinstance(block, dict):
        manifest = Manifest.from_udfc_block(block)
    return manifest


def resized_channels(result: CompressionResult) -> dict[str, int]:
    """Kept output channels of every pruned producer, this compression's and an earlier one's (a loaded artifact)."""
    channels = {}
    previous = _loaded_manifest(result.model)
    for name in previous.channels if previous is not None else ():
        channels[name] = int(result.model.get_submodule(name).weight.shape[0])
    for r in result.report.layers:
        if r.kept_channels < r.out_channels:
            channels[r.name] = r.kept_channels
    return channels


def resized_shapes(result: CompressionResult) -> dict[str, tuple[int, ...]]:
    """The weight shape of every module that pruning resized: each pruned group's producer, its norm, the modules
    aligned with it and its consumers (config.json's ``shapes``; the loader then needs no adapter). A model loaded
    from an artifact and compressed again keeps the shapes its first compression gave (even where this one prunes
    nothing more: quantizing a pruned artifact further)."""
    pruned = {r.name for r in result.report.layers if r.kept_channels < r.out_channels}
    previous = _loaded_manifest(result.model)
    names: list[str] = list(previous.shapes) if previous is not None else []
    if previous is not None and previous.needs_spec:  # format 1: its kept widths name the producers
        pruned |= set(previous.channels)
    for g in result.spec.groups:
        if g.producer.name in pruned:
            names += [g.producer.name, *([g.producer.norm] if g.producer.norm else []), *g.aligned]
            names += [c.name for c in g.consumers]
    return {n: tuple(result.model.get_submodule(n).weight.shape) for n in dict.fromkeys(names)}


def _to_twin(model: nn.Module) -> None:
    """Make a packed transformers model its udfc twin class, with the manifest in ``config.udfc``."""
    from .transformers_models import udfc_twin

    config_cls, model_cls = udfc_twin(model)
    fields = {
        k: v for k, v in model.config.to_dict().items() if k not in ("model_type", "transformers_version", "udfc")
    }
    fields["architectures"] = [model_cls.__name__]
    old, model.config = model.config, config_cls.from_dict({**fields, "udfc": model.udfc_manifest.to_udfc_block()})
    for module in model.modules():  # the inner model (``model.swin``) shares the config, as in a loaded twin
        if getattr(module, "config", None) is old:
            module.config = model.config
    model.__class__ = model_cls


def check_output_folder(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse a target that is a file, or a non-empty folder unless ``overwrite``; the one place that checks."""
    if not str(path):  # Path("") is the working folder, which overwrite=True would replace
        raise InvalidArgumentError("the output folder is an empty string; give a folder path, e.g. 'resnet-udfc'.")
    target = Path(path)
    if target.is_symlink() and target.is_dir():  # a link to a folder: the folder is written (renames replace links)
        target = target.resolve()
    ancestor = next((p for p in (target, *target.parents) if p.exists()), None)
    if ancestor is not None and not os.access(ancestor, os.W_OK):
        raise InvalidArgumentError(f"{target} cannot be written: {ancestor} is not writable; choose another folder.")
    if target.exists() and not target.is_dir():
        raise InvalidArgumentError(f"{target} exists and is not a folder; choose a folder path.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InvalidArgumentError(
            f"{target} exists and is not empty; pass overwrite=True (CLI: --overwrite) or choose a new folder."
        )
    # where the new folder is made (beside the target, never in it): some file systems (/proc) refuse what
    # access() allows, so a folder is made there and removed at once
    where = next((p for p in target.parents if p.exists()), None)
    if where is not None and where.is_dir():
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".udfc-probe-", dir=where))
        except OSError as e:
            raise InvalidArgumentError(
                f"{target} cannot be written: {where} refuses new folders ({e.strerror}); choose another folder."
            ) from None
    return target


def save_pretrained(
    result: CompressionResult | nn.Module,
    path: str | os.PathLike,
    overwrite: bool = False,
    *,
    base_model: str | None = None,
    accuracy: dict[str, Any] | None = None,
    repo_id: str | None = None,
    verify: bool = True,
    license: str | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and a model card ``README.md`` into the folder ``path``.

    Args:
        result: what ``udfc_hub.compress`` returned, or a model loaded from such a folder (re-saving it writes the
            same files).
        path: the folder to create. An existing non-empty folder is refused unless ``overwrite=True``.
        base_model: Hub id of the base model whose weights were compressed, for the card. Default: the source
            ``udfc_hub.load_model`` loaded pretrained weights from; none for a model created otherwise (random
            weights are not a pretrained base).
        accuracy: measured top-1 (and top-5) to put in the card, e.g.
            ``{"dataset": "ImageNet-1k val", "top1": 71.2, "base_top1": 73.3}``; nothing is claimed without it.
        repo_id: the Hub repo the folder is meant for (used in the card's usage snippet).
        verify: before the folder is put in place, load it as timm / transformers would and require the same
            logits on a small input; a folder that would not reload exactly is never written.
        license: the weights' license (a Hub license id such as ``"apache-2.0"``) where no pretrained base passes
            one on, e.g. for a model you trained yourself; without one the card says that none was given.

    Example:
        >>> import tempfile, timm, udfc_hub
        >>> result = udfc_hub.compress(timm.create_model("resnet18"), prune_ratio=0.3, bits=4)
        >>> folder = udfc_hub.save_pretrained(result, tempfile.mkdtemp() + "/resnet18-udfc")
        >>> sorted(p.name for p in folder.iterdir())
        ['README.md', 'config.json', 'model.safetensors']
    """
    target = check_output_folder(path, overwrite)
    if repo_id is not None:
        check_repo_id(repo_id)
    if base_model is not None:
        check_repo_id(base_model, what="base_model", namespace=False)
    model, after = _packed(result, base_model)
    if accuracy is not None:
        model.udfc_manifest = model.udfc_manifest.with_provenance(accuracy=_check_accuracy(accuracy))
    if license is not None:
        model.udfc_manifest = model.udfc_manifest.with_provenance(base_license=_check_license(license))
    manifest = model.udfc_manifest

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_folder(target)
    try:
        twin = getattr(getattr(model, "config", None), "udfc", None) is not None  # a transformers twin
        if twin:
            model.config.udfc["provenance"] = manifest.provenance.to_dict()
            config, state = _transformers_files(model, tmp)
            library, architecture, license_ = "transformers", config["model_type"], manifest.provenance.base_license
        else:
            config = _config(model, manifest)
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            library, architecture, license_ = "timm", config["architecture"], manifest.provenance.base_license
        weights = _serialize(state, _metadata(manifest.format_version))
        (tmp / WEIGHTS_NAME).write_bytes(weights)
        if _records_digest(result):  # every loader verifies it (validate.check_digest)
            config["udfc"][DIGEST_KEY] = weights_digest(weights)
        else:
            config["udfc"].pop(DIGEST_KEY, None)
        # timm's layout keeps its key order; transformers writes its config sorted, and so do we
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=twin) + "\n")
        card = render_card(
            manifest,
            library=library,
            architecture=architecture,
            license=license_,
            after=after,
            file_size=(tmp / WEIGHTS_NAME).stat().st_size,
            name=repo_id.split("/")[-1] if repo_id else target.name,
            repo_id=repo_id,
            input_size=default_input_size(model),
        )
        (tmp / CARD_NAME).write_text(card)
        if verify:
            _verify_reload(model, tmp, twin)
        _put_in_place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _records_digest(result: CompressionResult | nn.Module) -> bool:
    """A new compression records the weights' SHA-256; a loaded artifact re-saved does so where its source did,
    so that a folder saved before the digest existed re-saves byte for byte."""
    if isinstance(result, CompressionResult):
        return True
    block = getattr(getattr(result, "config", None), "udfc", None)
    if isinstance(block, dict):  # a transformers twin: its config holds the source's udfc block
        return DIGEST_KEY in block
    timm_model = getattr(result, "timm_model", result)  # a timm artifact, loaded by timm or transformers
    return getattr(timm_model, "udfc_recorded_digest", True)


def _transformers_files(model: nn.Module, tmp: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json and tensors of a transformers twin.

    transformers' own ``save_pretrained`` names the tensors (its saved names are the legacy ones, not the module
    names in memory); its files are written into a scratch folder and only read back from there.
    """
    from transformers.utils import logging as hf_logging

    scratch = tmp / ".transformers"
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(scratch)
    finally:
        if progress:
            hf_logging.enable_progress_bar()
    config = json.loads((scratch / CONFIG_NAME).read_text())
    state = load_file(str(scratch / WEIGHTS_NAME))
    shutil.rmtree(scratch)
    return config, state


def _packed(result, base_model: str | None) -> tuple[nn.Module, ModelStats]:
    """The model to save and its size; a compression result's size was measured already, a loaded one's is not."""
    if isinstance(result, CompressionResult):
        return pack_model(result, base_model), result.report.after
    if hasattr(getattr(result, "timm_model", None), "udfc_manifest"):  # a timm artifact loaded by transformers
        result = result.timm_model
    twin_block = getattr(getattr(result, "config", None), "udfc", None)
    if isinstance(result, nn.Module) and (hasattr(result, "udfc_manifest") or twin_block):
        model = copy.copy(result)  # the caller's model keeps its own manifest and config
        if twin_block:  # a transformers twin loaded from a folder
            model.config = copy.deepcopy(result.config)
            model.udfc_manifest = Manifest.from_udfc_block(model.config.udfc)
        if base_model:
            model.udfc_manifest = model.udfc_manifest.with_provenance(base_model=base_model)
            if twin_block:
                model.config.udfc["base_model"] = base_model
        return model, profile_model(model)
    raise InvalidArgumentError(
        f"save_pretrained takes the result of udfc_hub.compress or a model loaded from a udfc_hub folder, got "
        f"{type(result).__name__}."
    )


def artifact_size(result: CompressionResult) -> int:
    """Bytes that ``model.safetensors`` of ``result`` would take, computed in memory."""
    state = {k: v.detach().cpu().contiguous() for k, v in pack_model(result).state_dict().items()}
    return len(_serialize(state, _metadata()))


def _serialize(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with the metadata keys in sorted order (safetensors itself orders them at random).

    A module used at two places of a model (CoaT's shared position convs) gives one tensor two names; safetensors
    refuses shared memory, so the second name gets a copy (the loader fills the one tensor twice, equally)."""
    seen: set[int] = set()
    unshared = {}
    for key, t in state.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        unshared[key] = t.clone() if ptr is not None and ptr in seen else t
        if ptr is not None:
            seen.add(ptr)
    data = save(unshared, metadata=metadata)
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > n:  # cannot happen (same content), but never write a file that lies about its header
        raise ArtifactError("safetensors header grew while reordering its metadata")
    return data[:8] + text.ljust(n) + data[8 + n :]


def _check_license(license: Any) -> str:
    """A Hub license id: lowercase letters, digits, '.', '-', '+' (apache-2.0, mit, cc-by-4.0, other)."""
    if not isinstance(license, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.+\-]{0,63}", license):
        raise InvalidArgumentError(
            f"license must be a Hub license id such as 'apache-2.0', 'mit' or 'cc-by-4.0', got {license!r}."
        )
    return license


def _check_accuracy(accuracy: dict[str, Any]) -> dict[str, Any]:
    """Measured accuracies for the card: top1 (required), optional top5, base_top1, base_top5 (finite percentages),
    dataset (a name), n (a count), of (the data set's size when the n images are a subset of it)."""
    allowed = ("top1", "top5", "base_top1", "base_top5", "dataset", "n", "of")
    if not isinstance(accuracy, dict) or "top1" not in accuracy:
        raise InvalidArgumentError(
            f"accuracy must be a dict with a measured 'top1' (and optionally {', '.join(allowed[1:])}), "
            f"got {accuracy!r}."
        )
    unknown = sorted(map(str, set(accuracy) - set(allowed)))
    if unknown:
        raise InvalidArgumentError(f"accuracy has unknown keys {unknown}; accepted: {', '.join(allowed)}.")
    for key in ("top1", "top5", "base_top1", "base_top5"):
        value = accuracy.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100
        ):  # NaN fails the range check too
            raise InvalidArgumentError(f"accuracy[{key!r}] must be a percentage in [0, 100], got {value!r}.")
    n = accuracy.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InvalidArgumentError(f"accuracy['n'] must be a positive number of images, got {n!r}.")
    of = accuracy.get("of")
    if of is not None and (isinstance(of, bool) or not isinstance(of, int) or n is None or of < n):
        raise InvalidArgumentError(
            f"accuracy['of'] must be the data set's number of images, at least n, with n given; got {of!r}."
        )
    dataset = accuracy.get("dataset")
    if dataset is not None and (not isinstance(dataset, str) or not 0 < len(dataset) <= 200):
        raise InvalidArgumentError(f"accuracy['dataset'] must be a name of 1 to 200 characters, got {dataset!r}.")
    return {k: accuracy[k] for k in allowed if accuracy.get(k) is not None}


def _base_architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        raise ArtifactError(
            "cannot tell which timm architecture this model is (no pretrained_cfg['architecture']); create it "
            "with timm.create_model(...) so the artifact can be rebuilt."
        )
    return arch[len(PREFIX) :] if arch.startswith(PREFIX) else arch


def _config(model: nn.Module, manifest: Manifest) -> dict[str, Any]:
    """config.json of a timm artifact: timm's fields, the manifest as ``model_args``, and the udfc block."""
    from .._version import __version__

    arch = register_compressed(manifest.base_architecture)
    src = dict(getattr(model, "pretrained_cfg", None) or {})
    prov = manifest.provenance
    pretrained_cfg = _clean_pretrained_cfg(src)
    for key in ("input_size", "test_input_size", "min_input_size"):  # as timm adapts them to the arguments
        if key in pretrained_cfg and "in_chans" in manifest.base_args:
            pretrained_cfg[key][0] = manifest.base_args["in_chans"]
        if key in pretrained_cfg and "img_size" in manifest.base_args:
            pretrained_cfg[key][1:] = manifest.base_args["img_size"]
    if prov.base_license:  # the weights' license: only a pretrained base passes one on
        pretrained_cfg["license"] = prov.base_license
    else:
        pretrained_cfg.pop("license", None)
    config: dict[str, Any] = {
        "architecture": arch,
        "num_classes": int(model.num_classes),
        "num_features": int(model.num_features),
    }
    pool = getattr(model, "global_pool", None)
    pool_type = pool if isinstance(pool, str) else getattr(pool, "pool_type", None)
    if pool_type:
        config["global_pool"] = pool_type
    if src.get("label_names"):
        config["label_names"] = list(src["label_names"])
    config["model_args"] = manifest.to_model_args()
    config["pretrained_cfg"] = pretrained_cfg
    config["udfc"] = {
        "format": FORMAT,
        "format_version": manifest.format_version,
        "udfc_hub_version": __version__,
        "base_model": prov.base_model,
        "compression": dict(prov.settings),
    }
    return config


# keys of a timm PretrainedCfg that describe the data, not where weights came from
_PRETRAINED_KEYS = (
    "input_size",
    "test_input_size",
    "min_input_size",
    "fixed_input_size",
    "interpolation",
    "crop_pct",
    "test_crop_pct",
    "crop_mode",
    "mean",
    "std",
    "num_classes",
    "pool_size",
    "test_pool_size",
    "first_conv",
    "classifier",
    "license",
    "description",
    "origin_url",
    "paper_name",
    "paper_ids",
    "notes",
    "label_offset",
)


def _clean_pretrained_cfg(src: dict[str, Any]) -> dict[str, Any]:
    out = {k: src[k] for k in _PRETRAINED_KEYS if src.get(k) is not None}
    return json.loads(json.dumps(out))  # tuples -> lists, as timm's own export writes them


def _load_folder(folder: Path, twin: bool) -> nn.Module:
    """``folder`` loaded as a user would: transformers' Auto class for a twin, timm's ``local-dir:`` otherwise."""
    if twin:
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification.from_pretrained(folder)
    import timm

    return timm.create_model(f"local-dir:{folder}", pretrained=True)


def _verify_reload(model: nn.Module, folder: Path, twin: bool) -> None:
    """Load ``folder`` as a user would and require the same logits as ``model`` on a small input."""
    from ..evaluation import logits_of
    from ..profile import input_device_dtype

    try:
        loaded = _load_folder(folder, twin)
    except Exception as e:
        raise ArtifactError(
            f"the folder being saved would not load again ({type(e).__name__}: {str(e)[:300]}); nothing was written. "
            "If the model was built with non-default constructor arguments, udfc-hub cannot record them yet."
        ) from e
    device, dtype = input_device_dtype(model)
    x = torch.randn((1, *default_input_size(model)), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with torch.inference_mode():
        ours, theirs = logits_of(model.eval()(x)), logits_of(loaded.to(device).eval()(x))
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
        diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else f"shape {tuple(theirs.shape)}"
        raise ArtifactError(
            f"the folder being saved reloads to a different network (max logit difference {diff}); nothing was "
            "written. The model was probably built with constructor arguments that config.json cannot record "
            "(e.g. act_layer, output_stride, drop rates); create it with timm.create_model(name) defaults."
        )


def _umask() -> int:
    try:  # Linux: read it without changing it
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _new_temp_folder(target: Path) -> Path:
    """A hidden folder beside ``target`` named after this process, with the permissions the umask gives."""
    _remove_stale_temp_folders(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a saved folder is an ordinary folder
    return tmp


def _remove_stale_temp_folders(target: Path) -> None:
    """Temp folders of earlier saves to ``target`` whose process is gone (killed mid-save) are removed."""
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*-*-*"):
        kind, _, rest = leftover.name[len(target.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _put_in_place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished folder ``tmp`` to ``target``.

    Without ``overwrite`` a single rename does it, and the OS refuses it if a non-empty ``target`` exists (one
    may have appeared since the check): nothing of anyone else's is moved or deleted. With ``overwrite`` the two
    folders are swapped atomically where the OS can (Linux), so ``target`` always holds a complete folder, the old
    or the new; elsewhere the old folder is renamed aside first, and a crash between the two renames leaves the
    old folder as ``.NAME.old-PID-*`` beside the target (removed by the next save to the same path).
    """
    try:
        os.rename(tmp, target)
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not overwrite:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise InvalidArgumentError(
                    f"{target} appeared while saving and is not empty; nothing was replaced. Pass overwrite=True "
                    "(CLI: --overwrite) or choose a new folder."
                ) from None
            raise
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    old.rmdir()
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a udfc_hub folder, checked (format, version, manifest) by ``Manifest.from_config``."""
    config = read_config_file(Path(path) / CONFIG_NAME)
    Manifest.from_config(config)
    return config


def check_artifact(path: str | os.PathLike) -> dict[str, Any]:
    """Validate a folder: config, weights file and its digest, tensor shapes, then the values as loaded.

    The config and the manifest are checked, the safetensors header against what the config implies and the
    file against the SHA-256 config.json records (before any tensor is read), and the described network is run on
    the meta device. Then the folder is loaded as timm or transformers would load it, which requires every value to
    be finite and every quantizer field within the writer's bounds (``validate.QUANTIZER_BOUNDS``). Returns the
    config. Raises ``ArtifactError`` naming the first problem.
    """
    folder = Path(path)
    config = validate_folder(folder)
    try:
        _load_folder(folder, twin="model_type" in config)
    except ArtifactError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{folder / WEIGHTS_NAME} is truncated or corrupt ({type(e).__name__}: {e}).") from None
    return config
