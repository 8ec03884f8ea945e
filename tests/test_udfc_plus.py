"""udfc+ in the engine: the probe, exact pruning of constant channels, and the quantization bias correction."""

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import Conv2dSame

import udfc_hub
from udfc_hub.hub.quantized import convert_to_packed
from udfc_hub.ops import quantize_dorefa, relu_mean
from udfc_hub.probe import probe_input_means


class TwoConv(nn.Module):
    """conv1 -> bn1 -> ReLU -> 1x1 conv2 -> bn2: the smallest model with a prunable group."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 5, 1, bias=False), nn.BatchNorm2d(5)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class TwoConvAdapter:
    family, examples = "two convs", "TwoConv()"

    def matches(self, model):
        return isinstance(model, TwoConv)

    def describe(self, model):
        first = udfc_hub.Layer("conv1", "bn1")
        group = udfc_hub.ChannelGroup(first, (udfc_hub.Consumer("conv2"),), relu_after_norm=True)
        return udfc_hub.ModelSpec(self.family, (first, udfc_hub.Layer("conv2", "bn2")), (group,))


@pytest.fixture
def two_conv():
    torch.manual_seed(0)
    model = TwoConv()
    for bn in (model.bn1, model.bn2):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    with udfc_hub.registered_adapter(TwoConvAdapter()):
        yield model.eval()


def test_probe_leaves_the_model_untouched_and_matches_bn_moments():
    model = timm.create_model("cifar_resnet20").eval()
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    means = probe_input_means(model, ["layer1.0.conv2", "linear"], (3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and not any(m.training for m in model.modules())
    # conv2 reads relu(bn1(.)): per channel, the mean of a rectified N(beta, gamma^2), up to the non-Gaussian shape
    centre = means["layer1.0.conv2"][:, 1, 1]
    bn = model.layer1[0].bn1
    expected = relu_mean(bn.bias.detach(), bn.weight.detach().abs())
    assert torch.allclose(centre, expected, rtol=0.1, atol=0.02)
    assert means["linear"].shape == (64,)


def test_probe_pads_timm_same_convs_and_their_quantized_twins_alike():
    model = timm.create_model("tf_efficientnet_lite0").eval()
    name = "blocks.1.0.conv_dw"  # a stride-2 TF-"same" conv: its padding is asymmetric and applied in forward
    assert isinstance(model.get_submodule(name), Conv2dSame)
    plain = probe_input_means(model, [name], (3, 64, 64))[name]
    module = model.get_submodule(name)
    qt = quantize_dorefa(module.weight, 8, "channel")
    convert_to_packed(module, 8, tuple(qt.scale.shape)).set_codes(qt)  # changes this layer only, not its input
    assert type(module).__name__ == "QuantizedConv2dSame"
    assert torch.equal(probe_input_means(model, [name], (3, 64, 64))[name], plain)
    # the bottom-right tap reads the zero padding that pad_same adds on that side only
    assert not torch.allclose(plain[:, 2, 2], plain[:, 0, 0])


def test_udfc_plus_prunes_constant_channels_exactly(two_conv):
    # channels 0..3 are dead: gamma 0, so their output is the constant relu(beta); their filters are the smallest
    with torch.no_grad():
        two_conv.bn1.weight[:4] = 0.0
        two_conv.bn1.bias[:4] = torch.tensor([0.3, -0.2, 0.7, 0.1])
        two_conv.conv1.weight[:4] *= 1e-3
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        ref = two_conv(x)
        plus = udfc_hub.compress(two_conv, prune_ratio=0.5, bits=None, input_size=(3, 16, 16))
        paper = udfc_hub.compress(two_conv, prune_ratio=0.5, bits=None, method="udfc", input_size=(3, 16, 16))
        assert plus.model.conv1.out_channels == 4
        assert (plus.model(x) - ref).abs().max() < 1e-5  # the missed mean went into bn2: exact
        assert (paper.model(x) - ref).abs().max() > 1e-2  # the paper's linear fit cannot carry a constant


def test_quantization_bias_correction_keeps_the_expected_output(two_conv):
    def probe_error(model):
        """Mean pre-BN output of conv2 minus bn2's running mean, under the probe's own noise."""
        out = {}

        def hook(module, inputs, output):
            out["y"] = output.mean((0, 2, 3))

        handle = model.conv2.register_forward_hook(hook)
        try:
            probe_input_means(model, [], (3, 16, 16))
        finally:
            handle.remove()
        return out["y"] - model.bn2.running_mean

    base = probe_error(two_conv)
    kwargs = dict(prune_ratio=0, bits=2, granularity="tensor", input_size=(3, 16, 16))
    rtn = udfc_hub.compress(two_conv, method="rtn", **kwargs).model
    plus = udfc_hub.compress(two_conv, **kwargs).model
    rtn_err = (probe_error(rtn) - base).abs().max()
    plus_err = (probe_error(plus) - base).abs().max()
    assert rtn_err > 1e-2
    assert plus_err < 0.1 * rtn_err


def test_adaptive_layer_ratios_keep_the_total():
    model = timm.create_model("cifar_resnet20").eval()
    uniform = udfc_hub.compress(model, prune_ratio=0.4, bits=None)
    adaptive = udfc_hub.compress(model, prune_ratio=0.4, bits=None, layer_ratios="adaptive")
    producers = {g.producer.name for g in uniform.spec.groups}  # every group, pruned or kept whole
    groups = [[r for r in res.report.layers if r.name in producers] for res in (uniform, adaptive)]
    kept = [[r.kept_channels for r in rows] for rows in groups]
    assert len(kept[1]) == 9 and sum(kept[0]) == sum(kept[1]) and kept[0] != kept[1]
    assert all(r.kept_channels >= r.out_channels - int(0.9 * r.out_channels) for r in groups[1])
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert adaptive.model(x).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(fit="linear"),
        dict(fit="linear", nonnegative=True),
        dict(quant_correction="scale"),
        dict(quant_correction="udfc"),
        dict(method="nm", bias_correction=True, variance_correction=True),
        dict(method="prune", bias_correction=True),
    ],
)
def test_every_option_runs_and_keeps_codes_exact(kwargs):
    model = timm.create_model("cifar_resnet20").eval()
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=4, **kwargs)
    for name, qt in result.quantized.items():
        assert torch.equal(result.model.get_submodule(name).weight, qt.dequantize())
    # each option acts: the model differs from the one its method gives without it
    method = kwargs.get("method", "udfc+")
    base = udfc_hub.compress(model, prune_ratio=0.3, bits=4, method=method)
    assert result.report.config != base.report.config
    ours, theirs = result.model.state_dict(), base.model.state_dict()
    assert any(ours[k].shape != theirs[k].shape or not torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.inference_mode():
        assert torch.isfinite(result.model(torch.randn(2, 3, 32, 32))).all()
