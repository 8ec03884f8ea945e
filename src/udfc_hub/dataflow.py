"""The tensors between quantized layers, rounded where an int8 runtime rounds them.

Layer-input quantizers alone leave float tensors where an int8 runtime has none: the residual branch's output
before an addition, the shortcut (the block's input: the next layer reads it quantized, the addition in float),
and biases off the grid ``input scale x weight step`` of the int32 accumulator. ``plan_int8_flow`` makes the
model's own forward the int8 one, so that ONNX Runtime runs ``export_onnx``'s file on the same rounding (up to
float round-off) with its fused int8 kernels:

1. **shared inputs**: when the tensor a quantized layer reads is first read by an enclosing module (the block,
   whose forward also adds it to the residual branch), that module's input gets the layer's quantizer, so every
   reader of the tensor sees the same rounded values (the layer's own quantizer then changes nothing). Below 8
   activation bits the enclosing module rounds to 8 bits over the layer's range instead (the residual stream
   stays 8-bit, as int8 runtimes store it; at 4 bits a 4-bit residual stream cost the fixture ResNet-56 10
   points), and the layer then rounds that to its own bits;
2. **output quantizers**: the output of a quantized layer's chain (the layer, the norm that alone reads it, a
   ReLU that alone follows) is rounded to ``OUTPUT_BITS`` when something other than quantized inputs reads it
   (an addition, a pooling); its range is chosen on the probe's values as the input ranges are;
3. **int32 biases**: the bias the layer has once its BatchNorm is folded in is moved onto the grid
   ``input_scale * weight_step * |gamma / sigma|`` (through the norm's beta, or the layer's own bias), which an
   int32 bias represents exactly. The largest move is half a grid step, far below the output's own step.

Tensors are matched by identity in one BN-matched probe pass (``probe.probe_tensor_flow``): no image is used.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .adapters.base import ModelSpec
from .ops import int_codes
from .ops.activations import ActRange, choose_range
from .probe import FUNCTIONAL_ACTIVATIONS, TensorFlow, probe_tensor_flow
from .surgery import input_range, install_input_quantizer, install_output_quantizer, set_param

__all__ = ["OUTPUT_BITS", "plan_int8_flow"]

OUTPUT_BITS = 8  # the residual stream and pooled features: what int8 kernels exchange between layers
_FOLLOWERS = (nn.ReLU, nn.ReLU6)  # elementwise activations an int8 conv absorbs into its output's clamp
_OPS = {f"<{n.rstrip('_')}>" for n in FUNCTIONAL_ACTIVATIONS}  # their functional forms, as the probe names them


def plan_int8_flow(
    model: nn.Module, spec: ModelSpec, quantized: dict, input_size: tuple[int, ...], method: str = "max"
) -> dict[str, int]:
    """Steps 1-3 of the module docstring on a model whose layers have their input quantizers. Returns counts:
    ``shared_inputs``, ``output_quantizers``, ``int32_biases``."""
    modules = dict(model.named_modules())
    layers = {
        layer.name: layer
        for layer in spec.layers
        if layer.name in quantized and input_range(modules[layer.name]) is not None
    }
    if not layers:
        return {"shared_inputs": 0, "output_quantizers": 0, "int32_biases": 0}
    flow = probe_tensor_flow(model, tuple(input_size))
    shared = _shared_inputs(flow, modules, layers)
    sources = _output_sources(flow, modules, layers, set(shared))
    if sources:  # a second pass keeps just those outputs (the first would have to keep every candidate's)
        values = probe_tensor_flow(model, tuple(input_size), keep_values=set(sources))
        for name in sources:
            out = values.first_call(name)[1]
            install_output_quantizer(modules[name], choose_range(values.values[out], OUTPUT_BITS, method))
    for name, act in shared.items():  # after the values: both passes see the model the first one planned on
        install_input_quantizer(modules[name], act)
    biases = sum(_snap_bias(modules[name], modules.get(lay.norm), quantized[name]) for name, lay in layers.items())
    return {"shared_inputs": len(shared), "output_quantizers": len(sources), "int32_biases": biases}


def _is_activation(name: str, modules: dict) -> bool:
    return name in _OPS or isinstance(modules.get(name), _FOLLOWERS)


def _rounded(name: str, readers: set[str], rounds_input: set[str]) -> bool:
    """``name`` reads its input rounded: its own quantizer, or one of an enclosing module that read it first."""
    parts = name.split(".")
    prefixes = {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
    return any(p in rounds_input and p in readers for p in prefixes)


def _visible_readers(flow: TensorFlow, readers: dict, key) -> list[int]:
    """The calls that read ``key``, without those that hand the same tensor on unchanged (``nn.Identity``,
    dropout in eval): their readers read the same key and are listed themselves."""
    return [i for i in readers.get(key, []) if flow.calls[i][1] != flow.calls[i][2]]


def _shared_inputs(flow: TensorFlow, modules: dict, layers: dict) -> dict[str, ActRange]:
    """Step 1's plan: enclosing module -> the grid its input gets."""
    readers = flow.readers()
    shared: dict[str, ActRange] = {}
    for name in layers:
        call = flow.first_call(name)
        if call is None or call[0] is None or call[0] == flow.model_input:
            continue  # the image: only the stem reads it
        first = flow.calls[_visible_readers(flow, readers, call[0])[0]][0]
        if first == name or first not in modules or first in shared or input_range(modules[first]) is not None:
            continue  # the layer itself, a functional op, or a module that already rounds this tensor
        act = input_range(modules[name])
        if act.bits < OUTPUT_BITS:  # the residual stream keeps 8 bits over the layer's range; the layer rounds on
            act = ActRange.spanning(act.lo, act.hi, OUTPUT_BITS)
        shared[first] = act
    return shared


def _output_sources(flow: TensorFlow, modules: dict, layers: dict, shared: set[str]) -> list[str]:
    """The modules whose output step 2 rounds, in forward order (``shared``: step 1's modules, to be rounded)."""
    readers = flow.readers()
    rounds_input = {n for n, m in modules.items() if input_range(m) is not None} | shared
    sources = []
    for name, layer in layers.items():
        call = flow.first_call(name)
        if call is None:
            continue
        source, out = name, call[1]  # the module to quantize the output of, and that output
        nxt = _visible_readers(flow, readers, out)
        if layer.norm and [flow.calls[i][0] for i in nxt] == [layer.norm]:
            source, out = layer.norm, flow.calls[nxt[0]][2]
            nxt = _visible_readers(flow, readers, out)
        end = out  # the chain's last tensor: after an activation that alone follows
        if len(nxt) == 1 and _is_activation(flow.calls[nxt[0]][0], modules):
            act, end = flow.calls[nxt[0]][0], flow.calls[nxt[0]][2]
            if act in modules:  # a module: round its output (a functional ReLU: round its input)
                source, out = act, end
            nxt = _visible_readers(flow, readers, end)
        if out is None or end == flow.model_output or source in sources:
            continue
        if nxt and all(_rounded(flow.calls[i][0], {flow.calls[j][0] for j in nxt}, rounds_input) for i in nxt):
            continue  # only quantized inputs read it: it is rounded already where it is read
        sources.append(source)
    return sources


@torch.no_grad()
def _snap_bias(mod: nn.Module, norm: nn.Module | None, qt) -> int:
    """Step 3 for one layer; 1 if a bias was moved onto the int32 grid, else 0."""
    try:
        _, step = int_codes(qt)
    except ValueError:
        return 0  # 8-bit DoReFa weights: not int8, no int32 accumulator to match
    act = input_range(mod)
    out = mod.weight.shape[0]
    w_step = step.to(torch.float64).reshape(-1).expand(out) if step.numel() == 1 else step.to(torch.float64).reshape(-1)
    bias = (
        mod.bias.detach().to(torch.float64)
        if getattr(mod, "bias", None) is not None
        else torch.zeros(out, dtype=torch.float64)
    )
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats and norm.affine:
        c = norm.weight.to(torch.float64) / torch.sqrt(norm.running_var.to(torch.float64) + norm.eps)
        folded = (bias - norm.running_mean.to(torch.float64)) * c + norm.bias.to(torch.float64)
        grid = act.scale * w_step * c.abs()
        live = grid > 0
        moved = torch.where(live, torch.round(folded / torch.where(live, grid, 1)) * grid - folded, 0)
        set_param(norm, "bias", norm.bias.to(torch.float64) + moved)
        return 1
    if norm is None and getattr(mod, "bias", None) is not None:
        grid = act.scale * w_step
        live = grid > 0
        snapped = torch.where(live, torch.round(bias / torch.where(live, grid, 1)) * grid, bias)
        set_param(mod, "bias", snapped)
        return 1
    return 0
