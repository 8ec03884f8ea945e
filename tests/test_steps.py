"""The per-layer steps of the engine, each on its own, on tiny layers where the result is known."""

import pytest
import timm
import torch
import torch.nn as nn

import udfc_hub
from udfc_hub import ChannelGroup, CompressionConfig, Consumer, Layer
from udfc_hub.steps import (
    apply_pruning,
    compensate_consumers,
    place_correction,
    plan_pruning,
    quantize_layer,
    remove_expected_shift,
)


def _conv_bn(n_out=6, n_in=4, seed=0):
    torch.manual_seed(seed)
    conv, bn = nn.Conv2d(n_in, n_out, 1, bias=False), nn.BatchNorm2d(n_out)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return conv.eval(), bn.eval()


def test_plan_removes_a_duplicate_channel_exactly_with_the_linear_fit():
    conv, bn = _conv_bn(n_out=6, n_in=16)  # independent filters: the representation is unique
    bn.eps = 0.0  # so that sigma_5 = 1e-3 sigma_0 exactly
    with torch.no_grad():  # channel 5's BN output is exactly 0.5 x channel 0's, and its filter the smallest
        conv.weight[5] = 0.5e-3 * conv.weight[0]
        bn.weight[5], bn.bias[5], bn.running_var[5] = bn.weight[0], 0.5 * bn.bias[0], bn.running_var[0] * 1e-6
    group = ChannelGroup(Layer("a", "bn"), (Consumer("b"),))
    cfg = CompressionConfig.preset("udfc", alpha1=0.0).resolved()
    plan = plan_pruning(conv, bn, group, 5, cfg)
    assert plan.pruned.tolist() == [5] and plan.residual < 1e-10
    assert plan.scales[0, 0].item() == pytest.approx(0.5, rel=1e-5)
    assert plan.scales[0, 1:].abs().max() < 1e-5


def test_nonnegative_scales_are_nonnegative_where_the_free_fit_is_not():
    conv, bn = _conv_bn(n_out=16, n_in=3, seed=3)
    group = ChannelGroup(Layer("a", "bn"), (Consumer("b"),))
    free = plan_pruning(conv, bn, group, 8, CompressionConfig.preset("udfc").resolved())
    nonneg = plan_pruning(conv, bn, group, 8, CompressionConfig.preset("udfc", nonnegative=True).resolved())
    assert (free.scales < 0).any() and (nonneg.scales >= 0).all()
    assert nonneg.solver == "nonnegative" and nonneg.residual >= free.residual - 1e-12


def test_relu_fit_needs_a_relu_after_the_norm():
    conv, bn = _conv_bn()
    cfg = CompressionConfig().resolved()  # udfc+: fit="relu"
    with_relu = plan_pruning(conv, bn, ChannelGroup(Layer("a", "bn"), (), relu_after_norm=True), 4, cfg)
    without = plan_pruning(conv, bn, ChannelGroup(Layer("a", "bn"), ()), 4, cfg)
    assert with_relu.solver == "relu-moments" and with_relu.moments is not None and not with_relu.fallback
    assert without.solver != "relu-moments" and without.moments is None and without.fallback


def test_apply_pruning_slices_producer_norm_and_aligned():
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.Conv2d(6, 6, 3, groups=6))
    group = ChannelGroup(Layer("0", "1"), (), aligned=("2",))
    means = {"2": torch.arange(6.0)}
    apply_pruning(model, Layer("0", "1"), group, torch.tensor([1, 4]), means)
    assert model[0].weight.shape[0] == 2 and model[1].running_mean.shape == (2,) and model[2].weight.shape[0] == 2
    assert means["2"].tolist() == [1.0, 4.0]


def test_scale_correction_keeps_the_codes_and_changes_the_scales():
    conv, bn = _conv_bn(n_out=8, n_in=16)
    plain = quantize_layer(conv, bn, CompressionConfig(bits=3, quant_correction="none").resolved())
    scaled = quantize_layer(conv, bn, CompressionConfig(bits=3, quant_correction="scale").resolved())
    assert torch.equal(plain.qt.codes, scaled.qt.codes) and not torch.equal(plain.qt.scale, scaled.qt.scale)
    assert scaled.correction == "scale" and plain.t is None and scaled.t is None
    # the rescaled weight is closer to the float one (t is the per-row least-squares scale)
    w = conv.weight
    assert (scaled.weight - w).norm() < (plain.weight - w).norm()


def test_udfc_t_is_left_to_place_and_goes_into_the_norm_or_the_rows():
    conv, bn = _conv_bn(n_out=8, n_in=16)
    q = quantize_layer(conv, bn, CompressionConfig.preset("udfc", bits=3).resolved())
    assert q.t is not None and q.t.shape == (8,)
    gamma = bn.weight.detach().clone()
    _, where = place_correction(conv, bn, q.qt, q.t)
    assert where == "norm" and torch.allclose(bn.weight, gamma * q.t.float())
    lin = nn.Linear(4, 3)
    ql = quantize_layer(lin, None, CompressionConfig.preset("udfc", bits=3).resolved())
    bias = lin.bias.detach().clone()
    qt, where = place_correction(lin, None, ql.qt, ql.t)
    assert where == "rows" and torch.equal(lin.weight, qt.dequantize())
    assert torch.allclose(lin.bias, bias * ql.t.float())


def test_expected_shift_goes_into_the_running_mean():
    conv, bn = _conv_bn(n_out=2, n_in=3)
    delta = torch.ones(2, 3, 1, 1)
    before = bn.running_mean.clone()
    biggest = remove_expected_shift(conv, bn, delta, torch.full((3, 1, 1), 2.0, dtype=torch.float64))
    assert biggest == pytest.approx(6.0) and torch.allclose(bn.running_mean, before + 6.0)
    assert remove_expected_shift(conv, bn, delta, torch.ones(5, 1, 1, dtype=torch.float64)) is None  # shape changed


def test_compensate_consumers_moves_t_into_their_columns():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    v = model[2].weight.detach().clone()
    t = torch.tensor([1.0, 2.0, 0.5, 3.0])
    group = ChannelGroup(Layer("0"), (Consumer("2"),))
    variance, notes = compensate_consumers(model, group, None, t, CompressionConfig().resolved(), {}, lambda n: None)
    assert variance is None and notes == []
    assert torch.allclose(model[2].weight, v * t.reshape(1, 4, 1, 1))


@pytest.mark.parametrize("method", ["nm", "prune"])
def test_bn_corrections_change_the_consumer_statistics(method):
    model = timm.create_model("cifar_resnet20").eval()
    plain = udfc_hub.compress(model, prune_ratio=0.3, bits=None, method=method)
    fixed = udfc_hub.compress(model, prune_ratio=0.3, bits=None, method=method, bias_correction=True,
                              variance_correction=True)  # fmt: skip
    bn = "layer1.0.bn2"
    assert not torch.equal(plain.model.get_submodule(bn).running_mean, fixed.model.get_submodule(bn).running_mean)
    assert not torch.equal(plain.model.get_submodule(bn).running_var, fixed.model.get_submodule(bn).running_var)
    assert fixed.report.layers[1].variance_range is not None and plain.report.layers[1].variance_range is None
