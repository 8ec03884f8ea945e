"""Rounding with error feedback (issue 17, lever 2): the math on cases small enough to check exactly, the input
statistics it reads from the probe, and the option end to end."""

import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame

import udfc_hub
from helpers import assert_round_trip, assert_unchanged_without_batchnorm
from test_levers import _calibrated
from udfc_hub.engine import _keep_inputs
from udfc_hub.ops import quantize_dorefa, round_with_feedback, rounding_error, shrunk_covariance
from udfc_hub.ops.quantize import dequantize, grid_levels
from udfc_hub.probe import natural_noise, tap_covariance


def _problem(seed: int, groups: int = 1, rows: int = 16, d: int = 24, samples: int = 4000):
    """Weights, per-row scales and the covariance of inputs that share a common part (correlated, as activations)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(d) + 0.4 * torch.randn(groups, d, d, generator=g) / d**0.5
    x = torch.randn(groups, samples, d, generator=g) @ mix + torch.randn(groups, samples, 1, generator=g)
    x = x - x.mean(1, keepdim=True)
    h = (x.transpose(1, 2) @ x / samples).double()
    w = torch.randn(groups, rows, d, generator=g, dtype=torch.float64)
    return w, h, w.abs().amax(2, keepdim=True)


def _error(codes, w, h, scale, bits, grid="dorefa"):
    return rounding_error(dequantize(codes, scale, bits, torch.float64, grid) - w, h)


@pytest.mark.parametrize("bits,grid", [(2, "dorefa"), (4, "dorefa"), (4, "int"), (6, "dorefa")])
def test_feedback_rounding_is_never_worse_than_nearest_and_much_better_on_correlated_inputs(bits, grid):
    w, h, scale = _problem(bits)
    result = round_with_feedback(w, h, scale, bits, grid)
    nearest = quantize_dorefa(w[0], bits, "channel", grid).codes.double()[None]
    fed, near = _error(result.codes, w, h, scale, bits, grid), _error(nearest, w, h, scale, bits, grid)
    assert bool((fed <= near * (1 + 1e-6)).all())  # row by row: the better of the two is kept
    assert float(fed.sum() / near.sum()) < 0.75
    assert torch.allclose(result.error.double(), fed, rtol=1e-4) and torch.allclose(
        result.nearest_error.double(), near, rtol=1e-4
    )
    levels = grid_levels(bits, grid)
    assert bool(((result.codes >= 0) & (result.codes <= levels)).all()) and torch.equal(
        result.codes, result.codes.round()
    )


def test_each_weight_is_the_best_grid_value_given_the_ones_before_it():
    # visiting inputs in index order without a ridge, the last input's code minimises the exact objective once the
    # others are fixed (a 1-D convex quadratic: the grid point nearest its optimum); brute force over every code
    w, h, scale = _problem(1, rows=6, d=5)
    bits = 3
    codes = round_with_feedback(w, h, scale, bits, damping=0.0, order=False, fallback=False).codes
    for r in range(w.shape[1]):
        trials = codes[:, r : r + 1].repeat(1, grid_levels(bits) + 1, 1)
        trials[0, :, -1] = torch.arange(grid_levels(bits) + 1, dtype=trials.dtype)
        errors = _error(trials, w[:, r : r + 1].expand_as(trials), h, scale[:, r : r + 1], bits)[0]
        assert float(errors[int(codes[0, r, -1])]) <= float(errors.min()) * (1 + 1e-9)


def test_uncorrelated_inputs_make_it_nearest_rounding():
    w, _, scale = _problem(2)
    h = torch.diag_embed(torch.rand(1, w.shape[2], dtype=torch.float64) + 0.1)
    result = round_with_feedback(w, h, scale, 4, fallback=False)
    assert torch.equal(result.codes, quantize_dorefa(w[0], 4, "channel").codes.double()[None])


def test_groups_are_solved_independently():
    w, h, scale = _problem(3, groups=5, rows=1, d=9)  # a depthwise conv: one 3x3 filter per channel
    together = round_with_feedback(w, h, scale, 3).codes
    alone = torch.cat([round_with_feedback(w[i : i + 1], h[i : i + 1], scale[i : i + 1], 3).codes for i in range(5)])
    assert torch.equal(together, alone)


def test_small_sample_covariances_are_shrunk_towards_the_diagonal():
    _, h, _ = _problem(4, d=8)
    assert torch.allclose(shrunk_covariance(h, 10**9), h, atol=1e-6)
    half = shrunk_covariance(h, 8)  # as many samples as inputs: halfway
    off = ~torch.eye(8, dtype=torch.bool)
    assert torch.allclose(half[0][off], 0.5 * h[0][off]) and torch.equal(torch.diagonal(half[0]), torch.diagonal(h[0]))


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, bias=False),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        Conv2dSame(4, 6, 3, stride=2),
        nn.Linear(4, 6),
    ],
    ids=["conv", "strided-dilated", "depthwise", "reflect", "timm-same", "linear"],
)
def test_tap_covariance_gives_the_output_variance_of_any_weight_change(module):
    # exact: the output of a weight change dW over images and positions has variance dW_r Cov dW_r^T per row
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 9, 9, generator=g) + torch.arange(4.0)[:, None, None]
    if isinstance(module, nn.Linear):
        x = x.permute(0, 2, 3, 1)
    cov, samples = tap_covariance(module, x)
    delta = torch.randn(module.weight.shape, generator=g)
    if isinstance(module, nn.Linear):
        out = F.linear(x, delta)
        out = out.reshape(-1, out.shape[-1]).T
    else:
        probe = type(module)(
            4, module.out_channels, module.kernel_size, module.stride, bias=False, **_conv_args(module)
        )
        probe.weight.data = delta
        out = probe(x).transpose(0, 1).reshape(module.out_channels, -1)
    assert samples == out.shape[1]
    groups = cov.shape[0]
    d = delta.reshape(groups, delta.shape[0] // groups, -1).double()
    predicted = rounding_error(d, cov).reshape(-1)
    assert torch.allclose(predicted, out.double().var(1, unbiased=False), rtol=1e-4)


def _conv_args(module):
    if isinstance(module, Conv2dSame):
        return dict(dilation=module.dilation, groups=module.groups)
    return dict(
        padding=module.padding, dilation=module.dilation, groups=module.groups, padding_mode=module.padding_mode
    )


def test_pruned_inputs_keep_their_covariance():
    conv = nn.Conv2d(6, 5, 3, padding=1)
    dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    x = torch.randn(2, 6, 7, 7) @ torch.randn(7, 7)
    covs = {"c": tap_covariance(conv, x)[0], "dw": tap_covariance(dw, x)[0]}
    keep = torch.tensor([0, 2, 3, 5])
    group = SimpleNamespace(aligned=("dw",), consumers=(SimpleNamespace(name="c", dim=1),))
    _keep_inputs(covs, group, keep, 6)
    small, small_dw = nn.Conv2d(4, 5, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
    assert torch.allclose(covs["c"], tap_covariance(small, x[:, keep])[0])
    assert torch.allclose(covs["dw"], tap_covariance(small_dw, x[:, keep])[0])


def test_natural_noise_has_the_spectrum_and_colour_correlation_asked_for():
    x = natural_noise(torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(x.mean((2, 3)), torch.zeros(64, 3), atol=1e-5)
    assert torch.allclose(x.std((2, 3)), torch.ones(64, 3), atol=1e-5)
    flat = x.transpose(0, 1).reshape(3, -1)
    corr = torch.corrcoef(flat)
    assert all(0.85 < float(corr[i, j]) < 0.95 for i, j in itertools.combinations(range(3), 2))
    # amplitude falling as 1 / f: neighbouring pixels correlated, far more than white noise's 0
    assert float(torch.corrcoef(torch.stack([x[..., :-1].reshape(-1), x[..., 1:].reshape(-1)]))[0, 1]) > 0.5
    power = torch.fft.fft2(x.double()).abs().pow(2).mean((0, 1))
    assert 3 < float(power[2, 0] / power[8, 0]) ** 0.5 < 5.5  # amplitude ratio 4 at a frequency ratio of 4


def test_rounding_probe_end_to_end_and_round_trip(tmp_path):
    model = _calibrated("mobilenetv2_050")  # depthwise convs (a 9 x 9 problem per channel) and pruned consumers
    near = udfc_hub.compress(model, prune_ratio=0.3, bits=4, input_size=(3, 64, 64))
    fed = udfc_hub.compress(model, prune_ratio=0.3, bits=4, rounding="probe", input_size=(3, 64, 64))
    (note,) = [n for n in fed.report.notes if n.startswith("rounding='probe'")]
    assert f"{len(near.quantized)} of {len(near.quantized)} quantized layer(s)" in note
    changed = [n for n in near.quantized if not torch.equal(near.quantized[n].codes, fed.quantized[n].codes)]
    assert len(changed) > 0.8 * len(near.quantized)  # same scales, other codes
    assert any(n.endswith("conv_dw") for n in changed) and any(n.endswith("conv_pwl") for n in changed)
    assert all(torch.equal(near.quantized[n].scale, fed.quantized[n].scale) for n in near.quantized)
    assert_round_trip(fed, tmp_path / "m", "rounding", "probe")


def test_layers_with_too_many_inputs_keep_nearest_rounding(monkeypatch):
    # H takes d^2 floats: a layer reading more than MAX_INPUTS inputs per output (VGG's classifier: 25,088) is left
    model = _calibrated("mobilenetv2_050")
    monkeypatch.setattr(udfc_hub.engine, "MAX_INPUTS", 100)
    fed = udfc_hub.compress(model, prune_ratio=0.0, bits=4, rounding="probe", input_size=(3, 64, 64))
    near = udfc_hub.compress(model, prune_ratio=0.0, bits=4, input_size=(3, 64, 64))
    wide = {n for n in near.quantized if fed.model.get_submodule(n).weight[0].numel() > 100}
    assert wide and any(f"{len(wide)} layer(s) reading more than 100 inputs" in n for n in fed.report.notes)
    assert all(torch.equal(near.quantized[n].codes, fed.quantized[n].codes) for n in wide)
    assert not all(torch.equal(near.quantized[n].codes, fed.quantized[n].codes) for n in set(near.quantized) - wide)


def test_rounding_probe_without_batchnorm_says_it_used_nearest():
    assert_unchanged_without_batchnorm("rounding='probe' has no input statistics (nearest used)", rounding="probe")
