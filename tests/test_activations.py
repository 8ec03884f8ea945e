"""Activation quantization without data (``act_bits``), the integer weight grid, and the int8 ONNX export."""

from __future__ import annotations

import builtins
import json
import os
import shutil

import pytest
import timm
import torch
from transformers import AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification

import udfc_hub
from helpers import CIFAR_TEST, CIFAR_WEIGHTS, accuracy, load_cifar, require
from udfc_hub import ArtifactError, InvalidArgumentError, UdfcError
from udfc_hub.ops import int_codes, quantize_dorefa
from udfc_hub.ops.activations import CLIP_FRACTIONS, ActRange, choose_range, expected_errors, fake_quantize
from udfc_hub.surgery import input_range

try:
    import onnx
    import onnxruntime as ort
except ImportError:  # the [onnx] extra is optional
    onnx = ort = None

needs_onnx = pytest.mark.skipif(ort is None, reason="needs the [onnx] extra (onnx, onnxruntime)")


def small_resnet(**kwargs):
    return timm.create_model("resnet18", num_classes=10, **kwargs).eval()


def on_grid(x: torch.Tensor, act: ActRange) -> bool:
    q = x / act.scale + act.zero_point
    return bool((q - q.round()).abs().max() < 1e-3 and q.min() > -1e-3 and q.max() < (1 << act.bits) - 1 + 1e-3)


# ---- the quantizers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
@pytest.mark.parametrize("grid", ["dorefa", "int"])
def test_weight_grids_and_their_int8_form(bits, grid):
    w = torch.randn(16, 8, 3, 3)
    qt = quantize_dorefa(w, bits, "channel", grid)
    values = qt.dequantize()
    levels = {len(torch.unique(row)) for row in values.reshape(16, -1)}
    assert max(levels) <= (1 << bits) - (grid == "int")
    if grid == "int":  # zero is on the grid, and the grid is symmetric
        assert bool((quantize_dorefa(torch.zeros(1, 4), bits, "tensor", "int").dequantize() == 0).all())
    if grid == "dorefa" and bits == 8:
        with pytest.raises(ValueError, match="do not fit int8"):
            int_codes(qt)
        return
    n, step = int_codes(qt)
    assert n.dtype == torch.int8 and int(n.abs().max()) <= 127
    torch.testing.assert_close(n.float() * step, values, rtol=0, atol=1e-6)


def test_fake_quantize_is_onnx_quantize_then_dequantize():
    x = torch.randn(10_000) * 3
    act = ActRange(scale=0.037, zero_point=91, bits=8)
    # torch's reference op (what ONNX QuantizeLinear / DequantizeLinear compute, away from exact ties)
    ref = torch.fake_quantize_per_tensor_affine(x, act.scale, act.zero_point, 0, 255)
    torch.testing.assert_close(fake_quantize(x, act.scale, act.zero_point, 8), ref, rtol=0, atol=1e-6)
    assert fake_quantize(torch.zeros(3), act.scale, act.zero_point, 8).abs().max() == 0  # zero is exact
    low = fake_quantize(x, 0.5, 3, 3)  # 3 bits: codes 0..7 around zero point 3
    assert set(torch.unique(low / 0.5).tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0}


def test_expected_error_tracks_the_exact_error_and_picks_the_same_clip():
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(100_000, generator=g).clamp(min=0), torch.randn(100_000, generator=g) * 2 + 0.7):
        lo, hi = min(float(x.min()), 0.0), float(x.max())
        candidates = [ActRange.spanning(lo * f, hi * f, 4) for f in CLIP_FRACTIONS.tolist()]
        approx = expected_errors(x.double(), candidates)
        exact = torch.tensor(
            [float(((fake_quantize(x, r.scale, r.zero_point, 4) - x) ** 2).mean()) for r in candidates]
        )
        assert float((approx / exact - 1).abs().max()) < 0.05
        chosen = choose_range(x, 4)
        best = float(exact.min())
        assert float(((fake_quantize(x, chosen.scale, chosen.zero_point, 4) - x) ** 2).mean()) <= best * 1.02
        # far better than the plain max range at 4 bits
        assert best < 0.7 * float(exact[-1])


def test_ranges_are_unsigned_after_relu_and_signed_otherwise():
    relu = choose_range(torch.randn(50_000).clamp(min=0), 8)
    signed = choose_range(torch.randn(50_000), 8)
    assert relu.unsigned and relu.lo == 0
    assert not signed.unsigned and signed.lo < 0 < signed.hi
    assert 2.5 < relu.hi < 4.6 and 2.5 < signed.hi < 4.6  # clipped inside the sample's extremes


# ---- compression with act_bits --------------------------------------------------------------------------------


def test_every_quantized_layer_sees_its_input_on_its_grid():
    model = small_resnet()
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=6, act_bits=6, input_size=(3, 64, 64))
    seen = {}
    for name in result.quantized:
        mod = result.model.get_submodule(name)
        act = input_range(mod)
        assert act is not None and act.bits == (8 if name == "conv1" else 6)  # the image is 8-bit data
        mod.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0].detach()))
    result.model(torch.randn(2, 3, 64, 64))
    assert set(seen) == set(result.quantized)
    for name, x in seen.items():
        assert on_grid(x, input_range(result.model.get_submodule(name))), name
    stem = input_range(result.model.conv1)
    assert stem.lo < -2 and stem.hi > 2.5  # the ImageNet-normalised image range, not the probe's noise
    assert input_range(result.model.layer1[0].conv2).unsigned  # after a ReLU
    assert {qt.grid for qt in result.quantized.values()} == {"int"}
    assert any("quantized to 6 bits" in n for n in result.report.notes)


def test_act_quantization_shift_correction_only_for_udfc_methods():
    model = small_resnet()
    size = dict(input_size=(3, 64, 64))
    # the same weights with and without quantized inputs: only the input rounding's shift can tell them apart
    rtn_a = udfc_hub.compress(model, prune_ratio=0, bits=8, act_bits=4, method="rtn", **size)
    rtn_w = udfc_hub.compress(model, prune_ratio=0, bits=8, grid="int", method="rtn", **size)
    plus_a = udfc_hub.compress(model, prune_ratio=0, bits=8, act_bits=4, **size)
    plus_w = udfc_hub.compress(model, prune_ratio=0, bits=8, grid="int", **size)
    norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for name in norms:  # rtn leaves every running mean alone
        assert torch.equal(rtn_a.model.get_submodule(name).running_mean, rtn_w.model.get_submodule(name).running_mean)
    moved = [  # udfc+ moves the BN after each layer whose quantized input is not the image
        name
        for name in norms
        if not torch.equal(plus_a.model.get_submodule(name).running_mean, plus_w.model.get_submodule(name).running_mean)
    ]
    assert moved == [n for n in norms if n != "bn1"]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(act_bits=9), "act_bits must be an integer in 2..8"),
        (dict(act_bits=1), "act_bits must be an integer in 2..8"),
        (dict(act_bits=True), "act_bits must be an integer"),
        (dict(act_bits=4.5), "act_bits must be an integer"),
        (dict(act_bits=8, bits=None), "needs weight bits too"),
        (dict(grid="int4"), "grid must be one of"),
    ],
)
def test_bad_activation_options_are_named(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        udfc_hub.CompressionConfig(**options)


def test_weight_only_settings_and_files_are_unchanged(tmp_path):
    result = udfc_hub.compress(small_resnet(), prune_ratio=0.3, bits=6, input_size=(3, 64, 64))
    assert "act_bits" not in result.report.settings and "grid" not in result.report.settings
    udfc_hub.save_pretrained(result, tmp_path / "w6")
    args = json.loads((tmp_path / "w6" / "config.json").read_text())["model_args"]
    assert args["format_version"] == 2 and "act_bits" not in args and "grid" not in args


def test_round_trip_through_stock_loaders_gives_identical_logits(tmp_path):
    result = udfc_hub.compress(small_resnet(), prune_ratio=0.3, bits=4, act_bits=6, input_size=(3, 64, 64))
    folder = tmp_path / "w4a6"
    udfc_hub.save_pretrained(result, folder)
    config = json.loads((folder / "config.json").read_text())
    args = config["model_args"]
    assert args["format_version"] == 4 and args["act_bits"] == 6 and args["grid"] == "int"
    assert args["act_layers"] == {name: 8 if name == "conv1" else 6 for name in result.quantized}  # the image: 8
    # the int8 data flow: blocks share their first layer's grid, branch outputs before an addition are 8-bit
    assert args["act_inputs"] and set(args["act_inputs"].values()) == {8}  # the residual stream: 8 bits
    assert "layer1.0.bn2" in args["act_outputs"] and set(args["act_outputs"].values()) == {8}
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = result.model(x)
        timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        assert torch.equal(timm_model(x), want)
        hf = AutoModelForImageClassification.from_pretrained(folder).eval()
        assert torch.equal(hf(x).logits, want)
    card = (folder / "README.md").read_text()
    assert "W4A6" in card and "- w4a6" in card and "6-bit activations" in card


def test_transformers_native_model_round_trip(tmp_path):
    config = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], num_labels=10)
    model = ResNetForImageClassification(config).eval()
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=8, act_bits=8, input_size=(3, 64, 64))
    assert any("ImageNet's mean/std" in n for n in result.report.notes)  # transformers configs state no normalisation
    udfc_hub.save_pretrained(result, tmp_path / "hf")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, result.model(x).logits)


@pytest.fixture(scope="module")
def a8_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("a8") / "a8"
    result = udfc_hub.compress(small_resnet(), prune_ratio=0, bits=8, act_bits=8, input_size=(3, 64, 64))
    udfc_hub.save_pretrained(result, folder)
    return folder


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.pop("act_layers"), "act_bits and act_layers go together"),
        (lambda a: a.__setitem__("act_layers", {"bn1": 8}), "not a quantized layer"),
        (lambda a: a["act_layers"].__setitem__("conv1", 9), "input bits in 2..8"),
        (lambda a: a.__setitem__("act_bits", 12), "act_bits must be an integer"),
        (lambda a: a.__setitem__("grid", "fp4"), "grid must be one of"),
        (lambda a: a.__setitem__("format_version", 2), "need format version 3"),
        (lambda a: a.__setitem__("format_version", 3), "act_inputs needs format version 4"),
        (lambda a: a["act_outputs"].__setitem__("layer1.0.bn2", 9), "act_outputs must map module names to bits"),
        (lambda a: a.__setitem__("act_inputs", {"conv1": 8}), "in both act_layers and act_inputs"),
        (lambda a: a["act_outputs"].__setitem__("layer9.bn2", 8), "which the base model does not have"),
    ],
)
def test_tampered_activation_fields_are_refused(a8_folder, tmp_path, edit, message):
    folder = tmp_path / "a8"
    shutil.copytree(a8_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config["model_args"])
    if config["model_args"].get("format_version") in (2, 3):
        config["udfc"]["format_version"] = config["model_args"]["format_version"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=message):
        udfc_hub.check_artifact(folder)


@pytest.mark.slow
def test_fixture_resnet20_w8a8_and_w6a6_stay_close_to_float():
    """Real weights and images: the first 2,000 fixture images (W8A8 drops 0.15, W6A6 0.60 on them, measured)."""
    x, y = load_cifar(require(CIFAR_TEST))
    x, y = x[:2000], y[:2000]
    model = timm.create_model("cifar_resnet20", checkpoint_path=str(require(CIFAR_WEIGHTS / "resnet20-12fca82f.th")))
    fp = accuracy(model, x, y)
    w8a8 = accuracy(udfc_hub.compress(model, prune_ratio=0, bits=8, act_bits=8).model, x, y)
    w6a6 = accuracy(udfc_hub.compress(model, prune_ratio=0, bits=6, act_bits=6).model, x, y)
    assert fp - w8a8 <= 0.5
    assert fp - w6a6 <= 2.0


# ---- ONNX export ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w8a8():
    return udfc_hub.compress(small_resnet(), prune_ratio=0.3, bits=8, act_bits=8, input_size=(3, 64, 64))


@pytest.fixture(scope="module")
def resnet20():
    path = require(CIFAR_WEIGHTS / "resnet20-12fca82f.th")
    x, y = load_cifar(require(CIFAR_TEST))
    return timm.create_model("cifar_resnet20", checkpoint_path=str(path)).eval(), x[:500], y[:500]


@needs_onnx
def test_export_runs_on_int8_kernels(w8a8, tmp_path):
    out = udfc_hub.export_onnx(w8a8, tmp_path / "m.onnx", input_size=(3, 64, 64))
    assert out.int8_weights == len(w8a8.quantized) == out.quantized_inputs
    graph = onnx.load(str(out.path)).graph
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8) == len(w8a8.quantized)
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4 for t in graph.initializer)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out.path), options, providers=["CPUExecutionProvider"])
    kinds = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert kinds.count("QLinearConv") == sum(isinstance(m, torch.nn.Conv2d) for m in w8a8.model.modules())
    assert "QLinearAdd" in kinds and "BatchNormalization" not in kinds
    assert out.bytes < 0.35 * 4 * sum(p.numel() for p in w8a8.model.parameters())  # int8, not float32


def _ort_top1(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"pixel_values": x.numpy()})[0]).argmax(1)


@needs_onnx
@pytest.mark.parametrize("bits", [8, 4])
def test_export_agrees_with_pytorch_on_real_images(resnet20, bits, tmp_path):
    """Fixture ResNet-20 on 500 fixture images, W8A8 and W4A8: ONNX Runtime's int8 model (BatchNorms folded, int32
    biases, fused int8 kernels) and the exact-rounding export both agree with the PyTorch model on >= 99 % of the
    top-1 answers: the model rounds its tensors where the int8 kernels do, only float round-off differs. 4-bit
    weights export on the int8 grid with their own values (|n| <= 7)."""
    model, x, y = resnet20
    result = udfc_hub.compress(model, prune_ratio=0, bits=bits, act_bits=8)
    with torch.no_grad():
        want = result.model(x).argmax(1)
    exact = udfc_hub.export_onnx(result, tmp_path / "exact.onnx", int8_outputs=False)
    assert float((_ort_top1(exact.path, x) == want).float().mean()) >= 0.99
    fast = udfc_hub.export_onnx(result, tmp_path / "fast.onnx")
    assert fast.output_quantizers == fast.routed_adds == 0  # the model has its own: the export adds none
    assert float((_ort_top1(fast.path, x) == want).float().mean()) >= 0.99
    if bits == 4:
        inits = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(exact.path)).graph.initializer]
        codes = [v for v in inits if v.dtype.name == "int8" and v.ndim >= 2]
        assert len(codes) == len(result.quantized) and max(int(abs(c).max()) for c in codes) == 7


@needs_onnx
def test_export_from_a_saved_folder_and_the_cli(w8a8, tmp_path):
    from udfc_hub.cli import main

    udfc_hub.save_pretrained(w8a8, tmp_path / "a8")
    assert main(["export", str(tmp_path / "a8"), "--onnx", str(tmp_path / "a8.onnx"), "--quiet"]) == 0
    assert (tmp_path / "a8.onnx").is_file()
    assert main(["export", str(tmp_path / "a8"), "--onnx", str(tmp_path / "a8.onnx"), "--quiet"]) == 2  # exists
    mode = (tmp_path / "a8.onnx").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@needs_onnx
def test_export_errors_name_the_problem_and_leave_no_file(w8a8, tmp_path, monkeypatch):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        udfc_hub.export_onnx(w8a8, tmp_path / "missing" / "m.onnx")
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        udfc_hub.export_onnx(w8a8, tmp_path)
    with pytest.raises(InvalidArgumentError, match="not a saved udfc-hub folder"):
        udfc_hub.export_onnx(tmp_path, tmp_path / "m.onnx")
    dorefa8 = udfc_hub.compress(small_resnet(), prune_ratio=0, bits=8, input_size=(3, 64, 64))
    with pytest.raises(UdfcError, match="grid='int'"):
        udfc_hub.export_onnx(dorefa8, tmp_path / "d8.onnx", input_size=(3, 64, 64))

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).real.flatten(1)

    with pytest.raises(UdfcError, match="ONNX cannot express this model"):
        udfc_hub.export_onnx(Unexportable(), tmp_path / "u.onnx", input_size=(3, 8, 8))
    import udfc_hub.export as export

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_check_with_runtime", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        udfc_hub.export_onnx(w8a8, tmp_path / "m.onnx", input_size=(3, 64, 64))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial or temporary file


def test_missing_onnxruntime_is_named_with_the_install_command(w8a8, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(UdfcError, match=r"(onnx|onnxruntime).*pip install 'udfc-hub\[onnx\]'"):
        udfc_hub.export_onnx(w8a8, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
