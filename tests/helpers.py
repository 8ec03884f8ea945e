"""Shared test helpers: the read-only fixtures beside the checkout (override with UDFC_FIXTURES)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import udfc_hub

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("UDFC_FIXTURES", REPO.parent / "shared" / "fixtures"))
CIFAR_WEIGHTS = FIXTURES / "weights" / "akamaster_resnet_cifar10"
CIFAR_TEST = FIXTURES / "cifar10" / "cifar10_test_jpeg_q75.npz"
CIFAR_LOSSLESS = FIXTURES / "cifar10" / "cifar10_test_first20_lossless.npz"

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def assert_unchanged_without_batchnorm(note: str, **option) -> None:
    """A small ViT has no BatchNorm: compressed at 4 bits with ``option`` (one that needs BN statistics), the report
    says ``note`` and every layer is rounded exactly as without the option."""
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10).eval()
    with_option = udfc_hub.compress(model, prune_ratio=0.0, bits=4, **option)
    plain = udfc_hub.compress(model, prune_ratio=0.0, bits=4)
    assert any(note in n for n in with_option.report.notes), with_option.report.notes
    assert all(torch.equal(plain.quantized[n].codes, with_option.quantized[n].codes) for n in plain.quantized)


def assert_round_trip(result, folder: Path, option: str, value, size: int = 64) -> Path:
    """``result`` saved to ``folder`` records ``option=value`` in its config.json, and timm loads it back
    (``local-dir:``) with logits identical to the compressed model's on ``size`` x ``size`` inputs. Returns the
    folder written."""
    folder = udfc_hub.save_pretrained(result, folder)
    assert json.loads((folder / "config.json").read_text())["udfc"]["compression"][option] == value
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
    return folder


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"fixture missing: {path} (set UDFC_FIXTURES to the shared fixtures folder)")
    return path


def load_cifar(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images normalised as the akamaster models were trained (x/255, ImageNet mean/std), and labels."""
    data = np.load(require(path))
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).float() / 255
    return (x - IMAGENET_MEAN) / IMAGENET_STD, torch.from_numpy(data["y"]).long()


@torch.inference_mode()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    pred = torch.cat([model(xb).argmax(1) for xb in x.split(batch)])
    return float(pred.eq(y).float().mean() * 100)


def run_in_process(*args) -> subprocess.CompletedProcess:
    """``udfc-hub ARGS`` as ``udfc_hub.cli.main`` runs it in this process: exit code, stdout and stderr."""
    from udfc_hub.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    token = os.environ.pop("HF_TOKEN", None)  # as in the subprocess runs: no token unless a test gives one
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: --help, --version, usage errors
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        if token is not None:
            os.environ["HF_TOKEN"] = token
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
