"""The manifest: one reader/validator for every loader; artifacts of format version 1 keep loading."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import udfc_hub
from udfc_hub import ArtifactError
from udfc_hub.hub.manifest import Manifest, Provenance

DATA = Path(__file__).parent / "data"
TIMM_V1 = DATA / "format1-cifar_resnet20-p50-w3"  # written by udfc-hub before the manifest existed
HF_V1 = DATA / "format1-hf-resnet-p50-w3"


def _manifest(**changes):
    settings = udfc_hub.CompressionConfig().resolved().to_dict()
    fields = dict(
        base_architecture="cifar_resnet20",
        channels={"layer1.0.conv1": 8},
        shapes={"layer1.0.conv1": (8, 16, 3, 3), "layer1.0.bn1": (8,), "layer1.0.conv2": (16, 8, 3, 3)},
        bits=4,
        quantized_layers={"conv1": (16, 1, 1, 1)},
        provenance=Provenance(settings=settings, base_params=10, base_macs=20),
    )
    return Manifest(**(fields | changes))


def test_model_args_and_udfc_block_round_trip():
    m = _manifest()
    assert Manifest.from_model_args(json.loads(json.dumps(m.to_model_args()))) == m
    assert Manifest.from_udfc_block(json.loads(json.dumps(m.to_udfc_block()))) == m
    assert m.with_provenance(accuracy={"top1": 50.0}).to_model_args()["provenance"]["accuracy"] == {"top1": 50.0}


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"bits": 99}, "bits must be an integer in 2..8"),
        ({"channels": {"layer1.0.conv1": -3}}, "channels must map layer names to widths"),
        ({"channels": {"layer1.0.conv1": 10**12}}, "channels must map layer names to widths"),
        ({"quantized_layers": {"conv1": [10**9, 1]}}, "quantized_layers must map layer names to scale shapes"),
        ({"bits": None}, "quantized layers but no 'bits'"),
        ({"format_version": 6}, "format version 6.*Upgrade udfc-hub"),
        ({"shapes": {"layer1.0.conv1": (9, 16, 3, 3)}}, "kept channels of 'layer1.0.conv1' \\(8\\) disagree"),
        ({"shapes": {"conv1": (10**9, 3, 3, 3)}}, "shapes must map module names to weight shapes"),
        ({"base_architecture": ""}, "base_architecture must be a non-empty string"),
    ],
)
def test_bad_manifests_are_refused_by_name(changes, match):
    with pytest.raises(ArtifactError, match=match):
        _manifest(**changes)


def test_recorded_settings_are_validated():
    args = _manifest().to_model_args()
    args["provenance"]["settings"]["bits"] = 99
    with pytest.raises(ArtifactError, match="recorded compression settings are invalid.*bits"):
        Manifest.from_model_args(args)


def _same_logits(logits, recorded):
    # recorded when the artifact was written, on another machine: float32 convolutions sum in the order of that
    # CPU's kernels (AVX2 vs AVX-512 here), so the last bits may differ (seen: 21.1171 vs 21.1170); the weights
    # themselves are read exactly (test_resaving_a_format_1_artifact_writes_the_same_files)
    torch.testing.assert_close(logits, recorded, rtol=1e-5, atol=1e-4)
    assert torch.equal(logits.argmax(1), recorded.argmax(1))


def test_format_1_timm_artifact_loads_with_the_recorded_logits():
    io = load_file(str(TIMM_V1.parent / (TIMM_V1.name + ".io.safetensors")))
    udfc_hub.check_artifact(TIMM_V1)
    model = timm.create_model(f"local-dir:{TIMM_V1}", pretrained=True).eval()
    with torch.no_grad():
        _same_logits(model(io["x"]), io["logits"])
    assert model.udfc_manifest.base_architecture == "cifar_resnet20"


def test_format_1_transformers_artifact_loads_with_the_recorded_logits():
    io = load_file(str(HF_V1.parent / (HF_V1.name + ".io.safetensors")))
    udfc_hub.check_artifact(HF_V1)
    model = AutoModelForImageClassification.from_pretrained(HF_V1).eval()
    with torch.no_grad():
        _same_logits(model(io["x"]).logits, io["logits"])


def test_resaving_a_format_1_artifact_writes_the_same_files(tmp_path):
    model = timm.create_model(f"local-dir:{TIMM_V1}", pretrained=True)
    again = udfc_hub.save_pretrained(model, tmp_path / TIMM_V1.name)  # the card is titled by the folder name
    for name in ("config.json", "model.safetensors"):
        assert (again / name).read_bytes() == (TIMM_V1 / name).read_bytes(), name
    # the card is rendered by today's template (its usage snippet improves with it); its metadata is the same
    old, new = ((folder / "README.md").read_text().split("---")[1] for folder in (TIMM_V1, again))
    assert new == old


@pytest.mark.parametrize("where", ["udfc", "model_args"])
def test_a_version_bumped_in_one_place_is_refused_by_every_loader(tmp_path, where):
    folder = tmp_path / "m"
    shutil.copytree(TIMM_V1, folder)
    config = json.loads((folder / "config.json").read_text())
    (config["udfc"] if where == "udfc" else config["model_args"])["format_version"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="format version 7"):
        udfc_hub.check_artifact(folder)
    with pytest.raises(ArtifactError, match="format version 7"):
        udfc_hub.load_model(f"local-dir:{folder}")


def test_format_1_manifest_needs_the_adapter_format_2_does_not():
    assert _manifest(format_version=1, shapes={}).needs_spec
    assert not _manifest().needs_spec
    assert "shapes" not in _manifest(format_version=1, shapes={}).to_model_args()  # format 1 is written as it was


def test_manifest_of_both_layouts():
    timm_cfg = json.loads((TIMM_V1 / "config.json").read_text())
    hf_cfg = json.loads((HF_V1 / "config.json").read_text())
    assert Manifest.from_config(timm_cfg).bits == 3
    assert Manifest.from_config(hf_cfg).base_architecture == "ResNetForImageClassification"
    broken = copy.deepcopy(timm_cfg)
    del broken["udfc"]
    with pytest.raises(ArtifactError, match="no udfc block"):
        Manifest.from_config(broken)


def test_a_format_1_artifact_quantized_again_saves_at_format_2(tmp_path):
    model = timm.create_model(f"local-dir:{TIMM_V1}", pretrained=True)
    again = udfc_hub.compress(model, prune_ratio=0.0, bits=4)
    folder = udfc_hub.save_pretrained(again, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_args"]["format_version"] == 2
    assert (
        config["model_args"]["channels"] == json.loads((TIMM_V1 / "config.json").read_text())["model_args"]["channels"]
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x), again.model.eval()(x))
