import numpy as np
import pytest
import timm
from PIL import Image

import udfc_hub
from helpers import CIFAR_LOSSLESS, CIFAR_WEIGHTS, require
from udfc_hub import InvalidArgumentError, evaluate


@pytest.fixture(scope="module")
def resnet20():
    path = require(CIFAR_WEIGHTS / "resnet20-12fca82f.th")
    return timm.create_model("cifar_resnet20", checkpoint_path=str(path)).eval()


@pytest.fixture(scope="module")
def lossless():
    return require(CIFAR_LOSSLESS)


def test_npz_accuracy_and_self_agreement(resnet20, lossless):
    out = evaluate(resnet20, lossless, batch_size=7, reference=resnet20)
    assert out["n"] == 20 and out["dataset"] == "cifar10_test_first20_lossless"
    assert out["top1"] >= 90.0 and out["top5"] >= out["top1"] and out["agreement"] == 100.0
    assert evaluate(resnet20, lossless, batch_size=20) == {**out, "agreement": None}  # deterministic


def _write_images(folder, x, y, layout):
    names = []
    if layout == "imagefolder":  # class index = position of the folder in sorted order: make all ten
        for c in range(10):
            (folder / f"class{c:02d}").mkdir(parents=True)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        sub = folder / f"class{label:02d}" if layout == "imagefolder" else folder / "images"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"img{i:03d}.png")
        names.append(f"img{i:03d}.png")
    if layout == "tsv":
        rows = ["file\tclass_index"] + [f"{n}\t{label}" for n, label in zip(names, y, strict=True)]
        (folder / "labels.tsv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("layout", ["imagefolder", "tsv"])
def test_image_folders_match_the_npz(resnet20, lossless, tmp_path, layout):
    data = np.load(lossless)
    x, y = data["x"], data["y"]
    _write_images(tmp_path, x, y, layout)
    np.savez(tmp_path.parent / f"{layout}.npz", x=x, y=y)
    from_files = evaluate(resnet20, tmp_path)
    from_npz = evaluate(resnet20, tmp_path.parent / f"{layout}.npz")
    assert from_files["n"] == len(y) and from_files["top1"] == from_npz["top1"]


def test_data_config_override_changes_preprocessing(resnet20, lossless):
    plain = evaluate(resnet20, lossless)
    wrong = evaluate(resnet20, lossless, data_config={"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})
    assert wrong["top1"] < plain["top1"]


def test_bad_inputs(resnet20, lossless, tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist; accepted"):
        evaluate(resnet20, tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(InvalidArgumentError, match="lacks arrays 'x' and 'y'"):
        evaluate(resnet20, tmp_path / "bad.npz")
    np.savez(tmp_path / "range.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([3, 12]))
    with pytest.raises(InvalidArgumentError, match="outside the model's 10 classes"):
        evaluate(resnet20, tmp_path / "range.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="no labels.tsv and no class sub-folders"):
        evaluate(resnet20, tmp_path / "empty")
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        evaluate(resnet20, lossless, batch_size=0)


def test_compress_and_push_puts_measured_accuracy_in_the_card(resnet20, lossless, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from hub_server import HubServer

    with HubServer() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        udfc_hub.compress_and_push(
            resnet20, "me/r20", prune_ratio=0.3, bits=6, eval_data=lossless, local_dir=tmp_path / "r20"
        )
        card = hub.repos["me/r20"].files["README.md"].decode()
    assert "model-index" in card and "cifar10_test_first20_lossless" in card
    assert "| top-1 % |" in card and "(20 images)" in card
