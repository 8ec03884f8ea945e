"""Couplings traced from the forward pass (``udfc_hub.adapters.graph``).

Three properties: the traced spec agrees with every hand-written adapter (each hand-written group is found
identically; the only extra groups are couplings the hand-written adapters leave out, listed here by kind); removing
a traced group's channels computes exactly what zeroing their consumer columns computes (the coupling is right);
traced models compress, save at format 2 and reload through stock loaders with identical logits, without tracing.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import timm
import torch
import torch.nn as nn

import udfc_hub
from udfc_hub import UnsupportedModelError, describe_model
from udfc_hub.adapters import ADAPTERS, GraphAdapter, removal_error, trace_couplings

torch.manual_seed(0)


def _key(g):
    return (
        g.producer,
        frozenset(c.name for c in g.consumers),
        frozenset(g.aligned),
        g.scale_commutes,
        g.relu_after_norm,
        g.closed_form,
        g.depthwise,
        g.relu_cap,
    )


# groups the traced spec finds that the hand-written adapter leaves out, by kind
def _stem_into_downsampling_block(g) -> bool:  # a ResNet stem read by layer1.0's conv1 and its downsample conv
    names = {c.name for c in g.consumers}
    return g.producer.name.startswith("conv1") and (
        names == {"layer1.0.conv1", "layer1.0.downsample.0"} or names == {"layer1.0.conv1", "layer1.0.downsample.1"}
    )


def _deep_stem(g) -> bool:  # conv1.0 -> conv1.3 -> conv1.6 of a deep-stem ResNet
    return g.producer.name in ("conv1.0", "conv1.3")


def _linear_bottleneck_without_skip(g) -> bool:  # a projection whose block has no residual: read by the next block
    return g.producer.name.endswith(("conv_pw", "conv_pwl")) and g.closed_form and not g.relu_after_norm


def _efficientnet_stem(g) -> bool:  # conv_stem -> bn1 -> act -> the first depthwise conv -> bn -> act -> conv_pw
    return g.producer.name == "conv_stem" and (g.depthwise is not None or not g.closed_form)


def _se_squeeze(g) -> bool:  # squeeze-excite: conv_reduce -> act -> conv_expand
    return g.producer.name.endswith("se.conv_reduce") and [c.name for c in g.consumers] == [
        g.producer.name.replace("conv_reduce", "conv_expand")
    ]


def _vgg_pre_logits(g) -> bool:  # VGG's ConvMlp: fc1 -> fc2 -> head.fc
    return g.producer.name in ("pre_logits.fc1", "pre_logits.fc2")


HAND_WRITTEN = [
    ("resnet18", ()),
    ("resnet26d", (_stem_into_downsampling_block, _deep_stem)),
    ("cifar_resnet20", ()),
    ("mobilenetv2_050", (_linear_bottleneck_without_skip, _efficientnet_stem)),
    ("efficientnet_b0", (_linear_bottleneck_without_skip, _efficientnet_stem, _se_squeeze)),
    ("vgg11_bn", (_vgg_pre_logits,)),
    ("convnext_atto", ()),
    ("vit_tiny_patch16_224", ()),
]


@pytest.mark.parametrize("name,extras", HAND_WRITTEN, ids=[n for n, _ in HAND_WRITTEN])
def test_traced_spec_agrees_with_the_hand_written_adapter(name, extras):
    model = timm.create_model(name, num_classes=10).eval()
    hand = describe_model(model)
    assert not hand.family.startswith("traced")
    traced = trace_couplings(model).spec
    assert [(lay.name, lay.norm) for lay in traced.layers] == [(lay.name, lay.norm) for lay in hand.layers] or {
        (lay.name, lay.norm) for lay in traced.layers
    } == {(lay.name, lay.norm) for lay in hand.layers}
    found = {_key(g): g for g in traced.groups}
    for g in hand.groups:
        assert _key(g) in found, f"hand-written group of {g.producer.name} not traced identically"
    extra = [g for k, g in found.items() if k not in {_key(h) for h in hand.groups}]
    unexplained = [g.producer.name for g in extra if not any(kind(g) for kind in extras)]
    assert unexplained == []
    for kind in extras:  # each listed kind does occur
        assert any(kind(g) for g in extra), kind.__name__
    if not name.startswith("vgg"):  # (VGG's 100 M-parameter head makes the copies slow; its couplings are plain)
        size = udfc_hub.profile.default_input_size(model)
        assert removal_error(model, hand, size) < 1e-5 and removal_error(model, traced, size) < 1e-5


def _hf_models():
    transformers = pytest.importorskip("transformers")
    return {
        "resnet": transformers.ResNetForImageClassification(
            transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
        ),
        "convnext": transformers.ConvNextForImageClassification(
            transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5, image_size=32)
        ),
        "vit": transformers.ViTForImageClassification(
            transformers.ViTConfig(
                image_size=32,
                patch_size=8,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                num_labels=5,
            )  # fmt: skip
        ),
    }


@pytest.mark.parametrize("kind", ["resnet", "convnext", "vit"])
def test_traced_spec_equals_the_transformers_adapters(kind):
    model = _hf_models()[kind].eval()
    hand = describe_model(model)
    traced = trace_couplings(model, (3, 32, 32)).spec
    assert {(lay.name, lay.norm) for lay in traced.layers} == {(lay.name, lay.norm) for lay in hand.layers}
    assert {_key(g) for g in traced.groups} == {_key(g) for g in hand.groups}


def _remove_vs_zero(model: nn.Module, size) -> float:
    spec = trace_couplings(model, size).spec
    assert spec.groups, "nothing traced to test"
    return removal_error(model, spec, size)


TRACED = [  # families with no hand-written adapter: SE, grouped convs, depthwise, concat, attention, windows
    ("seresnext26t_32x4d", (3, 64, 64)),
    ("mobilenetv3_small_050", (3, 64, 64)),
    ("regnety_002", (3, 64, 64)),
    ("densenet121", (3, 64, 64)),
    ("efficientvit_b0", (3, 64, 64)),
    ("swin_tiny_patch4_window7_224", None),
    ("mobilevit_xxs", (3, 64, 64)),
    ("ghostnet_050", (3, 64, 64)),
]


@pytest.mark.parametrize("name,size", TRACED, ids=[n for n, _ in TRACED])
def test_removing_traced_channels_equals_zeroing_their_consumers(name, size):
    model = timm.create_model(name, num_classes=10).eval()
    size = size or udfc_hub.profile.default_input_size(model)
    assert _remove_vs_zero(model, size) < 1e-5


@pytest.mark.parametrize("kind", ["resnet", "convnext", "vit"])
def test_removing_traced_channels_equals_zeroing_them_transformers(kind):
    assert _remove_vs_zero(_hf_models()[kind].eval(), (3, 32, 32)) < 1e-5


@pytest.mark.parametrize("name", ["efficientnet_b0", "seresnext26t_32x4d"])
def test_traced_groups_touch_the_modules_torch_pruning_couples(name):
    tp = pytest.importorskip("torch_pruning", reason="the [tracing] extra (torch-pruning) is not installed")
    model = timm.create_model(name, num_classes=10).eval()
    spec = trace_couplings(model, (3, 64, 64)).spec
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 64, 64))
    names = {m: n for n, m in model.named_modules()}
    for g in spec.groups:
        producer = model.get_submodule(g.producer.name)
        fn = tp.prune_conv_out_channels if isinstance(producer, nn.Conv2d) else tp.prune_linear_out_channels
        group = dg.get_pruning_group(producer, fn, idxs=[0])  # its ops (ReLU, ...) are nodes without a module name
        theirs = {names[dep.target.module] for dep, _ in group if dep.target.module in names}
        ours = {g.producer.name, g.producer.norm, *g.aligned, *(c.name for c in g.consumers)} - {None}
        assert ours == theirs, g.producer.name


def test_traced_model_round_trips_through_stock_timm_without_tracing(tmp_path, monkeypatch):
    model = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=6, input_size=(3, 64, 64))
    assert result.spec.family.startswith("traced")
    assert result.report.pruned_layers, "the traced spec pruned nothing"
    udfc_hub.save_pretrained(result, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_args"]["format_version"] == 2
    shapes = config["model_args"]["shapes"]
    for r in result.report.pruned_layers:  # every pruned producer and its consumers are listed at their new shapes
        assert shapes[r.name][0] == r.kept_channels
    monkeypatch.setattr(GraphAdapter, "describe", lambda self, m: pytest.fail("the loader traced the model"))
    loaded = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


@pytest.mark.parametrize("kind", ["swin", "deit", "beit", "mobilenet_v2", "efficientnet", "regnet", "dinov2"])
def test_transformers_classes_compress_and_reload(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    small = dict(image_size=32, num_labels=5)
    vit = dict(patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, **small)
    built = {
        "swin": lambda: transformers.SwinForImageClassification(
            transformers.SwinConfig(patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, **small)
        ),
        "deit": lambda: transformers.DeiTForImageClassification(transformers.DeiTConfig(intermediate_size=64, **vit)),
        "beit": lambda: transformers.BeitForImageClassification(transformers.BeitConfig(intermediate_size=64, **vit)),
        "mobilenet_v2": lambda: transformers.MobileNetV2ForImageClassification(
            transformers.MobileNetV2Config(depth_multiplier=0.35, **small)
        ),
        "efficientnet": lambda: transformers.EfficientNetForImageClassification(
            transformers.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, **small)
        ),
        "regnet": lambda: transformers.RegNetForImageClassification(
            transformers.RegNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, num_labels=5
            )
        ),
        "dinov2": lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(mlp_ratio=2, **vit)),
    }
    model = built[kind]().eval()
    result = udfc_hub.compress(model, prune_ratio=0.3, bits=6, input_size=(3, 32, 32))
    assert result.report.pruned_layers
    udfc_hub.save_pretrained(result, tmp_path / "m")
    loaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "m").eval()
    assert type(loaded).__name__ == "Udfc" + type(model).__name__
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, result.model(x).logits)


class _NeedsTwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))

    def forward(self, x):
        return self.body(x)


def test_removal_error_catches_a_missed_coupling():
    model = timm.create_model("mobilenetv2_050", num_classes=10).eval()
    spec = trace_couplings(model, (3, 64, 64)).spec
    assert removal_error(model, spec, (3, 64, 64)) < 1e-5
    broken = dataclasses.replace(spec, groups=tuple(dataclasses.replace(g, aligned=()) for g in spec.groups))
    with pytest.raises(RuntimeError):  # a depthwise conv left at its width no longer fits its input
        removal_error(model, broken, (3, 64, 64))
    head = next(g for g in spec.groups if g.producer.name == "conv_head")
    missed = dataclasses.replace(spec, groups=(dataclasses.replace(head, consumers=()),))
    with pytest.raises(RuntimeError):  # the classifier still expects every head channel
        removal_error(model, missed, (3, 64, 64))


def test_untraceable_model_says_where_tracing_stopped():
    with pytest.raises(UnsupportedModelError) as err:
        udfc_hub.compress(_NeedsTwoInputs(), prune_ratio=0.3, bits=6, input_size=(3, 8, 8))
    text = str(err.value)
    assert "module 'body.3' (Linear)" in text and "after op 'flatten'" in text
    assert "hand-written adapter" in text and "Your own model" in text


def test_graph_adapter_is_the_last_resort():
    assert isinstance(ADAPTERS[-1], GraphAdapter)
    spec = describe_model(timm.create_model("seresnet18", num_classes=10))  # the ResNet adapter refuses SE blocks
    assert spec.family.startswith("traced") and "ResNet" in spec.notes[0] and "attention" in spec.notes[0]
