"""The manifest of a compressed model: what ``config.json`` says the network is, typed and checked in one place.

A manifest names the base architecture, the kept width of every pruned producer, the quantized layers with
their bits and scale shapes, the provenance (options, base model, its size, measured accuracy) and the format
version. It is written by ``pack_model`` and read back, through ``Manifest.from_config``, by every loader: the
timm ``udfc_*`` entrypoints, the transformers twins and ``check_artifact``. ``apply`` shrinks and converts a
freshly built base model to it.

timm artifacts keep it as config.json's ``model_args`` (timm passes those to the entrypoint); transformers
twins as the ``udfc`` block of their config.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import GRIDS, MAX_BITS, MIN_BITS, CompressionConfig
from ..errors import ArtifactError, InvalidArgumentError
from ..surgery import install_input_quantizer, install_output_quantizer, slice_channels
from .format import (
    ACT_FORMAT_VERSION,
    FLOW_FORMAT_VERSION,
    FORMAT,
    FORMAT_VERSION,
    MIXED_FORMAT_VERSION,
    READABLE_VERSIONS,
)
from .quantized import convert_to_packed

__all__ = ["Manifest", "Provenance", "check_format", "read_config_file"]

# timm constructor arguments a saved model records when they differ from the architecture's defaults
BASE_ARG_KEYS = ("in_chans", "img_size", "global_pool")
_MAX_DIM = 1 << 20  # no layer of a vision model has a million channels; a bigger number is a hostile file


def read_config_file(path: Path) -> dict[str, Any]:
    """A config.json as a dict, or an ``ArtifactError`` naming the file (missing, not JSON, not an object)."""
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: not a udfc_hub model folder.")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{path} is not a JSON object: not a udfc_hub artifact.")
    return config


def check_format(version: Any, where: str = "config.json") -> None:
    """Refuse a udfc format version this udfc_hub cannot read, saying how to get one that can."""
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        from .._version import __version__

        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise ArtifactError(
            f"{where} uses udfc format version {version!r}; this udfc_hub ({__version__}) reads versions "
            f"{readable}. Upgrade udfc-hub: pip install -U udfc-hub"
        )


@dataclass(frozen=True)
class Provenance:
    """Where a compressed model came from: the options used, the base model and its size, measured accuracy."""

    settings: dict[str, Any]
    base_model: str | None = None
    base_license: str | None = None
    base_params: int = 0
    base_macs: int = 0
    accuracy: dict[str, Any] | None = None

    @property
    def config(self) -> CompressionConfig:
        return CompressionConfig.from_dict(self.settings)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "settings": dict(self.settings),
            "base_model": self.base_model,
            "base_license": self.base_license,
            "base_params": self.base_params,
            "base_macs": self.base_macs,
        }
        if self.accuracy is not None:
            out["accuracy"] = dict(self.accuracy)
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Provenance:
        if not isinstance(d, dict) or not isinstance(d.get("settings"), dict):
            raise ArtifactError("config.json: provenance must be a dict with the compression settings.")
        try:
            CompressionConfig.from_dict(d["settings"])
        except InvalidArgumentError as e:
            raise ArtifactError(f"config.json: the recorded compression settings are invalid: {e}") from None
        for key in ("base_params", "base_macs"):
            if isinstance(d.get(key), bool) or not isinstance(d.get(key, 0), int) or d.get(key, 0) < 0:
                raise ArtifactError(f"config.json: provenance.{key} must be a non-negative integer.")
        for key in ("base_model", "base_license"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ArtifactError(f"config.json: provenance.{key} must be a string or null.")
        if d.get("accuracy") is not None and not isinstance(d["accuracy"], dict):
            raise ArtifactError("config.json: provenance.accuracy must be a dict.")
        return cls(
            settings=dict(d["settings"]),
            base_model=d.get("base_model"),
            base_license=d.get("base_license"),
            base_params=int(d.get("base_params", 0)),
            base_macs=int(d.get("base_macs", 0)),
            accuracy=d.get("accuracy"),
        )


def _is_bits_table(table: Any, named: bool = False) -> bool:
    """A dict from module names (non-empty with ``named``) to integer bits in MIN_BITS..MAX_BITS."""
    return isinstance(table, dict) and all(
        isinstance(n, str) and (n or not named) and not isinstance(b, bool) and b in range(MIN_BITS, MAX_BITS + 1)
        for n, b in table.items()
    )


@dataclass(frozen=True)
class Manifest:
    """A compressed model's structure and provenance (see the module docstring)."""

    base_architecture: str
    channels: dict[str, int]
    bits: int | None
    quantized_layers: dict[str, tuple[int, ...]]  # layer name -> scale shape
    provenance: Provenance
    format_version: int = field(default=FORMAT_VERSION)
    base_args: dict[str, Any] = field(default_factory=dict)  # non-default constructor arguments of the base
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # format 2: resized module -> weight shape
    grid: str = "dorefa"  # format 3: the weight grid of the quantized layers
    act_bits: int | None = None  # format 3: the activation bits asked for
    act_layers: dict[str, int] = field(default_factory=dict)  # format 3: layer -> bits of its quantized input
    act_inputs: dict[str, int] = field(default_factory=dict)  # format 4: other module -> bits of its input
    act_outputs: dict[str, int] = field(default_factory=dict)  # format 4: module -> bits of its quantized output
    layer_bits: dict[str, int] = field(default_factory=dict)  # format 5: quantized layer -> its bits, where not `bits`

    def __post_init__(self) -> None:
        check_format(self.format_version)
        if not isinstance(self.base_architecture, str) or not re.fullmatch(
            r"[A-Za-z0-9_.\-]{1,200}", self.base_architecture
        ):
            raise ArtifactError(
                "config.json: base_architecture must be a non-empty string: a timm model name or a transformers class."
            )
        if not isinstance(self.channels, dict) or not all(
            isinstance(k, str) and _is_count(v) for k, v in self.channels.items()
        ):
            raise ArtifactError(f"config.json: channels must map layer names to widths in 1..{_MAX_DIM}.")
        if self.bits is not None and (isinstance(self.bits, bool) or self.bits not in range(MIN_BITS, MAX_BITS + 1)):
            raise ArtifactError(f"config.json: bits must be an integer in {MIN_BITS}..{MAX_BITS} or null.")
        if not isinstance(self.quantized_layers, dict) or not all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and 0 < len(v) <= 4 and all(map(_is_count, v))
            for k, v in self.quantized_layers.items()
        ):
            raise ArtifactError("config.json: quantized_layers must map layer names to scale shapes.")
        if self.quantized_layers and self.bits is None:
            raise ArtifactError("config.json lists quantized layers but no 'bits'.")
        object.__setattr__(self, "quantized_layers", {k: tuple(v) for k, v in self.quantized_layers.items()})
        if not isinstance(self.shapes, dict) or not all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and 0 < len(v) <= 4 and all(map(_is_count, v))
            for k, v in self.shapes.items()
        ):
            raise ArtifactError("config.json: shapes must map module names to weight shapes (1 to 4 sizes).")
        for name, width in self.channels.items() if self.format_version >= 2 else ():
            if name not in self.shapes or self.shapes[name][0] != width:
                raise ArtifactError(
                    f"config.json: the kept channels of {name!r} ({width}) disagree with its stored shape "
                    f"({list(self.shapes.get(name, []))}); format 2 stores both and they must agree."
                )
        object.__setattr__(self, "shapes", {k: tuple(v) for k, v in self.shapes.items()})
        self._check_layer_bits()
        _check_base_args(self.base_args)
        self._check_activations()

    def _check_layer_bits(self) -> None:
        """Format 5: ``layer_bits``, the quantized layers stored at other bits than ``bits``."""
        table = self.layer_bits
        if not _is_bits_table(table):
            raise ArtifactError(f"config.json: layer_bits must map layer names to bits in {MIN_BITS}..{MAX_BITS}.")
        stray = [n for n in table if n not in self.quantized_layers]
        if stray:
            raise ArtifactError(
                f"config.json: layer_bits names {stray[0]!r}, which is not a quantized layer; it was edited."
            )
        if table and self.format_version < MIXED_FORMAT_VERSION:
            raise ArtifactError(
                f"config.json: layer_bits needs format version {MIXED_FORMAT_VERSION}, the file says "
                f"{self.format_version}: it was edited; re-download or re-save it."
            )
        object.__setattr__(self, "layer_bits", dict(table))

    def bits_of(self, layer: str) -> int | None:
        """The bits of a quantized layer's stored codes."""
        return self.layer_bits.get(layer, self.bits)

    def _check_activations(self) -> None:
        if self.grid not in GRIDS:
            raise ArtifactError(f"config.json: grid must be one of {', '.join(GRIDS)}; got {self.grid!r}.")
        act = self.act_bits
        if act is not None and (isinstance(act, bool) or act not in range(MIN_BITS, MAX_BITS + 1)):
            raise ArtifactError(f"config.json: act_bits must be an integer in {MIN_BITS}..{MAX_BITS} or null.")
        layers = self.act_layers
        if not _is_bits_table(layers):
            raise ArtifactError(
                f"config.json: act_layers must map layer names to input bits in {MIN_BITS}..{MAX_BITS}."
            )
        stray = [n for n in layers if n not in self.quantized_layers]
        if stray:
            raise ArtifactError(
                f"config.json: act_layers names {stray[0]!r}, which is not a quantized layer; only quantized layers "
                "have their input quantized."
            )
        if (act is None) != (not layers):
            raise ArtifactError("config.json: act_bits and act_layers go together (both set, or neither).")
        if (act is not None or self.grid != "dorefa") and self.format_version < ACT_FORMAT_VERSION:
            raise ArtifactError(
                f"config.json: activation quantization and the int grid need format version {ACT_FORMAT_VERSION}, "
                f"the file says {self.format_version}: it was edited; re-download or re-save it."
            )
        self._check_data_flow()
        object.__setattr__(self, "act_layers", dict(layers))

    def _check_data_flow(self) -> None:
        """Format 4: ``act_inputs`` (other modules whose input is rounded) and ``act_outputs``."""
        layers = self.act_layers
        for key in ("act_inputs", "act_outputs"):
            table = getattr(self, key)
            if not _is_bits_table(table, named=True):
                raise ArtifactError(f"config.json: {key} must map module names to bits in {MIN_BITS}..{MAX_BITS}.")
            if table and not layers:
                raise ArtifactError(f"config.json: {key} needs act_layers (quantized layer inputs); it was edited.")
            if table and self.format_version < FLOW_FORMAT_VERSION:
                raise ArtifactError(
                    f"config.json: {key} needs format version {FLOW_FORMAT_VERSION}, the file says "
                    f"{self.format_version}: it was edited; re-download or re-save it."
                )
            object.__setattr__(self, key, dict(table))
        both = set(self.act_inputs) & set(layers)
        if both:
            raise ArtifactError(
                f"config.json: {sorted(both)[0]!r} is in both act_layers and act_inputs; a module's input has one "
                "quantizer."
            )

    # timm: config.json's model_args

    def to_model_args(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "base_architecture": self.base_architecture,
            "channels": dict(self.channels),
            "bits": self.bits,
            "quantized_layers": {k: list(v) for k, v in self.quantized_layers.items()},
            **({"shapes": {k: list(v) for k, v in self.shapes.items()}} if self.format_version >= 2 else {}),
            **(
                {"grid": self.grid, "act_bits": self.act_bits, "act_layers": dict(self.act_layers)}
                if self.format_version >= ACT_FORMAT_VERSION
                else {}
            ),
            **(
                {"act_inputs": dict(self.act_inputs), "act_outputs": dict(self.act_outputs)}
                if self.format_version >= FLOW_FORMAT_VERSION
                else {}
            ),
            **({"layer_bits": dict(self.layer_bits)} if self.format_version >= MIXED_FORMAT_VERSION else {}),
            "provenance": self.provenance.to_dict(),
            **self.base_args,
        }

    @classmethod
    def from_model_args(cls, args: Any) -> Manifest:
        if not isinstance(args, dict):
            raise ArtifactError("config.json: model_args must be a dict.")
        if "base_architecture" not in args:
            raise ArtifactError("config.json: model_args has no base_architecture; not a udfc_hub artifact.")
        check_format(args.get("format_version"))
        return cls(
            base_architecture=args["base_architecture"],
            channels=args.get("channels") or {},
            bits=args.get("bits"),
            quantized_layers=args.get("quantized_layers") or {},
            provenance=Provenance.from_dict(args.get("provenance")),
            format_version=args["format_version"],
            base_args={k: args[k] for k in BASE_ARG_KEYS if k in args},
            shapes=args.get("shapes") or {},
            grid=args.get("grid", "dorefa"),
            act_bits=args.get("act_bits"),
            act_layers=args.get("act_layers") or {},
            act_inputs=args.get("act_inputs") or {},
            act_outputs=args.get("act_outputs") or {},
            layer_bits=args.get("layer_bits") or {},
        )

    # transformers: the config's udfc block

    def to_udfc_block(self) -> dict[str, Any]:
        from .._version import __version__

        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "udfc_hub_version": __version__,
            "base_model": self.provenance.base_model,
            "compression": dict(self.provenance.settings),
            **{k: v for k, v in self.to_model_args().items() if k != "format_version"},
        }

    @classmethod
    def from_udfc_block(cls, block: Any) -> Manifest:
        if not isinstance(block, dict) or block.get("format") != FORMAT:
            raise ArtifactError(f"config has no udfc block of format {FORMAT!r}: not a udfc_hub artifact.")
        return cls.from_model_args(block)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Manifest:
        """The manifest of a loaded config.json of either layout (timm ``model_args`` or a transformers twin)."""
        block = config.get("udfc")
        if not isinstance(block, dict) or block.get("format") != FORMAT:
            raise ArtifactError(f"config.json has no udfc block of format {FORMAT!r}: not a udfc_hub artifact.")
        check_format(block.get("format_version"))
        if "model_type" in config:
            return cls.from_udfc_block(block)
        manifest = cls.from_model_args(config.get("model_args"))
        if manifest.format_version != block["format_version"]:
            raise ArtifactError(
                f"config.json says format version {block['format_version']} in its udfc block and "
                f"{manifest.format_version} in model_args: the file was edited; re-download or re-save it."
            )
        return manifest

    def with_provenance(self, **changes: Any) -> Manifest:
        from dataclasses import replace

        return replace(self, provenance=replace(self.provenance, **changes))

    @property
    def needs_spec(self) -> bool:
        """Format 1 stores only the kept width of each pruned producer: rebuilding it needs the model's adapter."""
        return self.format_version < 2 and bool(self.channels)

    def apply(self, model: nn.Module, spec=None) -> None:
        """Give a freshly built base model the stored shapes and packed-weight layer classes (empty values).

        ``spec`` (the base model's ``ModelSpec``) is needed only for format 1 files (see ``needs_spec``)."""
        if self.needs_spec:
            if spec is None:
                from ..adapters import describe_model

                spec = describe_model(model)
            resize_model(model, spec, self.channels)
        else:
            resize_to_shapes(model, self.shapes)
        for name, scale_shape in self.quantized_layers.items():
            try:
                convert_to_packed(_get(model, name), self.bits_of(name), scale_shape, self.grid)
            except TypeError as e:  # e.g. a norm layer listed as quantized
                raise ArtifactError(f"config.json lists {name!r} as a quantized layer: {e}.") from None
        for name, bits in {**self.act_layers, **self.act_inputs}.items():  # scales and zero points: in the weights
            install_input_quantizer(_get(model, name), bits=bits)
        for name, bits in self.act_outputs.items():
            install_output_quantizer(_get(model, name), bits=bits)


def _check_base_args(args: Any) -> None:
    if not isinstance(args, dict) or set(args) - set(BASE_ARG_KEYS):
        raise ArtifactError(f"config.json: constructor arguments may only be {', '.join(BASE_ARG_KEYS)}.")
    if "in_chans" in args and not (_is_count(args["in_chans"]) and args["in_chans"] <= 64):
        raise ArtifactError("config.json: in_chans must be an integer in 1..64.")
    size = args.get("img_size")
    sizes = size if isinstance(size, (list, tuple)) else [size]
    if "img_size" in args and not (0 < len(sizes) <= 2 and all(_is_count(v) and v <= 8192 for v in sizes)):
        raise ArtifactError("config.json: img_size must be a size (or height, width) in 1..8192.")
    pool = args.get("global_pool")
    if "global_pool" in args and not (isinstance(pool, str) and pool.isalpha() and len(pool) <= 16):
        raise ArtifactError("config.json: global_pool must be a pooling name such as 'avg' or 'max'.")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= _MAX_DIM


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ArtifactError(f"config.json names layer {name!r}, which the base model does not have") from None


def resize_to_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give each listed module the stored weight shape (empty values): pruning only removes output channels
    (dimension 0, with the module's per-channel tensors) and input channels (dimension 1)."""
    for name, shape in shapes.items():
        module = _get(model, name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != len(shape):
            raise ArtifactError(f"config.json gives {name!r} a {len(shape)}-d weight shape; the base model's is not")
        for dim, (new, old) in enumerate(zip(shape, weight.shape, strict=True)):
            if new == old:
                continue
            if dim > 1 or new > old:
                raise ArtifactError(
                    f"config.json gives {name!r} the weight shape {list(shape)}; the base model's is "
                    f"{list(weight.shape)} (a compressed model only loses channels, along its first two dimensions)"
                )
            slice_channels(module, torch.arange(new), dim)
            weight = module.weight


def resize_model(model: nn.Module, spec, channels: dict[str, int]) -> None:
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
