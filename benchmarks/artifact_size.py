"""Size of the saved artifact (model.safetensors) for timm ResNets, beside float32 and the packing bound.

    python benchmarks/artifact_size.py [--models resnet34] [--settings 0.3:6 0.3:4]

For each model and prune_ratio:bits, writes the folder to a temporary directory and reports the file size, the
size of the same (pruned) tensors in float32, and the bound quantized_count * bits / 8 + 4 * float_count.
Results: benchmarks/results/artifact_size.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import timm

import udfc_hub

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet34", "resnet50"])
    ap.add_argument("--settings", nargs="+", default=["0.3:6", "0.3:4", "0.0:8"], help="prune_ratio:bits")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        model = timm.create_model(name).eval()
        base_bytes = 4 * sum(p.numel() for p in model.parameters())
        for setting in args.settings:
            ratio, bits = setting.split(":")
            result = udfc_hub.compress(model, prune_ratio=float(ratio), bits=int(bits))
            quantized = sum(qt.codes.numel() for qt in result.quantized.values())
            floats = sum(
                v.numel() for k, v in udfc_hub.pack_model(result).state_dict().items() if v.is_floating_point()
            )
            with tempfile.TemporaryDirectory() as tmp:
                folder = udfc_hub.save_pretrained(result, Path(tmp) / "m")
                size = (folder / "model.safetensors").stat().st_size
            bound = quantized * int(bits) / 8 + 4 * floats
            rows.append(
                {
                    "model": name,
                    "prune_ratio": float(ratio),
                    "bits": int(bits),
                    "file_bytes": size,
                    "base_float32_bytes": base_bytes,
                    "pruned_float32_bytes": 4 * result.report.after.params,
                    "bound_bytes": int(bound),
                    "file_over_bound": round(size / bound, 4),
                }
            )
            print(
                f"{name} {ratio}:{bits}: {size / 1e6:.2f} MB (float32 base {base_bytes / 1e6:.1f} MB, "
                f"packing bound {bound / 1e6:.2f} MB, ratio {size / bound:.4f})",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "artifact_size.json").write_text(json.dumps(rows, indent=1) + "\n")
    md = [
        "# Artifact size",
        "",
        "Command: `python benchmarks/artifact_size.py`. MB = 10^6 bytes. Bound: quantized "
        "weights x bits / 8 + 4 bytes per float value (norms, biases, scales).",
        "",
        "| model | prune | bits | model.safetensors MB | float32 base MB | float32 pruned MB | file / bound |",
        "|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['model']} | {r['prune_ratio']:.0%} | {r['bits']} | {r['file_bytes'] / 1e6:.2f} | "
        f"{r['base_float32_bytes'] / 1e6:.1f} | {r['pruned_float32_bytes'] / 1e6:.1f} | {r['file_over_bound']:.4f} |"
        for r in rows
    ]
    (args.out / "artifact_size.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
