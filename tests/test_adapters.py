import pytest
import timm
import torch
import torch.nn as nn

import udfc_hub
from helpers import CIFAR_LOSSLESS, CIFAR_WEIGHTS, accuracy, load_cifar, require
from udfc_hub import UnsupportedModelError, describe_model

# (timm name, blocks, groups per block)
RESNETS = [
    ("resnet18", 8, 1),
    ("resnet34", 16, 1),
    ("resnet50", 16, 2),
    ("resnet101", 33, 2),
    ("resnet152", 50, 2),
    ("resnet26", 8, 2),
    ("resnet18d", 8, 1),
    ("resnet50d", 16, 2),
]


def _check_spec(model, spec):
    modules = dict(model.named_modules())
    names = [layer.name for layer in spec.layers]
    assert len(names) == len(set(names))
    # every conv and linear weight of the model is listed for quantization
    assert set(names) == {n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for layer in spec.layers:
        if layer.norm is not None:
            assert isinstance(modules[layer.norm], nn.BatchNorm2d)
            assert modules[layer.norm].num_features == modules[layer.name].weight.shape[0]
    for g in spec.groups:
        assert g.producer in spec.layers
        for c in g.consumers:
            assert modules[c.name].weight.shape[c.dim] == modules[g.producer.name].weight.shape[0]


@pytest.mark.parametrize("name,blocks,per_block", RESNETS)
def test_timm_resnet_spec(name, blocks, per_block):
    model = timm.create_model(name)
    spec = describe_model(model)
    _check_spec(model, spec)
    assert len(spec.groups) == blocks * per_block
    assert all(g.producer.norm is not None for g in spec.groups)
    # only inner channels are prunable: never a block's last conv, the stem or a downsample
    producers = {g.producer.name for g in spec.groups}
    assert not any(p.endswith(("conv3", "downsample.0", "downsample.1")) or "." not in p for p in producers)


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_cifar_resnet_spec(depth):
    model = timm.create_model(f"cifar_resnet{depth}")
    spec = describe_model(model)
    _check_spec(model, spec)
    assert len(spec.groups) == 3 * (depth - 2) // 6
    # the parameter counts of the akamaster checkpoints
    expected = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018}[depth]
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name,match", [("test_efficientnet_ln", "LayerNormAct2d"), ("mixnet_s", "MixedConv2d")])
def test_efficientnet_variants_the_adapter_does_not_know_are_traced(name, match):
    model = timm.create_model(name).eval()
    spec = describe_model(model)
    assert spec.family.startswith("traced") and match in spec.notes[0]
    assert udfc_hub.adapters.removal_error(model, spec, (3, 64, 64)) < 1e-5


@pytest.mark.parametrize(
    "name,match", [("resnext50_32x4d", "grouped"), ("seresnet50", "attention"), ("resnetaa50", "anti-aliasing")]
)
def test_refused_resnet_variants_say_why_and_are_traced(name, match):
    spec = describe_model(timm.create_model(name))  # the ResNet adapter refuses; the traced couplings take over
    assert spec.family.startswith("traced") and match in spec.notes[0]


def test_unsupported_model_lists_families():
    with pytest.raises(UnsupportedModelError) as err:
        udfc_hub.compress(nn.Sequential(nn.ReLU(), nn.Identity()), prune_ratio=0.3, bits=6)  # no weight layer
    text = str(err.value)
    assert "Sequential" in text and "timm ResNet" in text and "CIFAR ResNet" in text and "resnet50" in text


def test_register_adapter_is_tried_first():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(torch.relu(self.bn(self.a(x))))

    class TinyAdapter:
        family, examples = "Tiny", "Tiny()"

        def matches(self, model):
            return isinstance(model, Tiny)

        def describe(self, model):
            a = udfc_hub.Layer("a", "bn")
            return udfc_hub.ModelSpec(
                "Tiny", (a, udfc_hub.Layer("b")), (udfc_hub.ChannelGroup(a, (udfc_hub.Consumer("b"),)),)
            )

    with udfc_hub.registered_adapter(TinyAdapter()) as adapter:
        assert udfc_hub.adapters.ADAPTERS[0] is adapter
        result = udfc_hub.compress(Tiny().eval(), prune_ratio=0.5, bits=None, input_size=(3, 4, 4))
        assert result.model.a.out_channels == 4 and result.model.b.in_channels == 4
        assert result.model(torch.randn(1, 3, 4, 4)).shape == (1, 2, 4, 4)
    assert adapter not in udfc_hub.adapters.ADAPTERS
    with pytest.raises(udfc_hub.InvalidArgumentError, match="not registered"):
        udfc_hub.unregister_adapter(adapter)


@pytest.mark.parametrize("depth,expected", [(20, 91.78), (56, 93.62)])
def test_cifar_checkpoints_load_through_timm(depth, expected):
    files = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}
    path = require(CIFAR_WEIGHTS / files[depth])
    model = timm.create_model(f"cifar_resnet{depth}", checkpoint_path=str(path))
    x, y = load_cifar(CIFAR_LOSSLESS)
    # the checkpoints are good models: on 20 lossless test images they get nearly all right
    assert accuracy(model, x, y) >= 90.0
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["best_prec1"] == pytest.approx(expected, abs=0.01)
    first = state["state_dict"]["module.conv1.weight"]
    assert torch.equal(model.conv1.weight, first)


@pytest.mark.parametrize(
    "name", [pytest.param("tf_efficientnet_lite0", marks=pytest.mark.slow), "efficientnet_b0", "mobilenetv2_100"]
)
def test_efficientnet_family_quantizes_everything_and_prunes_the_head(name, tmp_path):
    model = timm.create_model(name).eval()
    spec = describe_model(model)
    _check_spec(model, spec)
    assert spec.groups[-1].producer.name == "conv_head"
    expansions = spec.groups[:-1]
    assert expansions and all(g.producer.name.endswith("conv_pw") for g in expansions)
    # ReLU6 and no squeeze-excite (Lite, MobileNetV2): compensated through the depthwise conv; SiLU + SE: not
    relu6 = name != "efficientnet_b0"
    assert all(g.closed_form == relu6 and (g.depthwise is not None) == relu6 for g in expansions)
    assert bool(spec.notes) != relu6
    # t never reaches a consumer (where t goes does not depend on pruning: quantization only keeps the test lean)
    paper = udfc_hub.compress(model, prune_ratio=0.0, bits=6, method="udfc")
    assert all(r.correction in ("norm", "rows") for r in paper.report.layers)
    # uniform widths: every expansion group loses a quarter (the moment allocation may keep a group whole)
    result = udfc_hub.compress(model, prune_ratio=0.25, bits=6, layer_ratios="uniform")
    assert result.model.conv_head.out_channels == 960 and result.model.classifier.in_features == 960
    pruned = [r.name for r in result.report.pruned_layers]
    assert pruned == ([g.producer.name for g in spec.groups] if relu6 else ["conv_head"])
    # Neuron Merging pairs producer filters, which a depthwise conv makes meaningless: it leaves those whole
    nm = udfc_hub.compress(model, prune_ratio=0.25, bits=None, method="nm")
    assert [r.name for r in nm.report.pruned_layers] == ["conv_head"]
    # udfc+ removes the expected quantization shift of every layer with a BN after it
    assert all(r.bias_shift is not None for r in result.report.layers if r.name != "classifier")
    x = torch.randn(1, 3, 96, 96)
    loaded = timm.create_model(f"local-dir:{udfc_hub.save_pretrained(result, tmp_path / 'm')}", pretrained=True)
    with torch.inference_mode():
        assert (loaded.eval()(x) - result.model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv2_100"])
def test_plain_pruning_removes_depthwise_coupled_channels(name, tmp_path):
    model = timm.create_model(name).eval()
    spec = describe_model(model)
    result = udfc_hub.compress(model, prune_ratio=0.25, bits=None, method="prune")
    assert len(result.report.pruned_layers) == len(spec.groups)
    for group in spec.groups[:-1]:
        block = result.model.get_submodule(group.producer.name.rsplit(".", 1)[0])
        n = block.conv_pw.out_channels
        assert n == int(0.75 * model.get_submodule(group.producer.name).out_channels)
        assert block.conv_dw.groups == block.conv_dw.out_channels == block.bn2.num_features == n
        assert block.conv_pwl.in_channels == n
        if hasattr(block.se, "conv_reduce"):
            assert block.se.conv_reduce.in_channels == block.se.conv_expand.out_channels == n
    x = torch.randn(1, 3, 96, 96)
    loaded = timm.create_model(f"local-dir:{udfc_hub.save_pretrained(result, tmp_path / 'm')}", pretrained=True)
    with torch.inference_mode():
        assert (loaded.eval()(x) - result.model(x)).abs().max() <= 1e-5
    assert sum(p.numel() for p in loaded.parameters()) == result.report.after.params


@pytest.mark.parametrize(
    "name,size,groups,first",
    [
        pytest.param("vgg11_bn", 64, 8, "features.0", marks=pytest.mark.slow),
        ("convnext_atto", 64, 12, "stages.0.blocks.0.mlp.fc1"),
        ("vit_tiny_patch16_224", 224, 12, "blocks.0.mlp.fc1"),
        ("deit_tiny_patch16_224", 224, 12, "blocks.0.mlp.fc1"),
    ],
)
def test_vgg_convnext_vit_prune_compensate_and_round_trip(name, size, groups, first, tmp_path):
    model = timm.create_model(name).eval()
    spec = describe_model(model)
    _check_spec(model, spec)
    assert len(spec.groups) == groups and spec.groups[0].producer.name == first
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=5, input_size=(3, size, size))
    producer = result.model.get_submodule(first)
    assert producer.weight.shape[0] == int(0.7 * model.get_submodule(first).weight.shape[0])
    assert result.report.after.params < result.report.before.params
    folder = udfc_hub.save_pretrained(result, tmp_path / "m")
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        assert (loaded(x) - result.model(x)).abs().max() <= 1e-5


def test_mlp_compensation_is_exact_for_redundant_hidden_units():
    """fc1 -> fc2 with no nonlinearity in between: duplicated hidden units are merged without any change."""
    model = timm.create_model("vit_tiny_patch16_224").eval()
    mlp = model.blocks[0].mlp
    mlp.act = torch.nn.Identity()  # the algebra is exact without the GELU
    with torch.no_grad():
        half = mlp.fc1.out_features // 2
        mlp.fc1.weight[half:] = 2 * mlp.fc1.weight[:half]  # the second half doubles the first
        mlp.fc1.bias[half:] = 2 * mlp.fc1.bias[:half]
        mlp.fc1.weight[:half] *= 10  # make the originals the larger (kept) filters
        mlp.fc1.bias[:half] *= 10
    result = udfc_hub.compress(model, prune_ratio=0.5, bits=None)
    x = torch.randn(2, 197, 192)
    with torch.inference_mode():
        assert (result.model.blocks[0].mlp(x) - mlp(x)).abs().max() < 1e-3
