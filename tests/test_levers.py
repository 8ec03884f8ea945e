"""The levers beyond udfc+ (issue 17), each on cases small enough to check by brute force or simulation: capped
(ReLU6) moments, the depthwise correlation model, the channel selections, and the depthwise-coupled pruning of
inverted-residual expansion channels."""

import itertools
import json
import shutil

import pytest
import timm
import torch
import torch.nn as nn

import udfc_hub
from helpers import assert_round_trip
from test_ops_moments import _gaussian
from udfc_hub import describe_model
from udfc_hub.adapters import removal_error
from udfc_hub.ops import (
    depthwise_correlation,
    fold_batchnorm,
    keep_largest,
    output_importance,
    relu_moments,
    select_rebuildable,
)
from udfc_hub.probe import probe_stream_shares
from udfc_hub.steps import bn_params, depthwise_moments


def test_capped_relu_moments_match_monte_carlo():
    mean, std, corr = _gaussian()
    mean, std = 2 * mean + 2, 2 * std - 0.3  # means and spreads that reach the cap often
    moments = relu_moments(mean, std, corr, cap=6.0)
    eps = torch.randn(400_000, len(mean), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = (mean + eps @ torch.linalg.cholesky(std[:, None] * corr * std[None, :]).T).clamp(0, 6)
    real = torch.cov(z.T)
    assert torch.allclose(moments.mean, z.mean(0), atol=1e-2)  # Monte Carlo standard error below 5e-3
    assert torch.allclose(moments.cov, real, atol=2e-2)
    # the cap matters here (some channels saturate often): the plain ReLU's moments miss
    assert not torch.allclose(relu_moments(mean, std, corr).cov, real, atol=2e-2)
    fast = relu_moments(mean, std, corr, cap=6.0, fast=True)
    assert torch.allclose(fast.cov, moments.cov, atol=1e-4 * float(moments.cov.abs().max()))
    assert torch.equal(fast.cov, fast.cov.T)


def test_depthwise_correlation_matches_a_simulation_of_its_model():
    # 4 channels correlated as cov_in, each a 3x3 window: a part shared by the taps (weight r) plus an independent one
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov_in = A @ A.T + torch.eye(4, dtype=torch.float64)
    L = torch.linalg.cholesky(cov_in)
    # kernels whose sum differs from their norm (else the variance cannot tell shared from independent taps)
    k = torch.randn(4, 9, generator=g, dtype=torch.float64) + torch.tensor([0.5, -0.5, 0.8, 0.3])[:, None]
    r = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    n = 400_000
    shared = torch.randn(n, 4, generator=g, dtype=torch.float64) @ L.T
    own = torch.einsum("ntc,dc->ntd", torch.randn(n, 9, 4, generator=g, dtype=torch.float64), L)
    x = r.sqrt() * shared[:, None, :] + (1 - r).sqrt() * own  # (n, taps, channels)
    out = torch.einsum("ntc,ct->nc", x, k)
    real = torch.corrcoef(out.T)
    model = depthwise_correlation(cov_in, k, out.var(0))  # the spatial weights r are read from the variances
    assert torch.allclose(model, real, atol=1e-2)
    # with the wrong variances (as if no tap were shared) the model differs: the variances carry information
    assert (depthwise_correlation(cov_in, k, cov_in.diagonal() * (k * k).sum(1)) - real).abs().max() > 0.05


def _error(cov, V, keep):
    """tr(V Cov(a | a_S) V^T) computed from scratch."""
    S = keep
    cond = cov - cov[:, S] @ torch.linalg.solve(cov[S][:, S], cov[S, :])
    return float(torch.trace(V @ cond @ V.T))


def _brute_force(cov, V, n_keep):
    n = cov.shape[0]
    return min(itertools.combinations(range(n), n_keep), key=lambda s: _error(cov, V, torch.tensor(s)))


@pytest.mark.parametrize("seed", range(3))
def test_selections_are_optimal_where_brute_force_can_check(seed):
    g = torch.Generator().manual_seed(seed)
    n, n_keep = 8, 5
    V = torch.randn(3, n, generator=g, dtype=torch.float64)
    consumers = [(V[:, :, None, None], 1)]  # a 1x1 conv reading the channels
    # uncorrelated channels: both selections keep the brute-force optimum
    var = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    diag = torch.diag(var)
    best = _brute_force(diag, V, n_keep)
    assert tuple(keep_largest(output_importance(var, consumers), n_keep)[0].tolist()) == best
    assert tuple(select_rebuildable(diag, consumers, n_keep)[0].tolist()) == best
    # correlated channels, one removed: the greedy step is exact
    A = torch.randn(n, n + 2, generator=g, dtype=torch.float64)
    cov = A @ A.T
    assert tuple(select_rebuildable(cov, consumers, n - 1)[0].tolist()) == _brute_force(cov, V, n - 1)
    # correlated, several removed: greedy, so only near the optimum (within 25 % on these cases)
    keep, pruned = select_rebuildable(cov, consumers, n_keep)
    assert sorted(keep.tolist() + pruned.tolist()) == list(range(n))
    assert _error(cov, V, keep) <= 1.25 * _error(cov, V, torch.tensor(_brute_force(cov, V, n_keep)))


def _calibrated(name):
    """A randomly initialised model whose BatchNorm statistics are those of Gaussian images (so the moment model
    describes its activations, as trained BN statistics describe real ones)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 1.0)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, 64, 64))
    return model.eval()


def test_inverted_residual_expansion_channels_are_compensated_through_the_depthwise_conv():
    model = _calibrated("mobilenetv2_050")
    spec = describe_model(model)
    expansions = [g for g in spec.groups if g.producer.name.endswith("conv_pw")]
    assert expansions and all(g.depthwise is not None and g.relu_cap == 6.0 and g.closed_form for g in expansions)
    assert removal_error(model, spec, (3, 64, 64)) < 1e-5
    x = torch.randn(32, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        errors = {}
        for label, kw in {
            "prune": dict(method="prune"),
            "udfc+ l2": dict(criterion="l2", layer_ratios="uniform"),
            "udfc+ moments": dict(criterion="moments", layer_ratios="uniform"),
        }.items():
            result = udfc_hub.compress(model, prune_ratio=0.3, bits=None, input_size=(3, 64, 64), **kw)
            block = result.model.blocks[1][0]
            assert block.conv_pw.out_channels == block.conv_dw.out_channels == block.conv_pwl.in_channels
            assert block.conv_pw.out_channels < model.blocks[1][0].conv_pw.out_channels
            errors[label] = float((result.model(x) - ref).pow(2).mean() / ref.var())
            if label != "prune":  # the moment model's share of each removed channel's variance the fit misses
                residuals = [r.residual for r in result.report.pruned_layers if r.name.endswith("conv_pw")]
                assert residuals and all(0 < r < 1 for r in residuals)
    # the compensation repairs part of what plain removal breaks; choosing by the moments repairs more (measured:
    # 0.52, 0.33, 0.26 of the logits' variance; on the real EfficientNet-Lite0 the gap is far larger, see
    # benchmarks/results/imagenet_sample.md)
    assert errors["udfc+ l2"] < 0.8 * errors["prune"], errors
    assert errors["udfc+ moments"] < 0.8 * errors["udfc+ l2"], errors


def test_depthwise_groups_take_the_probes_correlations_at_the_depthwise_norm():
    model = _calibrated("mobilenetv2_050")
    block = model.blocks[1][0]
    folded = fold_batchnorm(block.conv_pw.weight, None, *bn_params(block.bn1))
    parts = (folded, block.bn1, block.conv_dw, block.bn2, 6.0)
    n = block.bn2.num_features
    a = torch.randn(n, 2 * n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = (a * a).sum(1).sqrt()
    corr = (a @ a.T) / d[:, None] / d[None, :]
    # many samples: the measured correlations replace the model's; none: the model's stay
    measured = depthwise_moments(*parts, measured=(corr, 10**15)).cov
    expected = relu_moments(block.bn2.bias, block.bn2.weight.abs(), corr, cap=6.0, fast=True).cov
    assert torch.allclose(measured, expected, atol=1e-8)
    assert torch.equal(depthwise_moments(*parts, measured=(corr, 0)).cov, depthwise_moments(*parts).cov)
    with pytest.raises(ValueError, match="measured correlations of shape"):
        depthwise_moments(*parts, measured=(corr[1:, 1:], 100))
    # the default measures them in the natural-noise probe pass for every pruned group through a depthwise conv
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=None, input_size=(3, 64, 64))
    n_dw = sum(g.depthwise is not None for g in describe_model(model).groups)
    assert any(f"({n_dw} through a depthwise conv, at its BN" in note for note in result.report.notes)
    paper = udfc_hub.compress(model, prune_ratio=0.3, bits=None, input_size=(3, 64, 64), correlations="filters")
    assert not any("through a depthwise conv, at its BN" in note for note in paper.report.notes)


def test_moment_allocation_moves_pruning_to_where_channels_matter_least():
    model = _calibrated("mobilenetv2_050")
    spec = describe_model(model)
    cfg = udfc_hub.CompressionConfig(prune_ratio=0.3, layer_ratios="moments")
    widths = udfc_hub.engine.allocate_widths(model, spec, cfg)
    uniform = udfc_hub.engine.allocate_widths(model, spec, cfg.replace(layer_ratios="uniform"))
    assert widths.keys() == uniform.keys()
    assert sum(widths.values()) == sum(uniform.values())  # the same number of channels pruned in all
    assert widths != uniform
    sizes = {g.producer.name: model.get_submodule(g.producer.name).weight.shape[0] for g in spec.groups}
    for name, kept in widths.items():
        assert kept >= 0.4 * sizes[name]  # no group loses more than 60 %
    # the head has no moment model (a pooling lies between its ReLU6 and the classifier): it stays uniform
    assert widths["conv_head"] == uniform["conv_head"]
    # a ratio beyond the 40 % floor still prunes the total it asks for
    deep = cfg.replace(prune_ratio=0.8)
    assert sum(udfc_hub.engine.allocate_widths(model, spec, deep).values()) == sum(
        udfc_hub.engine.allocate_widths(model, spec, deep.replace(layer_ratios="uniform")).values()
    )


class _Skip(nn.Module):
    """``shortcut(x) + bn(conv(x))``, the shortcut the identity when None."""

    def __init__(self, gammas: list[float], shortcut: nn.Module | None = None):
        super().__init__()
        self.conv, self.bn, self.shortcut = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), shortcut
        with torch.no_grad():
            self.bn.weight.copy_(torch.tensor(gammas))

    def forward(self, x):
        return (x if self.shortcut is None else self.shortcut(x)) + self.bn(self.conv(x))


def test_stream_shares_are_the_branch_part_of_the_sum():
    # the probe's input is standard normal and a BN on its batch statistics outputs variance gamma^2: closed form
    net = nn.Sequential(_Skip([1.0, 2.0, 3.0])).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    found = probe_stream_shares(net, [("0.bn", "0", None)], (3, 32, 32))
    assert found["0"] == pytest.approx(14 / (14 + 3), rel=0.02)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the model is left alone
    twice = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        twice.weight.copy_(2 * torch.eye(3).reshape(3, 3, 1, 1))
    net = nn.Sequential(_Skip([1.0, 2.0, 3.0], shortcut=twice)).eval()
    found = probe_stream_shares(net, [("0.bn", "0", "0.shortcut")], (3, 32, 32))
    assert found["0"] == pytest.approx(14 / (14 + 12), rel=0.02)
    # a block whose input does not match the branch's shape (3 channels in, 6 out) is left out
    net = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6)).eval()
    assert probe_stream_shares(net, [("1", "0", None)], (3, 32, 32)) == {}


def test_stream_allocation_prunes_residual_branches_harder(tmp_path):
    model = _calibrated("mobilenetv2_050")
    spec = describe_model(model)
    cfg = udfc_hub.CompressionConfig(prune_ratio=0.3, layer_ratios="stream")
    moments = udfc_hub.engine.allocate_widths(model, spec, cfg.replace(layer_ratios="moments"), (3, 64, 64))
    stream = udfc_hub.engine.allocate_widths(model, spec, cfg, (3, 64, 64))
    shares = udfc_hub.engine.stream_shares(model, spec, spec.groups, (3, 64, 64))
    # the expansion groups of the blocks with a skip, and only those, get a share below 1
    blocks = {layer.residual[0] for layer in spec.layers if layer.residual is not None}
    skips = {g.producer.name for g in spec.groups if g.producer.name.rsplit(".", 1)[0] in blocks}
    assert skips and set(shares) == skips and all(0 < v < 1 for v in shares.values())
    assert sum(stream.values()) == sum(moments.values())  # the same total
    # the shares scale the residual groups' convex cost curves down: at the same total they lose more channels
    # (greedy removal on convex curves takes every step below a threshold), the other groups fewer
    assert sum(moments[n] - stream[n] for n in skips) > 0
    # end to end: the option compresses and the artifact reloads with the same logits
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=6, layer_ratios="stream", input_size=(3, 64, 64))
    assert {r.name: r.kept_channels for r in result.report.layers if r.name in stream} == stream
    said = f"layer_ratios='stream': {len(skips)} group(s) in residual blocks"
    assert any(note.startswith(said) for note in result.report.notes)
    assert_round_trip(result, tmp_path / "m", "layer_ratios", "stream")
    # udfc+'s default, layer_ratios="auto": the same widths here, where skip blocks and blocks without one mix
    assert udfc_hub.engine.mixes_residual_branches(spec, spec.groups)
    auto = udfc_hub.engine.allocate_widths(model, spec, cfg.replace(layer_ratios="auto"), (3, 64, 64))
    assert auto == stream
    by_default = udfc_hub.compress(model, prune_ratio=0.3, bits=None, input_size=(3, 64, 64))
    assert {r.name: r.kept_channels for r in by_default.report.layers if r.name in stream} == stream
    said = f"layer_ratios='auto' chose the residual allocation: {len(skips)} group(s) in residual blocks"
    assert any(note.startswith(said) for note in by_default.report.notes)
    # a model with no residual block (couplings traced from the graph) gets the moment allocation, and says so
    torch.manual_seed(0)
    plain = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    with torch.no_grad():
        plain.train()(torch.randn(32, 3, 16, 16))
    plain.eval()
    options = dict(prune_ratio=0.3, bits=None, input_size=(3, 16, 16))
    by_stream = udfc_hub.compress(plain, layer_ratios="stream", **options)
    by_moments = udfc_hub.compress(plain, layer_ratios="moments", **options)
    assert "layer_ratios='stream': no residual block known in this model" in " ".join(by_stream.report.notes)
    kept = {r.name: r.kept_channels for r in by_stream.report.layers}
    assert kept == {r.name: r.kept_channels for r in by_moments.report.layers} and kept["0"] < 16


def test_auto_allocation_is_the_moment_allocation_where_every_group_is_in_a_branch():
    # a ResNet's groups all lie in residual branches: "auto" keeps the moment allocation, with no probe or note
    model = _calibrated("resnet18")
    spec = describe_model(model)
    assert not udfc_hub.engine.mixes_residual_branches(spec, spec.groups)
    cfg = udfc_hub.CompressionConfig(prune_ratio=0.3, layer_ratios="moments")
    moments = udfc_hub.engine.allocate_widths(model, spec, cfg, (3, 64, 64))
    notes = []
    auto = udfc_hub.engine.allocate_widths(model, spec, cfg.replace(layer_ratios="auto"), (3, 64, 64), notes)
    stream = udfc_hub.engine.allocate_widths(model, spec, cfg.replace(layer_ratios="stream"), (3, 64, 64))
    assert auto == moments and not notes
    assert stream != moments  # the stream would have moved channels between the branches
    assert udfc_hub.CompressionConfig(prune_ratio=0.3).resolved().layer_ratios == "auto"


def test_bit_allocation_is_optimal_where_brute_force_can_check():
    # convex error curves (each extra bit helps less), equal sizes: raising the best marginal gain is optimal
    g = torch.Generator().manual_seed(0)
    layers = [f"l{i}" for i in range(4)]
    errors = {}
    for name in layers:
        drops = torch.sort(torch.rand(6, generator=g), descending=True).values  # shrinking gains from 2 to 8 bits
        errors[name] = {b: float(drops[b - 2 :].sum()) for b in range(2, 9)}
    sizes = dict.fromkeys(layers, 10)
    for bits in (3, 4, 6):
        chosen = udfc_hub.ops.allocate_bits(errors, sizes, bits, 2)
        assert sum(chosen.values()) == bits * len(layers)  # the whole budget, nothing more
        best = min(
            (c for c in itertools.product(range(2, 9), repeat=4) if sum(c) == bits * 4),
            key=lambda c: sum(errors[n][b] for n, b in zip(layers, c, strict=True)),
        )
        total = sum(errors[n][b] for n, b in zip(layers, best, strict=True))
        assert sum(errors[n][chosen[n]] for n in layers) == pytest.approx(total)
    # unequal sizes: never over the budget
    sizes = {"l0": 1, "l1": 7, "l2": 30, "l3": 100}
    chosen = udfc_hub.ops.allocate_bits(errors, sizes, 4, 2)
    assert sum(sizes[n] * chosen[n] for n in layers) <= 4 * sum(sizes.values())


def test_mixed_bit_widths_round_trip_at_the_uniform_size(tmp_path):
    model = _calibrated("mobilenetv2_050")
    result = udfc_hub.compress(model, prune_ratio=0.0, bits=4, bit_widths="mixed", input_size=(3, 64, 64))
    bits = {name: qt.bits for name, qt in result.quantized.items()}
    assert len(set(bits.values())) > 2 and any("mixed bit widths" in n for n in result.report.notes)
    # depthwise convs (9 weights per filter: coarse rounding hurts most) get more bits than the 4 asked for
    dw = [b for n, b in bits.items() if n.endswith("conv_dw")]
    assert min(dw) > 4
    stored = sum(qt.codes.numel() * qt.bits for qt in result.quantized.values())
    assert stored <= 4 * sum(qt.codes.numel() for qt in result.quantized.values())
    folder = udfc_hub.save_pretrained(result, tmp_path / "m")
    args = json.loads((folder / "config.json").read_text())["model_args"]
    assert args["format_version"] == 5 and args["layer_bits"] == {n: b for n, b in bits.items() if b != 4}
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    for edit, message in [
        (lambda a: a["layer_bits"].__setitem__("conv_stem", 9), "layer_bits must map layer names to bits in 2..8"),
        (lambda a: a["layer_bits"].__setitem__("bn1", 8), "not a quantized layer"),
        (lambda a: a.__setitem__("format_version", 4), "layer_bits needs format version 5"),
    ]:
        bad = tmp_path / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(folder, bad)
        config = json.loads((bad / "config.json").read_text())
        edit(config["model_args"])
        config["udfc"]["format_version"] = config["model_args"]["format_version"]
        (bad / "config.json").write_text(json.dumps(config))
        with pytest.raises(udfc_hub.ArtifactError, match=message):
            udfc_hub.check_artifact(bad)


@pytest.mark.parametrize("fused", [False, True])
def test_probe_correlations_of_a_first_conv_are_its_filter_cosines(fused):
    # white Gaussian input and no padding: the BN outputs are correlated exactly like the BN-folded filters (with
    # timm's BatchNormAct2d, before its in-place ReLU)
    torch.manual_seed(0)
    norm = timm.layers.BatchNormAct2d(6) if fused else torch.nn.BatchNorm2d(6)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, bias=False), norm, torch.nn.ReLU()).eval()
    torch.nn.init.uniform_(model[1].weight, -1.5, 1.5)  # signs of gamma flip correlations: folded filters carry them
    found = udfc_hub.probe.probe_correlations(model, ["1"], (3, 32, 32))
    corr, samples = found["1"]
    assert samples == 64 * 30 * 30 and torch.equal(corr, corr.T)
    folded = udfc_hub.ops.fold_batchnorm(model[0].weight, None, *udfc_hub.steps.bn_params(model[1]))
    filters = udfc_hub.ops.filter_correlation(folded.R)
    assert (corr - filters).abs().max() < 6 / samples**0.5  # sampling error (neighbouring positions overlap)
    # the moment model shrinks measured correlations towards the filters' by n / (n + samples)
    mixed = udfc_hub.steps.channel_correlation(folded, (torch.eye(6, dtype=torch.float64), 18))
    assert torch.allclose(mixed, 0.75 * torch.eye(6, dtype=torch.float64) + 0.25 * filters)
    with pytest.raises(ValueError, match="for 6 channels"):
        udfc_hub.steps.channel_correlation(folded, (torch.eye(5, dtype=torch.float64), 18))


def test_probe_correlations_fit_probe_like_inputs_better_than_the_filters():
    # inputs drawn as the probe draws them (Gaussian images, BN statistics calibrated on them): correlations
    # measured there describe the block inputs, which the filters' cosines (white inputs) do not
    model = _calibrated("resnet18")
    x = torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
        errors = {}
        for source in ("filters", "probe"):
            result = udfc_hub.compress(
                model, prune_ratio=0.5, bits=None, input_size=(3, 64, 64), correlations=source, layer_ratios="uniform"
            )
            assert result.report.settings["correlations"] == source
            errors[source] = float((result.model(x) - ref).pow(2).mean() / ref.var())
    assert errors["probe"] < errors["filters"], errors
