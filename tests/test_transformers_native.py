"""transformers' own ResNet, ConvNeXt and ViT classifiers (built from configs, no downloads): compressed, saved
under a udfc model_type, loaded back with AutoModelForImageClassification with identical logits."""

import filecmp
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import yaml
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

import udfc_hub
from udfc_hub import ArtifactError

SIZE = 32


def _resnet(layer_type):
    config = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[2, 1], layer_type=layer_type, num_labels=10)
    return ResNetForImageClassification(config)


def _convnext():
    return ConvNextForImageClassification(
        ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 2], num_stages=2, num_labels=10)
    )


def _vit():
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIZE,
        patch_size=8,
        num_labels=10,
    )
    return ViTForImageClassification(config)


BUILDERS = {
    "resnet-basic": lambda: _resnet("basic"),
    "resnet-bottleneck": lambda: _resnet("bottleneck"),
    "convnext": _convnext,
    "vit": _vit,
}


def _model(name):
    torch.manual_seed(0)
    model = BUILDERS[name]()
    for m in model.modules():  # trained-looking BN statistics, so that every correction does something
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _logits(model, x):
    with torch.inference_mode():
        return model.eval()(x).logits


@pytest.mark.parametrize("name", list(BUILDERS))
def test_compress_save_and_load_with_auto_classes(name, tmp_path):
    model = _model(name)
    result = udfc_hub.compress(model, prune_ratio=0.5, bits=4)
    assert result.report.after.params < result.report.before.params
    assert result.report.pruned_layers and set(result.quantized) == {layer.name for layer in result.spec.layers}
    folder = udfc_hub.save_pretrained(result, tmp_path / name, repo_id=f"me/{name}-udfc")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"].startswith("udfc_") and config["udfc"]["format"] == udfc_hub.hub.FORMAT
    assert udfc_hub.check_artifact(folder)["model_type"] == config["model_type"]

    loaded = AutoModelForImageClassification.from_pretrained(folder)
    assert type(loaded).__name__ == "Udfc" + type(model).__name__
    x = torch.randn(2, 3, SIZE, SIZE)
    assert (_logits(loaded, x) - _logits(result.model, x)).abs().max() <= 1e-5
    assert sum(p.numel() for p in loaded.parameters()) == result.report.after.params

    card = (folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and "transformers" in meta["tags"]
    assert f'AutoModelForImageClassification.from_pretrained("me/{name}-udfc")' in card


def test_saved_names_are_transformers_legacy_names_and_resave_is_identical(tmp_path):
    result = udfc_hub.compress(_model("vit"), prune_ratio=0.5, bits=4)
    folder = udfc_hub.save_pretrained(result, tmp_path / "a", repo_id="me/vit-udfc")
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    # transformers 5 keeps ViT's saved names from v4 (vit.encoder.layer.N.intermediate.dense), not the in-memory ones
    assert "vit.encoder.layer.0.intermediate.dense.weight_packed" in keys
    assert not any(".mlp.fc1." in k for k in keys)
    loaded = AutoModelForImageClassification.from_pretrained(folder)
    again = udfc_hub.save_pretrained(loaded, tmp_path / "b", repo_id="me/vit-udfc")
    for file in ("model.safetensors", "config.json", "README.md"):
        assert filecmp.cmp(folder / file, again / file, shallow=False), file


def test_without_the_plugin_transformers_refuses_loudly(tmp_path):
    folder = udfc_hub.save_pretrained(
        udfc_hub.compress(_model("resnet-basic"), prune_ratio=0.3, bits=6), tmp_path / "r"
    )
    code = f"from transformers import AutoModelForImageClassification as A; A.from_pretrained({str(folder)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "udfc_resnet" in out.stderr


def test_a_tampered_config_is_a_clear_error(tmp_path):
    folder = udfc_hub.save_pretrained(
        udfc_hub.compress(_model("resnet-basic"), prune_ratio=0.3, bits=6), tmp_path / "r"
    )
    config = json.loads((folder / "config.json").read_text())
    config["udfc"]["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="format version"):
        AutoModelForImageClassification.from_pretrained(folder)


def test_push_then_load_from_the_hub_and_with_load_model(hub, tmp_path):
    result = udfc_hub.compress(_model("convnext"), prune_ratio=0.3, bits=6)
    folder = udfc_hub.save_pretrained(result, tmp_path / "c", repo_id="me/convnext-udfc")
    udfc_hub.push(folder, "me/convnext-udfc")
    x = torch.randn(2, 3, SIZE, SIZE)
    ref = _logits(result.model, x)
    from_hub = AutoModelForImageClassification.from_pretrained("me/convnext-udfc")
    assert (_logits(from_hub, x) - ref).abs().max() <= 1e-5
    for source in ("hf-hub:me/convnext-udfc", f"local-dir:{folder}"):
        assert (_logits(udfc_hub.load_model(source), x) - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("first", ["udfc_hub", "transformers"])
def test_twins_load_after_a_plain_import_in_either_order(first, tmp_path):
    result = udfc_hub.compress(_model("resnet-basic"), prune_ratio=0.3, bits=4)
    folder = udfc_hub.save_pretrained(result, tmp_path / "r")
    # `import udfc_hub` alone imports neither transformers nor the twins (they register once transformers is)
    alone = (
        "import sys, udfc_hub; print(*(m in sys.modules for m in ('transformers', 'udfc_hub.hub.transformers_models')))"
    )
    imports = [alone, "from transformers import AutoModelForImageClassification"]
    load = f"m = AutoModelForImageClassification.from_pretrained({str(folder)!r}); print(type(m).__name__)"
    code = "\n".join([*(imports if first == "udfc_hub" else imports[::-1]), load])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = out.stdout.split("\n")
    assert lines[-2] == "UdfcResNetForImageClassification", out.stderr
    if first == "udfc_hub":
        assert lines[0] == "False False", out.stdout
