"""ONNX export in QDQ form: what ONNX Runtime needs to run a compressed model on its int8 kernels.

The graph is PyTorch's own ONNX export (the TorchScript exporter, which names every node by its module) of the
compressed model with two stand-ins: each quantized layer's weight goes through a per-channel int8
QuantizeLinear / DequantizeLinear pair (its values are exactly the artifact's: ``ops.int_codes``), and its input,
when the artifact quantizes activations, through a uint8 pair with the stored scale and zero point (a Clip first
below 8 bits). Then a pass over the ONNX graph:

1. each weight QuantizeLinear is replaced by its int8 initializer (the file keeps 1 byte per weight).

With ``int8_outputs=True`` (the default), the steps that give ONNX Runtime the int8 data flow its fused kernels
need (DequantizeLinear -> Conv -> QuantizeLinear becomes one QLinearConv only when the conv's output is quantized):

2. each BatchNorm that reads a quantized conv alone is folded into it (the per-channel weight scales take
   ``gamma / sigma``, negative factors flip the int8 values; the codes stay as they are);
3. biases of layers with a quantized input become int32 on the grid ``input_scale * weight_scale``.

A model compressed with activations by this version carries its int8 data flow itself (``dataflow.py``: output
quantizers before residual additions and poolings, block inputs that share their layer's quantizer, biases
already on the int32 grid), so steps 2-3 change no rounding: ONNX Runtime's int8 model and the PyTorch model
agree up to float round-off. An older artifact (format 3) lacks those quantizers; for it the pass also adds them:
an 8-bit output quantizer on each folded conv no quantizer reads (after its ReLU where one alone follows; range
from the folded BatchNorm without data: channel i ~ N(beta_i, gamma_i^2), sampled, the extremes of the mixture),
and residual Adds that read a float tensor which a layer's input quantizer also reads take that quantizer's
output. Those round where the older PyTorch model does not. ``int8_outputs=False`` skips steps 2-3 and the
additions: the PyTorch model's own steps, float kernels.

The file is written to a temporary name, checked with ONNX Runtime (finite outputs, the largest difference from
the PyTorch model on a random batch), then renamed: a failed export leaves no file.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .errors import InvalidArgumentError, UdfcError
from .hub.artifact import _umask
from .ops import int_codes
from .ops.activations import choose_range
from .profile import default_input_size

__all__ = ["OnnxExport", "export_onnx", "ONNX_INSTALL_HINT", "TOLERANCES"]

ONNX_INSTALL_HINT = "pip install 'udfc-hub[onnx]'"
_OPSET = 17  # per-channel QuantizeLinear needs 13; 17 is what ONNX Runtime's own quantizer writes
_SAMPLES_PER_CHANNEL = 2048


@dataclass
class OnnxExport:
    """What ``export_onnx`` wrote: the file, its size, the quantized layers, and how close it runs to PyTorch."""

    path: Path
    bytes: int
    int8_weights: int  # layers whose weights are int8 initializers
    quantized_inputs: int  # layers whose input goes through QuantizeLinear / DequantizeLinear
    folded_norms: int
    output_quantizers: int  # added for ONNX Runtime's fusion (see the module docstring, step 3)
    routed_adds: int  # residual-addition inputs that read a layer's input quantizer (step 3)
    max_abs_diff: float  # ONNX Runtime vs the PyTorch model on a random batch
    notes: list[str] = field(default_factory=list)


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise UdfcError(
            f"ONNX export needs the {e.name!r} package, which is not installed: {ONNX_INSTALL_HINT}"
        ) from None
    return onnx, onnxruntime


def _check_path(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InvalidArgumentError(f"path must be a file path such as 'model.onnx', got {path!r}.")
    path = Path(path).expanduser()
    if path.is_dir():
        raise InvalidArgumentError(f"{path} is a folder; give the ONNX file's path, e.g. {path / 'model.onnx'}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidArgumentError(f"cannot write {path}: the folder {parent} does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"cannot write {path}: the folder {parent} is not writable.")
    return path


def _resolve_model(source: Any) -> nn.Module:
    from .report import CompressionResult

    if isinstance(source, CompressionResult):
        from .hub.artifact import pack_model

        return pack_model(source)
    if isinstance(source, nn.Module):
        return source
    if isinstance(source, (str, os.PathLike)):
        folder = Path(str(source).removeprefix("local-dir:"))
        if not (folder / "config.json").is_file():
            raise InvalidArgumentError(
                f"{source} is not a saved udfc-hub folder (no config.json); give a folder written by "
                "save_pretrained / udfc-hub compress, a compression result, or a model."
            )
        from .api import load_model

        return load_model(f"local-dir:{folder}")
    raise InvalidArgumentError(
        f"export_onnx takes a saved folder, a compression result or a torch module, got {type(source).__name__}."
    )


class _Logits(nn.Module):
    """The model with a plain logits output (transformers models return an output object)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        from .evaluation import logits_of

        return logits_of(self.model(x))


class _WeightQDQ(nn.Module):
    """Parametrization: the weight through an int8 per-output-channel QuantizeLinear / DequantizeLinear pair."""

    def __init__(self, step: torch.Tensor):
        super().__init__()
        self.register_buffer("step", step.reshape(-1).to(torch.float32))
        self.register_buffer("zero", torch.zeros(self.step.numel(), dtype=torch.int32))

    def forward(self, w):
        return torch.fake_quantize_per_channel_affine(w, self.step, self.zero, 0, -128, 127)


def _prepare(model: nn.Module) -> tuple[nn.Module, int, int]:
    """A copy whose quantized layers' weights export as int8 QDQ pairs; (copy, quantized layers, quantized inputs)."""
    from torch.nn.utils import parametrize

    from .hub.quantized import is_quantized

    work = copy.deepcopy(model).eval()
    n_weights = n_inputs = 0
    for name, module in list(work.named_modules()):
        if not is_quantized(module):
            continue
        qt = module.quantized_tensor()
        try:
            n, step = int_codes(qt)
        except ValueError as e:
            raise UdfcError(
                f"{name}: {e}. Compress again with grid='int' (the default with act_bits) or bits <= 7 to export."
            ) from None
        step = step.expand((n.shape[0],) + (1,) * (n.ndim - 1)).contiguous()
        with torch.no_grad():
            module.weight.copy_(n.to(torch.float32) * step)
        parametrize.register_parametrization(module, "weight", _WeightQDQ(step), unsafe=True)
        n_weights += 1
        n_inputs += getattr(module, "act_bits", None) is not None
    return work, n_weights, n_inputs


def _has_int8_flow(model: nn.Module) -> bool:
    """The model carries its own int8 data flow (``dataflow.plan_int8_flow``: output quantizers, shared inputs)."""
    from .hub.quantized import is_quantized
    from .surgery import input_range, output_range

    return any(
        output_range(m) is not None or (input_range(m) is not None and not is_quantized(m)) for m in model.modules()
    )


def export_onnx(
    model: Any,
    path: str | os.PathLike,
    *,
    input_size: tuple[int, int, int] | None = None,
    opset: int = _OPSET,
    int8_outputs: bool = True,
    tolerance: float | None = None,
) -> OnnxExport:
    """Write ``model`` (a saved udfc-hub folder, a ``compress`` result, or a module) to ``path`` as ONNX in QDQ form.

    With 8-bit weights and activations (``compress(..., bits=8, act_bits=8)``), ONNX Runtime runs every quantized
    conv whose input and output are quantized on its int8 kernels; lower weight bits export on the int8 grid with
    the same values; weight-only artifacts export with int8 weights and float activations (smaller, not faster).
    The input is ``pixel_values`` (batch, C, H, W; the batch size is free), the output ``logits``.

    ``int8_outputs=True`` (the default) keeps the data flow in int8 between layers, which ONNX Runtime needs to
    fuse its int8 kernels: BatchNorms folded into the convs, int32 biases. A model compressed with ``act_bits``
    by this version rounds its tensors where the int8 kernels do (``dataflow.py``), so ONNX Runtime agrees with
    it up to float round-off (fixture ResNet-56: top-1 agreement in benchmarks/onnx_runtime.md); for an older
    artifact the export adds output quantizers and routes residual additions itself, rounding where that
    PyTorch model does not. ``int8_outputs=False`` keeps the PyTorch model's BatchNorms and float biases (step 1
    and the input quantizers only): ONNX Runtime then runs the layers in float on int8-stored weights.

    Before the file is kept, ONNX Runtime runs it on a random batch next to the PyTorch model: the largest
    difference must stay within ``tolerance`` (default: ``TOLERANCES`` times the largest |logit|, 1e-3 with float
    activations, 0.03 with int8 ones, 0.15 where the export adds rounding to a format-3 artifact), or nothing is
    written. Give a larger ``tolerance`` (an absolute logit difference) to export such a model anyway.

    Example (needs the ``[onnx]`` extra; tests/test_activations.py runs the same)::

        r = udfc_hub.compress(timm.create_model("resnet18"), prune_ratio=0, bits=8, act_bits=8)
        udfc_hub.export_onnx(r, "resnet18-w8a8.onnx").int8_weights   # 21: every conv and the classifier
    """
    onnx, ort = _require_onnx()
    path = _check_path(path)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 21:
        raise InvalidArgumentError(f"opset must be an integer in 13..21 (per-channel QDQ needs 13), got {opset!r}.")
    if tolerance is not None and (
        isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < float("inf")
    ):
        raise InvalidArgumentError(f"tolerance must be a finite logit difference >= 0 or None, got {tolerance!r}.")
    source = _resolve_model(model)
    size = tuple(input_size) if input_size is not None else default_input_size(source)
    work, n_weights, n_inputs = _prepare(source)
    example = torch.randn((2, *size), generator=torch.Generator().manual_seed(0))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and shape-inference notices
                _export(_Logits(work), example, tmp, opset)
        except Exception as e:
            raise UdfcError(
                f"ONNX cannot express this model ({type(e).__name__}: {str(e).splitlines()[0][:300]}); the export "
                "uses PyTorch's TorchScript-based exporter at opset "
                f"{opset}: a model with ops that exporter does not know cannot be exported."
            ) from None
        proto = onnx.load(str(tmp))
        # a weight-only model keeps float activations: the int8 data flow (and its added rounding) is for models
        # that quantize their activations; older W/A artifacts without their own flow get it added
        add_flow = n_inputs > 0 and not _has_int8_flow(work)
        stats = _rewrite(proto.graph, onnx, bool(int8_outputs) and n_inputs > 0, add_flow)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        diff, scale = _check_with_runtime(ort, tmp, source, example)
        kind = _tolerance_kind(n_inputs > 0, stats["outputs"] > 0)
        limit = tolerance if tolerance is not None else TOLERANCES[kind] * scale
        if not diff <= limit:
            given = "given" if tolerance is not None else f"{kind}: {TOLERANCES[kind]:g} of the largest |logit|"
            raise UdfcError(
                f"ONNX Runtime's outputs differ from the PyTorch model's by {diff:.3g} on a random batch, above the "
                f"tolerance {limit:.3g} ({given}); nothing was written. Pass a larger tolerance (CLI: --tolerance) "
                "to export it anyway."
            )
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it private; the file gets the mode any new file gets
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    notes = []
    if n_inputs == 0 and n_weights:
        notes.append("float activations (a weight-only artifact): the file is smaller, ONNX Runtime runs it in float")
    return OnnxExport(
        path=path,
        bytes=path.stat().st_size,
        int8_weights=n_weights,
        quantized_inputs=n_inputs,
        folded_norms=stats["folded"],
        output_quantizers=stats["outputs"],
        routed_adds=stats["routed"],
        max_abs_diff=diff,
        notes=notes,
    )


def _export(model: nn.Module, example: torch.Tensor, file: Path, opset: int) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(file),
        dynamo=False,
        opset_version=opset,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )


# ONNX Runtime against PyTorch on the random batch, relative to the largest |logit| (at least 1). Float
# activations: float round-off alone (the weights are the same values; folding reorders a product). Int8
# activations: ONNX Runtime's int8 kernels requantize with their own rounding, a step off here and there (W8A8
# ResNet-56 from the fixtures: 0.0046 of the largest logit); a format-3 artifact also gets the rounding the
# export adds (module docstring), which its PyTorch model lacks.
TOLERANCES = {"float activations": 1e-3, "int8 activations": 0.03, "int8 activations, rounding added": 0.15}


def _tolerance_kind(int8_inputs: bool, rounding_added: bool) -> str:
    """The ``TOLERANCES`` entry of an export."""
    if not int8_inputs:
        return "float activations"
    return "int8 activations, rounding added" if rounding_added else "int8 activations"


def _check_with_runtime(ort, file: Path, model: nn.Module, example: torch.Tensor) -> tuple[float, float]:
    """The largest |difference| between ONNX Runtime's and PyTorch's logits, and the largest |logit| (at least 1)."""
    from .evaluation import logits_of

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixel_values": example.numpy()})[0]
    if not np.isfinite(got).all():
        raise UdfcError("the exported model gives NaN or infinite outputs in ONNX Runtime; nothing was written.")
    with torch.no_grad():
        want = logits_of(model.eval()(example)).numpy()
    return float(np.abs(got - want).max()), max(1.0, float(np.abs(want).max()))


# ---- the ONNX graph pass ------------------------------------------------------------------------------------


class _Graph:
    """Lookups over an ``onnx.GraphProto``: constant values, producers and consumers of each tensor."""

    def __init__(self, graph, onnx):
        self.g, self.onnx = graph, onnx
        self.nh = onnx.numpy_helper
        self.inits = {t.name: t for t in graph.initializer}
        self.refresh()

    def refresh(self):
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return self.nh.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return self.nh.to_array(node.attribute[0].t)
        if node is not None and node.op_type == "Identity":  # the exporter's deduplicated constants
            return self.value(node.input[0])
        return None

    def add_init(self, array: np.ndarray, hint: str) -> str:
        name = hint
        k = 0
        while name in self.inits or name in self.producer:
            k += 1
            name = f"{hint}_{k}"
        t = self.nh.from_array(array, name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def drop_unused_inits(self):
        used = {i for n in self.g.node for i in n.input} | {o.name for o in self.g.output}
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)
        self.inits = {t.name: t for t in keep}


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else a.f
    return default


def _rewrite(graph, onnx, int8_outputs: bool = True, add_flow: bool = False) -> dict[str, int]:
    g = _Graph(graph, onnx)
    _fold_weight_quantizers(g)
    folded, routed, outputs = {}, 0, 0
    if int8_outputs:  # what the int8 kernels need; exact rounding keeps the PyTorch model's float steps
        folded = _fold_norms(g)
        if add_flow:  # an older artifact without its own int8 data flow (module docstring)
            routed = _route_adds_through_quantizers(g)
            outputs = _add_output_quantizers(g, folded)
        _quantize_biases(g)
    g.drop_unused_inits()
    return {"folded": len(folded), "outputs": outputs, "routed": routed}


def _route_adds_through_quantizers(g: _Graph) -> int:
    """An Add that reads a float tensor which a layer's input quantizer also reads reads that quantizer's
    DequantizeLinear instead (the residual stream stays int8, so ONNX Runtime can run QLinearAdd)."""
    routed = 0
    for node in [n for n in g.g.node if n.op_type == "Add"]:
        for i, name in enumerate(node.input):
            src = g.producer.get(name)
            if src is None or src.op_type == "DequantizeLinear":
                continue
            dq = next(
                (
                    d
                    for q in g.consumers.get(name, [])
                    if q.op_type == "QuantizeLinear"
                    for d in g.consumers.get(q.output[0], [])
                    if d.op_type == "DequantizeLinear"
                ),
                None,
            )
            if dq is not None and list(g.g.node).index(dq) < list(g.g.node).index(node):
                node.input[i] = dq.output[0]
                routed += 1
    g.refresh()
    return routed


def _fold_weight_quantizers(g: _Graph) -> None:
    """QuantizeLinear of a float initializer -> the int8 initializer it computes (the file keeps the int8 values)."""
    for node in list(g.g.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in g.inits:
            continue
        x, scale, zero = g.value(node.input[0]), g.value(node.input[1]), g.value(node.input[2])
        axis = _attr(node, "axis", 1)
        shape = [1] * x.ndim
        if scale.ndim == 1 and x.ndim > 1:
            shape[axis] = -1
            scale, zero_b = scale.reshape(shape), zero.reshape(shape)
        else:
            zero_b = zero
        info = np.iinfo(zero.dtype)
        q = np.clip(np.rint(x / scale) + zero_b.astype(np.int32), info.min, info.max).astype(zero.dtype)
        t = g.nh.from_array(q, node.output[0])
        g.g.initializer.append(t)
        g.inits[t.name] = t
        g.g.node.remove(node)
    g.refresh()


def _weight_dq(g: _Graph, node):
    """The DequantizeLinear feeding ``node``'s weight from an int8 initializer, or None."""
    dq = g.producer.get(node.input[1]) if len(node.input) > 1 else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in g.inits:
        return None
    return dq


def _fold_norms(g: _Graph) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fold each BatchNormalization that alone reads a QDQ-weight Conv; returns conv output -> (gamma, beta)."""
    folded = {}
    for bn in [n for n in g.g.node if n.op_type == "BatchNormalization"]:
        conv = g.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(g.consumers.get(conv.output[0], [])) != 1:
            continue
        dq = _weight_dq(g, conv)
        values = [g.value(i) for i in bn.input[1:5]]
        if dq is None or any(v is None for v in values) or len(g.consumers.get(dq.output[0], [])) != 1:
            continue
        gamma, beta, mean, var = (v.astype(np.float64) for v in values)
        c = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
        codes = g.value(dq.input[0])
        out = codes.shape[0]
        scale = np.broadcast_to(g.value(dq.input[1]).astype(np.float64).reshape(-1), (out,))
        sign = np.where(c < 0, -1, 1)
        codes = (codes.astype(np.int16) * sign.reshape((-1,) + (1,) * (codes.ndim - 1))).astype(np.int8)
        bias = g.value(conv.input[2]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(out)
        new_bias = (bias - mean) * c + beta
        dq.input[0] = g.add_init(codes, dq.input[0] + "_folded")
        dq.input[1] = g.add_init((scale * np.abs(c)).astype(np.float32), dq.input[1] + "_folded")
        dq.input[2] = g.add_init(np.zeros(out, dtype=np.int8), dq.input[0] + "_zero")
        _set_axis(dq, 0, g.onnx)
        b_name = g.add_init(new_bias.astype(np.float32), conv.name.strip("/").replace("/", ".") + ".bias_folded")
        if len(conv.input) > 2:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)
        conv.output[0] = bn.output[0]
        g.g.node.remove(bn)
        folded[conv.output[0]] = (np.abs(gamma), beta)  # the BN output of channel i ~ N(beta_i, gamma_i^2)
        g.refresh()
    return folded


def _set_axis(node, axis: int, onnx) -> None:
    for a in node.attribute:
        if a.name == "axis":
            a.i = axis
            return
    node.attribute.append(onnx.helper.make_attribute("axis", axis))


def _quantized_only(g: _Graph, tensor: str) -> bool:
    readers = g.consumers.get(tensor, [])
    return bool(readers) and all(n.op_type == "QuantizeLinear" for n in readers)


def _add_output_quantizers(g: _Graph, folded: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
    """An 8-bit output quantizer (after the ReLU, if one alone follows) for each folded conv no quantizer reads."""
    outputs = {o.name for o in g.g.output}
    rng = np.random.default_rng(0)
    added = 0
    for tensor, (std, mean) in folded.items():
        readers = g.consumers.get(tensor, [])
        relu = readers[0] if len(readers) == 1 and readers[0].op_type == "Relu" else None
        if _quantized_only(g, tensor) or (relu is not None and _quantized_only(g, relu.output[0])):
            continue
        target = relu.output[0] if relu is not None else tensor
        if target in outputs or not g.consumers.get(target):
            continue
        n = _SAMPLES_PER_CHANNEL
        samples = mean[:, None] + std[:, None] * rng.standard_normal((len(mean), n))
        if relu is not None:
            samples = np.maximum(samples, 0)
        act = choose_range(torch.from_numpy(samples), 8, "max")
        scale = g.add_init(np.array(act.scale, dtype=np.float32), target + "_scale")
        zero = g.add_init(np.array(act.zero_point, dtype=np.uint8), target + "_zero_point")
        q = g.onnx.helper.make_node("QuantizeLinear", [target, scale, zero], [target + "_q"], name=target + "_Q")
        dq = g.onnx.helper.make_node(
            "DequantizeLinear", [target + "_q", scale, zero], [target + "_dq"], name=target + "_DQ"
        )
        for reader in g.consumers[target]:
            for i, name in enumerate(reader.input):
                if name == target:
                    reader.input[i] = target + "_dq"
        at = list(g.g.node).index(g.producer[target]) + 1
        g.g.node.insert(at, dq)
        g.g.node.insert(at, q)
        g.refresh()
        added += 1
    return added


def _quantize_biases(g: _Graph) -> None:
    """A float bias of a Conv / Gemm with quantized input and weights -> int32 on the grid x_scale * w_scale."""
    for node in list(g.g.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in g.inits:
            continue
        if node.op_type == "Gemm" and (_attr(node, "transB", 0) != 1 or _attr(node, "transA", 0) != 0):
            continue
        x_dq, w_dq = g.producer.get(node.input[0]), _weight_dq(g, node)
        if x_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq is None:
            continue
        x_scale, w_scale = g.value(x_dq.input[1]), g.value(w_dq.input[1])
        if x_scale is None or w_scale is None or x_scale.size != 1:
            continue
        bias = g.value(node.input[2]).astype(np.float64)
        w_step = np.broadcast_to(w_scale.astype(np.float64).reshape(-1), bias.shape).copy()
        dead = w_step == 0  # an all-zero weight channel: any scale holds its zero codes; pick one its bias fits
        if dead.any():
            w_step[dead] = np.maximum(np.abs(bias[dead]), 1e-12) / (float(x_scale) * 2.0**20)
            if w_scale.size == 1:
                continue  # one scale for the whole tensor, zero: the layer is zero, leave it in float
            w_dq.input[1] = g.add_init(w_step.astype(np.float32), w_dq.input[1] + "_live")
        step = (float(x_scale) * w_step).astype(np.float32)
        codes = np.clip(np.rint(bias / step), -(2**31), 2**31 - 1).astype(np.int32)
        base = node.input[2]
        q_name = g.add_init(codes, base + "_int32")
        s_name = g.add_init(step, base + "_int32_scale")
        z_name = g.add_init(np.zeros(bias.shape, dtype=np.int32), base + "_int32_zero")
        out = base + "_dequantized"
        dq = g.onnx.helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out], name=base + "_DQ", axis=0)
        g.g.node.insert(list(g.g.node).index(node), dq)
        node.input[2] = out
    g.refresh()
