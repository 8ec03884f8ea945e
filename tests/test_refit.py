"""refit="distilled": images distilled from the BN statistics and the layer-by-layer least-squares refit."""

import copy
import re

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import udfc_hub
from helpers import assert_round_trip, assert_unchanged_without_batchnorm
from test_levers import _calibrated
from udfc_hub.distill import _rows, _targets, distill_images, refit_layers
from udfc_hub.ops.refit import RefitStats, best_intercept, refit_error, solve_refit


def _stats(a, t):
    stats = RefitStats(a.shape[0], a.shape[2], t.shape[2])
    stats.add(a[:, :300], t[:, :300])  # two batches: the sums accumulate
    stats.add(a[:, 300:], t[:, 300:])
    return stats


@pytest.mark.parametrize("intercept", [True, False])
def test_solve_refit_recovers_a_linear_map_exactly(intercept):
    torch.manual_seed(0)
    a = torch.randn(3, 500, 7, dtype=torch.float64) @ torch.randn(7, 7, dtype=torch.float64) + 2.0
    w, b = torch.randn(3, 4, 7, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    b = b if intercept else torch.zeros_like(b)
    t = a @ w.transpose(1, 2) + b[:, None, :]
    stats = _stats(a, t)
    w_fit, b_fit = solve_refit(stats, ridge=1e-12, intercept=intercept)
    assert torch.allclose(w_fit, w, atol=1e-6) and torch.allclose(b_fit, b, atol=1e-6)
    assert refit_error(stats, w_fit, b_fit) < 1e-12


def test_refit_error_and_intercept_match_a_direct_computation():
    torch.manual_seed(1)
    a, t = torch.randn(2, 600, 5, dtype=torch.float64), torch.randn(2, 600, 3, dtype=torch.float64) + 1.0
    stats = _stats(a, t)
    w = torch.randn(2, 3, 5, dtype=torch.float64)
    b = best_intercept(stats, w)
    residual = a @ w.transpose(1, 2) + b[:, None, :] - t
    assert torch.allclose(residual.mean(1), torch.zeros(2, 3, dtype=torch.float64), atol=1e-12)  # no mean error
    direct = residual.pow(2).sum() / (t - t.mean(1, keepdim=True)).pow(2).sum()
    assert refit_error(stats, w, b) == pytest.approx(float(direct), rel=1e-9)
    # the least-squares fit leaves less than any other weights
    assert refit_error(stats, *solve_refit(stats)) < refit_error(stats, w, b)


def test_the_prior_is_the_minimiser_of_its_objective_and_fades_with_the_samples():
    torch.manual_seed(2)
    w_true, w0 = torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)

    def fit(n, **kw):
        a = torch.randn(2, n, 6, dtype=torch.float64) + 0.5
        t = a @ w_true.transpose(1, 2) + 1.0
        stats = RefitStats(2, 6, 3)
        stats.add(a, t)
        return stats, solve_refit(stats, ridge=0.0, prior=w0, **kw)

    stats, (w, b) = fit(10)
    # E|A W^T + b - T|^2 + mu |W - w0|^2, mu = (d + 1) / n times the mean input variance: its gradient vanishes
    ma, mt, cov, cross = stats.moments()
    mu = 7 / 10 * cov.diagonal(dim1=1, dim2=2).mean(-1)
    grad = w @ cov - cross.transpose(1, 2) + mu[:, None, None] * (w - w0)
    assert grad.abs().max() < 1e-10 and torch.allclose(b, best_intercept(stats, w))
    assert torch.allclose(fit(10, strength=0.0)[1][0], solve_refit(fit(10, strength=0.0)[0], ridge=0.0)[0])
    assert torch.allclose(fit(10, strength=1e12)[1][0], w0, atol=1e-8)  # all prior
    # exact targets: the prior's pull fades as the samples grow
    gaps = [(fit(n)[1][0] - w_true).abs().max() for n in (10, 100, 10_000)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9, 9)),
        (nn.Conv2d(3, 5, (1, 3), dilation=2, padding=(0, 2)), (2, 3, 8, 8)),
        (nn.Conv2d(4, 4, 3, padding=1, groups=4), (2, 4, 6, 6)),
        (nn.Linear(6, 3), (2, 5, 6)),
    ],
)
def test_rows_and_targets_are_what_the_weight_multiplies(layer, shape):
    x = torch.randn(*shape)
    with torch.no_grad():
        y = layer(x) - (layer.bias.reshape(-1, *([1] * (x.ndim - 2))) if isinstance(layer, nn.Conv2d) else layer.bias)
    a, t = _rows(layer, x), _targets(layer, y)
    g = a.shape[0]
    w = layer.weight.detach().reshape(g, layer.weight.shape[0] // g, -1)
    assert torch.allclose(a @ w.transpose(1, 2), t, atol=1e-5)


class _Net(nn.Module):
    """conv-BN-ReLU, a residual block (its last BN added to a 1x1-conv shortcut), pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.block = nn.Module()
        self.block.conv1, self.block.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.block.conv2, self.block.bn2 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.block.short = nn.Conv2d(8, 12, 1)
        self.block.forward = self._block
        self.head = nn.Linear(12, 5)

    def _block(self, x):
        b = self.block
        return F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x))))) + b.short(x))

    def forward(self, x):
        return self.head(self.block(F.relu(self.bn0(self.stem(x)))).mean((2, 3)))


def _net():
    torch.manual_seed(0)
    net = _Net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5), nn.init.uniform_(m.bias, -0.5, 0.5)
            nn.init.uniform_(m.running_var, 0.5, 2.0), nn.init.uniform_(m.running_mean, -0.5, 0.5)
    return net.eval()


NAMES = ["stem", "block.conv1", "block.conv2", "block.short", "head"]
NORMS = {"stem": "bn0", "block.conv1": "block.bn1", "block.conv2": "block.bn2"}


def _refit(work, net, x, names=NAMES, residuals=None, requantize=lambda *a: None):
    norms = {n: (work.get_submodule(b), net.get_submodule(b)) for n, b in NORMS.items()}
    return refit_layers(work, net, names, x, {}, norms, requantize, residuals)


def test_refitting_every_layer_restores_a_perturbed_copy(monkeypatch):
    # each layer's target is a linear function of its own input once the layers before it are restored: exact
    net = _net()

    def perturbed():
        work = copy.deepcopy(net)
        with torch.no_grad():
            for p in work.parameters():
                p.add_(0.3 * torch.randn_like(p))
            for b in NORMS.values():
                work.get_submodule(b).running_mean.add_(0.5)
        return work

    work, x = perturbed(), torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        before = (work(x) - net(x)).pow(2).mean()
    monkeypatch.setattr(udfc_hub.ops.refit, "PRIOR", 0.0)  # no pull towards the perturbed weights: exact
    errors, sparse = _refit(work, net, x)
    with torch.no_grad():
        after = (work(x) - net(x)).pow(2).mean()
    assert sparse == [] and set(errors) == set(NAMES) and max(errors.values()) < 1e-4
    assert after < 1e-4 * before
    for b in NORMS.values():  # the BN statistics are the original's again (the intercept aside)
        assert torch.equal(work.get_submodule(b).running_var, net.get_submodule(b).running_var)
    # 8 images: the head has 8 samples for 13 inputs, fewer than 4 per input, and leans on its weights: refitted,
    # nearer the samples' targets than before, all the way to its weights under an overwhelming prior
    for strength in (1.0, 1e12):
        monkeypatch.setattr(udfc_hub.ops.refit, "PRIOR", strength)
        work, x8 = perturbed(), x[:8]
        _refit(work, net, x8, names=NAMES[:-1])
        head = work.head.weight.detach().clone()
        with torch.no_grad():
            before = (work(x8) - net(x8)).pow(2).mean()
            errors, sparse = _refit(work, net, x8, names=["head"])
            after = (work(x8) - net(x8)).pow(2).mean()
        assert sparse == ["head"] and set(errors) == {"head"}
        moved = (work.head.weight - head).abs().max()
        if strength == 1.0:
            assert moved > 1e-2 and after < 0.5 * before
        else:
            assert moved < 1e-6


def test_the_residual_target_repairs_what_the_shortcut_changed():
    # the shortcut conv is left perturbed (not refitted); with the residual known, conv2 absorbs its drift
    net, x = _net(), torch.randn(64, 3, 8, 8)
    names = ["stem", "block.conv1", "block.conv2"]

    def block_error(residuals):
        work = copy.deepcopy(net)
        with torch.no_grad():
            work.block.short.weight.add_(0.2 * torch.randn_like(work.block.short.weight))
        _refit(work, net, x, names, residuals)
        with torch.no_grad():
            stem = F.relu(net.bn0(net.stem(x)))  # the refitted stem reproduces it (exactly, but for the ridge)

            def before_relu(block):  # the block's sum, before its last ReLU
                return block.bn2(block.conv2(F.relu(block.bn1(block.conv1(stem))))) + block.short(stem)

            return float((before_relu(work.block) - before_relu(net.block)).pow(2).mean())

    plain, aware = block_error(None), block_error({"block.conv2": ("block", "block.short")})
    assert aware < 0.2 * plain, (aware, plain)


def _recalibrated_net():
    """``_net`` in train mode, its BN statistics those of images unlike the standard-normal start (mean 1, std 0.5):
    reachable by distillation, and far from its start."""
    net = _net().train()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for _ in range(4):
            net(1.0 + 0.5 * torch.randn(32, 3, 8, 8))
    return net


def test_distilled_images_match_the_bn_statistics_and_leave_the_model_alone():
    net = _recalibrated_net()
    state = copy.deepcopy(net.state_dict())
    x, first, last = distill_images(net, (3, 8, 8), 16, steps=150)
    assert x.shape == (16, 3, 8, 8) and last < 0.05 * first
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    again, *_ = distill_images(net, (3, 8, 8), 16, steps=150)  # the same weights: the kept result
    assert torch.equal(again, x)
    net.head.bias.data.add_(1.0)
    other, *_ = distill_images(net, (3, 8, 8), 16, steps=150, seed=1)
    assert not torch.equal(other, x)


def _bn_gap(net, x):
    """The distillation's loss on ``x``: each BN's per-channel gap in units of its recorded variance, summed."""
    gaps = []

    def record(m, inputs):
        a, ref = inputs[0], (m.running_var + m.eps).sqrt()
        dims = [d for d in range(a.ndim) if d != 1]
        std = (a.var(dims, unbiased=False) + m.eps).sqrt()
        gaps.append((((a.mean(dims) - m.running_mean) ** 2 + (std - ref) ** 2) / ref**2).mean())

    handles = [m.register_forward_pre_hook(record) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return float(torch.stack(gaps).sum())


@pytest.mark.slow
def test_jittered_distillation_holds_the_statistics_wherever_the_content_sits():
    # each step sees a shifted (up to 1 px at 8x8) and sometimes mirrored view: every such view of the result
    # matches the BN statistics, where images distilled in place match them in place only (measured: worst view
    # 0.014 / 0.30 of a first gap of 10.2)
    net = _recalibrated_net()
    net.eval()
    worst = {}
    for jitter in (0.0, udfc_hub.distill.JITTER):
        x, first, last = distill_images(net, (3, 8, 8), 16, steps=150, jitter=jitter)
        views = [torch.roll(x, (dy, dx), (2, 3)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] + [x.flip(3)]
        assert _bn_gap(net, x) == pytest.approx(last, rel=1e-4)  # the loss returned is the unshifted batch's
        worst[jitter] = max(_bn_gap(net, v) for v in views)
    assert worst[udfc_hub.distill.JITTER] < 0.01 * first and worst[0.0] > 5 * worst[udfc_hub.distill.JITTER], worst
    # by default only images of at least JITTER_MIN_SIDE pixels are shifted: these 8x8 ones are distilled in place
    udfc_hub.distill._CACHE.clear()
    default, *_ = distill_images(net, (3, 8, 8), 16, steps=150)
    udfc_hub.distill._CACHE.clear()
    assert torch.equal(default, distill_images(net, (3, 8, 8), 16, steps=150, jitter=0.0)[0])


@pytest.mark.slow
def test_refit_distilled_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setattr(udfc_hub.engine, "DISTILL_STEPS", 100)
    model = _calibrated("resnet18")
    plain = udfc_hub.compress(model, prune_ratio=0.5, bits=4, input_size=(3, 64, 64))
    refit = udfc_hub.compress(model, prune_ratio=0.5, bits=4, refit="distilled", input_size=(3, 64, 64), progress=True)
    notes = [n for n in refit.report.notes if n.startswith("refit='distilled'")]
    assert len(notes) == 2 and "16 images distilled" in notes[0] and "100 steps" in notes[0]
    # every layer refitted; those seen on too few samples (fc: 16 pooled rows for 512 inputs) lean on their weights
    assert re.search(r"(\d+) of \1 layer\(s\) refitted on the distilled images", notes[1]), notes[1]
    assert "leaned mostly on their compensated weights" in notes[1]
    # the artifact holds the refitted codes: a save / load round trip gives the same logits
    folder = assert_round_trip(refit, tmp_path / "m", "refit", "distilled")
    assert "refitted by least squares" in (folder / "README.md").read_text()  # the card does not say closed form only
    with torch.no_grad():
        # on Gaussian images, which these BN statistics describe, the refitted model is closer to the original
        gauss = torch.randn(64, 3, 64, 64, generator=torch.Generator().manual_seed(5))
        y = model(gauss)
        err = {k: float((r.model(gauss) - y).pow(2).mean()) for k, r in (("plain", plain), ("refit", refit))}
    assert err["refit"] < err["plain"], err
    shapes = {n: q.codes.shape for n, q in plain.quantized.items()}
    assert {n: q.codes.shape for n, q in refit.quantized.items()} == shapes
    # with rounding="probe" every refitted layer is rounded again under the distilled inputs' covariance: never
    # worse than nearest rounding there (the better is kept row by row), better in all
    assert "rounded again" not in notes[1]
    fed = udfc_hub.compress(model, prune_ratio=0.5, bits=4, refit="distilled", rounding="probe", input_size=(3, 64, 64))
    note = [n for n in fed.report.notes if n.startswith("refit='distilled'")][1]
    found = re.search(
        r"; (\d+) rounded again with error feedback under the distilled inputs' covariance "
        r"\(expected output error ([\d.]+)x nearest rounding's\)",
        note,
    )
    assert found and int(found[1]) == len(fed.quantized) and float(found[2]) < 0.9, note
    with torch.no_grad():  # and on the Gaussian images, closer to the original than nearest rounding's refit
        err["fed"] = float((fed.model(gauss) - y).pow(2).mean())
    assert err["fed"] < err["refit"], err


def test_refit_without_batchnorm_says_so_and_changes_nothing():
    assert_unchanged_without_batchnorm("refit='distilled' has nothing to distil images from", refit="distilled")


def test_batchnorm_without_running_statistics_has_nothing_to_distil():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU())
    with pytest.raises(udfc_hub.InvalidArgumentError, match="needs BatchNorm layers with running statistics"):
        distill_images(net, (3, 8, 8), 4, steps=2)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet26d", "cifar_resnet20"])
def test_resnet_adapters_mark_each_blocks_last_layer_with_its_shortcut(name):
    model = timm.create_model(name)
    marked = {layer.name: layer.residual for layer in udfc_hub.describe_model(model).layers if layer.residual}
    blocks = [n for n, m in model.named_modules() if n.count(".") == 1 and n.startswith("layer")]
    last = "conv3" if name in ("resnet50", "resnet26d") else "conv2"
    assert sorted(marked) == sorted(f"{b}.{last}" for b in blocks)
    for layer, (block, shortcut) in marked.items():
        assert layer.startswith(block + ".")
        module = model.get_submodule(block)
        expected = getattr(module, "downsample", None) if name.startswith("resnet") else module.shortcut
        assert (model.get_submodule(shortcut) if shortcut else None) is expected
