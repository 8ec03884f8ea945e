"""One validation of a saved folder, used by ``check_artifact`` and every loader before anything is allocated.

A folder from the Hub is untrusted input. In order: config.json parses and its manifest is valid (bounded
numbers, a readable format version); the safetensors header (read alone, never the tensors) fits the file's size;
the file's SHA-256 equals the one config.json records (folders saved before the digest existed have none, and load
as before); the header lists exactly the tensors, shapes and dtypes that the config implies; the network the
config describes runs (a forward pass on the meta device: shapes only, no memory). Only then may a loader
allocate, and it checks the loaded values (``check_loaded``): finite, and every quantizer field within what the
writer can produce (``QUANTIZER_BOUNDS``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ArtifactError
from ..ops.activations import MIN_STEP
from ..profile import default_input_size
from .manifest import Manifest, read_config_file
from .quantized import is_quantized

__all__ = [
    "QUANTIZER_BOUNDS",
    "validate_folder",
    "read_header",
    "check_finite",
    "check_loaded",
    "expected_state",
    "weights_digest",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DIGEST_KEY = "weights_sha256"  # in config.json's udfc block: the SHA-256 of model.safetensors, hex
_MAX_HEADER = 64 << 20  # safetensors caps its header at 100 MB; ours are a few hundred kB
_BUILDING_EXPECTED: ContextVar[bool] = ContextVar("udfc_building_expected", default=False)
_DTYPES = {
    "U8": torch.uint8,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Tensor name -> (shape, dtype) from a safetensors header, checked against the file's size; no tensor read."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ArtifactError(f"{path} is truncated or corrupt: no safetensors header.")
        (n,) = struct.unpack("<Q", raw)
        if n > min(_MAX_HEADER, size - 8):
            raise ArtifactError(f"{path} is truncated or corrupt: a {n}-byte header in a file of {size} bytes.")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ArtifactError(f"{path} is truncated or corrupt: its header is not valid JSON ({e}).") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} is truncated or corrupt: its header is not a JSON object.")
    out, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, stop = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(
                f"{path} is truncated or corrupt: tensor {name!r} has a malformed header entry."
            ) from None
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        if any(d < 0 for d in shape) or stop - start != nbytes or not 0 <= start <= stop <= size - 8 - n:
            raise ArtifactError(f"{path} is truncated or corrupt: tensor {name!r} {shape} does not fit its bytes.")
        out[name] = (shape, dtype)
        end = max(end, stop)
    if end != size - 8 - n:
        raise ArtifactError(f"{path} is truncated or corrupt: {size - 8 - n - end} bytes unaccounted for.")
    return out


def expected_state(config: dict[str, Any]) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model that ``config`` describes, built on the meta device, and the tensors its weights file must hold."""
    import timm

    try:
        with torch.device("meta"):
            if "model_type" in config:  # a transformers twin: its file holds transformers' saved names
                from transformers import AutoConfig, AutoModelForImageClassification
                from transformers.core_model_loading import revert_weight_conversion

                model = AutoModelForImageClassification.from_config(AutoConfig.for_model(**config))
                return model, revert_weight_conversion(model, model.state_dict())
            kwargs = {
                k: config[k] for k in ("num_classes", "global_pool") if k in config and k not in config["model_args"]
            }
            token = _BUILDING_EXPECTED.set(True)
            try:
                model = timm.create_model(config["architecture"], **kwargs, **config["model_args"])
            finally:
                _BUILDING_EXPECTED.reset(token)
            return model, model.state_dict()
    except ArtifactError:
        raise
    except Exception as e:  # a config that names layers, widths or arguments the architecture does not have
        raise ArtifactError(f"config.json does not describe a buildable model ({type(e).__name__}: {e}).") from None


def building_expected_state() -> bool:
    """True while ``expected_state`` builds a model (an entrypoint called then must not validate again)."""
    return _BUILDING_EXPECTED.get()


def validate_folder(folder: str | Path) -> dict[str, Any]:
    """Check a saved folder without allocating its tensors (see the module docstring); returns the config."""
    folder = Path(folder)
    config = read_config_file(folder / CONFIG_NAME)
    Manifest.from_config(config)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing.")
    header = read_header(weights)
    check_digest(config, weights)
    model, expected = expected_state(config)
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise ArtifactError(
            f"{weights} does not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    for key, tensor in expected.items():
        shape, dtype = header[key]
        if shape != tuple(tensor.shape) or dtype != tensor.dtype:
            raise ArtifactError(
                f"{weights}: tensor {key} has shape {shape} {dtype}, config.json says {tuple(tensor.shape)} "
                f"{tensor.dtype}."
            )
    size = default_input_size(model)  # the architecture's input size, with the recorded in_chans / img_size
    try:
        with torch.no_grad():
            model.eval()(torch.empty((1, *size), device="meta"))
    except Exception as e:  # e.g. a global_pool that leaves the classifier a 4-D input
        raise ArtifactError(
            f"config.json describes a network that cannot run on a {size} input ({type(e).__name__}: {e})."
        ) from None
    return config


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN or infinite values, naming the first tensor that has any."""
    for name, t in tensors.items():
        if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{where}: tensor {name} holds NaN or infinite values.")


# What the writer can produce, and so all a loader accepts (a saved folder is reloaded and checked before it is
# kept, so the writer never leaves a file its own loaders refuse):
# - a weight scale is max |w| of its tensor or output channel: 0 for an all-zero one (whose codes are then one
#   value), else a positive normal float32 no larger than WEIGHT_SCALE_MAX (no vision model's weight comes close);
# - an activation step is at least MIN_STEP and at most ACT_SCALE_MAX; a zero point lies on its grid, 0..2^bits-1.
WEIGHT_SCALE_MAX = 1e4
ACT_SCALE_MAX = 1e4
QUANTIZER_BOUNDS = {
    "weight_scale": (float(torch.finfo(torch.float32).tiny), WEIGHT_SCALE_MAX),
    "activation step": (float(torch.tensor(MIN_STEP, dtype=torch.float32)), ACT_SCALE_MAX),
}


def check_loaded(model: nn.Module, where: str) -> None:
    """Every loaded value finite (``check_finite``) and every quantizer field within ``QUANTIZER_BOUNDS``."""
    check_finite(model.state_dict(), where)
    for name, module in model.named_modules():
        if is_quantized(module):
            _check_weight_scale(module, name, where)
        for side, bits_attr in (("input", "act_bits"), ("output", "output_act_bits")):
            if getattr(module, bits_attr, None) is not None and hasattr(module, f"{side}_scale"):
                _check_grid(module, name, side, int(getattr(module, bits_attr)), where)


def _check_weight_scale(module: nn.Module, name: str, where: str) -> None:
    scale = module.weight_scale.detach().float().reshape(-1)
    lo, hi = QUANTIZER_BOUNDS["weight_scale"]
    bad = (scale < 0) | ((scale != 0) & ((scale < lo) | (scale > hi)))
    if bool(bad.any()):
        value = float(scale[bad][0])
        raise ArtifactError(
            f"{where}: {name}.weight_scale holds {value:g}; a weight scale is 0 or in [{lo:g}, {hi:g}] (it is the "
            "largest |weight| of its channel): the file was edited or corrupted; re-download or re-save it."
        )
    zero = scale == 0
    if bool(zero.any()):  # an all-zero channel is written as one code value; other codes would be silently lost
        codes = module.quantized_tensor().codes.reshape(scale.numel(), -1)[zero]
        if bool((codes != codes[:, :1]).any()):
            raise ArtifactError(
                f"{where}: {name}.weight_scale is 0 for a channel whose codes differ; udfc-hub writes scale 0 only "
                "for an all-zero channel: the file was edited or corrupted; re-download or re-save it."
            )


def _check_grid(module: nn.Module, name: str, side: str, bits: int, where: str) -> None:
    scale, zero = getattr(module, f"{side}_scale"), getattr(module, f"{side}_zero_point")
    lo, hi = QUANTIZER_BOUNDS["activation step"]
    if scale.numel() != 1 or not lo <= float(scale) <= hi:
        raise ArtifactError(
            f"{where}: {name}.{side}_scale is {scale.flatten()[:1].tolist()}; an activation step is one number in "
            f"[{lo:g}, {hi:g}]: the file was edited or corrupted; re-download or re-save it."
        )
    levels = (1 << bits) - 1
    if zero.numel() != 1 or zero.is_floating_point() or not 0 <= int(zero) <= levels:
        raise ArtifactError(
            f"{where}: {name}.{side}_zero_point is {zero.flatten()[:1].tolist()}; on a {bits}-bit grid it is an "
            f"integer in 0..{levels}: the file was edited or corrupted; re-download or re-save it."
        )


def weights_digest(data: bytes | Path) -> str:
    """The SHA-256 (hex) of a weights file's bytes, read in 16 MiB blocks from a path."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with data.open("rb") as f:
        while block := f.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_digest(config: dict[str, Any], weights: Path) -> None:
    """Refuse a weights file whose SHA-256 differs from the one config.json records (none recorded, as in folders
    saved before the digest existed: nothing to check)."""
    recorded = config["udfc"].get(DIGEST_KEY)
    if recorded is None:
        return
    if not isinstance(recorded, str) or not re.fullmatch(r"[0-9a-f]{64}", recorded):
        raise ArtifactError(f"config.json: udfc.{DIGEST_KEY} must be 64 lowercase hex digits (a SHA-256).")
    if weights_digest(weights) != recorded:
        raise ArtifactError(
            f"{weights} does not match the SHA-256 that config.json records: the file was modified or corrupted "
            "after it was saved (a bit flip, a partial download, an edit). Re-download it, or re-save the model."
        )
