"""Conv2d / Linear layers whose saved form is packed k-bit codes plus scales.

In memory the weight stays an ordinary float ``nn.Parameter`` (dequantized once, at load), so inference runs at
the float pruned model's speed and parameter counts stay true. Only the state dict differs: ``weight`` is
replaced by ``weight_packed`` (uint8, ceil(numel * bits / 8) bytes) and ``weight_scale`` (float32, one per tensor
or per output channel). A strict ``load_state_dict`` of such a dict rebuilds the weight exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import GRIDS, QuantizedTensor, dequantize, pack_codes, packed_size, unpack_codes

__all__ = ["QuantizedConv2d", "QuantizedLinear", "convert_to_packed", "is_quantized"]


class _PackedWeightMixin:
    """State-dict codec shared by the quantized layer classes. ``bits`` is set by ``convert_to_packed``."""

    bits: int
    grid: str = "dorefa"
    weight: nn.Parameter

    def set_codes(self, qt: QuantizedTensor) -> None:
        """Store ``qt`` (codes shaped like the weight) and make the weight its exact dequantization."""
        if tuple(qt.codes.shape) != tuple(self.weight.shape) or qt.bits != self.bits or qt.grid != self.grid:
            raise ValueError(
                f"codes {tuple(qt.codes.shape)}@{qt.bits}b ({qt.grid}) do not fit weight {tuple(self.weight.shape)}"
                f"@{self.bits}b ({self.grid})"
            )
        # straight into the buffer table: both change together, so the weight is derived once, below
        self._buffers["weight_packed"] = pack_codes(qt.codes, self.bits)
        self._buffers["weight_scale"] = qt.scale.detach().to(torch.float32).cpu().contiguous()
        self._refresh_weight()

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        # Loaders that build on the meta device and assign each loaded buffer (transformers 5's from_pretrained)
        # never fill ``weight``: it is not in the file. Derive it the moment its codes and scales are both real,
        # so that no post-load step (transformers' kernelize, tie_weights, a device query) meets a meta weight.
        # A real weight is left alone: surgery assigns the buffers one at a time while it reshapes the layer.
        if name in ("weight_packed", "weight_scale") and isinstance(value, torch.Tensor) and not value.is_meta:
            other = self._buffers.get("weight_scale" if name == "weight_packed" else "weight_packed")
            weight = self._parameters.get("weight")
            if weight is not None and weight.is_meta and other is not None and not other.is_meta:
                self._refresh_weight()

    def quantized_tensor(self) -> QuantizedTensor:
        """The stored codes (unpacked, shaped like the weight), scale and bits."""
        n = self.weight.numel()
        raw = unpack_codes(self.weight_packed, self.bits, n).reshape(self.weight.shape)
        return QuantizedTensor(codes=raw, scale=self.weight_scale, bits=self.bits, grid=self.grid)

    def _refresh_weight(self) -> None:
        w = self.quantized_tensor().dequantize(torch.float32)
        if self.weight.is_meta:  # loaders that build on the meta device (transformers) never fill ``weight``
            dtype = self.weight.dtype if self.weight.dtype.is_floating_point else torch.float32
            self.weight = nn.Parameter(w.to(self.weight_packed.device, dtype), self.weight.requires_grad)
        else:
            with torch.no_grad():
                self.weight.copy_(w.to(self.weight))
        # transformers' flag for "holds loaded values": its missing-weight initialisation must not overwrite them
        self.weight._is_hf_initialized = True

    def init_non_persistent_buffers(self) -> None:
        """Called by transformers' TimmWrapper after loading: the weight is derived from the loaded codes."""
        if not self.weight_packed.is_meta:
            self._refresh_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.is_meta and not self.weight_packed.is_meta:
            self._refresh_weight()  # once: the first call after a meta-device load
        return super().forward(x)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination.pop(prefix + "weight", None)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key_p, key_s = prefix + "weight_packed", prefix + "weight_scale"
        packed, scale = state_dict.get(key_p), state_dict.get(key_s)
        n = self.weight.numel()
        if packed is not None and scale is not None:
            need = packed_size(n, self.bits)
            if packed.dtype != torch.uint8 or packed.shape != (need,):
                error_msgs.append(
                    f"{key_p}: expected {need} uint8 bytes for weight {tuple(self.weight.shape)} at "
                    f"{self.bits} bits, got shape {tuple(packed.shape)} {packed.dtype}"
                )
                return
            if scale.shape != self.weight_scale.shape:
                error_msgs.append(f"{key_s}: expected shape {tuple(self.weight_scale.shape)}, got {tuple(scale.shape)}")
                return
            codes = unpack_codes(packed, self.bits, n).reshape(self.weight.shape)
            state_dict = dict(state_dict)
            state_dict[prefix + "weight"] = dequantize(codes, scale.to(torch.float32), self.bits, grid=self.grid)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if prefix + "weight" in missing_keys:  # report what the file really lacks
            missing_keys.remove(prefix + "weight")


class QuantizedConv2d(_PackedWeightMixin, nn.Conv2d):
    """``nn.Conv2d`` saved as packed k-bit codes; see the module docstring."""


class QuantizedLinear(_PackedWeightMixin, nn.Linear):
    """``nn.Linear`` saved as packed k-bit codes; see the module docstring."""


_CLASSES: dict[type, type] = {nn.Conv2d: QuantizedConv2d, nn.Linear: QuantizedLinear}


def _quantized_class(cls: type) -> type | None:
    """The packed-weight twin of a conv/linear class; subclasses (timm's Conv2dSame, ...) get one made once."""
    if cls not in _CLASSES and issubclass(cls, (nn.Conv2d, nn.Linear)) and not issubclass(cls, _PackedWeightMixin):
        _CLASSES[cls] = type(f"Quantized{cls.__name__}", (_PackedWeightMixin, cls), {"__module__": __name__})
    return _CLASSES.get(cls)


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, _PackedWeightMixin)


def convert_to_packed(module: nn.Module, bits: int, scale_shape: tuple[int, ...], grid: str = "dorefa") -> nn.Module:
    """Swap an ``nn.Conv2d`` / ``nn.Linear``'s class for its packed-weight twin, in place (same object, same
    weight), and allocate empty buffers for its codes and scale; fill them with ``set_codes`` or a state dict.
    """
    # an already quantized layer (a loaded artifact compressed again) keeps its class and gets new buffers
    cls = type(module) if is_quantized(module) else _quantized_class(type(module))
    if cls is None:
        raise TypeError(
            f"only nn.Conv2d and nn.Linear (and their subclasses) hold packed weights, got {type(module).__name__}"
        )
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    module.__class__ = cls
    module.bits = int(bits)
    module.grid = grid
    module.register_buffer("weight_packed", torch.zeros(packed_size(module.weight.numel(), bits), dtype=torch.uint8))
    module.register_buffer("weight_scale", torch.ones(scale_shape, dtype=torch.float32))
    return module
