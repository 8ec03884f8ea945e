"""In-place module surgery: replace a parameter, keep a subset of channels, keep shape attributes true, give a
layer an input quantizer."""

from __future__ import annotations

import torch
import torch.nn as nn

from .ops.activations import ActRange, fake_quantize

__all__ = [
    "set_param",
    "slice_channels",
    "sync_shape_attrs",
    "install_input_quantizer",
    "input_range",
    "install_output_quantizer",
    "output_range",
]


def set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter (or buffer) ``name`` by ``value``, keeping its dtype, and a parameter's
    ``requires_grad``; a buffer stays a buffer (BatchNorm running statistics)."""
    old = getattr(module, name)
    if name in module._buffers:
        setattr(module, name, value.detach().to(old.dtype).contiguous())
        return
    setattr(module, name, nn.Parameter(value.detach().to(old.dtype).contiguous(), requires_grad=old.requires_grad))


def slice_channels(module: nn.Module, keep: torch.Tensor, dim: int = 0) -> None:
    """Keep channels ``keep`` of a conv / linear / norm along weight dimension ``dim`` (0: outputs, 1: inputs).

    Along dim 0 every per-channel parameter and buffer (bias, running statistics) is sliced too.
    """
    n_old = module.weight.shape[dim]
    idx = keep.to(module.weight.device)
    if dim == 0 and isinstance(module, nn.Conv2d) and module.groups == n_old and module.groups > 1:
        module.groups = len(keep)  # a depthwise conv stays depthwise: one group per kept channel
    for name, p in list(module.named_parameters(recurse=False)):
        if name == "weight" or (dim == 0 and p.ndim >= 1 and p.shape[0] == n_old):
            set_param(module, name, p.detach().index_select(dim, idx))
    if dim == 0:
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.ndim >= 1 and b.shape[0] == n_old:
                set_param(module, name, b.index_select(0, idx))
    sync_shape_attrs(module)


def sync_shape_attrs(module: nn.Module) -> None:
    """Make ``in_channels`` / ``out_channels`` / ``num_features`` (etc.) agree with the weight's shape."""
    w = module.weight
    if isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = w.shape[0], w.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape[0], w.shape[1]
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = w.shape[0]


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the layer sees its input rounded onto its activation grid."""
    x = fake_quantize(args[0], module.input_scale, module.input_zero_point, module.act_bits)
    return (x, *args[1:])


def _set_grid(module: nn.Module, side: str, bits_attr: str, act: ActRange | None, bits: int | None) -> None:
    """Buffers ``{side}_scale`` (float32) and ``{side}_zero_point`` (int32), 0-d, and the bits attribute."""
    setattr(module, bits_attr, int(act.bits if act is not None else bits))
    module.register_buffer(f"{side}_scale", torch.tensor(act.scale if act is not None else 1.0, dtype=torch.float32))
    module.register_buffer(f"{side}_zero_point", torch.tensor(act.zero_point if act else 0, dtype=torch.int32))


def _grid(module: nn.Module, side: str, bits_attr: str) -> ActRange | None:
    if getattr(module, bits_attr, None) is None or not hasattr(module, f"{side}_scale"):
        return None
    scale, zero = getattr(module, f"{side}_scale"), getattr(module, f"{side}_zero_point")
    return ActRange(float(scale), int(zero), int(getattr(module, bits_attr)))


def install_input_quantizer(module: nn.Module, act: ActRange | None = None, bits: int | None = None) -> nn.Module:
    """Quantize ``module``'s input on every call: buffers ``input_scale`` (float32) and ``input_zero_point``
    (int32), both 0-d, saved in the state dict; ``act`` fills them (a loader passes ``bits`` and loads them).

    Installing twice replaces the values and keeps a single hook."""
    _set_grid(module, "input", "act_bits", act, bits)
    if _quantize_input not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_quantize_input)
    return module


def input_range(module: nn.Module) -> ActRange | None:
    """The activation grid ``install_input_quantizer`` gave ``module``, or None."""
    return _grid(module, "input", "act_bits")


def _quantize_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: what the module returns, rounded onto its output grid."""
    return fake_quantize(output, module.output_scale, module.output_zero_point, module.output_act_bits)


def install_output_quantizer(module: nn.Module, act: ActRange | None = None, bits: int | None = None) -> nn.Module:
    """Quantize what ``module`` returns on every call: buffers ``output_scale`` (float32) and
    ``output_zero_point`` (int32), as ``install_input_quantizer`` does for the input."""
    _set_grid(module, "output", "output_act_bits", act, bits)
    if _quantize_output not in module._forward_hooks.values():
        module.register_forward_hook(_quantize_output)
    return module


def output_range(module: nn.Module) -> ActRange | None:
    """The output grid ``install_output_quantizer`` gave ``module``, or None."""
    return _grid(module, "output", "output_act_bits")
