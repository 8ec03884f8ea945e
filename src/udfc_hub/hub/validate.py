"""One validation of a saved folder, used by ``check_artifact`` and every loader before anything is allocated.

A folder from the Hub is untrusted input. In order: config.json parses and its manifest is valid (bounded
numbers, a readable format version); the safetensors header (read alone, never the tensors) lists exactly the
tensors, shapes and dtypes that the config implies, within the file's size; the network the config describes runs
(a forward pass on the meta device: shapes only, no memory). Only then may a loader allocate, and it checks that
the loaded values are finite.
"""

from __future__ import annotations

import json
import math
import struct
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ArtifactError
from ..profile import default_input_size
from .manifest import Manifest, read_config_file

__all__ = ["validate_folder", "read_header", "check_finite", "expected_state"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
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
