"""The int8 data flow (dataflow.py): which tensors between quantized layers are rounded, found from one probe pass
by tensor identity, and what that buys: ONNX Runtime's int8 model rounds where the PyTorch model does."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import udfc_hub
from udfc_hub.dataflow import OUTPUT_BITS
from udfc_hub.ops import int_codes
from udfc_hub.probe import probe_tensor_flow
from udfc_hub.surgery import input_range, output_range

try:
    import onnxruntime as ort
except ImportError:  # the [onnx] extra is optional
    ort = None

needs_onnx = pytest.mark.skipif(ort is None, reason="needs the [onnx] extra (onnx, onnxruntime)")


class Tiny(nn.Module):
    """A stem, one residual block with a functional ReLU and an in-place ReLU module, an identity in between."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.gap = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        y = self.gap(self.bn1(self.conv1(x)))
        y += x
        return self.fc(self.act(y).mean((2, 3)))


def test_probe_follows_tensors_through_in_place_and_functional_ops():
    flow = probe_tensor_flow(Tiny().eval(), (3, 8, 8), keep_values={"bn1"})
    calls = {name: (i, o) for name, i, o in flow.calls}
    readers = flow.readers()
    relu_in, relu_out = next((i, o) for n, i, o in flow.calls if n == "<relu>")
    assert relu_in == calls["bn0"][1] and [flow.calls[i][0] for i in readers[relu_out]] == ["conv1"]
    assert calls["gap"][0] == calls["gap"][1] == calls["bn1"][1]  # an identity hands the same tensor on
    # y += x made a new version: the in-place ReLU reads that, not bn1's output, and returns a newer one
    assert calls["act"][0] not in (calls["bn1"][1], None) and calls["act"][1] != calls["act"][0]
    assert sum(n == "<relu>" for n, _, _ in flow.calls) == 1  # nn.ReLU's own F.relu is not recorded again
    assert calls["bn1"][1] in flow.values and flow.model_input == calls["conv0"][0]


def test_outputs_before_additions_are_rounded_and_blocks_share_their_layers_grid():
    model = timm.create_model("resnet18", num_classes=10).eval()
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=4, act_bits=6, input_size=(3, 64, 64))
    m = result.model
    outputs = {n for n, mod in m.named_modules() if output_range(mod) is not None}
    shared = {n for n, mod in m.named_modules() if input_range(mod) is not None and n not in result.quantized}
    # each block's second BN (and each downsample BN) feeds the residual addition; the stem's ReLU a max pool
    blocks = [n.removesuffix(".conv1") for n in result.quantized if n.endswith(".conv1")]
    assert {f"{b}.bn2" for b in blocks} <= outputs
    assert {n for n in outputs if "downsample" in n} == {
        f"{b}.downsample.1" for b in blocks if "downsample" in str(m.get_submodule(b))
    }
    assert "act1" in outputs and not any(n.endswith(".bn1") for n in outputs)  # bn1 -> ReLU -> conv2: rounded there
    assert all(output_range(m.get_submodule(n)).bits == OUTPUT_BITS for n in outputs)
    # the block (or stage) that first reads a tensor rounds it as the layer in it does; identities are skipped
    assert shared and not any(n.endswith(".aa") for n in shared)
    for name in shared:  # below 8 bits the residual stream keeps 8 bits over the layer's range
        first_layer = next(q for q in result.quantized if q.startswith(name + ".") and q.endswith("conv1"))
        block, layer = input_range(m.get_submodule(name)), input_range(m.get_submodule(first_layer))
        assert block.bits == OUTPUT_BITS and layer.bits == 6
        assert block.lo == pytest.approx(layer.lo, abs=block.scale) and block.hi == pytest.approx(layer.hi, rel=1e-3)
    seen = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = output.clone()  # the residual addition then adds into it in place

        return hook

    hooks = [m.get_submodule(n).register_forward_hook(keep(n)) for n in outputs]
    with torch.no_grad():
        m(torch.randn(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    for name, value in seen.items():
        act = output_range(m.get_submodule(name))
        q = value / act.scale + act.zero_point
        assert (q - q.round()).abs().max() < 1e-3 and q.min() > -1e-3 and q.max() < 2**OUTPUT_BITS - 1 + 1e-3


def test_biases_sit_on_the_int32_grid_once_the_norm_is_folded():
    model = timm.create_model("resnet18", num_classes=10, zero_init_last=False).eval()
    result = udfc_hub.compress(model, prune_ratio=0, bits=8, act_bits=8, input_size=(3, 64, 64))
    checked = 0
    for name, layer in ((lay.name, lay) for lay in result.spec.layers if lay.name in result.quantized):
        mod = result.model.get_submodule(name)
        _, step = int_codes(result.quantized[name])
        step = step.double().reshape(-1).expand(mod.weight.shape[0])
        sx = input_range(mod).scale
        if layer.norm:
            bn = result.model.get_submodule(layer.norm)
            c = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            bias, grid = bn.bias.double() - bn.running_mean.double() * c, sx * step * c.abs()
        else:
            bias, grid = mod.bias.double(), sx * step
        live = grid > 0  # timm starts each block's last BN at gamma = 0: nothing to round there
        units = bias[live] / grid[live]
        assert (units - units.round()).abs().max() < 1e-3, name
        checked += 1
    assert checked == len(result.quantized)


def test_without_activation_bits_nothing_changes():
    model = Tiny().eval()
    result = udfc_hub.compress(model, prune_ratio=0, bits=6, input_size=(3, 8, 8), method="rtn")
    assert not any(output_range(m) or input_range(m) for m in result.model.modules())


@needs_onnx
def test_an_artifact_without_the_flow_still_exports_with_the_passs_own_quantizers(tmp_path, monkeypatch):
    """A format-3 artifact (written before the int8 data flow existed) loads, and its export adds the output
    quantizers and routed additions ONNX Runtime's fusion needs, as before."""
    import udfc_hub.engine

    zero = {"shared_inputs": 0, "output_quantizers": 0, "int32_biases": 0}
    monkeypatch.setattr(udfc_hub.engine, "plan_int8_flow", lambda *a, **k: zero)
    result = udfc_hub.compress(
        timm.create_model("resnet18", num_classes=10).eval(), prune_ratio=0, bits=8, act_bits=8, input_size=(3, 64, 64)
    )
    udfc_hub.save_pretrained(result, tmp_path / "v3")
    args = json.loads((tmp_path / "v3" / "config.json").read_text())["model_args"]
    assert args["format_version"] == 3 and "act_outputs" not in args
    out = udfc_hub.export_onnx(tmp_path / "v3", tmp_path / "v3.onnx", input_size=(3, 64, 64))
    assert out.output_quantizers > 0 and out.routed_adds > 0
