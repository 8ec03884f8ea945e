import math

import pytest
import timm
import torch
import torch.nn as nn

import udfc_hub
from udfc_hub import InvalidArgumentError, compress

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet18d", "resnet26"]
# the deepest ones check the shapes with plain pruning (the same groups and surgery; udfc+'s solves on their 66 and
# 100 groups cost about a minute here and are the ones resnet50 already runs)
STRUCTURE_ONLY = {"resnet101", "resnet152"}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _expected_params(model, spec, ratio):
    """Parameter count after pruning, recomputed from the original shapes and the kept widths."""
    keep = {}
    for g in spec.groups:
        n = model.get_submodule(g.producer.name).weight.shape[0]
        keep[g.producer.name] = keep[g.producer.norm] = max(1, math.floor(round((1 - ratio) * n, 9)))
    kept_in = {c.name: keep[g.producer.name] for g in spec.groups for c in g.consumers}
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out, inp = m.weight.shape[:2]
            out, inp = keep.get(name, out), kept_in.get(name, inp)
            total += out * inp * m.weight[0, 0].numel() + (out if m.bias is not None else 0)
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * keep.get(name, m.num_features)
    return total


@pytest.mark.parametrize("name", RESNETS)
def test_timm_resnet_shrinks_and_runs(name):
    model = timm.create_model(name).eval()
    before = _state(model)
    method = "prune" if name in STRUCTURE_ONLY else "udfc+"
    result = compress(model, prune_ratio=0.3, bits=6, input_size=(3, 64, 64), method=method)  # a small probe
    new = result.model
    # the input is untouched
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # real, smaller modules: plain pruning keeps floor(0.7 n) of each group; udfc+ (layer_ratios="auto") the
    # same total, spread over the groups, each keeping at least 40 %
    kept, uniform = 0, 0
    for g in result.spec.groups:
        old = model.get_submodule(g.producer.name).out_channels
        keep = new.get_submodule(g.producer.name).weight.shape[0]
        kept, uniform = kept + keep, uniform + math.floor(0.7 * old)
        if method == "prune":
            assert keep == math.floor(0.7 * old)
        else:
            assert math.ceil(0.4 * old) <= keep <= old
        assert new.get_submodule(g.producer.norm).running_mean.shape == (keep,)
        assert new.get_submodule(g.producer.norm).num_features == keep
        assert new.get_submodule(g.consumers[0].name).weight.shape[1] == keep
    assert kept == uniform
    if method == "prune":
        assert result.report.after.params == _expected_params(model, result.spec, 0.3)
    assert result.report.after.params == sum(p.numel() for p in new.parameters())
    assert result.report.after.macs < 0.8 * result.report.before.macs
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = new(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("method", ["udfc+", "udfc"])
def test_quantized_weights_are_exactly_their_codes(method):
    model = timm.create_model("resnet18").eval()
    result = compress(model, prune_ratio=0.3, bits=4, method=method, granularity="tensor")
    assert set(result.quantized) == {layer.name for layer in result.spec.layers}
    for name, qt in result.quantized.items():
        w = result.model.get_submodule(name).weight
        assert torch.equal(w, qt.dequantize())
        assert qt.codes.max() <= 15
    # residual-stream layers fold t into their BN (udfc) or get no t (udfc+), so a per-tensor scale leaves
    # their weights at most 16 distinct values
    assert len(torch.unique(result.model.layer1[0].conv2.weight)) <= 16
    assert result.report.layers[-1].name == "fc"
    assert result.report.layers[-1].correction == ("rows" if method == "udfc" else None)


def test_prune_only_leaves_unpruned_layers_alone():
    model = timm.create_model("resnet18").eval()
    result = compress(model, prune_ratio=0.5, bits=None, method="prune")
    assert result.quantized == {}
    for name in ("conv1", "layer2.0.downsample.0", "layer3.0.downsample.0", "fc"):
        assert torch.equal(result.model.get_submodule(name).weight, model.get_submodule(name).weight)
    # a pruned producer keeps its largest filters unchanged (UDFC never refits layer l's kept filters)
    old, new = model.layer1[0].conv1.weight, result.model.layer1[0].conv1.weight
    assert new.shape[0] == old.shape[0] // 2
    norms = old.flatten(1).norm(dim=1)
    kept = torch.sort(torch.topk(norms, new.shape[0]).indices).values
    assert torch.equal(new, old[kept])
    # the consumer lost the matching input columns, uncompensated
    assert torch.equal(result.model.layer1[0].conv2.weight, model.layer1[0].conv2.weight[:, kept])


def test_quantize_only_keeps_shapes_and_levels():
    model = timm.create_model("resnet18").eval()
    for method in ("rtn", "udfc"):
        result = compress(model, prune_ratio=0, bits=3, method=method, granularity="channel")
        assert result.report.after.params == result.report.before.params
        assert result.report.pruned_layers == []
        # every row of a layer lies on its own 8-level grid
        conv = result.model.layer3[1].conv2.weight.flatten(1)
        assert all(len(torch.unique(row)) <= 8 for row in conv)


def test_udfc_residual_is_optimal_among_methods():
    """UDFC minimises the pruning loss, so per layer it can only beat plain pruning and Neuron Merging."""
    model = timm.create_model("cifar_resnet20").eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2)
            m.running_mean.normal_()
            m.weight.data.uniform_(0.2, 1.5)
            m.bias.data.normal_()
    res = {m: compress(model, prune_ratio=0.4, bits=None, method=m) for m in ("udfc", "nm", "prune")}
    for u, n, p in zip(*(res[m].report.pruned_layers for m in ("udfc", "nm", "prune")), strict=True):
        assert p.residual == pytest.approx(1.0)
        assert u.residual <= n.residual + 1e-9
        assert u.residual < 1.0


def test_reference_original_differs_for_bottleneck():
    model = timm.create_model("resnet26").eval()
    a = compress(model, prune_ratio=0.3, bits=None, reference="compensated", layer_ratios="uniform")
    b = compress(model, prune_ratio=0.3, bits=None, reference="original", layer_ratios="uniform")
    assert a.report.settings["reference"] == "compensated" and b.report.settings["reference"] == "original"
    # conv1's solve is the same either way; conv2 (compensated for conv1's pruning) differs
    assert torch.equal(a.model.layer1[0].conv1.weight, b.model.layer1[0].conv1.weight)
    assert not torch.equal(a.model.layer1[0].conv3.weight, b.model.layer1[0].conv3.weight)


def test_report_text_and_dict():
    result = compress(timm.create_model("cifar_resnet20").eval(), prune_ratio=0.3, bits=6, layer_ratios="uniform")
    text = str(result.report)
    assert "layer1.0.conv1" in text and "11/16" in text and "params 269,722 ->" in text
    d = result.report.to_dict()
    assert d["settings"]["bits"] == 6 and len(d["layers"]) == len(result.spec.layers)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prune_ratio": 1.0}, "prune_ratio must be a number in \\[0, 1\\), got 1.0"),
        ({"prune_ratio": -0.1}, "prune_ratio"),
        ({"prune_ratio": "0.3"}, "prune_ratio"),
        ({"prune_ratio": True}, "prune_ratio"),
        ({"bits": 1}, "bits must be an integer in 2..8"),
        ({"bits": 9}, "bits must be an integer in 2..8"),
        ({"bits": 6.5}, "got 6.5"),
        ({"bits": "6"}, "bits"),
        ({"method": "magic"}, "method must be one of udfc\\+, udfc, nm, prune, rtn; got 'magic'"),
        ({"fit": "cubic"}, "fit must be one of relu, linear"),
        ({"method": "nm", "fit": "relu"}, "fit applies to method udfc or udfc\\+ only"),
        ({"nonnegative": True}, "nonnegative=True needs method 'udfc' or 'udfc\\+' with fit='linear'"),
        ({"bias_correction": "yes"}, "bias_correction must be True or False"),
        ({"quant_correction": "t"}, "quant_correction must be one of none, udfc, scale"),
        ({"layer_ratios": "greedy"}, "layer_ratios must be one of uniform, adaptive"),
        ({"criterion": "l3"}, "criterion must be one of l1, l2"),
        ({"granularity": "row"}, "granularity"),
        ({"reference": "x"}, "reference"),
        ({"alpha1": -1.0}, "alpha1"),
        ({"alpha2": float("nan")}, "alpha2"),
        ({"prune_ratio": 0, "bits": None}, "Nothing to do"),
    ],
)
def test_bad_arguments_are_rejected_clearly(kwargs, match):
    args = {"prune_ratio": 0.3, "bits": 6} | kwargs
    with pytest.raises(InvalidArgumentError, match=match):
        compress(timm.create_model("cifar_resnet20"), **args)


def test_not_a_module():
    with pytest.raises(InvalidArgumentError, match="torch.nn.Module"):
        compress("resnet34", prune_ratio=0.3, bits=6)


def test_public_api():
    assert udfc_hub.METHODS == ("udfc+", "udfc", "nm", "prune", "rtn")
    assert isinstance(udfc_hub.__version__, str)
