import json
import os
import struct
import subprocess
import sys

import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors import safe_open
from timm.models import PretrainedCfg
from transformers import AutoModelForImageClassification

import udfc_hub
from udfc_hub import ArtifactError, InvalidArgumentError, compress, save_pretrained


def _logits(model, x):
    with torch.inference_mode():
        out = model.eval()(x)
    return out.logits if hasattr(out, "logits") else out


def _load_timm(path):
    return timm.create_model(f"local-dir:{path}", pretrained=True)


def _files(path):
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}


@pytest.fixture(scope="module")
def cifar20():
    return timm.create_model("cifar_resnet20").eval()


@pytest.fixture(scope="module")
def resnet18_result():
    # uniform widths: the layout checks below name each group's width
    return compress(timm.create_model("resnet18").eval(), prune_ratio=0.3, bits=4, layer_ratios="uniform")


@pytest.mark.parametrize("bits", range(2, 9))
def test_round_trip_every_bit_width(cifar20, tmp_path, bits):
    result = compress(cifar20, prune_ratio=0.3, bits=bits)
    folder = save_pretrained(result, tmp_path / f"c20-w{bits}")
    loaded = _load_timm(folder)
    x = torch.randn(4, 3, 32, 32)
    assert (_logits(loaded, x) - _logits(result.model, x)).abs().max() <= 1e-5
    for name, qt in result.quantized.items():
        assert torch.equal(loaded.get_submodule(name).weight, qt.dequantize())


@pytest.mark.parametrize("ratio,bits", [(0.4, None), (0.0, 5)])
def test_round_trip_prune_only_and_quantize_only(cifar20, tmp_path, ratio, bits):
    result = compress(cifar20, prune_ratio=ratio, bits=bits)
    loaded = _load_timm(save_pretrained(result, tmp_path / "m"))
    x = torch.randn(4, 3, 32, 32)
    assert (_logits(loaded, x) - _logits(result.model, x)).abs().max() <= 1e-5
    assert sum(p.numel() for p in loaded.parameters()) == result.report.after.params


def test_timm_and_transformers_load_identical_logits(resnet18_result, tmp_path):
    folder = save_pretrained(resnet18_result, tmp_path / "r18")
    x = torch.randn(2, 3, 96, 96)
    ref = _logits(resnet18_result.model, x)
    assert (_logits(_load_timm(folder), x) - ref).abs().max() <= 1e-5
    hf = AutoModelForImageClassification.from_pretrained(folder)
    assert type(hf).__name__ == "TimmWrapperForImageClassification"
    assert (_logits(hf, x) - ref).abs().max() <= 1e-5


def test_file_is_packed_and_small(resnet18_result, tmp_path):
    folder = save_pretrained(resnet18_result, tmp_path / "r18")
    path = folder / "model.safetensors"
    quantized = sum(qt.codes.numel() for qt in resnet18_result.quantized.values())
    floats = 0
    with safe_open(path, "pt") as f:
        assert f.metadata()["udfc_format"] == "udfc-packed" and f.metadata()["udfc_format_version"] == "2"
        for key in f.keys():  # noqa: SIM118  (safe_open is not a mapping)
            t = f.get_slice(key)
            if key.endswith("weight_packed"):
                assert t.get_dtype() == "U8"
            elif t.get_dtype() in ("F32",):
                floats += int(torch.tensor(t.get_shape()).prod()) if t.get_shape() else 1
            assert not key.endswith(".weight") or "bn" in key or "downsample.1" in key
    header = struct.unpack("<Q", path.read_bytes()[:8])[0]
    body = path.stat().st_size - 8 - header
    assert body <= 1.05 * (quantized * 4 / 8 + 4 * floats)
    assert header < 64 * 1024
    # about an eighth of the float32 pruned model
    assert path.stat().st_size < 0.2 * 4 * resnet18_result.report.after.params


def test_a_random_model_names_no_pretrained_base(resnet18_result, tmp_path):
    # resnet18 created without weights: timm's pretrained_cfg still names timm/resnet18.a1_in1k, but those
    # weights were not used, so neither the card nor config.json may claim that base or its license
    folder = save_pretrained(resnet18_result, tmp_path / "r18")
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    config = json.loads((folder / "config.json").read_text())
    assert "base_model" not in meta and "base_model_relation" not in meta and "license" not in meta
    assert config["udfc"]["base_model"] is None and "license" not in config["pretrained_cfg"]


def test_weights_loaded_by_name_are_the_named_base(cifar20, tmp_path, monkeypatch):
    # load_model marks what it loaded pretrained weights from (here a stand-in for the Hub download)
    def create(name, pretrained=False, **kwargs):
        model = timm.models.create_model(name, pretrained=False, **kwargs)
        model.pretrained_cfg = {**model.pretrained_cfg, "hf_hub_id": "someone/cifar-r20", "license": "mit"}
        return model

    monkeypatch.setattr(timm, "create_model", create)
    base = udfc_hub.load_model("cifar_resnet20")
    monkeypatch.undo()  # the save's reload check uses the real timm
    folder = save_pretrained(compress(base, prune_ratio=0.3, bits=6), tmp_path / "r20")
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert meta["base_model"] == "someone/cifar-r20" and meta["license"] == "mit"


def test_config_json_layout(resnet18_result, tmp_path):
    folder = save_pretrained(resnet18_result, tmp_path / "r18", base_model="timm/resnet18.a1_in1k")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "udfc_resnet18"
    assert config["num_classes"] == 1000 and config["num_features"] == 512 and config["global_pool"] == "avg"
    assert "num_classes" not in config["model_args"]
    assert config["model_args"]["base_architecture"] == "resnet18" and config["model_args"]["bits"] == 4
    assert config["model_args"]["channels"]["layer1.0.conv1"] == 44
    PretrainedCfg(**config["pretrained_cfg"])  # no custom keys: timm would raise TypeError
    assert config["pretrained_cfg"]["license"] == "apache-2.0"
    udfc = config["udfc"]
    assert udfc["format_version"] == 2 and udfc["udfc_hub_version"] == udfc_hub.__version__
    assert udfc["base_model"] == "timm/resnet18.a1_in1k" and udfc["compression"]["prune_ratio"] == 0.3


def test_card_metadata_and_body(resnet18_result, tmp_path):
    folder = save_pretrained(
        resnet18_result, tmp_path / "r18", repo_id="me/r18-udfc", base_model="timm/resnet18.a1_in1k"
    )
    text = (folder / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-classification"
    assert meta["base_model"] == "timm/resnet18.a1_in1k" and meta["base_model_relation"] == "quantized"
    assert meta["license"] == "apache-2.0"
    assert {"udfc", "data-free", "pruned", "quantized", "4-bit"} <= set(meta["tags"])
    assert "model-index" not in meta  # nothing was measured
    assert 'timm.create_model("hf-hub:me/r18-udfc", pretrained=True)' in text
    assert text.index("import udfc_hub") < text.index("timm.create_model")
    assert "Unknown model (udfc_resnet18)" in text and "bai2023udfc" in text
    assert "`udfc+` method" in text  # the default method is named in the description
    assert "| parameters | 11.69 M | 8.38 M |" in text
    ModelCard.load(folder / "README.md")  # parses


def test_card_has_model_index_only_for_measured_accuracy(resnet18_result, tmp_path):
    acc = {"dataset": "ImageNet sample", "top1": 61.5, "base_top1": 70.1, "n": 1000}
    folder = save_pretrained(resnet18_result, tmp_path / "r18", accuracy=acc)
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    results = meta["model-index"][0]["results"]
    assert results[0]["metrics"][0]["value"] == 61.5 and len(results[0]["metrics"]) == 1
    assert "| top-1 % | 70.10 | 61.50 |" in (folder / "README.md").read_text()
    with pytest.raises(InvalidArgumentError, match="top1"):
        save_pretrained(resnet18_result, tmp_path / "bad", accuracy={"top-1": 61.5})


def test_writes_are_deterministic_and_resave_reproduces(cifar20, tmp_path):
    result = compress(cifar20, prune_ratio=0.3, bits=6)
    a = save_pretrained(result, tmp_path / "a" / "m")  # the folder name titles the card: keep it equal
    b = save_pretrained(result, tmp_path / "b" / "m")
    assert _files(a) == _files(b)
    c = save_pretrained(_load_timm(a), tmp_path / "c" / "m")
    assert _files(c) == _files(a)


def test_refuses_non_empty_target_and_overwrites_atomically(cifar20, tmp_path, monkeypatch):
    result = compress(cifar20, prune_ratio=0.3, bits=6)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("user file")
    with pytest.raises(InvalidArgumentError, match="not empty"):
        save_pretrained(result, target)
    assert (target / "keep.txt").read_text() == "user file"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(udfc_hub.hub.artifact, "render_card", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(result, target, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["out"] and (target / "keep.txt").exists()  # nothing half-written
    monkeypatch.undo()
    save_pretrained(result, target, overwrite=True)
    assert sorted(os.listdir(target)) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.fixture()
def saved(cifar20, tmp_path):
    return save_pretrained(compress(cifar20, prune_ratio=0.3, bits=4, layer_ratios="uniform"), tmp_path / "m")


def test_unknown_format_version(saved):
    config = json.loads((saved / "config.json").read_text())
    config["model_args"]["format_version"] = 99
    config["udfc"]["format_version"] = 99
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="format version 99.*pip install -U udfc-hub"):
        _load_timm(saved)
    with pytest.raises(ArtifactError, match="version 99"):
        udfc_hub.check_artifact(saved)


def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="model.safetensors"):
        _load_timm(saved)
    with pytest.raises(ArtifactError, match="missing"):
        udfc_hub.check_artifact(saved)


def test_truncated_weights(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        _load_timm(saved)
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        udfc_hub.check_artifact(saved)


def test_corrupt_weights(saved):
    (saved / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        _load_timm(saved)


def test_shapes_that_disagree_with_config(saved):
    config = json.loads((saved / "config.json").read_text())
    config["model_args"]["channels"]["layer1.0.conv1"] = 10  # the file holds 11
    config["model_args"]["shapes"]["layer1.0.conv1"][0] = 10
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="has shape .*config.json says"):
        _load_timm(saved)
    with pytest.raises(ArtifactError, match="layer1.0.conv1"):
        udfc_hub.check_artifact(saved)


def test_without_import_udfc_hub_timm_fails_loudly(saved):
    code = f"import timm; timm.create_model('local-dir:{saved}', pretrained=True)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Unknown model (udfc_cifar_resnet20)" in proc.stderr


def test_a_loaded_artifact_can_be_compressed_again(saved, tmp_path):
    loaded = _load_timm(saved)
    again = compress(loaded, prune_ratio=0.2, bits=3, layer_ratios="uniform")
    folder = save_pretrained(again, tmp_path / "again")
    x = torch.randn(2, 3, 32, 32)
    assert (_logits(_load_timm(folder), x) - _logits(again.model, x)).abs().max() <= 1e-5
    assert json.loads((folder / "config.json").read_text())["model_args"]["channels"]["layer1.0.conv1"] == 8


def test_save_rejects_other_objects(tmp_path):
    with pytest.raises(InvalidArgumentError, match="result of udfc_hub.compress"):
        save_pretrained(timm.create_model("resnet18"), tmp_path / "x")


@pytest.mark.parametrize("ratio", [0.0, 0.2])
def test_a_pruned_artifact_quantized_again_keeps_its_widths(saved, tmp_path, ratio):
    """Compressing a loaded artifact again (quantize only, or prune more) records the first pruning's shapes too."""
    loaded = _load_timm(saved)
    again = compress(loaded, prune_ratio=ratio, bits=4)
    folder = save_pretrained(again, tmp_path / "again")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(_load_timm(folder), x), _logits(again.model, x))


def test_a_card_without_a_base_states_the_given_license_or_that_none_was_given(tmp_path):
    result = udfc_hub.compress(timm.create_model("cifar_resnet20").eval(), prune_ratio=0.3, bits=4)
    plain = udfc_hub.save_pretrained(result, tmp_path / "plain")
    card = (plain / "README.md").read_text()
    assert "license:" not in card.split("---")[1] and "No license was given for these weights" in card
    mine = udfc_hub.save_pretrained(result, tmp_path / "mine", license="mit")
    card = (mine / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["license"] == "mit" and "No license was given" not in card
    with pytest.raises(udfc_hub.InvalidArgumentError, match="license must be a Hub license id"):
        udfc_hub.save_pretrained(result, tmp_path / "bad", license="MIT License")


def test_an_evaluation_on_a_subset_is_labelled_and_kept_out_of_the_model_index(tmp_path):
    result = udfc_hub.compress(timm.create_model("cifar_resnet20").eval(), prune_ratio=0.3, bits=4)
    accuracy = {"dataset": "cifar10", "n": 100, "of": 10000, "top1": 80.0, "base_top1": 81.0}
    card = (udfc_hub.save_pretrained(result, tmp_path / "m", accuracy=accuracy) / "README.md").read_text()
    assert "model-index" not in card.split("---")[1]
    assert "a subset: 100 of the 10000 images of cifar10" in card
    whole = {**accuracy, "n": 10000}
    card = (udfc_hub.save_pretrained(result, tmp_path / "w", accuracy=whole) / "README.md").read_text()
    assert "model-index" in card.split("---")[1]
